package hypervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// JobInfo is one job as query-jobs reports it.
type JobInfo struct {
	ID   string `json:"id"`
	Type string `json:"type"`
	// Status is QEMU's JobStatus: created, running, paused, ready,
	// standby, waiting, pending, aborting, concluded, undefined, null.
	Status          string `json:"status"`
	CurrentProgress int64  `json:"current-progress"`
	TotalProgress   int64  `json:"total-progress"`
	// Error is set once a job has failed or was cancelled ("Operation
	// canceled").
	Error string `json:"error,omitempty"`
}

// JobResult is how a job ended.
type JobResult struct {
	ID   string
	Type string
	// Error is QEMU's error message for a failed or cancelled job; empty
	// on success.
	Error string
	// Cancelled reports a job ended by job-cancel or block-job-cancel.
	Cancelled bool
	// CurrentProgress and TotalProgress are the job's last progress
	// (bytes, for a backup job).
	CurrentProgress, TotalProgress int64
}

// jobGoneGrace bounds the wait for a job's queued events once query-jobs
// no longer lists it (it concluded and was dismissed, automatically or by
// another client): the events QEMU sent before that reply are already in
// the subscription's queue, so they arrive at once.
const jobGoneGrace = 2 * time.Second

// QueryJobs returns QEMU's jobs (query-jobs).
func QueryJobs(ctx context.Context, q QMP) ([]JobInfo, error) {
	var jobs []JobInfo
	if err := q.Execute(ctx, "query-jobs", nil, &jobs); err != nil {
		return nil, fmt.Errorf("hypervisor: query-jobs: %w", err)
	}
	return jobs, nil
}

// SetJobSpeed changes a block job's rate limit, in bytes per second (zero:
// unlimited). An unknown job is ErrNotFound (wrapping QEMU's
// DeviceNotActive error).
func SetJobSpeed(ctx context.Context, q QMP, jobID string, bytesPerSec int64) error {
	err := q.Execute(ctx, "block-job-set-speed", map[string]any{"device": jobID, "speed": bytesPerSec}, nil)
	return jobErr("block-job-set-speed", jobID, err)
}

// CancelJob cancels a block job (block-job-cancel). The job then ends
// with an error, which its JobWatch reports. An unknown job is
// ErrNotFound (wrapping QEMU's DeviceNotActive error).
func CancelJob(ctx context.Context, q QMP, jobID string) error {
	err := q.Execute(ctx, "block-job-cancel", map[string]any{"device": jobID}, nil)
	return jobErr("block-job-cancel", jobID, err)
}

// jobErr wraps a block-job command's error, adding ErrNotFound to QEMU's
// class for an unknown job.
func jobErr(cmd, jobID string, err error) error {
	var qe *QMPError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &qe) && qe.Class == "DeviceNotActive":
		return fmt.Errorf("%w: job %s: %w", ErrNotFound, jobID, err)
	default:
		return fmt.Errorf("hypervisor: %s %s: %w", cmd, jobID, err)
	}
}

// JobWatch follows one job by its id: JOB_STATUS_CHANGE events for that
// id only, and the BLOCK_JOB_COMPLETED and BLOCK_JOB_CANCELLED events of
// the block job of that id. Create it before the command that starts the
// job (QEMU emits the job's first events before it replies), then Wait.
type JobWatch struct {
	q      QMP
	id     string
	events <-chan Event
	cancel func()
	// late is set for a watch created after the job started (WaitJob):
	// it cannot count on seeing the job's events.
	late bool
}

// WatchJob starts following the job jobID. Call Wait, or Close if the job
// was never started.
func WatchJob(q QMP, jobID string) *JobWatch {
	events, cancel := q.Subscribe(func(ev Event) bool { return isJobEvent(ev, jobID) })
	return &JobWatch{q: q, id: jobID, events: events, cancel: cancel}
}

// WaitJob follows a job that is already running, until it ends (see
// JobWatch.Wait). Events the job emitted before the call are not seen;
// its state is read with query-jobs.
func WaitJob(ctx context.Context, q QMP, jobID string) (JobResult, error) {
	w := WatchJob(q, jobID)
	w.late = true
	return w.Wait(ctx)
}

// Close stops following the job (the job itself goes on).
func (w *JobWatch) Close() { w.cancel() }

// isJobEvent reports whether ev is about the job id.
func isJobEvent(ev Event, id string) bool {
	var d struct {
		ID     string `json:"id"`
		Device string `json:"device"`
	}
	switch ev.Name {
	case EventsLost:
		return true
	case "JOB_STATUS_CHANGE":
		return json.Unmarshal(ev.Data, &d) == nil && d.ID == id
	case "BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED":
		return json.Unmarshal(ev.Data, &d) == nil && d.Device == id
	}
	return false
}

// jobState is what Wait has learned about its job.
type jobState struct {
	res JobResult
	// ended is set by BLOCK_JOB_COMPLETED or BLOCK_JOB_CANCELLED: the
	// outcome is known even if the job is dismissed.
	ended bool
	// gone is set when query-jobs no longer lists the job.
	gone bool
	// queried is set when query-jobs found the job concluded, and
	// seenConcluded when its concluded (or null) status event was read.
	queried, seenConcluded bool
}

// Wait follows the job until it ends, bounded by ctx, and closes the
// watch. It finalizes a job that waits in "pending" (auto-finalize false)
// and dismisses a job that stays "concluded" (auto-dismiss false). The
// outcome comes from query-jobs for a job that stays concluded, and from
// BLOCK_JOB_COMPLETED or BLOCK_JOB_CANCELLED for one that QEMU dismissed
// itself. A failed or cancelled job is ErrJobFailed with QEMU's message;
// a job that query-jobs does not list and whose end was not seen is
// ErrNotFound. When events are lost (EventsLost) Wait re-reads the job
// with query-jobs; a job with auto-dismiss whose end was among the lost
// events ends as ErrNotFound, so prefer autoDismiss false.
func (w *JobWatch) Wait(ctx context.Context) (JobResult, error) {
	defer w.Close()
	st := &jobState{res: JobResult{ID: w.id}}
	done, err := w.check(ctx, st)
	var graceTimer *time.Timer
	defer func() {
		if graceTimer != nil {
			graceTimer.Stop()
		}
	}()
	for !done && err == nil {
		var grace <-chan time.Time
		switch {
		case st.gone && graceTimer == nil:
			graceTimer = time.NewTimer(jobGoneGrace)
			grace = graceTimer.C
		case st.gone:
			grace = graceTimer.C
		case graceTimer != nil:
			graceTimer.Stop()
			graceTimer = nil
		}
		select {
		case ev, ok := <-w.events:
			if !ok {
				return st.res, fmt.Errorf("%w: waiting for job %s: the event stream ended", ErrClosed, w.id)
			}
			done, err = w.onEvent(ctx, st, ev)
		case <-grace:
			done = true
		case <-ctx.Done():
			return st.res, fmt.Errorf("%w: waiting for job %s: %w", ErrTimeout, w.id, ctx.Err())
		}
	}
	if err != nil {
		return st.res, err
	}
	if st.queried && !st.seenConcluded && !w.late {
		w.drain(ctx, st)
	}
	return st.res, w.outcome(st)
}

// drain reads the job's events up to its concluded status, when
// query-jobs found it concluded before Wait read that far: the events
// before it (BLOCK_JOB_CANCELLED) tell what the query does not. They are
// queued already, so this takes no time; it gives up after jobGoneGrace
// (the events were lost) or when ctx ends.
func (w *JobWatch) drain(ctx context.Context, st *jobState) {
	t := time.NewTimer(jobGoneGrace)
	defer t.Stop()
	for !st.seenConcluded {
		select {
		case ev, ok := <-w.events:
			if !ok || ev.Name == EventsLost {
				return
			}
			w.note(st, ev)
		case <-t.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// onEvent advances the state with one event and reports whether the job
// has ended.
func (w *JobWatch) onEvent(ctx context.Context, st *jobState, ev Event) (bool, error) {
	if ev.Name == EventsLost {
		return w.check(ctx, st)
	}
	switch w.note(st, ev) {
	case "ended":
		return st.gone, nil
	case "pending", "concluded", "null":
		// What to do depends on the job's auto settings, which QEMU
		// applies before it reads our next command: ask.
		return w.check(ctx, st)
	}
	return false, nil
}

// note records what an event says about the job: its end
// (BLOCK_JOB_COMPLETED or BLOCK_JOB_CANCELLED; returns "ended") or its
// new status (JOB_STATUS_CHANGE; returns the status). The events are
// QEMU's, checked to be objects, so malformed data is ignored.
func (w *JobWatch) note(st *jobState, ev Event) string {
	switch ev.Name {
	case "BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED":
		var d struct {
			Type   string `json:"type"`
			Len    int64  `json:"len"`
			Offset int64  `json:"offset"`
			Error  string `json:"error"`
		}
		_ = json.Unmarshal(ev.Data, &d)
		st.ended = true
		st.res.Type, st.res.CurrentProgress, st.res.TotalProgress = d.Type, d.Offset, d.Len
		if ev.Name == "BLOCK_JOB_CANCELLED" {
			st.res.Cancelled = true
			if st.res.Error == "" {
				st.res.Error = "Operation canceled"
			}
		} else if d.Error != "" {
			st.res.Error = d.Error
		}
		return "ended"
	case "JOB_STATUS_CHANGE":
		var d struct {
			Status string `json:"status"`
		}
		_ = json.Unmarshal(ev.Data, &d)
		if d.Status == "concluded" || d.Status == "null" {
			st.seenConcluded = true
		}
		return d.Status
	}
	return ""
}

// check reads the job with query-jobs and acts on its status: finalize a
// job left pending, dismiss a job left concluded. It reports whether the
// job has ended.
func (w *JobWatch) check(ctx context.Context, st *jobState) (bool, error) {
	jobs, err := QueryJobs(ctx, w.q)
	if err != nil {
		return true, fmt.Errorf("waiting for job %s: %w", w.id, err)
	}
	var info *JobInfo
	for i := range jobs {
		if jobs[i].ID == w.id {
			info = &jobs[i]
		}
	}
	if info == nil {
		// Concluded and dismissed: the outcome is in the events, if
		// they were seen (or are still queued: see jobGoneGrace).
		st.gone = true
		return st.ended, nil
	}
	st.gone = false
	st.res.Type, st.res.CurrentProgress, st.res.TotalProgress = info.Type, info.CurrentProgress, info.TotalProgress
	switch info.Status {
	case "pending":
		err := w.q.Execute(ctx, "job-finalize", map[string]any{"id": w.id}, nil)
		var qe *QMPError
		if errors.As(err, &qe) {
			// It moved on meanwhile (another client finalized it):
			// its next status change says what next.
			return false, nil
		}
		if err != nil {
			return true, fmt.Errorf("hypervisor: job-finalize %s: %w", w.id, err)
		}
		return false, nil
	case "concluded":
		if info.Error != "" {
			st.res.Error = info.Error
		}
		st.ended, st.queried = true, true
		err := w.q.Execute(ctx, "job-dismiss", map[string]any{"id": w.id}, nil)
		var qe *QMPError
		if err != nil && !errors.As(err, &qe) {
			return true, fmt.Errorf("hypervisor: job-dismiss %s: %w", w.id, err)
		}
		// A QMP error means another client dismissed it first; the
		// outcome is known either way.
		return true, nil
	}
	return false, nil
}

// outcome turns the final state into Wait's error.
func (w *JobWatch) outcome(st *jobState) error {
	switch {
	case !st.ended:
		return fmt.Errorf("%w: job %s is not listed by query-jobs and its end was not seen (it ended and was dismissed before it was watched, or its events were lost)", ErrNotFound, w.id)
	case st.res.Cancelled:
		return fmt.Errorf("%w: job %s was cancelled: %s", ErrJobFailed, w.id, st.res.Error)
	case st.res.Error != "":
		return fmt.Errorf("%w: job %s: %s", ErrJobFailed, w.id, st.res.Error)
	}
	return nil
}
