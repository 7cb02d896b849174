package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/big"
	"strings"

	"github.com/spf13/cobra"

	"github.com/twinsnap/twinsnap/internal/api"
)

// hintContainerList is the hint for a volume or container that does not
// exist.
const hintContainerList = "list the volume containers with 'twinsnap volume-container list'"

// newVolumeContainerCommand returns "twinsnap volume-container" and its
// subcommands.
func newVolumeContainerCommand(g *globalOptions) *cobra.Command {
	cmd := newGroupCommand("volume-container", "List and grow the space set aside for each volume and its snapshots")
	cmd.AddCommand(newContainerListCommand(g), newContainerExpandCommand(g))
	return cmd
}

// containerListOptions are the flags of "volume-container list".
type containerListOptions struct {
	vm, node string
	output   outputFormat
}

// newContainerListCommand returns "twinsnap volume-container list".
func newContainerListCommand(g *globalOptions) *cobra.Command {
	var opts containerListOptions
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the volume containers on each data node",
		Long: `List the volume containers: for each volume, on each data node, the space
set aside (CAPACITY), what the volume itself takes (RESERVED, its virtual
size), what its snapshots take (USED) and the room left for new snapshot
data (FREE; negative when a capture came out larger than its estimate).
A snapshot is refused (exit 9) when a selected volume's container lacks
room on either node; grow it with 'twinsnap volume-container expand'.`,
		Example: "  twinsnap volume-container list\n  twinsnap volume-container list --vm web1 --node n2\n  twinsnap volume-container list -o json",
		Args:    exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runContainerList(cmd.Context(), g, opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.vm, "vm", "", "only the containers of this VM's volumes (name or id)")
	f.StringVar(&opts.node, "node", "", "only the containers on this data node")
	addOutputFlag(cmd, &opts.output)
	return cmd
}

// runContainerList prints the volume containers.
func runContainerList(ctx context.Context, g *globalOptions, opts containerListOptions) error {
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
	l, err := c.VolumeContainers(ctx, "", "")
	if err != nil {
		return fmt.Errorf("listing volume containers: %w", err)
	}
	out := &api.VolumeContainerList{Containers: []api.VolumeContainer{}}
	for _, ct := range l.Containers {
		if (vmID == "" || ct.VMID == vmID) && (opts.node == "" || ct.Node == opts.node) {
			out.Containers = append(out.Containers, ct)
		}
	}
	return printOutput(g.env.stdout, opts.output, out, printContainersTable)
}

// containerExpandOptions are the flags and argument of "volume-container
// expand".
type containerExpandOptions struct {
	volume   string
	capacity string
	node     string
	output   outputFormat

	capacitySet bool // --capacity was given
}

// newContainerExpandCommand returns "twinsnap volume-container expand
// VOLUME".
func newContainerExpandCommand(g *globalOptions) *cobra.Command {
	var opts containerExpandOptions
	cmd := &cobra.Command{
		Use:   "expand VOLUME --capacity SIZE",
		Short: "Grow a volume's container",
		Long: `Grow the container of a volume to --capacity, on every data node or on
--node alone, and print the volume's containers after the change. VOLUME
is the volume's id (as 'volume-container list' shows it), VM/VOLUME
(web1/data), or a volume name that no other VM's volume has.

SIZE is a number of bytes, or a number with a binary unit: KiB, MiB, GiB,
TiB or PiB (40GiB, 512MiB, 1.5GiB, 2TiB); it must come to whole bytes.
Decimal units (GB, G) are refused as ambiguous. A container never shrinks:
a capacity below the current one exits 6.`,
		Example: "  twinsnap volume-container expand vol-7c1e-1 --capacity 400GiB\n  twinsnap volume-container expand web1/boot --capacity 1.5TiB --node n2",
		Args:    exactArgs("VOLUME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.volume = args[0]
			opts.capacitySet = cmd.Flags().Changed("capacity")
			return runContainerExpand(cmd.Context(), g, opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.capacity, "capacity", "", "the new capacity: bytes, or a number with KiB, MiB, GiB, TiB or PiB (required)")
	f.StringVar(&opts.node, "node", "", "grow the container on this data node only (default: every data node)")
	addOutputFlag(cmd, &opts.output)
	return cmd
}

// request checks the flags and returns the change they ask for.
func (o containerExpandOptions) request() (api.ContainerExpandRequest, error) {
	switch {
	case o.volume == "":
		return api.ContainerExpandRequest{}, usagef("the volume is empty")
	case !o.capacitySet:
		return api.ContainerExpandRequest{}, usagef("--capacity is required: the container's new size, such as 40GiB")
	}
	n, err := parseSize(o.capacity)
	if err != nil {
		return api.ContainerExpandRequest{}, usagef("--capacity: %w", err)
	}
	return api.ContainerExpandRequest{CapacityBytes: n, Node: o.node}, nil
}

// runContainerExpand grows a container and prints the volume's containers.
func runContainerExpand(ctx context.Context, g *globalOptions, opts containerExpandOptions) error {
	req, err := opts.request()
	if err != nil {
		return err
	}
	ctx, c, done, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer done()
	l, err := c.ExpandVolumeContainer(ctx, opts.volume, req)
	if err = writeOutcome(ctx, err); err != nil {
		err = fmt.Errorf("expanding the container of volume %s to %s: %w", opts.volume, formatIEC(req.CapacityBytes), err)
		switch {
		case errors.Is(err, api.ErrUnknownResult):
			return withHint(err, "see the capacity now with 'twinsnap volume-container list' before retrying")
		case errors.Is(err, api.ErrConflict):
			return withHint(err, "a container never shrinks: give at least its current capacity ('twinsnap volume-container list')")
		case errors.Is(err, api.ErrNotFound):
			return withHint(err, hintContainerList)
		}
		return err
	}
	return printOutput(g.env.stdout, opts.output, normalizeContainers(l), printContainersTable)
}

// printContainersTable is the table printer of "volume-container list"
// and "volume-container expand".
func printContainersTable(b *bytes.Buffer, l *api.VolumeContainerList) {
	t := newTable(b)
	t.row("VM", "VOLUME", "NODE", "CAPACITY", "RESERVED", "USED", "FREE", "VOLUME ID")
	for _, ct := range l.Containers {
		t.row(orDash(ct.VM), orDash(ct.Volume), ct.Node, formatIEC(ct.CapacityBytes), formatIEC(ct.ReservedBytes),
			formatIEC(ct.UsedBytes), formatIEC(ct.FreeBytes), ct.VolumeID)
	}
	t.flush()
}

// normalizeContainers makes the list an empty list rather than null in
// JSON output, and returns l.
func normalizeContainers(l *api.VolumeContainerList) *api.VolumeContainerList {
	if l.Containers == nil {
		l.Containers = []api.VolumeContainer{}
	}
	return l
}

// sizeUnits are the units a size may carry, by lower-case name.
var sizeUnits = map[string]int64{
	"": 1, "b": 1,
	"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40, "pib": 1 << 50,
}

// decimalUnits are units refused as ambiguous: an operator may mean 10^9
// or 2^30 by GB.
var decimalUnits = map[string]bool{
	"k": true, "kb": true, "m": true, "mb": true, "g": true, "gb": true,
	"t": true, "tb": true, "p": true, "pb": true,
}

// errSizeSyntax is the message for a size that does not parse.
var errSizeSyntax = errors.New("give bytes or a number with KiB, MiB, GiB, TiB or PiB, such as 40GiB, 512MiB or 1.5GiB")

// parseSize parses a positive size in bytes: digits with an optional
// decimal fraction, then an optional space and an optional binary unit
// (case does not matter). The result must be a whole number of bytes that
// fits an int64.
func parseSize(s string) (int64, error) {
	i := 0
	for i < len(s) && (s[i] >= '0' && s[i] <= '9' || s[i] == '.') {
		i++
	}
	num, unit := s[:i], strings.ToLower(strings.TrimPrefix(s[i:], " "))
	if decimalUnits[unit] {
		return 0, fmt.Errorf("%q: unit %q is ambiguous: use %siB for binary units (1 %siB = %d bytes)",
			s, s[len(s)-len(unit):], strings.ToUpper(unit[:1]), strings.ToUpper(unit[:1]), sizeUnits[unit[:1]+"ib"])
	}
	mult, ok := sizeUnits[unit]
	if !ok || !validDecimal(num) {
		return 0, fmt.Errorf("%q is not a size: %w", s, errSizeSyntax)
	}
	v, ok := new(big.Rat).SetString(num)
	if !ok {
		return 0, fmt.Errorf("%q is not a size: %w", s, errSizeSyntax)
	}
	v.Mul(v, new(big.Rat).SetInt64(mult))
	switch {
	case v.Sign() == 0:
		return 0, fmt.Errorf("%q: the size must be positive", s)
	case !v.IsInt():
		return 0, fmt.Errorf("%q is not a whole number of bytes (%s): round it, or give it in a smaller unit", s, v.FloatString(1))
	case v.Num().Cmp(big.NewInt(math.MaxInt64)) > 0:
		return 0, fmt.Errorf("%q is too large: at most %d bytes (8 EiB)", s, int64(math.MaxInt64))
	}
	return v.Num().Int64(), nil
}

// validDecimal reports whether s is digits with at most one '.' between
// digits: "40", "1.5"; not "", ".5", "5.", "1.2.3".
func validDecimal(s string) bool {
	whole, frac, hasDot := strings.Cut(s, ".")
	onlyDigits := func(p string) bool { return p != "" && strings.Trim(p, "0123456789") == "" }
	return onlyDigits(whole) && (!hasDot || onlyDigits(frac))
}
