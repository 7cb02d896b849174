package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/twinsnap/twinsnap/internal/api"
)

// The VM drivers, as the API spells them.
const (
	driverQEMU    = "qemu"
	driverLibvirt = "libvirt"
)

// defaultLibvirtURI is --libvirt-uri's default: the host's system libvirtd.
const defaultLibvirtURI = "qemu:///system"

// hintVMList is the hint for a VM that is not registered.
const hintVMList = "list the registered VMs with 'twinsnap vm list'"

// newVMCommand returns "twinsnap vm" and its subcommands.
func newVMCommand(g *globalOptions) *cobra.Command {
	cmd := newGroupCommand("vm", "Register, list, show and unregister VMs; check their quiescing; create VMs from snapshots")
	cmd.AddCommand(newVMRegisterCommand(g), newVMListCommand(g), newVMShowCommand(g),
		newVMUnregisterCommand(g), newVMCheckQuiesceCommand(g), newVMCreateFromSnapshotCommand(g))
	return cmd
}

// vmRegisterOptions are the flags and argument of "vm register".
type vmRegisterOptions struct {
	name                   string
	qmpSocket, agentSocket string
	libvirtDomain          string
	libvirtURI             string
	host                   string
	bootVolume             string
	noFreeze               bool
	freezeTimeout          time.Duration
	containerPercent       int
	output                 outputFormat

	// Which flags were given (cobra's Changed), for flags whose default
	// or empty value cannot tell.
	qmpSet, agentSet, domainSet, uriSet, timeoutSet, percentSet bool
}

// newVMRegisterCommand returns "twinsnap vm register NAME".
func newVMRegisterCommand(g *globalOptions) *cobra.Command {
	var opts vmRegisterOptions
	cmd := &cobra.Command{
		Use:   "register NAME (--qmp-socket PATH [--agent-socket PATH] | --libvirt-domain DOMAIN [--libvirt-uri URI])",
		Short: "Register a VM and its volumes",
		Long: `Register a VM under NAME. The VM's host node (--host, default the node
called, if it is a data node) connects to it, reads its disks and registers
the VM with one volume per disk.

Give the flags of exactly one driver: --qmp-socket (with --agent-socket if
the guest runs the QEMU guest agent) for a bare QEMU process, or
--libvirt-domain (with --libvirt-uri) for a libvirt domain. Socket paths are
paths on the host node.

Freezing is on by default: application-consistent snapshots freeze the
guest's file systems on the selected volumes through the guest agent, and
--freeze-timeout bounds freeze, capture and thaw together. --no-freeze
registers the VM for crash-consistent snapshots only.

Each volume gets a container on every data node: the space set aside for
the volume and its snapshot data. --container-percent sizes it as a
percentage of the volume's virtual size (default 300: the volume plus
twice its size for snapshots; 100 holds the volume alone). Containers can
grow later ('twinsnap volume-container expand'), never shrink.

It prints the registered VM as 'twinsnap vm show' does.`,
		Example: `  twinsnap vm register web1 --qmp-socket /run/qemu/web1.qmp --agent-socket /run/qemu/web1.qga
  twinsnap vm register db1 --libvirt-domain db1 --host n2 --boot-volume vda --freeze-timeout 20s
  twinsnap vm register scratch --libvirt-domain scratch --no-freeze -o json
  twinsnap vm register big1 --libvirt-domain big1 --container-percent 150`,
		Args: exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.name = args[0]
			f := cmd.Flags()
			opts.qmpSet, opts.agentSet = f.Changed("qmp-socket"), f.Changed("agent-socket")
			opts.domainSet, opts.uriSet = f.Changed("libvirt-domain"), f.Changed("libvirt-uri")
			opts.timeoutSet = f.Changed("freeze-timeout")
			opts.percentSet = f.Changed("container-percent")
			return runVMRegister(cmd.Context(), g, opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.qmpSocket, "qmp-socket", "", "QEMU driver: path of the VM's QMP monitor socket on the host node")
	f.StringVar(&opts.agentSocket, "agent-socket", "", "QEMU driver: path of the guest agent's socket on the host node (without it: crash-consistent snapshots only)")
	f.StringVar(&opts.libvirtDomain, "libvirt-domain", "", "libvirt driver: the libvirt domain name")
	f.StringVar(&opts.libvirtURI, "libvirt-uri", defaultLibvirtURI, "libvirt driver: libvirt connection URI on the host node")
	f.StringVar(&opts.host, "host", "", "data node the VM runs on (default: the node called)")
	f.StringVar(&opts.bootVolume, "boot-volume", "", `boot disk, by serial or QEMU device id (default: the disk with serial "boot", else the first disk)`)
	f.BoolVar(&opts.noFreeze, "no-freeze", false, "never freeze the guest's file systems: crash-consistent snapshots only")
	f.DurationVar(&opts.freezeTimeout, "freeze-timeout", 10*time.Second, "bound on freeze, capture and thaw together, whole milliseconds")
	f.IntVar(&opts.containerPercent, "container-percent", 0, "size of each volume's container as a percentage of the volume's size, at least 100 (server default 300)")
	addOutputFlag(cmd, &opts.output)
	return cmd
}

// request checks the flags and returns the registration they ask for.
func (o vmRegisterOptions) request() (api.VMRegisterRequest, error) {
	if o.name == "" {
		return api.VMRegisterRequest{}, usagef("the VM name is empty")
	}
	req := api.VMRegisterRequest{Name: o.name, HostNode: o.host, BootVolume: o.bootVolume}
	qemu := o.qmpSet || o.agentSet
	libvirt := o.domainSet || o.uriSet
	switch {
	case qemu && libvirt:
		return req, usagef("flags of both drivers given: use --qmp-socket [--agent-socket] for QEMU or --libvirt-domain [--libvirt-uri] for libvirt, not both")
	case !qemu && !libvirt:
		return req, usagef("no driver given: name the QMP socket with --qmp-socket PATH (QEMU) or the domain with --libvirt-domain DOMAIN (libvirt)")
	case qemu:
		if !o.qmpSet {
			return req, usagef("--agent-socket needs --qmp-socket")
		}
		if o.qmpSocket == "" {
			return req, usagef("--qmp-socket is empty")
		}
		if o.agentSet && o.agentSocket == "" {
			return req, usagef("--agent-socket is empty")
		}
		req.Driver = driverQEMU
		req.QEMU = alloc(req.QEMU)
		req.QEMU.QMPSocket, req.QEMU.AgentSocket = o.qmpSocket, o.agentSocket
	default:
		if !o.domainSet {
			return req, usagef("--libvirt-uri needs --libvirt-domain")
		}
		if o.libvirtDomain == "" {
			return req, usagef("--libvirt-domain is empty")
		}
		if o.libvirtURI == "" {
			return req, usagef("--libvirt-uri is empty")
		}
		req.Driver = driverLibvirt
		req.Libvirt = alloc(req.Libvirt)
		req.Libvirt.URI, req.Libvirt.Domain = o.libvirtURI, o.libvirtDomain
	}
	if o.percentSet {
		if o.containerPercent < 100 {
			return req, usagef("--container-percent must be at least 100 (the volume itself), got %d", o.containerPercent)
		}
		req.ContainerPercent = o.containerPercent
	}
	enabled := !o.noFreeze
	req.FreezeEnabled = &enabled
	switch {
	case o.noFreeze && o.timeoutSet:
		return req, usagef("--freeze-timeout does not apply with --no-freeze")
	case enabled:
		ms, err := wholeMillis("--freeze-timeout", o.freezeTimeout)
		if err != nil {
			return req, err
		}
		if ms == 0 {
			return req, usagef("--freeze-timeout must be positive, got %s", o.freezeTimeout)
		}
		req.FreezeTimeoutMS = ms
	}
	return req, nil
}

// runVMRegister registers a VM and prints it.
func runVMRegister(ctx context.Context, g *globalOptions, opts vmRegisterOptions) error {
	req, err := opts.request()
	if err != nil {
		return err
	}
	ctx, c, done, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer done()
	vm, err := c.RegisterVM(ctx, req)
	if err = writeOutcome(ctx, err); err != nil {
		err = fmt.Errorf("registering VM %s: %w", opts.name, err)
		switch {
		case errors.Is(err, api.ErrUnknownResult):
			return withHint(err, fmt.Sprintf("see whether VM %s was registered with 'twinsnap vm show %s'", opts.name, opts.name))
		case errors.Is(err, api.ErrConflict):
			return withHint(err, "the name, the VM or one of its disks may be registered already: see 'twinsnap vm list'")
		case errors.Is(err, api.ErrNotFound) && opts.host != "":
			return withHint(err, "check --host against 'twinsnap node list'")
		}
		return err
	}
	return printOutput(g.env.stdout, opts.output, normalizeVM(vm), printVMTable)
}

// vmListOptions are the flags of "vm list".
type vmListOptions struct {
	output outputFormat
}

// newVMListCommand returns "twinsnap vm list".
func newVMListCommand(g *globalOptions) *cobra.Command {
	var opts vmListOptions
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the registered VMs",
		Long: `List the registered VMs: name, id, host node, driver, number of volumes,
the boot volume's name, and whether freezing is on (with its timeout).`,
		Example: "  twinsnap vm list\n  twinsnap vm list -o json",
		Args:    exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runVMList(cmd.Context(), g, opts)
		},
	}
	addOutputFlag(cmd, &opts.output)
	return cmd
}

// runVMList prints the registered VMs.
func runVMList(ctx context.Context, g *globalOptions, opts vmListOptions) error {
	ctx, c, done, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer done()
	l, err := c.VMs(ctx)
	if err != nil {
		return fmt.Errorf("listing VMs: %w", err)
	}
	if l.VMs == nil {
		l.VMs = []api.VM{}
	}
	for i := range l.VMs {
		normalizeVM(&l.VMs[i])
	}
	return printOutput(g.env.stdout, opts.output, l, printVMListTable)
}

// printVMListTable is the table printer of "vm list".
func printVMListTable(b *bytes.Buffer, l *api.VMList) {
	t := newTable(b)
	t.row("NAME", "ID", "HOST", "DRIVER", "VOLUMES", "BOOT", "FREEZE")
	for _, vm := range l.VMs {
		boot := ""
		for _, v := range vm.Volumes {
			if v.Boot {
				boot = v.Name
				break
			}
		}
		t.row(vm.Name, vm.ID, orDash(vm.HostNode), orDash(string(vm.Driver)), strconv.Itoa(len(vm.Volumes)),
			orDash(boot), freezeSummary(vm))
	}
	t.flush()
}

// vmShowOptions are the flags and argument of "vm show".
type vmShowOptions struct {
	vm     string
	output outputFormat
}

// newVMShowCommand returns "twinsnap vm show VM".
func newVMShowCommand(g *globalOptions) *cobra.Command {
	var opts vmShowOptions
	cmd := &cobra.Command{
		Use:   "show VM",
		Short: "Show a VM and its volumes",
		Long: `Show a VM, named by name or id: its host node, driver and connection
details, whether freezing is on, then its volumes: name, serial, whether it
is the boot volume, virtual size (binary prefixes), image format and id.`,
		Example: "  twinsnap vm show web1\n  twinsnap vm show web1 -o json",
		Args:    exactArgs("VM"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.vm = args[0]
			return runVMShow(cmd.Context(), g, opts)
		},
	}
	addOutputFlag(cmd, &opts.output)
	return cmd
}

// runVMShow prints one VM.
func runVMShow(ctx context.Context, g *globalOptions, opts vmShowOptions) error {
	if opts.vm == "" {
		return usagef("the VM name is empty")
	}
	ctx, c, done, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer done()
	vm, err := c.VM(ctx, opts.vm)
	if err != nil {
		return hintVMNotFound(fmt.Errorf("getting VM %s: %w", opts.vm, err))
	}
	return printOutput(g.env.stdout, opts.output, normalizeVM(vm), printVMTable)
}

// printVMTable is the table printer of "vm show" and "vm register": the
// VM's fields, then its volumes.
func printVMTable(b *bytes.Buffer, vm *api.VM) {
	t := newTable(b)
	t.row("Name:", vm.Name)
	t.row("ID:", vm.ID)
	t.row("Host:", orDash(vm.HostNode))
	t.row("Driver:", orDash(string(vm.Driver)))
	if q := vm.QEMU; q != nil {
		agent := q.AgentSocket
		if agent == "" {
			agent = "none (crash-consistent snapshots only)"
		}
		t.row("QMP socket:", orDash(q.QMPSocket))
		t.row("Agent socket:", agent)
	}
	if l := vm.Libvirt; l != nil {
		t.row("Libvirt URI:", orDash(l.URI))
		t.row("Libvirt domain:", orDash(l.Domain))
	}
	t.row("Freeze:", freezeSummary(*vm))
	t.flush()
	b.WriteString("\n")

	t = newTable(b)
	t.row("NAME", "SERIAL", "BOOT", "SIZE", "FORMAT", "ID")
	for _, v := range vm.Volumes {
		t.row(v.Name, orDash(v.Serial), yesNo(v.Boot), formatIEC(v.SizeBytes), orDash(string(v.Format)), v.ID)
	}
	t.flush()
}

// vmUnregisterOptions are the flags and argument of "vm unregister".
type vmUnregisterOptions struct {
	vm  string
	yes bool
}

// newVMUnregisterCommand returns "twinsnap vm unregister VM".
func newVMUnregisterCommand(g *globalOptions) *cobra.Command {
	var opts vmUnregisterOptions
	cmd := &cobra.Command{
		Use:   "unregister VM",
		Short: "Unregister a VM (the VM itself is untouched)",
		Long: `Unregister a VM, named by name or id: twinsnap forgets it and its volume
containers. The VM itself is not touched. A VM that still has snapshots
cannot be unregistered (exit 6).

On a terminal it asks for confirmation unless --yes is given; when stdin is
not a terminal it refuses to run without --yes.`,
		Example: "  twinsnap vm unregister web1\n  twinsnap vm unregister web1 --yes",
		Args:    exactArgs("VM"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.vm = args[0]
			return runVMUnregister(cmd.Context(), g, opts)
		},
	}
	cmd.Flags().BoolVarP(&opts.yes, "yes", "y", false, "do not ask for confirmation")
	return cmd
}

// runVMUnregister unregisters a VM after confirmation.
func runVMUnregister(ctx context.Context, g *globalOptions, opts vmUnregisterOptions) error {
	if opts.vm == "" {
		return usagef("the VM name is empty")
	}
	if !opts.yes {
		if err := confirm(ctx, g.env, fmt.Sprintf("Unregister VM %s from twinsnap (the VM itself is not touched)?", opts.vm)); err != nil {
			return err
		}
	}
	ctx, c, done, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer done()
	if err := writeOutcome(ctx, c.UnregisterVM(ctx, opts.vm)); err != nil {
		err = fmt.Errorf("unregistering VM %s: %w", opts.vm, err)
		switch {
		case errors.Is(err, api.ErrUnknownResult):
			return withHint(err, "see whether the VM is still registered with 'twinsnap vm list'")
		case errors.Is(err, api.ErrConflict):
			return withHint(err, "a VM that still has snapshots (in any state) cannot be unregistered")
		}
		return hintVMNotFound(err)
	}
	if _, err := fmt.Fprintf(g.env.stdout, "Unregistered VM %s.\n", opts.vm); err != nil {
		return fmt.Errorf("writing output: %w", err)
	}
	return nil
}

// consistency is the value of --desire and --require: a consistency
// level, or "" when the flag is not given (the server's default).
type consistency string

// The consistency levels, weakest first.
const (
	consistencyCrash       consistency = "crash"
	consistencyApplication consistency = "application"
)

// String implements pflag.Value.
func (c *consistency) String() string { return string(*c) }

// Set implements pflag.Value.
func (c *consistency) Set(s string) error {
	switch consistency(s) {
	case consistencyApplication, consistencyCrash:
		*c = consistency(s)
		return nil
	}
	return fmt.Errorf("consistency level %q is not application or crash", s)
}

// Type implements pflag.Value.
func (c *consistency) Type() string { return "application|crash" }

// or returns c, or def when c is not set.
func (c consistency) or(def consistency) consistency {
	if c == "" {
		return def
	}
	return c
}

// rank orders the levels: crash below application.
func (c consistency) rank() int {
	if c == consistencyApplication {
		return 1
	}
	return 0
}

// checkVolumeNames refuses empty and repeated names in --volumes.
func checkVolumeNames(names []string) error {
	seen := map[string]bool{}
	for _, v := range names {
		if v == "" {
			return usagef("--volumes holds an empty name")
		}
		if seen[v] {
			return usagef("--volumes names %s twice", v)
		}
		seen[v] = true
	}
	return nil
}

// checkConsistencies refuses --require above --desire, taking the
// server's defaults (application, crash) for flags not given.
func checkConsistencies(desire, require consistency) error {
	d, r := desire.or(consistencyApplication), require.or(consistencyCrash)
	if r.rank() > d.rank() {
		return usagef("--require %s is above --desire %s", r, d)
	}
	return nil
}

// registerConsistencyCompletion completes --desire and --require.
func registerConsistencyCompletion(cmd *cobra.Command) {
	for _, name := range []string{"desire", "require"} {
		_ = cmd.RegisterFlagCompletionFunc(name, func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
			return []string{string(consistencyApplication), string(consistencyCrash)}, cobra.ShellCompDirectiveNoFileComp
		})
	}
}

// vmCheckQuiesceOptions are the flags and argument of "vm check-quiesce".
type vmCheckQuiesceOptions struct {
	vm      string
	volumes []string
	hold    time.Duration
	desire  consistency
	require consistency
	output  outputFormat
}

// newVMCheckQuiesceCommand returns "twinsnap vm check-quiesce VM".
func newVMCheckQuiesceCommand(g *globalOptions) *cobra.Command {
	var opts vmCheckQuiesceOptions
	cmd := &cobra.Command{
		Use:   "check-quiesce VM",
		Short: "Freeze and thaw a VM's file systems as a snapshot would, capturing nothing",
		Long: `Check that a VM can be quiesced: its host node freezes the guest file systems
on the selected volumes (--volumes, default all) through the guest agent,
keeps them frozen for --hold, and thaws them, exactly as a snapshot's
capture would, without capturing anything. The guest's writes to those
file systems stall for the window printed.

It prints the consistency achieved and, if it is below --desire, why; the
mount points frozen and why each was chosen; mount points frozen that also
span unselected volumes; selected volumes with no guest file system; and
the freeze call, the thaw call and the whole frozen window, in milliseconds.

--desire is the level tried first (default application), --require the
lowest accepted (default crash). When the required level cannot be
reached, the check fails with exit 6 and the reason; the guest is left
thawed.`,
		Example: `  twinsnap vm check-quiesce web1
  twinsnap vm check-quiesce web1 --volumes boot,data --hold 2s --require application
  twinsnap vm check-quiesce web1 -o json`,
		Args: exactArgs("VM"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.vm = args[0]
			return runVMCheckQuiesce(cmd.Context(), g, opts)
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&opts.volumes, "volumes", nil, "volumes to select, by name or serial, comma-separated (default all)")
	f.DurationVar(&opts.hold, "hold", 0, "how long to keep the file systems frozen, whole milliseconds, at most the VM's freeze timeout")
	f.Var(&opts.desire, "desire", "consistency to try: application (freeze through the guest agent) or crash (no freeze) (default application)")
	f.Var(&opts.require, "require", "lowest consistency accepted: application or crash (default crash)")
	registerConsistencyCompletion(cmd)
	addOutputFlag(cmd, &opts.output)
	return cmd
}

// request checks the flags and returns the check they ask for. Levels
// and volumes not given are left to the server's defaults.
func (o vmCheckQuiesceOptions) request() (api.QuiesceCheckRequest, error) {
	var req api.QuiesceCheckRequest
	if o.vm == "" {
		return req, usagef("the VM name is empty")
	}
	if err := checkConsistencies(o.desire, o.require); err != nil {
		return req, err
	}
	if err := checkVolumeNames(o.volumes); err != nil {
		return req, err
	}
	ms, err := wholeMillis("--hold", o.hold)
	if err != nil {
		return req, err
	}
	req.Volumes, req.HoldMS = o.volumes, ms
	req.Desire, req.Require = string(o.desire), string(o.require)
	return req, nil
}

// runVMCheckQuiesce runs a quiesce check and prints what it did.
func runVMCheckQuiesce(ctx context.Context, g *globalOptions, opts vmCheckQuiesceOptions) error {
	req, err := opts.request()
	if err != nil {
		return err
	}
	ctx, cancel, err := g.withTimeout(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	if opts.hold >= g.timeout {
		return withHint(usagef("--hold %s does not fit within --timeout %s", opts.hold, g.timeout),
			"raise --timeout well above --hold: freezing and thawing take time too")
	}
	c, err := g.client()
	if err != nil {
		return err
	}
	defer c.Close()
	// Not writeOutcome: the check changes nothing that lasts. The host node
	// thaws the guest whether or not its answer arrives.
	res, err := c.QuiesceCheck(ctx, opts.vm, req)
	if err != nil {
		err = fmt.Errorf("checking quiesce of VM %s: %w", opts.vm, err)
		switch {
		case errors.Is(err, api.ErrConflict) && opts.require == consistencyApplication:
			return withHint(err, "application consistency was required (--require application) and could not be reached, or the VM is busy: the message says why")
		case errors.Is(err, api.ErrConnect) && ctx.Err() != nil:
			return withHint(err, "the check may still be running on the host node, which thaws the guest itself")
		}
		return hintVMNotFound(err)
	}
	return printOutput(g.env.stdout, opts.output, res, printQuiesceCheckTable)
}

// printQuiesceCheckTable is the table printer of "vm check-quiesce".
func printQuiesceCheckTable(b *bytes.Buffer, r *api.QuiesceCheckResult) {
	t := newTable(b)
	t.row("VM:", orDash(r.VM))
	t.row("Host:", orDash(r.HostNode))
	t.row("Achieved:", orDash(r.Achieved))
	if r.StepDown != "" {
		t.row("Step-down:", r.StepDown)
	}
	t.row("Spanning:", orDash(strings.Join(r.Spanning, ", ")))
	t.row("Unmapped:", orDash(strings.Join(r.Unmapped, ", ")))
	t.row("Freeze call:", formatRTT(r.FreezeCallMS))
	t.row("Thaw call:", formatRTT(r.ThawCallMS))
	t.row("Window:", formatRTT(r.WindowMS))
	t.flush()
	b.WriteString("\n")
	if len(r.Frozen) == 0 {
		b.WriteString("No file system was frozen.\n")
		return
	}
	t = newTable(b)
	t.row("FROZEN", "REASON")
	for _, m := range r.Frozen {
		t.row(m, orDash(r.Reasons[m]))
	}
	t.flush()
}

// resolveVM returns the id of the VM named by name or id, "" for "" (no
// filter). An unknown VM is an error (exit 5), not an empty list.
func resolveVM(ctx context.Context, c *api.Client, vm string) (string, error) {
	if vm == "" {
		return "", nil
	}
	v, err := c.VM(ctx, vm)
	if err != nil {
		return "", hintVMNotFound(fmt.Errorf("getting VM %s: %w", vm, err))
	}
	return v.ID, nil
}

// hintVMNotFound adds the way to find a VM's name to a not_found error.
func hintVMNotFound(err error) error {
	if errors.Is(err, api.ErrNotFound) {
		return withHint(err, hintVMList)
	}
	return err
}

// normalizeVM makes a VM's volume list an empty list rather than null in
// JSON output, and returns vm.
func normalizeVM(vm *api.VM) *api.VM {
	if vm.Volumes == nil {
		vm.Volumes = emptyList(vm.Volumes)
	}
	return vm
}

// freezeSummary shows a VM's freeze setting: "yes (10s)" or "no".
func freezeSummary(vm api.VM) string {
	if !vm.FreezeEnabled {
		return "no"
	}
	if vm.FreezeTimeout <= 0 {
		return "yes"
	}
	return "yes (" + vm.FreezeTimeout.String() + ")"
}

// wholeMillis returns d in milliseconds; d must not be negative nor
// hold a fraction of a millisecond (the API counts in milliseconds).
func wholeMillis(flag string, d time.Duration) (int64, error) {
	switch {
	case d < 0:
		return 0, usagef("%s must not be negative, got %s", flag, d)
	case d%time.Millisecond != 0:
		return 0, usagef("%s %s is not a whole number of milliseconds", flag, d)
	}
	return d.Milliseconds(), nil
}

// formatIEC shows a byte count with binary prefixes and at most one
// decimal: "512 B", "1.5 GiB", "20 GiB", "-3 MiB".
func formatIEC(n int64) string {
	const units = "KMGTPE"
	if n < 0 {
		if n == math.MinInt64 {
			return "-8 EiB"
		}
		return "-" + formatIEC(-n)
	}
	if n < 1024 {
		return strconv.FormatInt(n, 10) + " B"
	}
	v, i := float64(n)/1024, 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	s := strconv.FormatFloat(v, 'f', 1, 64)
	if s == "1024.0" && i < len(units)-1 { // rounded up into the next unit
		s, i = "1.0", i+1
	}
	return strings.TrimSuffix(s, ".0") + " " + units[i:i+1] + "iB"
}

// alloc returns a new zero value of p's element type, and emptyList an
// empty, non-nil list of l's element type: internal/api's types hold
// cluster/command types, which the CLI may not import by name.
func alloc[T any](*T) *T { return new(T) }

func emptyList[E any]([]E) []E { return []E{} }
