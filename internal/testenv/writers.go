package testenv

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/twinsnap/twinsnap/guestagent"
)

// stopWritersFile is created in the guest (on tmpfs) to end the writers.
const stopWritersFile = "/run/stop-writers"

// GuestWriters are writer loops in a guest, one per mount point, each
// appending the guest's uptime to <mount>/ticks every 20 ms. A write to a
// frozen file system blocks until the thaw, so the ticks show from inside
// the guest which file systems accepted writes when.
type GuestWriters struct {
	ga     *guestagent.Client
	mounts []string
}

// StartGuestWriters starts the loops through guest-exec (which the agent
// refuses while frozen: start them before freezing).
func StartGuestWriters(ctx context.Context, ga *guestagent.Client, mounts ...string) (*GuestWriters, error) {
	if _, err := ga.Run(ctx, "/bin/rm", "-f", stopWritersFile); err != nil {
		return nil, fmt.Errorf("testenv: writers: %w", err)
	}
	for _, m := range mounts {
		script := "while [ ! -e " + stopWritersFile + " ]; do read up idle < /proc/uptime; echo $up >> " + m + "/ticks; usleep 20000; done"
		if _, err := ga.Exec(ctx, "/bin/sh", []string{"-c", script}, nil, false); err != nil {
			return nil, fmt.Errorf("testenv: starting the writer on %s: %w", m, err)
		}
	}
	return &GuestWriters{ga: ga, mounts: mounts}, nil
}

// Stop ends the loops.
func (w *GuestWriters) Stop(ctx context.Context) error {
	if _, err := w.ga.Run(ctx, "/bin/touch", stopWritersFile); err != nil {
		return fmt.Errorf("testenv: stopping writers: %w", err)
	}
	return nil
}

// Ticks returns the uptimes the writer on mount recorded.
func (w *GuestWriters) Ticks(ctx context.Context, mount string) ([]float64, error) {
	st, err := w.ga.Run(ctx, "/bin/cat", mount+"/ticks")
	if err != nil {
		return nil, fmt.Errorf("testenv: reading %s/ticks: %w", mount, err)
	}
	if st.ExitCode != 0 || st.OutTruncated {
		return nil, fmt.Errorf("testenv: reading %s/ticks: exit %d, truncated %v: %s", mount, st.ExitCode, st.OutTruncated, st.ErrData)
	}
	var out []float64
	for _, f := range strings.Fields(string(st.OutData)) {
		v, err := strconv.ParseFloat(f, 64)
		if err != nil {
			return nil, fmt.Errorf("testenv: %s/ticks holds %q: %w", mount, f, err)
		}
		out = append(out, v)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("testenv: %s/ticks is empty", mount)
	}
	return out, nil
}

// GuestUptime returns the guest's uptime in seconds, the clock the writers
// record.
func GuestUptime(ctx context.Context, ga *guestagent.Client) (float64, error) {
	st, err := ga.Run(ctx, "/bin/cat", "/proc/uptime")
	if err != nil {
		return 0, fmt.Errorf("testenv: guest uptime: %w", err)
	}
	f := strings.Fields(string(st.OutData))
	if len(f) == 0 {
		return 0, fmt.Errorf("testenv: guest uptime: empty /proc/uptime")
	}
	return strconv.ParseFloat(f[0], 64)
}

// CountBetween counts the ticks strictly between lo and hi.
func CountBetween(ticks []float64, lo, hi float64) int {
	n := 0
	for _, v := range ticks {
		if v > lo && v < hi {
			n++
		}
	}
	return n
}
