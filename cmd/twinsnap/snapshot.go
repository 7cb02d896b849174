package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/twinsnap/twinsnap/internal/api"
)

// defaultWaitTimeout is --timeout's default for a command that waits for
// a snapshot (--wait): capture and replication of large volumes take
// minutes.
const defaultWaitTimeout = 30 * time.Minute

// dataNodes is the number of data nodes, each of which holds a replica of
// a complete snapshot.
const dataNodes = 2

// snapshotStates are the states a snapshot can be in, as --state takes
// them.
var snapshotStates = []string{api.StateCreating, api.StatePartial, api.StateComplete, api.StateDiscarded, api.StateDeleting}

// hintSnapshotList is the hint for a snapshot that does not exist.
const hintSnapshotList = "list the snapshots with 'twinsnap snapshot list'"

// newSnapshotCommand returns "twinsnap snapshot" and its subcommands.
func newSnapshotCommand(g *globalOptions) *cobra.Command {
	cmd := newGroupCommand("snapshot", "Take, list, show, export and delete snapshots of VMs")
	cmd.AddCommand(newSnapshotCreateCommand(g), newSnapshotListCommand(g), newSnapshotShowCommand(g),
		newSnapshotExportCommand(g), newSnapshotDeleteCommand(g))
	return cmd
}

// snapshotCreateOptions are the flags and argument of "snapshot create".
type snapshotCreateOptions struct {
	vm          string
	name        string
	description string
	volumes     []string
	noData      bool
	desire      consistency
	require     consistency
	full        bool
	wait        bool
	output      outputFormat

	nameSet bool // --name was given
}

// newSnapshotCreateCommand returns "twinsnap snapshot create VM".
func newSnapshotCreateCommand(g *globalOptions) *cobra.Command {
	var opts snapshotCreateOptions
	cmd := &cobra.Command{
		Use:   "create VM",
		Short: "Take a snapshot of a VM",
		Long: `Take a snapshot of a VM, named by name or id: the selected volumes
(--volumes, default all; --no-data for the boot volume alone, which is
always captured) and the VM's configuration. Each volume is captured in
full the first time and incrementally afterwards, unless --full is given.

--desire is the consistency tried first (default application: the guest's
file systems are frozen through the guest agent), --require the lowest
accepted (default crash); the snapshot records what it achieved.

The leader refuses a snapshot up front when a selected volume's container
lacks room on either data node: the command exits 9 and prints the
server's message, which names the volume, the node, and the bytes free and
needed. Snapshots disabled exit 6; an unknown VM exits 5.

Without --wait it prints the snapshot as accepted, in state creating. With
--wait it follows the snapshot until it is complete (exit 0) or discarded
(exit 1, with the reason); --timeout then bounds the whole wait and
defaults to 30m. On a terminal a progress line is redrawn meanwhile: state,
phase, bytes done and total, rate and ETA; otherwise nothing is printed
until the end. Either way it then prints the snapshot as last seen. When
--timeout ends the wait, or on Ctrl-C, the command stops waiting and exits
8; the snapshot goes on.`,
		Example: `  twinsnap snapshot create web1
  twinsnap snapshot create web1 --name before-upgrade --volumes boot,data --require application --wait
  twinsnap snapshot create db1 --no-data --desire crash -o json
  twinsnap snapshot create web1 --full --wait --timeout 2h`,
		Args: exactArgs("VM"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.vm = args[0]
			opts.nameSet = cmd.Flags().Changed("name")
			return runSnapshotCreate(cmd.Context(), g, opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.name, "name", "", "the snapshot's name; need not be unique (default: the VM's name)")
	f.StringVar(&opts.description, "description", "", "free text kept with the snapshot")
	f.StringSliceVar(&opts.volumes, "volumes", nil, "volumes to capture, by name, comma-separated (default all; the boot volume is always captured)")
	f.BoolVar(&opts.noData, "no-data", false, "capture the boot volume alone")
	f.Var(&opts.desire, "desire", "consistency to try: application (freeze through the guest agent) or crash (no freeze) (default application)")
	f.Var(&opts.require, "require", "lowest consistency accepted: application or crash (default crash)")
	f.BoolVar(&opts.full, "full", false, "capture every selected volume in full, not incrementally")
	f.BoolVar(&opts.wait, "wait", false, "wait until the snapshot is complete or discarded (--timeout bounds the wait, default 30m)")
	registerConsistencyCompletion(cmd)
	addOutputFlag(cmd, &opts.output)
	return cmd
}

// request checks the flags and returns the snapshot they ask for. What is
// not given is left to the server's defaults.
func (o snapshotCreateOptions) request() (api.SnapshotCreateRequest, error) {
	var req api.SnapshotCreateRequest
	switch {
	case o.vm == "":
		return req, usagef("the VM name is empty")
	case o.nameSet && o.name == "":
		return req, usagef("--name is empty (leave it out for the VM's name)")
	case o.noData && len(o.volumes) > 0:
		return req, usagef("--volumes and --no-data exclude each other: --no-data captures the boot volume alone")
	}
	if err := checkVolumeNames(o.volumes); err != nil {
		return req, err
	}
	if err := checkConsistencies(o.desire, o.require); err != nil {
		return req, err
	}
	req = api.SnapshotCreateRequest{
		VM: o.vm, Name: o.name, Description: o.description,
		Volumes: o.volumes, NoData: o.noData,
		Desire: string(o.desire), Require: string(o.require),
		Full: o.full,
	}
	return req, nil
}

// runSnapshotCreate starts a snapshot, waits for it with --wait, and
// prints it.
func runSnapshotCreate(ctx context.Context, g *globalOptions, opts snapshotCreateOptions) error {
	req, err := opts.request()
	if err != nil {
		return err
	}
	if opts.wait {
		g.defaultTimeout(defaultWaitTimeout)
	}
	parent := ctx
	ctx, c, done, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer done()
	callCtx, cancel := callContext(ctx, opts.wait)
	snap, err := c.CreateSnapshot(callCtx, req)
	err = writeOutcome(callCtx, err)
	cancel()
	if err != nil {
		return hintSnapshotCreate(fmt.Errorf("creating a snapshot of VM %s: %w", opts.vm, err), opts)
	}
	if !opts.wait {
		return printOutput(g.env.stdout, opts.output, normalizeSnapshot(snap), g.printSnapshotTable)
	}

	if snap.ID == "" {
		return fmt.Errorf("%w: the server accepted the snapshot but named no id", api.ErrInternal)
	}
	disp := g.newProgressDisplay()
	disp.header(fmt.Sprintf("Snapshot %s of VM %s is %s; waiting until it is complete (Ctrl-C stops waiting, the snapshot goes on).",
		snap.ID, orDash(snap.VMName), snap.State))
	disp.update(snap, nil)
	settled := func(s *api.Snapshot) bool {
		// Deleting follows complete: someone else deletes it already.
		return s.State == api.StateComplete || s.State == api.StateDiscarded || s.State == api.StateDeleting
	}
	last, werr := waitSnapshot(ctx, c, snap, g.env.interval(), settled, disp.update)
	disp.clear()
	if err := printOutput(g.env.stdout, opts.output, normalizeSnapshot(last), g.printSnapshotTable); err != nil {
		return err
	}
	switch {
	case werr == nil && last.State == api.StateDiscarded:
		return withHint(markf(errFailed, "snapshot %s of VM %s was discarded%s", last.ID, orDash(last.VMName), discardReason(last.Discard)),
			"the cluster has reclaimed its space; take a new snapshot when the cause is dealt with")
	case werr == nil:
		return nil
	case errors.Is(werr, api.ErrNotFound):
		return withHint(markf(errFailed, "snapshot %s no longer exists: it was discarded and its space reclaimed", snap.ID),
			"take a new snapshot; the daemons' logs say why it was discarded")
	}
	return waitEndedError(parent, g, werr, last, "waiting for snapshot "+snap.ID)
}

// callContext bounds the call that starts an operation: by callTimeout
// when the command then waits (--timeout bounds the wait), else by ctx
// alone (--timeout bounds the call).
func callContext(ctx context.Context, wait bool) (context.Context, context.CancelFunc) {
	if wait {
		return context.WithTimeout(ctx, callTimeout)
	}
	return context.WithCancel(ctx)
}

// hintSnapshotCreate adds what the operator may do to a refused snapshot.
func hintSnapshotCreate(err error, opts snapshotCreateOptions) error {
	switch {
	case errors.Is(err, api.ErrUnknownResult):
		return withHint(err, fmt.Sprintf("see whether the snapshot was started with 'twinsnap snapshot list --vm %s' before retrying", opts.vm))
	case errors.Is(err, api.ErrNoSpace):
		return withHint(err, fmt.Sprintf("make room: grow the volume's container with 'twinsnap volume-container expand VOLUME --capacity SIZE' (see 'twinsnap volume-container list --vm %s'), or delete older snapshots of the VM", opts.vm))
	case errors.Is(err, api.ErrConflict) && opts.require == consistencyApplication:
		return withHint(err, "application consistency was required (--require application) and could not be reached, or the VM is busy: the message says why")
	}
	return hintVMNotFound(err)
}

// waitEndedError explains why a wait ended without the operation
// finishing: the interrupt (parent ended), --timeout, or an error from the
// API that ends polling. what names the wait ("waiting for snapshot X").
func waitEndedError(parent context.Context, g *globalOptions, err error, last *api.Snapshot, what string) error {
	hint := fmt.Sprintf("follow it with 'twinsnap snapshot show %s'", last.ID)
	var stalled string
	var sw *stalledWait
	if errors.As(err, &sw) {
		stalled = " (the last poll failed: " + sw.pollErr.Error() + ")"
	}
	switch {
	case parent.Err() != nil:
		return withHint(markf(errWaitEnded, "stopped waiting for snapshot %s (interrupted): it is %s and goes on%s",
			last.ID, last.State, stalled), hint)
	case errors.Is(err, context.DeadlineExceeded):
		return withHint(markf(errWaitEnded, "stopped waiting for snapshot %s after --timeout %s: it is %s and goes on%s",
			last.ID, g.timeout, last.State, stalled), hint+", or wait longer with a larger --timeout")
	}
	return withHint(fmt.Errorf("%s: %w", what, err), hint)
}

// discardReason shows why a snapshot was discarded, as the end of a
// sentence: " by n2: reason", or "" when nothing is known.
func discardReason(d *api.SnapshotDiscard) string {
	if d == nil {
		return ""
	}
	s := ""
	if d.By != "" {
		s = " by " + d.By
	}
	if d.Reason != "" {
		s += ": " + d.Reason
	}
	return s
}

// snapshotListOptions are the flags of "snapshot list".
type snapshotListOptions struct {
	vm     string
	state  string
	output outputFormat
}

// newSnapshotListCommand returns "twinsnap snapshot list".
func newSnapshotListCommand(g *globalOptions) *cobra.Command {
	var opts snapshotListOptions
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List snapshots, oldest first",
		Long: `List snapshots, oldest first, optionally of one VM (--vm, by name or id) or
in one state (--state: creating, partial, complete, discarded or deleting).

Columns: id, VM, name, state, the consistency achieved, the number of
volumes captured with how many of them are incremental ("+N incr"), the
space the snapshot takes on one node, how many of the two data nodes hold a
verified replica, and when it was created (local time).`,
		Example: "  twinsnap snapshot list\n  twinsnap snapshot list --vm web1 --state complete\n  twinsnap snapshot list -o json",
		Args:    exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runSnapshotList(cmd.Context(), g, opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.vm, "vm", "", "only snapshots of this VM (name or id)")
	f.StringVar(&opts.state, "state", "", "only snapshots in this state: "+strings.Join(snapshotStates, ", "))
	_ = cmd.RegisterFlagCompletionFunc("state", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return snapshotStates, cobra.ShellCompDirectiveNoFileComp
	})
	addOutputFlag(cmd, &opts.output)
	return cmd
}

// runSnapshotList prints the snapshots.
func runSnapshotList(ctx context.Context, g *globalOptions, opts snapshotListOptions) error {
	if opts.state != "" && !isSnapshotState(opts.state) {
		return usagef("--state %q is not one of %s", opts.state, strings.Join(snapshotStates, ", "))
	}
	ctx, c, done, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer done()
	vmID, err := resolveVM(ctx, c, opts.vm)
	if err != nil {
		return err
	}
	// The filters are applied here, not sent: api.Client puts a query
	// string into the request's path, where its '?' is escaped.
	l, err := c.Snapshots(ctx, api.SnapshotFilter{})
	if err != nil {
		return fmt.Errorf("listing snapshots: %w", err)
	}
	out := &api.SnapshotList{Snapshots: []api.Snapshot{}}
	for _, s := range l.Snapshots {
		if (vmID == "" || s.VMID == vmID) && (opts.state == "" || s.State == opts.state) {
			out.Snapshots = append(out.Snapshots, *normalizeSnapshot(&s))
		}
	}
	return printOutput(g.env.stdout, opts.output, out, g.printSnapshotListTable)
}

// printSnapshotListTable is the table printer of "snapshot list".
func (g *globalOptions) printSnapshotListTable(b *bytes.Buffer, l *api.SnapshotList) {
	t := newTable(b)
	t.row("ID", "VM", "NAME", "STATE", "CONSISTENCY", "VOLUMES", "STORED", "REPLICAS", "CREATED")
	for _, s := range l.Snapshots {
		t.row(s.ID, orDash(s.VMName), orDash(s.Name), s.State, orDash(string(s.Achieved)), volumeSummary(s.Volumes),
			storedSummary(&s), fmt.Sprintf("%d/%d", verifiedReplicas(s.Replicas), dataNodes), g.formatTime(s.CreatedAt))
	}
	t.flush()
}

// snapshotShowOptions are the flags and argument of "snapshot show".
type snapshotShowOptions struct {
	id     string
	output outputFormat
}

// newSnapshotShowCommand returns "twinsnap snapshot show ID".
func newSnapshotShowCommand(g *globalOptions) *cobra.Command {
	var opts snapshotShowOptions
	cmd := &cobra.Command{
		Use:   "show ID",
		Short: "Show a snapshot in detail",
		Long: `Show a snapshot in detail: its VM, state and consistency (achieved, desired,
required, and why it stepped down), coordinator and term, configuration
kind, UEFI variables, stored size, times, why it was discarded, nodes yet
to reclaim its space, and the coordinator's live progress; then each
volume (parent snapshot or why it was captured in full, virtual, estimated
and stored size, SHA-256) and each data node's replica (verified, when,
stored size, whether its checksums match the capture's). An unknown
snapshot exits 5.`,
		Example: "  twinsnap snapshot show snap-5f2a\n  twinsnap snapshot show snap-5f2a -o json",
		Args:    exactArgs("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.id = args[0]
			return runSnapshotShow(cmd.Context(), g, opts)
		},
	}
	addOutputFlag(cmd, &opts.output)
	return cmd
}

// runSnapshotShow prints one snapshot.
func runSnapshotShow(ctx context.Context, g *globalOptions, opts snapshotShowOptions) error {
	if opts.id == "" {
		return usagef("the snapshot ID is empty")
	}
	ctx, c, done, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer done()
	s, err := c.Snapshot(ctx, opts.id)
	if err != nil {
		return hintSnapshotNotFound(fmt.Errorf("getting snapshot %s: %w", opts.id, err))
	}
	return printOutput(g.env.stdout, opts.output, normalizeSnapshot(s), g.printSnapshotTable)
}

// printSnapshotTable is the table printer of "snapshot show" and
// "snapshot create": the snapshot's fields, its volumes, its replicas.
func (g *globalOptions) printSnapshotTable(b *bytes.Buffer, s *api.Snapshot) {
	t := newTable(b)
	t.row("ID:", s.ID)
	t.row("Name:", orDash(s.Name))
	if s.Description != "" {
		t.row("Description:", s.Description)
	}
	t.row("VM:", fmt.Sprintf("%s (%s)", orDash(s.VMName), orDash(s.VMID)))
	t.row("State:", s.State)
	t.row("Consistency:", fmt.Sprintf("%s (desired %s, required %s)",
		orDash(string(s.Achieved)), orDash(string(s.Desired)), orDash(string(s.Required))))
	if s.StepDownReason != "" {
		t.row("Step-down:", s.StepDownReason)
	}
	t.row("Creator:", orDash(s.Creator))
	t.row("Coordinator:", fmt.Sprintf("%s (term %d)", orDash(s.Coordinator), s.Term))
	t.row("Config:", orDash(s.ConfigKind))
	uefi := "-"
	if u := s.UEFIVars; u != nil {
		uefi = formatIEC(u.SizeBytes) + ", sha256 " + orDash(u.SHA256)
	}
	t.row("UEFI vars:", uefi)
	t.row("Stored:", storedSummary(s))
	t.row("Created:", g.formatTime(s.CreatedAt))
	t.row("Captured:", g.formatTime(s.CapturedAt))
	t.row("Completed:", g.formatTime(s.CompletedAt))
	if d := s.Discard; d != nil {
		t.row("Discarded:", g.formatTime(d.At)+discardReason(d))
	}
	if len(s.Reclaim) > 0 {
		t.row("Reclaim:", "pending on "+strings.Join(s.Reclaim, ", "))
	}
	if p := s.Progress; p != nil {
		line := orDash(p.Phase)
		if p.Node != "" {
			line += " on " + p.Node
		}
		if amount := progressBytes(p); amount != "" {
			line += ": " + amount
		}
		if p.Detail != "" {
			line += " (" + p.Detail + ")"
		}
		t.row("Progress:", line+", updated "+g.formatTime(p.UpdatedAt))
	}
	t.flush()
	b.WriteString("\n")

	t = newTable(b)
	t.row("VOLUME", "ID", "BOOT", "PARENT", "FULL REASON", "SIZE", "ESTIMATED", "STORED", "SHA256")
	for _, v := range s.Volumes {
		t.row(v.Name, v.VolumeID, yesNo(v.Boot), orDash(v.ParentID), orDash(v.FullReason), bytesOrDash(v.SizeBytes),
			formatIEC(v.EstimatedBytes), bytesOrDash(v.StoredBytes), orDash(v.SHA256))
	}
	t.flush()
	if len(s.Replicas) == 0 {
		b.WriteString("\nNo replica yet.\n")
		return
	}
	b.WriteString("\n")
	t = newTable(b)
	t.row("NODE", "VERIFIED", "AT", "STORED", "CHECKSUMS")
	for _, r := range s.Replicas {
		var stored int64
		for _, v := range r.Volumes {
			stored += v.StoredBytes
		}
		t.row(r.Node, yesNo(r.Verified), g.formatTime(r.At), bytesOrDash(stored), replicaChecksums(s, r))
	}
	t.flush()
}

// replicaChecksums compares a replica's checksums with the capture's:
// "match", "differ: VOLUME, ..." or "-" when there is nothing to compare.
func replicaChecksums(s *api.Snapshot, r api.SnapshotReplica) string {
	want := map[string]api.SnapshotVolume{}
	for _, v := range s.Volumes {
		want[v.VolumeID] = v
	}
	var differ []string
	compared := 0
	for _, rv := range r.Volumes {
		v, ok := want[rv.VolumeID]
		if !ok || v.SHA256 == "" || rv.SHA256 == "" {
			continue
		}
		compared++
		if v.SHA256 != rv.SHA256 {
			differ = append(differ, orDash(v.Name))
		}
	}
	if s.UEFIVars != nil && r.UEFIVars != nil {
		compared++
		if s.UEFIVars.SHA256 != r.UEFIVars.SHA256 {
			differ = append(differ, "UEFI vars")
		}
	}
	switch {
	case len(differ) > 0:
		return "differ: " + strings.Join(differ, ", ")
	case compared == 0:
		return "-"
	}
	return "match"
}

// snapshotDeleteOptions are the flags and argument of "snapshot delete".
type snapshotDeleteOptions struct {
	id     string
	yes    bool
	wait   bool
	output outputFormat
}

// newSnapshotDeleteCommand returns "twinsnap snapshot delete ID".
func newSnapshotDeleteCommand(g *globalOptions) *cobra.Command {
	var opts snapshotDeleteOptions
	cmd := &cobra.Command{
		Use:   "delete ID",
		Short: "Delete a snapshot and reclaim its space",
		Long: `Delete a complete snapshot: it turns deleting, and every data node reclaims
its space (a later snapshot's chain is merged, not broken). An unknown
snapshot exits 5; one that cannot be deleted now (not complete, in use)
exits 6.

On a terminal it shows the snapshot and asks for confirmation unless --yes
is given; when stdin is not a terminal it refuses to run without --yes.

Without --wait it returns once deletion has started. With --wait it follows
the snapshot until it is gone from every node; --timeout then bounds the
whole wait and defaults to 30m. When --timeout ends the wait, or on
Ctrl-C, it stops waiting and exits 8; the deletion goes on. -o json prints
the snapshot as the delete request returned it (state deleting).`,
		Example: "  twinsnap snapshot delete snap-5f2a\n  twinsnap snapshot delete snap-5f2a --yes --wait",
		Args:    exactArgs("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.id = args[0]
			return runSnapshotDelete(cmd.Context(), g, opts)
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&opts.yes, "yes", "y", false, "do not ask for confirmation")
	f.BoolVar(&opts.wait, "wait", false, "wait until every node has reclaimed the snapshot's space (--timeout bounds the wait, default 30m)")
	addOutputFlag(cmd, &opts.output)
	return cmd
}

// runSnapshotDelete deletes a snapshot after confirmation and, with
// --wait, waits until it is gone.
func runSnapshotDelete(ctx context.Context, g *globalOptions, opts snapshotDeleteOptions) error {
	if opts.id == "" {
		return usagef("the snapshot ID is empty")
	}
	if !opts.yes {
		question := fmt.Sprintf("Delete snapshot %s?", opts.id)
		if g.env.stdinIsTerminal() {
			// Show what is about to go; an unknown id ends here.
			s, err := lookupSnapshot(ctx, g, opts.id)
			if err != nil {
				return err
			}
			question = fmt.Sprintf("Delete snapshot %s (%s of VM %s, %s, created %s, %d volume(s))?",
				s.ID, orDash(s.Name), orDash(s.VMName), s.State, g.formatTime(s.CreatedAt), len(s.Volumes))
		}
		if err := confirm(ctx, g.env, question); err != nil {
			return err
		}
	}
	if opts.wait {
		g.defaultTimeout(defaultWaitTimeout)
	}
	parent := ctx
	ctx, c, done, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer done()
	callCtx, cancel := callContext(ctx, opts.wait)
	snap, err := c.DeleteSnapshot(callCtx, opts.id)
	err = writeOutcome(callCtx, err)
	cancel()
	if err != nil {
		err = fmt.Errorf("deleting snapshot %s: %w", opts.id, err)
		switch {
		case errors.Is(err, api.ErrUnknownResult):
			return withHint(err, fmt.Sprintf("see whether the snapshot is deleting with 'twinsnap snapshot show %s'", opts.id))
		case errors.Is(err, api.ErrConflict):
			return withHint(err, fmt.Sprintf("only a complete snapshot that is not in use can be deleted: see 'twinsnap snapshot show %s'", opts.id))
		}
		return hintSnapshotNotFound(err)
	}
	normalizeSnapshot(snap)
	if snap.ID == "" {
		snap.ID = opts.id
	}
	if !opts.wait {
		return printOutput(g.env.stdout, opts.output, snap, func(b *bytes.Buffer, s *api.Snapshot) {
			fmt.Fprintf(b, "Deleting snapshot %s; every node reclaims its space in the background.\n", s.ID)
		})
	}

	disp := g.newProgressDisplay()
	disp.header(fmt.Sprintf("Deleting snapshot %s; waiting until it is gone (Ctrl-C stops waiting, the deletion goes on).", snap.ID))
	disp.update(snap, nil)
	last, werr := waitSnapshot(ctx, c, snap, g.env.interval(), func(*api.Snapshot) bool { return false }, disp.update)
	disp.clear()
	if !errors.Is(werr, api.ErrNotFound) {
		return waitEndedError(parent, g, werr, last, "waiting for snapshot "+snap.ID+" to be deleted")
	}
	return printOutput(g.env.stdout, opts.output, snap, func(b *bytes.Buffer, s *api.Snapshot) {
		fmt.Fprintf(b, "Deleted snapshot %s.\n", s.ID)
	})
}

// lookupSnapshot gets one snapshot within its own --timeout bound.
func lookupSnapshot(ctx context.Context, g *globalOptions, id string) (*api.Snapshot, error) {
	ctx, c, done, err := g.connect(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	s, err := c.Snapshot(ctx, id)
	if err != nil {
		return nil, hintSnapshotNotFound(fmt.Errorf("getting snapshot %s: %w", id, err))
	}
	return s, nil
}

// hintSnapshotNotFound adds the way to find a snapshot's id to a
// not_found error.
func hintSnapshotNotFound(err error) error {
	if errors.Is(err, api.ErrNotFound) {
		return withHint(err, hintSnapshotList)
	}
	return err
}

// normalizeSnapshot makes a snapshot's volume list an empty list rather
// than null in JSON output, and returns s.
func normalizeSnapshot(s *api.Snapshot) *api.Snapshot {
	if s.Volumes == nil {
		s.Volumes = []api.SnapshotVolume{}
	}
	return s
}

// isSnapshotState reports whether s names a snapshot state.
func isSnapshotState(s string) bool {
	for _, st := range snapshotStates {
		if s == st {
			return true
		}
	}
	return false
}

// volumeSummary shows how many volumes a snapshot captured and how many
// of them are incremental: "3", "3 +2 incr".
func volumeSummary(vols []api.SnapshotVolume) string {
	incr := 0
	for _, v := range vols {
		if v.ParentID != "" {
			incr++
		}
	}
	s := strconv.Itoa(len(vols))
	if incr > 0 {
		s += " +" + strconv.Itoa(incr) + " incr"
	}
	return s
}

// storedSummary shows the space a snapshot takes on one node; "-" while
// nothing is captured yet.
func storedSummary(s *api.Snapshot) string {
	if s.StoredBytes == 0 && (s.State == api.StateCreating || s.State == api.StateDiscarded) {
		return "-"
	}
	return formatIEC(s.StoredBytes)
}

// verifiedReplicas counts the verified replicas.
func verifiedReplicas(rs []api.SnapshotReplica) int {
	n := 0
	for _, r := range rs {
		if r.Verified {
			n++
		}
	}
	return n
}

// bytesOrDash shows a byte count, or "-" for zero (not known yet).
func bytesOrDash(n int64) string {
	if n == 0 {
		return "-"
	}
	return formatIEC(n)
}

// formatTime shows a time in the CLI's time zone to the second, "-" for
// the zero time.
func (g *globalOptions) formatTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.In(g.env.zone()).Format("2006-01-02 15:04:05 MST")
}
