package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/twinsnap/twinsnap/internal/api"
)

// newJobCommand returns "twinsnap job" and its subcommands.
func newJobCommand(g *globalOptions) *cobra.Command {
	cmd := newGroupCommand("job", "List, show, cancel and wait for export and import jobs")
	cmd.AddCommand(newJobListCommand(g), newJobShowCommand(g), newJobCancelCommand(g), newJobWaitCommand(g))
	return cmd
}

// jobListOptions are the flags of "job list".
type jobListOptions struct {
	kind   string
	state  string
	output outputFormat
}

// newJobListCommand returns "twinsnap job list".
func newJobListCommand(g *globalOptions) *cobra.Command {
	var opts jobListOptions
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List export and import jobs",
		Long: `List export and import jobs, optionally of one kind (--kind export|import)
or in one state (--state queued, running, paused, done, failed or
cancelled).

Columns: id, kind, state, the data node running it, what it moves (an
export: snapshot→share:dir/package, with .ova for an archive; an import:
share:path→new VM), progress (bytes done / total and percent), the last
rate reported, and when the job last changed (local time).`,
		Example: "  twinsnap job list\n  twinsnap job list --kind export --state paused\n  twinsnap job list -o json",
		Args:    exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runJobList(cmd.Context(), g, opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.kind, "kind", "", "only jobs of this kind: export or import")
	f.StringVar(&opts.state, "state", "", "only jobs in this state: "+strings.Join(jobStates, ", "))
	_ = cmd.RegisterFlagCompletionFunc("kind", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return jobKinds, cobra.ShellCompDirectiveNoFileComp
	})
	_ = cmd.RegisterFlagCompletionFunc("state", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return jobStates, cobra.ShellCompDirectiveNoFileComp
	})
	addOutputFlag(cmd, &opts.output)
	return cmd
}

// runJobList prints the jobs.
func runJobList(ctx context.Context, g *globalOptions, opts jobListOptions) error {
	switch {
	case opts.kind != "" && !slices.Contains(jobKinds, opts.kind):
		return usagef("--kind %q is not export or import", opts.kind)
	case opts.state != "" && !slices.Contains(jobStates, opts.state):
		return usagef("--state %q is not one of %s", opts.state, strings.Join(jobStates, ", "))
	}
	ctx, c, done, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer done()
	l, err := c.Jobs(ctx, opts.kind, opts.state)
	if err != nil {
		return fmt.Errorf("listing jobs: %w", err)
	}
	// The server filters; so does this, should it not.
	out := &api.JobList{Jobs: []api.Job{}}
	for _, j := range l.Jobs {
		if (opts.kind == "" || j.Kind == opts.kind) && (opts.state == "" || j.State == opts.state) {
			out.Jobs = append(out.Jobs, j)
		}
	}
	return printOutput(g.env.stdout, opts.output, out, g.printJobListTable)
}

// printJobListTable is the table printer of "job list".
func (g *globalOptions) printJobListTable(b *bytes.Buffer, l *api.JobList) {
	t := newTable(b)
	t.row("ID", "KIND", "STATE", "NODE", "WHAT", "PROGRESS", "RATE", "UPDATED")
	for _, j := range l.Jobs {
		rate := "-"
		if j.Rate > 0 && j.State == jobRunning {
			rate = formatRate(float64(j.Rate))
		}
		t.row(j.ID, orDash(j.Kind), orDash(j.State), orDash(j.Node), sanitizeLine(jobWhat(&j)), jobBytes(&j), rate,
			g.formatTime(j.UpdatedAt))
	}
	t.flush()
}

// jobShowOptions are the flags and argument of "job show".
type jobShowOptions struct {
	id     string
	output outputFormat
}

// newJobShowCommand returns "twinsnap job show ID".
func newJobShowCommand(g *globalOptions) *cobra.Command {
	var opts jobShowOptions
	cmd := &cobra.Command{
		Use:   "show ID",
		Short: "Show a job in detail",
		Long: `Show a job in detail: kind, state (with the reason while paused, the error
once failed), the node running it; for an export the snapshot, share,
directory, package (and the path an import of it takes), disk format and
whether it is an OVA; for an import the share, the package's path and the
new VM; the maintenance window and bandwidth limit; progress, resume
offset, last rate and the file at hand; who created it and when, and when
it last changed. An unknown job exits 5.`,
		Example: "  twinsnap job show job-8d1f\n  twinsnap job show job-8d1f -o json",
		Args:    exactArgs("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.id = args[0]
			return runJobShow(cmd.Context(), g, opts)
		},
	}
	addOutputFlag(cmd, &opts.output)
	return cmd
}

// runJobShow prints one job.
func runJobShow(ctx context.Context, g *globalOptions, opts jobShowOptions) error {
	if opts.id == "" {
		return usagef("the job ID is empty")
	}
	ctx, c, done, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer done()
	j, err := c.Job(ctx, opts.id)
	if err != nil {
		return hintJobNotFound(fmt.Errorf("getting job %s: %w", opts.id, err))
	}
	return printOutput(g.env.stdout, opts.output, j, g.printJobTable)
}

// printJobTable is the table printer of "job show" and of the commands
// that start or wait for a job.
func (g *globalOptions) printJobTable(b *bytes.Buffer, j *api.Job) {
	t := newTable(b)
	row := func(label, value string) { t.row(label, sanitizeLine(value)) }
	row("ID:", j.ID)
	row("Kind:", orDash(j.Kind))
	row("State:", orDash(j.State))
	if j.Reason != "" {
		row("Reason:", j.Reason)
	}
	if j.Error != "" {
		row("Error:", j.Error)
	}
	row("Node:", orDash(j.Node))
	switch j.Kind {
	case jobKindExport:
		row("Snapshot:", orDash(j.SnapshotID))
		row("Share:", orDash(j.Share))
		row("Directory:", orDash(j.Dir))
		pkg := orDash(j.Package)
		if p := exportPackagePath(j); p != "" {
			pkg += " (import with --path " + p + ")"
		}
		row("Package:", pkg)
		row("Format:", orDash(j.Format))
		row("OVA:", yesNo(j.OVA))
	case jobKindImport:
		row("Share:", orDash(j.Share))
		row("Path:", orDash(j.Path))
		vm := orDash(j.VMName)
		if j.VMID != "" {
			vm += " (" + j.VMID + ")"
		}
		row("VM:", vm)
	default:
		// A kind this CLI does not know: show whatever is set.
		for _, kv := range [][2]string{{"Snapshot:", j.SnapshotID}, {"Share:", j.Share}, {"Directory:", j.Dir},
			{"Package:", j.Package}, {"Path:", j.Path}, {"VM:", j.VMName}} {
			if kv[1] != "" {
				row(kv[0], kv[1])
			}
		}
	}
	row("Window:", orDash(j.Window))
	bandwidth := "none"
	if j.BandwidthBytes > 0 {
		bandwidth = formatRate(float64(j.BandwidthBytes))
	}
	row("Bandwidth:", bandwidth)
	row("Progress:", jobBytes(j))
	row("Offset:", bytesOrDash(j.Offset))
	rate := "-"
	if j.Rate > 0 {
		rate = formatRate(float64(j.Rate))
	}
	row("Rate:", rate)
	row("File:", orDash(j.File))
	row("Creator:", orDash(j.Creator))
	row("Created:", g.formatTime(j.CreatedAt))
	row("Updated:", g.formatTime(j.UpdatedAt))
	t.flush()
}

// hintJobNotFound adds the way to find a job's id to a not_found error.
func hintJobNotFound(err error) error {
	if errors.Is(err, api.ErrNotFound) {
		return withHint(err, hintJobList)
	}
	return err
}

// jobCancelOptions are the flags and argument of "job cancel".
type jobCancelOptions struct {
	id     string
	yes    bool
	output outputFormat
}

// newJobCancelCommand returns "twinsnap job cancel ID".
func newJobCancelCommand(g *globalOptions) *cobra.Command {
	var opts jobCancelOptions
	cmd := &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel a job that has not ended",
		Long: `Cancel an export or import job that has not ended. An export's unfinished
package is never left under its final name. A job that has ended already
exits 6; an unknown job exits 5.

On a terminal it shows the job and asks for confirmation unless --yes is
given; when stdin is not a terminal it refuses to run without --yes. It
prints the job as the cancel request returned it.`,
		Example: "  twinsnap job cancel job-8d1f\n  twinsnap job cancel job-8d1f --yes -o json",
		Args:    exactArgs("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.id = args[0]
			return runJobCancel(cmd.Context(), g, opts)
		},
	}
	cmd.Flags().BoolVarP(&opts.yes, "yes", "y", false, "do not ask for confirmation")
	addOutputFlag(cmd, &opts.output)
	return cmd
}

// runJobCancel cancels a job after confirmation.
func runJobCancel(ctx context.Context, g *globalOptions, opts jobCancelOptions) error {
	if opts.id == "" {
		return usagef("the job ID is empty")
	}
	if !opts.yes {
		question := fmt.Sprintf("Cancel job %s?", opts.id)
		if g.env.stdinIsTerminal() {
			// Show what is about to stop; an unknown id ends here.
			j, err := lookupJob(ctx, g, opts.id)
			if err != nil {
				return err
			}
			question = fmt.Sprintf("Cancel %s (%s, %s)?", sanitizeLine(jobTitle(j)), j.State, jobBytes(j))
		}
		if err := confirm(ctx, g.env, question); err != nil {
			return err
		}
	}
	ctx, c, done, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer done()
	j, err := c.CancelJob(ctx, opts.id)
	if err = writeOutcome(ctx, err); err != nil {
		err = fmt.Errorf("cancelling job %s: %w", opts.id, err)
		switch {
		case errors.Is(err, api.ErrUnknownResult):
			return withHint(err, fmt.Sprintf("see the job's state with 'twinsnap job show %s' before retrying", opts.id))
		case errors.Is(err, api.ErrConflict):
			return withHint(err, fmt.Sprintf("only a job that has not ended can be cancelled: see 'twinsnap job show %s'", opts.id))
		}
		return hintJobNotFound(err)
	}
	if j.ID == "" {
		j.ID = opts.id
	}
	return printOutput(g.env.stdout, opts.output, j, func(b *bytes.Buffer, j *api.Job) {
		if j.State == jobCancelled {
			fmt.Fprintf(b, "Cancelled job %s.\n", j.ID)
			return
		}
		fmt.Fprintf(b, "Cancelling job %s: it is %s and stops shortly (see 'twinsnap job wait %s').\n", j.ID, orDash(j.State), j.ID)
	})
}

// lookupJob gets one job within its own --timeout bound.
func lookupJob(ctx context.Context, g *globalOptions, id string) (*api.Job, error) {
	ctx, c, done, err := g.connect(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	j, err := c.Job(ctx, id)
	if err != nil {
		return nil, hintJobNotFound(fmt.Errorf("getting job %s: %w", id, err))
	}
	return j, nil
}

// jobWaitCommandOptions are the flags and argument of "job wait".
type jobWaitCommandOptions struct {
	id string
	jobWaitOptions
}

// newJobWaitCommand returns "twinsnap job wait ID".
func newJobWaitCommand(g *globalOptions) *cobra.Command {
	var opts jobWaitCommandOptions
	cmd := &cobra.Command{
		Use:   "wait ID",
		Short: "Wait until a job ends",
		Long: `Wait until an export or import job ends, as --wait does for 'snapshot
export' and 'import': done exits 0; failed or cancelled exits 1 with the
error. --timeout bounds the wait and defaults to 24h here, as an export
bounded by a maintenance window may span several windows.

On a terminal a progress line is redrawn meanwhile: a bar, bytes done and
total, percent, rate, ETA and state (while paused: why, and the window);
otherwise nothing is printed until the end. Then it prints the job: as a
table on a terminal, as JSON elsewhere, or as --output says. When
--timeout ends the wait, or on Ctrl-C, it stops waiting and exits 8; the
job goes on. An unknown job exits 5.`,
		Example: "  twinsnap job wait job-8d1f\n  twinsnap job wait job-8d1f --timeout 72h > job.json",
		Args:    exactArgs("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.id = args[0]
			opts.outputSet = cmd.Flags().Changed("output")
			return runJobWait(cmd.Context(), g, opts)
		},
	}
	addOutputFlag(cmd, &opts.output)
	return cmd
}

// runJobWait follows a job until it ends.
func runJobWait(ctx context.Context, g *globalOptions, opts jobWaitCommandOptions) error {
	if opts.id == "" {
		return usagef("the job ID is empty")
	}
	g.defaultTimeout(defaultJobWaitTimeout)
	parent := ctx
	ctx, c, done, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer done()
	callCtx, cancel := context.WithTimeout(ctx, callTimeout)
	j, err := c.Job(callCtx, opts.id)
	cancel()
	if err != nil {
		return hintJobNotFound(fmt.Errorf("getting job %s: %w", opts.id, err))
	}
	return followJob(parent, ctx, g, c, j, opts.jobWaitOptions)
}
