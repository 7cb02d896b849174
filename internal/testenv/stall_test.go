package testenv_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/internal/testenv"
)

// TestStallMeterOnHost builds the stall meter as the image builder does,
// runs it on the host with a file as its console, and parses what it
// reports with the host's parser: a start, a window per SIGUSR1, a final
// report after SIGTERM.
func TestStallMeterOnHost(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	bin := filepath.Join(dir, "stallmeter")
	testenv.Need(t, "stall meter build", testenv.BuildStallMeter(ctx, bin))
	console := filepath.Join(dir, "console")
	id := testenv.Marker + "-host"
	cmd := exec.Command(bin, "-id", id, "-file", filepath.Join(dir, "stall.log"), "-console", console,
		"-interval", "1ms", "-report", "100ms", "-duration", "60s")
	errf, err := os.Create(filepath.Join(dir, "stderr"))
	if err != nil {
		t.Fatalf("stderr file: %v", err)
	}
	defer errf.Close()
	cmd.Stderr = errf
	stderr := func() string { b, _ := os.ReadFile(errf.Name()); return string(b) }
	p, err := testenv.StartProcess("stallmeter", cmd)
	if err != nil {
		t.Fatalf("starting the meter: %v", err)
	}
	defer p.Kill()

	var seen []testenv.StallReport
	await := func(kind testenv.StallKind, window uint64) testenv.StallReport {
		t.Helper()
		for {
			exited, _ := p.Exited() // before reading: its last lines are then in the file
			b, _ := os.ReadFile(console)
			for _, line := range strings.SplitAfter(string(b), "\n") {
				if !strings.HasSuffix(line, "\n") {
					break
				}
				r, ok := testenv.ParseStallLine(line)
				if !ok {
					t.Fatalf("unparsable report line %q", line)
				}
				if r.ID != id {
					t.Fatalf("report of meter %q, want %q", r.ID, id)
				}
				if r.Kind == kind && r.Window == window {
					seen = append(seen, r)
					return r
				}
			}
			if exited {
				t.Fatalf("meter exited before its %s report for window %d\nconsole:\n%s\nstderr: %s", kind, window, b, stderr())
			}
			select {
			case <-ctx.Done():
				t.Fatalf("no %s report for window %d: %v\nconsole:\n%s\nstderr: %s", kind, window, ctx.Err(), b, stderr())
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	await(testenv.StallStart, 0)
	time.Sleep(300 * time.Millisecond)
	if err := p.Signal(syscall.SIGUSR1); err != nil {
		t.Fatalf("SIGUSR1: %v", err)
	}
	w0 := await(testenv.StallWindow, 0)
	time.Sleep(300 * time.Millisecond)
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	final := await(testenv.StallFinal, 1)
	select {
	case <-p.Done():
	case <-ctx.Done():
		t.Fatalf("meter did not exit after SIGTERM")
	}
	if exited, err := p.Exited(); !exited || err != nil {
		t.Fatalf("meter exit: %v", err)
	}
	for _, r := range []testenv.StallReport{w0, final} {
		if r.Iterations < 50 || r.MaxGap <= 0 || r.P99Gap > r.MaxGap || r.Errors != 0 || r.Span() < 200*time.Millisecond {
			t.Fatalf("implausible report: %s", r.String())
		}
	}
	if final.Start != w0.End || final.TotalIterations != w0.Iterations+final.Iterations {
		t.Fatalf("windows do not tile: %+v then %+v", w0, final)
	}
	t.Logf("host: %s; %s", w0.String(), final.String())
}

// TestStallLineParse feeds the parser a report line that a kernel message
// ran into or broke up, or that was altered.
func TestStallLineParse(t *testing.T) {
	const good = "STALLMETER id=ab12 seq=3 kind=window window=0 iterations=492 max_gap_us=2958 p99_gap_us=2175 max_gap_end_ns=2986606630584 max_write_us=54 max_fsync_us=2289 errors=0 last_errno=0 window_start_ns=2986413847214 window_end_ns=2986913479815 total_iterations=492 total_max_gap_us=2958 sum=595950b7"
	// The sum above was made for id=host1; recompute it for this line.
	fixed := withSum(t, good)
	r, ok := testenv.ParseStallLine(fixed + "\r\n")
	if !ok {
		t.Fatalf("a good line was rejected: %q", fixed)
	}
	if r.ID != "ab12" || r.Kind != testenv.StallWindow || r.Iterations != 492 || r.MaxGap != 2958*time.Microsecond ||
		r.P99Gap != 2175*time.Microsecond || r.Start != 2986413847214 || r.End != 2986913479815 || r.LastErrno != 0 {
		t.Fatalf("parsed %+v", r)
	}
	if _, ok := testenv.ParseStallLine("[   12.345678] ext4: something STALLMETER id=x " + fixed); !ok {
		t.Fatalf("a good line after a kernel message's text was rejected")
	}
	broken := strings.Replace(fixed, "max_gap_us=29", "max_gap_us=2[   12.3] virtio_blk: x\n9", 1)
	for _, bad := range append(strings.Split(broken, "\n"),
		good, // wrong sum
		strings.Replace(fixed, "max_gap_us=2958", "max_gap_us=9958", 1),
		strings.Replace(fixed, "max_gap_us=29", "max_gap_us=2[   12.3] virtio_blk: x 9", 1),
		withSum(t, strings.Replace(fixed, "kind=window", "kind=other", 1)),
		withSum(t, strings.Replace(fixed, "iterations=492", "iterations=-1", 1)),
		withSum(t, strings.Replace(fixed, " errors=0", "", 1)),
		fixed[:len(fixed)-20],
		"STALLMETER",
		"",
	) {
		if r, ok := testenv.ParseStallLine(bad); ok {
			t.Fatalf("accepted %q as %+v", bad, r)
		}
	}
}

// withSum returns line with its sum recomputed, as the meter makes it.
func withSum(t *testing.T, line string) string {
	t.Helper()
	body, _, ok := strings.Cut(line, " sum=")
	if !ok {
		t.Fatalf("no sum in %q", line)
	}
	h := uint32(2166136261)
	for i := 0; i < len(body); i++ {
		h ^= uint32(body[i])
		h *= 16777619
	}
	const hex = "0123456789abcdef"
	sum := make([]byte, 8)
	for i := range sum {
		sum[i] = hex[(h>>(28-4*i))&0xf]
	}
	return body + " sum=" + string(sum)
}

// TestStallMeterInGuest runs the stall meter in a TCG guest on a data
// volume and shows that it measures what it claims: it writes at about the
// asked rate, a window in which the host freezes the volume's file system
// through the agent for 500 ms shows a stall of at least 400 ms, and a
// window without a freeze shows a much shorter one.
func TestStallMeterInGuest(t *testing.T) {
	vm := testenv.StartVM(t, testenv.VMOptions{DataDisks: []testenv.DiskSpec{{Serial: "data1", SizeMiB: 64}}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ga, err := vm.Agent(ctx)
	if err != nil {
		t.Fatalf("agent: %v", err)
	}
	defer ga.Close()

	cur, avail, err := testenv.GuestClocksource(ctx, ga)
	if err != nil {
		t.Fatalf("clocksource: %v", err)
	}
	t.Logf("guest clocksource: %s (available: %s)", cur, strings.Join(avail, " "))
	if cur == "" || cur == "jiffies" {
		t.Fatalf("guest clocksource %q: the guest keeps time in jiffies (is ACPI off?)", cur)
	}

	sm, err := testenv.StartStallMeter(ctx, vm, "data1", testenv.StallMeterOptions{Agent: ga})
	if err != nil {
		t.Fatalf("starting the stall meter: %v", err)
	}
	stopped := false
	defer func() {
		if !stopped {
			sctx, c := context.WithTimeout(context.Background(), 30*time.Second)
			defer c()
			_, _ = ga.Thaw(sctx)
			_, _ = sm.Stop(sctx)
		}
	}()

	sleep := func(d time.Duration) func() error {
		return func() error { time.Sleep(d); return nil }
	}
	rate, err := sm.Window(ctx, sleep(2*time.Second))
	if err != nil {
		t.Fatalf("2 s window: %v", err)
	}
	t.Logf("2 s window: %s", rate.String())
	if rate.Errors != 0 {
		t.Fatalf("%d write errors (last errno %d)", rate.Errors, rate.LastErrno)
	}
	if rate.Iterations <= 100 {
		t.Fatalf("only %d iterations in a %v window at a 1 ms interval (want more than 100)", rate.Iterations, rate.Span())
	}

	freeze := func() error {
		n, err := ga.FreezeList(ctx, []string{"/mnt/data1"})
		if err != nil {
			return err
		}
		time.Sleep(500 * time.Millisecond)
		if _, err := ga.Thaw(ctx); err != nil {
			return err
		}
		if n != 1 {
			t.Errorf("froze %d file systems, want 1", n)
		}
		return nil
	}
	var quiet, frozen []time.Duration
	for round := 0; round < 3; round++ {
		q, err := sm.Window(ctx, sleep(500*time.Millisecond))
		if err != nil {
			t.Fatalf("round %d, quiet window: %v", round, err)
		}
		f, err := sm.Window(ctx, freeze)
		if err != nil {
			t.Fatalf("round %d, freeze window: %v", round, err)
		}
		t.Logf("round %d: quiet %s", round, q.String())
		t.Logf("round %d: 500 ms freeze %s", round, f.String())
		for _, r := range []*testenv.StallReport{q, f} {
			if r.Errors != 0 {
				t.Fatalf("round %d: %d write errors in window %d (last errno %d)", round, r.Errors, r.Window, r.LastErrno)
			}
		}
		if f.MaxGap < 400*time.Millisecond {
			t.Fatalf("round %d: a 500 ms freeze of the measured volume shows a longest gap of only %v", round, f.MaxGap)
		}
		if f.MaxGapAt <= f.Start || f.MaxGapAt > f.End {
			t.Fatalf("round %d: the longest gap ended at %v, outside its window %v..%v", round, f.MaxGapAt, f.Start, f.End)
		}
		quiet, frozen = append(quiet, q.MaxGap), append(frozen, f.MaxGap)
	}
	slices.Sort(quiet)
	slices.Sort(frozen)
	mq, mf := quiet[len(quiet)/2], frozen[len(frozen)/2]
	t.Logf("median longest gap: quiet %v, frozen %v", mq, mf)
	// Absolute when the machine is calm, relative when it is busy.
	if mq >= 300*time.Millisecond && mf <= 2*mq {
		t.Fatalf("windows without a freeze stall as long as frozen ones: quiet %v, frozen %v", quiet, frozen)
	}

	final, err := sm.Stop(ctx)
	stopped = true
	if err != nil {
		t.Fatalf("stopping the meter: %v", err)
	}
	t.Logf("final: %s; %d iterations in all, longest gap %v", final.String(), final.TotalIterations, final.TotalMaxGap)
	if final.Errors != 0 || final.TotalMaxGap < mf {
		t.Fatalf("final report: %d errors (last errno %d), longest gap %v", final.Errors, final.LastErrno, final.TotalMaxGap)
	}
}
