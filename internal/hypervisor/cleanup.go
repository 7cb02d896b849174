package hypervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// CapturePrefix begins the id of every job ("ts-<id>-jobN") and block
// node ("ts-<id>-tgtN", over "ts-<id>-tgtN-file") that Capture creates.
// Nothing else may use it: CleanupStale(ctx, q, CapturePrefix) removes
// whatever carries it.
const CapturePrefix = "ts-"

// cleanupPoll is how often CleanupStale re-reads the jobs when no job
// event wakes it first.
const cleanupPoll = 100 * time.Millisecond

// CleanupReport is what CleanupStale did.
type CleanupReport struct {
	// Jobs are the jobs with the prefix as CleanupStale first found them
	// (id, type, status, progress, error).
	Jobs []JobInfo `json:"jobs,omitempty"`
	// Cancelled are the ids of the jobs it cancelled (they had not ended
	// yet); Dismissed those it dismissed. A job QEMU dismissed by itself
	// (auto-dismiss) is in neither.
	Cancelled []string `json:"cancelled,omitempty"`
	Dismissed []string `json:"dismissed,omitempty"`
	// Nodes are the block nodes it deleted (blockdev-del), in order; the
	// children QEMU closed with them ("-file" nodes) are not listed.
	Nodes []string `json:"nodes,omitempty"`
	// Duration is the whole call.
	Duration time.Duration `json:"duration"`
}

// CleanupStale removes what captures left in QEMU when their daemon
// died: it cancels (job-cancel, which is a forced cancel) every job whose
// id starts with prefix and has not ended, dismisses each once it has
// concluded, and waits until QEMU lists none of them; then it deletes
// (blockdev-del) every block node whose node name starts with prefix.
// Everything is bounded by ctx: jobs still listed when ctx ends are
// ErrTimeout, and the nodes are then left alone. A node QEMU refuses to
// delete (one that something else uses) fails the call with QEMU's
// errors, after the others were deleted. Dirty bitmaps are not touched:
// a stale capture's NewBitmap stays until the caller removes it.
// An empty prefix is refused.
//
// A daemon calls it for each local VM when it starts, with prefix
// CapturePrefix, before anything else touches the VM (only ThawIfFrozen,
// which thaws a guest that the dead daemon left frozen, comes first):
// every capture that was in progress is half-written and discarded, so
// none of its jobs or targets is needed. It then removes (ListBitmaps,
// RemoveBitmaps)
// every bitmap named "twinsnap-<snapshot id>" that no kept snapshot owns
// (the NewBitmap of a capture that did not complete records the writes
// since a point in time that nothing kept has), and every inconsistent
// one (QEMU stopped without storing it: Capture refuses it, and the next
// capture of that volume is full).
func CleanupStale(ctx context.Context, q QMP, prefix string) (CleanupReport, error) {
	start := time.Now()
	var rep CleanupReport
	if prefix == "" {
		return rep, errors.New("hypervisor: cleanup: empty prefix (it would match every job and node)")
	}
	err := cleanupJobs(ctx, q, prefix, &rep)
	if err == nil {
		err = cleanupNodes(ctx, q, prefix, &rep)
	}
	rep.Duration = time.Since(start)
	if err != nil {
		return rep, fmt.Errorf("hypervisor: cleanup %s*: %w", prefix, err)
	}
	return rep, nil
}

// cleanupJobs cancels and dismisses the jobs with the prefix until QEMU
// lists none, woken by their status changes or every cleanupPoll.
func cleanupJobs(ctx context.Context, q QMP, prefix string, rep *CleanupReport) error {
	events, stop := q.Subscribe(func(ev Event) bool {
		if ev.Name == EventsLost {
			return true
		}
		var d struct {
			ID string `json:"id"`
		}
		return ev.Name == "JOB_STATUS_CHANGE" && json.Unmarshal(ev.Data, &d) == nil && strings.HasPrefix(d.ID, prefix)
	})
	defer stop()
	tick := time.NewTicker(cleanupPoll)
	defer tick.Stop()
	cancelled := map[string]bool{}
	// listed says which jobs are still there when ctx ends.
	listed := func(mine []JobInfo) string {
		ids := make([]string, len(mine))
		for i, j := range mine {
			ids[i] = j.ID + " (" + j.Status + ")"
		}
		return strings.Join(ids, ", ")
	}
	var mine []JobInfo
	for first := true; ; first = false {
		jobs, err := QueryJobs(ctx, q)
		switch {
		case errors.Is(err, ErrTimeout) && len(mine) > 0:
			return fmt.Errorf("%w: jobs still listed: %s: %w", ErrTimeout, listed(mine), err)
		case err != nil:
			return err
		}
		mine = mine[:0]
		for _, j := range jobs {
			if strings.HasPrefix(j.ID, prefix) {
				mine = append(mine, j)
			}
		}
		if first {
			rep.Jobs = slices.Clone(mine)
		}
		if len(mine) == 0 {
			return nil
		}
		for _, j := range mine {
			var verb string
			switch j.Status {
			case "concluded":
				verb = "job-dismiss"
			case "aborting", "null", "undefined":
				continue // on its way out
			default:
				if cancelled[j.ID] {
					continue
				}
				verb = "job-cancel"
			}
			err := q.Execute(ctx, verb, map[string]any{"id": j.ID}, nil)
			var qe *QMPError
			switch {
			case errors.As(err, &qe):
				// It moved on meanwhile (ended, or was dismissed by
				// another client): the next reading says what next.
			case errors.Is(err, ErrTimeout):
				return fmt.Errorf("%w: jobs still listed: %s: %w", ErrTimeout, listed(mine), err)
			case err != nil:
				return fmt.Errorf("%s %s: %w", verb, j.ID, err)
			case verb == "job-dismiss":
				rep.Dismissed = append(rep.Dismissed, j.ID)
			default:
				cancelled[j.ID] = true
				rep.Cancelled = append(rep.Cancelled, j.ID)
			}
		}
		select {
		case _, ok := <-events:
			if !ok {
				return fmt.Errorf("%w: waiting for jobs to end: the event stream ended", ErrClosed)
			}
		case <-tick.C:
		case <-ctx.Done():
			return fmt.Errorf("%w: jobs still listed: %s: %w", ErrTimeout, listed(mine), ctx.Err())
		}
	}
}

// cleanupNodes deletes the block nodes with the prefix, in name order (a
// target before its "-file" child, which goes with it), reading the nodes
// again after each deletion. A node QEMU refuses is tried again only once
// another deletion succeeded.
func cleanupNodes(ctx context.Context, q QMP, prefix string, rep *CleanupReport) error {
	refused := map[string]error{}
	for {
		nodes, err := namedNodes(ctx, q)
		if err != nil {
			return err
		}
		var mine []string
		for _, n := range nodes {
			if strings.HasPrefix(n.NodeName, prefix) {
				mine = append(mine, n.NodeName)
			}
		}
		slices.Sort(mine)
		next := slices.IndexFunc(mine, func(n string) bool { return refused[n] == nil })
		if next < 0 {
			var errs []error
			for _, n := range mine {
				errs = append(errs, refused[n])
			}
			if len(errs) > 0 {
				return fmt.Errorf("%d block nodes remain: %w", len(errs), errors.Join(errs...))
			}
			return nil
		}
		n := mine[next]
		err = BlockdevDel(ctx, q, n)
		var qe *QMPError
		switch {
		case errors.As(err, &qe):
			refused[n] = err
		case err != nil:
			return err
		default:
			rep.Nodes = append(rep.Nodes, n)
			clear(refused)
		}
	}
}

// namedNodes returns QEMU's block nodes (query-named-block-nodes, flat).
func namedNodes(ctx context.Context, q QMP) ([]qBlockDevice, error) {
	var nodes []qBlockDevice
	if err := q.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		return nil, fmt.Errorf("hypervisor: block nodes: %w", err)
	}
	return nodes, nil
}

// ListBitmaps returns the dirty bitmaps of every block node that has
// any, by node name (query-named-block-nodes): for a disk, its format
// node (BlockDevice.NodeName).
func ListBitmaps(ctx context.Context, q QMP) (map[string][]DirtyBitmap, error) {
	nodes, err := namedNodes(ctx, q)
	if err != nil {
		return nil, err
	}
	out := map[string][]DirtyBitmap{}
	for _, n := range nodes {
		if len(n.Bitmaps) > 0 {
			out[n.NodeName] = append(out[n.NodeName], n.Bitmaps...)
		}
	}
	return out, nil
}

// RemoveBitmaps removes the named dirty bitmaps of node (from its image
// too, for persistent ones) in one transaction of
// block-dirty-bitmap-remove actions: all of them or none. Names the node
// does not have are ignored; a node QEMU does not list is ErrNotFound. A
// bitmap that a job is using makes QEMU refuse the whole transaction:
// that error wraps ErrBitmapInvalid and QEMU's *QMPError.
func RemoveBitmaps(ctx context.Context, q QMP, node string, names []string) error {
	const attempts = 3
	for attempt := 1; ; attempt++ {
		present, _, err := bitmapsPresent(ctx, q, node, names)
		if err != nil {
			return err
		}
		if len(present) == 0 {
			return nil
		}
		actions := make([]Action, len(present))
		for i, name := range present {
			actions[i] = BitmapRemove(node, name)
		}
		err = Transaction(ctx, q, actions, nil)
		if err == nil {
			return nil
		}
		err = fmt.Errorf("hypervisor: removing bitmaps %v of %s: %w", present, node, err)
		var qe *QMPError
		if !errors.As(err, &qe) {
			return err
		}
		// Refused: one may have gone meanwhile (then try again without
		// it), or be busy.
		now, busy, lerr := bitmapsPresent(ctx, q, node, present)
		switch {
		case lerr != nil:
			return errors.Join(err, lerr)
		case len(now) < len(present) && attempt < attempts:
			continue
		case len(busy) > 0:
			return fmt.Errorf("%w: %v in use by a job: %w", ErrBitmapInvalid, busy, err)
		}
		return err
	}
}

// bitmapsPresent returns which of names node has (each once, in the
// order of names), and which of those are busy.
func bitmapsPresent(ctx context.Context, q QMP, node string, names []string) (present, busy []string, err error) {
	nodes, err := namedNodes(ctx, q)
	if err != nil {
		return nil, nil, err
	}
	i := slices.IndexFunc(nodes, func(n qBlockDevice) bool { return n.NodeName == node })
	if i < 0 {
		return nil, nil, fmt.Errorf("%w: block node %q", ErrNotFound, node)
	}
	for _, name := range names {
		bm := findBitmap(nodes[i].Bitmaps, name)
		if bm == nil || slices.Contains(present, name) {
			continue
		}
		present = append(present, name)
		if bm.Busy {
			busy = append(busy, name)
		}
	}
	return present, busy, nil
}
