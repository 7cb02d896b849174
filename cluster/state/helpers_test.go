package state

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/cluster/command"
)

var (
	t0      = time.Date(2026, 11, 21, 9, 0, 0, 0, time.UTC)
	sumA    = strings.Repeat("a1", 32)
	sumB    = strings.Repeat("b2", 32)
	enabled = true
)

const (
	gib = int64(1) << 30
	mib = int64(1) << 20
)

// raw encodes cmd without validating it, so that tests can propose what a
// buggy or malicious proposer might.
func raw(t testing.TB, cmd command.Command) []byte {
	t.Helper()
	b, err := json.Marshal(cmd)
	if err != nil {
		t.Fatalf("marshal %T: %v", cmd, err)
	}
	return append([]byte{byte(cmd.Type()), command.PayloadVersion(cmd)}, b...)
}

// harness applies commands to a State at increasing log indexes.
type harness struct {
	t     testing.TB
	st    *State
	index uint64
	term  uint64
	log   []entry // everything applied, for replays
}

type entry struct {
	index, term uint64
	data        []byte
}

func newHarness(t testing.TB) *harness {
	return &harness{t: t, st: New(), term: 1}
}

func (h *harness) apply(cmd command.Command) Result {
	h.t.Helper()
	h.index++
	b := raw(h.t, cmd)
	h.log = append(h.log, entry{h.index, h.term, b})
	return h.st.Apply(h.index, h.term, b)
}

// ok applies cmd and fails the test unless it was applied.
func (h *harness) ok(cmd command.Command) Result {
	h.t.Helper()
	res := h.apply(cmd)
	if res.Err != nil {
		h.t.Fatalf("apply %s: %v", cmd.Type(), res.Err)
	}
	return res
}

// refused applies cmd and fails the test unless it was refused with an
// error matching want and left the state as it was.
func (h *harness) refused(cmd command.Command, want error) Result {
	h.t.Helper()
	before := contentDigest(h.st)
	res := h.apply(cmd)
	if !errors.Is(res.Err, want) {
		h.t.Fatalf("apply %s: err = %v, want %v", cmd.Type(), res.Err, want)
	}
	if after := contentDigest(h.st); after != before {
		h.t.Fatalf("apply %s was refused (%v) but changed the state", cmd.Type(), res.Err)
	}
	return res
}

// contentDigest is the Digest without the applied index and term, which
// every entry advances, refused or not.
func contentDigest(st *State) [sha256.Size]byte {
	cp := st.Checkpoint()
	cp.meta.Index, cp.meta.Term = 0, 0
	return cp.Digest()
}

func dataNode(id string) *command.NodeAdded {
	return &command.NodeAdded{Node: command.Node{
		ID: id, Role: command.RoleData,
		RaftAddress: id + ":7000", APIAddress: id + ":7001", DataAddress: id + ":7002",
	}}
}

func witness(id string) *command.NodeAdded {
	return &command.NodeAdded{Node: command.Node{
		ID: id, Role: command.RoleWitness, RaftAddress: id + ":7000", APIAddress: id + ":7001",
	}}
}

func vmSpec(id, host string, vols ...string) command.VM {
	vm := command.VM{
		ID: id, Name: "vm " + id, HostNode: host, Driver: command.DriverQEMU,
		QEMU:          &command.QEMUConnection{QMPSocket: "/run/" + id + "/qmp.sock", AgentSocket: "/run/" + id + "/qga.sock"},
		FreezeEnabled: true, FreezeTimeout: 5 * time.Second,
	}
	for i, v := range vols {
		vm.Volumes = append(vm.Volumes, command.Volume{
			ID: v, Name: "disk" + v, Boot: i == 0, SizeBytes: 10 * gib, Format: command.FormatQCOW2,
		})
	}
	return vm
}

// cluster sets up node-a and node-b (data), w (witness), snapshots on, and
// VM vm-1 on node-a with volumes vol-1 (boot) and vol-2, each 10 GiB in a
// 30 GiB container on both data nodes: 20 GiB free for snapshots.
func (h *harness) cluster() {
	h.t.Helper()
	h.ok(dataNode("node-a"))
	h.ok(dataNode("node-b"))
	h.ok(witness("w"))
	h.ok(&command.SettingsSet{SnapshotsEnabled: &enabled})
	h.addVM("vm-1", "node-a", "vol-1", "vol-2")
}

func (h *harness) addVM(id, host string, vols ...string) {
	h.t.Helper()
	h.ok(&command.VMRegistered{VM: vmSpec(id, host, vols...)})
	for _, v := range vols {
		for _, n := range []string{"node-a", "node-b"} {
			h.ok(&command.ContainerCreated{VolumeID: v, Node: n, CapacityBytes: 30 * gib})
		}
	}
}

func created(id, vm string, term uint64, est int64, vols ...string) *command.SnapshotCreated {
	c := &command.SnapshotCreated{
		ID: id, VMID: vm, Name: "snap " + id, Creator: "admin", CreatedAt: t0,
		Desired: command.ConsistencyApplication, Required: command.ConsistencyCrash,
		Coordinator: "node-a", Term: term,
	}
	for _, v := range vols {
		c.Volumes = append(c.Volumes, command.SnapshotVolume{VolumeID: v, EstimatedBytes: est})
	}
	return c
}

func volData(stored int64, sum string, vols ...string) []command.VolumeData {
	var out []command.VolumeData
	for _, v := range vols {
		out = append(out, command.VolumeData{VolumeID: v, SizeBytes: 10 * gib, StoredBytes: stored, SHA256: sum})
	}
	return out
}

func captured(id string, term uint64, stored int64, vols ...string) *command.SnapshotCaptured {
	return &command.SnapshotCaptured{
		ID: id, Term: term, Node: "node-a", Achieved: command.ConsistencyApplication,
		Volumes: volData(stored, sumA, vols...), Verified: true, CapturedAt: t0.Add(time.Second),
	}
}

func replica(id string, term uint64, node string, stored int64, vols ...string) *command.ReplicaWritten {
	return &command.ReplicaWritten{
		ID: id, Term: term, Node: node, Volumes: volData(stored, sumA, vols...), Verified: true, At: t0.Add(time.Minute),
	}
}

// snapshotFor takes id through creating, partial and complete.
func (h *harness) completeSnapshot(id string, parents map[string]string, vols ...string) {
	h.t.Helper()
	c := created(id, "vm-1", h.term, gib, vols...)
	for i := range c.Volumes {
		c.Volumes[i].ParentID = parents[c.Volumes[i].VolumeID]
	}
	h.ok(c)
	h.ok(captured(id, h.term, gib/2, vols...))
	h.ok(replica(id, h.term, "node-b", gib/2, vols...))
	if s := h.snapshot(id); s.State != Complete {
		h.t.Fatalf("snapshot %s is %s, want complete", id, s.State)
	}
}

func (h *harness) snapshot(id string) Snapshot {
	h.t.Helper()
	s, err := h.st.Snapshot(id)
	if err != nil {
		h.t.Fatalf("Snapshot(%q): %v", id, err)
	}
	return s
}

func (h *harness) used(vol, node string) int64 {
	h.t.Helper()
	ct, err := h.st.Container(vol, node)
	if err != nil {
		h.t.Fatalf("Container(%q, %q): %v", vol, node, err)
	}
	return ct.UsedBytes
}

func (h *harness) wantUsed(vol string, want int64) {
	h.t.Helper()
	for _, n := range []string{"node-a", "node-b"} {
		if got := h.used(vol, n); got != want {
			h.t.Fatalf("container %s on %s uses %d bytes, want %d", vol, n, got, want)
		}
	}
}

func ids[T any](list []T, id func(T) string) string {
	var out []string
	for _, v := range list {
		out = append(out, id(v))
	}
	return fmt.Sprint(out)
}

func errorsIs(err, target error) bool { return errors.Is(err, target) }

// stopwatch starts timing a test step; only tests read the clock.
func stopwatch() func() time.Duration {
	start := time.Now() //nolint:forbidigo // times the test, not the state machine
	return func() time.Duration {
		return time.Since(start) //nolint:forbidigo // times the test, not the state machine
	}
}
