package state

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/cluster/command"
)

func TestEveryCommandHasAHandler(t *testing.T) {
	for _, typ := range command.Types() {
		if handlers[typ] == nil {
			t.Fatalf("no apply handler registered for %s", typ)
		}
	}
	if len(handlers) != len(command.Types()) {
		t.Fatalf("%d handlers for %d command types", len(handlers), len(command.Types()))
	}
}

func TestApplyPanicsOnUndecodableEntry(t *testing.T) {
	cases := map[string][]byte{
		"empty":           nil,
		"unknown type":    {0x7e, 1, '{', '}'},
		"unknown version": {byte(command.TypeNodeRemoved), 9, '{', '}'},
		"bad json":        {byte(command.TypeNodeRemoved), 1, '{'},
		"unknown field":   append([]byte{byte(command.TypeNodeRemoved), 1}, `{"id":"a","x":1}`...),
	}
	for name, b := range cases {
		func() {
			st := New()
			before := st.Digest()
			defer func() {
				r := recover()
				ae, ok := r.(*ApplyError)
				if !ok || ae.Index != 7 || ae.Term != 2 {
					t.Fatalf("%s: panic value = %#v, want *ApplyError at 7/2", name, r)
				}
				if st.Digest() != before {
					t.Fatalf("%s: a panicking Apply changed the state", name)
				}
			}()
			st.Apply(7, 2, b)
			t.Fatalf("%s: Apply did not panic", name)
		}()
	}
}

func TestApplySkipsIgnorableUnknownCommand(t *testing.T) {
	st := New()
	before := contentDigest(st)
	res := st.Apply(5, 2, []byte{0xfe, 3, 'a', 'n', 'y'})
	if !res.Ignored || res.Err != nil || res.Index != 5 || res.Term != 2 || res.Type != 0xfe {
		t.Fatalf("Result = %+v, want Ignored", res)
	}
	if i, term := st.AppliedIndex(); i != 5 || term != 2 {
		t.Fatalf("AppliedIndex = %d, %d; want 5, 2", i, term)
	}
	if contentDigest(st) != before {
		t.Fatalf("an ignored command changed the state")
	}
}

func TestResultAndErrorCodes(t *testing.T) {
	h := newHarness(t)
	res := h.refused(&command.NodeRemoved{ID: "ghost"}, ErrNotFound)
	if res.Type != command.TypeNodeRemoved || res.Index != 1 || res.Ignored {
		t.Fatalf("Result = %+v", res)
	}
	if i, _ := h.st.AppliedIndex(); i != 1 {
		t.Fatalf("a refused command must still advance the applied index; got %d", i)
	}
	for _, sentinel := range []error{ErrNotFound, ErrExists, ErrFenced, ErrInvalidTransition, ErrSnapshotsDisabled,
		ErrNoSpace, ErrInvalid, ErrInUse, ErrChecksumMismatch, ErrLimit} {
		code := ErrorCode(fmt.Errorf("wrapped: %w", sentinel))
		if code == "" || code == "internal" || !errors.Is(ErrorForCode(code), sentinel) {
			t.Fatalf("ErrorCode(%v) = %q does not round-trip", sentinel, code)
		}
	}
	if ErrorCode(nil) != "" || ErrorCode(errors.New("x")) != "internal" || ErrorForCode("nope") != nil {
		t.Fatalf("ErrorCode edge cases wrong")
	}
	// A validation failure is ErrInvalid and keeps the command's field error.
	var ve *command.ValidationError
	if !errors.As(h.apply(&command.NodeRemoved{}).Err, &ve) || ve.Field != "id" {
		t.Fatalf("validation error lost its details")
	}
}

// scenario applies a varied log: every command type, refusals, fencing,
// deletes and reclaims, shares, and jobs using every field of payload
// version 2.
func scenario(h *harness) {
	scenarioV1(h)
	h.ok(shareAdded("nas"))
	h.ok(&command.ShareAdded{Name: "local", URL: "file:///srv/exports", CreatedAt: t0})
	h.ok(&command.ShareAdded{Name: "gone", URL: "smb://nas/old", CreatedAt: t0})
	h.ok(&command.ShareRemoved{Name: "gone", At: t0})
	h.ok(exportShareJob("j3", "s2", "node-a", "nas"))
	h.ok(jobState("j3", command.JobRunning, ""))
	h.ok(progressRate("j3", gib, 40*mib, "web.ova"))
	h.ok(&command.JobAssigned{ID: "j3", Node: "node-b", Reason: "node node-a lost", At: t0.Add(time.Hour)})
	h.ok(importShareJob("j4", "node-b", "nas", "web copy"))
	h.ok(jobState("j4", command.JobRunning, ""))
	h.ok(progressRate("j4", 2*gib, 90*mib, "web/web-disk1.vmdk"))
	h.ok(importShareJob("j5", "node-a", "local", "restored"))
	h.ok(jobState("j5", command.JobRunning, ""))
	h.ok(&command.JobStateChanged{ID: "j5", State: command.JobDone, VMID: "vm-9", At: t0.Add(2 * time.Hour)})
	h.apply(&command.ShareRemoved{Name: "nas", At: t0}) // refused: in use
}

// scenarioV1 is what scenario applied before checkpoint format version 2:
// its checkpoint is testdata/checkpoint-v1.bin.
func scenarioV1(h *harness) {
	h.cluster()
	h.addVM("vm-2", "node-b", "vol-7")
	h.ok(&command.SettingsSet{Values: map[string]string{"retention.max": "5"}})
	h.completeSnapshot("s1", nil, "vol-1", "vol-2")
	h.completeSnapshot("s2", map[string]string{"vol-1": "s1"}, "vol-1")
	h.ok(exportJob("j1", "s2", "node-b"))
	h.ok(jobState("j1", command.JobRunning, ""))
	h.ok(progress("j1", gib))
	h.ok(&command.ImportJobCreated{ID: "j2", Node: "node-a", Source: "file:///srv/x.ovf", VMName: "imported", Creator: "admin", CreatedAt: t0})
	h.apply(&command.SnapshotDeleteRequested{ID: "s2", Term: 1, Requester: "admin", At: t0}) // refused: exported
	h.ok(&command.SnapshotDeleteRequested{ID: "s1", Term: 1, Requester: "admin", At: t0})
	h.ok(&command.ReplicaReclaimed{ID: "s1", Term: 1, Node: "node-a", At: t0})
	h.term = 2
	c := created("s3", "vm-2", 2, gib, "vol-7")
	c.Coordinator = "node-b"
	h.ok(c)
	h.ok(created("s4", "vm-1", 2, gib, "vol-1"))
	cp := captured("s4", 2, gib, "vol-1")
	h.ok(cp)
	h.term = 3
	h.ok(discardIncomplete(3))
	h.apply(replica("s3", 2, "node-a", gib, "vol-7")) // refused: fenced
	h.ok(&command.ReplicaReclaimed{ID: "s3", Term: 3, Node: "node-a", At: t0})
	h.ok(&command.ContainerExpanded{VolumeID: "vol-1", Node: "node-b", CapacityBytes: 40 * gib})
	h.ok(&command.NodeUpdated{Node: witness("w").Node})
	h.apply(&command.VMRemoved{ID: "vm-1"}) // refused: snapshots
	h.st.Apply(h.index+1, h.term, []byte{0xf0, 1})
	h.index++
	h.log = append(h.log, entry{h.index, h.term, []byte{0xf0, 1}})
}

// TestDeterministicReplay applies the same log to fresh states, and to a
// state restored from a checkpoint taken midway, and expects one digest.
func TestDeterministicReplay(t *testing.T) {
	h := newHarness(t)
	scenario(h)
	want := h.st.Digest()
	for round := 0; round < 3; round++ {
		st := New()
		for _, e := range h.log {
			st.Apply(e.index, e.term, e.data)
		}
		if st.Digest() != want {
			t.Fatalf("round %d: replay digest differs", round)
		}
	}
	for cut := 0; cut <= len(h.log); cut += 7 {
		st := New()
		for _, e := range h.log[:cut] {
			st.Apply(e.index, e.term, e.data)
		}
		var buf bytes.Buffer
		if _, err := st.Checkpoint().WriteTo(&buf); err != nil {
			t.Fatal(err)
		}
		restored := New()
		if err := restored.Restore(&buf); err != nil {
			t.Fatalf("cut %d: Restore: %v", cut, err)
		}
		for _, e := range h.log[cut:] {
			restored.Apply(e.index, e.term, e.data)
		}
		if restored.Digest() != want {
			t.Fatalf("cut %d: checkpoint + replay digest differs from a full replay", cut)
		}
	}
}

// TestConcurrentApplyQueryCheckpoint runs Apply against queries and
// checkpoint writers; run with -race. Each checkpoint must stay equal to
// itself while the state moves on.
func TestConcurrentApplyQueryCheckpoint(t *testing.T) {
	h := newHarness(t)
	h.cluster()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				cp := h.st.Checkpoint()
				var a, b bytes.Buffer
				if _, err := cp.WriteTo(&a); err != nil {
					t.Error(err)
					return
				}
				h.st.Snapshots(SnapshotFilter{VMID: "vm-1"})
				h.st.Containers(ContainerFilter{})
				if _, err := cp.WriteTo(&b); err != nil {
					t.Error(err)
					return
				}
				if !bytes.Equal(a.Bytes(), b.Bytes()) {
					t.Error("a checkpoint changed while Apply ran")
					return
				}
			}
		}()
	}
	for i := 0; i < 200; i++ {
		id := fmt.Sprintf("s%d", i)
		h.ok(created(id, "vm-1", 1, mib, "vol-1"))
		h.ok(captured(id, 1, mib, "vol-1"))
		h.ok(replica(id, 1, "node-b", mib, "vol-1"))
	}
	close(stop)
	wg.Wait()
}

// TestInvalidCommandsRefused proposes one command per type that fails its
// own validation: each is refused with ErrInvalid and changes nothing.
func TestInvalidCommandsRefused(t *testing.T) {
	h := newHarness(t)
	h.cluster()
	h.completeSnapshot("s1", nil, "vol-1")
	badVM := vmSpec("vm-1", "node-a", "vol-1")
	badVM.FreezeTimeout = 0
	invalid := []command.Command{
		&command.NodeAdded{Node: command.Node{ID: "n", Role: command.RoleData, RaftAddress: "x", APIAddress: "y:1", DataAddress: "z:1"}},
		&command.NodeUpdated{Node: command.Node{ID: "node-a", Role: command.RoleWitness, RaftAddress: "a:1", APIAddress: "a:2", DataAddress: "a:3"}},
		&command.NodeRemoved{ID: " node-a"},
		&command.SettingsSet{Values: map[string]string{"": "x"}},
		&command.VMRegistered{VM: vmSpec("vm-9", "node-a")},
		&command.VMUpdated{VM: badVM},
		&command.VMRemoved{ID: "vm-1/"},
		&command.ContainerCreated{VolumeID: "vol-1", Node: "node-a"},
		&command.ContainerExpanded{VolumeID: "vol-1", Node: "node-a", CapacityBytes: command.MaxBytes + 1},
		&command.SnapshotCreated{ID: "s2", VMID: "vm-1", Name: "x", Creator: "a", CreatedAt: t0, Term: 1, Coordinator: "node-a"},
		&command.SnapshotCaptured{ID: "s1", Term: 1, Node: "node-a", Achieved: "perfect", Verified: true, CapturedAt: t0, Volumes: volData(1, sumA, "vol-1")},
		&command.ReplicaWritten{ID: "s1", Term: 1, Node: "node-b", Volumes: volData(1, "nothex", "vol-1"), At: t0},
		&command.SnapshotFailed{ID: "s1", Term: 0, Node: "node-a", Reason: "x", At: t0},
		&command.DiscardIncomplete{Term: 0, At: t0},
		&command.SnapshotDeleteRequested{ID: "s1", Term: 1, Requester: "admin"},
		&command.ReplicaReclaimed{ID: "", Term: 1, Node: "node-a", At: t0},
		&command.ExportJobCreated{ID: "j", SnapshotID: "s1", Node: "node-a", Target: "smb://nas/x", Format: "ova", Creator: "a", CreatedAt: t0},
		&command.ImportJobCreated{ID: "j", Node: "node-a", Source: "http://nas/x.ovf", VMName: "x", Creator: "a", CreatedAt: t0},
		&command.JobProgress{ID: "j", Offset: 5, Bytes: 5, TotalBytes: 4, At: t0},
		&command.JobStateChanged{ID: "j", State: command.JobQueued, At: t0},
		&command.ShareAdded{Name: "nas", URL: "smb://nas/exports", User: "u", Password: make(command.Sealed, 10), KeyID: "k", CreatedAt: t0},
		&command.ShareRemoved{Name: "", At: t0},
		&command.JobAssigned{ID: "j", Node: "node-b", At: t0},
	}
	covered := map[command.Type]bool{}
	for _, cmd := range invalid {
		if cmd.Validate() == nil {
			t.Fatalf("%s: the test command is valid", cmd.Type())
		}
		h.refused(cmd, ErrInvalid)
		covered[cmd.Type()] = true
	}
	for _, typ := range command.Types() {
		if !covered[typ] {
			t.Fatalf("no invalid-input case for %s", typ)
		}
	}
}
