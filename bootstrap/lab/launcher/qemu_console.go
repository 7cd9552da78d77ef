package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// A console VM (console "qemu" in the lab YAML) is a real machine: QEMU (TCG) booting
// Debian's kernel and the lab's busybox initramfs (bootstrap/lab/qemu_vm.py) to a
// root shell on tty1. Power-on starts QEMU, power-off ends it; there are no VMware
// Tools, so guest operations always find them not running. The launcher drives the
// machine through QMP on a unix socket: keyboard input (PutUsbScanCodes), the VNC
// password, screendump.

// qemuConfig is how the Python side says a console VM is started.
type qemuConfig struct {
	Binary   string `json:"binary"`
	Kernel   string `json:"kernel"`
	Initrd   string `json:"initrd"`
	Append   string `json:"append"`
	QMP      string `json:"launcher_qmp_socket"` // the launcher's own QMP connection
	QMPOpen  string `json:"qmp_socket"`          // a second QMP monitor, for anyone else
	Serial   string `json:"serial_log"`
	Log      string `json:"log"`
	PidFile  string `json:"pid_file"`
	Tap      string `json:"tap"`
	MemoryMB int    `json:"memory_mb"`
}

const (
	qmpTimeout   = 10 * time.Second
	qemuStopWait = 5 * time.Second
	vncBasePort  = 5900 // QEMU's VNC display N listens on 5900+N
)

// serialPortFile is a console VM's serial port file, in the VM's directory on the
// datastore.
const serialPortFile = "serial.log"

// serialPortDevice is a console VM's serial port as an ESXi VM's file-backed one is:
// what the guest writes to its first serial port goes to a file on the datastore,
// which clients read through the datastore file API (/folder/...).
func serialPortDevice(datastore, vmName string) *types.VirtualSerialPort {
	connected := &types.VirtualDeviceConnectInfo{StartConnected: true, Connected: true}
	backing := &types.VirtualSerialPortFileBackingInfo{VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{
		FileName: fmt.Sprintf("[%s] %s/%s", datastore, vmName, serialPortFile),
	}}
	return &types.VirtualSerialPort{
		VirtualDevice: types.VirtualDevice{Key: -1, Backing: backing, Connectable: connected},
		YieldOnPoll:   true,
	}
}

// linkSerialPortFile makes the serial port's file in the VM's datastore directory show
// what QEMU writes to the guest's serial port (qemuSerial): a symbolic link, as QEMU's
// file lives outside the simulator's datastore (a directory each vCenter start makes
// anew), so it outlasts a vCenter restart as the machine does.
func linkSerialPortFile(qemuSerial, vmDir string) error {
	link := filepath.Join(vmDir, serialPortFile)
	if err := os.Remove(link); err != nil && !os.IsNotExist(err) {
		return err
	}
	return os.Symlink(qemuSerial, link)
}

// qemuMachine is a running QEMU process and the QMP connection to it.
type qemuMachine struct {
	pid  int
	done chan struct{} // closed when the process has ended
	qmp  *qmpClient
}

func (g *guest) qemuConsole() bool { return g.cfg.Qemu != nil }

// vncSettings are the RemoteDisplay.vnc.* options a VM's console follows, as ESXi
// reads them at power-on.
type vncSettings struct {
	enabled  bool
	port     int
	password string
}

// extraConfig is the VM's extraConfig, last value of a key winning and an empty one
// meaning absent (the lab's ReconfigVM_Task appends).
func (g *guest) extraConfig() map[string]string {
	values := map[string]string{}
	obj, ok := simulator.Map.Get(g.moref).(*simulator.VirtualMachine)
	if !ok {
		return values
	}
	simulator.Map.WithLock(obj, func() {
		for _, option := range obj.Config.ExtraConfig {
			value := option.GetOptionValue()
			text := fmt.Sprint(value.Value)
			if text == "" {
				delete(values, value.Key)
			} else {
				values[value.Key] = text
			}
		}
	})
	return values
}

func readVNCSettings(options map[string]string) vncSettings {
	settings := vncSettings{enabled: strings.EqualFold(options["RemoteDisplay.vnc.enabled"], "true")}
	settings.port, _ = strconv.Atoi(options["RemoteDisplay.vnc.port"])
	settings.password = options["RemoteDisplay.vnc.password"]
	return settings
}

// qemuArgs is QEMU's command line; it never holds a secret (the VNC password goes
// through QMP).
func (g *guest) qemuArgs(vnc vncSettings) []string {
	q := g.cfg.Qemu
	memory := q.MemoryMB
	if memory == 0 {
		memory = 256
	}
	args := []string{
		"-name", g.cfg.Name, "-machine", "pc,accel=tcg", "-m", strconv.Itoa(memory), "-smp", "1",
		"-nodefaults", "-no-user-config", "-vga", "std", "-display", "none", "-monitor", "none",
		"-kernel", q.Kernel, "-initrd", q.Initrd, "-append", q.Append + " beachhead.hostname=" + g.cfg.Hostname,
		"-serial", "file:" + q.Serial,
		"-qmp", "unix:" + q.QMP + ",server=on,wait=off",
		"-qmp", "unix:" + q.QMPOpen + ",server=on,wait=off",
		"-pidfile", q.PidFile,
		"-netdev", "tap,id=net0,ifname=" + q.Tap + ",script=no,downscript=no",
		"-device", "e1000,netdev=net0,mac=" + g.cfg.MAC,
	}
	if vnc.enabled {
		// key-delay-ms stays at QEMU's default: the console drops keys when flooded.
		display := "127.0.0.1:" + strconv.Itoa(vnc.port-vncBasePort)
		if vnc.password != "" {
			display += ",password=on"
		}
		args = append(args, "-vnc", display)
	}
	return args
}

// startQemu boots the console VM; the caller holds g.mu.
func (g *guest) startQemu(vnc vncSettings) {
	if vnc.enabled && vnc.port < vncBasePort {
		g.logf("VNC: RemoteDisplay.vnc.port %d is below %d; no VNC console", vnc.port, vncBasePort)
		vnc.enabled = false
	}
	q := g.cfg.Qemu
	_ = os.Remove(q.QMP)
	_ = os.Remove(q.QMPOpen)
	cmd := exec.Command(q.Binary, g.qemuArgs(vnc)...)
	out := g.logFile(q.Log)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		g.logf("Console: QEMU did not start: %v", err)
		return
	}
	machine := &qemuMachine{pid: cmd.Process.Pid, done: make(chan struct{}), qmp: &qmpClient{path: q.QMP}}
	go func() {
		_ = cmd.Wait()
		close(machine.done)
	}()
	g.qemu = machine
	g.logf("Console: QEMU started (pid %d), QMP %s, serial %s", machine.pid, q.QMP, q.Serial)
	if vnc.enabled {
		if vnc.password != "" {
			if _, err := machine.qmp.execute("set_password", map[string]string{"protocol": "vnc", "password": vnc.password}); err != nil {
				g.logf("VNC: cannot set the password: %v", err)
			}
		}
		g.logf("VNC: console on 127.0.0.1:%d (password %t)", vnc.port, vnc.password != "")
	}
}

// adoptQemu takes over the QEMU an earlier launcher started, if it still runs;
// the caller holds g.mu.
func (g *guest) adoptQemu() bool {
	data, err := os.ReadFile(g.cfg.Qemu.PidFile)
	if err != nil {
		return false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || !qemuRuns(pid, g.cfg.Qemu.QMP) {
		return false
	}
	machine := &qemuMachine{pid: pid, done: make(chan struct{}), qmp: &qmpClient{path: g.cfg.Qemu.QMP}}
	go func() { // not this launcher's child: watch for its end
		for qemuRuns(pid, g.cfg.Qemu.QMP) {
			time.Sleep(200 * time.Millisecond)
		}
		close(machine.done)
	}()
	g.qemu = machine
	g.logf("Console: QEMU (pid %d) taken over", pid)
	return true
}

// qemuRuns reports whether pid is a QEMU serving qmpPath (not a zombie).
func qemuRuns(pid int, qmpPath string) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !bytes.Contains(cmdline, []byte(qmpPath)) {
		return false
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	fields := strings.Fields(string(status[bytes.LastIndexByte(status, ')')+1:]))
	return len(fields) > 0 && fields[0] != "Z"
}

// stopQemu pulls the plug and waits for QEMU to be gone; the caller holds g.mu.
func (g *guest) stopQemu() {
	machine := g.qemu
	if machine == nil {
		return
	}
	g.qemu = nil
	machine.qmp.close()
	_ = syscall.Kill(machine.pid, syscall.SIGKILL)
	select {
	case <-machine.done:
	case <-time.After(qemuStopWait):
		g.logf("Console: QEMU (pid %d) did not end within %s", machine.pid, qemuStopWait)
	}
	_ = os.Remove(g.cfg.Qemu.QMP)
	_ = os.Remove(g.cfg.Qemu.QMPOpen)
	_ = os.Remove(g.cfg.Qemu.PidFile)
}

// powerOnQemu boots the console VM, or takes over the one an earlier launcher left
// running. No tools ever report running.
func (g *guest) powerOnQemu() {
	// Read before taking g.mu: SOAP methods hold the VM's lock and then take g.mu.
	vnc := readVNCSettings(g.extraConfig())
	g.mu.Lock()
	defer g.mu.Unlock()
	g.generation++
	g.poweredOn = true
	adopted := g.adopt
	g.adopt = nil
	if adopted != nil && g.adoptQemu() {
		g.bootTime = adopted.BootTime
	} else {
		g.stopQemu()
		g.bootTime = time.Now()
		g.startQemu(vnc)
	}
	g.savePower()
}

// qemuKeys are the QMP key codes (QKeyCode) of USB HID keyboard usage ids (HID Usage
// Tables, page 0x07): the physical key, whatever the guest's layout makes of it.
var qemuKeys = func() map[int32]string {
	keys := map[int32]string{
		0x28: "ret", 0x29: "esc", 0x2a: "backspace", 0x2b: "tab", 0x2c: "spc", 0x2d: "minus",
		0x2e: "equal", 0x2f: "bracket_left", 0x30: "bracket_right", 0x31: "backslash",
		0x32: "backslash", 0x33: "semicolon", 0x34: "apostrophe", 0x35: "grave_accent",
		0x36: "comma", 0x37: "dot", 0x38: "slash", 0x39: "caps_lock",
		0x46: "print", 0x47: "scroll_lock", 0x48: "pause", 0x49: "insert", 0x4a: "home",
		0x4b: "pgup", 0x4c: "delete", 0x4d: "end", 0x4e: "pgdn", 0x4f: "right", 0x50: "left",
		0x51: "down", 0x52: "up", 0x53: "num_lock", 0x54: "kp_divide", 0x55: "kp_multiply",
		0x56: "kp_subtract", 0x57: "kp_add", 0x58: "kp_enter", 0x62: "kp_0", 0x63: "kp_decimal",
		0x64: "less", 0x65: "compose", 0x87: "ro", 0x89: "yen",
		0xe0: "ctrl", 0xe1: "shift", 0xe2: "alt", 0xe3: "meta_l",
		0xe4: "ctrl_r", 0xe5: "shift_r", 0xe6: "alt_r", 0xe7: "meta_r",
	}
	for i := int32(0); i < 26; i++ {
		keys[0x04+i] = string(rune('a' + i))
	}
	for i := int32(0); i < 9; i++ {
		keys[0x1e+i] = strconv.Itoa(int(i) + 1)
		keys[0x59+i] = "kp_" + strconv.Itoa(int(i)+1)
	}
	keys[0x27] = "0"
	for i := int32(0); i < 12; i++ {
		keys[0x3a+i] = "f" + strconv.Itoa(int(i)+1)
	}
	return keys
}()

type qmpKey struct {
	Type string `json:"type"`
	Data string `json:"data"`
}

type qmpKeyEvent struct {
	Down bool   `json:"down"`
	Key  qmpKey `json:"key"`
}

type qmpInputEvent struct {
	Type string      `json:"type"`
	Data qmpKeyEvent `json:"data"`
}

func keyEvent(code string, down bool) qmpInputEvent {
	return qmpInputEvent{Type: "key", Data: qmpKeyEvent{Down: down, Key: qmpKey{Type: "qcode", Data: code}}}
}

// modifierKeys are the QMP key codes of the modifiers a key event holds down.
func modifierKeys(mods *types.UsbScanCodeSpecModifierType) []string {
	if mods == nil {
		return nil
	}
	var held []string
	for _, m := range []struct {
		set  *bool
		code string
	}{
		{mods.LeftControl, "ctrl"}, {mods.LeftShift, "shift"}, {mods.LeftAlt, "alt"}, {mods.LeftGui, "meta_l"},
		{mods.RightControl, "ctrl_r"}, {mods.RightShift, "shift_r"}, {mods.RightAlt, "alt_r"}, {mods.RightGui, "meta_r"},
	} {
		if isSet(m.set) {
			held = append(held, m.code)
		}
	}
	return held
}

// qemuKeyEvents turns one vSphere key event into what a keyboard sends: the modifiers
// pressed, the key pressed and released, the modifiers released. ok is false for a
// usage id QEMU has no key for.
func qemuKeyEvents(event types.UsbScanCodeSpecKeyEvent) (events []qmpInputEvent, ok bool) {
	code, ok := qemuKeys[event.UsbHidCode>>16]
	if !ok {
		return nil, false
	}
	held := modifierKeys(event.Modifiers)
	for _, m := range held {
		events = append(events, keyEvent(m, true))
	}
	events = append(events, keyEvent(code, true), keyEvent(code, false))
	for i := len(held) - 1; i >= 0; i-- {
		events = append(events, keyEvent(held[i], false))
	}
	return events, true
}

// typeQemu sends the call's key events to the VM's keyboard in one QMP
// input-send-event, all at once as a burst of key reports, with no pacing of its own:
// the keyboard's queue (16 bytes for QEMU's PS/2 keyboard) keeps what the guest has
// not read yet and drops the rest, so a call with many keys loses keys, as a flooded
// console does; the caller holds g.mu.
func (g *guest) typeQemu(spec types.UsbScanCodeSpec) (int32, types.BaseMethodFault) {
	if g.qemu == nil {
		return 0, &types.InvalidState{}
	}
	var events []qmpInputEvent
	for _, event := range spec.KeyEvents {
		if keys, ok := qemuKeyEvents(event); ok {
			events = append(events, keys...)
		}
	}
	if len(events) > 0 {
		if _, err := g.qemu.qmp.execute("input-send-event", map[string]any{"events": events}); err != nil {
			g.logf("USB: input-send-event: %v", err)
			return 0, &types.InvalidState{}
		}
	}
	g.logf("USB: PutUsbScanCodes: %d key events sent to the keyboard", len(spec.KeyEvents))
	return int32(len(spec.KeyEvents)), nil
}

// qmpClient is a QMP connection (JSON lines over a unix socket), opened on first use
// and again after an error; one command at a time.
type qmpClient struct {
	path string

	mu     sync.Mutex
	conn   net.Conn
	reader *bufio.Reader
}

type qmpReply struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event string `json:"event"`
}

func (c *qmpClient) connect() error {
	deadline := time.Now().Add(qmpTimeout)
	for {
		conn, err := net.DialTimeout("unix", c.path, time.Second)
		if err == nil {
			c.conn, c.reader = conn, bufio.NewReader(conn)
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("QMP %s: %w", c.path, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = c.conn.SetDeadline(time.Now().Add(qmpTimeout))
	if _, err := c.reader.ReadBytes('\n'); err != nil { // the greeting
		return err
	}
	_, err := c.roundTrip("qmp_capabilities", nil)
	return err
}

func (c *qmpClient) roundTrip(command string, arguments any) (json.RawMessage, error) {
	request := map[string]any{"execute": command}
	if arguments != nil {
		request["arguments"] = arguments
	}
	data, err := json.Marshal(request)
	if err != nil {
		return nil, err
	}
	_ = c.conn.SetDeadline(time.Now().Add(qmpTimeout))
	if _, err := c.conn.Write(append(data, '\n')); err != nil {
		return nil, err
	}
	for {
		line, err := c.reader.ReadBytes('\n')
		if err != nil {
			return nil, err
		}
		var reply qmpReply
		if err := json.Unmarshal(line, &reply); err != nil {
			return nil, fmt.Errorf("QMP: %w", err)
		}
		if reply.Event != "" {
			continue
		}
		if reply.Error != nil {
			return nil, &qmpError{command: command, class: reply.Error.Class, desc: reply.Error.Desc}
		}
		return reply.Return, nil
	}
}

// qmpError is an error QEMU answered a command with.
type qmpError struct{ command, class, desc string }

func (e *qmpError) Error() string { return fmt.Sprintf("QMP %s: %s: %s", e.command, e.class, e.desc) }

// execute runs one QMP command and returns its result.
func (c *qmpClient) execute(command string, arguments any) (json.RawMessage, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		if err := c.connect(); err != nil {
			c.closeLocked()
			return nil, err
		}
	}
	result, err := c.roundTrip(command, arguments)
	var answered *qmpError
	if err != nil && !errors.As(err, &answered) {
		c.closeLocked() // the connection is in an unknown state
	}
	return result, err
}

func (c *qmpClient) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closeLocked()
}

func (c *qmpClient) closeLocked() {
	if c.conn != nil {
		_ = c.conn.Close()
	}
	c.conn, c.reader = nil, nil
}
