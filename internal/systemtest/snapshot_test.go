package systemtest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/cluster/command"
	"github.com/twinsnap/twinsnap/guestagent"
	"github.com/twinsnap/twinsnap/internal/api"
	"github.com/twinsnap/twinsnap/internal/hypervisor"
	"github.com/twinsnap/twinsnap/internal/testenv"
)

// snapEnv is a cluster with one registered guest.
type snapEnv struct {
	c  *testenv.Cluster
	cl *api.Client
	vm api.VM
	// agent opens a connection to the guest's agent; the agent serves one
	// client at a time, so callers close it before twinsnap needs it.
	agent func(ctx context.Context) (*guestagent.Client, error)
	disk  func(serial string) string // the guest's live image of a volume
	// libvirtSocket is the test libvirtd's socket (libvirt guests only).
	libvirtSocket string
	// mac is the guest's MAC address.
	mac string
}

// sh runs a shell command in the guest (see guestSh) on a connection of
// its own.
func (e *snapEnv) sh(t *testing.T, ctx context.Context, script string) string {
	t.Helper()
	ga, err := e.agent(ctx)
	if err != nil {
		t.Fatalf("agent: %v", err)
	}
	defer ga.Close()
	return guestSh(t, ctx, ga, script)
}

// threeDataDisks are the test guest's data volumes.
var threeDataDisks = []testenv.DiskSpec{{Serial: "data1", SizeMiB: 64}, {Serial: "data2", SizeMiB: 64}, {Serial: "data3", SizeMiB: 64}}

// newQEMUSnapEnv starts a cluster and a bare QEMU guest and registers it
// on data-a.
func newQEMUSnapEnv(t *testing.T, ctx context.Context, disks []testenv.DiskSpec, percent int) *snapEnv {
	t.Helper()
	c := testenv.StartCluster(t, testenv.ClusterOptions{})
	vm := testenv.StartVM(t, testenv.VMOptions{DataDisks: disks})
	if _, err := c.WaitLeader(ctx, "data"); err != nil {
		t.Fatalf("%v", err)
	}
	cl := c.Client(testenv.DataB)
	t.Cleanup(func() { cl.Close() })
	if _, err := cl.SetSnapshotsEnabled(ctx, true); err != nil {
		t.Fatalf("enable snapshots: %v", err)
	}
	reg, err := cl.RegisterVM(ctx, api.VMRegisterRequest{
		Name: "guest", HostNode: testenv.DataA, Driver: command.DriverQEMU, ContainerPercent: percent,
		QEMU: &command.QEMUConnection{QMPSocket: vm.QMPSocket, AgentSocket: vm.AgentSocket},
	})
	if err != nil {
		t.Fatalf("register: %v", err)
	}
	return &snapEnv{c: c, cl: cl, vm: *reg, agent: vm.Agent, mac: vm.MAC, disk: func(serial string) string {
		d, ok := vm.Disk(serial)
		if !ok {
			t.Fatalf("no disk %s", serial)
		}
		return d.Path
	}}
}

// guestSh runs a shell command in the guest and fails the test unless it
// exits 0.
func guestSh(t *testing.T, ctx context.Context, ga *guestagent.Client, script string) string {
	t.Helper()
	st, err := ga.Run(ctx, "/bin/sh", "-c", script)
	if err != nil {
		t.Fatalf("guest %q: %v", script, err)
	}
	if st.ExitCode != 0 {
		t.Fatalf("guest %q: exit %d: %s%s", script, st.ExitCode, st.OutData, st.ErrData)
	}
	return string(st.OutData)
}

// waitSnapshot polls a snapshot until it reaches want (or is discarded,
// which fails the test unless want is discarded).
func waitSnapshot(t *testing.T, ctx context.Context, cl *api.Client, id, want string, bound time.Duration) *api.Snapshot {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	var last *api.Snapshot
	for {
		sn, err := cl.Snapshot(ctx, id)
		if err == nil {
			last = sn
			if sn.State == want {
				return sn
			}
			if sn.State == api.StateDiscarded && want != api.StateDiscarded {
				t.Fatalf("snapshot %s discarded: %+v", id, sn.Discard)
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("snapshot %s not %s within %v; last %+v (err %v)", id, want, bound, last, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// imagePath is where a node keeps a snapshot's image of a volume.
func imagePath(c *testenv.Cluster, node, snapID, volID string) string {
	return filepath.Join(c.Nodes[node].Dir, "data", "volumes", volID, "images", snapID+".qcow2")
}

func fileSHA(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("%v", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatalf("%v", err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// volID returns the id of the registered volume named name.
func (e *snapEnv) volID(t *testing.T, name string) string {
	for _, v := range e.vm.Volumes {
		if v.Name == name {
			return v.ID
		}
	}
	t.Fatalf("no volume %s in %+v", name, e.vm.Volumes)
	return ""
}

// checkSnapshotContent is must-show 1's check of a complete snapshot of
// boot, data1 and data2: both nodes hold byte-identical images whose
// SHA-256 the state records; data1 and data2 equal the guest's disks as
// they are (the guest has not written to them since the marker); the
// snapshot holds marker 1, and after the guest writes marker 2 the live
// disk differs and the snapshot still lacks it.
func checkSnapshotContent(t *testing.T, ctx context.Context, e *snapEnv, sn *api.Snapshot) {
	t.Helper()
	if len(sn.Replicas) != 2 {
		t.Fatalf("replicas %+v", sn.Replicas)
	}
	for _, v := range sn.Volumes {
		a := fileSHA(t, imagePath(e.c, testenv.DataA, sn.ID, v.VolumeID))
		b := fileSHA(t, imagePath(e.c, testenv.DataB, sn.ID, v.VolumeID))
		if a != b || a != v.SHA256 {
			t.Fatalf("volume %s: sha256 on data-a %s, on data-b %s, recorded %s", v.Name, a, b, v.SHA256)
		}
		for _, r := range sn.Replicas {
			if !r.Verified {
				t.Fatalf("replica %+v not verified", r)
			}
		}
	}
	// Equal to the guest's disks at the freeze point: the guest froze
	// data1 and data2 and has not written to them since (checked with the
	// guest frozen again, so nothing moves while qemu-img reads).
	ga, err := e.agent(ctx)
	if err != nil {
		t.Fatalf("agent: %v", err)
	}
	defer ga.Close()
	if _, err := ga.FreezeList(ctx, []string{"/mnt/data1", "/mnt/data2"}); err != nil {
		t.Fatalf("freeze: %v", err)
	}
	for _, name := range []string{"data1", "data2"} {
		snap := imagePath(e.c, testenv.DataB, sn.ID, e.volID(t, name))
		checkEqualButFreezeStamp(t, ctx, snap, e.disk(name))
	}
	if _, err := ga.Thaw(ctx); err != nil {
		t.Fatalf("thaw: %v", err)
	}
	guestSh(t, ctx, ga, "echo after > /mnt/data1/marker2 && sync")
	if st, err := ga.FreezeStatus(ctx); err != nil || st != guestagent.Thawed {
		t.Fatalf("guest freeze status %v, %v", st, err)
	}
	for _, node := range []string{testenv.DataA, testenv.DataB} {
		img := imagePath(e.c, node, sn.ID, e.volID(t, "data1"))
		m1, found1, err := testenv.ReadGuestFile(ctx, img, "/marker1")
		if err != nil || !found1 || strings.TrimSpace(string(m1)) != "before" {
			t.Fatalf("%s: marker1 in the snapshot: %q found %v err %v", node, m1, found1, err)
		}
		_, found2, err := testenv.ReadGuestFile(ctx, img, "/marker2")
		if err != nil || found2 {
			t.Fatalf("%s: marker2 must not be in the snapshot: found %v err %v", node, found2, err)
		}
	}
	eq, _, err := testenv.CompareImages(ctx, imagePath(e.c, testenv.DataA, sn.ID, e.volID(t, "data1")), e.disk("data1"))
	if err != nil || eq {
		t.Fatalf("after marker2 the live data1 must differ from the snapshot: equal %v err %v", eq, err)
	}
}

// TestSnapshotEndToEndQEMU is must-show 1 with a bare QEMU guest: an
// application-consistent snapshot of data1 and data2 (and the boot volume,
// always) through the CLI with --wait, complete on both nodes.
func TestSnapshotEndToEndQEMU(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	e := newQEMUSnapEnv(t, ctx, threeDataDisks, 0)
	e.sh(t, ctx, "echo before > /mnt/data1/marker1 && echo before > /mnt/data2/marker1 && sync")

	start := time.Now()
	res := e.c.CLI(ctx, testenv.Witness, "snapshot", "create", "guest", "--volumes", "data1,data2", "--wait", "--output", "json")
	if res.Exit != 0 {
		t.Fatalf("snapshot create: exit %d\n%s\n%s", res.Exit, res.Stdout, res.Stderr)
	}
	var sn api.Snapshot
	if err := json.Unmarshal([]byte(res.Stdout), &sn); err != nil {
		t.Fatalf("snapshot JSON: %v\n%s", err, res.Stdout)
	}
	t.Logf("snapshot %s complete in %v: %d volumes, %d bytes stored", sn.ID, time.Since(start), len(sn.Volumes), sn.StoredBytes)
	if sn.State != api.StateComplete || sn.Achieved != command.ConsistencyApplication || len(sn.Volumes) != 3 || sn.ConfigKind != command.ConfigQEMULaunch {
		t.Fatalf("snapshot %+v", sn)
	}
	for _, v := range sn.Volumes {
		if v.Name == "data3" || v.FullReason == "" || v.ParentID != "" {
			t.Fatalf("volume %+v", v)
		}
	}
	checkSnapshotContent(t, ctx, e, &sn)
	// The list shows it complete, in a table too.
	out := e.c.CLI(ctx, testenv.DataA, "snapshot", "list", "--output", "table")
	if out.Exit != 0 || !strings.Contains(out.Stdout, sn.ID) || !strings.Contains(out.Stdout, "complete") {
		t.Fatalf("snapshot list: exit %d\n%s%s", out.Exit, out.Stdout, out.Stderr)
	}
}

// freezeStampBytes are the bytes of an ext4 superblock (at offset 1024)
// that every freeze of the file system rewrites: s_wtime (0x30), its high
// byte (0x274), s_kbytes_written (0x178) and s_checksum (0x3fc). Comparing
// a snapshot with the live disk needs a second freeze (so that nothing
// moves while qemu-img reads), which stamps these anew.
var freezeStampBytes = func() map[int64]bool {
	m := map[int64]bool{1024 + 0x274: true}
	for i := int64(0); i < 4; i++ {
		m[1024+0x30+i], m[1024+0x3fc+i] = true, true
	}
	for i := int64(0); i < 8; i++ {
		m[1024+0x178+i] = true
	}
	return m
}()

// checkEqualButFreezeStamp checks that qemu-img compare finds the
// snapshot equal to the live disk, or that they differ only in the
// superblock's freeze stamp.
func checkEqualButFreezeStamp(t *testing.T, ctx context.Context, snap, live string) {
	t.Helper()
	eq, out, err := testenv.CompareImages(ctx, snap, live)
	if err != nil {
		t.Fatalf("compare %s with %s: %v", snap, live, err)
	}
	if eq {
		return
	}
	diff, err := testenv.DiffBytes(ctx, snap, live, 64)
	if err != nil {
		t.Fatalf("%v", err)
	}
	for _, off := range diff {
		if !freezeStampBytes[off] {
			t.Fatalf("snapshot %s differs from the guest's disk %s beyond the freeze stamp: %s; differing bytes %v", snap, live, out, diff)
		}
	}
	t.Logf("%s equals the guest's disk but for %d bytes of the superblock's freeze stamp", filepath.Base(live), len(diff))
}

// newLibvirtSnapEnv starts a cluster, a private libvirtd and a domain and
// registers the domain on data-a.
func newLibvirtSnapEnv(t *testing.T, ctx context.Context, disks []testenv.DiskSpec) *snapEnv {
	t.Helper()
	c := testenv.StartCluster(t, testenv.ClusterOptions{})
	lv := testenv.StartLibvirtd(t)
	dom := testenv.StartDomain(t, lv, testenv.VMOptions{DataDisks: disks})
	if _, err := c.WaitLeader(ctx, "data"); err != nil {
		t.Fatalf("%v", err)
	}
	cl := c.Client(testenv.DataB)
	t.Cleanup(func() { cl.Close() })
	if _, err := cl.SetSnapshotsEnabled(ctx, true); err != nil {
		t.Fatalf("enable snapshots: %v", err)
	}
	reg, err := cl.RegisterVM(ctx, api.VMRegisterRequest{
		Name: "guest", HostNode: testenv.DataA, Driver: command.DriverLibvirt,
		Libvirt: &command.LibvirtConnection{URI: lv.URI, Domain: dom.Name},
	})
	if err != nil {
		t.Fatalf("register: %v", err)
	}
	return &snapEnv{c: c, cl: cl, vm: *reg, libvirtSocket: lv.Socket, mac: dom.MAC,
		agent: func(ctx context.Context) (*guestagent.Client, error) {
			m, err := hypervisor.OpenLibvirt(ctx, lv.Socket, dom.Name)
			if err != nil {
				return nil, err
			}
			return guestagent.NewClient(machineAgent{m}), nil
		},
		disk: func(serial string) string {
			d, ok := dom.Disk(serial)
			if !ok {
				t.Fatalf("no disk %s", serial)
			}
			return d.Path
		}}
}

// machineAgent is a machine's agent transport that closes the machine
// with it.
type machineAgent struct{ m hypervisor.Machine }

func (a machineAgent) Execute(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	return a.m.Agent().Execute(ctx, cmd, args)
}

func (a machineAgent) Close() error { return a.m.Close() }

// TestSnapshotEndToEndLibvirt is must-show 1 through libvirtd.
func TestSnapshotEndToEndLibvirt(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	e := newLibvirtSnapEnv(t, ctx, threeDataDisks)
	e.sh(t, ctx, "echo before > /mnt/data1/marker1 && echo before > /mnt/data2/marker1 && sync")
	sn, err := e.cl.CreateSnapshot(ctx, api.SnapshotCreateRequest{VM: "guest", Volumes: []string{"data1", "data2"}})
	if err != nil {
		t.Fatalf("snapshot create: %v", err)
	}
	if sn.State != api.StateCreating {
		t.Fatalf("new snapshot %+v", sn)
	}
	done := waitSnapshot(t, ctx, e.cl, sn.ID, api.StateComplete, 3*time.Minute)
	if done.Achieved != command.ConsistencyApplication || len(done.Volumes) != 3 || done.ConfigKind != command.ConfigLibvirtXML {
		t.Fatalf("snapshot %+v", done)
	}
	cfg, err := e.cl.SnapshotConfig(ctx, sn.ID)
	if err != nil || !strings.Contains(cfg.Text, "<domain") {
		t.Fatalf("captured config: %v %+v", err, cfg)
	}
	checkSnapshotContent(t, ctx, e, done)

	// A new domain from the snapshot: it boots, its agent answers through
	// libvirt, its MAC differs, and it holds the first marker only.
	res, err := e.cl.CreateVMFromSnapshot(ctx, sn.ID, api.CreateVMRequest{Name: "guest-copy"})
	if err != nil {
		t.Fatalf("create VM from snapshot: %v", err)
	}
	if !res.Started || !res.AgentReady || len(res.MACs) != 1 || strings.EqualFold(res.MACs[0], e.mac) || res.VM.Driver != command.DriverLibvirt {
		t.Fatalf("created VM %+v (source MAC %s)", res, e.mac)
	}
	t.Logf("domain guest-copy from snapshot %s: agent ready in %.1f s, MAC %s (source %s)", sn.ID, res.Seconds, res.MACs[0], e.mac)
	m, err := hypervisor.OpenLibvirt(ctx, e.libvirtSocket, "guest-copy")
	if err != nil {
		t.Fatalf("open the new domain: %v", err)
	}
	ga := guestagent.NewClient(machineAgent{m})
	defer ga.Close()
	if out := strings.TrimSpace(guestSh(t, ctx, ga, "cat /mnt/data1/marker1; test ! -e /mnt/data1/marker2 && echo no-marker2")); out != "before\nno-marker2" {
		t.Fatalf("the new domain's data1 holds %q", out)
	}

	// A stopped domain is copied with qemu-img, in full, with the reason.
	l, err := hypervisor.DialLibvirt(ctx, e.libvirtSocket)
	if err != nil {
		t.Fatalf("%v", err)
	}
	defer func() { _ = l.Close() }()
	domain := e.vm.Libvirt.Domain
	if err := l.DestroyDomain(ctx, domain); err != nil {
		t.Fatalf("stopping the domain: %v", err)
	}
	stopped, err := e.cl.CreateSnapshot(ctx, api.SnapshotCreateRequest{VM: "guest", Volumes: []string{"data1"}})
	if err != nil {
		t.Fatalf("snapshot of the stopped domain: %v", err)
	}
	sd := waitSnapshot(t, ctx, e.cl, stopped.ID, api.StateComplete, 3*time.Minute)
	for _, v := range sd.Volumes {
		if v.ParentID != "" || !strings.Contains(v.FullReason, "not running") {
			t.Fatalf("volume of the stopped domain's snapshot: %+v", v)
		}
	}
	if m1, found, err := testenv.ReadGuestFile(ctx, imagePath(e.c, testenv.DataB, stopped.ID, e.volID(t, "data1")), "/marker2"); err != nil || !found || strings.TrimSpace(string(m1)) != "after" {
		t.Fatalf("the stopped domain's snapshot lacks marker2: %q %v %v", m1, found, err)
	}
	t.Logf("stopped domain: snapshot %s complete, copied in full with qemu-img", stopped.ID)
}

// TestSnapshotUEFI snapshots a bare QEMU guest that boots with OVMF: the
// snapshot carries its UEFI variables to both nodes, and a VM created from
// it boots with its own copy of them.
func TestSnapshotUEFI(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c := testenv.StartCluster(t, testenv.ClusterOptions{})
	vm := testenv.StartVM(t, testenv.VMOptions{UEFI: true})
	if _, err := c.WaitLeader(ctx, "data"); err != nil {
		t.Fatalf("%v", err)
	}
	cl := c.Client(testenv.DataA)
	defer cl.Close()
	if _, err := cl.SetSnapshotsEnabled(ctx, true); err != nil {
		t.Fatalf("%v", err)
	}
	if _, err := cl.RegisterVM(ctx, api.VMRegisterRequest{Name: "efi", Driver: command.DriverQEMU,
		QEMU: &command.QEMUConnection{QMPSocket: vm.QMPSocket, AgentSocket: vm.AgentSocket}}); err != nil {
		t.Fatalf("register: %v", err)
	}
	sn, err := cl.CreateSnapshot(ctx, api.SnapshotCreateRequest{VM: "efi"})
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	done := waitSnapshot(t, ctx, cl, sn.ID, api.StateComplete, 3*time.Minute)
	want := fileSHA(t, vm.UEFIVars)
	if done.UEFIVars == nil || done.UEFIVars.SHA256 != want {
		t.Fatalf("snapshot's UEFI variables %+v, the VM's file has sha256 %s", done.UEFIVars, want)
	}
	for _, r := range done.Replicas {
		if r.UEFIVars == nil || *r.UEFIVars != *done.UEFIVars {
			t.Fatalf("replica on %s has UEFI variables %+v", r.Node, r.UEFIVars)
		}
		if got := fileSHA(t, filepath.Join(c.Nodes[r.Node].Dir, "data", "snapshots", sn.ID, "uefi-vars.fd")); got != want {
			t.Fatalf("%s holds UEFI variables with sha256 %s, want %s", r.Node, got, want)
		}
	}
	res, err := cl.CreateVMFromSnapshot(ctx, sn.ID, api.CreateVMRequest{Name: "efi-copy"})
	if err != nil {
		t.Fatalf("create VM: %v", err)
	}
	t.Cleanup(func() { stopCreatedVM(t, context.Background(), res) })
	if !res.Started || !res.AgentReady {
		t.Fatalf("created VM %+v", res)
	}
	t.Logf("UEFI VM efi-copy from snapshot %s: agent ready in %.1f s", sn.ID, res.Seconds)
	ga, err := guestagentFor(ctx, res)
	if err != nil {
		t.Fatalf("%v", err)
	}
	defer ga.Close()
	if out := strings.TrimSpace(guestSh(t, ctx, ga, "test -d /sys/firmware/efi && echo efi")); out != "efi" {
		t.Fatalf("the copy did not boot with UEFI: %q", out)
	}
}
