package state

import (
	"testing"

	"github.com/twinsnap/twinsnap/cluster/command"
)

func TestNodeAdded(t *testing.T) {
	h := newHarness(t)
	h.ok(dataNode("node-b"))
	h.ok(witness("w"))
	h.ok(dataNode("node-a"))
	if got := ids(h.st.Nodes(), func(n Node) string { return n.ID }); got != "[node-a node-b w]" {
		t.Fatalf("Nodes() = %s", got)
	}
	n, err := h.st.Node("node-a")
	if err != nil || n.Role != command.RoleData || n.DataAddress != "node-a:7002" || n.UpdatedIndex != 3 {
		t.Fatalf("Node(node-a) = %+v, %v", n, err)
	}
	if _, err := h.st.Node("x"); !errorsIs(err, ErrNotFound) {
		t.Fatalf("Node(x) err = %v", err)
	}

	h.refused(dataNode("node-a"), ErrExists)
	dup := witness("w2")
	dup.RaftAddress = "node-a:7000"
	h.refused(dup, ErrExists)
	h.refused(dataNode("node-c"), ErrLimit)
	bad := witness("w3")
	bad.Role = "arbiter"
	h.refused(bad, ErrInvalid)
	h.refused(witness(""), ErrInvalid)
}

func TestNodeUpdated(t *testing.T) {
	h := newHarness(t)
	h.ok(dataNode("node-a"))
	h.ok(witness("w"))
	up := &command.NodeUpdated{Node: dataNode("node-a").Node}
	up.APIAddress = "10.1.1.1:8443"
	h.ok(up)
	if n, _ := h.st.Node("node-a"); n.APIAddress != "10.1.1.1:8443" {
		t.Fatalf("api address not updated: %+v", n)
	}
	h.refused(&command.NodeUpdated{Node: dataNode("nope").Node}, ErrNotFound)
	role := &command.NodeUpdated{Node: witness("node-a").Node}
	h.refused(role, ErrInvalidTransition)
	clash := &command.NodeUpdated{Node: witness("w").Node}
	clash.RaftAddress = "node-a:7000"
	h.refused(clash, ErrExists)
	bad := &command.NodeUpdated{Node: dataNode("node-a").Node}
	bad.DataAddress = ""
	h.refused(bad, ErrInvalid)
}

func TestNodeRemoved(t *testing.T) {
	h := newHarness(t)
	h.cluster()
	h.refused(&command.NodeRemoved{ID: "node-a"}, ErrInUse) // hosts vm-1
	h.refused(&command.NodeRemoved{ID: "ghost"}, ErrNotFound)
	h.refused(&command.NodeRemoved{ID: "bad/id"}, ErrInvalid)

	// A deleting snapshot waits for both nodes; removing node-b leaves
	// only node-a to reclaim.
	h.completeSnapshot("s1", nil, "vol-1")
	h.ok(&command.SnapshotDeleteRequested{ID: "s1", Term: 1, Requester: "admin", At: t0})
	h.ok(&command.ReplicaReclaimed{ID: "s1", Term: 1, Node: "node-a", At: t0})
	res := h.ok(&command.NodeRemoved{ID: "node-b"})
	if len(res.Affected) != 1 || res.Affected[0] != "s1" {
		t.Fatalf("Affected = %v, want [s1]", res.Affected)
	}
	if _, err := h.st.Snapshot("s1"); !errorsIs(err, ErrNotFound) {
		t.Fatalf("s1 should be gone: %v", err)
	}
	if cts := h.st.Containers(ContainerFilter{Node: "node-b"}); len(cts) != 0 {
		t.Fatalf("containers of node-b survive: %+v", cts)
	}
	if _, err := h.st.Node("node-b"); !errorsIs(err, ErrNotFound) {
		t.Fatalf("node-b still there: %v", err)
	}
	h.ok(&command.NodeRemoved{ID: "w"})
}

func TestNodeRemovedRefusedWhileCoordinating(t *testing.T) {
	h := newHarness(t)
	h.cluster()
	h.ok(&command.VMUpdated{VM: vmSpec("vm-1", "node-b", "vol-1", "vol-2")})
	c := created("s1", "vm-1", 1, gib, "vol-1")
	c.Coordinator = "node-b"
	h.ok(c)
	h.refused(&command.NodeRemoved{ID: "node-b"}, ErrInUse)
}
