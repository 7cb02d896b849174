//go:build linux

package main

import (
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestBuckets(t *testing.T) {
	prev := 0
	for us := uint64(0); us < 1<<22; us += 1 + us/200 {
		b := bucketOf(us)
		if b < prev {
			t.Fatalf("bucketOf(%d) = %d < bucketOf of a smaller gap (%d)", us, b, prev)
		}
		prev = b
		up := bucketUpper(b)
		if up < us {
			t.Fatalf("bucketUpper(bucketOf(%d)) = %d, below the gap", us, up)
		}
		if us >= subCount && float64(up-us) > float64(us)/subCount {
			t.Fatalf("bucket of %d µs reaches %d µs: wider than 1/%d", us, up, subCount)
		}
		if b > 0 && bucketUpper(b-1) >= us {
			t.Fatalf("gap %d µs also fits bucket %d (up to %d)", us, b-1, bucketUpper(b-1))
		}
	}
	if b := bucketOf(1 << 62); b != nBuckets-1 {
		t.Fatalf("bucketOf(huge) = %d, want the last bucket %d", b, nBuckets-1)
	}
}

func TestQuantile(t *testing.T) {
	var h histogram
	for i := 0; i < 990; i++ {
		h[bucketOf(1000)]++
	}
	for i := 0; i < 10; i++ {
		h[bucketOf(500000)]++
	}
	if q := h.quantile(0.99, 1000); q < 1000 || q > 1000+1000/subCount {
		t.Fatalf("p99 of 990 × 1 ms and 10 × 500 ms = %d µs, want about 1000", q)
	}
	h[bucketOf(500000)]++
	if q := h.quantile(0.99, 1001); q < 500000 {
		t.Fatalf("p99 of 990 × 1 ms and 11 × 500 ms = %d µs, want about 500000", q)
	}
	if q := h.quantile(0.99, 0); q != 0 {
		t.Fatalf("p99 of nothing = %d", q)
	}
}

var lineRE = regexp.MustCompile(`^(STALLMETER id=(\S+) seq=(\d+) kind=(\w+) window=(\d+) iterations=(\d+) max_gap_us=(\d+) p99_gap_us=(\d+) max_gap_end_ns=\d+ max_write_us=\d+ max_fsync_us=\d+ errors=(\d+) last_errno=-?\d+ window_start_ns=(\d+) window_end_ns=(\d+) total_iterations=\d+ total_max_gap_us=\d+) sum=([0-9a-f]{8})$`)

type line struct {
	kind                  string
	seq, window, iters    uint64
	maxGapUs, p99Us, errs uint64
	start, end            uint64
}

func parseLines(t *testing.T, text string) []line {
	t.Helper()
	var out []line
	for _, s := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		m := lineRE.FindStringSubmatch(s)
		if m == nil {
			t.Fatalf("malformed report line %q", s)
		}
		if got := strconv.FormatUint(uint64(fnv1a([]byte(m[1]))), 16); strings.Repeat("0", 8-len(got))+got != m[12] {
			t.Fatalf("line %q: sum %s, want %s", s, m[12], got)
		}
		u := func(i int) uint64 {
			v, err := strconv.ParseUint(m[i], 10, 64)
			if err != nil {
				t.Fatalf("line %q field %d: %v", s, i, err)
			}
			return v
		}
		out = append(out, line{kind: m[4], seq: u(3), window: u(5), iters: u(6), maxGapUs: u(7), p99Us: u(8), errs: u(9), start: u(10), end: u(11)})
	}
	return out
}

// TestLoop runs the measuring loop in process for half a second with two
// window marks and checks its reports, its file and that it allocates
// nothing per iteration.
func TestLoop(t *testing.T) {
	dir := t.TempDir()
	fd, err := syscall.Open(filepath.Join(dir, "stall.log"), syscall.O_WRONLY|syscall.O_CREAT|syscall.O_TRUNC, 0o644)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer func() { _ = syscall.Close(fd) }()
	consPath := filepath.Join(dir, "console")
	cons, err := syscall.Open(consPath, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_APPEND, 0o644)
	if err != nil {
		t.Fatalf("open console: %v", err)
	}
	defer func() { _ = syscall.Close(cons) }()

	m := newMeter(fd, time.Millisecond, 16, 50*time.Millisecond)
	rep := newReporter("t1", cons)
	done := make(chan struct{})
	go func() { rep.run(m.out); close(done) }()
	go func() {
		time.Sleep(150 * time.Millisecond)
		m.mark.Store(true)
		time.Sleep(150 * time.Millisecond)
		m.mark.Store(true)
	}()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	m.deadline = monoNow() + int64(500*time.Millisecond)
	m.run()
	runtime.ReadMemStats(&after)
	close(m.out)
	<-done

	st, err := os.Stat(filepath.Join(dir, "stall.log"))
	if err != nil || st.Size() != 16*recordSize {
		t.Fatalf("record file: %v, size %d; want %d bytes (16 wrapped records)", err, st.Size(), 16*recordSize)
	}
	text, err := os.ReadFile(consPath)
	if err != nil {
		t.Fatalf("console: %v", err)
	}
	lines := parseLines(t, string(text))
	if lines[0].kind != "start" || lines[len(lines)-1].kind != "final" || lines[len(lines)-2] != lines[len(lines)-1] {
		t.Fatalf("want a start line first and a final line twice last:\n%s", text)
	}
	var windows []line
	var total uint64
	for _, l := range lines {
		if l.kind == "window" && (len(windows) == 0 || windows[len(windows)-1] != l) {
			windows = append(windows, l)
		}
		if l.errs != 0 {
			t.Fatalf("write errors reported: %+v", l)
		}
	}
	if len(windows) != 2 || windows[0].window != 0 || windows[1].window != 1 || windows[1].start != windows[0].end {
		t.Fatalf("want windows 0 and 1, back to back; got %+v\n%s", windows, text)
	}
	final := lines[len(lines)-1]
	if final.window != 2 || final.start != windows[1].end {
		t.Fatalf("final line is not window 2 following window 1: %+v", final)
	}
	for _, l := range append(windows, final) {
		total += l.iters
		if l.iters > 0 && (l.maxGapUs == 0 || l.p99Us > l.maxGapUs) {
			t.Fatalf("window %d: max gap %d µs, p99 %d µs", l.window, l.maxGapUs, l.p99Us)
		}
	}
	if total < 50 {
		t.Fatalf("only %d iterations in 500 ms at 1 ms", total)
	}
	if n := after.Mallocs - before.Mallocs; n > 40 {
		t.Fatalf("%d allocations during %d iterations: the loop allocates", n, total)
	}
	t.Logf("%d iterations, %d allocations, %d lines", total, after.Mallocs-before.Mallocs, len(lines))
}
