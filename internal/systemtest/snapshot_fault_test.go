package systemtest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/cluster/command"
	"github.com/twinsnap/twinsnap/guestagent"
	"github.com/twinsnap/twinsnap/internal/api"
	"github.com/twinsnap/twinsnap/internal/hypervisor"
	"github.com/twinsnap/twinsnap/internal/testenv"
)

// faultRounds is how often each fault is repeated.
const faultRounds = 5

// settleBound bounds how long after a restart a snapshot may take to be
// complete or gone (discarded and reclaimed on every node).
const settleBound = 2 * time.Minute

// TestSnapshotFaults is must-show 2: SIGKILL of the capturing node's
// daemon during the capture, during the replication, and of the leader
// while a snapshot is in flight, five times each. Afterwards no snapshot
// is complete unless both replicas verify (byte-identical files whose
// SHA-256 the state records), half-written ones are gone from the state
// and from disk on both nodes within a bound, the guest is thawed, and a
// new snapshot of the same VM works.
func TestSnapshotFaults(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	// Containers with room for every round's full snapshot.
	e := newQEMUSnapEnv(t, ctx, []testenv.DiskSpec{{Serial: "data1", SizeMiB: 128}}, 5000)
	// Enough data that a full capture and its replication take a moment.
	e.sh(t, ctx, "dd if=/dev/urandom of=/mnt/data1/blob bs=1M count=48 2>/dev/null && sync")

	faults := []struct {
		name  string
		phase string // the coordinator's phase to kill in
		// victim returns the node to kill.
		victim func(t *testing.T) string
	}{
		{"capturing node during capture", "capture", func(*testing.T) string { return testenv.DataA }},
		{"capturing node during replication", "replicate", func(*testing.T) string { return testenv.DataA }},
		{"leader in between", "", func(t *testing.T) string {
			id, err := e.c.WaitLeader(ctx, "")
			if err != nil {
				t.Fatalf("%v", err)
			}
			return id
		}},
	}
	for _, f := range faults {
		t.Run(f.name, func(t *testing.T) {
			for round := 1; round <= faultRounds; round++ {
				faultRound(t, ctx, e, round, f.phase, f.victim(t))
			}
		})
	}
}

// faultRound starts a full snapshot through data-b, kills victim when the
// coordinator reports phase (or, with phase "", as soon as the snapshot
// is in flight), restarts it, and checks the outcome.
func faultRound(t *testing.T, ctx context.Context, e *snapEnv, round int, phase, victim string) {
	t.Helper()
	cl := e.c.Client(testenv.DataB, testenv.Witness)
	defer cl.Close()
	var sn *api.Snapshot
	var killedIn string
	for attempt := 1; ; attempt++ {
		var err error
		sn, err = cl.CreateSnapshot(ctx, api.SnapshotCreateRequest{VM: "guest", Full: true})
		if err != nil {
			t.Fatalf("round %d: create: %v", round, err)
		}
		killedIn = killDuring(t, ctx, e, sn.ID, phase, victim)
		if killedIn != "" {
			break
		}
		// The snapshot outran the poll; it must be complete and sound.
		checkSettled(t, ctx, e, cl, sn.ID)
		if attempt == 5 {
			t.Fatalf("round %d: could not catch the %s phase in 5 attempts", round, phase)
		}
	}
	if err := e.c.Start(ctx, victim); err != nil {
		t.Fatalf("round %d: restarting %s: %v", round, victim, err)
	}
	outcome := checkSettled(t, ctx, e, cl, sn.ID)
	t.Logf("round %d: killed %s in phase %s: snapshot %s %s", round, victim, killedIn, sn.ID, outcome)

	// The guest is thawed, and a new snapshot of it works.
	ga, err := e.agent(ctx)
	if err != nil {
		t.Fatalf("agent: %v", err)
	}
	st, err := ga.FreezeStatus(ctx)
	ga.Close()
	if err != nil || st != guestagent.Thawed {
		t.Fatalf("round %d: guest freeze status %v, %v", round, st, err)
	}
	next, err := cl.CreateSnapshot(ctx, api.SnapshotCreateRequest{VM: "guest"})
	if err != nil {
		t.Fatalf("round %d: the next snapshot: %v", round, err)
	}
	waitSnapshot(t, ctx, cl, next.ID, api.StateComplete, settleBound)
	checkSettled(t, ctx, e, cl, next.ID)
}

// killDuring polls the snapshot's progress and SIGKILLs victim once the
// coordinator reports phase ("" : any phase before complete). It returns
// the phase seen at the kill, or "" when the snapshot completed first.
func killDuring(t *testing.T, ctx context.Context, e *snapEnv, id, phase, victim string) string {
	t.Helper()
	cl := e.c.Client(testenv.DataB, testenv.Witness)
	defer cl.Close()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		sn, err := cl.Snapshot(ctx, id)
		if err == nil {
			if sn.State == api.StateComplete {
				return ""
			}
			if sn.Progress != nil && (sn.Progress.Phase == phase || (phase == "" && sn.State != api.StateComplete)) {
				e.c.Kill(victim)
				return sn.Progress.Phase
			}
			if phase == "" {
				e.c.Kill(victim)
				return sn.State
			}
		}
		time.Sleep(15 * time.Millisecond)
	}
	t.Fatalf("snapshot %s never reached phase %q", id, phase)
	return ""
}

// checkSettled waits until snapshot id is complete or gone and checks
// either outcome on disk: a complete snapshot has byte-identical images
// on both nodes matching the recorded SHA-256; a gone one has no files on
// any node.
func checkSettled(t *testing.T, ctx context.Context, e *snapEnv, cl *api.Client, id string) string {
	t.Helper()
	deadline := time.Now().Add(settleBound)
	for {
		sn, err := cl.Snapshot(ctx, id)
		var ae *api.Error
		switch {
		case errors.As(err, &ae) && ae.Detail.Code == api.CodeNotFound:
			for _, node := range []string{testenv.DataA, testenv.DataB} {
				if left := snapshotFiles(t, e.c, node, id); len(left) > 0 {
					if time.Now().After(deadline) {
						t.Fatalf("snapshot %s is gone from the state but %s still holds %v", id, node, left)
					}
					goto wait
				}
			}
			return "discarded and reclaimed on both nodes"
		case err == nil && sn.State == api.StateComplete:
			if len(sn.Replicas) != 2 {
				t.Fatalf("complete snapshot %s with replicas %+v", id, sn.Replicas)
			}
			for _, v := range sn.Volumes {
				for _, node := range []string{testenv.DataA, testenv.DataB} {
					if got := fileSHA(t, imagePath(e.c, node, id, v.VolumeID)); got != v.SHA256 {
						t.Fatalf("complete snapshot %s: %s's image of %s has sha256 %s, recorded %s", id, node, v.Name, got, v.SHA256)
					}
				}
			}
			for _, r := range sn.Replicas {
				if !r.Verified {
					t.Fatalf("complete snapshot %s with an unverified replica %+v", id, r)
				}
			}
			return "complete, both replicas verified"
		}
	wait:
		if time.Now().After(deadline) {
			t.Fatalf("snapshot %s neither complete nor gone within %v: %+v, %v", id, settleBound, sn, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// snapshotFiles lists what a node still holds of a snapshot: images
// (also partial transfers) and the engine's own files.
func snapshotFiles(t *testing.T, c *testenv.Cluster, node, id string) []string {
	t.Helper()
	data := filepath.Join(c.Nodes[node].Dir, "data")
	left, err := filepath.Glob(filepath.Join(data, "volumes", "*", "images", id+".qcow2*"))
	if err != nil {
		t.Fatalf("%v", err)
	}
	if _, err := os.Stat(filepath.Join(data, "snapshots", id)); err == nil {
		left = append(left, filepath.Join(data, "snapshots", id))
	}
	return left
}

// TestSnapshotAfterQEMUCrash: QEMU killed with SIGKILL cannot write its
// persistent dirty bitmaps back cleanly; started again, it marks them
// inconsistent, and the next snapshot of the volume is full, with the
// reason recorded, instead of an incremental that would miss writes.
func TestSnapshotAfterQEMUCrash(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c := testenv.StartCluster(t, testenv.ClusterOptions{})
	vm := testenv.StartVM(t, testenv.VMOptions{DataDisks: []testenv.DiskSpec{{Serial: "data1", SizeMiB: 64}}})
	if _, err := c.WaitLeader(ctx, "data"); err != nil {
		t.Fatalf("%v", err)
	}
	cl := c.Client(testenv.DataA)
	defer cl.Close()
	if _, err := cl.SetSnapshotsEnabled(ctx, true); err != nil {
		t.Fatalf("%v", err)
	}
	if _, err := cl.RegisterVM(ctx, api.VMRegisterRequest{Name: "guest", Driver: command.DriverQEMU,
		QEMU: &command.QEMUConnection{QMPSocket: vm.QMPSocket, AgentSocket: vm.AgentSocket}}); err != nil {
		t.Fatalf("register: %v", err)
	}
	snap := func() *api.Snapshot {
		t.Helper()
		sn, err := cl.CreateSnapshot(ctx, api.SnapshotCreateRequest{VM: "guest", Volumes: []string{"data1"}})
		if err != nil {
			t.Fatalf("snapshot: %v", err)
		}
		return waitSnapshot(t, ctx, cl, sn.ID, api.StateComplete, 3*time.Minute)
	}
	first := snap()
	second := snap()
	for _, v := range second.Volumes {
		if v.ParentID != first.ID {
			t.Fatalf("before the crash the second snapshot is incremental: %+v", v)
		}
	}
	// SIGKILL QEMU and start it again with the same command line (the
	// same sockets and images).
	if err := syscall.Kill(vm.Pid(), syscall.SIGKILL); err != nil {
		t.Fatalf("%v", err)
	}
	for deadline := time.Now().Add(30 * time.Second); vm.Running(); {
		if time.Now().After(deadline) {
			t.Fatalf("QEMU survived SIGKILL")
		}
		time.Sleep(50 * time.Millisecond)
	}
	pid, err := hypervisor.StartQEMU(ctx, hypervisor.LaunchSpec{Binary: vm.Args[0], Args: vm.Args[1:]}, filepath.Join(t.TempDir(), "qemu.log"))
	if err != nil {
		t.Fatalf("restarting QEMU: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	for deadline := time.Now().Add(3 * time.Minute); ; {
		s, err := guestagent.Dial(ctx, "unix", vm.AgentSocket)
		if err == nil {
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err = guestagent.NewClient(s).Ping(pctx)
			cancel()
			s.Close()
			if err == nil {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent after the restart: %v", err)
		}
		time.Sleep(time.Second)
	}
	third := snap()
	for _, v := range third.Volumes {
		if v.Name != "data1" {
			continue
		}
		if v.ParentID != "" || !strings.Contains(v.FullReason, "inconsistent") && !strings.Contains(v.FullReason, "missing") {
			t.Fatalf("after the crash the snapshot must be full with the reason: %+v", v)
		}
		t.Logf("after QEMU's crash: full, because %s", v.FullReason)
	}
}
