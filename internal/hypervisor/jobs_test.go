package hypervisor_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/internal/hypervisor"
	"github.com/twinsnap/twinsnap/internal/hypervisor/qmptest"
)

// fakeWithJobs returns a fake whose transaction starts a simulated job for
// each blockdev-backup action, and records the transactions it received.
func fakeWithJobs(t *testing.T) (*qmptest.Server, *qmptest.Jobs, chan json.RawMessage) {
	t.Helper()
	s := &qmptest.Server{}
	jobs := qmptest.NewJobs(s)
	txns := make(chan json.RawMessage, 16)
	s.Commands["transaction"] = func(c *qmptest.Call) qmptest.Reply {
		txns <- c.Args
		var args struct {
			Actions []struct {
				Type string
				Data hypervisor.BackupData
			}
		}
		if err := c.Decode(&args); err != nil {
			return qmptest.Reply{Error: &qmptest.Error{Class: "GenericError", Desc: err.Error()}}
		}
		for _, a := range args.Actions {
			if a.Type == "blockdev-backup" {
				if e := jobs.Start(a.Data.JobID, 1<<20, a.Data.AutoFinalize, a.Data.AutoDismiss); e != nil {
					return qmptest.Reply{Error: e}
				}
			}
		}
		return qmptest.Reply{}
	}
	return s, jobs, txns
}

// TestTransactionJSON checks the transaction and its actions on the wire.
func TestTransactionJSON(t *testing.T) {
	defer leakCheck(t)()
	s, _, txns := fakeWithJobs(t)
	defer s.Close()
	c := connect(t, s)
	defer closeQuietly(c)
	err := hypervisor.Transaction(within(t, 5*time.Second), c, []hypervisor.Action{
		hypervisor.BitmapAdd("vol-a", "ts-1", true),
		hypervisor.BitmapClear("vol-a", "ts-0"),
		hypervisor.BitmapRemove("vol-a", "ts-x"),
		hypervisor.BlockdevBackup("j1", "vol-a", "tgt-a", hypervisor.SyncIncremental, "ts-0", 1<<20, false, false),
		hypervisor.DriveBackup("j2", "vol-b", "/t/b.qcow2", "qcow2", hypervisor.ModeExisting, hypervisor.SyncFull, "", 0, true, true),
		hypervisor.BlockdevBackupBitmap("j3", "vol-c", "tgt-c", "ts-2", hypervisor.BitmapModeNever, 1, true, false),
	}, &hypervisor.TransactionProps{CompletionMode: hypervisor.CompletionIndividual})
	if err != nil {
		t.Fatalf("Transaction: %v", err)
	}
	want := `{"actions":[` +
		`{"type":"block-dirty-bitmap-add","data":{"node":"vol-a","name":"ts-1","persistent":true}},` +
		`{"type":"block-dirty-bitmap-clear","data":{"node":"vol-a","name":"ts-0"}},` +
		`{"type":"block-dirty-bitmap-remove","data":{"node":"vol-a","name":"ts-x"}},` +
		`{"type":"blockdev-backup","data":{"job-id":"j1","device":"vol-a","target":"tgt-a","sync":"incremental","bitmap":"ts-0","speed":1048576,"auto-finalize":false,"auto-dismiss":false}},` +
		`{"type":"drive-backup","data":{"job-id":"j2","device":"vol-b","target":"/t/b.qcow2","format":"qcow2","mode":"existing","sync":"full","auto-finalize":true,"auto-dismiss":true}},` +
		`{"type":"blockdev-backup","data":{"job-id":"j3","device":"vol-c","target":"tgt-c","sync":"bitmap","bitmap":"ts-2","bitmap-mode":"never","speed":1,"auto-finalize":true,"auto-dismiss":false}}],` +
		`"properties":{"completion-mode":"individual"}}`
	if got := string(<-txns); got != want {
		t.Fatalf("transaction on the wire:\n got %s\nwant %s", got, want)
	}
	// Without properties the member is left out.
	if err := hypervisor.Transaction(within(t, 5*time.Second), c, nil, nil); err != nil {
		t.Fatalf("empty Transaction: %v", err)
	}
	if got := string(<-txns); got != `{"actions":[]}` {
		t.Fatalf("empty transaction on the wire: %s", got)
	}
}

// TestWaitJobAutoSettings follows a job to its end under each combination
// of auto-finalize and auto-dismiss: Wait finalizes and dismisses as
// needed and reports success or QEMU's error.
func TestWaitJobAutoSettings(t *testing.T) {
	for _, tc := range []struct {
		name                      string
		autoFinalize, autoDismiss bool
		fail                      string
	}{
		{"auto", true, true, ""},
		{"manual", false, false, ""},
		{"manual-finalize", false, true, ""},
		{"manual-dismiss", true, false, ""},
		{"auto-failed", true, true, "Input/output error"},
		{"manual-failed", false, false, "No space left on device"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer leakCheck(t)()
			s, jobs, _ := fakeWithJobs(t)
			defer s.Close()
			c := connect(t, s)
			defer closeQuietly(c)
			ctx := within(t, 10*time.Second)

			w := hypervisor.WatchJob(c, "j1")
			if err := hypervisor.Transaction(ctx, c, []hypervisor.Action{
				hypervisor.BlockdevBackup("j1", "vol-a", "tgt-a", hypervisor.SyncFull, "", 0, tc.autoFinalize, tc.autoDismiss),
			}, nil); err != nil {
				t.Fatalf("Transaction: %v", err)
			}
			go func() {
				time.Sleep(50 * time.Millisecond)
				if tc.fail != "" {
					jobs.Fail("j1", tc.fail)
				} else {
					jobs.Complete("j1")
				}
			}()
			res, err := w.Wait(ctx)
			switch {
			case tc.fail == "" && err != nil:
				t.Fatalf("Wait: %v", err)
			case tc.fail != "" && (!errors.Is(err, hypervisor.ErrJobFailed) || !strings.Contains(err.Error(), tc.fail) || res.Error != tc.fail):
				t.Fatalf("Wait = %+v, %v; want ErrJobFailed with %q", res, err, tc.fail)
			}
			if res.ID != "j1" || res.Type != "backup" || res.TotalProgress != 1<<20 {
				t.Fatalf("result = %+v", res)
			}
			if _, ok := jobs.Get("j1"); ok {
				t.Fatalf("job still listed after Wait: it was not dismissed")
			}
		})
	}
}

// TestWaitJobFiltersByID runs two jobs at once; each watch sees only its
// own job's events, whatever order the jobs end in.
func TestWaitJobFiltersByID(t *testing.T) {
	defer leakCheck(t)()
	s, jobs, _ := fakeWithJobs(t)
	defer s.Close()
	c := connect(t, s)
	defer closeQuietly(c)
	ctx := within(t, 10*time.Second)

	w1, w2 := hypervisor.WatchJob(c, "j1"), hypervisor.WatchJob(c, "j2")
	if err := hypervisor.Transaction(ctx, c, []hypervisor.Action{
		hypervisor.BlockdevBackup("j1", "vol-a", "tgt-a", hypervisor.SyncFull, "", 0, true, false),
		hypervisor.BlockdevBackup("j2", "vol-b", "tgt-b", hypervisor.SyncFull, "", 0, true, false),
	}, nil); err != nil {
		t.Fatalf("Transaction: %v", err)
	}
	type result struct {
		res hypervisor.JobResult
		err error
	}
	r1, r2 := make(chan result, 1), make(chan result, 1)
	go func() { res, err := w1.Wait(ctx); r1 <- result{res, err} }()
	go func() { res, err := w2.Wait(ctx); r2 <- result{res, err} }()

	// j2 ends first; j1's watch must not take j2's events for its own.
	jobs.Complete("j2")
	select {
	case r := <-r2:
		if r.err != nil || r.res.ID != "j2" {
			t.Fatalf("j2: %+v, %v", r.res, r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("j2's watch did not see j2 end")
	}
	select {
	case r := <-r1:
		t.Fatalf("j1's watch ended on j2's events: %+v, %v", r.res, r.err)
	case <-time.After(200 * time.Millisecond):
	}
	if job, ok := jobs.Get("j1"); !ok || job.Status != "running" {
		t.Fatalf("j1 = %+v, %v; want running", job, ok)
	}
	jobs.Fail("j1", "Input/output error")
	r := <-r1
	if !errors.Is(r.err, hypervisor.ErrJobFailed) || r.res.ID != "j1" {
		t.Fatalf("j1: %+v, %v; want ErrJobFailed", r.res, r.err)
	}
}

// TestWaitJobCancelAndSpeed: SetJobSpeed and CancelJob reach the job; an
// unknown job is ErrNotFound with QEMU's class kept.
func TestWaitJobCancelAndSpeed(t *testing.T) {
	defer leakCheck(t)()
	s, jobs, _ := fakeWithJobs(t)
	defer s.Close()
	c := connect(t, s)
	defer closeQuietly(c)
	ctx := within(t, 10*time.Second)

	// The job ends before Wait starts reading: the cancellation is
	// still reported, whether QEMU or Wait dismisses the job.
	for _, autoDismiss := range []bool{true, false} {
		w := hypervisor.WatchJob(c, "j1")
		if err := hypervisor.Transaction(ctx, c, []hypervisor.Action{
			hypervisor.BlockdevBackup("j1", "vol-a", "tgt-a", hypervisor.SyncFull, "", 0, true, autoDismiss),
		}, nil); err != nil {
			t.Fatalf("Transaction: %v", err)
		}
		if err := hypervisor.SetJobSpeed(ctx, c, "j1", 4<<20); err != nil {
			t.Fatalf("SetJobSpeed: %v", err)
		}
		if job, _ := jobs.Get("j1"); job.Speed != 4<<20 {
			t.Fatalf("speed = %d, want 4 MiB/s", job.Speed)
		}
		list, err := hypervisor.QueryJobs(ctx, c)
		if err != nil || len(list) != 1 || list[0].ID != "j1" || list[0].Status != "running" {
			t.Fatalf("QueryJobs = %+v, %v", list, err)
		}
		if err := hypervisor.CancelJob(ctx, c, "j1"); err != nil {
			t.Fatalf("CancelJob: %v", err)
		}
		res, err := w.Wait(ctx)
		if !errors.Is(err, hypervisor.ErrJobFailed) || !res.Cancelled {
			t.Fatalf("auto-dismiss %v: Wait after cancel = %+v, %v; want a cancelled job", autoDismiss, res, err)
		}
		if _, ok := jobs.Get("j1"); ok {
			t.Fatalf("auto-dismiss %v: job left after Wait", autoDismiss)
		}
	}

	err := hypervisor.SetJobSpeed(ctx, c, "nope", 1)
	var qe *hypervisor.QMPError
	if !errors.Is(err, hypervisor.ErrNotFound) || !errors.As(err, &qe) || qe.Class != "DeviceNotActive" {
		t.Fatalf("SetJobSpeed(nope) = %v; want ErrNotFound keeping DeviceNotActive", err)
	}
}

// TestWaitJobNotFound: a job that does not exist and whose end was not
// seen is ErrNotFound, within the grace period.
func TestWaitJobNotFound(t *testing.T) {
	defer leakCheck(t)()
	s, _, _ := fakeWithJobs(t)
	defer s.Close()
	c := connect(t, s)
	defer closeQuietly(c)
	start := time.Now()
	_, err := hypervisor.WaitJob(within(t, 10*time.Second), c, "nope")
	if !errors.Is(err, hypervisor.ErrNotFound) {
		t.Fatalf("WaitJob(nope) = %v, want ErrNotFound", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("WaitJob(nope) took %v", d)
	}
	// Bounded by the context.
	_, err = hypervisor.WaitJob(within(t, 100*time.Millisecond), c, "nope")
	if !errors.Is(err, hypervisor.ErrTimeout) {
		t.Fatalf("WaitJob(nope) with a short context = %v, want ErrTimeout", err)
	}
}

// TestWaitJobAfterLostEvents: a watch whose queue overflowed re-reads the
// job with query-jobs. A job left concluded (auto-dismiss off) is still
// reported; one QEMU dismissed itself is ErrNotFound, as documented.
func TestWaitJobAfterLostEvents(t *testing.T) {
	for _, tc := range []struct {
		autoDismiss bool
		want        error
	}{{false, nil}, {true, hypervisor.ErrNotFound}} {
		t.Run(map[bool]string{false: "manual-dismiss", true: "auto-dismiss"}[tc.autoDismiss], func(t *testing.T) {
			defer leakCheck(t)()
			s, jobs, _ := fakeWithJobs(t)
			defer s.Close()
			c := connect(t, s, hypervisor.WithEventQueueLimit(2))
			defer closeQuietly(c)
			ctx := within(t, 10*time.Second)

			w := hypervisor.WatchJob(c, "j1")
			if err := hypervisor.Transaction(ctx, c, []hypervisor.Action{
				hypervisor.BlockdevBackup("j1", "vol-a", "tgt-a", hypervisor.SyncFull, "", 0, true, tc.autoDismiss),
			}, nil); err != nil {
				t.Fatalf("Transaction: %v", err)
			}
			jobs.Complete("j1") // before Wait reads: its queue overflows
			if !waitFor(2*time.Second, func() bool { return c.Stats().EventsDropped > 0 }) {
				t.Fatalf("no events dropped")
			}
			res, err := w.Wait(ctx)
			if tc.want == nil && err != nil {
				t.Fatalf("Wait = %+v, %v; want success", res, err)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("Wait = %+v, %v; want %v", res, err, tc.want)
			}
		})
	}
}

// TestWaitJobConnectionLost: a wait ends with ErrClosed when the
// connection goes.
func TestWaitJobConnectionLost(t *testing.T) {
	defer leakCheck(t)()
	s, _, _ := fakeWithJobs(t)
	defer s.Close()
	c := connect(t, s)
	defer closeQuietly(c)
	ctx := within(t, 10*time.Second)
	w := hypervisor.WatchJob(c, "j1")
	if err := hypervisor.Transaction(ctx, c, []hypervisor.Action{
		hypervisor.BlockdevBackup("j1", "vol-a", "tgt-a", hypervisor.SyncFull, "", 0, true, true),
	}, nil); err != nil {
		t.Fatalf("Transaction: %v", err)
	}
	go func() {
		time.Sleep(50 * time.Millisecond)
		s.Close()
	}()
	if _, err := w.Wait(ctx); !errors.Is(err, hypervisor.ErrClosed) {
		t.Fatalf("Wait on a lost connection = %v, want ErrClosed", err)
	}
}
