// Command launcher runs the lab's vCenter: govmomi's simulator (VPX model) with the
// lab's VMs, guest operations and keystrokes that act on the lab guests, and a guest
// boot after power-on. It reads the runtime configuration the Python side writes,
// prints one JSON line once it serves, and runs until a signal: SIGTERM or SIGINT
// power the guests off first (the lab stops); SIGUSR1 leaves them running, as hosts
// keep running their VMs while vCenter restarts, for a launcher started with
// --adopt-guests to take over.
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/url"
	"os"
	"os/signal"
	"syscall"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/simulator"
)

// vmConfig is one lab VM and the guest behind it.
type vmConfig struct {
	Name          string `json:"name"`
	GuestID       string `json:"guest_id"`
	OS            string `json:"os"`
	IP            string `json:"ip"`
	MAC           string `json:"mac"`
	Hostname      string `json:"hostname"`
	GuestUsername string `json:"guest_username"`
	GuestPassword string `json:"guest_password"`
	HolderPid     int    `json:"holder_pid"`
	Root          string `json:"root"`
	SshdConfig    string `json:"sshd_config"`
	ConsoleLog    string `json:"console_log"`
	GuestUID      int    `json:"guest_uid"`
	// Wsman is the Windows guest's WinRM endpoint (nil for Linux guests).
	Wsman *wsmanConfig `json:"wsman"`
	// CloudbaseInit is what a Windows guest runs at each boot (nil: nothing).
	CloudbaseInit *cloudbaseInitConfig `json:"cloudbase_init"`
	// Rdp is a Windows guest's RDP console (xrdp on 3389; nil: none).
	Rdp *rdpConfig `json:"rdp"`
	// Qemu is how a console VM (console "qemu") boots; nil for the pty-console guests.
	Qemu *qemuConfig `json:"qemu"`
	// CloneOf names the VM this one was cloned from (clones.go); empty for the lab's own.
	CloneOf string `json:"clone_of"`
}

// labConfig is the runtime configuration written by bootstrap/lab.
type labConfig struct {
	Listen     string     `json:"listen"`
	HTTP       bool       `json:"http"`
	CertFile   string     `json:"cert_file"`
	KeyFile    string     `json:"key_file"`
	Username   string     `json:"username"`
	Password   string     `json:"password"`
	BootDelayS float64    `json:"boot_delay_s"`
	Python     string     `json:"python"` // runs the Windows stand-in's programs (bootstrap/lab/windows)
	VMs        []vmConfig `json:"vms"`
}

func readConfig(path string) (*labConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	cfg := new(labConfig)
	if err := json.Unmarshal(data, cfg); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == waiterCommand {
		os.Exit(runWaiter(os.Args[2:]))
	}
	configPath := flag.String("config", "", "runtime configuration (JSON) written by bootstrap/lab")
	adopt := flag.Bool("adopt-guests", false, "take over the guests an earlier launcher left running")
	flag.Parse()
	if *configPath == "" {
		log.Fatal("--config is required")
	}
	cfg, err := readConfig(*configPath)
	if err != nil {
		log.Fatal(err)
	}
	if err := run(cfg, *adopt); err != nil {
		log.Fatal(err)
	}
}

func run(cfg *labConfig, adopt bool) error {
	model := simulator.VPX()
	model.Machine = 0 // the lab's own VMs are created below
	model.Host = 0    // one cluster only, so the default resource pool is unambiguous
	if err := model.Create(); err != nil {
		return fmt.Errorf("create model: %w", err)
	}
	defer model.Remove()

	lab := newLab(cfg, adopt)
	model.Service.Listen = &url.URL{Host: cfg.Listen, User: url.UserPassword(cfg.Username, cfg.Password)}
	if !cfg.HTTP {
		cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return fmt.Errorf("certificate: %w", err)
		}
		model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	}
	model.Service.HandleFunc(transferPath, lab.serveTransfer)
	if err := installStats(model.Service); err != nil {
		return fmt.Errorf("SOAP request counters: %w", err)
	}
	lab.install()

	server := model.Service.NewServer()
	defer server.Close()
	lab.baseURL = &url.URL{Scheme: server.URL.Scheme, Host: server.URL.Host}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	leave := make(chan os.Signal, 1)
	signal.Notify(leave, syscall.SIGUSR1)
	morefs, err := lab.createVMs(ctx, server.URL)
	if err != nil {
		lab.shutdown()
		return err
	}
	ready, _ := json.Marshal(map[string]any{"url": server.URL.String(), "vms": morefs, "pid": os.Getpid()})
	fmt.Println(string(ready))

	select {
	case <-ctx.Done():
		lab.shutdown()
	case <-leave:
		log.Print("vCenter stopping; the guests keep running")
	}
	return nil
}

// newClient logs in to the simulator as an ordinary client would.
func newClient(ctx context.Context, u *url.URL) (*govmomi.Client, error) {
	return govmomi.NewClient(ctx, u, true)
}
