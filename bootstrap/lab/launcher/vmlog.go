package main

import (
	"fmt"
	"log"
	"os"
	"path"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
)

// vmLogPath is where the simulator keeps the VM's vmware.log: its log directory on
// the datastore, as a host path. The datastore file API (/folder/...) serves it.
func vmLogPath(vm *simulator.VirtualMachine) (string, error) {
	var location object.DatastorePath
	if !location.FromString(vm.Config.Files.LogDirectory) {
		return "", fmt.Errorf("%s: no log directory (%q)", vm.Name, vm.Config.Files.LogDirectory)
	}
	for _, ref := range vm.Datastore {
		ds, ok := simulator.Map.Get(ref).(*simulator.Datastore)
		if ok && ds.Name == location.Datastore {
			return path.Join(ds.Info.GetDatastoreInfo().Url, location.Path, "vmware.log"), nil
		}
	}
	return "", fmt.Errorf("%s: datastore %s not found", vm.Name, location.Datastore)
}

// logf appends a line to the VM's vmware.log in the simulator's format with
// microseconds added, so the log tells what happened in the guest as well as what the
// simulator did, precisely enough to time it.
func (g *guest) logf(format string, v ...any) {
	if g.vmLog == "" {
		return
	}
	f, err := os.OpenFile(g.vmLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		log.Printf("%s: vmware.log: %s", g.cfg.Name, err)
		return
	}
	log.New(f, "vmx ", log.LstdFlags|log.Lmicroseconds).Printf(format, v...)
	_ = f.Close()
}
