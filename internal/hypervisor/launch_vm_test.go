package hypervisor_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/guestagent"
	"github.com/twinsnap/twinsnap/internal/hypervisor"
	"github.com/twinsnap/twinsnap/internal/testenv"
)

// killOnCleanup kills a process StartQEMU started (its session's process
// group) when the test ends, and waits until it is gone.
func killOnCleanup(t *testing.T, pid int) {
	t.Cleanup(func() {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		if !waitFor(15*time.Second, func() bool { return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) }) {
			t.Errorf("process %d still there 15 s after SIGKILL", pid)
		}
	})
}

// bareQEMU returns the spec of a QEMU without a guest (-machine none) and
// its QMP socket, in a fresh directory.
func bareQEMU(t *testing.T) (hypervisor.LaunchSpec, string) {
	t.Helper()
	qemu, err := testenv.LookBinary("qemu-system-x86_64")
	testenv.Need(t, "QEMU", err)
	dir := testenv.TempDir(t, "bare")
	sock := filepath.Join(dir, "qmp.sock")
	return hypervisor.LaunchSpec{Binary: qemu, Dir: dir, Args: []string{
		"-name", "bare,process=" + testenv.Marker + "-bare",
		"-machine", "none", "-nodefaults", "-display", "none", "-S",
		"-chardev", "socket,id=qmp,path=qmp.sock,server=on,wait=off", // relative to Dir
		"-mon", "chardev=qmp,mode=control",
	}}, sock
}

// TestStartQEMU starts a QEMU without a guest and checks how it runs: in
// a session of its own, stdin on /dev/null, output in the log; then
// InspectQEMU finds it again through its socket.
func TestStartQEMU(t *testing.T) {
	spec, sock := bareQEMU(t)
	ctx := within(t, time.Minute)
	logPath := filepath.Join(spec.Dir, "qemu.log")
	pid, err := hypervisor.StartQEMU(ctx, spec, logPath)
	if err != nil {
		t.Fatalf("StartQEMU: %v", err)
	}
	killOnCleanup(t, pid)

	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatalf("stat: %v", err)
	}
	// pid (comm) state ppid pgrp session ...
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	if f[2] != strconv.Itoa(pid) || f[3] != strconv.Itoa(pid) {
		t.Fatalf("process group %s, session %s; want both %d (setsid)", f[2], f[3], pid)
	}
	for fd, want := range map[string]string{"0": "/dev/null", "1": logPath, "2": logPath} {
		got, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/fd/" + fd)
		if err != nil || got != want {
			t.Fatalf("fd %s -> %q (%v), want %s", fd, got, err, want)
		}
	}

	gotPid, got, err := hypervisor.InspectQEMU(ctx, sock)
	if err != nil {
		t.Fatalf("InspectQEMU: %v", err)
	}
	if gotPid != pid || !reflect.DeepEqual(got, spec) {
		t.Fatalf("InspectQEMU = %d %+v, want %d %+v", gotPid, got, pid, spec)
	}
}

// TestStartQEMUExits: a QEMU that refuses its command line is reported
// with its own words.
func TestStartQEMUExits(t *testing.T) {
	spec, _ := bareQEMU(t)
	spec.Args = append(spec.Args, "-no-such-option")
	ctx := within(t, time.Minute)
	_, err := hypervisor.StartQEMU(ctx, spec, filepath.Join(spec.Dir, "qemu.log"))
	if err == nil || !strings.Contains(err.Error(), "invalid option") || !strings.Contains(err.Error(), "exited") {
		t.Fatalf("StartQEMU: %v, want the exit and QEMU's complaint", err)
	}
}

// TestStartQEMUStaleSocket: a socket that another process serves at the
// QMP path does not count as the new QEMU's; a program that never listens
// is killed when the context ends.
func TestStartQEMUStaleSocket(t *testing.T) {
	dir := testenv.TempDir(t, "stale")
	sock := filepath.Join(dir, "qmp.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	// sh stays (the "; :"), so its command line carries the marker.
	spec := hypervisor.LaunchSpec{Binary: "/bin/sh", Args: []string{
		"-c", "sleep 60; :", "-name", "x,process=" + testenv.Marker + "-stale",
		"-qmp", "unix:" + sock + ",server=on,wait=off",
	}}
	// Long enough for a few probes on a busy machine.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	start := time.Now()
	_, err = hypervisor.StartQEMU(ctx, spec, filepath.Join(dir, "log"))
	if !errors.Is(err, hypervisor.ErrTimeout) || !strings.Contains(err.Error(), "not the new QEMU") {
		t.Fatalf("StartQEMU: %v, want ErrTimeout naming the other process", err)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("StartQEMU took %s", d)
	}
}

func TestCloneQEMU(t *testing.T)     { testCloneQEMU(t, false) }
func TestCloneQEMUUEFI(t *testing.T) { testCloneQEMU(t, true) }

// testCloneQEMU reads a running test VM's launch spec through its QMP
// socket while a client holds the monitor (which goes on working, and
// the next client gets it), copies its images (frozen
// through the agent), starts a clone with a new name, UUID and MAC on the
// copies, and checks from inside the clone's guest that it has them.
func testCloneQEMU(t *testing.T, uefi bool) {
	start := time.Now()
	vm := testenv.StartVM(t, testenv.VMOptions{UEFI: uefi, DataDisks: []testenv.DiskSpec{{Serial: "data1", SizeMiB: 32}}})
	t.Logf("original (UEFI %v): agent ready %s after the launch", uefi, time.Since(start).Round(time.Millisecond))
	ctx := within(t, 8*time.Minute)

	// A client holds the monitor, as the daemon would.
	m, err := hypervisor.OpenQEMU(ctx, "", vm.QMPSocket, vm.AgentSocket, hypervisor.WithLogger(quiet))
	if err != nil {
		t.Fatalf("OpenQEMU: %v", err)
	}
	defer closeQuietly(m)
	pid, spec, err := hypervisor.InspectQEMU(ctx, vm.QMPSocket)
	if err != nil {
		t.Fatalf("InspectQEMU: %v", err)
	}
	bin, _ := filepath.EvalSymlinks(vm.Args[0])
	if pid != vm.Pid() || spec.Binary != bin || !reflect.DeepEqual(spec.Args, vm.Args[1:]) {
		t.Fatalf("InspectQEMU = %d %s %q\nwant %d %s %q", pid, spec.Binary, spec.Args, vm.Pid(), bin, vm.Args[1:])
	}
	var name struct{ Name string }
	if err := m.QMP().Execute(ctx, "query-name", nil, &name); err != nil || name.Name != vm.Name {
		t.Fatalf("the held monitor after InspectQEMU: %v %q", err, name.Name)
	}
	// The probe left in QEMU's listen queue does not hold up the next
	// client once the first one leaves.
	_ = m.Close()
	reopen, cancel := context.WithTimeout(ctx, 20*time.Second)
	m, err = hypervisor.OpenQEMU(reopen, "", vm.QMPSocket, vm.AgentSocket, hypervisor.WithLogger(quiet))
	cancel()
	if err != nil {
		t.Fatalf("OpenQEMU after InspectQEMU: %v", err)
	}
	defer closeQuietly(m)

	info, err := spec.Info()
	if err != nil {
		t.Fatalf("Info: %v", err)
	}
	if info.Name != vm.Name || info.QMPSocket != vm.QMPSocket || info.AgentSocket != vm.AgentSocket ||
		info.SerialLog != vm.SerialLog || !reflect.DeepEqual(info.MACs, []string{vm.MAC}) || info.UEFIVars != vm.UEFIVars {
		t.Fatalf("Info = %+v", info)
	}
	if uefi && info.UEFICode != testenv.OVMFCode {
		t.Fatalf("UEFICode = %q", info.UEFICode)
	}
	if len(info.Disks) != len(vm.Disks) {
		t.Fatalf("Disks = %+v, want %+v", info.Disks, vm.Disks)
	}
	for i, d := range vm.Disks {
		got := info.Disks[i]
		if got.Path != d.Path || got.NodeName != d.NodeName || got.DeviceID != d.DeviceID || got.Serial != d.Serial || got.Format != "qcow2" {
			t.Fatalf("disk %d = %+v, want %+v", i, got, d)
		}
	}

	// Copy the images and the variable store while the guest's file
	// systems are frozen.
	dir := testenv.TempDir(t, "clone")
	opts := hypervisor.CloneOptions{
		Name:        vm.Name + "-c",
		UUID:        hypervisor.NewUUID(),
		Disks:       map[string]string{},
		QMPSocket:   filepath.Join(dir, "qmp.sock"),
		AgentSocket: filepath.Join(dir, "qga.sock"),
		SerialLog:   filepath.Join(dir, "serial.log"),
		PIDFile:     filepath.Join(dir, "qemu.pid"),
	}
	newMAC := hypervisor.RandomMAC()
	opts.MAC = func(string) string { return newMAC }
	ga := guestagent.NewClient(m.Agent())
	if _, err := ga.FreezeAll(ctx); err != nil {
		t.Fatalf("freeze: %v", err)
	}
	for _, d := range info.Disks {
		opts.Disks[d.Path] = filepath.Join(dir, filepath.Base(d.Path))
		qemuImg(ctx, t, "convert", "-U", "-f", "qcow2", "-O", "qcow2", d.Path, opts.Disks[d.Path])
	}
	if uefi {
		opts.UEFIVars = filepath.Join(dir, "OVMF_VARS.fd")
		b, err := os.ReadFile(info.UEFIVars)
		if err == nil {
			err = os.WriteFile(opts.UEFIVars, b, 0o644)
		}
		if err != nil {
			t.Fatalf("copying the variable store: %v", err)
		}
	}
	if _, err := ga.Thaw(ctx); err != nil {
		t.Fatalf("thaw: %v", err)
	}
	_ = ga.Close()

	clone, err := spec.Clone(opts)
	if err != nil {
		t.Fatalf("Clone: %v", err)
	}
	start = time.Now()
	cpid, err := hypervisor.StartQEMU(ctx, clone, filepath.Join(dir, "qemu.log"))
	if err != nil {
		t.Fatalf("StartQEMU: %v", err)
	}
	killOnCleanup(t, cpid)
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(opts.SerialLog)
			t.Logf("serial log of the clone:\n%s", tailString(string(b), 4096))
		}
	})
	socketReady := time.Since(start)
	if err := waitGuestAgent(ctx, opts.AgentSocket); err != nil {
		t.Fatalf("the clone's agent: %v", err)
	}
	t.Logf("clone (UEFI %v): QMP socket ready %s, agent ready %s after StartQEMU",
		uefi, socketReady.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))

	// The clone's process: marked for check-strays, and what its spec says.
	cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(cpid) + "/cmdline")
	if !strings.Contains(string(cmdline), testenv.Marker+"-"+opts.Name) {
		t.Fatalf("the clone's command line lacks the process marker: %q", cmdline)
	}
	if b, err := os.ReadFile(opts.PIDFile); err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(cpid) {
		t.Fatalf("pid file: %q %v, want %d", b, err, cpid)
	}
	ipid, ispec, err := hypervisor.InspectQEMU(ctx, opts.QMPSocket)
	if err != nil || ipid != cpid || !reflect.DeepEqual(ispec.Args, clone.Args) {
		t.Fatalf("InspectQEMU of the clone = %d %q %v", ipid, ispec.Args, err)
	}

	cm, err := hypervisor.OpenQEMU(ctx, "", opts.QMPSocket, opts.AgentSocket, hypervisor.WithLogger(quiet))
	if err != nil {
		t.Fatalf("OpenQEMU on the clone: %v", err)
	}
	defer closeQuietly(cm)
	var uuid struct {
		UUID string `json:"UUID"`
	}
	if err := cm.QMP().Execute(ctx, "query-uuid", nil, &uuid); err != nil || uuid.UUID != opts.UUID || cm.Name() != opts.Name {
		t.Fatalf("clone: name %q, UUID %q (%v); want %s %s", cm.Name(), uuid.UUID, err, opts.Name, opts.UUID)
	}

	// The guest's view: its NIC's address, its SMBIOS UUID, its firmware,
	// and the copied data volume mounted.
	cga := guestagent.NewClient(cm.Agent())
	defer closeQuietly(cga)
	raw, err := cm.Agent().Execute(ctx, "guest-network-get-interfaces", nil)
	if err != nil {
		t.Fatalf("guest-network-get-interfaces: %v", err)
	}
	var ifaces []struct {
		Name string `json:"name"`
		HW   string `json:"hardware-address"`
	}
	if err := json.Unmarshal(raw, &ifaces); err != nil {
		t.Fatalf("guest-network-get-interfaces: %v: %s", err, raw)
	}
	found := false
	for _, i := range ifaces {
		found = found || strings.EqualFold(i.HW, newMAC)
		if strings.EqualFold(i.HW, vm.MAC) {
			t.Fatalf("the clone's guest has the original's MAC on %s", i.Name)
		}
	}
	if !found {
		t.Fatalf("no guest interface with %s: %+v", newMAC, ifaces)
	}
	guestFile(ctx, t, cga, "/sys/class/dmi/id/product_uuid", opts.UUID)
	if uefi {
		guestFile(ctx, t, cga, "/sys/firmware/efi/fw_platform_size", "64")
	}
	fsinfo, err := cga.FSInfo(ctx)
	if err != nil {
		t.Fatalf("guest-get-fsinfo: %v", err)
	}
	mounted := map[string]bool{}
	for _, fs := range fsinfo {
		mounted[fs.Mountpoint] = true
	}
	if !mounted["/"] || !mounted["/mnt/data1"] {
		t.Fatalf("the clone's guest mounts %v, want / and /mnt/data1", mounted)
	}

	if err := cm.Quit(ctx); err != nil {
		t.Fatalf("Quit: %v", err)
	}
	for _, p := range opts.Disks {
		qemuImg(ctx, t, "check", p)
	}
}

// waitGuestAgent polls guest-ping on a fresh connection to the agent
// socket until the agent answers or ctx ends.
func waitGuestAgent(ctx context.Context, socket string) error {
	var last error
	for {
		attempt, cancel := context.WithTimeout(ctx, 3*time.Second)
		s, err := guestagent.Dial(attempt, "unix", socket)
		if err == nil {
			err = guestagent.NewClient(s).Ping(attempt)
			_ = s.Close()
		}
		cancel()
		if err == nil {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// guestFile checks the content of a file in the guest.
func guestFile(ctx context.Context, t *testing.T, ga *guestagent.Client, path, want string) {
	t.Helper()
	res, err := ga.Run(ctx, "/bin/cat", path)
	if err != nil {
		t.Fatalf("cat %s: %v", path, err)
	}
	if got := strings.TrimSpace(string(res.OutData)); res.ExitCode != 0 || !strings.EqualFold(got, want) {
		t.Fatalf("guest %s = %q (exit %d, %q), want %q", path, got, res.ExitCode, res.ErrData, want)
	}
}

// tailString returns the last n bytes of s.
func tailString(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
