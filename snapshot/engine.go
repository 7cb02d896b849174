package snapshot

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/twinsnap/twinsnap/cluster/command"
	"github.com/twinsnap/twinsnap/volumes"
)

// The states of a snapshot in the replicated state (DESIGN.md).
const (
	StateCreating  = "creating"
	StatePartial   = "partial"
	StateComplete  = "complete"
	StateDiscarded = "discarded"
	StateDeleting  = "deleting"
)

// The phases of the workflow, as Progress reports them.
const (
	PhasePlan      = "plan"
	PhaseCapture   = "capture"
	PhaseVerify    = "verify"
	PhaseReplicate = "replicate"
	PhaseComplete  = "complete"
	PhaseDiscard   = "discard"
	PhaseDelete    = "delete"
)

// UEFIVarsID is the image id under which a snapshot's copy of the VM's
// UEFI variables travels to the peer. It is not a valid volume id, so it
// cannot clash with one.
const UEFIVarsID = "~uefi-vars"

// Errors of the engine.
var (
	// ErrNotCoordinator: the snapshot is captured by another node.
	ErrNotCoordinator = errors.New("snapshot: this node does not coordinate the snapshot")
	// ErrUnknown: the replicated state holds no such snapshot (or it is in
	// a state that takes no data).
	ErrUnknown = errors.New("snapshot: unknown snapshot")
)

// Record is what the engine needs of a snapshot in the replicated state.
// The daemon builds it from its state store.
type Record struct {
	ID          string
	VM          command.VM
	State       string
	Coordinator string
	Term        uint64
	Desired     command.Consistency
	Required    command.Consistency
	Volumes     []RecordVolume
	// Replicas lists the nodes that reported a replica, with Verified.
	Replicas []RecordReplica
	// Reclaim lists the nodes yet to free the snapshot's space.
	Reclaim []string
	// UEFIVars describes the captured UEFI variables (nil: none).
	UEFIVars *command.FileData
	// CreatedIndex orders snapshots (older first).
	CreatedIndex uint64
}

// RecordVolume is one selected volume of a Record.
type RecordVolume struct {
	VolumeID    string
	ParentID    string
	SizeBytes   int64
	StoredBytes int64
	SHA256      string
}

// RecordReplica is one node's replica of a Record.
type RecordReplica struct {
	Node     string
	Verified bool
	Volumes  []command.VolumeData
}

// verifiedOn reports whether node holds a verified replica.
func (r *Record) verifiedOn(node string) bool {
	for _, rep := range r.Replicas {
		if rep.Node == node && rep.Verified {
			return true
		}
	}
	return false
}

// replicaOn returns node's replica, if any.
func (r *Record) replicaOn(node string) (RecordReplica, bool) {
	for _, rep := range r.Replicas {
		if rep.Node == node {
			return rep, true
		}
	}
	return RecordReplica{}, false
}

// Cluster is what the engine needs of the replicated state and the Raft
// node.
type Cluster interface {
	// Propose commits cmd through the leader; a refusal by the state
	// machine comes back as the error.
	Propose(ctx context.Context, cmd command.Command) error
	// Snapshots returns every snapshot in the state, oldest first.
	Snapshots() []Record
	// Peer returns the other data node's id and data (replication)
	// address; ok is false while there is none.
	Peer() (id, dataAddr string, ok bool)
}

// Capturer captures VMs of this node.
type Capturer interface {
	// Inspect reports whether the VM runs and, per volume id, the
	// twinsnap dirty bitmaps QEMU holds for it.
	Inspect(ctx context.Context, vm command.VM) (Inspection, error)
	// Capture takes the point-in-time copy of req's volumes into their
	// targets, quiesced as req asks, and returns what it achieved and the
	// VM's configuration. On error nothing was captured.
	Capture(ctx context.Context, req CaptureRequest) (CaptureResult, error)
}

// Tidier removes what captures leave in a VM.
type Tidier interface {
	// Cleanup ends copy jobs and closes targets that a capture of a
	// previous daemon left in the VM. Only call it while no capture of
	// the VM runs.
	Cleanup(ctx context.Context, vm command.VM) error
	// PruneBitmaps removes every twinsnap dirty bitmap of the VM for
	// which keep(volumeID, snapshotID) is false.
	PruneBitmaps(ctx context.Context, vm command.VM, keep func(volumeID, snapshotID string) bool) error
}

// Hypervisor is how the engine reaches the VMs of this node.
type Hypervisor interface {
	Capturer
	Tidier
}

// Inspection is what Capturer.Inspect reports.
type Inspection struct {
	// Running is false for a stopped VM: it is copied whole with qemu-img.
	Running bool
	// Bitmaps are the twinsnap bitmaps by volume id.
	Bitmaps map[string][]Bitmap
}

// Bitmap is one persistent dirty bitmap on a volume.
type Bitmap struct {
	// SnapshotID is the snapshot whose capture started it.
	SnapshotID string
	// DirtyBytes is what it marks as written since.
	DirtyBytes int64
	// Usable is false for a bitmap QEMU marks inconsistent or busy, or
	// that is not persistent.
	Usable bool
}

// CaptureRequest asks the Hypervisor for one capture.
type CaptureRequest struct {
	SnapshotID string
	VM         command.VM
	Volumes    []CaptureVolume
	Desired    command.Consistency
	Required   command.Consistency
}

// CaptureVolume is one volume to capture into Target (an existing qcow2
// image with the volume's size, backed by the parent's image when
// ParentID is set: the capture is then incremental to the parent, through
// the bitmap named BitmapName(ParentID)).
type CaptureVolume struct {
	VolumeID string
	Target   string
	ParentID string
}

// CaptureResult is what a capture achieved.
type CaptureResult struct {
	Achieved       command.Consistency
	StepDownReason string
	CapturedAt     time.Time
	// Config is the VM's configuration; nil when it could not be read.
	Config *command.CapturedConfig
	// UEFIVars is the path of the VM's UEFI variable store to copy, if it
	// has one.
	UEFIVars string
}

// BitmapName is the persistent dirty bitmap a capture leaves on each
// captured volume: it records the writes after snapshot id, so the next
// snapshot of the volume can be incremental to id.
func BitmapName(snapshotID string) string { return "twinsnap-" + snapshotID }

// Config configures an Engine.
type Config struct {
	// Node is this data node's id.
	Node string
	// Dir holds the engine's own files: per snapshot a journal and the
	// UEFI variables copy.
	Dir string
	// Store holds the volume containers.
	Store *volumes.Store
	// Cluster, Hypervisor and Sender reach the rest of the system.
	Cluster    Cluster
	Hypervisor Hypervisor
	// NewSender returns a Sender to the peer's data address.
	NewSender func(addr string) *Sender
	// Containers returns the capacity this node's container of a volume
	// should have (from the replicated state); ok is false when the state
	// has none.
	Containers func(volumeID string) (capacity int64, ok bool)
	// Interval is how often the engine reconciles without a nudge;
	// default 2 s.
	Interval time.Duration
	// Logger receives the engine's events.
	Logger *slog.Logger
}

// Engine runs the snapshot workflow on one data node: it captures the
// snapshots this node coordinates, replicates them to the peer, proposes
// the replicas it receives, and reclaims discarded and deleted snapshots.
// Every step is driven by the replicated state plus a local journal, so a
// restarted engine picks up where the last one stopped.
type Engine struct {
	cfg   Config
	log   *slog.Logger
	nudge chan struct{}

	mu       sync.Mutex
	busy     map[string]bool      // snapshots with a step running
	progress map[string]*Progress // live progress by snapshot
	failures map[string]int       // consecutive failures of a snapshot's step
	received map[string]bool      // images received and verified, "snap\x00vol"
	started  time.Time
	cleaned  bool // start-up cleanup of local VMs done
	wg       sync.WaitGroup
}

// Progress is what the engine is doing for one snapshot.
type Progress struct {
	Phase      string    `json:"phase"`
	BytesDone  int64     `json:"bytes_done"`
	BytesTotal int64     `json:"bytes_total"`
	Detail     string    `json:"detail,omitempty"`
	UpdatedAt  time.Time `json:"updated_at"`
}

// New returns an Engine; start it with Run.
func New(cfg Config) (*Engine, error) {
	if cfg.Node == "" || cfg.Dir == "" || cfg.Store == nil || cfg.Cluster == nil || cfg.NewSender == nil || cfg.Containers == nil {
		return nil, errors.New("snapshot: engine: incomplete configuration")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("snapshot: engine: %w", err)
	}
	return &Engine{
		cfg: cfg, log: cfg.Logger.With("component", "snapshot", "node", cfg.Node),
		nudge: make(chan struct{}, 1), busy: map[string]bool{}, progress: map[string]*Progress{},
		failures: map[string]int{}, received: map[string]bool{}, started: time.Now(),
	}, nil
}

// Nudge asks for a reconcile soon (after a state change).
func (e *Engine) Nudge() {
	select {
	case e.nudge <- struct{}{}:
	default:
	}
}

// Run reconciles until ctx ends, then waits for running steps.
func (e *Engine) Run(ctx context.Context) {
	t := time.NewTicker(e.cfg.Interval)
	defer t.Stop()
	for {
		e.reconcile(ctx)
		select {
		case <-ctx.Done():
			e.wg.Wait()
			return
		case <-t.C:
		case <-e.nudge:
		}
	}
}

// Progress returns the live progress of a snapshot on this node.
func (e *Engine) Progress(id string) (Progress, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	p, ok := e.progress[id]
	if !ok {
		return Progress{}, false
	}
	return *p, true
}

func (e *Engine) setProgress(id, phase string, done, total int64, detail string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.progress[id] = &Progress{Phase: phase, BytesDone: done, BytesTotal: total, Detail: detail, UpdatedAt: time.Now()}
}

func (e *Engine) addProgress(id string, delta int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if p := e.progress[id]; p != nil {
		p.BytesDone += delta
		p.UpdatedAt = time.Now()
	}
}

// step runs fn for snapshot id in the background unless a step for it is
// already running; failures back off per snapshot.
func (e *Engine) step(ctx context.Context, id, what string, fn func(context.Context) error) {
	e.mu.Lock()
	if e.busy[id] {
		e.mu.Unlock()
		return
	}
	e.busy[id] = true
	e.mu.Unlock()
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		err := fn(ctx)
		e.mu.Lock()
		if err != nil && ctx.Err() == nil {
			e.failures[id]++
			n := e.failures[id]
			e.mu.Unlock()
			e.log.Warn("snapshot step failed; retrying", "snapshot", id, "step", what, "attempt", n, "err", err)
			if p, ok := e.Progress(id); ok {
				e.setProgress(id, p.Phase, p.BytesDone, p.BytesTotal, "retrying: "+err.Error())
			}
			// Back off (bounded) before the step may run again.
			d := min(time.Duration(n)*time.Second, 15*time.Second)
			select {
			case <-ctx.Done():
			case <-time.After(d):
			}
			e.mu.Lock()
		} else if err == nil {
			delete(e.failures, id)
		}
		delete(e.busy, id)
		e.mu.Unlock()
		e.Nudge()
	}()
}

// isBusy reports whether a step for id is running.
func (e *Engine) isBusy(id string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.busy[id]
}

// reconcile looks at every snapshot and starts the step this node owes it.
func (e *Engine) reconcile(ctx context.Context) {
	if ctx.Err() != nil {
		return
	}
	snaps := e.cfg.Cluster.Snapshots()
	e.startupCleanup(ctx, snaps)
	live := map[string]bool{}
	for i := range snaps {
		rec := snaps[i]
		live[rec.ID] = true
		switch rec.State {
		case StateCreating:
			if rec.Coordinator == e.cfg.Node && !e.isBusy(rec.ID) {
				e.step(ctx, rec.ID, PhaseCapture, func(ctx context.Context) error { return e.resumeCreating(ctx, rec) })
			}
		case StatePartial:
			switch {
			case rec.verifiedOn(e.cfg.Node) && !e.peerVerified(&rec):
				e.step(ctx, rec.ID, PhaseReplicate, func(ctx context.Context) error { return e.replicate(ctx, rec) })
			case !rec.verifiedOn(e.cfg.Node):
				e.step(ctx, rec.ID, PhaseReplicate, func(ctx context.Context) error { return e.proposeReceived(ctx, rec) })
			}
		case StateComplete:
			e.mu.Lock()
			if p := e.progress[rec.ID]; p != nil && p.Phase != PhaseComplete {
				p.Phase, p.Detail, p.UpdatedAt = PhaseComplete, "", time.Now()
				p.BytesDone = p.BytesTotal
			}
			e.mu.Unlock()
		case StateDiscarded, StateDeleting:
			if slices.Contains(rec.Reclaim, e.cfg.Node) {
				e.step(ctx, rec.ID, PhaseDiscard, func(ctx context.Context) error { return e.reclaim(ctx, rec, snaps) })
			}
		}
	}
	e.sweep(live)
}

// peerVerified reports whether the other data node holds a verified
// replica of rec.
func (e *Engine) peerVerified(rec *Record) bool {
	for _, r := range rec.Replicas {
		if r.Node != e.cfg.Node && r.Verified {
			return true
		}
	}
	return false
}

// sweep forgets the local traces of snapshots the state no longer has:
// progress, journals, and UEFI variable copies whose reclaim was already
// recorded.
func (e *Engine) sweep(live map[string]bool) {
	e.mu.Lock()
	for id := range e.progress {
		if !live[id] && !e.busy[id] && time.Since(e.progress[id].UpdatedAt) > time.Minute {
			delete(e.progress, id)
		}
	}
	e.mu.Unlock()
	entries, err := os.ReadDir(e.cfg.Dir)
	if err != nil {
		return
	}
	for _, ent := range entries {
		id := ent.Name()
		if !ent.IsDir() || live[id] || e.isBusy(id) {
			continue
		}
		j, err := e.readJournal(id)
		// A journal younger than the engine's view may belong to a
		// snapshot being created right now; leave it a while.
		if err == nil && time.Since(j.Updated) < 5*time.Minute {
			continue
		}
		e.log.Info("removing local files of a snapshot the cluster no longer knows", "snapshot", id)
		os.RemoveAll(filepath.Join(e.cfg.Dir, id))
	}
}

// ensureContainer creates or grows this node's container of a volume to
// the capacity the replicated state gives it.
func (e *Engine) ensureContainer(volumeID string) error {
	capacity, ok := e.cfg.Containers(volumeID)
	if !ok {
		return fmt.Errorf("volume %s has no container on node %s in the cluster state", volumeID, e.cfg.Node)
	}
	ct, err := e.cfg.Store.Get(volumeID)
	if errors.Is(err, volumes.ErrNotFound) {
		_, err = e.cfg.Store.Create(volumeID, capacity)
		return err
	}
	if err != nil {
		return err
	}
	if ct.Capacity < capacity {
		_, err = e.cfg.Store.Expand(volumeID, capacity)
	}
	return err
}

// snapDir is the engine's directory for one snapshot.
func (e *Engine) snapDir(id string) string { return filepath.Join(e.cfg.Dir, id) }

// varsPath is where a snapshot's UEFI variables are kept on this node.
func (e *Engine) varsPath(id string) string { return filepath.Join(e.snapDir(id), "uefi-vars.fd") }

// ImagePath returns the path of a snapshot's image of a volume on this
// node.
func (e *Engine) ImagePath(snapshotID, volumeID string) string {
	return e.cfg.Store.NewImagePath(volumeID, snapshotID)
}

// UEFIVarsPath returns the path of a snapshot's UEFI variables on this
// node.
func (e *Engine) UEFIVarsPath(snapshotID string) string { return e.varsPath(snapshotID) }
