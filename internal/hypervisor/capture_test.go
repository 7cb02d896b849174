package hypervisor_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/guestagent"
	"github.com/twinsnap/twinsnap/internal/hypervisor"
	"github.com/twinsnap/twinsnap/internal/hypervisor/qmptest"
)

// fakeQEMU is a fake monitor for Capture: disks "data1" and "data2" (64
// MiB, virtio-blk at slots 5 and 6) with bitmaps, blockdev-add/del of
// targets (each over a "-file" child node), an atomic transaction that
// applies bitmap actions and starts simulated jobs, and a log of what
// happened in order, shared with fakeFreezer.
type fakeQEMU struct {
	s    *qmptest.Server
	jobs *qmptest.Jobs
	log  *orderLog

	mu      sync.Mutex
	bitmaps map[string][]string // node -> bitmap names
	// flags override a bitmap's flags in query-named-block-nodes, by
	// "node/name": "persistent", "recording", "busy", "inconsistent".
	flags   map[string]map[string]bool
	targets map[string]int64 // open target node -> virtual size
	txns    []json.RawMessage

	// targetSize overrides the size of targets opened from a path.
	targetSize map[string]int64
	// txnError makes the transaction fail as QEMU refuses it.
	txnError *qmptest.Error
	// finishInWindow completes a job inside the transaction (a tiny
	// incremental copy done in its first chunk).
	finishInWindow bool
	// failJob fails the named job instead of completing it; holdJob
	// leaves it running until cancelled.
	failJob, holdJob string
	// inUse makes blockdev-del refuse the named nodes.
	inUse map[string]bool
}

// orderLog records steps from the fakes in the order they happen.
type orderLog struct {
	mu    sync.Mutex
	steps []string
}

func (l *orderLog) add(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.steps = append(l.steps, s)
}

func (l *orderLog) get() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.steps)
}

const fakeDiskSize = 64 << 20

func newFakeQEMU(t *testing.T, log *orderLog) *fakeQEMU {
	t.Helper()
	f := &fakeQEMU{
		s: &qmptest.Server{}, log: log,
		bitmaps: map[string][]string{}, flags: map[string]map[string]bool{}, targets: map[string]int64{}, targetSize: map[string]int64{},
	}
	f.jobs = qmptest.NewJobs(f.s)
	qerr := func(desc string) qmptest.Reply {
		return qmptest.Reply{Error: &qmptest.Error{Class: "GenericError", Desc: desc}}
	}
	c := f.s.Commands
	c["query-block"] = func(*qmptest.Call) qmptest.Reply {
		var out []map[string]any
		for _, s := range []string{"data1", "data2"} {
			out = append(out, map[string]any{
				"device": "", "qdev": "/machine/peripheral/disk-" + s + "/virtio-backend",
				"inserted": map[string]any{"node-name": "vol-" + s, "drv": "qcow2", "file": "/img/" + s + ".qcow2",
					"image": map[string]any{"filename": "/img/" + s + ".qcow2", "format": "qcow2", "virtual-size": fakeDiskSize}},
			})
		}
		return qmptest.Reply{Return: out}
	}
	c["query-named-block-nodes"] = func(*qmptest.Call) qmptest.Reply {
		f.mu.Lock()
		defer f.mu.Unlock()
		var out []map[string]any
		for _, s := range []string{"data1", "data2"} {
			var bms []map[string]any
			for _, b := range f.bitmaps["vol-"+s] {
				bm := map[string]any{"name": b, "granularity": 65536, "count": 0, "persistent": true, "recording": true, "busy": false, "inconsistent": false}
				for k, v := range f.flags["vol-"+s+"/"+b] {
					bm[k] = v
				}
				bms = append(bms, bm)
			}
			out = append(out, map[string]any{"node-name": "vol-" + s, "drv": "qcow2", "dirty-bitmaps": bms,
				"image": map[string]any{"filename": "/img/" + s + ".qcow2", "format": "qcow2", "virtual-size": fakeDiskSize}})
		}
		for n, size := range f.targets {
			out = append(out, map[string]any{"node-name": n, "drv": "qcow2", "image": map[string]any{"virtual-size": size}},
				map[string]any{"node-name": n + "-file", "drv": "file", "image": map[string]any{"virtual-size": size}})
		}
		return qmptest.Reply{Return: out}
	}
	c["query-pci"] = func(*qmptest.Call) qmptest.Reply {
		return qmptest.Reply{Return: []map[string]any{{"bus": 0, "devices": []map[string]any{
			{"bus": 0, "slot": 5, "function": 0, "qdev_id": "disk-data1"},
			{"bus": 0, "slot": 6, "function": 0, "qdev_id": "disk-data2"},
		}}}}
	}
	c["qom-get"] = func(call *qmptest.Call) qmptest.Reply {
		var a struct{ Path string }
		_ = call.Decode(&a)
		id := strings.TrimPrefix(strings.TrimSuffix(a.Path, "/virtio-backend"), "/machine/peripheral/disk-")
		return qmptest.Reply{Return: id}
	}
	c["blockdev-add"] = func(call *qmptest.Call) qmptest.Reply {
		var a struct {
			NodeName string `json:"node-name"`
			File     struct{ Filename string }
		}
		_ = call.Decode(&a)
		f.mu.Lock()
		defer f.mu.Unlock()
		size, ok := f.targetSize[a.File.Filename]
		if !ok {
			size = fakeDiskSize
		}
		f.targets[a.NodeName] = size
		f.log.add("blockdev-add " + a.NodeName)
		return qmptest.Reply{}
	}
	c["blockdev-del"] = func(call *qmptest.Call) qmptest.Reply {
		var a struct {
			NodeName string `json:"node-name"`
		}
		_ = call.Decode(&a)
		f.mu.Lock()
		defer f.mu.Unlock()
		if _, ok := f.targets[strings.TrimSuffix(a.NodeName, "-file")]; ok && strings.HasSuffix(a.NodeName, "-file") {
			return qerr(fmt.Sprintf("Node %s is not owned by the monitor", a.NodeName))
		}
		if _, ok := f.targets[a.NodeName]; !ok {
			return qerr(fmt.Sprintf("Failed to find node with node-name='%s'", a.NodeName))
		}
		if f.inUse[a.NodeName] {
			return qerr(fmt.Sprintf("Node '%s' is busy: node is used as backing hd of 'x'", a.NodeName))
		}
		delete(f.targets, a.NodeName)
		f.log.add("blockdev-del " + a.NodeName)
		return qmptest.Reply{}
	}
	c["transaction"] = func(call *qmptest.Call) qmptest.Reply {
		f.log.add("transaction")
		f.mu.Lock()
		f.txns = append(f.txns, call.Args)
		if f.txnError != nil {
			f.mu.Unlock()
			return qmptest.Reply{Error: f.txnError}
		}
		var args struct {
			Actions []struct {
				Type string
				Data json.RawMessage
			}
		}
		_ = call.Decode(&args)
		// All or nothing: check every action, then apply them.
		type actionData struct {
			Node, Name string
			hypervisor.BackupData
		}
		datas := make([]actionData, len(args.Actions))
		for i, a := range args.Actions {
			d := &datas[i]
			_ = json.Unmarshal(a.Data, d)
			var bad string
			switch a.Type {
			case "block-dirty-bitmap-add":
				if slices.Contains(f.bitmaps[d.Node], d.Name) {
					bad = "Bitmap already exists: " + d.Name
				}
			case "block-dirty-bitmap-remove":
				switch {
				case !slices.Contains(f.bitmaps[d.Node], d.Name):
					bad = "Dirty bitmap '" + d.Name + "' not found"
				case f.flags[d.Node+"/"+d.Name]["busy"]:
					bad = "Bitmap '" + d.Name + "' is currently in use by another operation and cannot be used"
				}
			case "blockdev-backup":
				switch {
				case d.Speed != hypervisor.ThrottledSpeed || d.AutoDismiss || !d.AutoFinalize:
					bad = fmt.Sprintf("job %s: speed %d, auto-finalize %v, auto-dismiss %v", d.JobID, d.Speed, d.AutoFinalize, d.AutoDismiss)
				case d.Sync == "bitmap" && (d.BitmapMode != "never" || !slices.Contains(f.bitmaps[d.Device], d.Bitmap)):
					bad = fmt.Sprintf("job %s: bitmap %q, mode %q", d.JobID, d.Bitmap, d.BitmapMode)
				case d.Sync != "full" && d.Sync != "bitmap":
					bad = "job " + d.JobID + ": sync " + d.Sync
				}
			default:
				bad = "unexpected action " + a.Type
			}
			if bad != "" {
				f.mu.Unlock()
				return qerr(bad)
			}
		}
		var started []string
		for i, a := range args.Actions {
			d := datas[i]
			switch a.Type {
			case "block-dirty-bitmap-add":
				f.bitmaps[d.Node] = append(f.bitmaps[d.Node], d.Name)
			case "block-dirty-bitmap-remove":
				f.bitmaps[d.Node] = slices.DeleteFunc(f.bitmaps[d.Node], func(n string) bool { return n == d.Name })
				f.log.add("bitmap-remove " + d.Node + "/" + d.Name)
			case "blockdev-backup":
				started = append(started, d.JobID)
			}
		}
		finish := f.finishInWindow
		f.mu.Unlock()
		for _, id := range started {
			if e := f.jobs.Start(id, fakeDiskSize, true, false); e != nil {
				return qmptest.Reply{Error: e}
			}
			if finish {
				f.jobs.Complete(id)
			}
		}
		return qmptest.Reply{}
	}
	// Raising a job's speed lets it run to its end (or to its failure).
	setSpeed := c["block-job-set-speed"]
	c["block-job-set-speed"] = func(call *qmptest.Call) qmptest.Reply {
		var a struct {
			Device string
			Speed  int64
		}
		_ = call.Decode(&a)
		f.log.add(fmt.Sprintf("set-speed %s %d", a.Device, a.Speed))
		r := setSpeed(call)
		if r.Error == nil && a.Speed > hypervisor.ThrottledSpeed {
			go func() {
				time.Sleep(20 * time.Millisecond)
				switch a.Device {
				case f.failJob:
					f.jobs.Fail(a.Device, "No space left on device")
				case f.holdJob:
				default:
					f.jobs.Complete(a.Device)
				}
			}()
		}
		return r
	}
	t.Cleanup(func() { f.s.Close() })
	return f
}

func (f *fakeQEMU) openTargets() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for n := range f.targets {
		out = append(out, n)
	}
	return out
}

func (f *fakeQEMU) bitmapsOf(node string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.bitmaps[node])
}

// fakeMachine is a Machine over a QMP connection, without an agent
// transport (the tests pass an agent with FSInfo).
type fakeMachine struct{ q hypervisor.QMP }

func (m fakeMachine) Name() string                { return "fakevm" }
func (m fakeMachine) QMP() hypervisor.QMP         { return m.q }
func (m fakeMachine) Agent() guestagent.Transport { return nil }
func (m fakeMachine) Close() error                { return m.q.Close() }

// fakeFreezer is a guest agent in-process: a file system on each data
// disk, freeze and thaw logged in order.
type fakeFreezer struct {
	log *orderLog

	mu     sync.Mutex
	frozen []string
	// fsinfoErr makes guest-get-fsinfo fail; pingErr the ping.
	fsinfoErr, pingErr error
	freezes            int
}

var (
	_ hypervisor.FreezeAgent = (*fakeFreezer)(nil)
	_ hypervisor.FSInfoAgent = (*fakeFreezer)(nil)
)

func (a *fakeFreezer) Ping(context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.pingErr
}

func (a *fakeFreezer) FSInfo(context.Context) ([]guestagent.FileSystem, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.fsinfoErr != nil {
		return nil, a.fsinfoErr
	}
	return []guestagent.FileSystem{
		{Name: "vda", Mountpoint: "/", Type: "ext4", Disks: []guestagent.Disk{{PCIController: guestagent.PCIAddress{Slot: 4}}}},
		{Name: "vdb", Mountpoint: "/mnt/data1", Type: "ext4", Disks: []guestagent.Disk{{PCIController: guestagent.PCIAddress{Slot: 5}}}},
		{Name: "vdc", Mountpoint: "/mnt/data2", Type: "ext4", Disks: []guestagent.Disk{{PCIController: guestagent.PCIAddress{Slot: 6}, Serial: "data2"}}},
	}, nil
}

func (a *fakeFreezer) FreezeList(_ context.Context, mps []string) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.frozen = slices.Clone(mps)
	a.freezes++
	a.log.add("freeze " + strings.Join(mps, ","))
	return len(mps), nil
}

func (a *fakeFreezer) Thaw(context.Context) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := len(a.frozen)
	a.frozen = nil
	a.log.add("thaw")
	return n, nil
}

func (a *fakeFreezer) FreezeStatus(context.Context) (guestagent.FreezeStatus, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.frozen) > 0 {
		return guestagent.Frozen, nil
	}
	return guestagent.Thawed, nil
}

func (a *fakeFreezer) isFrozen() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.frozen) > 0
}

func captureOpts() hypervisor.QuiesceOptions {
	return hypervisor.QuiesceOptions{
		Desire: hypervisor.Application, Require: hypervisor.Crash, FreezeEnabled: true,
		Deadline: 5 * time.Second, AgentTimeout: time.Second, ThawTimeout: 2 * time.Second,
		WatchFor: 5 * time.Second, Logger: quiet,
	}
}

// captureFixture connects a fake QEMU and a fake agent, and checks for
// leaked goroutines once they are closed at the test's end.
func captureFixture(t *testing.T) (*fakeQEMU, *fakeFreezer, fakeMachine, *orderLog) {
	t.Helper()
	t.Cleanup(leakCheck(t)) // registered first: runs last
	log := &orderLog{}
	f := newFakeQEMU(t, log)
	q := connect(t, f.s)
	t.Cleanup(func() { _ = q.Close() })
	return f, &fakeFreezer{log: log}, fakeMachine{q}, log
}

// TestCaptureFake runs a full capture of two volumes on the fakes: the
// targets are opened before the freeze, one transaction runs inside it
// (a new persistent bitmap on each volume, both jobs throttled), the
// speed is raised only after the thaw, and the targets are closed once
// the jobs ended. A bitmap the volume had is left alone.
func TestCaptureFake(t *testing.T) {
	f, agent, m, log := captureFixture(t)
	f.bitmaps["vol-data2"] = []string{"older"}
	ctx := within(t, 20*time.Second)

	res, err := hypervisor.Capture(ctx, m, agent, hypervisor.CaptureRequest{
		ID: "c1",
		Volumes: []hypervisor.CaptureVolume{
			{Volume: "data1", Target: "/t/d1.qcow2", Mode: hypervisor.CaptureFull, NewBitmap: "twinsnap-s1"},
			{Volume: "disk-data2", Target: "/t/d2.qcow2", Mode: hypervisor.CaptureFull, NewBitmap: "twinsnap-s1"},
		},
		Quiesce: captureOpts(), RateLimit: 1 << 30,
	})
	if err != nil {
		t.Fatalf("Capture: %v", err)
	}
	if res.Quiesce.Achieved != hypervisor.Application || !reflect.DeepEqual(res.Plan.Mountpoints, []string{"/mnt/data1", "/mnt/data2"}) ||
		!reflect.DeepEqual(res.Quiesce.Frozen, res.Plan.Mountpoints) {
		t.Fatalf("achieved %s, plan %v, frozen %v; want application, /mnt/data1 and /mnt/data2", res.Quiesce.Achieved, res.Plan.Mountpoints, res.Quiesce.Frozen)
	}
	want := []string{
		"blockdev-add ts-c1-tgt0", "blockdev-add ts-c1-tgt1",
		"freeze /mnt/data1,/mnt/data2", "transaction", "thaw",
		"set-speed ts-c1-job0 1073741824", "set-speed ts-c1-job1 1073741824",
	}
	steps := log.get()
	if len(steps) < len(want)+2 || !reflect.DeepEqual(steps[:len(want)], want) {
		t.Fatalf("steps:\n%s\nwant them to start with:\n%s", strings.Join(steps, "\n"), strings.Join(want, "\n"))
	}
	if rest := steps[len(want):]; !slices.Contains(rest, "blockdev-del ts-c1-tgt0") || !slices.Contains(rest, "blockdev-del ts-c1-tgt1") {
		t.Fatalf("targets not closed after the jobs: %v", rest)
	}
	want = []string{
		`{"type":"block-dirty-bitmap-add","data":{"node":"vol-data1","name":"twinsnap-s1","persistent":true}}`,
		`{"type":"block-dirty-bitmap-add","data":{"node":"vol-data2","name":"twinsnap-s1","persistent":true}}`,
		`{"type":"blockdev-backup","data":{"job-id":"ts-c1-job0","device":"vol-data1","target":"ts-c1-tgt0","sync":"full","speed":1,"auto-finalize":true,"auto-dismiss":false}}`,
		`{"type":"blockdev-backup","data":{"job-id":"ts-c1-job1","device":"vol-data2","target":"ts-c1-tgt1","sync":"full","speed":1,"auto-finalize":true,"auto-dismiss":false}}`,
	}
	if got := txnActions(t, f.txns[0]); !reflect.DeepEqual(got, want) {
		t.Fatalf("transaction actions:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for i, v := range res.Volumes {
		if v.JobID != fmt.Sprintf("ts-c1-job%d", i) || v.Bytes != fakeDiskSize || v.Total != fakeDiskSize || v.Error != "" || v.Duration <= 0 ||
			v.Bitmap != "" || v.NewBitmap != "twinsnap-s1" {
			t.Fatalf("volume %d: %+v", i, v)
		}
	}
	if res.Volumes[1].Node != "vol-data2" {
		t.Fatalf("volumes: %+v", res.Volumes)
	}
	if bm := f.bitmapsOf("vol-data2"); !reflect.DeepEqual(bm, []string{"older", "twinsnap-s1"}) {
		t.Fatalf("bitmaps of data2: %v", bm)
	}
	if open := f.openTargets(); len(open) != 0 {
		t.Fatalf("targets left open: %v", open)
	}
	if jobs, err := hypervisor.QueryJobs(ctx, m.q); err != nil || len(jobs) != 0 {
		t.Fatalf("jobs left: %+v, %v", jobs, err)
	}
}

// txnActions returns a transaction's actions as compact JSON, one each.
func txnActions(t *testing.T, txn json.RawMessage) []string {
	t.Helper()
	var args struct{ Actions []json.RawMessage }
	if err := json.Unmarshal(txn, &args); err != nil {
		t.Fatalf("transaction %s: %v", txn, err)
	}
	out := make([]string, len(args.Actions))
	for i, a := range args.Actions {
		out[i] = string(a)
	}
	return out
}

// TestCaptureIncrementalFake: an incremental capture adds its new bitmap
// and copies through the parent's with bitmap-mode never, in one
// transaction; the parent's bitmap is still there afterwards.
func TestCaptureIncrementalFake(t *testing.T) {
	f, agent, m, log := captureFixture(t)
	f.bitmaps["vol-data1"] = []string{"twinsnap-s1"}
	res, err := hypervisor.Capture(within(t, 20*time.Second), m, agent, hypervisor.CaptureRequest{
		ID: "i1",
		Volumes: []hypervisor.CaptureVolume{{
			Volume: "data1", Target: "/t/d1.qcow2", Mode: hypervisor.CaptureIncremental, Bitmap: "twinsnap-s1", NewBitmap: "twinsnap-s2",
		}},
		Quiesce: captureOpts(),
	})
	if err != nil {
		t.Fatalf("Capture: %v", err)
	}
	want := []string{
		`{"type":"block-dirty-bitmap-add","data":{"node":"vol-data1","name":"twinsnap-s2","persistent":true}}`,
		`{"type":"blockdev-backup","data":{"job-id":"ts-i1-job0","device":"vol-data1","target":"ts-i1-tgt0","sync":"bitmap","bitmap":"twinsnap-s1","bitmap-mode":"never","speed":1,"auto-finalize":true,"auto-dismiss":false}}`,
	}
	if got := txnActions(t, f.txns[0]); !reflect.DeepEqual(got, want) {
		t.Fatalf("transaction actions:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if v := res.Volumes[0]; v.Mode != hypervisor.CaptureIncremental || v.Bitmap != "twinsnap-s1" || v.NewBitmap != "twinsnap-s2" {
		t.Fatalf("volume: %+v", v)
	}
	if bm := f.bitmapsOf("vol-data1"); !reflect.DeepEqual(bm, []string{"twinsnap-s1", "twinsnap-s2"}) {
		t.Fatalf("bitmaps of data1 after the capture: %v", bm)
	}
	for _, s := range log.get() {
		if strings.HasPrefix(s, "bitmap-remove") {
			t.Fatalf("a successful capture removed a bitmap: %v", log.get())
		}
	}
}

// TestCaptureJobFails fails one of two jobs during the copy: the other,
// still running, is cancelled, both are dismissed, the targets closed, and
// the bitmaps the capture added are removed; the parent's bitmap of the
// incremental volume is left as it was.
func TestCaptureJobFails(t *testing.T) {
	f, agent, m, _ := captureFixture(t)
	f.bitmaps["vol-data2"] = []string{"twinsnap-s1"}
	f.failJob, f.holdJob = "ts-c2-job1", "ts-c2-job0"
	ctx := within(t, 20*time.Second)
	res, err := hypervisor.Capture(ctx, m, agent, hypervisor.CaptureRequest{
		ID: "c2",
		Volumes: []hypervisor.CaptureVolume{
			{Volume: "data1", Target: "/t/d1.qcow2", Mode: hypervisor.CaptureFull, NewBitmap: "twinsnap-s2"},
			{Volume: "data2", Target: "/t/d2.qcow2", Mode: hypervisor.CaptureIncremental, Bitmap: "twinsnap-s1", NewBitmap: "twinsnap-s2"},
		},
		Quiesce: captureOpts(),
	})
	if !errors.Is(err, hypervisor.ErrCapture) || !errors.Is(err, hypervisor.ErrJobFailed) || !strings.Contains(err.Error(), "No space left") {
		t.Fatalf("Capture = %v; want ErrCapture and ErrJobFailed with QEMU's message", err)
	}
	t.Logf("error: %v", err)
	if agent.isFrozen() {
		t.Fatalf("guest left frozen")
	}
	if open := f.openTargets(); len(open) != 0 {
		t.Fatalf("targets left open: %v", open)
	}
	if jobs, err := hypervisor.QueryJobs(ctx, m.q); err != nil || len(jobs) != 0 {
		t.Fatalf("jobs left: %+v, %v", jobs, err)
	}
	if v := res.Volumes[0]; !strings.Contains(v.Error, "cancel") {
		t.Fatalf("held volume: %+v; want it cancelled", v)
	}
	if v := res.Volumes[1]; !strings.Contains(v.Error, "No space") {
		t.Fatalf("failed volume: %+v; want QEMU's error", v)
	}
	if bm := f.bitmapsOf("vol-data1"); len(bm) != 0 {
		t.Fatalf("bitmaps left on data1: %v", bm)
	}
	if bm := f.bitmapsOf("vol-data2"); !reflect.DeepEqual(bm, []string{"twinsnap-s1"}) {
		t.Fatalf("bitmaps of data2: %v; want the parent's alone", bm)
	}
}

// TestCaptureTransactionRefused: QEMU refuses the transaction (atomic:
// nothing happened). The guest is thawed, the targets closed, and no
// bitmap is touched.
func TestCaptureTransactionRefused(t *testing.T) {
	f, agent, m, log := captureFixture(t)
	f.bitmaps["vol-data1"] = []string{"twinsnap-s1"}
	f.txnError = &qmptest.Error{Class: "GenericError", Desc: "Bitmap 'twinsnap-s1' is currently in use"}
	_, err := hypervisor.Capture(within(t, 20*time.Second), m, agent, hypervisor.CaptureRequest{
		ID: "c3",
		Volumes: []hypervisor.CaptureVolume{{
			Volume: "data1", Target: "/t/d1.qcow2", Mode: hypervisor.CaptureIncremental, Bitmap: "twinsnap-s1", NewBitmap: "twinsnap-s2",
		}},
		Quiesce: captureOpts(),
	})
	var qe *hypervisor.QMPError
	if err == nil || !errors.As(err, &qe) || qe.Command != "transaction" {
		t.Fatalf("Capture = %v; want the transaction's QMP error", err)
	}
	if agent.isFrozen() || len(f.openTargets()) != 0 {
		t.Fatalf("frozen %v, targets %v after a refused transaction", agent.isFrozen(), f.openTargets())
	}
	if bm := f.bitmapsOf("vol-data1"); !reflect.DeepEqual(bm, []string{"twinsnap-s1"}) {
		t.Fatalf("bitmaps %v; a refused transaction must leave the bitmap", bm)
	}
	for _, s := range log.get() {
		if strings.HasPrefix(s, "set-speed") || strings.HasPrefix(s, "bitmap-remove") {
			t.Fatalf("%s after a refused transaction: %v", s, log.get())
		}
	}
}

// TestCaptureRefusedBeforeFreeze: what can be known before the freeze
// fails the capture before it: an unknown volume, a request that does not
// fit its mode, an incremental capture whose bitmap is missing or cannot
// be trusted, a new bitmap that exists, a target of the wrong size.
func TestCaptureRefusedBeforeFreeze(t *testing.T) {
	inc := func(bitmap string) hypervisor.CaptureVolume {
		return hypervisor.CaptureVolume{Volume: "data1", Target: "/t/x", Mode: hypervisor.CaptureIncremental, Bitmap: bitmap, NewBitmap: "n"}
	}
	for _, tc := range []struct {
		name string
		vol  hypervisor.CaptureVolume
		want error
	}{
		{"unknown volume", hypervisor.CaptureVolume{Volume: "data9", Target: "/t/x", Mode: hypervisor.CaptureFull}, hypervisor.ErrNotFound},
		{"no bitmap", inc("nope"), hypervisor.ErrNotFound},
		{"busy bitmap", inc("busy"), hypervisor.ErrBitmapInvalid},
		{"inconsistent bitmap", inc("inconsistent"), hypervisor.ErrBitmapInvalid},
		{"transient bitmap", inc("transient"), hypervisor.ErrBitmapInvalid},
		{"disabled bitmap", inc("disabled"), hypervisor.ErrBitmapInvalid},
		{"new bitmap exists", hypervisor.CaptureVolume{Volume: "data1", Target: "/t/x", Mode: hypervisor.CaptureFull, NewBitmap: "p"}, hypervisor.ErrBitmapInvalid},
		{"new bitmap exists, incremental", hypervisor.CaptureVolume{Volume: "data1", Target: "/t/x", Mode: hypervisor.CaptureIncremental, Bitmap: "p", NewBitmap: "busy"}, hypervisor.ErrBitmapInvalid},
		{"incremental without a new bitmap", hypervisor.CaptureVolume{Volume: "data1", Target: "/t/x", Mode: hypervisor.CaptureIncremental, Bitmap: "p"}, nil},
		{"incremental without a bitmap", hypervisor.CaptureVolume{Volume: "data1", Target: "/t/x", Mode: hypervisor.CaptureIncremental, NewBitmap: "n"}, nil},
		{"new bitmap is the parent", hypervisor.CaptureVolume{Volume: "data1", Target: "/t/x", Mode: hypervisor.CaptureIncremental, Bitmap: "p", NewBitmap: "p"}, nil},
		{"full with a bitmap", hypervisor.CaptureVolume{Volume: "data1", Target: "/t/x", Mode: hypervisor.CaptureFull, Bitmap: "p"}, nil},
		{"target size", hypervisor.CaptureVolume{Volume: "data1", Target: "/t/small", Mode: hypervisor.CaptureFull}, nil},
		{"no mode", hypervisor.CaptureVolume{Volume: "data1", Target: "/t/x"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, agent, m, log := captureFixture(t)
			f.targetSize["/t/small"] = 1 << 20
			f.bitmaps["vol-data1"] = []string{"p", "busy", "inconsistent", "transient", "disabled"}
			f.flags["vol-data1/busy"] = map[string]bool{"busy": true, "recording": false}
			f.flags["vol-data1/inconsistent"] = map[string]bool{"inconsistent": true}
			f.flags["vol-data1/transient"] = map[string]bool{"persistent": false}
			f.flags["vol-data1/disabled"] = map[string]bool{"recording": false}
			_, err := hypervisor.Capture(within(t, 10*time.Second), m, agent, hypervisor.CaptureRequest{
				Volumes: []hypervisor.CaptureVolume{tc.vol}, Quiesce: captureOpts(),
			})
			if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Fatalf("Capture = %v, want an error (%v)", err, tc.want)
			}
			t.Logf("%v", err)
			if agent.freezes != 0 || len(f.openTargets()) != 0 || len(f.txns) != 0 {
				t.Fatalf("freezes %d, open targets %v, transactions %d; steps %v", agent.freezes, f.openTargets(), len(f.txns), log.get())
			}
			if bm := f.bitmapsOf("vol-data1"); len(bm) != 5 {
				t.Fatalf("bitmaps of data1: %v", bm)
			}
		})
	}
}

// TestCaptureJobDoneInWindow: a job that finished within its first chunk
// refuses a new speed; the capture goes on.
func TestCaptureJobDoneInWindow(t *testing.T) {
	f, agent, m, _ := captureFixture(t)
	f.bitmaps["vol-data1"] = []string{"twinsnap-s1"}
	f.finishInWindow = true
	res, err := hypervisor.Capture(within(t, 10*time.Second), m, agent, hypervisor.CaptureRequest{
		Volumes: []hypervisor.CaptureVolume{{
			Volume: "vol-data1", Target: "/t/d1.qcow2", Mode: hypervisor.CaptureIncremental, Bitmap: "twinsnap-s1", NewBitmap: "twinsnap-s2",
		}},
		Quiesce: captureOpts(),
	})
	if err != nil || res.Volumes[0].Bytes != fakeDiskSize {
		t.Fatalf("Capture = %+v, %v", res, err)
	}
}

// TestCapturePlanFails: a guest that cannot list its file systems steps
// the capture down to crash consistency (recorded), or fails it before
// anything is touched when application consistency is required.
func TestCapturePlanFails(t *testing.T) {
	f, agent, m, log := captureFixture(t)
	agent.fsinfoErr = fmt.Errorf("%w: guest-get-fsinfo: no answer", guestagent.ErrTimeout)
	req := hypervisor.CaptureRequest{
		Volumes: []hypervisor.CaptureVolume{{Volume: "data1", Target: "/t/d1.qcow2", Mode: hypervisor.CaptureFull}},
		Quiesce: captureOpts(),
	}
	req.Quiesce.Require = hypervisor.Application
	res, err := hypervisor.Capture(within(t, 10*time.Second), m, agent, req)
	if !errors.Is(err, hypervisor.ErrConsistency) || !strings.Contains(err.Error(), "no answer") {
		t.Fatalf("require application: %v, want ErrConsistency with the cause", err)
	}
	if len(log.get()) != 0 {
		t.Fatalf("a refused capture touched something: %v", log.get())
	}
	t.Logf("require application: %v (step down %q)", err, res.Quiesce.StepDown)

	req.Quiesce.Require = hypervisor.Crash
	res, err = hypervisor.Capture(within(t, 10*time.Second), m, agent, req)
	if err != nil || res.Quiesce.Achieved != hypervisor.Crash || !strings.Contains(res.Quiesce.StepDown, "no answer") {
		t.Fatalf("require crash: %+v, %v; want crash with the reason", res.Quiesce, err)
	}
	if agent.freezes != 0 || len(f.openTargets()) != 0 {
		t.Fatalf("freezes %d, targets %v", agent.freezes, f.openTargets())
	}
}
