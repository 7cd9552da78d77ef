package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// processManager is the lab's GuestProcessManager: programs really run in the guest.
// It embeds the managed object type, as every simulator object must.
type processManager struct {
	mo.GuestProcessManager
	lab *lab
}

// prepare checks what vSphere checks before a guest operation, in the same order:
// power state, tools, credentials.
func (l *lab) prepare(vm types.ManagedObjectReference, auth types.BaseGuestAuthentication) (*guest, *soap.Fault) {
	g := l.guestOf(vm)
	if g == nil {
		return nil, simulator.Fault("not a lab VM", &types.ManagedObjectNotFound{Obj: vm})
	}
	poweredOn, toolsUp := g.state()
	if !poweredOn {
		vmObj, _ := simulator.Map.Get(vm).(*simulator.VirtualMachine)
		existing := types.VirtualMachinePowerStatePoweredOff
		if vmObj != nil {
			existing = vmObj.Runtime.PowerState
		}
		return nil, simulator.Fault("", &types.InvalidPowerState{
			RequestedState: types.VirtualMachinePowerStatePoweredOn, ExistingState: existing,
		})
	}
	if !toolsUp {
		return nil, simulator.Fault("", &types.GuestOperationsUnavailable{})
	}
	switch login := auth.(type) {
	case *types.NamePasswordAuthentication:
		if login.Username == g.cfg.GuestUsername && login.Password == g.cfg.GuestPassword {
			return g, nil
		}
	case *types.TicketedSessionAuthentication: // from AcquireCredentialsInGuest (guest_auth.go)
		if user, ok := ticketLogin(vm, login.Ticket); ok && user == g.cfg.GuestUsername {
			return g, nil
		}
	}
	return nil, simulator.Fault("", &types.InvalidGuestLogin{})
}

// guestOp answers a guest operation as vSphere does: its checks first (prepare), then
// op on the guest. The results fill the method's response body.
func guestOp[R any](
	l *lab, vm types.ManagedObjectReference, auth types.BaseGuestAuthentication, op func(*guest) (*R, *soap.Fault),
) (*R, *soap.Fault) {
	g, fault := l.prepare(vm, auth)
	if fault != nil {
		return nil, fault
	}
	return op(g)
}

// StartProgramInGuest starts spec.ProgramPath with spec.Arguments in the guest under a
// waiter and returns its pid at once; the program's output goes nowhere, as in vSphere.
func (m *processManager) StartProgramInGuest(req *types.StartProgramInGuest) soap.HasFault {
	body := new(methods.StartProgramInGuestBody)
	body.Res, body.Fault_ = guestOp(m.lab, req.Vm, req.Auth, func(g *guest) (*types.StartProgramInGuestResponse, *soap.Fault) {
		spec := req.Spec.GetGuestProgramSpec()
		argv, err := g.programArgv(m.lab.cfg.Python, spec.ProgramPath, spec.Arguments, spec.WorkingDirectory)
		if err != nil {
			return nil, simulator.Fault(err.Error(), &types.FileNotFound{FileFault: types.FileFault{File: spec.ProgramPath}})
		}
		dir := spec.WorkingDirectory
		if dir != "" {
			if info, err := os.Stat(g.hostPath(spec.WorkingDirectory)); err != nil || !info.IsDir() {
				return nil, fileNotFound(spec.WorkingDirectory)
			}
		}
		nsenter := append([]string{"nsenter"}, g.enterArgs(g.cfg.GuestUID, dir, argv...)...)
		// Read before the start: a short program's waiter records its end meanwhile.
		started := time.Now()
		pid, err := g.startUnderWaiter(nsenter, append(g.baseEnv(), spec.EnvVariables...))
		if err != nil {
			return nil, simulator.Fault(err.Error(), &types.GuestOperationsFault{})
		}
		process := &startedProcess{info: processInfo{
			Name: spec.ProgramPath, Pid: pid, Owner: g.cfg.GuestUsername,
			CmdLine: commandLine(g, spec.ProgramPath, spec.Arguments), StartTime: started,
		}}
		g.mu.Lock()
		g.started[pid] = process
		g.saveStarted(process.info)
		g.mu.Unlock()
		g.logf("GuestOps: StartProgramInGuest %s as %s: pid %d", spec.ProgramPath, g.cfg.GuestUsername, pid)
		return &types.StartProgramInGuestResponse{Returnval: pid}, nil
	})
	return body
}

// programArgv is how the guest runs a program: on Linux through a shell, as VMware
// Tools does, so arguments may use the shell's syntax; on the Windows stand-in through
// its runner (bootstrap/lab/windows/run.py), given the command line Windows' VMware
// Tools hands CreateProcess: the quoted program path, then the arguments. A program
// the stand-in does not have is refused before anything starts, as CreateProcess
// fails. The runner writes its whole 32-bit exit status where the waiter reads it
// (processes/<pid>.status) and records what missing programs were asked
// (guests/<vm>.tools/windows/).
func (g *guest) programArgv(python, program, arguments, dir string) ([]string, error) {
	if !g.windows() {
		if _, err := os.Stat(g.hostPath(program)); err != nil {
			return nil, fmt.Errorf("%s: no such program in the guest", program)
		}
		// bash -c, which VMware Tools uses, execs a lone command; exec does it here, so
		// the pid handed back is the program's.
		return []string{"/bin/sh", "-c", "exec " + shellQuote(program) + " " + arguments}, nil
	}
	line := commandLine(g, program, arguments)
	if err := exec.Command(python, "-m", windowsRunner, "--resolve", "--", line).Run(); err != nil {
		return nil, fmt.Errorf("%s: The system cannot find the file specified", program)
	}
	argv := []string{python, "-m", windowsRunner, "--root", g.cfg.Root}
	if dir != "" {
		argv = append(argv, "--cwd", dir)
	}
	return append(argv, "--record", g.windowsRecordDir(),
		"--status-file", filepath.Join(g.processesDir(), "{pid}.status"), "--", line), nil
}

const windowsRunner = "beachhead.bootstrap.lab.windows.run"

// windowsRecordDir is where the Windows stand-in records requests to programs it lacks
// (powershell.jsonl).
func (g *guest) windowsRecordDir() string { return filepath.Join(g.toolsDir(), "windows") }

// commandLine is the program's command line as the guest's process list shows it.
func commandLine(g *guest, program, arguments string) string {
	if g.windows() {
		return strings.TrimSpace(`"` + program + `" ` + arguments)
	}
	return strings.TrimSpace(fmt.Sprintf("%q %s", program, arguments))
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// processInfo is vSphere's GuestProcessInfo as it goes on the wire. govmomi 0.24's
// type drops an exit code of 0 (omitempty), which clients then read as unset; here the
// exit code is present exactly when the process has ended.
type processInfo struct {
	Name      string     `xml:"name"`
	Pid       int64      `xml:"pid"`
	Owner     string     `xml:"owner"`
	CmdLine   string     `xml:"cmdLine"`
	StartTime time.Time  `xml:"startTime"`
	EndTime   *time.Time `xml:"endTime,omitempty"`
	ExitCode  *int32     `xml:"exitCode,omitempty"`
}

type listProcessesResponse struct {
	Returnval []processInfo `xml:"returnval,omitempty"`
}

type listProcessesBody struct {
	Res    *listProcessesResponse `xml:"ListProcessesInGuestResponse,omitempty"`
	Fault_ *soap.Fault            `xml:"http://schemas.xmlsoap.org/soap/envelope/ Fault,omitempty"`
}

func (b *listProcessesBody) Fault() *soap.Fault { return b.Fault_ }

// ListProcessesInGuest lists the guest's processes, and those started through guest
// operations that have finished, with their exit codes.
func (m *processManager) ListProcessesInGuest(req *types.ListProcessesInGuest) soap.HasFault {
	body := new(listProcessesBody)
	body.Res, body.Fault_ = guestOp(m.lab, req.Vm, req.Auth, func(g *guest) (*listProcessesResponse, *soap.Fault) {
		wanted := map[int64]bool{}
		for _, pid := range req.Pids {
			wanted[pid] = true
		}
		g.mu.Lock()
		listed := map[int64]bool{}
		var processes []processInfo
		for pid, p := range g.started {
			if len(wanted) == 0 || wanted[pid] {
				g.collectExit(p)
				processes = append(processes, p.info)
				listed[pid] = true
			}
		}
		bootTime := g.bootTime
		g.mu.Unlock()
		for _, pid := range g.pids() {
			p := int64(pid)
			if listed[p] || (len(wanted) != 0 && !wanted[p]) {
				continue
			}
			name, cmdline := g.processName(pid)
			processes = append(processes, processInfo{
				Name: name, Pid: p, Owner: g.cfg.GuestUsername, CmdLine: cmdline, StartTime: bootTime,
			})
		}
		return &listProcessesResponse{Returnval: processes}, nil
	})
	return body
}

// processName is a guest process's name and command line: the Windows stand-in's
// runner shows as the program it runs (its file name, its Windows command line).
func (g *guest) processName(pid int) (string, string) {
	comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	raw, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	argv := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
	for i := 0; g.windows() && i+1 < len(argv); i++ {
		if argv[i] == "-m" && argv[i+1] == windowsRunner {
			line := argv[len(argv)-1]
			program := strings.TrimLeft(line, " \t")
			if strings.HasPrefix(program, `"`) {
				program = strings.SplitN(program[1:], `"`, 2)[0]
			} else {
				program = strings.Fields(program)[0]
			}
			name := strings.ToLower(program[strings.LastIndexAny(program, `\/`)+1:])
			if !strings.Contains(name, ".") {
				name += ".exe"
			}
			return name, line
		}
	}
	return strings.TrimSpace(string(comm)), strings.TrimSpace(strings.Join(argv, " "))
}

// TerminateProcessInGuest ends the one process it is given as VMware Tools does
// (open-vm-tools' ProcMgr_KillByPid): SIGTERM, up to 5 s for it to end, then SIGKILL
// and up to 15 s more, and only then answers. Its children are not signalled.
func (m *processManager) TerminateProcessInGuest(req *types.TerminateProcessInGuest) soap.HasFault {
	body := new(methods.TerminateProcessInGuestBody)
	body.Res, body.Fault_ = guestOp(m.lab, req.Vm, req.Auth, func(g *guest) (*types.TerminateProcessInGuestResponse, *soap.Fault) {
		if !g.inGuest(req.Pid) {
			return nil, simulator.Fault("", &types.GuestProcessNotFound{Pid: req.Pid})
		}
		g.logf("GuestOps: TerminateProcessInGuest pid %d", req.Pid)
		for _, step := range []struct {
			signal syscall.Signal
			wait   time.Duration
		}{{syscall.SIGTERM, 5 * time.Second}, {syscall.SIGKILL, 15 * time.Second}} {
			if err := syscall.Kill(int(req.Pid), step.signal); err != nil {
				break // gone meanwhile
			}
			if g.ended(req.Pid, step.wait) {
				return new(types.TerminateProcessInGuestResponse), nil
			}
		}
		if g.inGuest(req.Pid) {
			return nil, simulator.Fault(fmt.Sprintf("process %d did not end", req.Pid), &types.GuestOperationsFault{})
		}
		return new(types.TerminateProcessInGuestResponse), nil
	})
	return body
}

// ended waits up to wait for pid to leave the guest's process table (reaped, not a
// zombie), checking every 100 ms as VMware Tools does.
func (g *guest) ended(pid int64, wait time.Duration) bool {
	for deadline := time.Now().Add(wait); ; time.Sleep(100 * time.Millisecond) {
		if !g.inGuest(pid) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// ReadEnvironmentVariableInGuest returns NAME=VALUE pairs of the guest's environment
// (all of them when no names are given).
func (m *processManager) ReadEnvironmentVariableInGuest(req *types.ReadEnvironmentVariableInGuest) soap.HasFault {
	body := new(methods.ReadEnvironmentVariableInGuestBody)
	body.Res, body.Fault_ = guestOp(m.lab, req.Vm, req.Auth, func(g *guest) (*types.ReadEnvironmentVariableInGuestResponse, *soap.Fault) {
		var values []string
		for _, pair := range g.environment(m.lab.cfg.Python) {
			name := pair[:strings.Index(pair, "=")]
			for _, wanted := range req.Names {
				if wanted == name {
					values = append(values, pair)
				}
			}
			if len(req.Names) == 0 {
				values = append(values, pair)
			}
		}
		return &types.ReadEnvironmentVariableInGuestResponse{Returnval: values}, nil
	})
	return body
}

// environment is the guest login's environment: on the Windows stand-in as its
// runner gives it to programs (cmd.exe's "set"), with Windows' names.
func (g *guest) environment(python string) []string {
	if !g.windows() {
		return g.baseEnv()
	}
	set := exec.Command(python, "-m", windowsRunner, "--root", g.cfg.Root, "--", "cmd.exe /d /c set")
	set.Env = g.baseEnv()
	out, err := set.Output()
	if err != nil {
		return g.baseEnv()
	}
	var pairs []string
	for _, line := range strings.Split(string(out), "\r\n") {
		if strings.Contains(line, "=") {
			pairs = append(pairs, line)
		}
	}
	return pairs
}
