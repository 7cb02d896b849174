package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/twinsnap/twinsnap/guestagent"
)

// StallMeterPath is where the test guest holds the stall meter.
const StallMeterPath = "/usr/bin/stallmeter"

// ErrStallMeter reports that the guest's stall meter failed, exited early
// or reported nothing in time.
var ErrStallMeter = errors.New("testenv: stall meter")

// StallKind says what a stall meter report is.
type StallKind string

// The kinds of stall meter reports.
const (
	// StallStart: the first record is durable; window 0 begins.
	StallStart StallKind = "start"
	// StallProgress: the current window so far, printed periodically.
	StallProgress StallKind = "progress"
	// StallWindow: the window closed at a mark; the next one begins at
	// its end.
	StallWindow StallKind = "window"
	// StallFinal: the meter ended; the last window.
	StallFinal StallKind = "final"
)

// StallReport is one report of the guest's stall meter, parsed from the
// serial console. Times named ...At, Start and End are the guest's
// CLOCK_MONOTONIC since boot.
type StallReport struct {
	// ID is the meter's id; Seq numbers its report lines.
	ID  string
	Seq uint64
	// Kind says what the report covers; Window is the window's number.
	Kind   StallKind
	Window uint64
	// Iterations is the number of records written and fsynced in the
	// window (each ends one gap).
	Iterations uint64
	// MaxGap is the longest time between two completed iterations in the
	// window: the longest write stall the guest saw.
	MaxGap time.Duration
	// P99Gap is the 99th percentile gap, rounded up to its histogram
	// bucket (1/32 of a power of two; never above MaxGap).
	P99Gap time.Duration
	// MaxGapAt is when the longest gap ended.
	MaxGapAt time.Duration
	// MaxWrite and MaxFsync are the longest single pwrite(2) and fsync(2)
	// calls in the window.
	MaxWrite, MaxFsync time.Duration
	// Errors counts failed or short writes and failed fsyncs; LastErrno
	// is the errno of the last failure (-1 when it had none).
	Errors    uint64
	LastErrno int
	// Start and End bound the window.
	Start, End time.Duration
	// TotalIterations and TotalMaxGap cover the meter's whole run.
	TotalIterations uint64
	TotalMaxGap     time.Duration
}

// Span returns the length of the report's window.
func (r *StallReport) Span() time.Duration { return r.End - r.Start }

// Rate returns the iterations per second in the report's window.
func (r *StallReport) Rate() float64 {
	if r.Span() <= 0 {
		return 0
	}
	return float64(r.Iterations) / r.Span().Seconds()
}

// String summarises the report for logs.
func (r *StallReport) String() string {
	return fmt.Sprintf("%s window %d: %d iterations in %v (%.0f/s), max gap %v, p99 gap %v, max write %v, max fsync %v, %d errors",
		r.Kind, r.Window, r.Iterations, r.Span().Round(time.Millisecond), r.Rate(),
		r.MaxGap, r.P99Gap, r.MaxWrite, r.MaxFsync, r.Errors)
}

// ParseStallLine parses one serial-console line that carries a stall meter
// report. Text before the report (a kernel message the line ran into) is
// skipped; a line whose checksum does not match (broken up by another
// writer) or that lacks a field is rejected.
func ParseStallLine(line string) (StallReport, bool) {
	line = strings.TrimRight(line, "\r\n\x00 ")
	i := strings.LastIndex(line, "STALLMETER ")
	if i < 0 {
		return StallReport{}, false
	}
	body, sum, ok := strings.Cut(line[i:], " sum=")
	if !ok || len(sum) != 8 {
		return StallReport{}, false
	}
	h := fnv.New32a()
	_, _ = io.WriteString(h, body)
	if want, err := strconv.ParseUint(sum, 16, 32); err != nil || uint32(want) != h.Sum32() {
		return StallReport{}, false
	}
	f := map[string]string{}
	for _, kv := range strings.Fields(body)[1:] {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return StallReport{}, false
		}
		f[k] = v
	}
	var r StallReport
	bad := false
	u := func(k string) uint64 {
		v, err := strconv.ParseUint(f[k], 10, 64)
		bad = bad || err != nil
		return v
	}
	us := func(k string) time.Duration { return time.Duration(u(k)) * time.Microsecond }
	ns := func(k string) time.Duration { return time.Duration(u(k)) }
	r.ID, r.Kind = f["id"], StallKind(f["kind"])
	r.Seq, r.Window, r.Iterations = u("seq"), u("window"), u("iterations")
	r.MaxGap, r.P99Gap, r.MaxGapAt = us("max_gap_us"), us("p99_gap_us"), ns("max_gap_end_ns")
	r.MaxWrite, r.MaxFsync = us("max_write_us"), us("max_fsync_us")
	r.Errors = u("errors")
	errno, err := strconv.Atoi(f["last_errno"])
	r.LastErrno = errno
	r.Start, r.End = ns("window_start_ns"), ns("window_end_ns")
	r.TotalIterations, r.TotalMaxGap = u("total_iterations"), us("total_max_gap_us")
	switch {
	case bad, err != nil, r.ID == "":
		return StallReport{}, false
	case r.Kind != StallStart && r.Kind != StallProgress && r.Kind != StallWindow && r.Kind != StallFinal:
		return StallReport{}, false
	}
	return r, true
}

// StallMeterOptions configure StartStallMeter. The zero value writes every
// millisecond until Stop.
type StallMeterOptions struct {
	// Interval is the time between the starts of two iterations; default
	// 1 ms.
	Interval time.Duration
	// Duration ends the meter by itself; zero runs it until Stop.
	Duration time.Duration
	// Report is the period of progress reports; default 1 s, negative for
	// none (window reports are then never repeated).
	Report time.Duration
	// Agent is the agent connection to use. When nil, the meter connects
	// for each call and disconnects after it; QEMU serves one connection
	// at a time, so no other may be open during a call.
	Agent *guestagent.Client
}

// StallMeter is the guest's stall meter, running on one data volume. Its
// methods start guest programs through the agent, which refuses them while
// a file system is frozen: call them only while the guest is thawed. A
// StallMeter is not safe for concurrent use.
type StallMeter struct {
	// ID is the meter's id in its report lines.
	ID string
	// PID is the meter's process id in the guest.
	PID int
	// File is the record file on the measured volume.
	File string

	vm     *VM
	agent  *guestagent.Client
	offset int64                  // serial log read up to here
	window uint64                 // the window open now
	final  *StallReport           // the final report, once seen
	exit   *guestagent.ExecStatus // the exit status, once seen (the agent reports it once)
}

// StartStallMeter starts the stall meter through the guest agent on the
// data volume with the given serial (its file is
// /mnt/<serial>/stallmeter-<id>.log) and returns when the meter reports its
// first durable record; window 0 is then open.
func StartStallMeter(ctx context.Context, vm *VM, volumeSerial string, opts StallMeterOptions) (*StallMeter, error) {
	d, ok := vm.Disk(volumeSerial)
	if !ok || d.Boot {
		return nil, fmt.Errorf("%w: VM %s has no data volume %q", ErrStallMeter, vm.Name, volumeSerial)
	}
	if opts.Interval == 0 {
		opts.Interval = time.Millisecond
	}
	if opts.Report == 0 {
		opts.Report = time.Second
	}
	if opts.Report < 0 {
		opts.Report = 0
	}
	var idb [4]byte
	_, _ = rand.Read(idb[:])
	m := &StallMeter{ID: hex.EncodeToString(idb[:]), vm: vm, agent: opts.Agent}
	m.File = d.MountPoint + "/stallmeter-" + m.ID + ".log"
	// Only reports written from now on count.
	if st, err := os.Stat(vm.SerialLog); err == nil {
		m.offset = st.Size()
	}
	args := []string{"-id", m.ID, "-file", m.File, "-interval", opts.Interval.String(),
		"-duration", opts.Duration.String(), "-report", opts.Report.String()}
	err := m.withAgent(ctx, func(ga *guestagent.Client) error {
		pid, err := ga.Exec(ctx, StallMeterPath, args, nil, true)
		m.PID = pid
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%w: starting %s in %s: %w", ErrStallMeter, StallMeterPath, vm.Name, err)
	}
	if _, err := m.await(ctx, func(r *StallReport) bool { return r.Kind == StallStart }); err != nil {
		if m.exit == nil { // best effort: leave no meter running
			kctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = m.signal(kctx, "KILL")
		}
		return nil, err
	}
	return m, nil
}

// Mark closes the open window and returns its report; the next window
// opens at the same instant. The window closes when the meter's first
// iteration after the mark completes, so a stall in progress is counted in
// the window it ends.
func (m *StallMeter) Mark(ctx context.Context) (*StallReport, error) {
	if m.final != nil || m.exit != nil {
		return nil, fmt.Errorf("%w: %s has ended", ErrStallMeter, m.ID)
	}
	w := m.window
	if err := m.signal(ctx, "USR1"); err != nil {
		return nil, err
	}
	r, err := m.await(ctx, func(r *StallReport) bool { return r.Kind == StallWindow && r.Window == w })
	if err != nil {
		return nil, err
	}
	m.window = w + 1
	return r, nil
}

// Window measures the stalls while fn runs: it marks, runs fn, marks again
// and returns the report of the window between the marks. The window also
// holds the agent calls of the closing mark (tens of milliseconds under
// TCG). fn must leave the guest thawed.
func (m *StallMeter) Window(ctx context.Context, fn func() error) (*StallReport, error) {
	if _, err := m.Mark(ctx); err != nil {
		return nil, err
	}
	ferr := fn()
	r, err := m.Mark(ctx)
	if ferr != nil {
		return r, fmt.Errorf("testenv: inside a stall window: %w", ferr)
	}
	return r, err
}

// Stop ends the meter (unless it ended by itself after its Duration),
// waits for it to exit and returns its final report: the window open at
// the end.
func (m *StallMeter) Stop(ctx context.Context) (*StallReport, error) {
	if m.final == nil {
		st, err := m.status(ctx)
		if err != nil {
			return nil, err
		}
		if !st.Exited {
			if err := m.signal(ctx, "TERM"); err != nil {
				return nil, err
			}
		}
		if _, err := m.await(ctx, func(r *StallReport) bool { return r.Kind == StallFinal }); err != nil {
			return nil, err
		}
	}
	for m.exit == nil {
		if _, err := m.status(ctx); err != nil {
			return nil, err
		}
		if m.exit == nil {
			if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
				return nil, fmt.Errorf("%w: %s did not exit after its final report: %w", ErrStallMeter, m.ID, err)
			}
		}
	}
	if st := m.exit; st.ExitCode != 0 || st.Signal != 0 {
		return nil, fmt.Errorf("%w: %s exited with %d (signal %d): %s", ErrStallMeter, m.ID, st.ExitCode, st.Signal, st.ErrData)
	}
	return m.final, nil
}

// withAgent runs fn with the meter's agent connection, or with a fresh one
// that is closed afterwards.
func (m *StallMeter) withAgent(ctx context.Context, fn func(*guestagent.Client) error) error {
	if m.agent != nil {
		return fn(m.agent)
	}
	ga, err := m.vm.Agent(ctx)
	if err != nil {
		return err
	}
	defer ga.Close()
	return fn(ga)
}

// status returns the meter's guest-exec status. The agent forgets a
// program once it has reported its exit, so the exit status is kept.
func (m *StallMeter) status(ctx context.Context) (*guestagent.ExecStatus, error) {
	if m.exit != nil {
		return m.exit, nil
	}
	var st *guestagent.ExecStatus
	err := m.withAgent(ctx, func(ga *guestagent.Client) error {
		var err error
		st, err = ga.ExecStatus(ctx, m.PID)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%w: status of %s (pid %d): %w", ErrStallMeter, m.ID, m.PID, err)
	}
	if st.Exited {
		m.exit = st
	}
	return st, nil
}

// signal sends a signal to the meter with the guest's kill.
func (m *StallMeter) signal(ctx context.Context, sig string) error {
	return m.withAgent(ctx, func(ga *guestagent.Client) error {
		st, err := ga.Run(ctx, "/bin/kill", "-"+sig, strconv.Itoa(m.PID))
		if err != nil {
			return fmt.Errorf("%w: kill -%s %s: %w", ErrStallMeter, sig, m.ID, err)
		}
		if st.ExitCode != 0 {
			return fmt.Errorf("%w: kill -%s %d: exit %d: %s", ErrStallMeter, sig, m.PID, st.ExitCode, st.ErrData)
		}
		return nil
	})
}

// stallAwaitDefault bounds a wait for a report when ctx has no deadline.
const stallAwaitDefault = 2 * time.Minute

// await reads the serial log from where the last call stopped until one of
// the meter's reports matches, and returns it. Every few seconds it checks
// that the meter still runs.
func (m *StallMeter) await(ctx context.Context, match func(*StallReport) bool) (*StallReport, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, stallAwaitDefault)
		defer cancel()
	}
	lastCheck := time.Now()
	for {
		r, err := m.scan(match)
		if err != nil || r != nil {
			return r, err
		}
		if !m.vm.Running() {
			return nil, fmt.Errorf("%w: VM %s ended while waiting for a report of %s", ErrStallMeter, m.vm.Name, m.ID)
		}
		if time.Since(lastCheck) > 3*time.Second {
			lastCheck = time.Now()
			st, err := m.status(ctx)
			if err != nil {
				return nil, err
			}
			if st.Exited {
				if r, err := m.scan(match); err != nil || r != nil {
					return r, err
				}
				return nil, fmt.Errorf("%w: %s exited (code %d, signal %d) before the awaited report: %s",
					ErrStallMeter, m.ID, st.ExitCode, st.Signal, st.ErrData)
			}
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return nil, fmt.Errorf("%w: no report from %s in the serial log: %w", ErrStallMeter, m.ID, err)
		}
	}
}

// scan reads the complete lines added to the serial log since the last
// scan and returns the first of the meter's reports that matches, leaving
// the lines after it for the next scan.
func (m *StallMeter) scan(match func(*StallReport) bool) (*StallReport, error) {
	f, err := os.Open(m.vm.SerialLog)
	if err != nil {
		return nil, fmt.Errorf("%w: serial log: %w", ErrStallMeter, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.NewSectionReader(f, m.offset, 1<<40))
	if err != nil {
		return nil, fmt.Errorf("%w: serial log: %w", ErrStallMeter, err)
	}
	for {
		nl := bytes.IndexByte(b, '\n')
		if nl < 0 {
			return nil, nil // an unfinished line waits for the next scan
		}
		line := string(b[:nl])
		b = b[nl+1:]
		m.offset += int64(nl + 1)
		r, ok := ParseStallLine(line)
		if !ok || r.ID != m.ID {
			continue
		}
		if r.Kind == StallFinal && m.final == nil {
			m.final = &r
		}
		if match(&r) {
			return &r, nil
		}
	}
}

// sleepCtx sleeps for d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// GuestClocksource returns the guest's current clocksource and the ones it
// has, read through the agent from sysfs. A guest on "jiffies" keeps time
// only in timer ticks (4 ms): no use for measuring stalls.
func GuestClocksource(ctx context.Context, ga *guestagent.Client) (current string, available []string, err error) {
	const dir = "/sys/devices/system/clocksource/clocksource0/"
	st, err := ga.Run(ctx, "/bin/cat", dir+"current_clocksource", dir+"available_clocksource")
	if err != nil {
		return "", nil, fmt.Errorf("testenv: reading the guest's clocksource: %w", err)
	}
	lines := strings.Split(strings.TrimSpace(string(st.OutData)), "\n")
	if st.ExitCode != 0 || len(lines) != 2 {
		return "", nil, fmt.Errorf("testenv: reading the guest's clocksource: exit %d: %q %s", st.ExitCode, st.OutData, st.ErrData)
	}
	return strings.TrimSpace(lines[0]), strings.Fields(lines[1]), nil
}
