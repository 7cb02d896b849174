package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/twinsnap/twinsnap/internal/api"
)

// exportFormats are the disk formats --format takes.
var exportFormats = []string{"qcow2", "vmdk"}

// snapshotExportOptions are the flags and argument of "snapshot export".
type snapshotExportOptions struct {
	snapshot string
	share    string
	dir      string
	pkg      string
	format   string
	ova      bool
	volumes  []string
	node     string
	transfer transferOptions
	wait     bool
	jobWaitOptions
}

// newSnapshotExportCommand returns "twinsnap snapshot export SNAPSHOT".
func newSnapshotExportCommand(g *globalOptions) *cobra.Command {
	var opts snapshotExportOptions
	cmd := &cobra.Command{
		Use:   "export SNAPSHOT --share NAME",
		Short: "Export a complete snapshot as an OVF package to a share",
		Long: `Export a complete snapshot as an OVF package to a registered share (see
'twinsnap share add'): the descriptor, one disk per volume and a SHA-256
manifest, in the directory --dir of the share, as the directory P/ or, with
--ova, the one file P.ova, where P is --package (default
<vm>-<snapshot name>-<time>). The package appears under its name only once
it is whole. Disks are qcow2 (default; for twinsnap and other QEMU systems)
or streamOptimized VMDK (--format vmdk; for other hypervisors). --volumes
limits the export to some of the snapshot's volumes.

--window limits the transfer to a daily maintenance window in --tz (default
UTC) on --days (default every day): the export pauses at the window's end
and goes on where it stopped in the next one. --bwlimit caps its rate.
--node picks the data node that reads the snapshot (default: one with a
verified replica).

Without --wait it prints the job as accepted, in state queued; follow it
with 'twinsnap job list', 'twinsnap job show' or 'twinsnap job wait'. With
--wait it follows the job until it is done (exit 0), failed or cancelled
(exit 1, with the error); --timeout then bounds the whole wait and
defaults to 24h, as an export may span several windows. On a terminal a
progress line is redrawn meanwhile: a bar, bytes done and total, percent,
rate, ETA and state (while paused: why, and the window); otherwise nothing
is printed until the end, then the job as JSON (as a table with
--output table). When --timeout ends the wait, or on Ctrl-C, the command
stops waiting and exits 8; the export goes on.

An unknown snapshot or share exits 5; a snapshot that is not complete
exits 6; the server's validation (an unknown volume, a window or time zone
it cannot read) exits 10.`,
		Example: `  twinsnap snapshot export snap-5f2a --share backup --dir nightly
  twinsnap snapshot export snap-5f2a --share backup --format vmdk --ova --package web1-for-vmware
  twinsnap snapshot export snap-5f2a --share backup --window 22:00-04:00 --days mon-fri --tz Europe/Berlin --bwlimit 50MiB/s --wait`,
		Args: exactArgs("SNAPSHOT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.snapshot = args[0]
			opts.outputSet = cmd.Flags().Changed("output")
			return runSnapshotExport(cmd.Context(), g, opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.share, "share", "", "the share to write to, by name (required; see 'twinsnap share list')")
	f.StringVar(&opts.dir, "dir", "", "directory within the share (default: the share's top)")
	f.StringVar(&opts.pkg, "package", "", "the package's name P (default <vm>-<snapshot name>-<time>)")
	f.StringVar(&opts.format, "format", "", "disk format: qcow2 or vmdk (streamOptimized) (default qcow2)")
	f.BoolVar(&opts.ova, "ova", false, "write one P.ova archive instead of a directory")
	f.StringSliceVar(&opts.volumes, "volumes", nil, "volumes to export, by name, comma-separated (default all of the snapshot's)")
	f.StringVar(&opts.node, "node", "", "data node that runs the export (default: one with a verified replica)")
	addTransferFlags(f, &opts.transfer, "export")
	f.BoolVar(&opts.wait, "wait", false, "wait until the export is done, failed or cancelled (--timeout bounds the wait, default 24h)")
	_ = cmd.RegisterFlagCompletionFunc("format", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return exportFormats, cobra.ShellCompDirectiveNoFileComp
	})
	addOutputFlag(cmd, &opts.output)
	return cmd
}

// request checks the flags and returns the export they ask for. What is
// not given is left to the server's defaults.
func (o snapshotExportOptions) request() (api.ExportRequest, error) {
	var req api.ExportRequest
	switch {
	case o.snapshot == "":
		return req, usagef("the snapshot ID is empty")
	case o.share == "":
		return req, usagef("--share is required: the share to write to (see 'twinsnap share list')")
	case o.format != "" && o.format != "qcow2" && o.format != "vmdk":
		return req, usagef("--format %q is not qcow2 or vmdk", o.format)
	}
	if err := checkVolumeNames(o.volumes); err != nil {
		return req, err
	}
	limits, err := o.transfer.limits()
	if err != nil {
		return req, err
	}
	return api.ExportRequest{
		Share: o.share, Dir: o.dir, Package: o.pkg, Format: o.format, OVA: o.ova, Volumes: o.volumes,
		Window: limits.window, Days: limits.days, Location: limits.location, BandwidthBytes: limits.bandwidthBytes,
		Node: o.node,
	}, nil
}

// runSnapshotExport starts an export job and, with --wait, follows it.
func runSnapshotExport(ctx context.Context, g *globalOptions, opts snapshotExportOptions) error {
	req, err := opts.request()
	if err != nil {
		return err
	}
	if opts.wait {
		g.defaultTimeout(defaultJobWaitTimeout)
	}
	parent := ctx
	ctx, c, done, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer done()
	callCtx, cancel := callContext(ctx, opts.wait)
	job, err := c.ExportSnapshot(callCtx, opts.snapshot, req)
	err = writeOutcome(callCtx, err)
	cancel()
	if err != nil {
		err = fmt.Errorf("exporting snapshot %s to share %s: %w", opts.snapshot, opts.share, err)
		switch {
		case errors.Is(err, api.ErrUnknownResult):
			return withHint(err, "see whether the export was started with 'twinsnap job list --kind export' before retrying")
		case errors.Is(err, api.ErrNotFound):
			return withHint(err, "check the snapshot ('twinsnap snapshot list') and the share ('twinsnap share list')")
		case errors.Is(err, api.ErrConflict):
			return withHint(err, fmt.Sprintf("only a complete snapshot can be exported ('twinsnap snapshot show %s'); the message says what is in the way", opts.snapshot))
		}
		return err
	}
	if !opts.wait {
		return printOutput(g.env.stdout, opts.output, job, g.printJobTable)
	}
	return followJob(parent, ctx, g, c, job, opts.jobWaitOptions)
}
