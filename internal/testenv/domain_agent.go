package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/digitalocean/go-libvirt"

	"github.com/twinsnap/twinsnap/guestagent"
)

// AgentClient returns a guest-agent client that reaches the domain's agent
// through libvirt (guestagent.Libvirt) on a libvirt connection of its own;
// closing the client disconnects it. ctx bounds only the connection
// set-up.
func (d *Domain) AgentClient(ctx context.Context) (*guestagent.Client, error) {
	l, err := d.lv.Connect(ctx)
	if err != nil {
		return nil, err
	}
	return guestagent.NewClient(&libvirtAgent{Libvirt: guestagent.NewLibvirt(l, d.Dom), conn: l}), nil
}

// libvirtAgent is a guestagent.Libvirt transport that owns its libvirt
// connection.
type libvirtAgent struct {
	*guestagent.Libvirt
	conn *libvirt.Libvirt
}

// Close closes the transport and disconnects its connection.
func (a *libvirtAgent) Close() error {
	_ = a.Libvirt.Close()
	if err := a.conn.Disconnect(); err != nil {
		return fmt.Errorf("testenv: disconnecting from libvirtd: %w", err)
	}
	return nil
}

// StallVM returns a view of the running domain as a *VM for
// StartStallMeter: its name, directory, serial log and disks, and a handle
// on its QEMU process (found by its command line) whose Running turns false
// once that process is gone. The domain's agent belongs to libvirt: pass a
// client from AgentClient as StallMeterOptions.Agent. The view is for the
// stall meter alone; its QMP and agent socket paths are empty, Stop does
// nothing, and Pid returns the QEMU process id.
func (d *Domain) StallVM() (*VM, error) {
	pid, err := d.qemuPid()
	if err != nil {
		return nil, err
	}
	proc, err := os.FindProcess(pid)
	if err != nil {
		return nil, fmt.Errorf("testenv: QEMU of domain %s: %w", d.Name, err)
	}
	p := &Process{Name: "qemu " + d.Name, cmd: &exec.Cmd{Process: proc}, done: make(chan struct{})}
	p.once.Do(func() {}) // Stop is not this handle's to do: libvirt owns the process
	go func() {
		defer close(p.done)
		for processAlive(pid) {
			time.Sleep(250 * time.Millisecond)
		}
	}()
	return &VM{Name: d.Name, Dir: d.Dir, SerialLog: d.SerialLog, MAC: d.MAC, UEFIVars: d.UEFIVars,
		Disks: d.Disks, Image: d.Image, proc: p}, nil
}

// qemuPid finds the domain's QEMU process among the daemon's processes:
// libvirt names it with "-name guest=<name>,...".
func (d *Domain) qemuPid() (int, error) {
	want := []byte("guest=" + d.Name + ",")
	for _, pid := range d.lv.Processes() {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
		if err != nil {
			continue
		}
		args := bytes.Split(b, []byte{0})
		for i := 0; i+1 < len(args); i++ {
			if string(args[i]) == "-name" && bytes.HasPrefix(args[i+1], want) {
				return pid, nil
			}
		}
	}
	return 0, fmt.Errorf("testenv: no QEMU process of domain %s under libvirtd %s", d.Name, d.lv.Dir)
}

// processAlive reports whether pid names a live process (not a zombie).
func processAlive(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	return err == nil && len(b) > 0
}
