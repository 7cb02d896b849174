package snapshot

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/twinsnap/twinsnap/cluster/command"
	"github.com/twinsnap/twinsnap/cluster/state"
)

// Errors the fake cluster reports for proposals that did not go through.
var (
	// errTransport is a proposal that never reached a leader.
	errTransport = errors.New("fake raft: no leader reachable")
	// errLostResult is a proposal that was applied but whose result never
	// came back to the proposer.
	errLostResult = errors.New("fake raft: the result of the proposal was lost")
)

// fakeRaft stands in for the Raft log in front of a real, in-memory
// state.State: a command is encoded, applied at the next index in the
// current term, and recorded. It is shared by the nodes of a test system.
type fakeRaft struct {
	st *state.State

	mu     sync.Mutex // serialises Apply in log order, as the Raft FSM does
	index  uint64
	term   uint64
	log    []applied
	nudges []func()
}

// applied is one log entry the fake raft applied.
type applied struct {
	Index    uint64
	Term     uint64
	Proposer string // node id; "" for the test acting as the leader
	Cmd      command.Command
	Err      error // the state machine's refusal, if any
	// Snapshot is the named snapshot after the entry; Gone when the state
	// no longer holds it.
	Snapshot state.Snapshot
	Gone     bool
}

// newFakeRaft returns an empty log in term 1 in front of a new state.
func newFakeRaft() *fakeRaft { return &fakeRaft{st: state.New(), term: 1} }

// setTerm makes later entries carry term (a new leader).
func (r *fakeRaft) setTerm(term uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.term = term
}

// currentTerm returns the term of the next entry.
func (r *fakeRaft) currentTerm() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.term
}

// onApply registers fn to run after every entry (the daemon nudges its
// engine whenever the state moves).
func (r *fakeRaft) onApply(fn func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nudges = append(r.nudges, fn)
}

// apply encodes cmd as the cluster does before proposing and applies it at
// the next index. An error means the command could not be encoded; the
// state machine's verdict is in the result.
func (r *fakeRaft) apply(proposer string, cmd command.Command) (state.Result, error) {
	data, err := command.Encode(cmd)
	if err != nil {
		return state.Result{}, fmt.Errorf("fake raft: %s: %w", cmd.Type(), err)
	}
	r.mu.Lock()
	r.index++
	res := r.st.Apply(r.index, r.term, data)
	e := applied{Index: r.index, Term: r.term, Proposer: proposer, Cmd: cmd, Err: res.Err}
	if id := snapshotIDOf(cmd); id != "" {
		sn, err := r.st.Snapshot(id)
		e.Snapshot, e.Gone = sn, err != nil
	}
	r.log = append(r.log, e)
	nudges := slices.Clone(r.nudges)
	r.mu.Unlock()
	for _, fn := range nudges {
		fn()
	}
	return res, nil
}

// entries returns the applied entries naming snapshot id (all entries for
// id ""), in log order.
func (r *fakeRaft) entries(id string) []applied {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []applied
	for _, e := range r.log {
		if id == "" || snapshotIDOf(e.Cmd) == id {
			out = append(out, e)
		}
	}
	return out
}

// snapshotIDOf returns the snapshot a command names, or "".
func snapshotIDOf(cmd command.Command) string {
	switch c := cmd.(type) {
	case *command.SnapshotCreated:
		return c.ID
	case *command.SnapshotCaptured:
		return c.ID
	case *command.ReplicaWritten:
		return c.ID
	case *command.SnapshotFailed:
		return c.ID
	case *command.SnapshotDeleteRequested:
		return c.ID
	case *command.ReplicaReclaimed:
		return c.ID
	}
	return ""
}

// fakeCluster is one data node's view of the fake raft: the engine's
// Cluster, with fault injection on its proposals.
type fakeCluster struct {
	raft *fakeRaft
	node string

	mu       sync.Mutex
	faults   []*proposalFault
	proposed []command.Type // every proposal this node made, whatever became of it
}

var _ Cluster = (*fakeCluster)(nil)

// proposalFault changes the fate of the next n proposals of one type.
type proposalFault struct {
	typ command.Type
	n   int
	// before, if set, runs first (for instance to stop the engine).
	before func(command.Command)
	// drop applies the command but reports a lost result; otherwise the
	// proposal fails with a transport error and is not applied.
	drop bool
}

// failNext makes the next n proposals of typ fail with a transport error,
// unapplied; before, if not nil, runs first.
func (c *fakeCluster) failNext(typ command.Type, n int, before func(command.Command)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.faults = append(c.faults, &proposalFault{typ: typ, n: n, before: before})
}

// dropNext makes the next n proposals of typ apply but report an error, as
// when the leader's answer is lost ("unknown result").
func (c *fakeCluster) dropNext(typ command.Type, n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.faults = append(c.faults, &proposalFault{typ: typ, n: n, drop: true})
}

// proposals counts the proposals of typ this node made.
func (c *fakeCluster) proposals(typ command.Type) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, t := range c.proposed {
		if t == typ {
			n++
		}
	}
	return n
}

// Propose implements Cluster: the command is encoded and applied at the
// next index, unless a fault says otherwise; a business error comes back
// as a *Refusal.
func (c *fakeCluster) Propose(ctx context.Context, cmd command.Command) error {
	c.mu.Lock()
	c.proposed = append(c.proposed, cmd.Type())
	var f *proposalFault
	for _, x := range c.faults {
		if x.typ == cmd.Type() && x.n > 0 {
			x.n--
			f = x
			break
		}
	}
	c.mu.Unlock()
	if f != nil && f.before != nil {
		f.before(cmd)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("fake raft: %w", err)
	}
	if f != nil && !f.drop {
		return errTransport
	}
	res, err := c.raft.apply(c.node, cmd)
	if err != nil {
		return err
	}
	if f != nil {
		return errLostResult
	}
	if res.Err != nil {
		return &Refusal{Err: res.Err}
	}
	return nil
}

// Snapshots implements Cluster, converting the state's snapshots as the
// daemon's recordOf does.
func (c *fakeCluster) Snapshots() []Record {
	st := c.raft.st
	snaps := st.Snapshots(state.SnapshotFilter{})
	out := make([]Record, 0, len(snaps))
	for _, sn := range snaps {
		vm := sn.Config
		if cur, err := st.VM(sn.VMID); err == nil {
			vm = cur.VM
		}
		r := Record{
			ID: sn.ID, VM: vm, State: string(sn.State), Coordinator: sn.Coordinator, Term: sn.Term,
			Desired: sn.Desired, Required: sn.Required, Reclaim: sn.Reclaim, CreatedIndex: sn.CreatedIndex,
		}
		if sn.Captured != nil {
			r.UEFIVars = sn.Captured.UEFIVars
		}
		for _, v := range sn.Volumes {
			r.Volumes = append(r.Volumes, RecordVolume{
				VolumeID: v.VolumeID, ParentID: v.ParentID, SizeBytes: v.SizeBytes, StoredBytes: v.StoredBytes, SHA256: v.SHA256,
			})
		}
		for _, rep := range sn.Replicas {
			r.Replicas = append(r.Replicas, RecordReplica{Node: rep.Node, Verified: rep.Verified, Volumes: rep.Volumes})
		}
		out = append(out, r)
	}
	return out
}

// Peer implements Cluster: the other data node of the state and its data
// address (the other engine's receiver).
func (c *fakeCluster) Peer() (string, string, bool) {
	for _, n := range c.raft.st.Nodes() {
		if n.Role == command.RoleData && n.ID != c.node {
			return n.ID, n.DataAddress, n.DataAddress != ""
		}
	}
	return "", "", false
}

// guestWrite is one write the fake guest made to a volume.
type guestWrite struct {
	off, n  int64
	pattern byte
}

// hvCall is one call the engine made to the fake hypervisor.
type hvCall struct {
	op       string // "inspect", "capture", "cleanup" or "prune"
	vm       string
	snapshot string                                 // capture only
	keep     func(volumeID, snapshotID string) bool // prune only
}

// fakeHypervisor is the VM side of one data node. Before each capture the
// guest writes one new region (writeLen bytes with a pattern of its own)
// to every captured volume; a full capture writes everything the guest
// ever wrote into the target, an incremental one only what it wrote since
// the parent's capture, so the targets form real qcow2 chains whose guest
// view is known. Captures of a running VM leave a dirty bitmap per volume,
// which PruneBitmaps removes.
type fakeHypervisor struct {
	mu       sync.Mutex
	running  bool
	dirty    int64                      // DirtyBytes of every bitmap
	unusable map[string]bool            // snapshot ids whose bitmaps are inconsistent
	bitmaps  map[string]map[string]bool // volume → snapshot ids
	writeLen int64
	writes   map[string][]guestWrite   // volume → the guest's writes so far
	marks    map[string]map[string]int // snapshot → volume → writes it holds
	uefiVars string                    // the VM's UEFI variable store; "" for BIOS
	calls    []hvCall

	// beforeCapture, if set, runs first in Capture; an error fails the
	// capture with nothing written.
	beforeCapture func(ctx context.Context, req CaptureRequest) error
	// afterCapture, if set, runs once the targets are written.
	afterCapture func(req CaptureRequest)
}

var _ Hypervisor = (*fakeHypervisor)(nil)

// newFakeHypervisor returns a running VM's hypervisor whose guest writes
// writeLen bytes per capture.
func newFakeHypervisor(writeLen int64) *fakeHypervisor {
	return &fakeHypervisor{
		running: true, dirty: 4 << 20, writeLen: writeLen, unusable: map[string]bool{},
		bitmaps: map[string]map[string]bool{}, writes: map[string][]guestWrite{}, marks: map[string]map[string]int{},
	}
}

// set changes the fake's configuration under its lock.
func (h *fakeHypervisor) set(fn func(h *fakeHypervisor)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	fn(h)
}

func (h *fakeHypervisor) record(c hvCall) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls = append(h.calls, c)
}

// callLog returns the calls so far.
func (h *fakeHypervisor) callLog() []hvCall {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.calls)
}

// resetCalls forgets the calls so far.
func (h *fakeHypervisor) resetCalls() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls = nil
}

// bitmapsOf returns the snapshot ids of a volume's bitmaps, sorted.
func (h *fakeHypervisor) bitmapsOf(volumeID string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for id := range h.bitmaps[volumeID] {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

// guestWrites returns what the guest wrote to a volume so far.
func (h *fakeHypervisor) guestWrites(volumeID string) []guestWrite {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.writes[volumeID])
}

// Inspect implements Capturer.
func (h *fakeHypervisor) Inspect(_ context.Context, vm command.VM) (Inspection, error) {
	h.record(hvCall{op: "inspect", vm: vm.ID})
	h.mu.Lock()
	defer h.mu.Unlock()
	insp := Inspection{Running: h.running, Bitmaps: map[string][]Bitmap{}}
	for vol, ids := range h.bitmaps {
		for id := range ids {
			insp.Bitmaps[vol] = append(insp.Bitmaps[vol], Bitmap{SnapshotID: id, DirtyBytes: h.dirty, Usable: !h.unusable[id]})
		}
	}
	return insp, nil
}

// Capture implements Capturer.
func (h *fakeHypervisor) Capture(ctx context.Context, req CaptureRequest) (CaptureResult, error) {
	h.record(hvCall{op: "capture", vm: req.VM.ID, snapshot: req.SnapshotID})
	h.mu.Lock()
	before, after := h.beforeCapture, h.afterCapture
	h.mu.Unlock()
	if before != nil {
		if err := before(ctx, req); err != nil {
			return CaptureResult{}, err
		}
	}
	h.mu.Lock()
	todo := map[string][]guestWrite{}
	for i, v := range req.Volumes {
		ws := h.writes[v.VolumeID]
		size := volumeSize(req.VM, v.VolumeID)
		gen := len(ws) + 1
		ws = append(ws, guestWrite{
			off: int64(gen-1) * h.writeLen % (size - size%h.writeLen), n: h.writeLen,
			pattern: byte(0x10*(i+1) + gen%16),
		})
		h.writes[v.VolumeID] = ws
		from := 0
		if v.ParentID != "" {
			m, ok := h.marks[v.ParentID][v.VolumeID]
			if !ok {
				h.mu.Unlock()
				return CaptureResult{}, fmt.Errorf("fake hypervisor: no bitmap of snapshot %s on volume %s", v.ParentID, v.VolumeID)
			}
			from = m
		}
		todo[v.Target] = ws[from:]
		if h.marks[req.SnapshotID] == nil {
			h.marks[req.SnapshotID] = map[string]int{}
		}
		h.marks[req.SnapshotID][v.VolumeID] = len(ws)
	}
	h.mu.Unlock()
	for target, ws := range todo {
		if err := qemuIOWrite(ctx, target, "qcow2", ws); err != nil {
			return CaptureResult{}, err
		}
	}
	h.mu.Lock()
	if h.running {
		for _, v := range req.Volumes {
			if h.bitmaps[v.VolumeID] == nil {
				h.bitmaps[v.VolumeID] = map[string]bool{}
			}
			h.bitmaps[v.VolumeID][req.SnapshotID] = true
		}
	}
	res := CaptureResult{
		Achieved: req.Desired, CapturedAt: time.Now(), UEFIVars: h.uefiVars,
		Config: &command.CapturedConfig{Kind: command.ConfigQEMULaunch, Text: `{"binary":"qemu-system-x86_64","args":["-name","` + req.VM.Name + `"]}`},
	}
	h.mu.Unlock()
	if after != nil {
		after(req)
	}
	return res, nil
}

// Cleanup implements Tidier.
func (h *fakeHypervisor) Cleanup(_ context.Context, vm command.VM) error {
	h.record(hvCall{op: "cleanup", vm: vm.ID})
	return nil
}

// PruneBitmaps implements Tidier: like QMP, it cannot act once ctx ended.
func (h *fakeHypervisor) PruneBitmaps(ctx context.Context, vm command.VM, keep func(volumeID, snapshotID string) bool) error {
	h.record(hvCall{op: "prune", vm: vm.ID, keep: keep})
	if err := ctx.Err(); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for vol, ids := range h.bitmaps {
		for id := range ids {
			if !keep(vol, id) {
				delete(ids, id)
			}
		}
	}
	return nil
}

// qemuIOWrite makes the writes into an image with qemu-io, through its
// backing chain.
func qemuIOWrite(ctx context.Context, image, format string, ws []guestWrite) error {
	if len(ws) == 0 {
		return nil
	}
	args := []string{"-f", format}
	for _, w := range ws {
		args = append(args, "-c", fmt.Sprintf("write -q -P %#x %d %d", w.pattern, w.off, w.n))
	}
	out, err := exec.CommandContext(ctx, "qemu-io", append(args, image)...).CombinedOutput()
	if err == nil && bytes.Contains(out, []byte("failed")) {
		err = errors.New("a write failed")
	}
	if err != nil {
		return fmt.Errorf("qemu-io %s: %w: %s", image, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// hookDialer dials TCP; once armed, the first connection that has written
// cutAfter bytes runs onCut (once), as a peer going away mid-transfer.
type hookDialer struct {
	mu       sync.Mutex
	dials    int
	cutAfter int64
	onCut    func()
}

var _ Dialer = (*hookDialer)(nil)

// arm makes the next connection to pass n written bytes run fn.
func (d *hookDialer) arm(n int64, fn func()) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cutAfter, d.onCut = n, fn
}

// dialCount returns the number of connections dialled.
func (d *hookDialer) dialCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.dials
}

// DialContext implements Dialer.
func (d *hookDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var nd net.Dialer
	c, err := nd.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.dials++
	return &hookConn{Conn: c, d: d}, nil
}

// hookConn counts the bytes written on a hookDialer's connection.
type hookConn struct {
	net.Conn
	d       *hookDialer
	written int64
}

// Write implements net.Conn.
func (c *hookConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.written += int64(n)
	c.d.mu.Lock()
	var fn func()
	if c.d.onCut != nil && c.written >= c.d.cutAfter {
		fn, c.d.onCut = c.d.onCut, nil
	}
	c.d.mu.Unlock()
	if fn != nil {
		fn()
	}
	return n, err
}
