package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	screenshotModule  = "beachhead.bootstrap.lab.screenshot"
	screenshotTimeout = 30 * time.Second
)

// screenshot answers CreateScreenshot_Task: the console's picture as a PNG in the VM's
// directory on its datastore, named VM-N.png (N the first number not taken) as
// vCenter names them; the result is its datastore path. A console VM's picture is
// QEMU's screendump of its display; a pty console's is drawn from what it printed.
// The simulator holds the VM's lock.
func (l *lab) screenshot(vm *simulator.VirtualMachine) (string, types.BaseMethodFault) {
	g := l.guestOf(vm.Self)
	if g == nil || g.vmLog == "" {
		return "", &types.NotSupported{}
	}
	var location object.DatastorePath
	if !location.FromString(vm.Config.Files.LogDirectory) {
		return "", &types.FileFault{File: vm.Config.Files.LogDirectory}
	}
	dir := filepath.Dir(g.vmLog)
	name := ""
	for n := 1; name == ""; n++ {
		candidate := fmt.Sprintf("%s-%d.png", vm.Name, n)
		if _, err := os.Stat(filepath.Join(dir, candidate)); os.IsNotExist(err) {
			name = candidate
		}
	}
	file := filepath.Join(dir, name)
	location.Path = path.Join(location.Path, name)
	if err := g.takeScreenshot(file, l.cfg.Python); err != nil {
		g.logf("Screenshot: %v", err)
		_ = os.Remove(file)
		return "", &types.FileFault{File: location.String()}
	}
	g.logf("Screenshot: %s", location.String())
	return location.String(), nil
}

// takeScreenshot writes the console's picture to file (PNG).
func (g *guest) takeScreenshot(file, python string) error {
	g.mu.Lock()
	if g.qemuConsole() {
		defer g.mu.Unlock()
		if g.qemu == nil {
			return fmt.Errorf("QEMU is not running")
		}
		_, err := g.qemu.qmp.execute("screendump", map[string]string{"filename": file, "format": "png"})
		return err
	}
	console := g.console
	g.mu.Unlock()
	if console == nil {
		return fmt.Errorf("the console is not running")
	}
	ctx, cancel := context.WithTimeout(context.Background(), screenshotTimeout)
	defer cancel()
	render := exec.CommandContext(ctx, python, "-m", screenshotModule, "--log", g.cfg.ConsoleLog, "--out", file)
	if out, err := render.CombinedOutput(); err != nil {
		return fmt.Errorf("drawing the console: %v: %s", err, out)
	}
	return nil
}
