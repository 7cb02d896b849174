package export

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// ErrWindow reports a maintenance window that does not parse.
var ErrWindow = errors.New("export: invalid maintenance window")

const daySeconds = 24 * 60 * 60

// Window is a recurring maintenance window: a daily span of wall-clock
// time in one location, on chosen days of the week. An export runs only
// while its window is open and pauses at the window's end.
//
// A span whose end is not after its start ("22:00-04:00") crosses
// midnight and ends on the next day; the days are the days a span opens
// on, so "22:00-04:00" on "fri" is open from Friday 22:00 to Saturday
// 04:00. Times are wall-clock times, so across a DST change a span is an
// hour longer or shorter. A wall-clock time that a DST change skips means
// the instant the clocks jump (02:30 on a spring-forward night in
// Europe/Berlin is 03:00 CEST); one that occurs twice means its first
// occurrence.
//
// The zero Window is never open.
type Window struct {
	start, end int     // seconds after midnight; end is in (0, 86400]
	days       [7]bool // by time.Weekday
	loc        *time.Location
	// more are further spans of the same days and location
	// ("22:00-04:00,12:00-13:00"): the window is open while any is.
	more []Window
}

// ParseWindow parses a window spec "HH:MM-HH:MM" or, with seconds,
// "HH:MM:SS-HH:MM:SS" (hours 00-23; an end of "24:00" means midnight at
// the end of the day), or several such spans separated by commas
// ("22:00-04:00,12:00-13:00": open while any is), and a list of days: "" for every day, or
// comma-separated three-letter names and ranges such as "mon,wed" or
// "mon-fri" (a range may wrap: "fri-mon"). Names are case-insensitive; a
// day may be named only once. The start and end must differ. Times are
// read in loc, which must not be nil. Errors wrap ErrWindow.
func ParseWindow(spec, days string, loc *time.Location) (Window, error) {
	spans := strings.Split(spec, ",")
	if len(spans) > maxSpans {
		return Window{}, fmt.Errorf("%w: %q: at most %d spans", ErrWindow, spec, maxSpans)
	}
	w, err := parseSpan(spans[0], days, loc)
	if err != nil {
		return Window{}, err
	}
	for _, sp := range spans[1:] {
		o, err := parseSpan(sp, days, loc)
		if err != nil {
			return Window{}, err
		}
		w.more = append(w.more, o)
	}
	return w, nil
}

// maxSpans bounds the spans of one window.
const maxSpans = 8

// parseSpan parses one span of a window spec.
func parseSpan(spec, days string, loc *time.Location) (Window, error) {
	var w Window
	if loc == nil {
		return w, fmt.Errorf("%w: no time zone given", ErrWindow)
	}
	from, to, ok := strings.Cut(spec, "-")
	if !ok {
		return w, fmt.Errorf("%w: %q is not START-END (such as 22:00-04:00)", ErrWindow, spec)
	}
	start, err := parseClock(from, false)
	if err != nil {
		return w, fmt.Errorf("%w: %q: start: %w", ErrWindow, spec, err)
	}
	end, err := parseClock(to, true)
	if err != nil {
		return w, fmt.Errorf("%w: %q: end: %w", ErrWindow, spec, err)
	}
	if end%daySeconds == start && (start != 0 || end != daySeconds) {
		return w, fmt.Errorf("%w: %q: start and end are the same time (use 00:00-24:00 for a whole day)", ErrWindow, spec)
	}
	w.start, w.end, w.loc = start, end, loc
	if w.days, err = parseDays(days); err != nil {
		return Window{}, fmt.Errorf("%w: days %q: %w", ErrWindow, days, err)
	}
	return w, nil
}

// parseClock parses HH:MM or HH:MM:SS into seconds after midnight. Only an
// end may be 24:00 (or 24:00:00).
func parseClock(s string, isEnd bool) (int, error) {
	parts := strings.Split(s, ":")
	if len(parts) != 2 && len(parts) != 3 {
		return 0, fmt.Errorf("%q is not HH:MM or HH:MM:SS", s)
	}
	var v [3]int
	for i, p := range parts {
		if len(p) != 2 || p[0] < '0' || p[0] > '9' || p[1] < '0' || p[1] > '9' {
			return 0, fmt.Errorf("%q: %q is not two digits", s, p)
		}
		v[i], _ = strconv.Atoi(p)
	}
	h, m, sec := v[0], v[1], v[2]
	switch {
	case h == 24 && m == 0 && sec == 0 && isEnd:
		return daySeconds, nil
	case h > 23:
		if isEnd {
			return 0, fmt.Errorf("%q: hour %d is not 00-23 (or 24:00)", s, h)
		}
		return 0, fmt.Errorf("%q: hour %d is not 00-23", s, h)
	case m > 59:
		return 0, fmt.Errorf("%q: minute %d is not 00-59", s, m)
	case sec > 59:
		return 0, fmt.Errorf("%q: second %d is not 00-59", s, sec)
	}
	return h*3600 + m*60 + sec, nil
}

var dayNames = [7]string{"sun", "mon", "tue", "wed", "thu", "fri", "sat"}

func parseDay(s string) (time.Weekday, error) {
	l := strings.ToLower(s)
	for i, n := range dayNames {
		if l == n {
			return time.Weekday(i), nil
		}
	}
	return 0, fmt.Errorf("%q is not a day (mon, tue, wed, thu, fri, sat, sun)", s)
}

func parseDays(s string) ([7]bool, error) {
	var days [7]bool
	if s == "" {
		for i := range days {
			days[i] = true
		}
		return days, nil
	}
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			return days, errors.New("empty item")
		}
		from, to, isRange := strings.Cut(item, "-")
		first, err := parseDay(from)
		if err != nil {
			return days, err
		}
		last := first
		if isRange {
			if last, err = parseDay(to); err != nil {
				return days, err
			}
			if last == first {
				return days, fmt.Errorf("range %q starts and ends on the same day", item)
			}
		}
		for d := first; ; d = (d + 1) % 7 {
			if days[d] {
				return days, fmt.Errorf("%s is named more than once", dayNames[d])
			}
			days[d] = true
			if d == last {
				break
			}
		}
	}
	return days, nil
}

// IsZero reports the zero Window, which is never open.
func (w Window) IsZero() bool { return w.loc == nil }

// Location is the time zone the window's times are read in.
func (w Window) Location() *time.Location { return w.loc }

// Spec returns the window's span as ParseWindow reads it, with seconds
// only where needed: "22:00-04:00", "22:00:00-22:00:30".
func (w Window) Spec() string {
	if w.IsZero() {
		return ""
	}
	withSec := w.start%60 != 0 || w.end%60 != 0
	out := formatClock(w.start, withSec) + "-" + formatClock(w.end, withSec)
	for _, o := range w.more {
		out += "," + o.Spec()
	}
	return out
}

// Days returns the window's days as ParseWindow reads them: "" for every
// day, else a comma-separated list from Monday on ("mon,tue,sat").
func (w Window) Days() string {
	if w.IsZero() {
		return ""
	}
	var names []string
	for i := 1; i <= 7; i++ {
		if w.days[i%7] {
			names = append(names, dayNames[i%7])
		}
	}
	if len(names) == 7 {
		return ""
	}
	return strings.Join(names, ",")
}

// String describes the window: "22:00-04:00 daily (Europe/Berlin)",
// "08:00-18:00 mon,tue (UTC)".
func (w Window) String() string {
	if w.IsZero() {
		return "never"
	}
	days := w.Days()
	if days == "" {
		days = "daily"
	}
	return fmt.Sprintf("%s %s (%s)", w.Spec(), days, w.loc)
}

func formatClock(sec int, withSec bool) string {
	h, m, s := sec/3600, sec/60%60, sec%60
	if withSec {
		return fmt.Sprintf("%02d:%02d:%02d", h, m, s)
	}
	return fmt.Sprintf("%02d:%02d", h, m)
}

// period returns the open and close instants of the span that opens on
// the day of date (a time whose date in w.loc is the day), and whether the
// window opens on that day.
func (w Window) period(y int, m time.Month, d int) (open, closes time.Time, ok bool) {
	day := time.Date(y, m, d, 12, 0, 0, 0, w.loc)
	if !w.days[day.Weekday()] {
		return open, closes, false
	}
	end := w.end
	if end <= w.start {
		end += daySeconds
	}
	return wallTime(y, m, d, w.start, w.loc), wallTime(y, m, d, end, w.loc), true
}

// Open reports whether the window is open at t.
func (w Window) Open(t time.Time) bool {
	_, ok := w.containing(t)
	return ok
}

// containing returns the latest close of the spans holding t.
func (w Window) containing(t time.Time) (time.Time, bool) {
	closes, ok := w.containing1(t)
	for _, o := range w.more {
		if c, ook := o.containing1(t); ook && (!ok || c.After(closes)) {
			closes, ok = c, true
		}
	}
	return closes, ok
}

// containing1 returns the close of w's own span holding t.
func (w Window) containing1(t time.Time) (time.Time, bool) {
	if w.IsZero() {
		return time.Time{}, false
	}
	y, m, d := t.In(w.loc).Date()
	// A span holding t opened on t's date or the day before; look one
	// more day back in case a DST change sits at midnight.
	for k := -2; k <= 0; k++ {
		open, closes, ok := w.period(y, m, d+k)
		if ok && !t.Before(open) && t.Before(closes) {
			return closes, true
		}
	}
	return time.Time{}, false
}

// NextOpen returns t if the window is open at t, else the instant it next
// opens. It returns the zero time for the zero Window.
func (w Window) NextOpen(t time.Time) time.Time {
	if w.IsZero() {
		return time.Time{}
	}
	if w.Open(t) {
		return t
	}
	next := w.nextOpen1(t)
	for _, o := range w.more {
		if n := o.nextOpen1(t); !n.IsZero() && (next.IsZero() || n.Before(next)) {
			next = n
		}
	}
	return next
}

// nextOpen1 returns the instant w's own span next opens after t.
func (w Window) nextOpen1(t time.Time) time.Time {
	y, m, d := t.In(w.loc).Date()
	for k := 0; k <= 8; k++ {
		if open, _, ok := w.period(y, m, d+k); ok && open.After(t) {
			return open
		}
	}
	return time.Time{} // not reached: some day of every week opens
}

// Close returns the instant the window closes after being open at t: the
// end of the open time holding t, or, when the window is closed at t, of
// the open time that starts at NextOpen(t). Spans that meet (00:00-24:00
// on consecutive days) count as one open time; the search stops a week
// ahead, so a window open every day all day closes, in this view, a week
// later. It returns the zero time for the zero Window.
func (w Window) Close(t time.Time) time.Time {
	start := w.NextOpen(t)
	if start.IsZero() {
		return start
	}
	closes, _ := w.containing(start)
	limit := start.Add(7 * 24 * time.Hour)
	for closes.Before(limit) {
		next, ok := w.containing(closes)
		if !ok {
			break
		}
		closes = next
	}
	return closes
}

// wallTime returns the instant at which the wall clock in loc shows sec
// seconds after the midnight that starts day y-m-d (sec may reach into the
// next day). A wall time that a DST change skips gives the instant of the
// change; one that occurs twice gives the first occurrence.
func wallTime(y int, m time.Month, d, sec int, loc *time.Location) time.Time {
	naive := time.Date(y, m, d, 0, 0, sec, 0, time.UTC).Unix()
	guess := time.Date(y, m, d, 0, 0, sec, 0, loc)
	var best time.Time
	for _, probe := range []time.Time{guess.Add(-24 * time.Hour), guess, guess.Add(24 * time.Hour)} {
		_, off := probe.Zone()
		u := time.Unix(naive-int64(off), 0).In(loc)
		if _, got := u.Zone(); got == off && (best.IsZero() || u.Before(best)) {
			best = u
		}
	}
	if !best.IsZero() {
		return best
	}
	// Skipped: the clocks jumped over this wall time at a zone boundary
	// next to guess.
	_, off := guess.Zone()
	start, end := guess.ZoneBounds()
	if guess.Unix()+int64(off) > naive {
		return start
	}
	return end
}
