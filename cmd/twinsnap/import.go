package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/twinsnap/twinsnap/internal/api"
)

// importOptions are the flags of "import".
type importOptions struct {
	share         string
	path          string
	name          string
	node          string
	keepMACs      bool
	readdress     string
	readdressArgs []string
	transfer      transferOptions
	wait          bool
	jobWaitOptions
}

// newImportCommand returns "twinsnap import".
func newImportCommand(g *globalOptions) *cobra.Command {
	var opts importOptions
	cmd := &cobra.Command{
		Use:   "import --share NAME --path DIR/P.ovf|DIR/P.ova --name NEWVM",
		Short: "Import an OVF package from a share as a new VM",
		Long: `Import an OVF package from a registered share (see 'twinsnap share add') as
a new VM named --name: --path is the package's descriptor within the share,
DIR/P/P.ovf for a package written as a directory, or its archive DIR/P.ova.
Packages written by twinsnap and by other tools (streamOptimized VMDK
disks) are accepted; every file is checked against the package's manifest
and sizes before the VM is created. --node picks the data node that will
host the VM (default: the node called, if it is a data node).

The new VM gets new MAC addresses unless --keep-macs is given. --readdress
names a program inside the guest that the guest agent runs after the first
boot, with the arguments given by --readdress-arg (repeat it, one argument
each), to give the VM new IP settings.

--window, --days, --tz and --bwlimit bound the transfer as for 'snapshot
export'.

Without --wait it prints the job as accepted; with --wait it follows the
job until it is done (exit 0), failed or cancelled (exit 1, with the
error), showing a progress line on a terminal and printing the job at the
end (JSON when stdout is not a terminal, unless --output is given);
--timeout bounds the wait and defaults to 24h here. When --timeout ends the
wait, or on Ctrl-C, the command stops waiting and exits 8; the import goes
on. An unknown share or node exits 5, a VM name taken exits 6, and the
server's validation exits 10.`,
		Example: `  twinsnap import --share backup --path nightly/web1-before-upgrade/web1-before-upgrade.ovf --name web1-restored
  twinsnap import --share backup --path vmware/app.ova --name app1 --node n2 --wait
  twinsnap import --share backup --path nightly/db1.ova --name db1-test --readdress /usr/local/sbin/readdress \
      --readdress-arg --ip --readdress-arg 10.0.0.50/24 --window 22:00-06:00 --tz Europe/Berlin`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts.outputSet = cmd.Flags().Changed("output")
			return runImport(cmd.Context(), g, opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.share, "share", "", "the share to read from, by name (required; see 'twinsnap share list')")
	f.StringVar(&opts.path, "path", "", "the package within the share: DIR/P/P.ovf or DIR/P.ova (required)")
	f.StringVar(&opts.name, "name", "", "the new VM's name, unique in the cluster (required)")
	f.StringVar(&opts.node, "node", "", "data node to host the VM (default: the node called, if it is a data node)")
	f.BoolVar(&opts.keepMACs, "keep-macs", false, "keep the package's MAC addresses (default: new ones)")
	f.StringVar(&opts.readdress, "readdress", "", "program in the guest the guest agent runs after the first boot, for new IP settings")
	f.StringArrayVar(&opts.readdressArgs, "readdress-arg", nil, "an argument for --readdress; repeat for several, in order")
	addTransferFlags(f, &opts.transfer, "import")
	f.BoolVar(&opts.wait, "wait", false, "wait until the import is done, failed or cancelled (--timeout bounds the wait, default 24h)")
	addOutputFlag(cmd, &opts.output)
	return cmd
}

// request checks the flags and returns the import they ask for.
func (o importOptions) request() (api.ImportRequest, error) {
	var req api.ImportRequest
	switch {
	case o.share == "":
		return req, usagef("--share is required: the share to read from (see 'twinsnap share list')")
	case o.path == "":
		return req, usagef("--path is required: the package within the share, DIR/P/P.ovf or DIR/P.ova")
	case !hasSuffixFold(o.path, ".ovf") && !hasSuffixFold(o.path, ".ova"):
		return req, usagef("--path %q names no .ovf descriptor or .ova archive", o.path)
	case o.name == "":
		return req, usagef("--name is required: the new VM's name")
	case len(o.readdressArgs) > 0 && o.readdress == "":
		return req, usagef("--readdress-arg gives arguments to --readdress: give --readdress too")
	}
	limits, err := o.transfer.limits()
	if err != nil {
		return req, err
	}
	return api.ImportRequest{
		Share: o.share, Path: o.path, Name: o.name, Node: o.node, KeepMACs: o.keepMACs,
		Readdress: o.readdress, ReaddressArgs: o.readdressArgs,
		Window: limits.window, Days: limits.days, Location: limits.location, BandwidthBytes: limits.bandwidthBytes,
	}, nil
}

// hasSuffixFold reports whether s ends with suffix, ignoring case.
func hasSuffixFold(s, suffix string) bool {
	return len(s) >= len(suffix) && strings.EqualFold(s[len(s)-len(suffix):], suffix)
}

// runImport starts an import job and, with --wait, follows it.
func runImport(ctx context.Context, g *globalOptions, opts importOptions) error {
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
	job, err := c.Import(callCtx, req)
	err = writeOutcome(callCtx, err)
	cancel()
	if err != nil {
		err = fmt.Errorf("importing %s:%s as VM %s: %w", opts.share, opts.path, opts.name, err)
		switch {
		case errors.Is(err, api.ErrUnknownResult):
			return withHint(err, "see whether the import was started with 'twinsnap job list --kind import' before retrying")
		case errors.Is(err, api.ErrNotFound):
			return withHint(err, "check the share ('twinsnap share list'), the package's path in it, and --node ('twinsnap node list')")
		case errors.Is(err, api.ErrConflict):
			return withHint(err, "the name may be taken ('twinsnap vm list'); the message says what is in the way")
		}
		return err
	}
	if !opts.wait {
		return printOutput(g.env.stdout, opts.output, job, g.printJobTable)
	}
	return followJob(parent, ctx, g, c, job, opts.jobWaitOptions)
}
