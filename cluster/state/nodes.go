package state

import (
	"fmt"
	"slices"

	"github.com/twinsnap/twinsnap/cluster/command"
)

// MaxDataNodes is how many data nodes a cluster has at most (DESIGN.md:
// exactly two once set up).
const MaxDataNodes = 2

// Node is a cluster member.
type Node struct {
	command.Node
	// UpdatedIndex is the log index of the last change.
	UpdatedIndex uint64 `json:"updated_index"`
}

func (n *Node) clone() Node { return *n }

func init() {
	on(command.TypeNodeAdded, applyNodeAdded)
	on(command.TypeNodeUpdated, applyNodeUpdated)
	on(command.TypeNodeRemoved, applyNodeRemoved)
}

// raftAddressUser returns the id of another node using addr, or "".
func (d *data) raftAddressUser(addr, except string) string {
	for _, n := range d.nodes.sorted() {
		if n.ID != except && n.RaftAddress == addr {
			return n.ID
		}
	}
	return ""
}

func applyNodeAdded(c *applyCtx, cmd *command.NodeAdded) error {
	if c.d.nodes.get(cmd.ID) != nil {
		return fmt.Errorf("node %q: %w", cmd.ID, ErrExists)
	}
	if other := c.d.raftAddressUser(cmd.RaftAddress, ""); other != "" {
		return fmt.Errorf("raft address %s of node %q: %w", cmd.RaftAddress, other, ErrExists)
	}
	if cmd.Role == command.RoleData && len(c.d.dataNodes()) >= MaxDataNodes {
		return fmt.Errorf("%w: the cluster already has %d data nodes", ErrLimit, MaxDataNodes)
	}
	c.d.nodes.put(cmd.ID, &Node{Node: cmd.Node, UpdatedIndex: c.index})
	return nil
}

func applyNodeUpdated(c *applyCtx, cmd *command.NodeUpdated) error {
	old := c.d.nodes.get(cmd.ID)
	if old == nil {
		return fmt.Errorf("node %q: %w", cmd.ID, ErrNotFound)
	}
	if old.Role != cmd.Role {
		return fmt.Errorf("%w: node %q is a %s; a role never changes (remove and add the node)", ErrInvalidTransition, cmd.ID, old.Role)
	}
	if other := c.d.raftAddressUser(cmd.RaftAddress, cmd.ID); other != "" {
		return fmt.Errorf("raft address %s of node %q: %w", cmd.RaftAddress, other, ErrExists)
	}
	c.d.nodes.put(cmd.ID, &Node{Node: cmd.Node, UpdatedIndex: c.index})
	return nil
}

// applyNodeRemoved forgets a node. A data node's volume containers go with
// it, and so does its duty to reclaim space: snapshots waiting only for it
// are gone. Its replica records stay as history but no longer count as
// surviving (the node is not live).
func applyNodeRemoved(c *applyCtx, cmd *command.NodeRemoved) error {
	d := c.d
	if d.nodes.get(cmd.ID) == nil {
		return fmt.Errorf("node %q: %w", cmd.ID, ErrNotFound)
	}
	for _, vm := range d.vms.sorted() {
		if vm.HostNode == cmd.ID {
			return fmt.Errorf("%w: node %q hosts VM %q", ErrInUse, cmd.ID, vm.ID)
		}
	}
	for _, j := range d.jobs.sorted() {
		if j.Node == cmd.ID && !j.State.Final() {
			return fmt.Errorf("%w: node %q runs %s job %q", ErrInUse, cmd.ID, j.State, j.ID)
		}
	}
	snaps := d.snapshots.sorted()
	for _, sn := range snaps {
		if sn.State == Creating && sn.Coordinator == cmd.ID {
			return fmt.Errorf("%w: node %q coordinates snapshot %q in state creating (propose discard-incomplete first)", ErrInUse, cmd.ID, sn.ID)
		}
	}

	d.nodes.del(cmd.ID)
	for _, k := range d.containers.keys() {
		if ct := d.containers.get(k); ct.Node == cmd.ID {
			d.containers.del(k)
		}
	}
	for _, sn := range snaps {
		if !slices.Contains(sn.Charged, cmd.ID) && !slices.Contains(sn.Reclaim, cmd.ID) {
			continue
		}
		n := sn.clone()
		n.Charged = without(n.Charged, cmd.ID)
		n.Reclaim = without(n.Reclaim, cmd.ID)
		n.UpdatedIndex = c.index
		if (n.State == Deleting || n.State == Discarded) && len(n.Reclaim) == 0 {
			c.gone(&n)
			continue
		}
		d.snapshots.put(n.ID, &n)
	}
	return nil
}

// without returns list without s, as a new slice (nil when empty).
func without(list []string, s string) []string {
	var out []string
	for _, v := range list {
		if v != s {
			out = append(out, v)
		}
	}
	return out
}

// Node returns the node with id, or an error wrapping ErrNotFound.
func (s *State) Node(id string) (Node, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	n := s.d.nodes.get(id)
	if n == nil {
		return Node{}, fmt.Errorf("node %q: %w", id, ErrNotFound)
	}
	return n.clone(), nil
}

// Nodes returns every node, sorted by id.
func (s *State) Nodes() []Node {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []Node
	for _, n := range s.d.nodes.sorted() {
		out = append(out, n.clone())
	}
	return out
}
