package testenv

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/guestagent"
)

// BootSerial is the serial of the boot volume of test VMs.
const BootSerial = "boot"

// DiskSpec describes one virtio disk of a test VM.
type DiskSpec struct {
	// Serial is the virtio-blk serial (at most 20 bytes); data volumes are
	// mounted in the guest at /mnt/<serial>.
	Serial string
	// SizeMiB is the size of a new data volume; ignored when Path is set
	// and for the boot volume, which is a copy of the image's template.
	SizeMiB int
	// Path uses an existing qcow2 image instead of creating one. The VM
	// writes to it.
	Path string
}

// VMOptions configure a test VM. The zero value gives a VM with a boot
// volume and no data volumes.
type VMOptions struct {
	// Name names the VM; it must be unique among running test VMs.
	Name string
	// DataDisks are the data volumes, each an ext4 file system.
	DataDisks []DiskSpec
	// BootPath uses an existing boot volume instead of a template copy.
	BootPath string
	// MemoryMiB defaults to 256, CPUs to 1.
	MemoryMiB int
	CPUs      int
	// MAC is the NIC's MAC address; a random locally administered one is
	// used when empty.
	MAC string
	// ExtraArgs are appended to the QEMU command line.
	ExtraArgs []string
	// UEFI boots the guest with OVMF (OVMFCode as read-only pflash unit 0,
	// a per-VM copy of OVMFVars as pflash unit 1) instead of SeaBIOS. The
	// kernel still boots directly: OVMF loads it from QEMU's fw_cfg and
	// starts it through its EFI stub.
	UEFI bool
	// ReadyTimeout bounds the wait for the guest agent; default 3 minutes.
	ReadyTimeout time.Duration
}

// Disk is one disk of a running test VM.
type Disk struct {
	Serial string
	// Path is the qcow2 image on the host.
	Path string
	// NodeName is the QMP block node of the qcow2 format layer.
	NodeName string
	// DeviceID is the QOM id of the virtio-blk device.
	DeviceID string
	// MountPoint is where the guest mounts the volume ("/" for boot).
	MountPoint string
	// Boot marks the boot volume.
	Boot bool
}

// VM is a QEMU guest under TCG, started by the test environment, with a
// QMP socket, a guest-agent socket and a serial log.
type VM struct {
	Name        string
	Dir         string
	QMPSocket   string
	AgentSocket string
	SerialLog   string
	MAC         string
	// UEFIVars is the VM's UEFI variable store (VMOptions.UEFI), else
	// empty.
	UEFIVars string
	Disks    []Disk
	Image    *GuestImage
	// Args is the QEMU command line, as started.
	Args []string

	proc *Process
}

// The OVMF firmware of Debian's ovmf package (scripts/deps installs it):
// the 2 MiB build, which runs on the pc machine type without SMM.
const (
	OVMFCode = "/usr/share/OVMF/OVMF_CODE.fd"
	OVMFVars = "/usr/share/OVMF/OVMF_VARS.fd"
)

// lookOVMF returns an ErrUnavailable error when OVMF is not installed.
func lookOVMF() error {
	for _, f := range []string{OVMFCode, OVMFVars} {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("%w: UEFI firmware %s missing (install ovmf; run scripts/deps): %w", ErrUnavailable, f, err)
		}
	}
	return nil
}

var serialRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,20}$`)

// StartVM builds the guest image if needed, starts a VM in a fresh
// directory, waits until its agent answers guest-ping, and stops it when
// the test ends. A missing component skips the test outside CI.
func StartVM(tb testing.TB, opts VMOptions) *VM {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	img, err := BuildGuestImage(ctx)
	Need(tb, "test guest image", err)
	if opts.Name == "" {
		opts.Name = strings.ToLower(regexp.MustCompile(`[^A-Za-z0-9]+`).ReplaceAllString(tb.Name(), "-"))
		if len(opts.Name) > 40 {
			opts.Name = opts.Name[:40]
		}
	}
	vm, err := LaunchVM(ctx, img, TempDir(tb, "vm"), opts)
	Need(tb, "test VM", err)
	tb.Cleanup(func() {
		if err := vm.Stop(); err != nil {
			tb.Errorf("stopping VM %s: %v", vm.Name, err)
		}
		if tb.Failed() {
			tb.Logf("serial log of %s:\n%s", vm.Name, vm.SerialTail(4096))
		}
	})
	return vm
}

// LaunchVM creates the VM's disks in dir, starts QEMU and waits until the
// guest agent answers. On error nothing is left running.
func LaunchVM(ctx context.Context, img *GuestImage, dir string, opts VMOptions) (*VM, error) {
	qemu, err := LookBinary("qemu-system-x86_64")
	if err != nil {
		return nil, err
	}
	if opts.MemoryMiB == 0 {
		opts.MemoryMiB = 256
	}
	if opts.CPUs == 0 {
		opts.CPUs = 1
	}
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = 3 * time.Minute
	}
	if opts.MAC == "" {
		opts.MAC = RandomMAC()
	}
	vm := &VM{
		Name:        opts.Name,
		Dir:         dir,
		QMPSocket:   filepath.Join(dir, "qmp.sock"),
		AgentSocket: filepath.Join(dir, "qga.sock"),
		SerialLog:   filepath.Join(dir, "serial.log"),
		MAC:         opts.MAC,
		Image:       img,
	}

	disks, err := prepareDisks(ctx, img, dir, opts)
	if err != nil {
		return nil, err
	}
	vm.Disks = disks

	args := []string{
		"-name", vm.Name + ",process=" + Marker + "-" + vm.Name,
		"-machine", "pc,accel=tcg",
		"-m", fmt.Sprint(opts.MemoryMiB),
		"-smp", fmt.Sprint(opts.CPUs),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
	}
	if opts.UEFI {
		if err := lookOVMF(); err != nil {
			return nil, err
		}
		vm.UEFIVars = filepath.Join(dir, "OVMF_VARS.fd")
		if err := copyFile(OVMFVars, vm.UEFIVars, 0o644); err != nil {
			return nil, err
		}
		args = append(args,
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+OVMFCode,
			"-drive", "if=pflash,format=raw,unit=1,file="+vm.UEFIVars)
	}
	args = append(args,
		"-kernel", img.Kernel, "-initrd", img.Initrd,
		"-append", img.Cmdline(BootSerial),
		"-serial", "file:"+vm.SerialLog,
		"-chardev", "socket,id=qmp,path="+vm.QMPSocket+",server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
		"-chardev", "socket,id=qga,path="+vm.AgentSocket+",server=on,wait=off",
		"-device", "virtio-serial-pci,id=vser0",
		"-device", "virtserialport,chardev=qga,name=org.qemu.guest_agent.0",
		"-netdev", "user,id=net0,restrict=on",
		"-device", "virtio-net-pci,netdev=net0,id=nic0,mac="+vm.MAC,
	)
	for i := range vm.Disks {
		d := &vm.Disks[i]
		d.NodeName = "vol-" + d.Serial
		d.DeviceID = "disk-" + d.Serial
		node, err := json.Marshal(map[string]any{
			"driver":    "qcow2",
			"node-name": d.NodeName,
			"discard":   "unmap",
			"file": map[string]any{
				"driver":    "file",
				"filename":  d.Path,
				"node-name": "file-" + d.Serial,
			},
		})
		if err != nil {
			return nil, fmt.Errorf("testenv: blockdev: %w", err)
		}
		args = append(args, "-blockdev", string(node),
			"-device", "virtio-blk-pci,drive="+d.NodeName+",id="+d.DeviceID+",serial="+d.Serial)
	}
	args = append(args, opts.ExtraArgs...)
	vm.Args = append([]string{qemu}, args...)

	cmd := exec.Command(qemu, args...)
	cmd.Dir = dir
	logf, err := os.Create(filepath.Join(dir, "qemu.log"))
	if err != nil {
		return nil, fmt.Errorf("testenv: qemu log: %w", err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	vm.proc, err = StartProcess("qemu "+vm.Name, cmd)
	if err != nil {
		return nil, err
	}
	readyCtx, cancel := context.WithTimeout(ctx, opts.ReadyTimeout)
	defer cancel()
	if err := vm.WaitAgent(readyCtx); err != nil {
		qlog, _ := os.ReadFile(filepath.Join(dir, "qemu.log"))
		_ = vm.Stop()
		return nil, fmt.Errorf("testenv: VM %s not ready: %w\nqemu: %s\nserial: %s", vm.Name, err, tail(qlog, 1024), vm.SerialTail(2048))
	}
	return vm, nil
}

// prepareDisks creates a VM's boot volume (a copy of the image's template,
// unless opts names one) and its data volumes in dir.
func prepareDisks(ctx context.Context, img *GuestImage, dir string, opts VMOptions) ([]Disk, error) {
	boot := opts.BootPath
	if boot == "" {
		boot = filepath.Join(dir, "boot.qcow2")
		if err := copyFile(img.BootDisk, boot, 0o644); err != nil {
			return nil, err
		}
	}
	disks := []Disk{{Serial: BootSerial, Path: boot, MountPoint: "/", Boot: true}}
	seen := map[string]bool{BootSerial: true}
	for _, d := range opts.DataDisks {
		if !serialRE.MatchString(d.Serial) || seen[d.Serial] {
			return nil, fmt.Errorf("testenv: bad or duplicate disk serial %q", d.Serial)
		}
		seen[d.Serial] = true
		path := d.Path
		if path == "" {
			path = filepath.Join(dir, d.Serial+".qcow2")
			if err := NewDataDisk(ctx, path, d.SizeMiB); err != nil {
				return nil, err
			}
		}
		disks = append(disks, Disk{Serial: d.Serial, Path: path, MountPoint: "/mnt/" + d.Serial})
	}
	return disks, nil
}

// NewDataDisk creates a qcow2 image of sizeMiB holding an empty ext4 file
// system. The file system is fully initialised on the host, so that the
// guest does no background initialisation that would disturb measurements.
func NewDataDisk(ctx context.Context, path string, sizeMiB int) error {
	if sizeMiB < 16 {
		return fmt.Errorf("testenv: data disk %s: size %d MiB is below 16 MiB", path, sizeMiB)
	}
	raw := path + ".raw"
	defer os.Remove(raw)
	if err := run(ctx, "", "mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", "-L", strings.TrimSuffix(filepath.Base(path), filepath.Ext(path)), raw, fmt.Sprintf("%dM", sizeMiB)); err != nil {
		return err
	}
	return run(ctx, "", "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, path)
}

// WaitAgent waits until the guest agent answers guest-ping.
func (vm *VM) WaitAgent(ctx context.Context) error {
	return WaitFor(ctx, vm.proc, 250*time.Millisecond, func(ctx context.Context) error {
		attempt, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		c, err := vm.Agent(attempt)
		if err != nil {
			return err
		}
		defer c.Close()
		return c.Ping(attempt)
	})
}

// Agent connects to the VM's guest-agent socket. QEMU serves one agent
// connection at a time: close the client before another one connects.
func (vm *VM) Agent(ctx context.Context) (*guestagent.Client, error) {
	s, err := guestagent.Dial(ctx, "unix", vm.AgentSocket)
	if err != nil {
		return nil, err
	}
	return guestagent.NewClient(s), nil
}

// Disk returns the disk with the given serial.
func (vm *VM) Disk(serial string) (Disk, bool) {
	for _, d := range vm.Disks {
		if d.Serial == serial {
			return d, true
		}
	}
	return Disk{}, false
}

// Pid returns the QEMU process id.
func (vm *VM) Pid() int { return vm.proc.Pid() }

// Running reports whether QEMU is still running.
func (vm *VM) Running() bool {
	exited, _ := vm.proc.Exited()
	return !exited
}

// Stop ends QEMU with SIGTERM (QEMU then closes its images cleanly),
// killing it if it does not exit within 15 seconds. It is idempotent.
func (vm *VM) Stop() error {
	if vm.proc == nil {
		return nil
	}
	return vm.proc.Stop(15 * time.Second)
}

// SerialTail returns the last n bytes of the guest's serial console.
func (vm *VM) SerialTail(n int) string {
	b, err := os.ReadFile(vm.SerialLog)
	if err != nil {
		return fmt.Sprintf("(no serial log: %v)", err)
	}
	return tail(b, n)
}

// RandomMAC returns a random unicast, locally administered MAC address in
// QEMU's 52:54:00 range.
func RandomMAC() string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("52:54:00:%02x:%02x:%02x", b[0], b[1], b[2])
}
