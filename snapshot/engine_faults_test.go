package snapshot

import (
	"context"
	"errors"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/cluster/command"
	"github.com/twinsnap/twinsnap/cluster/state"
)

// TestEngineFenced: a new leader fences the snapshot's term while the
// capture runs. The capture's proposal is refused once, the snapshot is
// discarded and reclaimed on both nodes, and nothing is retried.
func TestEngineFenced(t *testing.T) {
	t.Parallel()
	sys := newSystem(t, sysOptions{})
	sys.a.hv.set(func(h *fakeHypervisor) {
		h.beforeCapture = func(context.Context, CaptureRequest) error {
			sys.raft.setTerm(2)
			res, err := sys.raft.apply("", &command.DiscardIncomplete{Term: 2, Reason: "new leader", At: time.Now().UTC()})
			return errors.Join(err, res.Err)
		}
	})
	s := sys.snapshot(PlanRequest{VolumeIDs: []string{"vol-data"}})
	sys.waitGone(s.ID)
	want := []string{"snapshot-created→creating", "replica-reclaimed→discarded", "replica-reclaimed→gone"}
	if got := sys.transitions(s.ID); !slices.Equal(got, want) {
		t.Fatalf("snapshot went %v, want %v", got, want)
	}
	if r := sys.refusals(s.ID); len(r) != 1 || r[0].Cmd.Type() != command.TypeSnapshotCaptured || !errors.Is(r[0].Err, state.ErrFenced) {
		t.Fatalf("refused entries %+v; want snapshot-captured, fenced", r)
	}
	time.Sleep(time.Second)
	if n := sys.a.cl.proposals(command.TypeSnapshotCaptured); n != 1 {
		t.Fatalf("node-a proposed snapshot-captured %d times, want once", n)
	}
	if n := sys.a.cl.proposals(command.TypeSnapshotFailed); n != 0 {
		t.Fatalf("node-a proposed snapshot-failed %d times, want never", n)
	}
	for _, vol := range []string{"vol-boot", "vol-data"} {
		if got := sys.a.hv.bitmapsOf(vol); len(got) != 0 {
			t.Fatalf("bitmaps of %s left: %v", vol, got)
		}
	}
	sys.checkNoFiles()
}

// TestEngineUnknownResult: the capture's and the replica's proposals are
// applied but their results are lost; the engines find out from the state
// and the snapshot completes with one entry of each.
func TestEngineUnknownResult(t *testing.T) {
	t.Parallel()
	sys := newSystem(t, sysOptions{})
	sys.a.cl.dropNext(command.TypeSnapshotCaptured, 1)
	sys.b.cl.dropNext(command.TypeReplicaWritten, 1)
	s := sys.snapshot(PlanRequest{})
	sys.waitState(s.ID, state.Complete)
	if got := sys.transitions(s.ID); !slices.Equal(got, []string{"snapshot-created→creating", "snapshot-captured→partial", "replica-written→complete"}) {
		t.Fatalf("snapshot went %v", got)
	}
	sys.checkReplicas(s.ID)
}

// TestEngineDeleteMiddle: deleting the middle of three incremental
// snapshots merges it into its child on both nodes; each node reports the
// child's rewritten image, the state records it, and the child shows the
// guest the same disk as before. node-a's first report is lost in transit
// after the merge.
func TestEngineDeleteMiddle(t *testing.T) {
	t.Parallel()
	sys := newSystem(t, sysOptions{})
	var ids []string
	for range 3 {
		s := sys.snapshot(PlanRequest{VolumeIDs: []string{"vol-data"}})
		sys.waitState(s.ID, state.Complete)
		ids = append(ids, s.ID)
	}
	s1, s2, s3 := ids[0], ids[1], ids[2]
	vols := []string{"vol-boot", "vol-data"}
	refs := map[string]string{}
	for _, vol := range vols {
		refs[vol] = referenceDisk(t, 16*mib, sys.a.hv.guestWrites(vol))
		for _, n := range []*testNode{sys.a, sys.b} {
			if got := backingOf(t, n.imagePath(s3, vol)); got != s2+".qcow2" {
				t.Fatalf("%s: snapshot 3's image of %s is backed by %q, want %s.qcow2", n.id, vol, got, s2)
			}
			sameGuestView(t, n.imagePath(s3, vol), refs[vol])
		}
	}
	before, err := sys.raft.st.Snapshot(s3)
	if err != nil {
		t.Fatalf("snapshot 3: %v", err)
	}

	sys.a.cl.failNext(command.TypeReplicaReclaimed, 1, nil)
	sys.apply(&command.SnapshotDeleteRequested{ID: s2, Term: 1, Requester: "admin", At: time.Now().UTC()})
	sys.waitGone(s2)

	after, err := sys.raft.st.Snapshot(s3)
	if err != nil {
		t.Fatalf("snapshot 3: %v", err)
	}
	for _, v := range after.Volumes {
		if v.ParentID != s1 {
			t.Fatalf("snapshot 3's volume %s has parent %q in the state, want %s", v.VolumeID, v.ParentID, s1)
		}
	}
	reclaims := map[string]*command.ReplicaReclaimed{}
	for _, e := range sys.raft.entries(s2) {
		if r, ok := e.Cmd.(*command.ReplicaReclaimed); ok && e.Err == nil {
			reclaims[r.Node] = r
		}
	}
	for _, n := range []*testNode{sys.a, sys.b} {
		rep, ok := after.Replica(n.id)
		if !ok || !rep.Verified {
			t.Fatalf("snapshot 3 on %s: replica %+v, %v; want a verified one", n.id, rep, ok)
		}
		r := reclaims[n.id]
		if r == nil {
			t.Fatalf("no replica-reclaimed of %s from %s", s2, n.id)
		}
		for _, vol := range vols {
			img := n.imagePath(s3, vol)
			if _, err := os.Stat(n.imagePath(s2, vol)); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("%s: snapshot 2's image of %s is still there: %v", n.id, vol, err)
			}
			if got := backingOf(t, img); got != s1+".qcow2" {
				t.Fatalf("%s: snapshot 3's image of %s is backed by %q after the merge, want %s.qcow2", n.id, vol, got, s1)
			}
			sameGuestView(t, img, refs[vol])
			sum := fileSHA256(t, img)
			if sum == sha256Of(before, vol) {
				t.Fatalf("%s: snapshot 3's image of %s did not change in the merge", n.id, vol)
			}
			i := slices.IndexFunc(r.Merged, func(m command.MergedImage) bool { return m.SnapshotID == s3 && m.VolumeID == vol })
			if i < 0 || r.Merged[i].SHA256 != sum {
				t.Fatalf("%s reported merges %+v; want snapshot 3's %s with sha256 %s", n.id, r.Merged, vol, sum)
			}
			j := slices.IndexFunc(rep.Volumes, func(d command.VolumeData) bool { return d.VolumeID == vol })
			if j < 0 || rep.Volumes[j].SHA256 != sum {
				t.Fatalf("the state records snapshot 3's replica on %s as %+v; want %s with sha256 %s", n.id, rep.Volumes, vol, sum)
			}
		}
	}
}

// sha256Of returns the captured SHA-256 of a snapshot's volume.
func sha256Of(sn state.Snapshot, volumeID string) string {
	for _, v := range sn.Volumes {
		if v.VolumeID == volumeID {
			return v.SHA256
		}
	}
	return ""
}
