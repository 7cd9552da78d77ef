package main

import (
	"context"
	"fmt"
	"net/url"
	"path/filepath"
	"sync"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// lab ties the simulator's VMs to the lab guests.
type lab struct {
	cfg     *labConfig
	baseURL *url.URL

	adopting bool // taking over from an earlier launcher: only guests that still run power on

	mu      sync.Mutex
	byName  map[string]*guest
	byMoref map[types.ManagedObjectReference]*guest
	transfers
}

func newLab(cfg *labConfig, adopt bool) *lab {
	l := &lab{cfg: cfg, adopting: adopt, byName: map[string]*guest{}, byMoref: map[types.ManagedObjectReference]*guest{}}
	l.transfers.init()
	for i := range cfg.VMs {
		vm := cfg.VMs[i]
		g := newGuest(vm, time.Duration(cfg.BootDelayS*float64(time.Second)))
		g.python = cfg.Python
		if adopt {
			if record := g.loadPower(); record != nil && record.PoweredOn {
				g.adopt = record
			}
		}
		l.byName[vm.Name] = g
	}
	return l
}

// install replaces the simulator's guest operation managers with the lab's (same
// managed object ids), answers PutUsbScanCodes, and follows power state changes.
func (l *lab) install() {
	manager := simulator.Map.Get(guestOperationsManager).(*simulator.GuestOperationsManager)
	processes := &processManager{lab: l}
	processes.Self = *manager.ProcessManager
	files := &fileManager{lab: l}
	files.Self = *manager.FileManager
	simulator.Map.Put(processes)
	simulator.Map.Put(files)
	l.installAuthManager(manager)
	simulator.InstallUnsetFetchCollector()
	simulator.UsbScanCodes = l.typeScanCodes
	simulator.Screenshot = l.screenshot
	simulator.Map.AddHandler(&powerWatcher{lab: l})
}

var guestOperationsManager = types.ManagedObjectReference{Type: "GuestOperationsManager", Value: "guestOperationsManager"}

// guestOf returns the guest behind vm, if the VM is a lab VM.
func (l *lab) guestOf(vm types.ManagedObjectReference) *guest {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.byMoref[vm]
}

// createVMs creates one simulator VM per lab VM, with the guest's MAC on its network
// adapter, powers it on (when taking over, only those whose guest still runs), and
// returns their managed object ids by name.
func (l *lab) createVMs(ctx context.Context, u *url.URL) (map[string]string, error) {
	client, err := newClient(ctx, u)
	if err != nil {
		return nil, fmt.Errorf("log in to the simulator: %w", err)
	}
	defer func() { _ = client.Logout(context.Background()) }()
	finder := find.NewFinder(client.Client, true)
	dc, err := finder.DefaultDatacenter(ctx)
	if err != nil {
		return nil, err
	}
	finder.SetDatacenter(dc)
	folders, err := dc.Folders(ctx)
	if err != nil {
		return nil, err
	}
	pool, err := finder.DefaultResourcePool(ctx)
	if err != nil {
		return nil, err
	}
	network, err := finder.Network(ctx, "VM Network")
	if err != nil {
		return nil, err
	}
	backing, err := network.EthernetCardBackingInfo(ctx)
	if err != nil {
		return nil, err
	}
	datastore, err := finder.DefaultDatastore(ctx)
	if err != nil {
		return nil, err
	}

	morefs := map[string]string{}
	for _, cfg := range l.cfg.VMs {
		nic, err := object.EthernetCardTypes().CreateEthernetCard("vmxnet3", backing)
		if err != nil {
			return nil, err
		}
		card := nic.(types.BaseVirtualEthernetCard).GetVirtualEthernetCard()
		card.AddressType = string(types.VirtualEthernetCardMacTypeManual)
		card.MacAddress = cfg.MAC
		spec := types.VirtualMachineConfigSpec{
			Name:     cfg.Name,
			GuestId:  cfg.GuestID,
			NumCPUs:  1,
			MemoryMB: 1024,
			Files:    &types.VirtualMachineFileInfo{VmPathName: fmt.Sprintf("[%s]", datastore.Name())},
			DeviceChange: []types.BaseVirtualDeviceConfigSpec{
				&types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationAdd, Device: nic},
			},
		}
		if cfg.Qemu != nil {
			spec.DeviceChange = append(spec.DeviceChange, &types.VirtualDeviceConfigSpec{
				Operation: types.VirtualDeviceConfigSpecOperationAdd, Device: serialPortDevice(datastore.Name(), cfg.Name),
			})
		}
		task, err := folders.VmFolder.CreateVM(ctx, spec, pool, nil)
		if err != nil {
			return nil, err
		}
		info, err := task.WaitForResult(ctx, nil)
		if err != nil {
			return nil, fmt.Errorf("create VM %s: %w", cfg.Name, err)
		}
		ref := info.Result.(types.ManagedObjectReference)
		logPath, err := vmLogPath(simulator.Map.Get(ref).(*simulator.VirtualMachine))
		if err != nil {
			return nil, err
		}
		if cfg.Qemu != nil {
			if err := linkSerialPortFile(cfg.Qemu.Serial, filepath.Dir(logPath)); err != nil {
				return nil, fmt.Errorf("%s: serial port file: %w", cfg.Name, err)
			}
		}
		l.mu.Lock()
		l.byMoref[ref] = l.byName[cfg.Name]
		l.byName[cfg.Name].moref = ref
		l.byName[cfg.Name].vmLog = logPath
		l.mu.Unlock()
		morefs[cfg.Name] = ref.Value
	}
	// Power-ons only after every VM exists: tasks take managed object ids too, and the
	// VMs' ids must not depend on which of them power on. Then they may run at once
	// (a few at a time: each starts its guest's services).
	var (
		wg       sync.WaitGroup
		failedMu sync.Mutex
		failed   error
	)
	slots := make(chan struct{}, powerOnWorkers)
	for _, cfg := range l.cfg.VMs {
		g := l.byName[cfg.Name]
		if l.adopting && g.adopt == nil {
			continue // powered off when the earlier vCenter stopped
		}
		wg.Add(1)
		slots <- struct{}{}
		go func(name string, moref types.ManagedObjectReference) {
			defer func() { <-slots; wg.Done() }()
			err := powerOn(ctx, client, moref)
			if err != nil {
				failedMu.Lock()
				if failed == nil {
					failed = fmt.Errorf("power on %s: %w", name, err)
				}
				failedMu.Unlock()
			}
		}(cfg.Name, g.moref)
	}
	wg.Wait()
	if failed != nil {
		return nil, failed
	}
	return morefs, nil
}

const powerOnWorkers = 8

func powerOn(ctx context.Context, client *govmomi.Client, moref types.ManagedObjectReference) error {
	power, err := object.NewVirtualMachine(client.Client, moref).PowerOn(ctx)
	if err != nil {
		return err
	}
	return power.Wait(ctx)
}

// shutdown powers every guest down: consoles, services and guest processes end.
func (l *lab) shutdown() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, g := range l.byName {
		g.powerOff()
	}
}

// powerWatcher follows runtime.powerState changes of lab VMs (a registry handler).
type powerWatcher struct{ lab *lab }

func (w *powerWatcher) Reference() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "LabPowerWatcher", Value: "labPowerWatcher"}
}

// PutObject sees every new object, tasks before they run (see clones.go).
func (w *powerWatcher) PutObject(obj mo.Reference) {
	if task, ok := obj.(*simulator.Task); ok {
		keepEntitiesOnly(task)
		w.wrapTask(task)
	}
}

// keepEntitiesOnly leaves a task's entity unset when it is not a managed entity.
// vSphere types TaskInfo.entity as a ManagedEntity; the simulator also puts managers
// there (the FileManager of DeleteDatastoreFile_Task), and pyVmomi then refuses the
// whole TaskInfo, so a client could not even read whether the task succeeded.
func keepEntitiesOnly(task *simulator.Task) {
	if task.Info.Entity == nil {
		return
	}
	if _, ok := simulator.Map.Get(*task.Info.Entity).(mo.Entity); !ok {
		task.Info.Entity, task.Info.EntityName = nil, ""
	}
}

func (w *powerWatcher) RemoveObject(types.ManagedObjectReference) {}

func (w *powerWatcher) UpdateObject(obj mo.Reference, changes []types.PropertyChange) {
	g := w.lab.guestOf(obj.Reference())
	if g == nil {
		return
	}
	for _, change := range changes {
		if change.Name != "runtime.powerState" {
			continue
		}
		// The handler runs under the VM's lock; boot and shutdown update the VM, so
		// they run on their own goroutine.
		switch change.Val.(types.VirtualMachinePowerState) {
		case types.VirtualMachinePowerStatePoweredOn:
			go g.powerOn()
		default:
			go func() {
				g.powerOff()
				g.publish(false)
			}()
		}
	}
}
