package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

const guestPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// guest is the machine behind one lab VM: a process (the holder) whose mount and
// network namespaces are the guest's, and the processes the VM runs in them while it
// is powered on (services such as sshd, the console, programs started by guest ops).
type guest struct {
	cfg       vmConfig
	bootDelay time.Duration
	moref     types.ManagedObjectReference
	vmLog     string // host path of the VM's vmware.log; empty until the VM exists

	mu         sync.Mutex
	generation int // bumped on every power change, so a stale boot timer does nothing
	poweredOn  bool
	toolsUp    bool
	bootTime   time.Time
	started    map[int64]*startedProcess
	console    io.WriteCloser
	consoleCmd *exec.Cmd
	daemons    []*exec.Cmd
	adopt      *powerRecord // what an earlier launcher left running, taken over at power-on
	qemu       *qemuMachine // a console VM's running QEMU (qemu_console.go)
	python     string       // runs the Windows stand-in (its programs and WinRM endpoint)
}

// startedProcess is a program started by StartProgramInGuest: vSphere reports its exit
// code and end time after it finishes.
type startedProcess struct {
	info processInfo
}

func newGuest(cfg vmConfig, bootDelay time.Duration) *guest {
	return &guest{cfg: cfg, bootDelay: bootDelay, started: map[int64]*startedProcess{}}
}

func (g *guest) windows() bool { return g.cfg.OS == "windows" }

// command runs argv inside the guest's namespaces as the guest login, with the guest's
// base environment, in guest directory dir.
func (g *guest) command(dir string, env []string, argv ...string) *exec.Cmd {
	return g.enter(g.cfg.GuestUID, dir, env, argv...)
}

// system runs argv inside the guest's namespaces as root (services, the console).
func (g *guest) system(dir string, env []string, argv ...string) *exec.Cmd {
	return g.enter(0, dir, env, argv...)
}

func (g *guest) enter(uid int, dir string, env []string, argv ...string) *exec.Cmd {
	cmd := exec.Command("nsenter", g.enterArgs(uid, dir, argv...)...)
	cmd.Env = append(g.baseEnv(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	return cmd
}

// enterArgs are nsenter's arguments to run argv in the guest as uid, in guest
// directory dir. nsenter and setpriv exec, so argv runs under nsenter's pid.
func (g *guest) enterArgs(uid int, dir string, argv ...string) []string {
	args := []string{"--target", strconv.Itoa(g.cfg.HolderPid), "--mount", "--net", "--uts"}
	if dir != "" {
		// nsenter opens the directory before it enters the namespaces, so name it as
		// the host sees the guest's file system.
		args = append(args, "--wd="+g.hostPath(dir))
	}
	if uid != 0 {
		id := strconv.Itoa(uid)
		argv = append([]string{"setpriv", "--reuid=" + id, "--regid=" + id, "--init-groups"}, argv...)
	}
	return append(append(args, "--"), argv...)
}

func (g *guest) baseEnv() []string {
	home := "/root"
	if g.cfg.GuestUID != 0 {
		home = "/home/" + g.cfg.GuestUsername
	}
	if g.windows() {
		home = g.hostPath(`C:\Users\` + g.cfg.GuestUsername)
	}
	return []string{
		"PATH=" + guestPath, "HOME=" + home, "USER=" + g.cfg.GuestUsername,
		"LOGNAME=" + g.cfg.GuestUsername, "SHELL=/bin/sh", "LANG=C.UTF-8", "HOSTNAME=" + g.cfg.Hostname,
	}
}

// hostPath is where a guest path lives on the host: inside the holder's mount
// namespace for Linux guests, under the guest root for Windows drive paths.
func (g *guest) hostPath(guestFile string) string {
	if g.windows() {
		drive, rest := "C", guestFile
		if len(guestFile) >= 2 && guestFile[1] == ':' {
			drive, rest = strings.ToUpper(guestFile[:1]), guestFile[2:]
		}
		rest = strings.ReplaceAll(rest, `\`, "/")
		return filepath.Join(g.cfg.Root, drive, path.Clean("/"+rest))
	}
	return fmt.Sprintf("/proc/%d/root%s", g.cfg.HolderPid, path.Clean("/"+guestFile))
}

// guestPathOf is the inverse of hostPath for paths the lab creates.
func (g *guest) guestPathOf(hostFile, guestDir string) string {
	name := filepath.Base(hostFile)
	if g.windows() {
		return strings.TrimRight(guestDir, `\`) + `\` + name
	}
	return path.Join(guestDir, name)
}

// pids lists the processes in the guest's mount namespace, the holder excepted.
func (g *guest) pids() []int {
	own, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", g.cfg.HolderPid))
	if err != nil {
		return nil
	}
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, entry := range entries {
		pid, err := strconv.Atoi(entry.Name())
		if err != nil || pid == g.cfg.HolderPid {
			continue
		}
		if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); err == nil && ns == own {
			pids = append(pids, pid)
		}
	}
	return pids
}

func (g *guest) inGuest(pid int64) bool {
	for _, p := range g.pids() {
		if int64(p) == pid {
			return true
		}
	}
	return false
}

// powerOn boots the guest: services and console start now, VMware Tools report
// running after the boot delay. A guest an earlier launcher left running is taken
// over instead: its services and programs go on, only the console starts again.
func (g *guest) powerOn() {
	if g.qemuConsole() {
		g.powerOnQemu()
		return
	}
	g.mu.Lock()
	g.generation++
	generation := g.generation
	g.poweredOn = true
	adopted := g.adopt
	g.adopt = nil
	toolsIn := g.bootDelay
	if adopted != nil {
		g.bootTime, g.toolsUp, g.started = adopted.BootTime, adopted.ToolsUp, g.loadStarted()
		if adopted.ConsolePid > 0 {
			_ = syscall.Kill(adopted.ConsolePid, syscall.SIGKILL) // its input died with the old launcher
		}
		g.startConsole()
		toolsIn = time.Until(adopted.BootTime.Add(g.bootDelay))
	} else {
		g.bootTime = time.Now()
		g.forgetProcesses()
		g.startDaemons()
	}
	g.savePower()
	toolsUp := g.toolsUp
	g.mu.Unlock()
	if toolsUp {
		g.publish(true)
		g.logf("Guest: taken over running since %s", g.bootTime.Format(time.RFC3339))
		g.logToolsRunning()
		return
	}
	g.logf("Guest: booting; tools expected in %s", toolsIn)
	time.AfterFunc(toolsIn, func() {
		g.mu.Lock()
		current := g.generation == generation
		if current {
			g.toolsUp = true
			g.savePower()
		}
		g.mu.Unlock()
		if current {
			g.publish(true)
			g.logToolsRunning()
		}
	})
}

// logToolsRunning writes the vmware.log line that says tools run and where the guest is:
// after a boot, and again in the fresh log a restarted launcher begins for an adopted guest.
func (g *guest) logToolsRunning() {
	g.logf("Tools: running; guest %s at %s (%s)", g.cfg.Hostname, g.cfg.IP, g.cfg.MAC)
}

// wsmanConfig is what the Windows guest's WinRM endpoint is started with
// (bootstrap/lab/windows/wsman/labsetup.py writes the files).
type wsmanConfig struct {
	Users     string `json:"users"`
	CertMap   string `json:"cert_map"`
	Cert      string `json:"cert"`
	Key       string `json:"key"`
	CA        string `json:"ca"`
	RootStore string `json:"root_store"`
	Log       string `json:"log"`
	HTTP      string `json:"http"`
	HTTPS     string `json:"https"`
}

const wsmanModule = "beachhead.bootstrap.lab.windows.wsman"

// cloudbaseInitConfig is the cloudbase-init stand-in a Windows guest runs at each boot
// (bootstrap/lab/windows/firstboot.py writes it).
type cloudbaseInitConfig struct {
	Python     string `json:"python"`
	Script     string `json:"script"`
	ConfigFile string `json:"config_file"`
	User       string `json:"user"`
	CertMap    string `json:"cert_map"`
	RootStore  string `json:"root_store"`
	Record     string `json:"record"`
	Log        string `json:"log"`
	WaitS      int    `json:"wait_s"`
}

// startDaemons starts what a booted guest serves: sshd for Linux guests, the WinRM
// endpoint (5985, 5986 on the guest's address) for Windows ones, and the console.
func (g *guest) startDaemons() {
	if w := g.cfg.Wsman; g.windows() && w != nil && g.python != "" {
		winrm := g.system("/", nil, g.python, "-m", wsmanModule, "--root", g.cfg.Root,
			"--users", w.Users, "--http", w.HTTP, "--https", w.HTTPS, "--cert", w.Cert, "--key", w.Key,
			"--client-ca", w.CA, "--client-ca", w.RootStore, "--cert-map", w.CertMap,
			"--record", g.windowsRecordDir(), "--log", w.Log)
		winrm.Stderr = g.logFile(w.Log)
		if err := winrm.Start(); err == nil {
			g.daemons = append(g.daemons, winrm)
			go func() { _ = winrm.Wait() }()
		} else {
			g.logf("Guest: WinRM endpoint did not start: %v", err)
		}
	}
	if c := g.cfg.CloudbaseInit; g.windows() && c != nil {
		g.startCloudbaseInit(c)
	}
	if r := g.cfg.Rdp; g.windows() && r != nil && g.python != "" {
		g.startRdp(r)
	}
	if g.cfg.SshdConfig != "" {
		sshd := g.system("/", nil, "/usr/sbin/sshd", "-D", "-e", "-f", g.cfg.SshdConfig)
		sshd.Stderr = g.logFile(g.cfg.Root + ".sshd.log")
		if err := sshd.Start(); err == nil {
			g.daemons = append(g.daemons, sshd)
			go func() { _ = sshd.Wait() }()
		}
	}
	g.startConsole()
}

// rdpConfig is a Windows guest's RDP console: xrdp (bootstrap/lab/xrdp.py) on the
// guest's address whose session is the Windows stand-in's cmd.exe, and a second RDP
// server, FreeRDP's shadow (bootstrap/lab/rdp_shadow.py), showing an X display whose
// xterm runs the same (ShadowPort 0: none).
type rdpConfig struct {
	Dir        string `json:"dir"`
	Port       int    `json:"port"`
	Log        string `json:"log"`
	ShadowDir  string `json:"shadow_dir"`
	ShadowPort int    `json:"shadow_port"`
	ShadowLog  string `json:"shadow_log"`
}

// startRdp serves the guest's RDP console; the password reaches xrdp.py through its
// environment, never a command line. The session runs as the guest's uid (root for a
// Windows guest, whose drive is root's), and xrdp.py picks X displays no one holds.
func (g *guest) startRdp(r *rdpConfig) {
	env := []string{"BEACHHEAD_XRDP_PASSWORD=" + g.cfg.GuestPassword}
	session := []string{g.python, "-m", "beachhead.bootstrap.lab.windows.run", "--root", g.cfg.Root, "--", "cmd.exe"}
	rdp := g.system("/", env, append([]string{g.python, "-m", "beachhead.bootstrap.lab.xrdp", "--dir", r.Dir,
		"--address", g.cfg.IP, "--port", strconv.Itoa(r.Port), "--user", g.cfg.GuestUsername,
		"--uid", strconv.Itoa(g.cfg.GuestUID), "--"}, session...)...)
	g.startRdpServer("RDP console", rdp, r.Log)
	if r.ShadowPort != 0 {
		// rdp_shadow.py picks an X display no one holds (from :300, apart from xrdp's).
		shadow := g.system("/", nil, append([]string{g.python, "-m", "beachhead.bootstrap.lab.rdp_shadow",
			"--dir", r.ShadowDir, "--address", g.cfg.IP, "--port", strconv.Itoa(r.ShadowPort),
			"--uid", strconv.Itoa(g.cfg.GuestUID), "--"}, session...)...)
		g.startRdpServer("RDP shadow console", shadow, r.ShadowLog)
	}
}

// startRdpServer starts one of the guest's RDP servers as a daemon (ended at power-off).
func (g *guest) startRdpServer(what string, cmd *exec.Cmd, log string) {
	out := g.logFile(log)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		g.logf("Guest: %s did not start: %v", what, err)
		return
	}
	g.daemons = append(g.daemons, cmd)
	go func() { _ = cmd.Wait() }()
}

// startCloudbaseInit runs the cloudbase-init stand-in, as the service runs at a Windows
// boot: it reads the instance's data from the metadata server and maps the instance's
// WinRM client certificates, then ends; vmware.log says how it ended.
func (g *guest) startCloudbaseInit(c *cloudbaseInitConfig) {
	run := g.system("/", nil, c.Python, c.Script, "--config-file", c.ConfigFile, "--user", c.User,
		"--cert-map", c.CertMap, "--root-store", c.RootStore, "--record", c.Record,
		"--wait", strconv.Itoa(c.WaitS))
	out := g.logFile(c.Log)
	run.Stdout, run.Stderr = out, out
	if err := run.Start(); err != nil {
		g.logf("Guest: cloudbase-init did not start: %v", err)
		return
	}
	g.logf("Guest: cloudbase-init started (pid %d)", run.Process.Pid)
	g.daemons = append(g.daemons, run)
	go func() {
		if err := run.Wait(); err != nil {
			g.logf("Guest: cloudbase-init ended: %v; see %s", err, c.Log)
		} else {
			g.logf("Guest: cloudbase-init finished")
		}
	}()
}

// startConsole runs a login shell on a pseudo-terminal (script(1) owns the pty):
// what is written to g.console is typed at the guest's console.
func (g *guest) startConsole() {
	shell := "/bin/bash --login"
	if g.windows() {
		shell = "/bin/sh"
	}
	dir := "/root"
	if g.windows() {
		dir = `C:\`
	}
	console := g.system(dir, []string{"TERM=dumb"}, "script", "--quiet", "--flush", "--return", "--command", shell, "/dev/null")
	out := g.logFile(g.cfg.ConsoleLog)
	console.Stdout, console.Stderr = out, out
	stdin, err := console.StdinPipe()
	if err != nil {
		return
	}
	if err := console.Start(); err != nil {
		return
	}
	g.console, g.consoleCmd = stdin, console
	g.daemons = append(g.daemons, console)
	go func() { _ = console.Wait() }()
}

func (g *guest) logFile(name string) io.Writer {
	if name == "" {
		return nil
	}
	f, err := os.OpenFile(name, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil
	}
	return f
}

// powerOff stops everything running in the guest.
func (g *guest) powerOff() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.generation++
	g.poweredOn, g.toolsUp = false, false
	if g.console != nil {
		_ = g.console.Close()
		g.console = nil
	}
	for _, daemon := range g.daemons {
		if daemon.Process != nil {
			_ = daemon.Process.Kill()
		}
	}
	g.daemons = nil
	g.stopQemu()
	deadline := time.Now().Add(5 * time.Second)
	for pids := g.pids(); len(pids) > 0 && time.Now().Before(deadline); pids = g.pids() {
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
	g.started = map[int64]*startedProcess{}
	g.consoleCmd = nil
	g.forgetProcesses()
	g.savePower()
	g.logf("Guest: powered off; tools, console and guest processes stopped")
}

// publish sets the VM's guest properties through the simulator's update path, so
// property collectors see them change.
func (g *guest) publish(running bool) {
	obj := simulator.Map.Get(g.moref)
	if obj == nil {
		return
	}
	toolsRunning, toolsStatus, state := "guestToolsNotRunning", types.VirtualMachineToolsStatusToolsNotRunning, "notRunning"
	ip, hostname, nics := "", "", []types.GuestNicInfo{}
	if running {
		toolsRunning, toolsStatus, state = "guestToolsRunning", types.VirtualMachineToolsStatusToolsOk, "running"
		ip, hostname = g.cfg.IP, g.cfg.Hostname
		nics = []types.GuestNicInfo{{
			Network: "VM Network", IpAddress: []string{g.cfg.IP}, MacAddress: g.cfg.MAC,
			Connected: true, DeviceConfigId: 4000,
		}}
	}
	family := string(types.VirtualMachineGuestOsFamilyLinuxGuest)
	if g.windows() {
		family = string(types.VirtualMachineGuestOsFamilyWindowsGuest)
	}
	changes := []types.PropertyChange{
		{Name: "guest.toolsRunningStatus", Val: toolsRunning},
		{Name: "guest.toolsStatus", Val: toolsStatus},
		{Name: "guest.toolsVersionStatus2", Val: "guestToolsCurrent"},
		{Name: "guest.guestState", Val: state},
		{Name: "guest.guestOperationsReady", Val: running}, // mo.ApplyPropertyChange allocates the *bool
		{Name: "guest.interactiveGuestOperationsReady", Val: false},
		{Name: "guest.guestId", Val: g.cfg.GuestID},
		{Name: "guest.guestFamily", Val: family},
		{Name: "guest.hostName", Val: hostname},
		{Name: "guest.ipAddress", Val: ip},
		{Name: "guest.net", Val: nics},
		{Name: "summary.guest.toolsRunningStatus", Val: toolsRunning},
		{Name: "summary.guest.toolsStatus", Val: toolsStatus},
		{Name: "summary.guest.hostName", Val: hostname},
		{Name: "summary.guest.ipAddress", Val: ip},
	}
	simulator.Map.WithLock(obj, func() { simulator.Map.Update(obj, changes) })
}

// state reports the guest's power and tools state for guest operations.
func (g *guest) state() (poweredOn, toolsUp bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.poweredOn, g.toolsUp
}
