package main

import (
	"bytes"
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/twinsnap/twinsnap/internal/api"
)

// newNodeCommand returns "twinsnap node" and its subcommands.
func newNodeCommand(g *globalOptions) *cobra.Command {
	cmd := newGroupCommand("node", "List and remove cluster members")
	cmd.AddCommand(newNodeListCommand(g), newNodeRemoveCommand(g))
	return cmd
}

// nodeListOptions are the flags of "node list".
type nodeListOptions struct {
	output outputFormat
}

// newNodeListCommand returns "twinsnap node list".
func newNodeListCommand(g *globalOptions) *cobra.Command {
	var opts nodeListOptions
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the cluster members",
		Long: `List the cluster members: their role (data or witness), their Raft, API
and data addresses, whether they vote, and which one leads.`,
		Example: "  twinsnap node list\n  twinsnap node list -o json",
		Args:    exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runNodeList(cmd.Context(), g, opts)
		},
	}
	addOutputFlag(cmd, &opts.output)
	return cmd
}

// runNodeList prints the cluster members.
func runNodeList(ctx context.Context, g *globalOptions, opts nodeListOptions) error {
	ctx, c, done, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer done()
	nodes, err := c.Nodes(ctx)
	if err != nil {
		return fmt.Errorf("listing nodes: %w", err)
	}
	if nodes.Nodes == nil {
		nodes.Nodes = []api.Node{}
	}
	return printOutput(g.env.stdout, opts.output, nodes, printNodesTable)
}

// printNodesTable is the table printer of "node list".
func printNodesTable(b *bytes.Buffer, l *api.NodeList) {
	t := newTable(b)
	t.row("ID", "ROLE", "RAFT ADDRESS", "API ADDRESS", "DATA ADDRESS", "VOTER", "LEADER")
	for _, n := range l.Nodes {
		t.row(n.ID, orDash(string(n.Role)), orDash(n.RaftAddress), orDash(n.APIAddress), orDash(n.DataAddress),
			yesNo(n.Voter), yesNo(n.Leader))
	}
	t.flush()
}

// nodeRemoveOptions are the flags and argument of "node remove".
type nodeRemoveOptions struct {
	id  string
	yes bool
}

// newNodeRemoveCommand returns "twinsnap node remove ID".
func newNodeRemoveCommand(g *globalOptions) *cobra.Command {
	var opts nodeRemoveOptions
	cmd := &cobra.Command{
		Use:   "remove ID",
		Short: "Remove a node from the cluster",
		Long: `Remove a node from the cluster's Raft configuration and membership.

On a terminal it asks for confirmation unless --yes is given; when stdin is
not a terminal it refuses to run without --yes.`,
		Example: "  twinsnap node remove witness-1\n  twinsnap node remove witness-1 --yes",
		Args:    exactArgs("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.id = args[0]
			return runNodeRemove(cmd.Context(), g, opts)
		},
	}
	cmd.Flags().BoolVarP(&opts.yes, "yes", "y", false, "do not ask for confirmation")
	return cmd
}

// runNodeRemove removes a node after confirmation.
func runNodeRemove(ctx context.Context, g *globalOptions, opts nodeRemoveOptions) error {
	if opts.id == "" {
		return usagef("the node ID is empty")
	}
	if !opts.yes {
		if err := confirm(ctx, g.env, fmt.Sprintf("Remove node %s from the cluster?", opts.id)); err != nil {
			return err
		}
	}
	ctx, c, done, err := g.connect(ctx)
	if err != nil {
		return err
	}
	defer done()
	if err := writeOutcome(ctx, c.RemoveNode(ctx, opts.id)); err != nil {
		return fmt.Errorf("removing node %s: %w", opts.id, err)
	}
	if _, err := fmt.Fprintf(g.env.stdout, "Removed node %s.\n", opts.id); err != nil {
		return fmt.Errorf("writing output: %w", err)
	}
	return nil
}
