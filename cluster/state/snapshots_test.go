package state

import (
	"testing"

	"github.com/twinsnap/twinsnap/cluster/command"
)

func TestSnapshotCreated(t *testing.T) {
	h := newHarness(t)
	h.cluster()
	h.term = 3
	c := created("s1", "vm-1", 3, 4*gib, "vol-1", "vol-2")
	c.Description = "before upgrade"
	h.ok(c)
	s := h.snapshot("s1")
	if s.State != Creating || s.Term != 3 || s.Coordinator != "node-a" || s.CreatedIndex != h.index ||
		s.Config.ID != "vm-1" || len(s.Config.Volumes) != 2 || len(s.Volumes) != 2 || s.Description != "before upgrade" {
		t.Fatalf("snapshot = %+v", s)
	}
	if got := ids(s.Charged, func(n string) string { return n }); got != "[node-a node-b]" {
		t.Fatalf("Charged = %s", got)
	}
	h.wantUsed("vol-1", 4*gib)
	h.wantUsed("vol-2", 4*gib)
}

func TestSnapshotCreatedRefused(t *testing.T) {
	h := newHarness(t)
	h.cluster()
	h.term = 2
	h.ok(&command.VMRegistered{VM: vmSpec("vm-2", "node-a", "vol-7")})
	h.ok(&command.ContainerCreated{VolumeID: "vol-7", Node: "node-a", CapacityBytes: 30 * gib})
	mk := func(mut func(*command.SnapshotCreated)) *command.SnapshotCreated {
		c := created("s1", "vm-1", 2, gib, "vol-1", "vol-2")
		mut(c)
		return c
	}
	h.refused(mk(func(c *command.SnapshotCreated) { c.VMID = "vm-9" }), ErrNotFound)
	h.refused(mk(func(c *command.SnapshotCreated) { c.Volumes = c.Volumes[1:] }), ErrInvalid)                // no boot volume
	h.refused(mk(func(c *command.SnapshotCreated) { c.Volumes[1].VolumeID = "vol-7" }), ErrInvalid)          // another VM's volume
	h.refused(mk(func(c *command.SnapshotCreated) { c.Volumes[1].EstimatedBytes = 20*gib + 1 }), ErrNoSpace) // no room
	h.refused(mk(func(c *command.SnapshotCreated) { c.Coordinator = "node-b" }), ErrInvalid)                 // not the host
	h.refused(mk(func(c *command.SnapshotCreated) { c.Coordinator = "w" }), ErrInvalid)                      // a witness
	h.refused(mk(func(c *command.SnapshotCreated) { c.Term = 3 }), ErrInvalid)                               // from the future
	h.refused(mk(func(c *command.SnapshotCreated) { c.Volumes[0].ParentID = "nope" }), ErrNotFound)          // unknown parent
	h.refused(mk(func(c *command.SnapshotCreated) { c.Required = command.ConsistencyApplication; c.Desired = "" }), ErrInvalid)

	// vol-7 has a container only on node-a: both data nodes need one.
	h.refused(&command.SnapshotCreated{
		ID: "s7", VMID: "vm-2", Name: "x", Creator: "admin", CreatedAt: t0, Coordinator: "node-a", Term: 2,
		Desired: command.ConsistencyCrash, Required: command.ConsistencyCrash,
		Volumes: []command.SnapshotVolume{{VolumeID: "vol-7"}},
	}, ErrNotFound)

	h.ok(mk(func(*command.SnapshotCreated) {}))
	h.refused(mk(func(*command.SnapshotCreated) {}), ErrExists)
	h.refused(mk(func(c *command.SnapshotCreated) { c.ID = "s2" }), ErrInUse)                                           // same name is fine, but a capture is in progress
	h.refused(mk(func(c *command.SnapshotCreated) { c.ID, c.Name = "s2", "other" }), ErrInUse)                          // capture in progress
	h.refused(mk(func(c *command.SnapshotCreated) { c.ID, c.Name, c.Volumes[0].ParentID = "s2", "b", "s1" }), ErrInUse) // still in progress

	h.ok(captured("s1", 2, gib, "vol-1", "vol-2"))
	h.refused(mk(func(c *command.SnapshotCreated) { c.ID, c.Name, c.Volumes[0].ParentID = "s2", "b", "s9" }), ErrNotFound)
	h.ok(mk(func(c *command.SnapshotCreated) { c.ID, c.Name, c.Volumes[0].ParentID = "s2", "b", "s1" })) // partial parent is fine

	off := false
	h.ok(&command.SettingsSet{SnapshotsEnabled: &off})
	h.refused(mk(func(c *command.SnapshotCreated) { c.ID, c.Name = "s3", "c" }), ErrSnapshotsDisabled)
}

// TestSnapshotLifecycle walks DESIGN.md's happy path: creating, partial,
// complete, deleting, gone, with the space accounting at each step.
func TestSnapshotLifecycle(t *testing.T) {
	h := newHarness(t)
	h.cluster()
	h.ok(created("s1", "vm-1", 1, 2*gib, "vol-1"))
	h.wantUsed("vol-1", 2*gib)

	cap := captured("s1", 1, gib, "vol-1")
	cap.Achieved, cap.StepDownReason = command.ConsistencyCrash, "agent timed out"
	h.ok(cap)
	s := h.snapshot("s1")
	if s.State != Partial || s.Achieved != command.ConsistencyCrash || s.StepDownReason != "agent timed out" ||
		s.Volumes[0].SHA256 != sumA || s.Volumes[0].StoredBytes != gib || !s.CapturedAt.Equal(cap.CapturedAt) {
		t.Fatalf("captured snapshot = %+v", s)
	}
	if r, ok := s.Replica("node-a"); !ok || !r.Verified {
		t.Fatalf("coordinator replica = %+v, %v", r, ok)
	}
	h.wantUsed("vol-1", gib) // the estimate is replaced by the real size

	unverified := replica("s1", 1, "node-b", gib, "vol-1")
	unverified.Verified = false
	h.ok(unverified)
	if s := h.snapshot("s1"); s.State != Partial || len(s.Replicas) != 2 {
		t.Fatalf("after an unverified replica: %+v", s)
	}
	h.ok(replica("s1", 1, "node-b", gib, "vol-1"))
	s = h.snapshot("s1")
	if s.State != Complete || s.CompletedAt.IsZero() {
		t.Fatalf("after the peer's verified replica: %+v", s)
	}

	h.ok(&command.SnapshotDeleteRequested{ID: "s1", Term: 1, Requester: "admin", At: t0})
	s = h.snapshot("s1")
	if s.State != Deleting || s.DeleteRequester != "admin" || ids(s.Reclaim, func(n string) string { return n }) != "[node-a node-b]" {
		t.Fatalf("deleting snapshot = %+v", s)
	}
	h.ok(&command.ReplicaReclaimed{ID: "s1", Term: 1, Node: "node-b", At: t0})
	if h.used("vol-1", "node-b") != 0 || h.used("vol-1", "node-a") != gib {
		t.Fatalf("reclaim on node-b freed the wrong space")
	}
	h.refused(&command.ReplicaReclaimed{ID: "s1", Term: 1, Node: "node-b", At: t0}, ErrInvalidTransition)
	res := h.ok(&command.ReplicaReclaimed{ID: "s1", Term: 1, Node: "node-a", At: t0})
	if len(res.Affected) != 1 || res.Affected[0] != "s1" {
		t.Fatalf("Affected = %v, want [s1]", res.Affected)
	}
	if _, err := h.st.Snapshot("s1"); !errorsIs(err, ErrNotFound) {
		t.Fatalf("snapshot not gone: %v", err)
	}
	h.wantUsed("vol-1", 0)
	h.ok(created("s2", "vm-1", 1, gib, "vol-1")) // the name and space are free again
}

func TestSnapshotCapturedRefused(t *testing.T) {
	h := newHarness(t)
	h.cluster()
	h.ok(created("s1", "vm-1", 1, gib, "vol-1", "vol-2"))
	mk := func(mut func(*command.SnapshotCaptured)) *command.SnapshotCaptured {
		c := captured("s1", 1, gib, "vol-1", "vol-2")
		mut(c)
		return c
	}
	h.refused(mk(func(c *command.SnapshotCaptured) { c.ID = "s9" }), ErrNotFound)
	h.refused(mk(func(c *command.SnapshotCaptured) { c.Node = "node-b" }), ErrFenced) // not the coordinator
	h.refused(mk(func(c *command.SnapshotCaptured) { c.Volumes = c.Volumes[:1] }), ErrInvalid)
	h.refused(mk(func(c *command.SnapshotCaptured) { c.Volumes[1].VolumeID = "vol-3" }), ErrInvalid)
	h.refused(mk(func(c *command.SnapshotCaptured) { c.Achieved = command.ConsistencyCrash }), ErrInvalid) // step-down without reason
	h.refused(mk(func(c *command.SnapshotCaptured) { c.Verified = false }), ErrInvalid)
	h.refused(mk(func(c *command.SnapshotCaptured) { c.Term = 2 }), ErrInvalid) // later than the entry

	strict := created("s2", "vm-1", 1, gib, "vol-1")
	strict.Name, strict.Required = "strict", command.ConsistencyApplication
	h.ok(captured("s1", 1, gib, "vol-1", "vol-2"))
	h.refused(mk(func(*command.SnapshotCaptured) {}), ErrInvalidTransition) // already partial
	h.ok(strict)
	below := captured("s2", 1, gib, "vol-1")
	below.Achieved, below.StepDownReason = command.ConsistencyCrash, "no agent"
	h.refused(below, ErrInvalid) // below the required level
}

func TestReplicaWrittenRefused(t *testing.T) {
	h := newHarness(t)
	h.cluster()
	h.ok(created("s1", "vm-1", 1, gib, "vol-1"))
	h.refused(replica("s1", 1, "node-b", gib, "vol-1"), ErrInvalidTransition) // not captured yet
	h.ok(captured("s1", 1, gib, "vol-1"))
	h.refused(replica("s9", 1, "node-b", gib, "vol-1"), ErrNotFound)
	h.refused(replica("s1", 1, "node-a", gib, "vol-1"), ErrExists) // node-a already verified
	h.refused(replica("s1", 1, "w", gib, "vol-1"), ErrInvalid)
	h.refused(replica("s1", 1, "node-c", gib, "vol-1"), ErrNotFound)
	h.refused(replica("s1", 1, "node-b", gib+1, "vol-1"), ErrChecksumMismatch)
	bad := replica("s1", 1, "node-b", gib, "vol-1")
	bad.Volumes[0].SHA256 = sumB
	h.refused(bad, ErrChecksumMismatch)
	h.refused(replica("s1", 1, "node-b", gib, "vol-2"), ErrInvalid)
	h.refused(replica("s1", 1, "node-b", gib), ErrInvalid) // no volumes
	h.ok(replica("s1", 1, "node-b", gib, "vol-1"))
	h.refused(replica("s1", 1, "node-b", gib, "vol-1"), ErrInvalidTransition) // complete already
}

func TestSnapshotFailed(t *testing.T) {
	h := newHarness(t)
	h.cluster()
	h.ok(created("s1", "vm-1", 1, 2*gib, "vol-1"))
	h.ok(&command.SnapshotFailed{ID: "s1", Term: 1, Node: "node-a", Reason: "QMP transaction: GenericError", At: t0})
	s := h.snapshot("s1")
	if s.State != Discarded || s.Discard == nil || s.Discard.Fenced || s.Discard.Reason == "" || len(s.Reclaim) != 2 {
		t.Fatalf("failed snapshot = %+v", s)
	}
	h.wantUsed("vol-1", 2*gib) // until the nodes reclaim
	h.refused(captured("s1", 1, gib, "vol-1"), ErrInvalidTransition)
	h.refused(&command.SnapshotFailed{ID: "s1", Term: 1, Node: "node-a", Reason: "again", At: t0}, ErrInvalidTransition)
	h.refused(&command.SnapshotDeleteRequested{ID: "s1", Term: 1, Requester: "admin", At: t0}, ErrInvalidTransition)
	h.ok(created("s2", "vm-1", 1, gib, "vol-1")) // the name "snap s1" is free, the capture slot too
	h.wantUsed("vol-1", 3*gib)

	h.ok(captured("s2", 1, gib, "vol-1"))
	h.refused(&command.SnapshotFailed{ID: "s2", Term: 1, Node: "node-b", Reason: "stream broke", At: t0}, ErrInvalidTransition)
	h.refused(&command.SnapshotFailed{ID: "s2", Term: 1, Node: "node-b", At: t0}, ErrInvalid) // no reason
	h.refused(&command.SnapshotFailed{ID: "s9", Term: 1, Node: "node-b", Reason: "x", At: t0}, ErrNotFound)
}

func TestSnapshotDeleteRequestedRefused(t *testing.T) {
	h := newHarness(t)
	h.cluster()
	h.ok(created("s1", "vm-1", 1, gib, "vol-1"))
	del := &command.SnapshotDeleteRequested{ID: "s1", Term: 1, Requester: "admin", At: t0}
	h.refused(del, ErrInvalidTransition) // creating
	h.ok(captured("s1", 1, gib, "vol-1"))
	h.refused(del, ErrInvalidTransition) // partial
	h.ok(replica("s1", 1, "node-b", gib, "vol-1"))
	h.ok(&command.ExportJobCreated{ID: "j1", SnapshotID: "s1", Node: "node-b", Target: "smb://nas/exports", Format: command.ExportQCOW2, Creator: "admin", CreatedAt: t0})
	h.refused(del, ErrInUse)
	h.ok(&command.JobStateChanged{ID: "j1", State: command.JobCancelled, At: t0})
	c := created("s2", "vm-1", 1, gib, "vol-1")
	c.Volumes[0].ParentID = "s1"
	h.ok(c)
	h.refused(del, ErrInUse) // a capture builds on it
	h.ok(captured("s2", 1, gib, "vol-1"))
	h.refused(del, ErrInUse) // the child is only partial
	h.ok(replica("s2", 1, "node-b", gib, "vol-1"))
	h.refused(&command.SnapshotDeleteRequested{ID: "s9", Term: 1, Requester: "admin", At: t0}, ErrNotFound)
	h.refused(&command.SnapshotDeleteRequested{ID: "s1", Term: 1, At: t0}, ErrInvalid)
	h.ok(del)
	h.refused(del, ErrInvalidTransition) // deleting already
}

func TestReplicaReclaimedRefused(t *testing.T) {
	h := newHarness(t)
	h.cluster()
	h.ok(created("s1", "vm-1", 1, gib, "vol-1"))
	rec := &command.ReplicaReclaimed{ID: "s1", Term: 1, Node: "node-a", At: t0}
	h.refused(rec, ErrInvalidTransition) // creating
	h.refused(&command.ReplicaReclaimed{ID: "s9", Term: 1, Node: "node-a", At: t0}, ErrNotFound)
	h.refused(&command.ReplicaReclaimed{ID: "s1", Term: 1, Node: "w", At: t0}, ErrInvalidTransition)
	h.refused(&command.ReplicaReclaimed{ID: "s1", Term: 1, At: t0}, ErrInvalid)
}

// TestChainMerge deletes the middle of a chain: its child's chain skips it.
func TestChainMerge(t *testing.T) {
	h := newHarness(t)
	h.cluster()
	h.completeSnapshot("s1", nil, "vol-1", "vol-2")
	h.completeSnapshot("s2", map[string]string{"vol-1": "s1", "vol-2": "s1"}, "vol-1", "vol-2")
	h.completeSnapshot("s3", map[string]string{"vol-1": "s2"}, "vol-1")
	h.ok(&command.SnapshotDeleteRequested{ID: "s2", Term: 1, Requester: "retention", At: t0})
	h.ok(&command.ReplicaReclaimed{ID: "s2", Term: 1, Node: "node-a", At: t0})
	res := h.ok(&command.ReplicaReclaimed{ID: "s2", Term: 1, Node: "node-b", At: t0})
	if len(res.Affected) != 1 || res.Affected[0] != "s2" {
		t.Fatalf("Affected = %v", res.Affected)
	}
	if p := h.snapshot("s3").Volumes[0].ParentID; p != "s1" {
		t.Fatalf("s3's parent after merging s2 = %q, want s1", p)
	}
	h.wantUsed("vol-1", gib) // s1 and s3, half a GiB each
	h.wantUsed("vol-2", gib/2)
}

func TestSnapshotQueries(t *testing.T) {
	h := newHarness(t)
	h.cluster()
	h.addVM("vm-2", "node-a", "vol-7")
	h.completeSnapshot("s-b", nil, "vol-1")
	h.ok(created("s-a", "vm-1", 1, gib, "vol-1"))
	c := created("s-c", "vm-2", 1, gib, "vol-7")
	h.ok(c)
	byID := func(s Snapshot) string { return s.ID }
	if got := ids(h.st.Snapshots(SnapshotFilter{}), byID); got != "[s-b s-a s-c]" {
		t.Fatalf("all snapshots, oldest first = %s", got)
	}
	if got := ids(h.st.Snapshots(SnapshotFilter{VMID: "vm-1"}), byID); got != "[s-b s-a]" {
		t.Fatalf("vm-1's snapshots = %s", got)
	}
	if got := ids(h.st.Snapshots(SnapshotFilter{States: []SnapshotState{Creating}}), byID); got != "[s-a s-c]" {
		t.Fatalf("creating snapshots = %s", got)
	}
	if got := ids(h.st.Snapshots(SnapshotFilter{VMID: "vm-2", States: []SnapshotState{Complete, Partial}}), byID); got != "[]" {
		t.Fatalf("vm-2's finished snapshots = %s", got)
	}
	if got := ids(h.st.Snapshots(SnapshotFilter{VMID: "vm-9"}), byID); got != "[]" {
		t.Fatalf("unknown VM's snapshots = %s", got)
	}
	s := h.st.Snapshots(SnapshotFilter{VMID: "vm-1"})[0]
	s.Volumes[0].SHA256 = "mutated"
	s.Replicas[0].Volumes[0].SHA256 = "mutated"
	s.Config.Volumes[0].Name = "mutated"
	s.Charged[0] = "mutated"
	again := h.snapshot("s-b")
	if again.Volumes[0].SHA256 == "mutated" || again.Replicas[0].Volumes[0].SHA256 == "mutated" ||
		again.Config.Volumes[0].Name == "mutated" || again.Charged[0] == "mutated" {
		t.Fatalf("Snapshots() returned shared memory")
	}
	if _, err := h.st.Snapshot("nope"); !errorsIs(err, ErrNotFound) {
		t.Fatalf("Snapshot(nope) err = %v", err)
	}
}
