package testenv_test

import (
	"context"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/guestagent"
	"github.com/twinsnap/twinsnap/internal/testenv"
)

// TestFreezeOneOfTwoVolumes boots a guest with two data volumes, freezes
// only the mount point of the first through the real agent, and shows from
// inside the guest that writes to the first stopped for the whole freeze
// while writes to the second went on.
func TestFreezeOneOfTwoVolumes(t *testing.T) {
	vm := testenv.StartVM(t, testenv.VMOptions{DataDisks: []testenv.DiskSpec{
		{Serial: "data1", SizeMiB: 64}, {Serial: "data2", SizeMiB: 64},
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ga, err := vm.Agent(ctx)
	if err != nil {
		t.Fatalf("agent: %v", err)
	}
	defer ga.Close()

	fsinfo, err := ga.FSInfo(ctx)
	if err != nil {
		t.Fatalf("guest-get-fsinfo: %v", err)
	}
	mounted := map[string]bool{}
	for _, fs := range fsinfo {
		mounted[fs.Mountpoint] = true
	}
	for _, mp := range []string{"/", "/mnt/data1", "/mnt/data2"} {
		if !mounted[mp] {
			t.Fatalf("guest-get-fsinfo lacks %s: %+v", mp, fsinfo)
		}
	}

	// One writer loop per volume appends the guest's uptime every 20 ms.
	// A write to a frozen file system blocks until the thaw.
	writers, err := testenv.StartGuestWriters(ctx, ga, "/mnt/data1", "/mnt/data2")
	if err != nil {
		t.Fatalf("%v", err)
	}
	time.Sleep(500 * time.Millisecond)
	before := guestUptime(ctx, t, ga)

	n, err := ga.FreezeList(ctx, []string{"/mnt/data1"})
	thawed := false
	defer func() {
		if !thawed {
			tctx, c := context.WithTimeout(context.Background(), 10*time.Second)
			defer c()
			_, _ = ga.Thaw(tctx)
		}
	}()
	if err != nil {
		t.Fatalf("freeze-list: %v", err)
	}
	if n != 1 {
		t.Fatalf("froze %d file systems, want 1", n)
	}
	st, err := ga.FreezeStatus(ctx)
	if err != nil || st != guestagent.Frozen {
		t.Fatalf("status while frozen = %q, %v; want frozen", st, err)
	}
	// guest-exec is refused while frozen: the agent blocks it.
	if _, err := ga.Exec(ctx, "/bin/true", nil, nil, false); err == nil {
		t.Fatalf("guest-exec succeeded while frozen; expected the agent to refuse it")
	}
	time.Sleep(1500 * time.Millisecond)
	if n, err := ga.Thaw(ctx); err != nil || n != 1 {
		t.Fatalf("thaw = %d, %v; want 1", n, err)
	}
	thawed = true
	after := guestUptime(ctx, t, ga)
	if st, err := ga.FreezeStatus(ctx); err != nil || st != guestagent.Thawed {
		t.Fatalf("status after thaw = %q, %v; want thawed", st, err)
	}
	time.Sleep(300 * time.Millisecond)
	if err := writers.Stop(ctx); err != nil {
		t.Fatalf("%v", err)
	}
	frozen, err := writers.Ticks(ctx, "/mnt/data1")
	if err != nil {
		t.Fatalf("%v", err)
	}
	live, err := writers.Ticks(ctx, "/mnt/data2")
	if err != nil {
		t.Fatalf("%v", err)
	}
	// The window the guest certainly spent frozen: from the uptime read
	// before the freeze call to the one after the thaw, shrunk by the
	// freeze and thaw calls' own share (generously 400 ms each end).
	lo, hi := before+0.4, after-0.4
	if hi-lo < 0.5 {
		t.Fatalf("freeze window too short to judge: %.3f..%.3f", before, after)
	}
	if c := testenv.CountBetween(frozen, lo, hi); c != 0 {
		t.Fatalf("data1 got %d writes inside its freeze window %.3f..%.3f: it was not frozen", c, lo, hi)
	}
	if c := testenv.CountBetween(live, lo, hi); c < 5 {
		t.Fatalf("data2 got only %d writes inside the window %.3f..%.3f: it was frozen too", c, lo, hi)
	}
	if testenv.CountBetween(frozen, after, after+60) == 0 {
		t.Fatalf("data1 got no writes after the thaw: writer never resumed")
	}
	t.Logf("window %.3f..%.3f s: data1 %d writes, data2 %d writes", lo, hi, testenv.CountBetween(frozen, lo, hi), testenv.CountBetween(live, lo, hi))
}

func guestUptime(ctx context.Context, t *testing.T, ga *guestagent.Client) float64 {
	t.Helper()
	up, err := testenv.GuestUptime(ctx, ga)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return up
}
