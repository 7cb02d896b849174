package state

import (
	"testing"

	"github.com/twinsnap/twinsnap/cluster/command"
)

func discardIncomplete(term uint64, lost ...string) *command.DiscardIncomplete {
	return &command.DiscardIncomplete{Term: term, LostNodes: lost, Reason: "new leader", At: t0}
}

// TestFencingDiscardsHalfWrittenSnapshot is DESIGN.md's fencing test: a
// snapshot creating in term T is discarded by discard-incomplete proposed
// in a later term, and a replica-written for it arriving afterwards (from
// the deposed coordinator's pipeline) is refused.
func TestFencingDiscardsHalfWrittenSnapshot(t *testing.T) {
	h := newHarness(t)
	h.cluster()
	h.term = 3
	h.ok(created("s1", "vm-1", 3, 2*gib, "vol-1"))

	h.term = 4 // failover: a new leader in term 4
	res := h.ok(discardIncomplete(4))
	if len(res.Affected) != 1 || res.Affected[0] != "s1" {
		t.Fatalf("discard-incomplete Affected = %v, want [s1]", res.Affected)
	}
	s := h.snapshot("s1")
	if s.State != Discarded || s.Discard == nil || !s.Discard.Fenced || s.Discard.Term != 4 {
		t.Fatalf("fenced snapshot = %+v (discard %+v)", s, s.Discard)
	}
	if h.st.FenceTerm() != 4 {
		t.Fatalf("FenceTerm = %d, want 4", h.st.FenceTerm())
	}

	// The deposed coordinator's late messages, forwarded to the new leader.
	h.refused(captured("s1", 3, gib, "vol-1"), ErrFenced)
	h.refused(replica("s1", 3, "node-b", gib, "vol-1"), ErrFenced)
	h.refused(replica("s1", 4, "node-b", gib, "vol-1"), ErrFenced)
	h.refused(&command.SnapshotFailed{ID: "s1", Term: 3, Node: "node-a", Reason: "late", At: t0}, ErrFenced)
	// A snapshot the deposed leader started in term 3, committed late.
	c := created("s2", "vm-1", 3, gib, "vol-1")
	c.Name = "late"
	h.refused(c, ErrFenced)
	// A stale discard from an older leader.
	h.refused(discardIncomplete(3), ErrFenced)

	// Its space is still reclaimed on every node, then it is gone.
	h.wantUsed("vol-1", 2*gib)
	h.ok(&command.ReplicaReclaimed{ID: "s1", Term: 3, Node: "node-a", At: t0})
	h.ok(&command.ReplicaReclaimed{ID: "s1", Term: 4, Node: "node-b", At: t0})
	h.wantUsed("vol-1", 0)
	if _, err := h.st.Snapshot("s1"); !errorsIs(err, ErrNotFound) {
		t.Fatalf("discarded snapshot not gone after reclaim: %v", err)
	}
	// The new term takes snapshots again.
	h.ok(created("s3", "vm-1", 4, gib, "vol-1"))
}

// TestPartialSurvivesDiscardIncomplete: a snapshot with one verified
// replica stays partial across a failover and completes later.
func TestPartialSurvivesDiscardIncomplete(t *testing.T) {
	h := newHarness(t)
	h.cluster()
	h.term = 3
	h.ok(created("s1", "vm-1", 3, gib, "vol-1"))
	h.ok(captured("s1", 3, gib, "vol-1"))

	h.term = 5
	res := h.ok(discardIncomplete(5))
	if len(res.Affected) != 0 {
		t.Fatalf("discard-incomplete discarded %v", res.Affected)
	}
	if s := h.snapshot("s1"); s.State != Partial {
		t.Fatalf("partial snapshot is %s after discard-incomplete", s.State)
	}
	h.refused(replica("s1", 2, "node-b", gib, "vol-1"), ErrFenced)  // older than the snapshot's own term
	h.refused(replica("s1", 6, "node-b", gib, "vol-1"), ErrInvalid) // later than the entry's term
	h.ok(replica("s1", 5, "node-b", gib, "vol-1"))                  // the peer is back
	if s := h.snapshot("s1"); s.State != Complete {
		t.Fatalf("snapshot is %s, want complete", s.State)
	}
	// A complete snapshot is untouched by later fencing.
	h.term = 6
	h.ok(discardIncomplete(6, "node-a"))
	if s := h.snapshot("s1"); s.State != Complete {
		t.Fatalf("complete snapshot is %s after discard-incomplete", s.State)
	}
	h.ok(&command.SnapshotDeleteRequested{ID: "s1", Term: 6, Requester: "admin", At: t0})
}

// TestDiscardIncompleteLostNode: losing the node that holds the only
// verified replica, or that coordinates a capture, discards the snapshot
// even within the current term.
func TestDiscardIncompleteLostNode(t *testing.T) {
	h := newHarness(t)
	h.cluster()
	h.addVM("vm-2", "node-a", "vol-7")
	h.term = 2
	h.ok(created("p1", "vm-1", 2, gib, "vol-1"))
	h.ok(captured("p1", 2, gib, "vol-1")) // only node-a holds it
	h.ok(created("c1", "vm-2", 2, gib, "vol-7"))
	h.completeSnapshot("ok1", nil, "vol-1")

	res := h.ok(discardIncomplete(2, "node-a"))
	if got := ids(res.Affected, func(s string) string { return s }); got != "[c1 p1]" {
		t.Fatalf("Affected = %s, want [c1 p1]", got)
	}
	for _, id := range []string{"p1", "c1"} {
		if s := h.snapshot(id); s.State != Discarded || !s.Discard.Fenced {
			t.Fatalf("%s = %s, want discarded by fencing", id, s.State)
		}
	}
	if s := h.snapshot("ok1"); s.State != Complete {
		t.Fatalf("complete snapshot is %s", s.State)
	}
	h.refused(replica("p1", 2, "node-b", gib, "vol-1"), ErrFenced)
}

// TestDiscardIncompleteKeepsCurrentTerm: a capture started by the new
// leader itself is not half-written in the fencing sense.
func TestDiscardIncompleteKeepsCurrentTerm(t *testing.T) {
	h := newHarness(t)
	h.cluster()
	h.term = 7
	h.ok(created("s1", "vm-1", 7, gib, "vol-1"))
	h.ok(discardIncomplete(7))
	if s := h.snapshot("s1"); s.State != Creating {
		t.Fatalf("current-term snapshot is %s", s.State)
	}
	h.ok(captured("s1", 7, gib, "vol-1"))
	h.refused(discardIncomplete(8), ErrInvalid) // a term later than the entry's
}

// TestFencedCreatingSnapshotRefused: the fencing term on its own refuses
// changes to a snapshot still creating from an earlier term, whatever its
// state says.
func TestFencedCreatingSnapshotRefused(t *testing.T) {
	h := newHarness(t)
	h.cluster()
	h.term = 3
	h.ok(created("s1", "vm-1", 3, gib, "vol-1"))
	h.st.d.fenceTerm = 4 // as if discard-incomplete(4) had raised it
	h.term = 4
	h.refused(captured("s1", 3, gib, "vol-1"), ErrFenced)
	h.refused(captured("s1", 4, gib, "vol-1"), ErrFenced)
}
