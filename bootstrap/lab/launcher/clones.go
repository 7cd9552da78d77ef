package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
	"reflect"
	"strings"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// Clones. The simulator's CloneVM_Task makes an inventory object only; in the lab a
// clone of a namespace guest gets a guest of its own, made by the Python side
// (`python -m beachhead.bootstrap.lab.clones add`: namespace, a copy of the source's
// guest root, a new MAC and address by DHCP, its own sshd host key), before the task
// reports success, as a real clone's disk exists once its task has finished.
// Destroy_Task of a clone removes that guest again (`clones remove`).
//
// The simulator runs a VM's task functions through Task.Execute, and every task
// passes through the registry (Map.Put) before it runs, so the lab wraps Execute there.

const (
	cloneTask   = "VirtualMachine.cloneVm"
	destroyTask = "VirtualMachine.destroy"
	cloneHelper = "beachhead.bootstrap.lab.clones"
	// cloneTimeout bounds the Python side: a namespace, a copy of the guest root, a
	// host key and a DHCP lease (its own wait is 30 s).
	cloneTimeout = 60 * time.Second
)

// wrapTask gives the lab's clone and destroy tasks their guest side.
func (w *powerWatcher) wrapTask(task *simulator.Task) {
	if task.Info.Entity == nil {
		return
	}
	source := *task.Info.Entity
	run := task.Execute
	switch task.Info.DescriptionId {
	case cloneTask:
		task.Execute = func(t *simulator.Task) (types.AnyType, types.BaseMethodFault) {
			result, fault := run(t)
			if fault != nil {
				return result, fault
			}
			clone, ok := result.(types.ManagedObjectReference)
			if !ok {
				return result, fault
			}
			if err := w.lab.addClone(source, clone); err != nil {
				return nil, &types.SystemError{Reason: err.Error()}
			}
			return result, nil
		}
	case destroyTask:
		task.Execute = func(t *simulator.Task) (types.AnyType, types.BaseMethodFault) {
			result, fault := run(t)
			if fault == nil {
				if err := w.lab.removeClone(source); err != nil {
					return nil, &types.SystemError{Reason: err.Error()}
				}
			}
			return result, fault
		}
	}
}

// addClone gives the new VM clone a guest copied from the source VM's, when the source
// is a namespace guest (a console VM's clone stays an inventory object).
func (l *lab) addClone(source, clone types.ManagedObjectReference) error {
	parent := l.guestOf(source)
	if parent == nil || parent.qemuConsole() {
		return nil
	}
	vm, ok := simulator.Map.Get(clone).(*simulator.VirtualMachine)
	if !ok {
		return fmt.Errorf("clone %s not in the inventory", clone.Value)
	}
	var cfg vmConfig
	out, err := l.cloneHelper("add", "--source", parent.cfg.Name, "--name", vm.Name, "--moref", clone.Value)
	if err != nil {
		return fmt.Errorf("the clone %s (%s) exists without a guest: %w", vm.Name, clone.Value, err)
	}
	if err := json.Unmarshal(out, &cfg); err != nil {
		return fmt.Errorf("clone %s: %s: %w", vm.Name, cloneHelper, err)
	}
	logPath, err := vmLogPath(vm)
	if err != nil {
		return err
	}
	g := newGuest(cfg, parent.bootDelay)
	g.python, g.moref, g.vmLog = l.cfg.Python, clone, logPath
	simulator.Map.WithLock(vm, func() { setMAC(vm, cfg.MAC) })
	l.mu.Lock()
	l.byName[cfg.Name] = g
	l.byMoref[clone] = g
	l.mu.Unlock()
	g.logf("Guest: cloned from %s (%s)", parent.cfg.Name, parent.moref.Value)
	return nil
}

// removeClone takes a destroyed clone's guest away; other VMs keep theirs (a lab VM
// destroyed by a client just has nobody inside any more).
func (l *lab) removeClone(vm types.ManagedObjectReference) error {
	g := l.guestOf(vm)
	if g == nil || g.cfg.CloneOf == "" {
		return nil
	}
	g.powerOff()
	l.mu.Lock()
	delete(l.byName, g.cfg.Name)
	delete(l.byMoref, vm)
	l.mu.Unlock()
	_, err := l.cloneHelper("remove", "--name", g.cfg.Name)
	return err
}

// cloneHelper runs the Python side and returns what it printed.
func (l *lab) cloneHelper(args ...string) ([]byte, error) {
	cmd := exec.Command(l.cfg.Python, append([]string{"-m", cloneHelper}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			return nil, fmt.Errorf("%s %s: %v: %s", cloneHelper, args[0], err, strings.TrimSpace(stderr.String()))
		}
		return stdout.Bytes(), nil
	case <-time.After(cloneTimeout):
		_ = cmd.Process.Kill()
		<-done
		return nil, fmt.Errorf("%s %s: no answer within %s", cloneHelper, args[0], cloneTimeout)
	}
}

// setMAC gives the clone's network adapter its own address, as vCenter generates one
// for a clone (the simulator copies the source's). The simulator's clone shares the
// source's device objects, so the adapter is replaced by a copy first.
func setMAC(vm *simulator.VirtualMachine, mac string) {
	for i, device := range vm.Config.Hardware.Device {
		if _, ok := device.(types.BaseVirtualEthernetCard); !ok {
			continue
		}
		own := reflect.New(reflect.TypeOf(device).Elem())
		own.Elem().Set(reflect.ValueOf(device).Elem())
		vm.Config.Hardware.Device[i] = own.Interface().(types.BaseVirtualDevice)
		nic := own.Interface().(types.BaseVirtualEthernetCard).GetVirtualEthernetCard()
		old := nic.MacAddress
		nic.MacAddress = mac
		nic.AddressType = string(types.VirtualEthernetCardMacTypeAssigned)
		if vm.Guest != nil {
			for i := range vm.Guest.Net {
				if vm.Guest.Net[i].MacAddress == old {
					vm.Guest.Net[i].MacAddress = mac
				}
			}
		}
		return // the lab's VMs have one adapter
	}
}
