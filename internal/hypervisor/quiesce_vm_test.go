package hypervisor_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/guestagent"
	"github.com/twinsnap/twinsnap/internal/hypervisor"
	"github.com/twinsnap/twinsnap/internal/testenv"
)

// openVM opens the test VM's monitor and a guest-agent client over the
// machine's own agent transport.
func openVM(ctx context.Context, t *testing.T, vm *testenv.VM) (*hypervisor.QEMUMachine, *guestagent.Client) {
	t.Helper()
	m, err := hypervisor.OpenQEMU(ctx, "", vm.QMPSocket, vm.AgentSocket, hypervisor.WithLogger(quiet))
	if err != nil {
		t.Fatalf("OpenQEMU: %v", err)
	}
	return m, guestagent.NewClient(m.Agent())
}

// guestClock maps host times to the guest's uptime (the clock the guest
// writers record): offset is the guest's uptime minus the host's seconds
// since base, read in the middle of a guest-exec of cat /proc/uptime.
type guestClock struct {
	base   time.Time
	offset float64
	// uncertainty is half the time the reading took.
	uncertainty float64
}

func readGuestClock(ctx context.Context, t *testing.T, ga *guestagent.Client, base time.Time) guestClock {
	t.Helper()
	t0 := time.Now()
	up, err := testenv.GuestUptime(ctx, ga)
	if err != nil {
		t.Fatalf("guest uptime: %v", err)
	}
	t1 := time.Now()
	mid := t0.Add(t1.Sub(t0) / 2)
	return guestClock{base: base, offset: up - mid.Sub(base).Seconds(), uncertainty: t1.Sub(t0).Seconds() / 2}
}

// at returns the guest's uptime at host time h.
func (c guestClock) at(h time.Time) float64 { return h.Sub(c.base).Seconds() + c.offset }

// TestQuiesceVMFreezesSelectedVolumes plans a freeze for data1 and data2
// of a guest with three data volumes (real guest-get-fsinfo against
// QEMU's block and PCI view), then holds a quiesced capture step for a
// second with writer loops running on all three: from inside the guest,
// no write landed on data1 or data2 while they were frozen, while data3
// went on writing. The agent connection that froze the guest answers
// guest-fsfreeze-status inside the window ("frozen") and after it
// ("thawed").
func TestQuiesceVMFreezesSelectedVolumes(t *testing.T) {
	vm := testenv.StartVM(t, testenv.VMOptions{DataDisks: []testenv.DiskSpec{
		{Serial: "data1", SizeMiB: 32}, {Serial: "data2", SizeMiB: 32}, {Serial: "data3", SizeMiB: 32},
	}})
	defer leakCheck(t)()
	ctx := within(t, 5*time.Minute)
	m, ga := openVM(ctx, t, vm)
	defer closeQuietly(m)

	plan, err := hypervisor.PlanFor(ctx, m.QMP(), ga, []string{"data1", "data2"})
	if err != nil {
		t.Fatalf("PlanFor: %v", err)
	}
	if want := []string{"/mnt/data1", "/mnt/data2"}; !reflect.DeepEqual(plan.Mountpoints, want) {
		t.Fatalf("plan freezes %v, want %v (plan %+v)", plan.Mountpoints, want, plan)
	}
	if len(plan.Unmapped) != 0 || len(plan.Spanning) != 0 || plan.Reasons["/mnt/data1"] != "on selected volume data1" {
		t.Fatalf("plan %+v", plan)
	}
	t.Logf("plan: %v, reasons %v, unmatched %v", plan.Mountpoints, plan.Reasons, plan.Unmatched)

	mounts := []string{"/mnt/data1", "/mnt/data2", "/mnt/data3"}
	w, err := testenv.StartGuestWriters(ctx, ga, mounts...)
	if err != nil {
		t.Fatalf("StartGuestWriters: %v", err)
	}
	stopped := false
	defer func() {
		if !stopped {
			_ = w.Stop(context.WithoutCancel(ctx))
		}
	}()
	time.Sleep(time.Second)
	base := time.Now()
	clockBefore := readGuestClock(ctx, t, ga, base)

	const hold = time.Second
	var frozenAt, thawAt time.Time
	var inside guestagent.FreezeStatus
	res, err := hypervisor.Quiesce(ctx, ga, plan, hypervisor.QuiesceOptions{
		Desire: hypervisor.Application, Require: hypervisor.Application, FreezeEnabled: true, Logger: quiet,
	}, func(ctx context.Context) error {
		frozenAt = time.Now()
		st, err := ga.FreezeStatus(ctx)
		if err != nil {
			return err
		}
		inside = st
		select {
		case <-time.After(time.Until(frozenAt.Add(hold))):
		case <-ctx.Done():
			return ctx.Err()
		}
		thawAt = time.Now()
		return nil
	})
	if err != nil {
		t.Fatalf("Quiesce: %v", err)
	}
	if inside != guestagent.Frozen {
		t.Fatalf("guest-fsfreeze-status inside the window = %q, want frozen", inside)
	}
	if st, err := ga.FreezeStatus(ctx); err != nil || st != guestagent.Thawed {
		t.Fatalf("guest-fsfreeze-status after Quiesce = %q, %v; want thawed", st, err)
	}
	if res.Achieved != hypervisor.Application || !reflect.DeepEqual(res.Frozen, plan.Mountpoints) {
		t.Fatalf("result %+v; want application with %v frozen", res, plan.Mountpoints)
	}
	t.Logf("freeze call %v, held %v, thaw call %v, window %v", res.FreezeCall, res.Capture, res.ThawCall, res.Window)

	time.Sleep(500 * time.Millisecond)
	clockAfter := readGuestClock(ctx, t, ga, base)
	if err := w.Stop(ctx); err != nil {
		t.Fatalf("stopping the writers: %v", err)
	}
	stopped = true
	t.Logf("guest clock offset %.3f s (±%.3f) before, %.3f s (±%.3f) after", clockBefore.offset, clockBefore.uncertainty, clockAfter.offset, clockAfter.uncertainty)

	// The frozen window in the guest's time, shrunk by a margin for the
	// clock mapping and for the one tick a writer may have read from
	// /proc/uptime just before its write blocked.
	const margin = 0.15
	lo, hi := clockBefore.at(frozenAt)+margin, clockBefore.at(thawAt)-margin
	if hi-lo < 0.5 {
		t.Fatalf("window [%.3f, %.3f] too short to judge", lo, hi)
	}
	counts := map[string]int{}
	for _, mp := range mounts {
		ticks, err := w.Ticks(ctx, mp)
		if err != nil {
			t.Fatalf("ticks: %v", err)
		}
		counts[mp] = testenv.CountBetween(ticks, lo, hi)
		before, after := testenv.CountBetween(ticks, lo-2, lo-margin), testenv.CountBetween(ticks, hi+margin, hi+2)
		t.Logf("%s: %d ticks in the frozen window [%.3f, %.3f], %d in the 2 s before, %d in the 2 s after", mp, counts[mp], lo, hi, before, after)
		if before == 0 || after == 0 {
			t.Fatalf("%s: the writer did not run around the window (%d before, %d after)", mp, before, after)
		}
	}
	if counts["/mnt/data1"] != 0 || counts["/mnt/data2"] != 0 {
		t.Fatalf("writes landed on frozen file systems: %v", counts)
	}
	if counts["/mnt/data3"] < 5 {
		t.Fatalf("data3 (not selected) took only %d writes in the window; it should have gone on", counts["/mnt/data3"])
	}
}

// TestQuiesceVMAgentGone stops the real qemu-ga in the guest: a capture
// that requires application consistency fails with ErrConsistency before
// the freeze and leaves nothing behind, and one that desires it but
// requires only crash consistency succeeds as crash and records why,
// both with a plan computed while the agent was alive and with the plan
// left to Capture (whose guest-get-fsinfo then gets no answer).
func TestQuiesceVMAgentGone(t *testing.T) {
	vm := testenv.StartVM(t, testenv.VMOptions{DataDisks: []testenv.DiskSpec{{Serial: "data1", SizeMiB: 32}}})
	defer leakCheck(t)()
	ctx := within(t, 5*time.Minute)
	m, ga := openVM(ctx, t, vm)
	defer closeQuietly(m)
	q := m.QMP()
	d1, _ := vm.Disk("data1")

	plan, err := hypervisor.PlanFor(ctx, q, ga, []string{"data1"})
	if err != nil || !reflect.DeepEqual(plan.Mountpoints, []string{"/mnt/data1"}) {
		t.Fatalf("PlanFor = %+v, %v", plan, err)
	}
	// The agent kills itself after it has answered guest-exec.
	if _, err := ga.Exec(ctx, "/bin/sh", []string{"-c", "sleep 0.3; kill $(pidof qemu-ga)"}, nil, false); err != nil {
		t.Fatalf("guest-exec: %v", err)
	}
	time.Sleep(1500 * time.Millisecond)
	pctx, cancel := context.WithTimeout(ctx, time.Second)
	err = ga.Ping(pctx)
	cancel()
	if !errors.Is(err, guestagent.ErrTimeout) {
		t.Fatalf("ping after killing qemu-ga: %v, want a timeout", err)
	}

	opts := hypervisor.QuiesceOptions{
		Desire: hypervisor.Application, Require: hypervisor.Application, FreezeEnabled: true,
		AgentTimeout: time.Second, Logger: quiet,
	}
	dir := t.TempDir()
	target := filepath.Join(dir, "t.qcow2")
	qemuImg(ctx, t, "create", "-q", "-f", "qcow2", target, "32M")
	vol := []hypervisor.CaptureVolume{{Volume: "data1", Target: target, Mode: hypervisor.CaptureFull, NewBitmap: "twinsnap-s1"}}

	for _, given := range []bool{true, false} {
		req := hypervisor.CaptureRequest{Volumes: vol, Quiesce: opts}
		name := "plan computed by Capture"
		if given {
			req.Plan, name = &plan, "plan given"
		}
		res, err := hypervisor.Capture(ctx, m, ga, req)
		if named := strings.Contains(err.Error(), "agent") || strings.Contains(err.Error(), "guest file systems"); !errors.Is(err, hypervisor.ErrConsistency) || !named {
			t.Fatalf("%s, require application: %v; want ErrConsistency naming the agent", name, err)
		}
		t.Logf("%s, require application: %v", name, err)
		assertNothingLeft(ctx, t, q, "data1", res.ID)

		req.Quiesce.Require = hypervisor.Crash
		res, err = hypervisor.Capture(ctx, m, ga, req)
		if err != nil {
			t.Fatalf("%s, require crash: %v", name, err)
		}
		if res.Quiesce.Achieved != hypervisor.Crash || res.Quiesce.StepDown == "" || len(res.Quiesce.Frozen) != 0 {
			t.Fatalf("%s, require crash: %+v; want crash with a reason and nothing frozen", name, res.Quiesce)
		}
		t.Logf("%s, require crash: achieved %s: %s", name, res.Quiesce.Achieved, res.Quiesce.StepDown)
		// Nothing writes to data1: the crash-consistent copy equals it.
		compare(ctx, t, d1.Path, target)
		devs, err := hypervisor.BlockDevices(ctx, q)
		if err != nil || bitmapOf(devs, "data1", "twinsnap-s1") == nil {
			t.Fatalf("bitmap twinsnap-s1 after a full capture: %v", err)
		}
		qemuImg(ctx, t, "create", "-q", "-f", "qcow2", target, "32M")
		removeBitmap(ctx, t, q, d1.NodeName, "twinsnap-s1")
	}
}

// assertNothingLeft checks that a failed capture left no job, no target
// node and no bitmap behind.
func assertNothingLeft(ctx context.Context, t *testing.T, q hypervisor.QMP, serial, id string) {
	t.Helper()
	if jobs, err := hypervisor.QueryJobs(ctx, q); err != nil || len(jobs) != 0 {
		t.Fatalf("jobs left: %+v, %v", jobs, err)
	}
	var nodes []struct {
		NodeName string `json:"node-name"`
	}
	if err := q.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		t.Fatalf("query-named-block-nodes: %v", err)
	}
	for _, n := range nodes {
		if strings.HasPrefix(n.NodeName, "ts-"+id) {
			t.Fatalf("target node %s left open", n.NodeName)
		}
	}
	devs, err := hypervisor.BlockDevices(ctx, q)
	if err != nil {
		t.Fatalf("BlockDevices: %v", err)
	}
	for _, d := range devs {
		if d.Serial == serial && len(d.Bitmaps) != 0 {
			t.Fatalf("bitmaps left on %s: %+v", serial, d.Bitmaps)
		}
	}
}

func removeBitmap(ctx context.Context, t *testing.T, q hypervisor.QMP, node, name string) {
	t.Helper()
	if err := q.Execute(ctx, "block-dirty-bitmap-remove", map[string]any{"node": node, "name": name}, nil); err != nil {
		t.Fatalf("block-dirty-bitmap-remove %s/%s: %v", node, name, err)
	}
}

// TestCaptureVM captures data1 of a real guest end to end, full and then
// incremental into an overlay of the full copy: each copy equals the
// source as of its freeze (compared while the guest's file system is
// frozen again and nothing writes), holds the marker written before it and
// not the one written after it, and is a clean file system that needs no
// journal recovery (the freeze made it application-consistent). The thaw
// call is recorded while the copy is still to come; it is logged, not
// asserted.
func TestCaptureVM(t *testing.T) {
	vm := testenv.StartVM(t, testenv.VMOptions{DataDisks: []testenv.DiskSpec{{Serial: "data1", SizeMiB: 128}}})
	defer leakCheck(t)()
	ctx := within(t, 8*time.Minute)
	m, ga := openVM(ctx, t, vm)
	defer closeQuietly(m)
	q := m.QMP()
	d1, _ := vm.Disk("data1")
	dir := t.TempDir()
	full := filepath.Join(dir, "full.qcow2")
	inc := filepath.Join(dir, "inc.qcow2")
	qemuImg(ctx, t, "create", "-q", "-f", "qcow2", full, "128M")

	guestRun(ctx, t, ga, "dd if=/dev/urandom of=/mnt/data1/base bs=1M count=24 2>/dev/null && echo first-marker > /mnt/data1/marker1 && sync")
	opts := hypervisor.QuiesceOptions{Desire: hypervisor.Application, Require: hypervisor.Application, FreezeEnabled: true, Logger: quiet}
	res, err := hypervisor.Capture(ctx, m, ga, hypervisor.CaptureRequest{
		ID:      "full",
		Volumes: []hypervisor.CaptureVolume{{Volume: "data1", Target: full, Mode: hypervisor.CaptureFull, NewBitmap: "twinsnap-full"}},
		Quiesce: opts,
	})
	if err != nil {
		t.Fatalf("full Capture: %v", err)
	}
	logCapture(t, "full", res)
	v := res.Volumes[0]
	if res.Quiesce.Achieved != hypervisor.Application || !reflect.DeepEqual(res.Quiesce.Frozen, []string{"/mnt/data1"}) ||
		v.Bytes != 128<<20 || v.NewBitmap != "twinsnap-full" || v.Error != "" {
		t.Fatalf("full capture: %+v", res)
	}
	assertNoCaptureNodes(ctx, t, q)
	equalWhileFrozen(ctx, t, ga, d1.Path, full)

	guestRun(ctx, t, ga, "echo second-marker > /mnt/data1/marker2 && dd if=/dev/urandom of=/mnt/data1/more bs=64k count=8 2>/dev/null && sync")
	qemuImg(ctx, t, "create", "-q", "-f", "qcow2", "-b", full, "-F", "qcow2", inc)
	res, err = hypervisor.Capture(ctx, m, ga, hypervisor.CaptureRequest{
		ID:      "inc",
		Volumes: []hypervisor.CaptureVolume{{Volume: "data1", Target: inc, Mode: hypervisor.CaptureIncremental, Bitmap: "twinsnap-full", NewBitmap: "twinsnap-inc"}},
		Quiesce: opts,
	})
	if err != nil {
		t.Fatalf("incremental Capture: %v", err)
	}
	logCapture(t, "incremental", res)
	if v := res.Volumes[0]; v.Bitmap != "twinsnap-full" || v.Bytes < 512<<10 || v.Bytes > 16<<20 {
		t.Fatalf("incremental capture copied %d bytes (%+v); want the 512 KiB written and metadata", v.Bytes, v)
	}
	assertNoCaptureNodes(ctx, t, q)
	equalWhileFrozen(ctx, t, ga, d1.Path, inc)

	guestRun(ctx, t, ga, "echo third-marker > /mnt/data1/marker3 && sync")
	// The copies, as file systems: clean, with the markers written before
	// each capture and not those written after.
	fullRaw, incRaw := filepath.Join(dir, "full.raw"), filepath.Join(dir, "inc.raw")
	qemuImg(ctx, t, "convert", "-U", "-O", "raw", full, fullRaw)
	qemuImg(ctx, t, "convert", "-U", "-O", "raw", inc, incRaw)
	for _, c := range []struct {
		img      string
		has, not []string
	}{
		{fullRaw, []string{"marker1"}, []string{"marker2", "marker3"}},
		{incRaw, []string{"marker1", "marker2"}, []string{"marker3"}},
	} {
		if out, err := exec.CommandContext(ctx, "e2fsck", "-fn", c.img).CombinedOutput(); err != nil {
			t.Fatalf("e2fsck -fn %s: %v\n%s", filepath.Base(c.img), err, out)
		}
		for _, f := range c.has {
			out, err := exec.CommandContext(ctx, "debugfs", "-R", "cat /"+f, c.img).Output()
			if err != nil || !strings.Contains(string(out), "-marker") {
				t.Fatalf("%s: %s missing: %q, %v", filepath.Base(c.img), f, out, err)
			}
		}
		for _, f := range c.not {
			out, _ := exec.CommandContext(ctx, "debugfs", "-R", "stat /"+f, c.img).CombinedOutput()
			if !strings.Contains(string(out), "File not found") {
				t.Fatalf("%s holds %s, written after the capture: %s", filepath.Base(c.img), f, out)
			}
		}
		t.Logf("%s: clean file system (e2fsck -fn), holds %v, not %v", filepath.Base(c.img), c.has, c.not)
	}
	_ = os.Remove(fullRaw)
	_ = os.Remove(incRaw)
}

func logCapture(t *testing.T, what string, res hypervisor.CaptureResult) {
	t.Helper()
	qr := res.Quiesce
	v := res.Volumes[0]
	t.Logf("%s capture %s: %s; setup %v, window %v (freeze call %v, transaction %v, thaw call %v), copy after the thaw %v (%d KiB, job %v), total %v",
		what, res.ID, qr.Achieved, res.Setup.Round(time.Millisecond), qr.Window.Round(time.Millisecond), qr.FreezeCall.Round(time.Millisecond),
		qr.Capture.Round(time.Millisecond), qr.ThawCall.Round(time.Millisecond), res.Copy.Round(time.Millisecond), v.Bytes>>10,
		v.Duration.Round(time.Millisecond), res.Total.Round(time.Millisecond))
}

// assertNoCaptureNodes checks that no job and no capture target node is
// left once a capture returned.
func assertNoCaptureNodes(ctx context.Context, t *testing.T, q hypervisor.QMP) {
	t.Helper()
	if jobs, err := hypervisor.QueryJobs(ctx, q); err != nil || len(jobs) != 0 {
		t.Fatalf("jobs left: %+v, %v", jobs, err)
	}
	devs, err := hypervisor.BlockDevices(ctx, q)
	if err != nil {
		t.Fatalf("BlockDevices: %v", err)
	}
	for _, d := range devs {
		if d.TopNode != d.NodeName {
			t.Fatalf("a filter is left above %s: %+v", d.Serial, d)
		}
	}
}

// ext4's primary superblock: 1 KiB at offset 1024. ext4 rewrites it at
// every freeze and thaw (the needs_recovery flag, s_wtime,
// s_kbytes_written, the checksum), so a copy taken in one freeze differs
// from the live volume there, and only there, once the guest has thawed.
const sbStart, sbEnd = 1024, 2048

// sbFields names the superblock fields that a freeze or thaw rewrites, by
// offset within the superblock.
var sbFields = []struct {
	off, size int
	name      string
}{
	{0x2C, 4, "s_mtime"}, {0x30, 4, "s_wtime"}, {0x60, 4, "s_feature_incompat"},
	{0x178, 8, "s_kbytes_written"}, {0x3FC, 4, "s_checksum"},
}

// equalWhileFrozen freezes the guest's /mnt/data1 (so nothing writes)
// and checks that the volume and the copy hold the same bytes outside
// ext4's primary superblock (qemu-img compare when they are identical;
// else a byte comparison of raw conversions), then thaws.
func equalWhileFrozen(ctx context.Context, t *testing.T, ga *guestagent.Client, src, copy string) {
	t.Helper()
	freeze(ctx, t, ga, "/mnt/data1")
	defer thaw(ctx, t, ga)
	out, err := exec.CommandContext(ctx, "qemu-img", "compare", "-U", "-f", "qcow2", "-F", "qcow2", src, copy).CombinedOutput()
	if err == nil {
		t.Logf("qemu-img compare %s %s: %s", filepath.Base(src), filepath.Base(copy), strings.TrimSpace(string(out)))
		return
	}
	t.Logf("qemu-img compare %s %s: %s; comparing outside the superblock", filepath.Base(src), filepath.Base(copy), strings.TrimSpace(string(out)))
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.raw"), filepath.Join(dir, "b.raw")
	qemuImg(ctx, t, "convert", "-U", "-O", "raw", src, a)
	qemuImg(ctx, t, "convert", "-U", "-O", "raw", copy, b)
	ab, err := os.ReadFile(a)
	if err != nil {
		t.Fatalf("reading %s: %v", a, err)
	}
	bb, err := os.ReadFile(b)
	if err != nil {
		t.Fatalf("reading %s: %v", b, err)
	}
	if len(ab) != len(bb) {
		t.Fatalf("sizes differ: %d and %d", len(ab), len(bb))
	}
	changed := map[string]bool{}
	for i := range ab {
		if ab[i] == bb[i] {
			continue
		}
		if i < sbStart || i >= sbEnd {
			t.Fatalf("%s and %s differ at offset %d, outside the superblock", filepath.Base(src), filepath.Base(copy), i)
		}
		name := "other"
		for _, f := range sbFields {
			if off := i - sbStart; off >= f.off && off < f.off+f.size {
				name = f.name
			}
		}
		changed[name] = true
	}
	var names []string
	for n := range changed {
		names = append(names, n)
	}
	slices.Sort(names)
	t.Logf("%s and %s are equal outside ext4's superblock; in it they differ in %v", filepath.Base(src), filepath.Base(copy), names)
}
