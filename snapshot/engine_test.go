package snapshot

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/cluster/command"
	"github.com/twinsnap/twinsnap/cluster/state"
)

// fakeSum is a well-formed SHA-256 for snapshots put into the state
// without any image behind them.
var fakeSum = strings.Repeat("5a", 32)

// fakeSnapshot puts a snapshot of vols into the state as the leader and
// node-a would, without touching a disk: created (volumes incremental to
// parents[vol]), captured on node-a, and with complete also written on
// node-b. It returns the snapshot's id.
func (s *testSystem) fakeSnapshot(id string, complete bool, parents map[string]string, vols ...string) string {
	s.t.Helper()
	vm, err := s.raft.st.VM(testVM)
	if err != nil {
		s.t.Fatalf("VM: %v", err)
	}
	term := s.raft.currentTerm()
	created := &command.SnapshotCreated{
		ID: id, VMID: testVM, Name: "snap " + id, Creator: "admin", CreatedAt: time.Now().UTC(),
		Desired: command.ConsistencyCrash, Required: command.ConsistencyCrash, Coordinator: vm.HostNode, Term: term,
	}
	var data []command.VolumeData
	for _, v := range vols {
		sv := command.SnapshotVolume{VolumeID: v, ParentID: parents[v], EstimatedBytes: mib}
		if sv.ParentID == "" {
			sv.FullReason = "test"
		}
		created.Volumes = append(created.Volumes, sv)
		data = append(data, command.VolumeData{VolumeID: v, SizeBytes: volumeSize(vm.VM, v), StoredBytes: mib, SHA256: fakeSum})
	}
	s.apply(created)
	s.apply(&command.SnapshotCaptured{
		ID: id, Term: term, Node: vm.HostNode, Achieved: command.ConsistencyCrash, Volumes: data,
		Verified: true, CapturedAt: time.Now().UTC(),
	})
	if complete {
		peer := "node-b"
		if vm.HostNode == peer {
			peer = "node-a"
		}
		s.apply(&command.ReplicaWritten{ID: id, Term: term, Node: peer, Volumes: data, Verified: true, At: time.Now().UTC()})
	}
	return id
}

// planOn plans a snapshot of the VM (as the state has it now) on node n.
func (s *testSystem) planOn(n *testNode, req PlanRequest) (*command.SnapshotCreated, error) {
	s.t.Helper()
	vm, err := s.raft.st.VM(testVM)
	if err != nil {
		s.t.Fatalf("VM: %v", err)
	}
	req.VM, req.Term = vm.VM, s.raft.currentTerm()
	req.Desired, req.Required, req.Creator = command.ConsistencyCrash, command.ConsistencyCrash, "admin"
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	return n.engine().Plan(ctx, req)
}

// planned describes a planned volume as "parent=<id> est=<bytes>" or
// "full(<reason>) est=<bytes>".
func planned(cmd *command.SnapshotCreated) map[string]string {
	out := map[string]string{}
	for _, v := range cmd.Volumes {
		if v.ParentID != "" {
			out[v.VolumeID] = fmt.Sprintf("parent=%s est=%d", v.ParentID, v.EstimatedBytes)
		} else {
			out[v.VolumeID] = fmt.Sprintf("full(%s) est=%d", v.FullReason, v.EstimatedBytes)
		}
	}
	return out
}

// TestPlan: full or incremental per volume, the reason for each full
// capture and the space estimates, from the state and what QEMU reports.
func TestPlan(t *testing.T) {
	t.Parallel()
	sys := newSystem(t, sysOptions{stopped: true, volumes: []command.Volume{
		{ID: "vol-boot", Name: "boot", Boot: true, SizeBytes: 16 * mib, Format: command.FormatQCOW2},
		{ID: "vol-data", Name: "data", SizeBytes: 64 * mib, Format: command.FormatQCOW2},
		{ID: "vol-raw", Name: "raw", SizeBytes: 8 * mib, Format: command.FormatRaw},
	}})
	full := func(size int64) int64 { return size + 2*mib + size/4096 }
	incr := func(dirty, size int64) int64 { return dirty + 2*mib + size/4096 }
	check := func(name string, cmd *command.SnapshotCreated, err error, want map[string]string) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: plan: %v", name, err)
		}
		if got := planned(cmd); !equalMaps(got, want) {
			t.Fatalf("%s: planned\n%v\nwant\n%v", name, got, want)
		}
	}
	hva, hvb := sys.a.hv, sys.b.hv

	// The first snapshot: everything in full; the boot volume is added.
	cmd, err := sys.planOn(sys.a, PlanRequest{VolumeIDs: []string{"vol-data", "vol-raw"}})
	check("first", cmd, err, map[string]string{
		"vol-boot": fmt.Sprintf("full(first snapshot of the volume) est=%d", full(16*mib)),
		"vol-data": fmt.Sprintf("full(first snapshot of the volume) est=%d", full(64*mib)),
		"vol-raw":  fmt.Sprintf("full(raw volume: QEMU keeps no persistent dirty bitmap for it) est=%d", full(8*mib)),
	})
	if len(cmd.ID) != 16 || cmd.Name != "test vm" || cmd.Coordinator != "node-a" || cmd.Term != 1 || cmd.CreatedAt.IsZero() {
		t.Fatalf("planned command %+v: want a 16-digit id, the VM's name, node-a, term 1 and a time", cmd)
	}

	// A complete snapshot whose bitmaps QEMU still holds: incremental,
	// estimated by the dirty bytes.
	s1 := sys.fakeSnapshot("s1", true, nil, "vol-boot", "vol-data", "vol-raw")
	hva.set(func(h *fakeHypervisor) {
		h.bitmaps["vol-boot"] = map[string]bool{s1: true}
		h.bitmaps["vol-data"] = map[string]bool{s1: true}
		h.dirty = 3 * mib
	})
	cmd, err = sys.planOn(sys.a, PlanRequest{VolumeIDs: []string{"vol-data", "vol-raw"}})
	check("incremental", cmd, err, map[string]string{
		"vol-boot": fmt.Sprintf("parent=s1 est=%d", incr(3*mib, 16*mib)),
		"vol-data": fmt.Sprintf("parent=s1 est=%d", incr(3*mib, 64*mib)),
		"vol-raw":  fmt.Sprintf("full(raw volume: QEMU keeps no persistent dirty bitmap for it) est=%d", full(8*mib)),
	})

	// More dirty bytes than the volume has: the estimate stops at its size.
	hva.set(func(h *fakeHypervisor) { h.dirty = 40 * mib })
	cmd, err = sys.planOn(sys.a, PlanRequest{})
	check("dirty beyond the size", cmd, err, map[string]string{"vol-boot": fmt.Sprintf("parent=s1 est=%d", incr(16*mib, 16*mib))})

	// A missing bitmap (QEMU restarted) and an inconsistent one.
	hva.set(func(h *fakeHypervisor) { delete(h.bitmaps["vol-data"], s1); h.dirty = 3 * mib })
	cmd, err = sys.planOn(sys.a, PlanRequest{VolumeIDs: []string{"vol-data"}})
	check("missing bitmap", cmd, err, map[string]string{
		"vol-boot": fmt.Sprintf("parent=s1 est=%d", incr(3*mib, 16*mib)),
		"vol-data": fmt.Sprintf("full(dirty bitmap twinsnap-s1 of the previous snapshot is missing (QEMU restarted without a clean shutdown, or the VM was restored)) est=%d", full(64*mib)),
	})
	hva.set(func(h *fakeHypervisor) { h.unusable[s1] = true })
	cmd, err = sys.planOn(sys.a, PlanRequest{})
	check("inconsistent bitmap", cmd, err, map[string]string{
		"vol-boot": fmt.Sprintf("full(dirty bitmap twinsnap-s1 of the previous snapshot is inconsistent or busy) est=%d", full(16*mib)),
	})
	hva.set(func(h *fakeHypervisor) { h.unusable[s1] = false; h.bitmaps["vol-data"] = map[string]bool{s1: true} })

	// A stopped VM, and a full capture asked for.
	hva.set(func(h *fakeHypervisor) { h.running = false })
	cmd, err = sys.planOn(sys.a, PlanRequest{VolumeIDs: []string{"vol-data"}})
	check("stopped", cmd, err, map[string]string{
		"vol-boot": fmt.Sprintf("full(the VM is not running: its image is copied whole) est=%d", full(16*mib)),
		"vol-data": fmt.Sprintf("full(the VM is not running: its image is copied whole) est=%d", full(64*mib)),
	})
	hva.set(func(h *fakeHypervisor) { h.running = true })
	cmd, err = sys.planOn(sys.a, PlanRequest{VolumeIDs: []string{"vol-data"}, Full: true})
	check("full requested", cmd, err, map[string]string{
		"vol-boot": fmt.Sprintf("full(full capture requested) est=%d", full(16*mib)),
		"vol-data": fmt.Sprintf("full(full capture requested) est=%d", full(64*mib)),
	})

	// The newest partial or complete snapshot holding a volume is its
	// parent; creating and discarded ones are not.
	s2 := sys.fakeSnapshot("s2", false, map[string]string{"vol-boot": s1}, "vol-boot")
	sys.apply(&command.SnapshotCreated{
		ID: "s3", VMID: testVM, Name: "s3", Creator: "admin", CreatedAt: time.Now().UTC(),
		Desired: command.ConsistencyCrash, Required: command.ConsistencyCrash, Coordinator: "node-a", Term: 1,
		Volumes: []command.SnapshotVolume{{VolumeID: "vol-boot", FullReason: "test", EstimatedBytes: mib}},
	})
	sys.apply(&command.SnapshotFailed{ID: "s3", Term: 1, Node: "node-a", Reason: "test", At: time.Now().UTC()})
	hva.set(func(h *fakeHypervisor) { h.bitmaps["vol-boot"][s2] = true; h.bitmaps["vol-boot"]["s3"] = true })
	cmd, err = sys.planOn(sys.a, PlanRequest{VolumeIDs: []string{"vol-data"}})
	check("newest parent", cmd, err, map[string]string{
		"vol-boot": fmt.Sprintf("parent=s2 est=%d", incr(3*mib, 16*mib)),
		"vol-data": fmt.Sprintf("parent=s1 est=%d", incr(3*mib, 64*mib)),
	})

	// The VM moved to node-b, which has no verified replica of the
	// partial s2: full there, though QEMU kept the bitmap.
	moved := sys.vm
	moved.HostNode = "node-b"
	sys.apply(&command.VMUpdated{VM: moved})
	hvb.set(func(h *fakeHypervisor) {
		h.bitmaps["vol-boot"] = map[string]bool{s2: true}
		h.bitmaps["vol-data"] = map[string]bool{s1: true}
		h.dirty = 3 * mib
	})
	cmd, err = sys.planOn(sys.b, PlanRequest{VolumeIDs: []string{"vol-data"}})
	check("parent not verified here", cmd, err, map[string]string{
		"vol-boot": fmt.Sprintf("full(the previous snapshot s2 has no verified replica on this node) est=%d", full(16*mib)),
		"vol-data": fmt.Sprintf("parent=s1 est=%d", incr(3*mib, 64*mib)),
	})
	// The state machine takes the plan and charges the estimates.
	before, err := sys.raft.st.Container("vol-data", "node-a")
	if err != nil {
		t.Fatalf("container: %v", err)
	}
	sys.apply(cmd)
	after, err := sys.raft.st.Container("vol-data", "node-a")
	if err != nil {
		t.Fatalf("container: %v", err)
	}
	if got, want := after.UsedBytes-before.UsedBytes, incr(3*mib, 64*mib); got != want {
		t.Fatalf("the plan charged %d bytes to vol-data's container, want %d", got, want)
	}

	// Only the VM's host plans, and only the VM's volumes.
	if _, err := sys.planOn(sys.a, PlanRequest{}); !errors.Is(err, ErrNotCoordinator) {
		t.Fatalf("plan on a node not hosting the VM: err = %v, want ErrNotCoordinator", err)
	}
	if _, err := sys.planOn(sys.b, PlanRequest{VolumeIDs: []string{"vol-nope"}}); !errors.Is(err, ErrUnknown) {
		t.Fatalf("plan with a volume of no VM: err = %v, want ErrUnknown", err)
	}
	if calls := hva.callLog(); slices.ContainsFunc(calls, func(c hvCall) bool { return c.op != "inspect" }) {
		t.Fatalf("planning touched the VM: %+v", calls)
	}
}

// equalMaps reports whether two string maps are equal.
func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestEngineHappyPath: a full snapshot, then an incremental one, each
// created → captured (partial) → replicated → complete, with
// byte-identical images on both nodes whose SHA-256 is the state's, real
// chains with the guest's writes, the UEFI variables replicated, and only
// the newest snapshot's bitmaps left on its volumes.
func TestEngineHappyPath(t *testing.T) {
	t.Parallel()
	sys := newSystem(t, sysOptions{uefi: true, volumes: []command.Volume{
		{ID: "vol-boot", Name: "boot", Boot: true, SizeBytes: 16 * mib, Format: command.FormatQCOW2},
		{ID: "vol-data", Name: "data", SizeBytes: 16 * mib, Format: command.FormatQCOW2},
		{ID: "vol-scratch", Name: "scratch", SizeBytes: 16 * mib, Format: command.FormatQCOW2},
	}})
	wantSteps := []string{"snapshot-created→creating", "snapshot-captured→partial", "replica-written→complete"}

	s1 := sys.snapshot(PlanRequest{VolumeIDs: []string{"vol-data"}})
	if got := planned(s1); !strings.HasPrefix(got["vol-boot"], "full(first snapshot") || !strings.HasPrefix(got["vol-data"], "full(first snapshot") || len(got) != 2 {
		t.Fatalf("first snapshot planned %v, want vol-boot and vol-data in full", got)
	}
	sn := sys.waitState(s1.ID, state.Complete)
	if got := sys.transitions(s1.ID); !slices.Equal(got, wantSteps) {
		t.Fatalf("snapshot 1 went %v, want %v", got, wantSteps)
	}
	sys.checkReplicas(s1.ID)
	if sn.Captured == nil || sn.Captured.Kind != command.ConfigQEMULaunch || sn.Captured.UEFIVars == nil || sn.Achieved != command.ConsistencyApplication {
		t.Fatalf("snapshot 1 captured %+v, achieved %s: want a launch spec with UEFI variables, application consistency", sn.Captured, sn.Achieved)
	}
	for _, vol := range []string{"vol-boot", "vol-data"} {
		if got := sys.a.hv.bitmapsOf(vol); !slices.Equal(got, []string{s1.ID}) {
			t.Fatalf("bitmaps of %s after snapshot 1: %v, want [%s]", vol, got, s1.ID)
		}
	}

	s2 := sys.snapshot(PlanRequest{VolumeIDs: []string{"vol-data"}})
	for _, v := range s2.Volumes {
		if v.ParentID != s1.ID {
			t.Fatalf("snapshot 2 planned %v, want both volumes incremental to %s", planned(s2), s1.ID)
		}
	}
	sys.waitState(s2.ID, state.Complete)
	if got := sys.transitions(s2.ID); !slices.Equal(got, wantSteps) {
		t.Fatalf("snapshot 2 went %v, want %v", got, wantSteps)
	}
	sys.checkReplicas(s2.ID)
	for _, vol := range []string{"vol-boot", "vol-data"} {
		ws := sys.a.hv.guestWrites(vol)
		for _, n := range []*testNode{sys.a, sys.b} {
			if got := backingOf(t, n.imagePath(s2.ID, vol)); got != s1.ID+".qcow2" {
				t.Fatalf("%s: image of %s in snapshot 2 is backed by %q, want %s.qcow2", n.id, vol, got, s1.ID)
			}
			sameGuestView(t, n.imagePath(s1.ID, vol), referenceDisk(t, 16*mib, ws[:1]))
			sameGuestView(t, n.imagePath(s2.ID, vol), referenceDisk(t, 16*mib, ws[:2]))
		}
		if got := sys.a.hv.bitmapsOf(vol); !slices.Equal(got, []string{s2.ID}) {
			t.Fatalf("bitmaps of %s after snapshot 2: %v, want [%s]", vol, got, s2.ID)
		}
	}
	// The prune after the capture keeps the new bitmap and the bitmaps of
	// volumes the snapshot does not hold, and drops the parent's.
	pruned := slices.ContainsFunc(sys.a.hv.callLog(), func(c hvCall) bool {
		return c.op == "prune" && c.vm == testVM && c.keep("vol-boot", s2.ID) && c.keep("vol-data", s2.ID) &&
			!c.keep("vol-boot", s1.ID) && !c.keep("vol-data", s1.ID) && c.keep("vol-scratch", s1.ID)
	})
	if !pruned {
		t.Fatalf("no PruneBitmaps call kept only snapshot 2's bitmaps on its volumes: %+v", sys.a.hv.callLog())
	}
	if p, ok := sys.a.engine().Progress(s2.ID); !ok || p.Phase != PhaseComplete {
		t.Fatalf("progress of snapshot 2 on node-a: %+v, %v; want phase complete", p, ok)
	}
}

// TestEngineCaptureFailure: a failed capture fails the snapshot once; it
// is discarded, both nodes reclaim it, and nothing of it is left.
func TestEngineCaptureFailure(t *testing.T) {
	t.Parallel()
	sys := newSystem(t, sysOptions{})
	sys.a.hv.set(func(h *fakeHypervisor) {
		h.beforeCapture = func(context.Context, CaptureRequest) error {
			return errors.New("guest-fsfreeze-freeze-list: the guest agent did not answer")
		}
	})
	s := sys.snapshot(PlanRequest{VolumeIDs: []string{"vol-data"}})
	sys.waitGone(s.ID)
	want := []string{"snapshot-created→creating", "snapshot-failed→discarded", "replica-reclaimed→discarded", "replica-reclaimed→gone"}
	if got := sys.transitions(s.ID); !slices.Equal(got, want) {
		t.Fatalf("snapshot went %v, want %v", got, want)
	}
	failed := sys.raft.entries(s.ID)[1].Cmd.(*command.SnapshotFailed)
	if !strings.Contains(failed.Reason, "capture: guest-fsfreeze-freeze-list") || failed.Node != "node-a" {
		t.Fatalf("snapshot-failed %+v: want node-a and the capture's error as the reason", failed)
	}
	sys.checkNoFiles()
	for _, vol := range []string{"vol-boot", "vol-data"} {
		ct, err := sys.raft.st.Container(vol, "node-b")
		if err != nil || ct.UsedBytes != 0 {
			t.Fatalf("container of %s on node-b: %+v, %v; want nothing charged", vol, ct, err)
		}
	}
}

// TestEngineRestartDuringCapture: a coordinator that stops mid-capture
// leaves the journal "capturing"; the next engine cleans the VM up before
// anything else and fails the snapshot, whose point in time is lost.
func TestEngineRestartDuringCapture(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		// arm makes the capture stop the engine; it closes stopped once
		// the engine was told to stop.
		arm func(sys *testSystem, stopped chan struct{})
	}{
		{"hangs until stopped", func(sys *testSystem, stopped chan struct{}) {
			sys.a.hv.set(func(h *fakeHypervisor) {
				h.beforeCapture = func(ctx context.Context, _ CaptureRequest) error {
					close(stopped)
					<-ctx.Done()
					return ctx.Err()
				}
			})
		}},
		{"dies after the copy", func(sys *testSystem, stopped chan struct{}) {
			sys.a.hv.set(func(h *fakeHypervisor) {
				h.afterCapture = func(CaptureRequest) {
					sys.a.kill()
					close(stopped)
				}
			})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sys := newSystem(t, sysOptions{})
			stopped := make(chan struct{})
			tc.arm(sys, stopped)
			s := sys.snapshot(PlanRequest{VolumeIDs: []string{"vol-data"}})
			select {
			case <-stopped:
			case <-time.After(waitLimit):
				t.Fatalf("the capture did not start")
			}
			sys.a.stopEngine()
			if got := sys.a.journalPhase(s.ID); got != journalCapturing {
				t.Fatalf("journal after the stop: %q, want %q", got, journalCapturing)
			}
			if sn, err := sys.raft.st.Snapshot(s.ID); err != nil || sn.State != state.Creating {
				t.Fatalf("snapshot after the stop: %s, %v; want creating", sn.State, err)
			}

			sys.a.hv.set(func(h *fakeHypervisor) { h.beforeCapture, h.afterCapture = nil, nil })
			sys.a.hv.resetCalls()
			sys.a.restart()
			sys.waitGone(s.ID)
			es := sys.raft.entries(s.ID)
			failed, ok := es[1].Cmd.(*command.SnapshotFailed)
			if !ok || !strings.Contains(failed.Reason, "point in time is lost") {
				t.Fatalf("second entry %s %+v: want snapshot-failed because the point in time is lost", es[1].Cmd.Type(), es[1].Cmd)
			}
			calls := sys.a.hv.callLog()
			if len(calls) == 0 || calls[0].op != "cleanup" || calls[0].vm != testVM {
				t.Fatalf("the restarted engine's first calls to the hypervisor: %+v; want Cleanup of %s first", calls, testVM)
			}
			if slices.ContainsFunc(calls, func(c hvCall) bool { return c.op == "capture" }) {
				t.Fatalf("the restarted engine captured again: %+v", calls)
			}
			for _, vol := range []string{"vol-boot", "vol-data"} {
				if got := sys.a.hv.bitmapsOf(vol); len(got) != 0 {
					t.Fatalf("bitmaps of %s left: %v", vol, got)
				}
			}
			sys.checkNoFiles()
		})
	}
}

// TestEngineRestartAfterVerify: the journal holds a verified capture whose
// proposal never happened; the next engine re-hashes the images and
// proposes it, or fails the snapshot when an image changed since.
func TestEngineRestartAfterVerify(t *testing.T) {
	t.Parallel()
	for _, altered := range []bool{false, true} {
		t.Run(fmt.Sprintf("altered=%v", altered), func(t *testing.T) {
			t.Parallel()
			sys := newSystem(t, sysOptions{})
			// The process dies as it proposes: nothing reaches the leader.
			sys.a.cl.failNext(command.TypeSnapshotCaptured, 1, func(command.Command) { sys.a.kill() })
			s := sys.snapshot(PlanRequest{VolumeIDs: []string{"vol-data"}})
			sys.waitFor("the capture's proposal", func() bool { return sys.a.cl.proposals(command.TypeSnapshotCaptured) == 1 })
			sys.a.stopEngine()
			if got := sys.a.journalPhase(s.ID); got != journalCaptured {
				t.Fatalf("journal after the stop: %q, want %q", got, journalCaptured)
			}
			if sn, err := sys.raft.st.Snapshot(s.ID); err != nil || sn.State != state.Creating {
				t.Fatalf("snapshot after the stop: %s, %v; want creating", sn.State, err)
			}
			if altered {
				img := sys.a.imagePath(s.ID, "vol-data")
				if err := qemuIOWrite(context.Background(), img, "qcow2", []guestWrite{{off: 0, n: 64 << 10, pattern: 0xee}}); err != nil {
					t.Fatalf("altering the image: %v", err)
				}
			}

			sys.a.restart()
			if !altered {
				sys.waitState(s.ID, state.Complete)
				sys.checkReplicas(s.ID)
				if got := sys.logs.lines("resuming a verified capture after a restart", s.ID); len(got) == 0 {
					t.Fatalf("no log line about resuming the capture")
				}
				if got := sys.transitions(s.ID); !slices.Equal(got, []string{"snapshot-created→creating", "snapshot-captured→partial", "replica-written→complete"}) {
					t.Fatalf("snapshot went %v", got)
				}
				for _, vol := range []string{"vol-boot", "vol-data"} {
					if got := sys.a.hv.bitmapsOf(vol); !slices.Equal(got, []string{s.ID}) {
						t.Fatalf("bitmaps of %s after the restart: %v, want [%s]", vol, got, s.ID)
					}
				}
				return
			}
			sys.waitGone(s.ID)
			failed, ok := sys.raft.entries(s.ID)[1].Cmd.(*command.SnapshotFailed)
			if !ok || !strings.Contains(failed.Reason, "did not verify after a restart") {
				t.Fatalf("snapshot went %v; want it failed as not verifying", sys.transitions(s.ID))
			}
			sys.checkNoFiles()
		})
	}
}

// TestEnginePath: the receiver's destination accepts images only of
// partial snapshots this node holds no verified replica of, only for
// their volumes, and the UEFI variables only when the capture has them.
func TestEnginePath(t *testing.T) {
	t.Parallel()
	sys := newSystem(t, sysOptions{stopped: true})
	vm, err := sys.raft.st.VM(testVM)
	if err != nil {
		t.Fatalf("VM: %v", err)
	}
	data := func(vols ...string) []command.VolumeData {
		var out []command.VolumeData
		for _, v := range vols {
			out = append(out, command.VolumeData{VolumeID: v, SizeBytes: volumeSize(vm.VM, v), StoredBytes: mib, SHA256: fakeSum})
		}
		return out
	}
	created := func(id string) *command.SnapshotCreated {
		return &command.SnapshotCreated{
			ID: id, VMID: testVM, Name: id, Creator: "admin", CreatedAt: time.Now().UTC(),
			Desired: command.ConsistencyCrash, Required: command.ConsistencyCrash, Coordinator: "node-a", Term: 1,
			Volumes: []command.SnapshotVolume{{VolumeID: "vol-boot", FullReason: "test", EstimatedBytes: mib}},
		}
	}
	captured := func(id string, vars *command.FileData) *command.SnapshotCaptured {
		return &command.SnapshotCaptured{
			ID: id, Term: 1, Node: "node-a", Achieved: command.ConsistencyCrash, Volumes: data("vol-boot"),
			Verified: true, CapturedAt: time.Now().UTC(),
			Config: &command.CapturedConfig{Kind: command.ConfigQEMULaunch, Text: "{}", UEFIVars: vars},
		}
	}
	b := sys.b.engine()

	// A partial snapshot with UEFI variables, not yet on node-b.
	sys.apply(created("with-vars"))
	sys.apply(captured("with-vars", &command.FileData{SizeBytes: 128 << 10, SHA256: fakeSum}))
	p, err := b.Path("with-vars", "vol-boot")
	if want := sys.b.imagePath("with-vars", "vol-boot"); err != nil || p != want {
		t.Fatalf("Path(with-vars, vol-boot) = %q, %v; want %q", p, err, want)
	}
	if _, err := sys.b.store.Get("vol-boot"); err != nil {
		t.Fatalf("the destination did not make the volume's container: %v", err)
	}
	if p, err := b.Path("with-vars", UEFIVarsID); err != nil || p != b.UEFIVarsPath("with-vars") {
		t.Fatalf("Path(with-vars, UEFI variables) = %q, %v; want %q", p, err, b.UEFIVarsPath("with-vars"))
	}
	for _, vol := range []string{"vol-data", "vol-nope"} {
		if _, err := b.Path("with-vars", vol); !errors.Is(err, ErrUnknown) {
			t.Fatalf("Path(with-vars, %s), a volume not in the snapshot: err = %v, want ErrUnknown", vol, err)
		}
	}
	// node-a holds the verified replica: it takes nothing.
	if _, err := sys.a.engine().Path("with-vars", "vol-boot"); !errors.Is(err, ErrUnknown) {
		t.Fatalf("Path on the node holding the verified replica: err = %v, want ErrUnknown", err)
	}

	// Without UEFI variables, the pseudo-volume is refused.
	sys.apply(created("no-vars"))
	sys.apply(captured("no-vars", nil))
	if _, err := b.Path("no-vars", UEFIVarsID); !errors.Is(err, ErrUnknown) {
		t.Fatalf("Path(no-vars, UEFI variables): err = %v, want ErrUnknown", err)
	}

	// Complete: node-b holds it verified already.
	sys.apply(&command.ReplicaWritten{ID: "no-vars", Term: 1, Node: "node-b", Volumes: data("vol-boot"), Verified: true, At: time.Now().UTC()})
	if _, err := b.Path("no-vars", "vol-boot"); !errors.Is(err, ErrUnknown) {
		t.Fatalf("Path of a snapshot node-b holds verified: err = %v, want ErrUnknown", err)
	}

	// Unknown and creating snapshots are refused after a short wait; one
	// that becomes partial during the wait is accepted.
	t.Run("unknown", func(t *testing.T) {
		t.Parallel()
		start := time.Now()
		if _, err := b.Path("never-created", "vol-boot"); !errors.Is(err, ErrUnknown) {
			t.Fatalf("Path of an unknown snapshot: err = %v, want ErrUnknown", err)
		}
		if d := time.Since(start); d < 2*time.Second {
			t.Fatalf("Path refused an unknown snapshot after %v, want it to wait for the state first", d)
		}
	})
	t.Run("creating", func(t *testing.T) {
		t.Parallel()
		applyOK(t, sys.raft, created("creating"))
		start := time.Now()
		if _, err := b.Path("creating", "vol-boot"); !errors.Is(err, ErrUnknown) {
			t.Fatalf("Path of a creating snapshot: err = %v, want ErrUnknown", err)
		}
		if d := time.Since(start); d < 2*time.Second {
			t.Fatalf("Path refused a creating snapshot after %v, want it to wait for the capture first", d)
		}
		// Captured during the wait.
		applyOK(t, sys.raft, &command.SnapshotFailed{ID: "creating", Term: 1, Node: "node-a", Reason: "test", At: time.Now().UTC()})
		applyOK(t, sys.raft, created("late"))
		late := make(chan error, 1)
		go func() {
			time.Sleep(300 * time.Millisecond)
			res, err := sys.raft.apply("", captured("late", nil))
			late <- errors.Join(err, res.Err)
		}()
		p, err := b.Path("late", "vol-boot")
		if cerr := <-late; cerr != nil {
			t.Fatalf("capturing the snapshot during the wait: %v", cerr)
		}
		if err != nil || p != sys.b.imagePath("late", "vol-boot") {
			t.Fatalf("Path of a snapshot captured during the wait = %q, %v; want its image path", p, err)
		}
	})
}
