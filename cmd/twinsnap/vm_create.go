package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/twinsnap/twinsnap/internal/api"
)

// defaultCreateVMTimeout is --timeout's default for "vm
// create-from-snapshot": the node copies images, and may start the VM and
// wait for its guest agent, before it answers.
const defaultCreateVMTimeout = 10 * time.Minute

// vmCreateOptions are the flags and argument of "vm create-from-snapshot".
type vmCreateOptions struct {
	snapshot   string
	name       string
	host       string
	noStart    bool
	noRegister bool
	output     outputFormat
}

// newVMCreateFromSnapshotCommand returns "twinsnap vm create-from-snapshot
// SNAPSHOT".
func newVMCreateFromSnapshotCommand(g *globalOptions) *cobra.Command {
	var opts vmCreateOptions
	cmd := &cobra.Command{
		Use:   "create-from-snapshot SNAPSHOT --name NEW",
		Short: "Create a new VM from a complete snapshot",
		Long: `Create a new VM on this system from a complete snapshot: the snapshot's
volumes and VM configuration, under a new name (--name, required) with a
new UUID and new MAC addresses. The new VM is created on --host (default:
the snapshot's coordinator if it holds a verified replica, else a node
that does), started unless --no-start is given, and registered with
twinsnap unless --no-register is given.

It prints the new VM: name, UUID, host, MAC addresses, disk images, whether
it was started and its guest agent answered, and how long it took. As the
node copies images and waits for the guest agent before it answers,
--timeout defaults to 10m here. An unknown snapshot exits 5; a name taken
or a snapshot that is not complete exits 6; a missing answer after the
request may have been sent exits 8.`,
		Example: `  twinsnap vm create-from-snapshot snap-5f2a --name web1-test
  twinsnap vm create-from-snapshot snap-5f2a --name web1-copy --host n2 --no-start -o json`,
		Args: exactArgs("SNAPSHOT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.snapshot = args[0]
			return runVMCreateFromSnapshot(cmd.Context(), g, opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.name, "name", "", "the new VM's name, unique in the cluster (required)")
	f.StringVar(&opts.host, "host", "", "data node to create the VM on (default: the snapshot's coordinator, else a node with a verified replica)")
	f.BoolVar(&opts.noStart, "no-start", false, "do not start the new VM")
	f.BoolVar(&opts.noRegister, "no-register", false, "do not register the new VM with twinsnap")
	addOutputFlag(cmd, &opts.output)
	return cmd
}

// request checks the flags and returns the creation they ask for; start
// and register are sent only when turned off.
func (o vmCreateOptions) request() (api.CreateVMRequest, error) {
	switch {
	case o.snapshot == "":
		return api.CreateVMRequest{}, usagef("the snapshot ID is empty")
	case o.name == "":
		return api.CreateVMRequest{}, usagef("--name is required: the new VM's name")
	}
	req := api.CreateVMRequest{Name: o.name, HostNode: o.host}
	if o.noStart {
		req.Start = new(bool)
	}
	if o.noRegister {
		req.Register = new(bool)
	}
	return req, nil
}

// runVMCreateFromSnapshot creates a VM from a snapshot and prints it.
func runVMCreateFromSnapshot(ctx context.Context, g *globalOptions, opts vmCreateOptions) error {
	req, err := opts.request()
	if err != nil {
		return err
	}
	g.defaultTimeout(defaultCreateVMTimeout)
	ctx, c, done, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer done()
	res, err := c.CreateVMFromSnapshot(ctx, opts.snapshot, req)
	if err = writeOutcome(ctx, err); err != nil {
		err = fmt.Errorf("creating VM %s from snapshot %s: %w", opts.name, opts.snapshot, err)
		switch {
		case errors.Is(err, api.ErrUnknownResult) && !opts.noRegister:
			return withHint(err, fmt.Sprintf("see whether VM %s was created with 'twinsnap vm show %s' before retrying", opts.name, opts.name))
		case errors.Is(err, api.ErrConflict):
			return withHint(err, fmt.Sprintf("the name may be taken ('twinsnap vm list'), or the snapshot is not complete ('twinsnap snapshot show %s')", opts.snapshot))
		case errors.Is(err, api.ErrNotFound) && opts.host != "":
			return withHint(err, "check the snapshot's id ('twinsnap snapshot list') and --host ('twinsnap node list')")
		}
		return hintSnapshotNotFound(err)
	}
	if res.VM.Volumes == nil {
		res.VM.Volumes = emptyList(res.VM.Volumes)
	}
	return printOutput(g.env.stdout, opts.output, res, printCreateVMTable)
}

// printCreateVMTable is the table printer of "vm create-from-snapshot":
// the new VM, then its disk images.
func printCreateVMTable(b *bytes.Buffer, r *api.CreateVMResult) {
	t := newTable(b)
	t.row("Name:", orDash(r.VM.Name))
	t.row("UUID:", orDash(r.UUID))
	if r.VM.ID != "" && r.VM.ID != r.UUID {
		t.row("ID:", r.VM.ID)
	}
	t.row("Host:", orDash(r.VM.HostNode))
	t.row("Snapshot:", orDash(r.Snapshot))
	t.row("MACs:", orDash(strings.Join(r.MACs, ", ")))
	t.row("Started:", yesNo(r.Started))
	t.row("Agent ready:", yesNo(r.AgentReady))
	t.row("Took:", strconv.FormatFloat(r.Seconds, 'f', 1, 64)+"s")
	t.flush()
	b.WriteString("\n")

	keys := make([]string, 0, len(r.Images))
	for k := range r.Images {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	t = newTable(b)
	t.row("VOLUME", "IMAGE")
	for _, k := range keys {
		t.row(k, r.Images[k])
	}
	t.flush()
}
