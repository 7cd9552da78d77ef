package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// What VMware Tools in a guest knows lives in the guest, not in vCenter: when the lab's
// vCenter restarts, the guests keep running, and the new launcher takes over from what
// the old one left in each guest's tools directory (guests/<vm>.tools/):
//
//	power.json          powered on, boot time, tools up, the console's pid
//	processes/<pid>.json       a program StartProgramInGuest started (its GuestProcessInfo)
//	processes/<pid>.exit.json  its exit code and end time, written by its waiter
//	processes/<pid>.status     a Windows stand-in program's whole exit status, for its waiter
//	windows/powershell.jsonl   what the Windows stand-in was asked of powershell.exe
//
// Every program runs under a waiter (the launcher binary run as "wait-program"), as
// vmtoolsd runs each one under a forked waiter: the waiter outlives the launcher,
// reaps the program and records how it ended.

const waiterCommand = "wait-program"

// powerRecord is power.json.
type powerRecord struct {
	PoweredOn  bool      `json:"powered_on"`
	BootTime   time.Time `json:"boot_time"`
	ToolsUp    bool      `json:"tools_up"`
	ConsolePid int       `json:"console_pid"`
}

// exitRecord is processes/<pid>.exit.json.
type exitRecord struct {
	ExitCode int32     `json:"exit_code"`
	EndTime  time.Time `json:"end_time"`
}

func (g *guest) toolsDir() string     { return g.cfg.Root + ".tools" }
func (g *guest) processesDir() string { return filepath.Join(g.toolsDir(), "processes") }

func (g *guest) exitFile(pid int64) string {
	return filepath.Join(g.processesDir(), fmt.Sprintf("%d.exit.json", pid))
}

// writeJSON replaces path with value's JSON atomically (a reader never sees half of it).
func writeJSON(path string, value any) error {
	data, err := json.Marshal(value)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	partial := path + ".part"
	if err := os.WriteFile(partial, data, 0o600); err != nil {
		return err
	}
	return os.Rename(partial, path)
}

func readJSON(path string, value any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(data, value)
}

// savePower records the guest's power and tools state; the caller holds g.mu.
func (g *guest) savePower() {
	record := powerRecord{PoweredOn: g.poweredOn, BootTime: g.bootTime, ToolsUp: g.toolsUp}
	if g.consoleCmd != nil && g.consoleCmd.Process != nil {
		record.ConsolePid = g.consoleCmd.Process.Pid
	}
	if err := writeJSON(filepath.Join(g.toolsDir(), "power.json"), record); err != nil {
		g.logf("Tools: cannot record the power state: %s", err)
	}
}

// loadPower reads what an earlier launcher recorded, or nil when it recorded nothing.
func (g *guest) loadPower() *powerRecord {
	record := new(powerRecord)
	if err := readJSON(filepath.Join(g.toolsDir(), "power.json"), record); err != nil {
		return nil
	}
	return record
}

// saveStarted records a started program so that a later launcher lists it too.
func (g *guest) saveStarted(info processInfo) {
	path := filepath.Join(g.processesDir(), fmt.Sprintf("%d.json", info.Pid))
	if err := writeJSON(path, info); err != nil {
		g.logf("Tools: cannot record process %d: %s", info.Pid, err)
	}
}

// loadStarted reads the programs an earlier launcher started since the guest booted.
func (g *guest) loadStarted() map[int64]*startedProcess {
	started := map[int64]*startedProcess{}
	entries, _ := os.ReadDir(g.processesDir())
	for _, entry := range entries {
		name := entry.Name()
		if !strings.HasSuffix(name, ".json") || strings.HasSuffix(name, ".exit.json") {
			continue
		}
		var info processInfo
		if readJSON(filepath.Join(g.processesDir(), name), &info) == nil {
			started[info.Pid] = &startedProcess{info: info}
		}
	}
	return started
}

// forgetProcesses drops every record of started programs (the guest powered off).
func (g *guest) forgetProcesses() {
	_ = os.RemoveAll(g.processesDir())
}

// collectExit fills in how a started program ended once its waiter has said so; the
// caller holds g.mu.
func (g *guest) collectExit(p *startedProcess) {
	if p.info.ExitCode != nil {
		return
	}
	var record exitRecord
	if readJSON(g.exitFile(p.info.Pid), &record) != nil {
		return
	}
	code, ended := record.ExitCode, record.EndTime
	p.info.ExitCode, p.info.EndTime = &code, &ended
}

// startUnderWaiter starts argv as a guest program under a waiter and returns its pid.
// The waiter gets a session of its own, so it outlives the launcher; the program is in
// the waiter's process group and leads none, as under vmtoolsd.
func (g *guest) startUnderWaiter(argv []string, env []string) (int64, error) {
	self, err := os.Executable()
	if err != nil {
		return 0, err
	}
	if err := os.MkdirAll(g.processesDir(), 0o700); err != nil {
		return 0, err
	}
	reader, writer, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	defer reader.Close()
	waiter := exec.Command(self, append([]string{waiterCommand, g.processesDir(), "--"}, argv...)...)
	waiter.Env = env
	waiter.Stdout = writer
	waiter.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = waiter.Start()
	_ = writer.Close()
	if err != nil {
		return 0, err
	}
	go func() { _ = waiter.Wait() }()
	// The waiter's one line: the program's pid, or why it did not start.
	_ = reader.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(reader).ReadString('\n')
	if err != nil {
		_ = waiter.Process.Kill()
		return 0, fmt.Errorf("the program's waiter reported no pid: %w", err)
	}
	pid, err := strconv.ParseInt(strings.TrimSpace(line), 10, 64)
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("the program did not start: %s", strings.TrimSpace(line))
	}
	return pid, nil
}

// runWaiter is the waiter: start argv, report its pid, wait, and
// record how it ended in dir/<pid>.exit.json. Run as: launcher wait-program DIR -- ARGV...
// The pid (or why the program did not start) is the one line it writes on stdout,
// which it then closes: the program's stdio is /dev/null, as under vmtoolsd.
func runWaiter(args []string) int {
	if len(args) < 3 || args[1] != "--" {
		fmt.Fprintln(os.Stderr, "usage: launcher wait-program DIR -- PROGRAM [ARG...]")
		return 2
	}
	dir, argv := args[0], args[2:]
	program := exec.Command(argv[0], argv[1:]...)
	program.Env = os.Environ()
	if err := program.Start(); err != nil {
		fmt.Println(err.Error())
		return 1
	}
	pid := int64(program.Process.Pid)
	fmt.Println(pid)
	_ = os.Stdout.Close()
	err := program.Wait()
	code := int32(0)
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		code = int32(exit.ExitCode())
		if status, ok := exit.Sys().(syscall.WaitStatus); ok && status.Signaled() {
			code = 128 + int32(status.Signal())
		}
	}
	// A Windows stand-in program's status is 32 bits; it leaves them in <pid>.status.
	status := filepath.Join(dir, fmt.Sprintf("%d.status", pid))
	if data, err := os.ReadFile(status); err == nil {
		if whole, err := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 32); err == nil {
			code = int32(uint32(whole))
		}
		_ = os.Remove(status)
	}
	path := filepath.Join(dir, fmt.Sprintf("%d.exit.json", pid))
	if err := writeJSON(path, exitRecord{ExitCode: code, EndTime: time.Now()}); err != nil {
		return 1
	}
	return 0
}
