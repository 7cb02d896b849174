package main

import (
	"bytes"
	"context"
	"fmt"
	"sort"

	"github.com/spf13/cobra"

	"github.com/twinsnap/twinsnap/internal/api"
)

// newSettingsCommand returns "twinsnap settings" and its subcommands.
func newSettingsCommand(g *globalOptions) *cobra.Command {
	cmd := newGroupCommand("settings", "Show and change cluster settings")
	snapshots := newGroupCommand("snapshots", "Turn taking snapshots on or off, system-wide")
	snapshots.AddCommand(newSnapshotsSetCommand(g, true), newSnapshotsSetCommand(g, false))
	cmd.AddCommand(newSettingsShowCommand(g), snapshots)
	return cmd
}

// settingsShowOptions are the flags of "settings show".
type settingsShowOptions struct {
	output outputFormat
}

// newSettingsShowCommand returns "twinsnap settings show".
func newSettingsShowCommand(g *globalOptions) *cobra.Command {
	var opts settingsShowOptions
	cmd := &cobra.Command{
		Use:     "show",
		Short:   "Show the cluster settings",
		Example: "  twinsnap settings show\n  twinsnap settings show -o json",
		Args:    exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runSettingsShow(cmd.Context(), g, opts)
		},
	}
	addOutputFlag(cmd, &opts.output)
	return cmd
}

// runSettingsShow prints the cluster settings.
func runSettingsShow(ctx context.Context, g *globalOptions, opts settingsShowOptions) error {
	ctx, c, done, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer done()
	s, err := c.Settings(ctx)
	if err != nil {
		return fmt.Errorf("getting the settings: %w", err)
	}
	return printOutput(g.env.stdout, opts.output, s, printSettingsTable)
}

// snapshotsSetOptions are the flags of "settings snapshots enable|disable".
type snapshotsSetOptions struct {
	enabled bool
	output  outputFormat
}

// newSnapshotsSetCommand returns "twinsnap settings snapshots enable" or
// "... disable".
func newSnapshotsSetCommand(g *globalOptions, enabled bool) *cobra.Command {
	opts := snapshotsSetOptions{enabled: enabled}
	use, short := "enable", "Allow taking snapshots"
	if !enabled {
		use, short = "disable", "Refuse new snapshots (existing ones stay)"
	}
	cmd := &cobra.Command{
		Use:     use,
		Short:   short,
		Long:    short + ", then print the resulting setting.",
		Example: "  twinsnap settings snapshots " + use,
		Args:    exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runSnapshotsSet(cmd.Context(), g, opts)
		},
	}
	addOutputFlag(cmd, &opts.output)
	return cmd
}

// runSnapshotsSet turns snapshots on or off and prints the result.
func runSnapshotsSet(ctx context.Context, g *globalOptions, opts snapshotsSetOptions) error {
	ctx, c, done, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer done()
	s, err := c.SetSnapshotsEnabled(ctx, opts.enabled)
	if err = writeOutcome(ctx, err); err != nil {
		verb := "enabling"
		if !opts.enabled {
			verb = "disabling"
		}
		return fmt.Errorf("%s snapshots: %w", verb, err)
	}
	return printOutput(g.env.stdout, opts.output, s, printSnapshotsSettingTable)
}

// printSettingsTable is the table printer of "settings show": the
// snapshots switch, then any other values by name.
func printSettingsTable(b *bytes.Buffer, s *api.Settings) {
	t := newTable(b)
	t.row("SETTING", "VALUE")
	t.row("snapshots", enabledDisabled(s.SnapshotsEnabled))
	keys := make([]string, 0, len(s.Values))
	for k := range s.Values {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		t.row(k, orDash(s.Values[k]))
	}
	t.flush()
}

// printSnapshotsSettingTable is the table printer of "settings snapshots
// enable|disable": the one setting changed.
func printSnapshotsSettingTable(b *bytes.Buffer, s *api.Settings) {
	t := newTable(b)
	t.row("SETTING", "VALUE")
	t.row("snapshots", enabledDisabled(s.SnapshotsEnabled))
	t.flush()
}

// enabledDisabled shows a switch in a table.
func enabledDisabled(b bool) string {
	if b {
		return "enabled"
	}
	return "disabled"
}
