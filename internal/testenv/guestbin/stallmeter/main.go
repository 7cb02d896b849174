//go:build linux

// Command stallmeter runs in the twinsnap test guest and measures the
// longest write stall that the guest itself sees on one file system.
//
// Usage:
//
//	stallmeter -file /mnt/data1/stall.log [-interval 1ms] [-duration 30s]
//	           [-id ID] [-console /dev/console] [-report 1s]
//	           [-records 1024] [-stop /run/stallmeter.stop]
//
// About every interval it writes one fixed-size record (its sequence number
// and the CLOCK_MONOTONIC time) with pwrite(2), at an offset that wraps
// after -records records so that the file stays small, and fsyncs the
// file. It then sleeps until the next interval tick (clock_nanosleep on
// CLOCK_MONOTONIC; ticks it fell behind on are skipped, not made up). A gap
// is the CLOCK_MONOTONIC time between the completions of two consecutive
// iterations, so a write or an fsync blocked by a frozen file system shows
// as one long gap. Nothing allocates in the loop, and the garbage collector
// is off (with a memory limit as a safety net).
//
// Gaps are counted in windows. Window 0 begins when the first record is
// durable. SIGUSR1 closes the current window at the completion of the next
// iteration (so a gap in progress when the signal arrives belongs to the
// window it closes) and opens the next one at the same instant. SIGTERM,
// SIGINT, the end of -duration or the appearance of the -stop file (polled
// every 100 ms; keep it on a tmpfs such as /run) end the program.
//
// Reports go to -console, the serial console the host logs, never to the
// measured file system. Each is one line:
//
//	STALLMETER id=ID seq=N kind=KIND window=W iterations=N max_gap_us=N
//	  p99_gap_us=N max_gap_end_ns=N max_write_us=N max_fsync_us=N errors=N
//	  last_errno=N window_start_ns=N window_end_ns=N total_iterations=N
//	  total_max_gap_us=N sum=XXXXXXXX
//
// (on one line). KIND is start (the first record is durable; window 0
// begins), progress (every -report, the current window so far), window
// (window W closed; window W+1 began at window_end_ns) or final (the
// program ends; the last window). seq numbers the lines; a window line is
// printed again before the next progress line and a final line twice, so
// that a reader can drop a line that a kernel message broke up. Times are
// the guest's CLOCK_MONOTONIC. p99_gap_us is the upper bound of the
// histogram bucket holding the 99th percentile (buckets are 1/32 of a
// power of two wide). sum is the FNV-1a hash, in hex, of the line from
// "STALLMETER" up to the space before "sum=".
//
// Exit status: 0 after a final report, 1 when the file or the console
// cannot be opened, 2 for bad flags.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"regexp"
	"runtime"
	"runtime/debug"
	"syscall"
	"time"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

// idRE restricts ids to characters that keep a report line parseable.
var idRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,32}$`)

// run parses the flags, runs the meter and returns the exit status.
func run(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("stallmeter", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("file", "", "record file on the measured file system (required)")
	interval := fs.Duration("interval", time.Millisecond, "time between the starts of two iterations")
	duration := fs.Duration("duration", 0, "stop after this long (0: until a signal or the stop file)")
	id := fs.String("id", "", "id carried by every report line (default: the process id)")
	console := fs.String("console", "/dev/console", "where reports go: the serial console, never the measured file system")
	report := fs.Duration("report", time.Second, "period of progress reports (0: none)")
	records := fs.Int("records", 1024, "records in the file before the offset wraps")
	stopFile := fs.String("stop", "", "stop when this file appears (keep it on a tmpfs)")
	complain := func(format string, args ...any) {
		_, _ = fmt.Fprintf(stderr, "stallmeter: "+format+"\n", args...)
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *id == "" {
		*id = fmt.Sprint(os.Getpid())
	}
	switch {
	case fs.NArg() > 0:
		complain("unexpected arguments %q", fs.Args())
		return 2
	case *file == "":
		complain("-file is required")
		return 2
	case *interval <= 0 || *duration < 0 || *report < 0 || *records < 1:
		complain("-interval must be positive, -duration and -report not negative, -records at least 1")
		return 2
	case !idRE.MatchString(*id):
		complain("-id %q: want 1 to 32 of A-Z a-z 0-9 _ . -", *id)
		return 2
	}

	cons, err := syscall.Open(*console, syscall.O_WRONLY|syscall.O_NOCTTY|syscall.O_CLOEXEC|syscall.O_CREAT|syscall.O_APPEND, 0o644)
	if err != nil {
		complain("console %s: %v", *console, err)
		return 1
	}
	defer func() { _ = syscall.Close(cons) }()
	fd, err := syscall.Open(*file, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_TRUNC|syscall.O_CLOEXEC, 0o644)
	if err != nil {
		complain("%s: %v", *file, err)
		return 1
	}

	// Nothing in the loop allocates; without collections no GC work can
	// land in a measured gap. The limit bounds the heap all the same.
	debug.SetGCPercent(-1)
	debug.SetMemoryLimit(64 << 20)

	m := newMeter(fd, *interval, *records, *report)
	if *duration > 0 {
		m.deadline = monoNow() + int64(*duration)
	}
	rep := newReporter(*id, cons)
	done := make(chan struct{})
	go func() {
		rep.run(m.out)
		close(done)
	}()
	quit := make(chan struct{})
	defer close(quit)
	go m.control(*stopFile, quit)

	// The loop keeps its thread: it sleeps in clock_nanosleep and is
	// never moved between threads by the scheduler.
	runtime.LockOSThread()
	m.run()
	runtime.UnlockOSThread()
	close(m.out)
	<-done
	if err := syscall.Close(fd); err != nil {
		complain("closing %s: %v", *file, err)
	}
	return 0
}

// control turns signals and the stop file into requests to the loop until
// quit is closed.
func (m *meter) control(stopFile string, quit <-chan struct{}) {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	var poll <-chan time.Time
	if stopFile != "" {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		poll = t.C
	}
	for {
		select {
		case <-quit:
			return
		case s := <-sigs:
			if s == syscall.SIGUSR1 {
				m.mark.Store(true)
			} else {
				m.stop.Store(true)
			}
		case <-poll:
			if syscall.Access(stopFile, 0) == nil {
				m.stop.Store(true)
			}
		}
	}
}
