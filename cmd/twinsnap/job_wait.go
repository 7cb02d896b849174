package main

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/twinsnap/twinsnap/internal/api"
)

// defaultJobWaitTimeout is --timeout's default for a command that waits
// for an export or import job: a job bounded by a maintenance window
// pauses at the window's end and goes on in the next one, so a wait spans
// days' windows as often as minutes.
const defaultJobWaitTimeout = 24 * time.Hour

// The job kinds and states as the API has them (internal/api names no
// constants for them).
const (
	jobKindExport = "export"
	jobKindImport = "import"

	jobQueued    = "queued"
	jobRunning   = "running"
	jobPaused    = "paused"
	jobDone      = "done"
	jobFailed    = "failed"
	jobCancelled = "cancelled"
)

// jobKinds and jobStates are what --kind and --state take.
var (
	jobKinds  = []string{jobKindExport, jobKindImport}
	jobStates = []string{jobQueued, jobRunning, jobPaused, jobDone, jobFailed, jobCancelled}
)

// hintJobList is the hint for a job that does not exist.
const hintJobList = "list the jobs with 'twinsnap job list'"

// jobGetter is what waiting for a job needs from the API client.
type jobGetter interface {
	Job(ctx context.Context, id string) (*api.Job, error)
}

var _ jobGetter = (*api.Client)(nil)

// jobEnded reports whether a job is in a final state.
func jobEnded(j *api.Job) bool {
	return j.State == jobDone || j.State == jobFailed || j.State == jobCancelled
}

// waitJob asks for the job last every interval until it has ended, and
// returns the last job seen; see pollUntil for update and the errors.
func waitJob(ctx context.Context, c jobGetter, last *api.Job, interval time.Duration, update func(*api.Job, error)) (*api.Job, error) {
	id := last.ID
	get := func(ctx context.Context) (*api.Job, error) { return c.Job(ctx, id) }
	return pollUntil(ctx, last, interval, get, jobEnded, update)
}

// jobWaitOptions say how a command that waits for a job prints.
type jobWaitOptions struct {
	output    outputFormat
	outputSet bool // --output was given
}

// followJob waits for job j with the live display on a terminal, then
// prints the job as last seen: in --output's format, or, when --output
// was not given, as a table on a terminal and as JSON elsewhere. A job
// that failed or was cancelled is errFailed; a wait ended by --timeout or
// by parent (Ctrl-C) is errWaitEnded. ctx bounds the whole wait.
func followJob(parent, ctx context.Context, g *globalOptions, c jobGetter, j *api.Job, opts jobWaitOptions) error {
	if j.ID == "" {
		return fmt.Errorf("%w: the server accepted the job but named no id", api.ErrInternal)
	}
	last := j
	var werr error
	if !jobEnded(j) {
		disp := g.newJobDisplay()
		disp.header(fmt.Sprintf("%s is %s; waiting until it ends (Ctrl-C stops waiting, the job goes on).", jobTitle(j), j.State))
		disp.update(j, nil)
		last, werr = waitJob(ctx, c, j, g.env.interval(), disp.update)
		disp.clear()
	}
	format := opts.output
	if _, terminal := g.env.terminalWidth(); !opts.outputSet && !terminal {
		format = formatJSON
	}
	if err := printOutput(g.env.stdout, format, last, g.printJobTable); err != nil {
		return err
	}
	if werr != nil {
		return jobWaitEndedError(parent, g, werr, last)
	}
	switch last.State {
	case jobFailed:
		return withHint(markf(errFailed, "%s failed: %s", jobTitle(last), orDash(last.Error)),
			fmt.Sprintf("see 'twinsnap job show %s'; the log of twinsnapd on %s says more; start a new %s when the cause is dealt with",
				last.ID, orDash(last.Node), orDash(last.Kind)))
	case jobCancelled:
		return withHint(markf(errFailed, "%s was cancelled", jobTitle(last)),
			fmt.Sprintf("see 'twinsnap job show %s'", last.ID))
	}
	return nil
}

// jobWaitEndedError explains why a wait ended before the job did: the
// interrupt (parent ended), --timeout, or an error from the API that ends
// polling.
func jobWaitEndedError(parent context.Context, g *globalOptions, err error, last *api.Job) error {
	hint := fmt.Sprintf("follow it with 'twinsnap job wait %s' or 'twinsnap job show %s'", last.ID, last.ID)
	var stalled string
	var sw *stalledWait
	if errors.As(err, &sw) {
		stalled = " (the last poll failed: " + sw.pollErr.Error() + ")"
	}
	switch {
	case parent.Err() != nil:
		return withHint(markf(errWaitEnded, "stopped waiting for job %s (interrupted): it is %s and goes on%s",
			last.ID, last.State, stalled), hint)
	case errors.Is(err, context.DeadlineExceeded):
		return withHint(markf(errWaitEnded, "stopped waiting for job %s after --timeout %s: it is %s and goes on%s",
			last.ID, g.timeout, last.State, stalled), hint+", or wait longer with a larger --timeout")
	case errors.Is(err, api.ErrNotFound):
		return withHint(fmt.Errorf("waiting for job %s: %w", last.ID, err), hintJobList)
	}
	return withHint(fmt.Errorf("waiting for job %s: %w", last.ID, err), hint)
}

// jobTitle names a job in a sentence: "Export job J of snapshot S to
// backup:nightly/P.ova", "Import job J of backup:nightly/P.ova as VM N".
func jobTitle(j *api.Job) string {
	switch j.Kind {
	case jobKindExport:
		return fmt.Sprintf("Export job %s of snapshot %s to %s", j.ID, orDash(j.SnapshotID), exportTarget(j))
	case jobKindImport:
		return fmt.Sprintf("Import job %s of %s as VM %s", j.ID, importSource(j), orDash(j.VMName))
	}
	return fmt.Sprintf("Job %s (%s)", j.ID, orDash(j.Kind))
}

// jobWhat is what a job moves, for a table: "snap→share:dir/P" or
// "share:path→vm".
func jobWhat(j *api.Job) string {
	switch j.Kind {
	case jobKindExport:
		return orDash(j.SnapshotID) + "→" + exportTarget(j)
	case jobKindImport:
		return importSource(j) + "→" + orDash(j.VMName)
	}
	return "-"
}

// exportTarget is where an export writes: "share:dir/P" for a directory
// package, "share:dir/P.ova" for an archive ("share:dir" while the
// package has no name).
func exportTarget(j *api.Job) string {
	name := j.Package
	if name != "" && j.OVA {
		name += ".ova"
	}
	p := path.Join(j.Dir, name)
	if p == "." {
		p = ""
	}
	return orDash(j.Share) + ":" + p
}

// exportPackagePath is the path an import of an export's package takes:
// "dir/P/P.ovf", or "dir/P.ova"; "" while the package has no name.
func exportPackagePath(j *api.Job) string {
	switch {
	case j.Package == "":
		return ""
	case j.OVA:
		return path.Join(j.Dir, j.Package+".ova")
	}
	return path.Join(j.Dir, j.Package, j.Package+".ovf")
}

// importSource is what an import reads: "share:path".
func importSource(j *api.Job) string {
	return orDash(j.Share) + ":" + j.Path
}

// jobBytes shows a job's progress: "1 GiB / 4 GiB (25%)", the bytes
// alone when the total is not known, "-" before anything moved.
func jobBytes(j *api.Job) string {
	switch {
	case j.TotalBytes > 0:
		return fmt.Sprintf("%s / %s (%d%%)", formatIEC(j.Bytes), formatIEC(j.TotalBytes), percent(j.Bytes, j.TotalBytes))
	case j.Bytes > 0:
		return formatIEC(j.Bytes)
	}
	return "-"
}

// jobDisplay is the text printer of a job wait: a live line on a
// terminal, nothing elsewhere.
type jobDisplay struct {
	liveLine
	now   func() time.Time
	meter progressMeter
}

// newJobDisplay returns a display on stdout, on if stdout is a terminal.
func (g *globalOptions) newJobDisplay() *jobDisplay {
	return &jobDisplay{liveLine: g.newLiveLine(), now: time.Now}
}

// update is the wait's callback: it counts j's bytes and redraws the
// line; pollErr is a failed poll being retried.
func (d *jobDisplay) update(j *api.Job, pollErr error) {
	if pollErr == nil {
		at := j.UpdatedAt
		if at.IsZero() {
			at = d.now()
		}
		// A pause, or a new total, starts the rate afresh.
		d.meter.add(j.State+"\x00"+fmt.Sprint(j.TotalBytes), j.Bytes, at)
	}
	line := jobProgressLine(j, d.meter.rate(), pollErr, true)
	if w, _ := d.width(); w > 1 && utf8.RuneCountInString(line) >= w {
		// A narrow terminal: the numbers matter more than the bar.
		line = jobProgressLine(j, d.meter.rate(), pollErr, false)
	}
	d.draw(line)
}

// jobProgressLine is the text of the job display: a bar (with bar) when
// the total is known, bytes done and total, percent, then while running
// the rate (the job's own, else measured from the bytes seen) and the
// ETA, the state (while paused with the reason and the window instead of
// an ETA; while running with a reason if the node gives one), the file at
// hand, and a failing poll.
func jobProgressLine(j *api.Job, measured float64, pollErr error, bar bool) string {
	var parts []string
	if j.TotalBytes > 0 {
		if bar {
			parts = append(parts, progressBar(j.Bytes, j.TotalBytes))
		}
		parts = append(parts, formatIEC(j.Bytes)+" / "+formatIEC(j.TotalBytes), fmt.Sprintf("%d%%", percent(j.Bytes, j.TotalBytes)))
	} else {
		parts = append(parts, formatIEC(j.Bytes))
	}
	state := j.State
	switch j.State {
	case jobRunning:
		rate := float64(j.Rate)
		if rate <= 0 {
			rate = measured
		}
		if rate > 0 {
			parts = append(parts, formatRate(rate))
			if eta := formatETA(j.TotalBytes-j.Bytes, rate); eta != "" {
				parts = append(parts, eta)
			}
		}
	case jobPaused:
		if j.Reason != "" {
			state += ": " + j.Reason
		}
		if j.Window != "" {
			state += " (window " + j.Window + ")"
		}
	case jobFailed:
		if j.Error != "" {
			state += ": " + j.Error
		}
	}
	if j.State == jobRunning && j.Reason != "" {
		state += " (" + j.Reason + ")"
	}
	parts = append(parts, state)
	if j.File != "" && !jobEnded(j) {
		parts = append(parts, j.File)
	}
	if pollErr != nil {
		parts = append(parts, "(retrying: "+pollErr.Error()+")")
	}
	return strings.Join(parts, "  ")
}
