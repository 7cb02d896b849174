package export_test

import (
	"errors"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/export"
)

func mustLoc(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatalf("load location %s: %v", name, err)
	}
	return loc
}

func mustWindow(t *testing.T, spec, days string, loc *time.Location) export.Window {
	t.Helper()
	w, err := export.ParseWindow(spec, days, loc)
	if err != nil {
		t.Fatalf("ParseWindow(%q, %q): %v", spec, days, err)
	}
	return w
}

// utc parses an RFC 3339 instant.
func utc(t *testing.T, s string) time.Time {
	t.Helper()
	v, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Fatalf("parse %q: %v", s, err)
	}
	return v
}

func TestWindowOpenNextClose(t *testing.T) {
	berlin := mustLoc(t, "Europe/Berlin")
	tests := []struct {
		name       string
		spec, days string
		loc        *time.Location
		at         string // instant asked about
		open       bool
		nextOpen   string
		closes     string
	}{
		{"inside, before midnight", "22:00-04:00", "", time.UTC, "2026-06-10T23:00:00Z", true, "2026-06-10T23:00:00Z", "2026-06-11T04:00:00Z"},
		{"inside, after midnight", "22:00-04:00", "", time.UTC, "2026-06-11T03:59:59Z", true, "2026-06-11T03:59:59Z", "2026-06-11T04:00:00Z"},
		{"end is exclusive", "22:00-04:00", "", time.UTC, "2026-06-11T04:00:00Z", false, "2026-06-11T22:00:00Z", "2026-06-12T04:00:00Z"},
		{"start is inclusive", "22:00-04:00", "", time.UTC, "2026-06-11T22:00:00Z", true, "2026-06-11T22:00:00Z", "2026-06-12T04:00:00Z"},
		{"daytime window", "08:00-18:00", "", time.UTC, "2026-06-11T18:30:00Z", false, "2026-06-12T08:00:00Z", "2026-06-12T18:00:00Z"},
		// 2026-06-12 is a Friday: the span opens Friday, so Saturday
		// morning is inside it and Friday morning is not.
		{"days: opened the day before", "22:00-04:00", "fri", time.UTC, "2026-06-13T03:00:00Z", true, "2026-06-13T03:00:00Z", "2026-06-13T04:00:00Z"},
		{"days: morning of the opening day", "22:00-04:00", "fri", time.UTC, "2026-06-12T03:00:00Z", false, "2026-06-12T22:00:00Z", "2026-06-13T04:00:00Z"},
		{"days: a week to wait", "22:00-04:00", "fri", time.UTC, "2026-06-13T05:00:00Z", false, "2026-06-19T22:00:00Z", "2026-06-20T04:00:00Z"},
		{"days: range", "08:00-18:00", "mon-fri", time.UTC, "2026-06-13T09:00:00Z", false, "2026-06-15T08:00:00Z", "2026-06-15T18:00:00Z"},
		{"days: wrapping range", "08:00-18:00", "sat-mon", time.UTC, "2026-06-16T09:00:00Z", false, "2026-06-20T08:00:00Z", "2026-06-20T18:00:00Z"},
		{"seconds", "22:00:00-22:00:30", "", time.UTC, "2026-06-10T22:00:15Z", true, "2026-06-10T22:00:15Z", "2026-06-10T22:00:30Z"},
		{"seconds, just closed", "22:00:00-22:00:30", "", time.UTC, "2026-06-10T22:00:30Z", false, "2026-06-11T22:00:00Z", "2026-06-11T22:00:30Z"},
		{"whole days merge", "00:00-24:00", "mon,tue", time.UTC, "2026-06-15T10:00:00Z", true, "2026-06-15T10:00:00Z", "2026-06-17T00:00:00Z"},
		{"to midnight", "22:00-24:00", "", time.UTC, "2026-06-15T23:59:59Z", true, "2026-06-15T23:59:59Z", "2026-06-16T00:00:00Z"},

		// Europe/Berlin in summer: 22:00 CEST is 20:00 UTC.
		{"berlin summer", "22:00-04:00", "", berlin, "2026-06-10T19:59:59Z", false, "2026-06-10T20:00:00Z", "2026-06-11T02:00:00Z"},
		// Spring forward, night of Sat 28 to Sun 29 March 2026: 02:00 CET
		// becomes 03:00 CEST. 22:00 CET is 21:00 UTC, 04:00 CEST is 02:00
		// UTC: a five-hour night.
		{"spring forward: span shrinks", "22:00-04:00", "", berlin, "2026-03-28T21:00:00Z", true, "2026-03-28T21:00:00Z", "2026-03-29T02:00:00Z"},
		{"spring forward: next open after", "22:00-04:00", "", berlin, "2026-03-29T02:00:00Z", false, "2026-03-29T20:00:00Z", "2026-03-30T02:00:00Z"},
		// 02:30 does not exist that night: the span opens when the clocks
		// jump, 03:00 CEST (01:00 UTC).
		{"spring forward: skipped start", "02:30-03:30", "", berlin, "2026-03-28T23:30:00Z", false, "2026-03-29T01:00:00Z", "2026-03-29T01:30:00Z"},
		{"spring forward: inside, skipped start", "02:30-03:30", "", berlin, "2026-03-29T01:00:00Z", true, "2026-03-29T01:00:00Z", "2026-03-29T01:30:00Z"},
		{"spring forward: skipped end", "01:00-02:30", "", berlin, "2026-03-29T00:30:00Z", true, "2026-03-29T00:30:00Z", "2026-03-29T01:00:00Z"},
		// Fall back, night of Sat 24 to Sun 25 October 2026: 03:00 CEST
		// becomes 02:00 CET. 22:00 CEST is 20:00 UTC, 04:00 CET is 03:00
		// UTC: a seven-hour night.
		{"fall back: span grows", "22:00-04:00", "", berlin, "2026-10-25T02:30:00Z", true, "2026-10-25T02:30:00Z", "2026-10-25T03:00:00Z"},
		// 02:30 happens twice: the first (CEST, 00:30 UTC) counts.
		{"fall back: repeated start", "02:30-05:00", "", berlin, "2026-10-24T23:00:00Z", false, "2026-10-25T00:30:00Z", "2026-10-25T04:00:00Z"},
		{"fall back: repeated end", "01:00-02:30", "", berlin, "2026-10-25T00:29:59Z", true, "2026-10-25T00:29:59Z", "2026-10-25T00:30:00Z"},
		{"fall back: after first end", "01:00-02:30", "", berlin, "2026-10-25T01:15:00Z", false, "2026-10-26T00:00:00Z", "2026-10-26T01:30:00Z"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := mustWindow(t, tc.spec, tc.days, tc.loc)
			at := utc(t, tc.at)
			if got := w.Open(at); got != tc.open {
				t.Errorf("Open(%s) = %v, want %v", tc.at, got, tc.open)
			}
			if got, want := w.NextOpen(at), utc(t, tc.nextOpen); !got.Equal(want) {
				t.Errorf("NextOpen(%s) = %s, want %s", tc.at, got.UTC().Format(time.RFC3339), tc.nextOpen)
			}
			if got, want := w.Close(at), utc(t, tc.closes); !got.Equal(want) {
				t.Errorf("Close(%s) = %s, want %s", tc.at, got.UTC().Format(time.RFC3339), tc.closes)
			}
		})
	}
}

// TestWindowConsistency checks, at random instants over a year in
// Europe/Berlin (both DST changes), that NextOpen, Open and Close agree.
func TestWindowConsistency(t *testing.T) {
	berlin := mustLoc(t, "Europe/Berlin")
	windows := []export.Window{
		mustWindow(t, "22:00-04:00", "", berlin),
		mustWindow(t, "02:30-03:30", "", berlin),
		mustWindow(t, "01:00-02:30", "sat,sun", berlin),
		mustWindow(t, "08:00-18:00", "mon-fri", berlin),
		mustWindow(t, "23:59:50-00:00:10", "", berlin),
		mustWindow(t, "00:00-24:00", "wed,thu", berlin),
	}
	rng := rand.New(rand.NewPCG(1, 2))
	base := utc(t, "2026-01-01T00:00:00Z")
	for _, w := range windows {
		for range 3000 {
			at := base.Add(time.Duration(rng.Int64N(int64(365 * 24 * time.Hour))))
			open := w.NextOpen(at)
			closes := w.Close(at)
			switch {
			case open.Before(at):
				t.Fatalf("%s: NextOpen(%s) = %s is before it", w, at, open)
			case w.Open(at) != open.Equal(at):
				t.Fatalf("%s: Open(%s) = %v but NextOpen = %s", w, at, w.Open(at), open)
			case !w.Open(open):
				t.Fatalf("%s: not open at NextOpen(%s) = %s", w, at, open)
			case !closes.After(open):
				t.Fatalf("%s: Close(%s) = %s is not after NextOpen = %s", w, at, closes, open)
			case w.Open(closes):
				t.Fatalf("%s: still open at Close(%s) = %s", w, at, closes)
			case !w.Open(closes.Add(-time.Second)):
				t.Fatalf("%s: not open just before Close(%s) = %s", w, at, closes)
			case closes.Sub(open) > 25*time.Hour && w.Spec() != "00:00-24:00":
				t.Fatalf("%s: open from %s to %s", w, open, closes)
			}
			// Nothing opens between at and NextOpen.
			if !open.Equal(at) {
				if mid := at.Add(open.Sub(at) / 2); w.Open(mid) {
					t.Fatalf("%s: open at %s, between %s and NextOpen %s", w, mid, at, open)
				}
			}
		}
	}
}

func TestWindowAlwaysOpenClosesAWeekAhead(t *testing.T) {
	w := mustWindow(t, "00:00-24:00", "", time.UTC)
	at := utc(t, "2026-06-10T10:00:00Z")
	if !w.Open(at) {
		t.Fatalf("a window open all day every day is closed at %s", at)
	}
	if got := w.Close(at); got.Sub(at) < 7*24*time.Hour {
		t.Fatalf("Close(%s) = %s, want at least a week ahead", at, got)
	}
}

func TestWindowZero(t *testing.T) {
	var w export.Window
	at := utc(t, "2026-06-10T10:00:00Z")
	if w.Open(at) || !w.NextOpen(at).IsZero() || !w.Close(at).IsZero() || !w.IsZero() {
		t.Fatalf("zero window: Open %v NextOpen %s Close %s", w.Open(at), w.NextOpen(at), w.Close(at))
	}
	if w.String() != "never" {
		t.Fatalf("zero window String = %q", w.String())
	}
}

func TestWindowStringRoundTrip(t *testing.T) {
	berlin := mustLoc(t, "Europe/Berlin")
	tests := []struct {
		spec, days string
		wantSpec   string
		wantDays   string
		wantString string
	}{
		{"22:00-04:00", "", "22:00-04:00", "", "22:00-04:00 daily (Europe/Berlin)"},
		{"22:00:00-22:00:30", "MON,Tue", "22:00:00-22:00:30", "mon,tue", "22:00:00-22:00:30 mon,tue (Europe/Berlin)"},
		{"08:00:00-18:00:00", "mon-fri", "08:00-18:00", "mon,tue,wed,thu,fri", "08:00-18:00 mon,tue,wed,thu,fri (Europe/Berlin)"},
		{"00:00-24:00", "sun, sat", "00:00-24:00", "sat,sun", "00:00-24:00 sat,sun (Europe/Berlin)"},
		{"01:00-02:00", "mon-sun", "01:00-02:00", "", "01:00-02:00 daily (Europe/Berlin)"},
	}
	for _, tc := range tests {
		w := mustWindow(t, tc.spec, tc.days, berlin)
		if w.Spec() != tc.wantSpec || w.Days() != tc.wantDays || w.String() != tc.wantString {
			t.Errorf("ParseWindow(%q, %q): Spec %q Days %q String %q; want %q %q %q",
				tc.spec, tc.days, w.Spec(), w.Days(), w.String(), tc.wantSpec, tc.wantDays, tc.wantString)
		}
		again := mustWindow(t, w.Spec(), w.Days(), berlin)
		if !reflect.DeepEqual(again, w) {
			t.Errorf("re-parsing %q %q gives %s, want %s", w.Spec(), w.Days(), again, w)
		}
	}
}

func TestParseWindowErrors(t *testing.T) {
	tests := []struct {
		spec, days string
		nilLoc     bool
		want       string // in the message
	}{
		{"22:00", "", false, "not START-END"},
		{"", "", false, "not START-END"},
		{"25:00-04:00", "", false, "hour 25 is not 00-23"},
		{"24:00-04:00", "", false, "hour 24 is not 00-23"},
		{"22:00-24:01", "", false, "hour 24 is not 00-23 (or 24:00)"},
		{"22:60-04:00", "", false, "minute 60"},
		{"22:00:60-23:00", "", false, "second 60"},
		{"2:00-04:00", "", false, "not two digits"},
		{"22:00-04:00:0", "", false, "not two digits"},
		{"22-04", "", false, "not HH:MM or HH:MM:SS"},
		{"22:00:00:00-04:00", "", false, "not HH:MM or HH:MM:SS"},
		{"+1:00-04:00", "", false, "not two digits"},
		{"22:00-22:00", "", false, "same time"},
		{"00:00-00:00", "", false, "same time"},
		{"22:00-04:00", "mon,mon", false, "mon is named more than once"},
		{"22:00-04:00", "mon-fri,wed", false, "wed is named more than once"},
		{"22:00-04:00", "mon-mon", false, "same day"},
		{"22:00-04:00", "monday", false, "not a day"},
		{"22:00-04:00", "mon,", false, "empty item"},
		{"22:00-04:00", ",", false, "empty item"},
		{"22:00-04:00", "", true, "no time zone"},
	}
	for _, tc := range tests {
		loc := time.UTC
		if tc.nilLoc {
			loc = nil
		}
		_, err := export.ParseWindow(tc.spec, tc.days, loc)
		if err == nil {
			t.Errorf("ParseWindow(%q, %q) succeeded", tc.spec, tc.days)
			continue
		}
		if !errors.Is(err, export.ErrWindow) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseWindow(%q, %q) = %v; want ErrWindow mentioning %q", tc.spec, tc.days, err, tc.want)
		}
	}
}

// TestWindowSpans: several spans make one window, open while any is.
func TestWindowSpans(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	w := mustWindow(t, "22:00-04:00,12:00-13:00,12:30-14:00", "", berlin)
	if got := w.Spec(); got != "22:00-04:00,12:00-13:00,12:30-14:00" {
		t.Fatalf("Spec %q", got)
	}
	at := func(h, m int) time.Time { return time.Date(2026, 3, 10, h, m, 0, 0, berlin) }
	for _, tc := range []struct {
		t          time.Time
		open       bool
		next, ends time.Time
	}{
		{at(11, 0), false, at(12, 0), at(14, 0)}, // 12:00-13:00 and 12:30-14:00 overlap: one open time
		{at(12, 45), true, at(12, 45), at(14, 0)},
		{at(15, 0), false, at(22, 0), at(28, 0)},
		{at(23, 0), true, at(23, 0), at(28, 0)},
	} {
		if got := w.Open(tc.t); got != tc.open {
			t.Errorf("Open(%v) = %v, want %v", tc.t, got, tc.open)
		}
		if got := w.NextOpen(tc.t); !got.Equal(tc.next) {
			t.Errorf("NextOpen(%v) = %v, want %v", tc.t, got, tc.next)
		}
		if got := w.Close(tc.t); !got.Equal(tc.ends) {
			t.Errorf("Close(%v) = %v, want %v", tc.t, got, tc.ends)
		}
	}
	if _, err := export.ParseWindow("01:00-02:00,bad", "", berlin); !errors.Is(err, export.ErrWindow) {
		t.Fatalf("a bad second span: %v", err)
	}
}
