package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/twinsnap/twinsnap/internal/api"
)

// snapshotGetter is what waiting for a snapshot needs from the API client.
type snapshotGetter interface {
	Snapshot(ctx context.Context, id string) (*api.Snapshot, error)
}

var _ snapshotGetter = (*api.Client)(nil)

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
	id := last.ID
	get := func(ctx context.Context) (*api.Snapshot, error) { return c.Snapshot(ctx, id) }
	return pollUntil(ctx, last, interval, get, until, update)
}

// observe records a snapshot phase's progress p; now stands in for a
// report without a time. A new phase, node or total starts afresh.
func (m *progressMeter) observe(p *api.SnapshotProgress, now time.Time) {
	if p == nil {
		return
	}
	at := p.UpdatedAt
	if at.IsZero() {
		at = now
	}
	m.add(p.Phase+"\x00"+p.Node+"\x00"+strconv.FormatInt(p.BytesTotal, 10), p.BytesDone, at)
}

// progressDisplay is the text printer of a snapshot wait: a live line on
// a terminal, nothing elsewhere.
type progressDisplay struct {
	liveLine
	now   func() time.Time
	meter progressMeter
}

// newProgressDisplay returns a display on stdout, on if stdout is a
// terminal.
func (g *globalOptions) newProgressDisplay() *progressDisplay {
	return &progressDisplay{liveLine: g.newLiveLine(), now: time.Now}
}

// update is the wait's callback: it counts s's progress and redraws the
// line; pollErr is a failed poll being retried.
func (d *progressDisplay) update(s *api.Snapshot, pollErr error) {
	if pollErr == nil {
		d.meter.observe(s.Progress, d.now())
	}
	d.draw(progressLine(s, d.meter.rate(), pollErr))
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
			parts = append(parts, formatRate(rate))
			if eta := formatETA(p.BytesTotal-p.BytesDone, rate); eta != "" {
				parts = append(parts, eta)
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
		return fmt.Sprintf("%s / %s (%d%%)", formatIEC(p.BytesDone), formatIEC(p.BytesTotal), percent(p.BytesDone, p.BytesTotal))
	case p.BytesDone > 0:
		return formatIEC(p.BytesDone)
	}
	return ""
}
