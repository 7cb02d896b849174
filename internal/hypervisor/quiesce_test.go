package hypervisor

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/guestagent"
	"github.com/twinsnap/twinsnap/guestagent/agenttest"
)

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// fakeGuest starts a fake agent and returns it with a connected client
// and a Redial that connects again.
func fakeGuest(t *testing.T, fault agenttest.Fault) (*agenttest.Agent, *guestagent.Client, func(context.Context) (AgentConn, error)) {
	t.Helper()
	a := agenttest.New()
	a.Fault = fault
	sock := a.Start(t)
	dial := func(ctx context.Context) (*guestagent.Client, error) {
		s, err := guestagent.Dial(ctx, "unix", sock)
		if err != nil {
			return nil, err
		}
		return guestagent.NewClient(s), nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := dial(ctx)
	if err != nil {
		t.Fatalf("dial fake agent: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return a, c, func(ctx context.Context) (AgentConn, error) { return dial(ctx) }
}

func data1Plan() FreezePlan {
	vols := []PlanVolume{
		{Name: "boot", Serial: "boot"},
		{Name: "data1", Serial: "data1", Selected: true},
		{Name: "data2", Serial: "data2"},
	}
	return PlanFreeze(vols, toGuestFS(agenttest.DefaultFileSystems()))
}

// toGuestFS converts the fake's file systems to the client's types.
func toGuestFS(in []agenttest.FileSystem) []guestagent.FileSystem {
	var out []guestagent.FileSystem
	for _, f := range in {
		g := guestagent.FileSystem{Name: f.Name, Mountpoint: f.Mountpoint, Type: f.Type}
		for _, d := range f.Disks {
			g.Disks = append(g.Disks, guestagent.Disk{
				PCIController: guestagent.PCIAddress{Domain: d.PCIController.Domain, Bus: d.PCIController.Bus, Slot: d.PCIController.Slot, Function: d.PCIController.Function},
				BusType:       d.BusType, Serial: d.Serial, Dev: d.Dev,
			})
		}
		out = append(out, g)
	}
	return out
}

func fastOpts() QuiesceOptions {
	return QuiesceOptions{
		Desire: Application, Require: Crash, FreezeEnabled: true,
		Deadline: 400 * time.Millisecond, AgentTimeout: 300 * time.Millisecond,
		ThawTimeout: 400 * time.Millisecond, WatchFor: 10 * time.Second, Logger: quietLog,
	}
}

// bound fails the test if fn takes longer than limit: a correctness bound
// on the quiesce step, far above what it needs.
func bound(t *testing.T, limit time.Duration, fn func()) {
	t.Helper()
	start := time.Now()
	fn()
	if took := time.Since(start); took > limit {
		t.Fatalf("took %v, bound %v", took, limit)
	}
}

func TestQuiesceFreezesExactlyThePlanDuringCapture(t *testing.T) {
	a, c, redial := fakeGuest(t, nil)
	plan := data1Plan()
	if want := []string{"/mnt/data1"}; !reflect.DeepEqual(plan.Mountpoints, want) {
		t.Fatalf("plan %v, want %v", plan.Mountpoints, want)
	}
	opts := fastOpts()
	opts.Redial = redial
	var during []string
	res, err := Quiesce(context.Background(), c, plan, opts, func(context.Context) error {
		during = a.FrozenMounts()
		return nil
	})
	if err != nil {
		t.Fatalf("quiesce: %v", err)
	}
	if !reflect.DeepEqual(during, []string{"/mnt/data1"}) {
		t.Fatalf("frozen during capture: %v, want only /mnt/data1", during)
	}
	if a.Frozen() {
		t.Fatalf("guest left frozen")
	}
	if res.Achieved != Application || res.StepDown != "" || res.Window <= 0 {
		t.Fatalf("result %+v", res)
	}
}

func TestQuiesceAgentHangsOnFreeze(t *testing.T) {
	release := make(chan struct{})
	a, c, redial := fakeGuest(t, agenttest.On("guest-fsfreeze-freeze-list", agenttest.Action{Wait: release}))
	opts := fastOpts()
	opts.Redial = redial
	var captured atomic.Bool
	var err error
	bound(t, 3*time.Second, func() {
		_, err = Quiesce(context.Background(), c, data1Plan(), opts, func(context.Context) error {
			captured.Store(true)
			return nil
		})
	})
	if !errors.Is(err, ErrThaw) {
		t.Fatalf("hung freeze: %v, want ErrThaw (thaw cannot be confirmed while the agent hangs)", err)
	}
	if captured.Load() {
		t.Fatalf("captured although the guest's state was unknown")
	}
	// The freeze completes late; the watchdog (or the queued thaw) must
	// leave the guest thawed.
	close(release)
	deadline := time.Now().Add(8 * time.Second)
	for time.Now().Before(deadline) && (a.Frozen() || a.Count("guest-fsfreeze-status") < 2) {
		time.Sleep(50 * time.Millisecond)
	}
	if a.Frozen() {
		t.Fatalf("a freeze that completed late left the guest frozen")
	}
}

func TestQuiesceDropMidFreezeReply(t *testing.T) {
	a, c, redial := fakeGuest(t, agenttest.Once("guest-fsfreeze-freeze-list", agenttest.Action{Drop: true}))
	opts := fastOpts()
	opts.Redial = redial
	var frozenAtCapture bool
	var res QuiesceResult
	var err error
	bound(t, 3*time.Second, func() {
		res, err = Quiesce(context.Background(), c, data1Plan(), opts, func(context.Context) error {
			frozenAtCapture = a.Frozen()
			return nil
		})
	})
	if err != nil {
		t.Fatalf("quiesce: %v", err)
	}
	if a.Frozen() || frozenAtCapture {
		t.Fatalf("guest frozen after the dropped reply (at capture %v, after %v)", frozenAtCapture, a.Frozen())
	}
	if res.Achieved != Crash || !strings.Contains(res.StepDown, "freeze failed") {
		t.Fatalf("result %+v, want crash with a freeze failure recorded", res)
	}
}

func TestQuiesceGarbageFreezeReply(t *testing.T) {
	a, c, _ := fakeGuest(t, agenttest.Once("guest-fsfreeze-freeze-list", agenttest.Action{Reply: []byte("%%%garbage\n")}))
	var res QuiesceResult
	var err error
	bound(t, 3*time.Second, func() {
		res, err = Quiesce(context.Background(), c, data1Plan(), fastOpts(), func(context.Context) error { return nil })
	})
	if err != nil {
		t.Fatalf("quiesce: %v", err)
	}
	if a.Frozen() {
		t.Fatalf("guest left frozen after a garbage reply")
	}
	if res.Achieved != Crash || !strings.Contains(res.StepDown, "protocol") {
		t.Fatalf("result %+v", res)
	}
	// Required application consistency fails instead, thawed.
	a.SetFault(agenttest.Once("guest-fsfreeze-freeze-list", agenttest.Action{Reply: []byte("%%%garbage\n")}))
	opts := fastOpts()
	opts.Require = Application
	if _, err := Quiesce(context.Background(), c, data1Plan(), opts, func(context.Context) error { return nil }); !errors.Is(err, ErrConsistency) {
		t.Fatalf("require=application with a garbage freeze reply: %v", err)
	}
	if a.Frozen() {
		t.Fatalf("guest left frozen")
	}
}

func TestQuiesceStaleSyncID(t *testing.T) {
	a, c, _ := fakeGuest(t, agenttest.Once("guest-sync-delimited", agenttest.Action{Before: agenttest.StaleSync(12345)}))
	res, err := Quiesce(context.Background(), c, data1Plan(), fastOpts(), func(context.Context) error { return nil })
	if err != nil || res.Achieved != Application {
		t.Fatalf("stale sync id: %+v, %v", res, err)
	}
	if a.Frozen() {
		t.Fatalf("guest left frozen")
	}
}

func TestQuiesceAgentStopped(t *testing.T) {
	a, c, _ := fakeGuest(t, nil)
	if err := a.Close(); err != nil {
		t.Fatalf("close fake: %v", err)
	}
	opts := fastOpts()
	opts.Require = Application
	called := false
	_, err := Quiesce(context.Background(), c, data1Plan(), opts, func(context.Context) error { called = true; return nil })
	if !errors.Is(err, ErrConsistency) || !strings.Contains(err.Error(), "not responding") || called {
		t.Fatalf("require=application, agent stopped: %v (captured %v)", err, called)
	}
	opts.Require = Crash
	res, err := Quiesce(context.Background(), c, data1Plan(), opts, func(context.Context) error { called = true; return nil })
	if err != nil || !called || res.Achieved != Crash || !strings.Contains(res.StepDown, "not responding") {
		t.Fatalf("desire=application require=crash, agent stopped: %+v, %v (captured %v)", res, err, called)
	}
}

func TestQuiesceCaptureFailsOrOverruns(t *testing.T) {
	a, c, _ := fakeGuest(t, nil)
	boom := errors.New("boom")
	if _, err := Quiesce(context.Background(), c, data1Plan(), fastOpts(), func(context.Context) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("capture failure not reported: %v", err)
	}
	if a.Frozen() {
		t.Fatalf("guest left frozen after a failed capture")
	}
	bound(t, 3*time.Second, func() {
		_, err := Quiesce(context.Background(), c, data1Plan(), fastOpts(), func(ctx context.Context) error {
			<-ctx.Done() // a capture that does not finish within the deadline
			return ctx.Err()
		})
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("overrun: %v", err)
		}
	})
	if a.Frozen() {
		t.Fatalf("guest left frozen after the deadline")
	}
}

func TestQuiesceSteppingDown(t *testing.T) {
	a, c, _ := fakeGuest(t, nil)
	opts := fastOpts()
	opts.FreezeEnabled = false
	res, err := Quiesce(context.Background(), c, data1Plan(), opts, func(context.Context) error { return nil })
	if err != nil || res.Achieved != Crash || !strings.Contains(res.StepDown, "turned off") {
		t.Fatalf("freeze disabled: %+v, %v", res, err)
	}
	opts = fastOpts()
	res, err = Quiesce(context.Background(), nil, data1Plan(), opts, func(context.Context) error { return nil })
	if err != nil || res.Achieved != Crash || !strings.Contains(res.StepDown, "no guest agent") {
		t.Fatalf("no agent: %+v, %v", res, err)
	}
	res, err = Quiesce(context.Background(), c, FreezePlan{Unmapped: []string{"raw"}}, opts, func(context.Context) error { return nil })
	if err != nil || res.Achieved != Crash || !strings.Contains(res.StepDown, "raw") {
		t.Fatalf("no file system: %+v, %v", res, err)
	}
	a.SetFrozen("/mnt/data2")
	res, err = Quiesce(context.Background(), c, data1Plan(), opts, func(context.Context) error { return nil })
	if err != nil || res.Achieved != Crash || !strings.Contains(res.StepDown, "already frozen") {
		t.Fatalf("frozen by someone else: %+v, %v", res, err)
	}
	opts.Desire, opts.Require = Crash, Application
	if _, err := Quiesce(context.Background(), c, data1Plan(), opts, func(context.Context) error { return nil }); err == nil {
		t.Fatalf("require above desire accepted")
	}
}

func TestThawIfFrozen(t *testing.T) {
	a, c, _ := fakeGuest(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if thawed, err := ThawIfFrozen(ctx, c); err != nil || thawed {
		t.Fatalf("thawed guest: %v, %v", thawed, err)
	}
	a.SetFrozen("/mnt/data1")
	if thawed, err := ThawIfFrozen(ctx, c); err != nil || !thawed || a.Frozen() {
		t.Fatalf("frozen guest: thawed %v, %v, still frozen %v", thawed, err, a.Frozen())
	}
}
