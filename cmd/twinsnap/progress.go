package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode"

	"github.com/twinsnap/twinsnap/internal/api"
)

// callTimeout bounds each API call of a command that waits, within
// --timeout's bound on the whole command.
const callTimeout = 30 * time.Second

// rateWindow is how far back a progress display looks to work out the
// rate.
const rateWindow = 30 * time.Second

// stalledWait is a wait that its context ended while polls were failing.
type stalledWait struct{ ctxErr, pollErr error }

// Error reports both causes.
func (e *stalledWait) Error() string {
	return e.ctxErr.Error() + "; the last poll failed: " + e.pollErr.Error()
}

// Unwrap returns both causes.
func (e *stalledWait) Unwrap() []error { return []error{e.ctxErr, e.pollErr} }

// pollUntil calls get every interval until until holds for what it
// returns, and returns the last value seen (last until the first answer).
// Each call is bounded by callTimeout. It calls update with every value
// received, and with the last one and the error when a call fails for
// want of a server or a leader: such failures are retried (a failover is
// when operations change state). It ends with ctx (the error is ctx's,
// wrapped in *stalledWait when calls were failing) or with any other
// error from the API.
func pollUntil[T any](ctx context.Context, last T, interval time.Duration,
	get func(context.Context) (T, error), until func(T) bool, update func(T, error),
) (T, error) {
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
		v, err := get(callCtx)
		cancel()
		switch {
		case err == nil:
			last, pollErr = v, nil
			update(v, nil)
			if until(v) {
				return v, nil
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

// progressMeter is the counter behind a progress display: it keeps the
// recent samples of one stretch of progress (a phase, a running spell
// between pauses) and derives its rate.
type progressMeter struct {
	key     string // what the samples belong to
	samples []progressSample
}

// progressSample is the bytes done at one time.
type progressSample struct {
	at   time.Time
	done int64
}

// add records done bytes at a time for key. A new key, or bytes going
// backwards, start afresh; a time not after the last sample's adds
// nothing.
func (m *progressMeter) add(key string, done int64, at time.Time) {
	n := len(m.samples)
	if key != m.key || n > 0 && done < m.samples[n-1].done {
		m.key, m.samples, n = key, nil, 0
	}
	if n > 0 && !at.After(m.samples[n-1].at) {
		return // nothing new
	}
	m.samples = append(m.samples, progressSample{at: at, done: done})
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

// liveLine is the text printer of a wait: on a terminal it prints a
// header and redraws one line in place; elsewhere it prints nothing.
// Its output is best effort: a failed write loses only the display.
type liveLine struct {
	w     io.Writer
	width func() (int, bool)
	on    bool
	drawn bool
}

// newLiveLine returns a live line on stdout, on if stdout is a terminal.
func (g *globalOptions) newLiveLine() liveLine {
	_, on := g.env.terminalWidth()
	return liveLine{w: g.env.stdout, width: g.env.terminalWidth, on: on}
}

// header prints a line above the live line.
func (l *liveLine) header(s string) {
	if l.on {
		_, _ = fmt.Fprintln(l.w, sanitizeLine(s))
	}
}

// draw replaces the live line with s, cut to the terminal's width.
func (l *liveLine) draw(s string) {
	if !l.on {
		return
	}
	s = sanitizeLine(s)
	if w, _ := l.width(); w > 1 {
		s = truncateRunes(s, w-1)
	}
	_, _ = io.WriteString(l.w, "\r"+s+"\x1b[K")
	l.drawn = true
}

// clear erases the live line, so that the result is printed in its
// place.
func (l *liveLine) clear() {
	if l.drawn {
		_, _ = io.WriteString(l.w, "\r\x1b[K")
		l.drawn = false
	}
}

// barWidth is the number of cells inside a progress bar's brackets.
const barWidth = 20

// progressBar draws done of total as "[=========>          ]"; a full bar
// has no head.
func progressBar(done, total int64) string {
	frac := 0.0
	if total > 0 {
		frac = min(max(float64(done)/float64(total), 0), 1)
	}
	n := int(frac * barWidth)
	if n >= barWidth {
		return "[" + strings.Repeat("=", barWidth) + "]"
	}
	return "[" + strings.Repeat("=", n) + ">" + strings.Repeat(" ", barWidth-n-1) + "]"
}

// percent is done of total in whole percent, at most 100.
func percent(done, total int64) int {
	if total <= 0 {
		return 0
	}
	return min(int(float64(done)/float64(total)*100), 100)
}

// formatRate shows bytes per second: "102.4 MiB/s".
func formatRate(perSecond float64) string {
	return formatIEC(int64(perSecond)) + "/s"
}

// formatETA shows the time left to move left bytes at rate bytes per
// second, to the second; "" when it cannot be known.
func formatETA(left int64, rate float64) string {
	if left <= 0 || rate <= 0 {
		return ""
	}
	eta := time.Duration(float64(left) / rate * float64(time.Second))
	return "ETA " + eta.Round(time.Second).String()
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
