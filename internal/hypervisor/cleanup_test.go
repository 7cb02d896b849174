package hypervisor_test

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/internal/hypervisor"
	"github.com/twinsnap/twinsnap/internal/hypervisor/qmptest"
)

// TestCleanupStaleFake leaves what dead captures leave on the fake: a
// running job, a failed job that stays concluded, a running job that QEMU
// dismisses itself once cancelled, and their targets (each over a "-file"
// node), beside a job and a node of someone else. CleanupStale cancels
// and dismisses the first three, deletes the targets, and touches nothing
// else.
func TestCleanupStaleFake(t *testing.T) {
	f, _, m, log := captureFixture(t)
	for _, j := range []struct {
		id          string
		autoDismiss bool
	}{{"ts-a-job0", false}, {"ts-a-job1", false}, {"ts-b-job0", true}, {"other-job", false}} {
		if e := f.jobs.Start(j.id, fakeDiskSize, true, j.autoDismiss); e != nil {
			t.Fatalf("start %s: %v", j.id, e)
		}
	}
	f.jobs.Fail("ts-a-job1", "No space left on device")
	f.mu.Lock()
	for _, n := range []string{"ts-a-tgt0", "ts-a-tgt1", "ts-b-tgt0", "keep"} {
		f.targets[n] = fakeDiskSize
	}
	f.mu.Unlock()
	ctx := within(t, 10*time.Second)

	rep, err := hypervisor.CleanupStale(ctx, m.q, hypervisor.CapturePrefix)
	if err != nil {
		t.Fatalf("CleanupStale: %v", err)
	}
	t.Logf("report: %+v", rep)
	var found []string
	for _, j := range rep.Jobs {
		found = append(found, j.ID+" "+j.Status)
	}
	if want := []string{"ts-a-job0 running", "ts-a-job1 concluded", "ts-b-job0 running"}; !reflect.DeepEqual(found, want) {
		t.Fatalf("jobs found %v, want %v", found, want)
	}
	slices.Sort(rep.Cancelled)
	slices.Sort(rep.Dismissed)
	if want := []string{"ts-a-job0", "ts-b-job0"}; !reflect.DeepEqual(rep.Cancelled, want) {
		t.Fatalf("cancelled %v, want %v", rep.Cancelled, want)
	}
	if want := []string{"ts-a-job0", "ts-a-job1"}; !reflect.DeepEqual(rep.Dismissed, want) {
		t.Fatalf("dismissed %v, want %v", rep.Dismissed, want)
	}
	if want := []string{"ts-a-tgt0", "ts-a-tgt1", "ts-b-tgt0"}; !reflect.DeepEqual(rep.Nodes, want) {
		t.Fatalf("nodes deleted %v, want %v", rep.Nodes, want)
	}
	if open := f.openTargets(); !reflect.DeepEqual(open, []string{"keep"}) {
		t.Fatalf("targets left %v, want keep", open)
	}
	jobs, err := hypervisor.QueryJobs(ctx, m.q)
	if err != nil || len(jobs) != 1 || jobs[0].ID != "other-job" || jobs[0].Status != "running" {
		t.Fatalf("jobs left %+v, %v; want other-job running", jobs, err)
	}
	if rep.Duration <= 0 {
		t.Fatalf("duration %v", rep.Duration)
	}
	// Nothing left: a second call finds nothing and does nothing.
	before := len(log.get())
	rep, err = hypervisor.CleanupStale(ctx, m.q, hypervisor.CapturePrefix)
	if err != nil || len(rep.Jobs)+len(rep.Cancelled)+len(rep.Dismissed)+len(rep.Nodes) != 0 || len(log.get()) != before {
		t.Fatalf("second CleanupStale: %+v, %v", rep, err)
	}
}

// TestCleanupStaleRefusals: a job that does not end within ctx is
// ErrTimeout, and its nodes are left alone; a node QEMU refuses to delete
// fails the call with QEMU's error, after the other nodes went.
func TestCleanupStaleRefusals(t *testing.T) {
	t.Run("job hangs", func(t *testing.T) {
		f, _, m, _ := captureFixture(t)
		f.s.Commands["job-cancel"] = func(*qmptest.Call) qmptest.Reply { return qmptest.Reply{} } // accepted, never acted on
		if e := f.jobs.Start("ts-h-job0", fakeDiskSize, true, false); e != nil {
			t.Fatalf("start: %v", e)
		}
		f.mu.Lock()
		f.targets["ts-h-tgt0"] = fakeDiskSize
		f.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		start := time.Now()
		rep, err := hypervisor.CleanupStale(ctx, m.q, "ts-h-")
		if !errors.Is(err, hypervisor.ErrTimeout) || !strings.Contains(err.Error(), "ts-h-job0 (running)") {
			t.Fatalf("CleanupStale = %+v, %v; want ErrTimeout naming the job", rep, err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("CleanupStale took %v past a 500 ms bound", d)
		}
		t.Logf("%v", err)
		if !reflect.DeepEqual(rep.Cancelled, []string{"ts-h-job0"}) || len(rep.Nodes) != 0 || len(f.openTargets()) != 1 {
			t.Fatalf("report %+v, targets %v; want the job cancelled once and the node left", rep, f.openTargets())
		}
	})
	t.Run("node in use", func(t *testing.T) {
		f, _, m, _ := captureFixture(t)
		f.inUse = map[string]bool{"ts-u-tgt0": true}
		f.mu.Lock()
		f.targets["ts-u-tgt0"] = fakeDiskSize
		f.targets["ts-u-tgt1"] = fakeDiskSize
		f.mu.Unlock()
		rep, err := hypervisor.CleanupStale(within(t, 5*time.Second), m.q, hypervisor.CapturePrefix)
		var qe *hypervisor.QMPError
		if !errors.As(err, &qe) || !strings.Contains(err.Error(), "2 block nodes remain") {
			t.Fatalf("CleanupStale = %+v, %v; want QEMU's refusal for ts-u-tgt0 and its file node", rep, err)
		}
		t.Logf("%v", err)
		if !reflect.DeepEqual(rep.Nodes, []string{"ts-u-tgt1"}) || !reflect.DeepEqual(f.openTargets(), []string{"ts-u-tgt0"}) {
			t.Fatalf("deleted %v, left %v", rep.Nodes, f.openTargets())
		}
	})
	t.Run("empty prefix", func(t *testing.T) {
		_, _, m, log := captureFixture(t)
		if _, err := hypervisor.CleanupStale(within(t, 5*time.Second), m.q, ""); err == nil || len(log.get()) != 0 {
			t.Fatalf("CleanupStale with an empty prefix = %v, steps %v", err, log.get())
		}
	})
}

// TestRemoveBitmapsFake removes bitmaps in one transaction, ignoring
// names the node does not have; a node QEMU does not list is ErrNotFound,
// and a busy bitmap makes QEMU refuse all of them (ErrBitmapInvalid).
func TestRemoveBitmapsFake(t *testing.T) {
	f, _, m, _ := captureFixture(t)
	f.bitmaps["vol-data1"] = []string{"a", "b", "c", "d"}
	f.flags["vol-data1/d"] = map[string]bool{"busy": true}
	ctx := within(t, 10*time.Second)

	bms, err := hypervisor.ListBitmaps(ctx, m.q)
	if err != nil || len(bms) != 1 || len(bms["vol-data1"]) != 4 || !bms["vol-data1"][3].Busy || !bms["vol-data1"][0].Persistent {
		t.Fatalf("ListBitmaps = %+v, %v; want data1's four", bms, err)
	}
	if err := hypervisor.RemoveBitmaps(ctx, m.q, "vol-data1", []string{"a", "missing", "c", "a"}); err != nil {
		t.Fatalf("RemoveBitmaps: %v", err)
	}
	if bm := f.bitmapsOf("vol-data1"); !reflect.DeepEqual(bm, []string{"b", "d"}) {
		t.Fatalf("bitmaps left %v, want b and d", bm)
	}
	want := []string{
		`{"type":"block-dirty-bitmap-remove","data":{"node":"vol-data1","name":"a"}}`,
		`{"type":"block-dirty-bitmap-remove","data":{"node":"vol-data1","name":"c"}}`,
	}
	if len(f.txns) != 1 || !reflect.DeepEqual(txnActions(t, f.txns[0]), want) {
		t.Fatalf("transactions %d: %s; want one of %v", len(f.txns), f.txns, want)
	}
	if err := hypervisor.RemoveBitmaps(ctx, m.q, "vol-data1", []string{"missing"}); err != nil || len(f.txns) != 1 {
		t.Fatalf("RemoveBitmaps of a missing bitmap = %v after %d transactions; want nil without one", err, len(f.txns))
	}
	if err := hypervisor.RemoveBitmaps(ctx, m.q, "vol-nope", []string{"a"}); !errors.Is(err, hypervisor.ErrNotFound) {
		t.Fatalf("RemoveBitmaps on an unknown node = %v, want ErrNotFound", err)
	}
	err = hypervisor.RemoveBitmaps(ctx, m.q, "vol-data1", []string{"b", "d"})
	var qe *hypervisor.QMPError
	if !errors.Is(err, hypervisor.ErrBitmapInvalid) || !errors.As(err, &qe) {
		t.Fatalf("RemoveBitmaps with a busy bitmap = %v, want ErrBitmapInvalid and QEMU's error", err)
	}
	t.Logf("%v", err)
	if bm := f.bitmapsOf("vol-data1"); !reflect.DeepEqual(bm, []string{"b", "d"}) {
		t.Fatalf("bitmaps left %v after a refused removal, want b and d", bm)
	}
}
