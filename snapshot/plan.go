package snapshot

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"slices"
	"time"

	"github.com/twinsnap/twinsnap/cluster/command"
)

// PlanRequest asks for a snapshot of a VM of this node.
type PlanRequest struct {
	VM          command.VM
	Name        string
	Description string
	Creator     string
	// VolumeIDs are the selected volumes; the boot volume is added when
	// missing.
	VolumeIDs []string
	Desired   command.Consistency
	Required  command.Consistency
	// Full forces full captures.
	Full bool
	// Term is the current Raft term: the snapshot's fencing term.
	Term uint64
}

// Overhead of a qcow2 image over the data it holds: its header, refcount
// structures and one 8-byte L2 entry per 64 KiB cluster, rounded up
// generously.
func qcow2Overhead(size int64) int64 { return 2<<20 + size/4096 }

// newID returns a snapshot id: 16 hex digits, short enough to name QEMU
// block nodes after it.
func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Plan decides, for a snapshot of a VM of this node, which volumes are
// captured in full and which incrementally (and why), estimates the space
// each needs, and returns the snapshot-created command to propose. It
// touches nothing: the guest is untouched until the command is accepted,
// so a snapshot the containers cannot hold is refused first.
func (e *Engine) Plan(ctx context.Context, req PlanRequest) (*command.SnapshotCreated, error) {
	if req.VM.HostNode != e.cfg.Node {
		return nil, fmt.Errorf("%w: VM %s runs on %s", ErrNotCoordinator, req.VM.Name, req.VM.HostNode)
	}
	insp, err := e.cfg.Hypervisor.Inspect(ctx, req.VM)
	if err != nil {
		return nil, fmt.Errorf("inspecting VM %s: %w", req.VM.Name, err)
	}
	selected := slices.Clone(req.VolumeIDs)
	for _, v := range req.VM.Volumes {
		if v.Boot && !slices.Contains(selected, v.ID) {
			selected = append(selected, v.ID)
		}
	}
	snaps := e.cfg.Cluster.Snapshots()
	cmd := &command.SnapshotCreated{
		ID: newID(), VMID: req.VM.ID, Name: req.Name, Description: req.Description, Creator: req.Creator,
		CreatedAt: time.Now().UTC(), Desired: req.Desired, Required: req.Required,
		Coordinator: e.cfg.Node, Term: req.Term,
	}
	if cmd.Name == "" {
		cmd.Name = req.VM.Name
	}
	for _, v := range req.VM.Volumes {
		if !slices.Contains(selected, v.ID) {
			continue
		}
		sv := planVolume(e.cfg.Node, v, snaps, insp, req.Full)
		cmd.Volumes = append(cmd.Volumes, sv)
	}
	if len(cmd.Volumes) != len(selected) {
		return nil, fmt.Errorf("%w: a selected volume is not a volume of VM %s", ErrUnknown, req.VM.Name)
	}
	return cmd, nil
}

// planVolume chooses the parent (or the reason for a full capture) and the
// space estimate of one volume.
func planVolume(node string, v command.Volume, snaps []Record, insp Inspection, full bool) command.SnapshotVolume {
	sv := command.SnapshotVolume{VolumeID: v.ID, EstimatedBytes: v.SizeBytes + qcow2Overhead(v.SizeBytes)}
	parent := latestWith(snaps, v.ID)
	switch {
	case full:
		sv.FullReason = "full capture requested"
	case !insp.Running:
		sv.FullReason = "the VM is not running: its image is copied whole"
	case v.Format != command.FormatQCOW2:
		sv.FullReason = fmt.Sprintf("%s volume: QEMU keeps no persistent dirty bitmap for it", v.Format)
	case parent == nil:
		sv.FullReason = "first snapshot of the volume"
	case !parent.verifiedOn(node):
		sv.FullReason = fmt.Sprintf("the previous snapshot %s has no verified replica on this node", parent.ID)
	default:
		var bm *Bitmap
		for i, b := range insp.Bitmaps[v.ID] {
			if b.SnapshotID == parent.ID {
				bm = &insp.Bitmaps[v.ID][i]
			}
		}
		switch {
		case bm == nil:
			sv.FullReason = fmt.Sprintf("dirty bitmap %s of the previous snapshot is missing (QEMU restarted without a clean shutdown, or the VM was restored)", BitmapName(parent.ID))
		case !bm.Usable:
			sv.FullReason = fmt.Sprintf("dirty bitmap %s of the previous snapshot is inconsistent or busy", BitmapName(parent.ID))
		default:
			sv.ParentID = parent.ID
			sv.EstimatedBytes = min(bm.DirtyBytes, v.SizeBytes) + qcow2Overhead(v.SizeBytes)
		}
	}
	return sv
}

// latestWith returns the newest partial or complete snapshot holding the
// volume, or nil.
func latestWith(snaps []Record, volumeID string) *Record {
	var best *Record
	for i := range snaps {
		r := &snaps[i]
		if r.State != StatePartial && r.State != StateComplete {
			continue
		}
		if !slices.ContainsFunc(r.Volumes, func(v RecordVolume) bool { return v.VolumeID == volumeID }) {
			continue
		}
		if best == nil || r.CreatedIndex > best.CreatedIndex {
			best = r
		}
	}
	return best
}
