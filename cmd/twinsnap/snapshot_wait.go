package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/twinsnap/twinsnap/internal/api"
)

// callTimeout bounds each API call of a command that waits, within
// --timeout's bound on the whole command.
const callTimeout = 30 * time.Second

// rateWindow is how far back the progress display looks to work out the
// rate.
const rateWindow = 30 * time.Second

// snapshotGetter is what waiting for a snapshot needs from the API client.
type snapshotGetter interface {
	Snapshot(ctx context.Context, id string) (*api.Snapshot, error)
}

var _ snapshotGetter = (*api.Client)(nil)

// stalledWait is a wait that its context ended while polls were failing.
type stalledWait struct{ ctxErr, pollErr error }

// Error reports both causes.
func (e *stalledWait) Error() string {
	return e.ctxErr.Error() + "; the last poll failed: " + e.pollErr.Error()
}

// Unwrap returns both causes.
func (e *stalledWait) Unwrap() []error { return []error{e.ctxErr, e.pollErr} }

// waitSnapshot asks for the snapshot last every interval until until
// holds for it, and returns the last snapshot seen. It calls update with
// every snapshot received, and with the last one and the error when a
// poll fails for want of a server or a leader: such failures are retried
// (a failover is when snapshots change state). It ends with ctx (the
// error is ctx's, wrapped in *stalledWait when polls were failing) or
// with any other error from the API: api.ErrNotFound once the snapshot
// is gone.
func waitSnapshot(ctx context.Context, c snapshotGetter, last *api.Snapshot, interval time.Duration,
	until func(*api.Snapshot) bool, update func(*api.Snapshot, error),
) (*api.Snapshot, error) {
	var pollErr error
	ended := func() error {
		if pollErr != nil {
			return &stalledWait{ctxErr: ctx.Err(), pollErr: pollErr}
		}
		return ctx.Err()
	}
	timer := time.NewTimer(interval)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return last, ended()
		case <-timer.C:
		}
		callCtx, cancel := context.WithTimeout(ctx, callTimeout)
		s, err := c.Snapshot(callCtx, last.ID)
		cancel()
		switch {
		case err == nil:
			last, pollErr = s, nil
			update(s, nil)
			if until(s) {
				return s, nil
			}
		case ctx.Err() != nil:
			return last, ended()
		case errors.Is(err, api.ErrConnect), errors.Is(err, api.ErrUnavailable):
			pollErr = err
			update(last, err)
		default:
			return last, err
		}
		timer.Reset(interval)
	}
}

// progressMeter is the counter behind the progress display: it keeps the
// recent samples of one phase's progress and derives its rate.
type progressMeter struct {
	key     string // the phase, node and total the samples belong to
	samples []progressSample
}

// progressSample is the bytes done at one time.
type progressSample struct {
	at   time.Time
	done int64
}

// observe records p; now stands in for a progress report without a time.
// A new phase, node or total, or bytes going backwards, start afresh.
func (m *progressMeter) observe(p *api.SnapshotProgress, now time.Time) {
	if p == nil {
		return
	}
	key := p.Phase + "\x00" + p.Node + "\x00" + strconv.FormatInt(p.BytesTotal, 10)
	at := p.UpdatedAt
	if at.IsZero() {
		at = now
	}
	n := len(m.samples)
	if key != m.key || n > 0 && p.BytesDone < m.samples[n-1].done {
		m.key, m.samples, n = key, nil, 0
	}
	if n > 0 && !at.After(m.samples[n-1].at) {
		return // nothing new
	}
	m.samples = append(m.samples, progressSample{at: at, done: p.BytesDone})
	for len(m.samples) > 2 && at.Sub(m.samples[0].at) > rateWindow {
		m.samples = m.samples[1:]
	}
}

// rate returns the bytes per second over the samples kept; 0 when not
// known.
func (m *progressMeter) rate() float64 {
	n := len(m.samples)
	if n < 2 {
		return 0
	}
	first, last := m.samples[0], m.samples[n-1]
	dt := last.at.Sub(first.at).Seconds()
	if dt <= 0 {
		return 0
	}
	return float64(last.done-first.done) / dt
}

// progressDisplay is the text printer of a wait: on a terminal it redraws
// one line in place; elsewhere it prints nothing.
type progressDisplay struct {
	w     io.Writer
	width func() (int, bool)
	on    bool
	now   func() time.Time
	meter progressMeter
	drawn bool
}

// newProgressDisplay returns a display on stdout, on if stdout is a
// terminal.
func (g *globalOptions) newProgressDisplay() *progressDisplay {
	_, on := g.env.terminalWidth()
	return &progressDisplay{w: g.env.stdout, width: g.env.terminalWidth, on: on, now: time.Now}
}

// header prints a line above the progress line. Display output is best
// effort: a failed write loses only the display.
func (d *progressDisplay) header(s string) {
	if d.on {
		_, _ = fmt.Fprintln(d.w, sanitizeLine(s))
	}
}

// update is the wait's callback: it counts s's progress and redraws the
// line; pollErr is a failed poll being retried.
func (d *progressDisplay) update(s *api.Snapshot, pollErr error) {
	if pollErr == nil {
		d.meter.observe(s.Progress, d.now())
	}
	if !d.on {
		return
	}
	line := progressLine(s, d.meter.rate(), pollErr)
	if w, _ := d.width(); w > 1 {
		line = truncateRunes(line, w-1)
	}
	_, _ = io.WriteString(d.w, "\r"+line+"\x1b[K")
	d.drawn = true
}

// clear erases the progress line, so that the result is printed in its
// place.
func (d *progressDisplay) clear() {
	if d.drawn {
		_, _ = io.WriteString(d.w, "\r\x1b[K")
		d.drawn = false
	}
}

// progressLine is the text of the progress display: state, phase and
// node, bytes done and total, rate and ETA, detail, and a failing poll.
func progressLine(s *api.Snapshot, rate float64, pollErr error) string {
	parts := []string{s.State}
	if p := s.Progress; p != nil {
		phase := orDash(p.Phase)
		if p.Node != "" {
			phase += " on " + p.Node
		}
		parts = append(parts, phase)
		if amount := progressBytes(p); amount != "" {
			parts = append(parts, amount)
		}
		if rate > 0 {
			parts = append(parts, formatIEC(int64(rate))+"/s")
			if left := p.BytesTotal - p.BytesDone; left > 0 {
				eta := time.Duration(float64(left) / rate * float64(time.Second))
				parts = append(parts, "ETA "+eta.Round(time.Second).String())
			}
		}
		if p.Detail != "" {
			parts = append(parts, p.Detail)
		}
	} else {
		parts = append(parts, "no progress reported")
	}
	if pollErr != nil {
		parts = append(parts, "(retrying: "+pollErr.Error()+")")
	}
	return sanitizeLine(strings.Join(parts, "  "))
}

// progressBytes shows a phase's bytes: "5 GiB / 20 GiB (25%)", just the
// bytes done when the total is not known, "" when neither is.
func progressBytes(p *api.SnapshotProgress) string {
	switch {
	case p.BytesTotal > 0:
		pct := min(int(float64(p.BytesDone)/float64(p.BytesTotal)*100), 100)
		return fmt.Sprintf("%s / %s (%d%%)", formatIEC(p.BytesDone), formatIEC(p.BytesTotal), pct)
	case p.BytesDone > 0:
		return formatIEC(p.BytesDone)
	}
	return ""
}

// sanitizeLine replaces control characters (line breaks, escape
// sequences from a server's text) with spaces.
func sanitizeLine(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
}

// truncateRunes cuts s to at most n characters, marking a cut with "…".
func truncateRunes(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}
