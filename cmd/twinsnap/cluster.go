package main

import (
	"bytes"
	"context"
	"fmt"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/twinsnap/twinsnap/internal/api"
)

// newClusterCommand returns "twinsnap cluster" and its subcommands.
func newClusterCommand(g *globalOptions) *cobra.Command {
	cmd := newGroupCommand("cluster", "Show the cluster's state")
	cmd.AddCommand(newClusterStatusCommand(g))
	return cmd
}

// clusterStatusOptions are the flags of "cluster status".
type clusterStatusOptions struct {
	output outputFormat
}

// newClusterStatusCommand returns "twinsnap cluster status".
func newClusterStatusCommand(g *globalOptions) *cobra.Command {
	var opts clusterStatusOptions
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the leader, Raft indexes and each member's health",
		Long: `Show the cluster as the answering node sees it: the leader, the Raft term,
the last and commit indexes, and for each member its Raft state, whether it
is healthy and reachable, its own term and indexes, the round-trip time to
it and, when it could not be asked, the error.`,
		Example: "  twinsnap cluster status\n  twinsnap cluster status -o json",
		Args:    exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runClusterStatus(cmd.Context(), g, opts)
		},
	}
	addOutputFlag(cmd, &opts.output)
	return cmd
}

// runClusterStatus prints the cluster status.
func runClusterStatus(ctx context.Context, g *globalOptions, opts clusterStatusOptions) error {
	ctx, c, done, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer done()
	st, err := c.ClusterStatus(ctx)
	if err != nil {
		return fmt.Errorf("getting the cluster status: %w", err)
	}
	if st.Peers == nil {
		st.Peers = []api.PeerStatus{}
	}
	return printOutput(g.env.stdout, opts.output, st, printClusterStatusTable)
}

// printClusterStatusTable is the table printer of "cluster status".
func printClusterStatusTable(b *bytes.Buffer, st *api.ClusterStatus) {
	leader := st.LeaderID
	if leader == "" {
		leader = "none"
	}
	t := newTable(b)
	t.row("Leader:", leader)
	t.row("Term:", strconv.FormatUint(st.Term, 10))
	t.row("Last index:", strconv.FormatUint(st.LastIndex, 10))
	t.row("Commit index:", strconv.FormatUint(st.CommitIndex, 10))
	t.row("Answered by:", orDash(st.AnsweredBy))
	t.flush()
	b.WriteString("\n")

	t = newTable(b)
	t.row("ID", "ROLE", "STATE", "HEALTHY", "REACHABLE", "TERM", "LAST INDEX", "APPLIED", "RTT", "ERROR")
	for _, p := range st.Peers {
		state, term, last, applied := "-", "-", "-", "-"
		if s := p.Status; s != nil {
			state = orDash(s.RaftState)
			term = strconv.FormatUint(s.Term, 10)
			last = strconv.FormatUint(s.LastIndex, 10)
			applied = strconv.FormatUint(s.AppliedIndex, 10)
		}
		t.row(p.ID, orDash(string(p.Role)), state, yesNo(p.Healthy), yesNo(p.Reachable), term, last, applied,
			formatRTT(p.RTTMillis), orDash(p.Error))
	}
	t.flush()
}

// formatRTT shows a round-trip time in milliseconds with about three
// significant digits; zero (not measured, or the answering node itself)
// shows as "-".
func formatRTT(ms float64) string {
	switch {
	case ms <= 0:
		return "-"
	case ms >= 100:
		return strconv.FormatFloat(ms, 'f', 0, 64) + "ms"
	case ms >= 10:
		return strconv.FormatFloat(ms, 'f', 1, 64) + "ms"
	}
	return strconv.FormatFloat(ms, 'f', 2, 64) + "ms"
}
