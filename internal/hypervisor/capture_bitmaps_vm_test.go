package hypervisor_test

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/guestagent"
	"github.com/twinsnap/twinsnap/internal/hypervisor"
	"github.com/twinsnap/twinsnap/internal/testenv"
)

// bitmapVM is the state TestCaptureBitmapsVM's steps share: one guest
// with one data volume, the machine a daemon would hold, and the images
// taken so far.
type bitmapVM struct {
	vm   *testenv.VM
	m    *hypervisor.QEMUMachine
	ga   *guestagent.Client
	node string // data1's format node
	dir  string
	// full is the full capture; inc1 the first incremental on top of it.
	full, inc1 string
	// parentCount is twinsnap-s1's count when the first incremental
	// copied through it.
	parentCount int64
}

// countingAgent counts the freezes of a guest agent.
type countingAgent struct {
	*guestagent.Client
	freezes atomic.Int32
}

func (a *countingAgent) FreezeList(ctx context.Context, mountpoints []string) (int, error) {
	a.freezes.Add(1)
	return a.Client.FreezeList(ctx, mountpoints)
}

var (
	appConsistent   = hypervisor.QuiesceOptions{Desire: hypervisor.Application, Require: hypervisor.Application, FreezeEnabled: true, Logger: quiet}
	crashConsistent = hypervisor.QuiesceOptions{Desire: hypervisor.Crash, Require: hypervisor.Crash, Logger: quiet}
)

// TestCaptureBitmapsVM runs the bitmap scheme against a real TCG guest:
// a full capture that starts a bitmap, incremental captures through it
// that leave it as it was (bitmap-mode never) and start bitmaps of their
// own, one of them from the new bitmap; refusals before the freeze; a
// failed incremental capture; and a daemon that dies mid-capture, after
// which CleanupStale leaves the parent's bitmap good for the next
// incremental capture. Every image is compared with the volume at its
// point in time.
func TestCaptureBitmapsVM(t *testing.T) {
	vm := testenv.StartVM(t, testenv.VMOptions{DataDisks: []testenv.DiskSpec{{Serial: "data1", SizeMiB: 64}}})
	defer leakCheck(t)()
	ctx := within(t, 8*time.Minute)
	d1, _ := vm.Disk("data1")
	b := &bitmapVM{vm: vm, node: d1.NodeName, dir: t.TempDir()}
	b.m, b.ga = openVM(ctx, t, vm)
	defer func() { closeQuietly(b.m) }()

	for _, step := range []struct {
		name string
		run  func(context.Context, *testing.T, *bitmapVM)
	}{
		{"Full", testBitmapFull},
		{"RefusedBeforeFreeze", testBitmapRefused},
		{"Incremental", testBitmapIncremental},
		{"FailedIncremental", testBitmapFailed},
		{"SecondIncremental", testBitmapSecond},
		{"DaemonKilled", testBitmapDaemonKilled},
	} {
		start := time.Now()
		ok := t.Run(step.name, func(t *testing.T) { step.run(ctx, t, b) })
		t.Logf("%s: %v", step.name, time.Since(start).Round(time.Millisecond))
		if !ok {
			return
		}
	}
}

// testBitmapFull takes the full capture that starts twinsnap-s1.
func testBitmapFull(ctx context.Context, t *testing.T, b *bitmapVM) {
	d1, _ := b.vm.Disk("data1")
	b.full = newImage(ctx, t, b.dir, "full", "")
	guestRun(ctx, t, b.ga, "dd if=/dev/urandom of=/mnt/data1/base bs=64k count=64 2>/dev/null && sync")
	res, err := hypervisor.Capture(ctx, b.m, b.ga, hypervisor.CaptureRequest{
		ID:      "full",
		Volumes: []hypervisor.CaptureVolume{{Volume: "data1", Target: b.full, Mode: hypervisor.CaptureFull, NewBitmap: "twinsnap-s1"}},
		Quiesce: appConsistent,
	})
	if err != nil {
		t.Fatalf("full Capture: %v", err)
	}
	logCapture(t, "full", res)
	if v := res.Volumes[0]; v.NewBitmap != "twinsnap-s1" || v.Bitmap != "" || v.Bytes != 64<<20 {
		t.Fatalf("full capture: %+v", v)
	}
	bm := bitmapNamed(ctx, t, b.m.QMP(), b.node, "twinsnap-s1")
	if bm == nil || !bm.Persistent || !bm.Recording || bm.Busy || bm.Inconsistent {
		t.Fatalf("twinsnap-s1 after the full capture = %+v; want persistent and recording", bm)
	}
	assertNoCaptureLeft(ctx, t, b.m.QMP())
	equalWhileFrozen(ctx, t, b.ga, d1.Path, b.full)
}

// testBitmapRefused: an incremental capture from a bitmap the volume
// lacks (ErrNotFound) and a capture whose new bitmap exists
// (ErrBitmapInvalid) fail before any freeze and leave nothing behind.
func testBitmapRefused(ctx context.Context, t *testing.T, b *bitmapVM) {
	agent := &countingAgent{Client: b.ga}
	target := newImage(ctx, t, b.dir, "refused", b.full)
	for _, c := range []struct {
		vol  hypervisor.CaptureVolume
		want error
	}{
		{hypervisor.CaptureVolume{Volume: "data1", Target: target, Mode: hypervisor.CaptureIncremental, Bitmap: "twinsnap-gone", NewBitmap: "twinsnap-r1"}, hypervisor.ErrNotFound},
		{hypervisor.CaptureVolume{Volume: "data1", Target: target, Mode: hypervisor.CaptureFull, NewBitmap: "twinsnap-s1"}, hypervisor.ErrBitmapInvalid},
	} {
		_, err := hypervisor.Capture(ctx, b.m, agent, hypervisor.CaptureRequest{ID: "refused", Volumes: []hypervisor.CaptureVolume{c.vol}, Quiesce: appConsistent})
		if !errors.Is(err, c.want) {
			t.Fatalf("Capture(bitmap %q, new %q) = %v, want %v", c.vol.Bitmap, c.vol.NewBitmap, err, c.want)
		}
		t.Logf("refused: %v", err)
	}
	if n := agent.freezes.Load(); n != 0 {
		t.Fatalf("%d freezes for refused captures", n)
	}
	assertNoCaptureLeft(ctx, t, b.m.QMP())
	assertBitmaps(ctx, t, b.m.QMP(), b.node, "twinsnap-s1")
}

// testBitmapIncremental takes the first incremental capture through
// twinsnap-s1 while the test holds the guest's file system frozen, so
// that nothing writes: the image equals the volume exactly, twinsnap-s1
// keeps its count (the job did not touch it), and the new twinsnap-s2 is
// empty.
func testBitmapIncremental(ctx context.Context, t *testing.T, b *bitmapVM) {
	d1, _ := b.vm.Disk("data1")
	q := b.m.QMP()
	guestRun(ctx, t, b.ga, "dd if=/dev/urandom of=/mnt/data1/inc1 bs=64k count=16 2>/dev/null && sync")
	b.inc1 = newImage(ctx, t, b.dir, "inc1", b.full)
	freeze(ctx, t, b.ga, "/mnt/data1")
	before := bitmapNamed(ctx, t, q, b.node, "twinsnap-s1")
	if before == nil || before.Count < 1<<20 {
		t.Fatalf("twinsnap-s1 before the incremental capture = %+v; want the 1 MiB written marked", before)
	}
	res, err := hypervisor.Capture(ctx, b.m, nil, hypervisor.CaptureRequest{
		ID: "inc1",
		Volumes: []hypervisor.CaptureVolume{{
			Volume: "data1", Target: b.inc1, Mode: hypervisor.CaptureIncremental, Bitmap: "twinsnap-s1", NewBitmap: "twinsnap-s2",
		}},
		Quiesce: crashConsistent,
	})
	if err != nil {
		t.Fatalf("incremental Capture: %v", err)
	}
	logCapture(t, "incremental (guest held frozen)", res)
	v := res.Volumes[0]
	if v.Bitmap != "twinsnap-s1" || v.NewBitmap != "twinsnap-s2" || v.Total != before.Count || v.Bytes != before.Count {
		t.Fatalf("incremental capture: %+v; want %d bytes copied through twinsnap-s1", v, before.Count)
	}
	after := bitmapNamed(ctx, t, q, b.node, "twinsnap-s1")
	if after == nil || after.Count != before.Count || !after.Persistent || !after.Recording || after.Busy || after.Inconsistent {
		t.Fatalf("twinsnap-s1 after the incremental capture = %+v, before %+v; want it unchanged", after, before)
	}
	b.parentCount = before.Count
	if s2 := bitmapNamed(ctx, t, q, b.node, "twinsnap-s2"); s2 == nil || s2.Count != 0 || !s2.Persistent || !s2.Recording {
		t.Fatalf("twinsnap-s2 = %+v; want a new, empty, persistent bitmap", s2)
	}
	t.Logf("twinsnap-s1: %d KiB dirty before and after the job", after.Count>>10)
	assertNoCaptureLeft(ctx, t, q)
	compare(ctx, t, d1.Path, b.inc1)
	thaw(ctx, t, b.ga)
}

// testBitmapFailed cancels an incremental capture's job during its copy:
// the capture fails, its new bitmap is gone, the parent's bitmap is left
// (not reset, not busy), and nothing of the capture remains.
func testBitmapFailed(ctx context.Context, t *testing.T, b *bitmapVM) {
	q := b.m.QMP()
	guestRun(ctx, t, b.ga, "dd if=/dev/urandom of=/mnt/data1/inc2 bs=64k count=64 2>/dev/null && sync")
	before := bitmapNamed(ctx, t, q, b.node, "twinsnap-s1")
	target := newImage(ctx, t, b.dir, "failed", b.full)
	cctx, stop := context.WithCancel(ctx)
	cancelled := make(chan error, 1)
	go func() { cancelled <- cancelWhenRunning(cctx, q, "ts-failed-job0", 300*time.Millisecond) }()
	res, err := hypervisor.Capture(ctx, b.m, b.ga, hypervisor.CaptureRequest{
		ID: "failed",
		Volumes: []hypervisor.CaptureVolume{{
			Volume: "data1", Target: target, Mode: hypervisor.CaptureIncremental, Bitmap: "twinsnap-s1", NewBitmap: "twinsnap-s3",
		}},
		Quiesce:   appConsistent,
		RateLimit: 64 << 10, // about 80 s for what twinsnap-s1 marks: the cancel comes first
	})
	stop()
	if cerr := <-cancelled; cerr != nil {
		t.Fatalf("cancelling the job: %v (Capture: %v)", cerr, err)
	}
	if !errors.Is(err, hypervisor.ErrCapture) || !errors.Is(err, hypervisor.ErrJobFailed) || !strings.Contains(res.Volumes[0].Error, "cancel") {
		t.Fatalf("Capture = %+v, %v; want ErrCapture and ErrJobFailed, the job cancelled", res.Volumes, err)
	}
	t.Logf("failed capture: %v (copied %d of %d KiB)", err, res.Volumes[0].Bytes>>10, res.Volumes[0].Total>>10)
	if res.Quiesce.Achieved != hypervisor.Application {
		t.Fatalf("failed capture: quiesce %+v", res.Quiesce)
	}
	after := bitmapNamed(ctx, t, q, b.node, "twinsnap-s1")
	if after == nil || after.Count < before.Count || after.Busy || !after.Recording || !after.Persistent {
		t.Fatalf("twinsnap-s1 after a failed capture = %+v, before %+v; want it left as it was", after, before)
	}
	assertBitmaps(ctx, t, q, b.node, "twinsnap-s1", "twinsnap-s2")
	assertNoCaptureLeft(ctx, t, q)
}

// testBitmapSecond takes a second incremental capture through
// twinsnap-s1, on top of the full capture: it holds everything written
// since the full one, including what the first incremental capture
// copied (a job that reset the bitmap would have lost that). Then one
// through twinsnap-s2 on top of the first incremental image: the bitmap
// the first incremental capture started marks exactly what its image
// lacks. RemoveBitmaps then drops the bitmaps no later step needs.
func testBitmapSecond(ctx context.Context, t *testing.T, b *bitmapVM) {
	d1, _ := b.vm.Disk("data1")
	q := b.m.QMP()
	for _, c := range []struct {
		id, parent, backing, bitmap, newBitmap string
	}{
		{"inc2", "full", b.full, "twinsnap-s1", "twinsnap-s4"},
		{"inc3", "inc1", b.inc1, "twinsnap-s2", "twinsnap-s5"},
	} {
		target := newImage(ctx, t, b.dir, c.id, c.backing)
		res, err := hypervisor.Capture(ctx, b.m, b.ga, hypervisor.CaptureRequest{
			ID: c.id,
			Volumes: []hypervisor.CaptureVolume{{
				Volume: "data1", Target: target, Mode: hypervisor.CaptureIncremental, Bitmap: c.bitmap, NewBitmap: c.newBitmap,
			}},
			Quiesce: appConsistent,
		})
		if err != nil {
			t.Fatalf("Capture %s through %s: %v", c.id, c.bitmap, err)
		}
		logCapture(t, c.id+" through "+c.bitmap+" on "+c.parent, res)
		if c.bitmap == "twinsnap-s1" && res.Volumes[0].Total <= b.parentCount {
			t.Fatalf("%s copied %d bytes through twinsnap-s1, which marked %d at the first incremental capture: it was reset", c.id, res.Volumes[0].Total, b.parentCount)
		}
		assertNoCaptureLeft(ctx, t, q)
		equalWhileFrozen(ctx, t, b.ga, d1.Path, target)
	}
	assertBitmaps(ctx, t, q, b.node, "twinsnap-s1", "twinsnap-s2", "twinsnap-s4", "twinsnap-s5")
	if err := hypervisor.RemoveBitmaps(ctx, q, b.node, []string{"twinsnap-s2", "twinsnap-s4", "twinsnap-s5", "twinsnap-gone"}); err != nil {
		t.Fatalf("RemoveBitmaps: %v", err)
	}
	assertBitmaps(ctx, t, q, b.node, "twinsnap-s1")
}

// testBitmapDaemonKilled plays a daemon that dies during two captures
// through twinsnap-s1: one whose job it had raised to full speed (the job
// ends in QEMU with nobody watching) and one killed inside the freeze
// window's aftermath (its job still throttled). It drops its connection
// without cleaning up; a new daemon connects, finds twinsnap-s1 busy
// (Capture refuses it), runs CleanupStale, and then no ts- job or node
// remains and twinsnap-s1 is as it was; the stale new bitmaps go with
// RemoveBitmaps, and an incremental capture through twinsnap-s1 equals
// the volume. The guest's file system is held frozen meanwhile, so that
// twinsnap-s1's count must not change at all.
func testBitmapDaemonKilled(ctx context.Context, t *testing.T, b *bitmapVM) {
	d1, _ := b.vm.Disk("data1")
	closeQuietly(b.m) // the first daemon's own machine goes: the dead daemon gets a raw connection
	ga0, err := b.vm.Agent(ctx)
	if err != nil {
		t.Fatalf("agent: %v", err)
	}
	freeze(ctx, t, ga0, "/mnt/data1")

	q1, err := hypervisor.DialQMP(ctx, "unix", b.vm.QMPSocket, hypervisor.WithLogger(quiet))
	if err != nil {
		t.Fatalf("DialQMP: %v", err)
	}
	defer closeQuietly(q1) // on failures; closed below
	before := bitmapNamed(ctx, t, q1, b.node, "twinsnap-s1")
	if before == nil {
		t.Fatalf("no twinsnap-s1")
	}
	start := func(id string) {
		t.Helper()
		target := newImage(ctx, t, b.dir, id, b.full)
		if err := hypervisor.BlockdevAdd(ctx, q1, "ts-"+id+"-tgt0", target, "qcow2"); err != nil {
			t.Fatalf("BlockdevAdd: %v", err)
		}
		err := hypervisor.Transaction(ctx, q1, []hypervisor.Action{
			hypervisor.BitmapAdd(b.node, "twinsnap-"+id, true),
			hypervisor.BlockdevBackupBitmap("ts-"+id+"-job0", b.node, "ts-"+id+"-tgt0", "twinsnap-s1", hypervisor.BitmapModeNever, hypervisor.ThrottledSpeed, true, false),
		}, nil)
		if err != nil {
			t.Fatalf("transaction of %s: %v", id, err)
		}
	}
	start("k1")
	if err := hypervisor.SetJobSpeed(ctx, q1, "ts-k1-job0", 0); err != nil {
		t.Fatalf("SetJobSpeed: %v", err)
	}
	if !waitFor(time.Minute, func() bool { return jobStatus(ctx, t, q1, "ts-k1-job0") == "concluded" }) {
		t.Fatalf("ts-k1-job0 did not conclude: %q", jobStatus(ctx, t, q1, "ts-k1-job0"))
	}
	start("k2")
	if bm := bitmapNamed(ctx, t, q1, b.node, "twinsnap-s1"); bm == nil || !bm.Busy {
		t.Fatalf("twinsnap-s1 while ts-k2-job0 runs = %+v; want busy", bm)
	}
	if err := q1.Close(); err != nil { // the daemon dies
		t.Fatalf("closing the dead daemon's connection: %v", err)
	}

	// The next daemon.
	b.m, b.ga = openVM(ctx, t, b.vm)
	q := b.m.QMP()
	jobs, err := hypervisor.QueryJobs(ctx, q)
	if err != nil || len(jobs) != 2 {
		t.Fatalf("jobs the dead daemon left: %+v, %v; want ts-k1-job0 and ts-k2-job0", jobs, err)
	}
	t.Logf("left by the dead daemon: %+v", jobs)
	target := newImage(ctx, t, b.dir, "busy", b.full)
	_, err = hypervisor.Capture(ctx, b.m, nil, hypervisor.CaptureRequest{
		ID: "busy",
		Volumes: []hypervisor.CaptureVolume{{
			Volume: "data1", Target: target, Mode: hypervisor.CaptureIncremental, Bitmap: "twinsnap-s1", NewBitmap: "twinsnap-busy",
		}},
		Quiesce: crashConsistent,
	})
	if !errors.Is(err, hypervisor.ErrBitmapInvalid) {
		t.Fatalf("Capture through a bitmap a stale job uses = %v, want ErrBitmapInvalid", err)
	}
	t.Logf("refused: %v", err)

	rep, err := hypervisor.CleanupStale(ctx, q, hypervisor.CapturePrefix)
	if err != nil {
		t.Fatalf("CleanupStale: %+v, %v", rep, err)
	}
	t.Logf("CleanupStale: %+v", rep)
	if strings.Join(rep.Cancelled, ",") != "ts-k2-job0" || len(rep.Dismissed) != 2 || strings.Join(rep.Nodes, ",") != "ts-k1-tgt0,ts-k2-tgt0" {
		t.Fatalf("CleanupStale report %+v; want ts-k2-job0 cancelled, both dismissed, both targets deleted", rep)
	}
	assertNoCaptureLeft(ctx, t, q)
	after := bitmapNamed(ctx, t, q, b.node, "twinsnap-s1")
	if after == nil || after.Count != before.Count || after.Busy || !after.Recording || !after.Persistent || after.Inconsistent {
		t.Fatalf("twinsnap-s1 after CleanupStale = %+v, before the dead daemon's captures %+v; want it unchanged", after, before)
	}
	bms, err := hypervisor.ListBitmaps(ctx, q)
	if err != nil {
		t.Fatalf("ListBitmaps: %v", err)
	}
	var stale []string
	for _, bm := range bms[b.node] {
		if bm.Name != "twinsnap-s1" {
			stale = append(stale, bm.Name)
		}
	}
	slices.Sort(stale)
	if !slices.Equal(stale, []string{"twinsnap-k1", "twinsnap-k2"}) {
		t.Fatalf("bitmaps of %s: %+v; want twinsnap-s1 and the dead captures' new ones", b.node, bms[b.node])
	}
	if err := hypervisor.RemoveBitmaps(ctx, q, b.node, stale); err != nil {
		t.Fatalf("RemoveBitmaps(%v): %v", stale, err)
	}
	assertBitmaps(ctx, t, q, b.node, "twinsnap-s1")
	thaw(ctx, t, ga0)
	closeQuietly(ga0)

	target = newImage(ctx, t, b.dir, "after", b.full)
	res, err := hypervisor.Capture(ctx, b.m, b.ga, hypervisor.CaptureRequest{
		ID: "after",
		Volumes: []hypervisor.CaptureVolume{{
			Volume: "data1", Target: target, Mode: hypervisor.CaptureIncremental, Bitmap: "twinsnap-s1", NewBitmap: "twinsnap-s6",
		}},
		Quiesce: appConsistent,
	})
	if err != nil {
		t.Fatalf("incremental Capture after the cleanup: %v", err)
	}
	logCapture(t, "incremental after the dead daemon", res)
	equalWhileFrozen(ctx, t, b.ga, d1.Path, target)
}

// newImage creates an empty 64 MiB qcow2 image name.qcow2 in dir, over
// backing if it is not empty.
func newImage(ctx context.Context, t *testing.T, dir, name, backing string) string {
	t.Helper()
	path := filepath.Join(dir, name+".qcow2")
	args := []string{"create", "-q", "-f", "qcow2"}
	if backing != "" {
		args = append(args, "-b", backing, "-F", "qcow2")
	}
	qemuImg(ctx, t, append(args, path, "64M")...)
	return path
}

// bitmapNamed returns node's bitmap name (ListBitmaps), or nil.
func bitmapNamed(ctx context.Context, t *testing.T, q hypervisor.QMP, node, name string) *hypervisor.DirtyBitmap {
	t.Helper()
	bms, err := hypervisor.ListBitmaps(ctx, q)
	if err != nil {
		t.Fatalf("ListBitmaps: %v", err)
	}
	for i := range bms[node] {
		if bms[node][i].Name == name {
			return &bms[node][i]
		}
	}
	return nil
}

// assertBitmaps checks that node has exactly the named bitmaps (QEMU
// lists the newest first; the order is not checked).
func assertBitmaps(ctx context.Context, t *testing.T, q hypervisor.QMP, node string, names ...string) {
	t.Helper()
	bms, err := hypervisor.ListBitmaps(ctx, q)
	if err != nil {
		t.Fatalf("ListBitmaps: %v", err)
	}
	var got []string
	for _, bm := range bms[node] {
		got = append(got, bm.Name)
	}
	slices.Sort(got)
	names = slices.Sorted(slices.Values(names))
	if !slices.Equal(got, names) {
		t.Fatalf("bitmaps of %s: %v, want %v", node, got, names)
	}
}

// assertNoCaptureLeft checks that QEMU lists no job and no block node of
// a capture (CapturePrefix).
func assertNoCaptureLeft(ctx context.Context, t *testing.T, q hypervisor.QMP) {
	t.Helper()
	jobs, err := hypervisor.QueryJobs(ctx, q)
	if err != nil {
		t.Fatalf("QueryJobs: %v", err)
	}
	for _, j := range jobs {
		if strings.HasPrefix(j.ID, hypervisor.CapturePrefix) {
			t.Fatalf("capture job left: %+v", j)
		}
	}
	var nodes []struct {
		NodeName string `json:"node-name"`
	}
	if err := q.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		t.Fatalf("query-named-block-nodes: %v", err)
	}
	for _, n := range nodes {
		if strings.HasPrefix(n.NodeName, hypervisor.CapturePrefix) {
			t.Fatalf("capture node left: %s", n.NodeName)
		}
	}
}

// jobStatus returns the status query-jobs reports for id ("" if none).
func jobStatus(ctx context.Context, t *testing.T, q hypervisor.QMP, id string) string {
	t.Helper()
	jobs, err := hypervisor.QueryJobs(ctx, q)
	if err != nil {
		t.Fatalf("QueryJobs: %v", err)
	}
	for _, j := range jobs {
		if j.ID == id {
			return j.Status
		}
	}
	return ""
}

// cancelWhenRunning cancels job id once query-jobs has listed it running
// for after, as a fault in the middle of its copy would end it; it gives
// up when ctx ends.
func cancelWhenRunning(ctx context.Context, q hypervisor.QMP, id string, after time.Duration) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var since time.Time
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		jobs, err := hypervisor.QueryJobs(ctx, q)
		if err != nil {
			return err
		}
		for _, j := range jobs {
			if j.ID != id || j.Status != "running" {
				continue
			}
			if since.IsZero() {
				since = time.Now()
			}
			if time.Since(since) >= after {
				return hypervisor.CancelJob(ctx, q, id)
			}
		}
	}
}
