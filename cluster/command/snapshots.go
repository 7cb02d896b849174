package command

import (
	"sort"
	"time"
)

// Consistency is the quiesce level of a snapshot.
type Consistency string

// The consistency levels, strongest first.
const (
	// ConsistencyApplication means the guest's file systems were frozen
	// through the QEMU guest agent for the capture.
	ConsistencyApplication Consistency = "application"
	// ConsistencyCrash means no quiesce: the image a power cut would leave.
	ConsistencyCrash Consistency = "crash"
)

// Valid reports whether c is a known level.
func (c Consistency) Valid() bool { return c.Rank() > 0 }

// Rank orders levels: application 2, crash 1, anything else 0.
func (c Consistency) Rank() int {
	switch c {
	case ConsistencyApplication:
		return 2
	case ConsistencyCrash:
		return 1
	}
	return 0
}

// SnapshotVolume is one volume selected for a snapshot.
type SnapshotVolume struct {
	// VolumeID is the selected volume.
	VolumeID string `json:"volume_id"`
	// ParentID is the snapshot this one is incremental to for this volume
	// (through the volume's persistent dirty bitmap); empty for a full copy.
	ParentID string `json:"parent_id,omitempty"`
	// FullReason says why the volume is captured in full (the first
	// snapshot, a lost or invalid dirty bitmap, a raw volume); empty with a
	// parent.
	FullReason string `json:"full_reason,omitempty"`
	// EstimatedBytes is the space the snapshot data of this volume is
	// expected to take; it is reserved in the volume's container on every
	// data node until the capture reports the real size.
	EstimatedBytes int64 `json:"estimated_bytes"`
}

// SnapshotCreated starts a snapshot in state creating. The leader proposes
// it after checking what it can; the state machine checks again (snapshots
// enabled, VM known, boot volume selected, room in every selected volume's
// container on every data node, term not fenced).
type SnapshotCreated struct {
	// ID identifies the snapshot.
	ID string `json:"id"`
	// VMID is the VM the snapshot is of.
	VMID string `json:"vm_id"`
	// Name is the snapshot's name; it defaults to the VM's name and need
	// not be unique.
	Name string `json:"name"`
	// Description is optional free text.
	Description string `json:"description,omitempty"`
	// Creator names who asked for the snapshot (user or schedule).
	Creator string `json:"creator"`
	// CreatedAt is when the leader accepted the request.
	CreatedAt time.Time `json:"created_at"`
	// Volumes are the selected volumes; they include the boot volume.
	Volumes []SnapshotVolume `json:"volumes"`
	// Desired is the consistency to try first.
	Desired Consistency `json:"desired"`
	// Required is the lowest acceptable consistency.
	Required Consistency `json:"required"`
	// Coordinator is the node that captures and drives the snapshot (the
	// VM's host).
	Coordinator string `json:"coordinator"`
	// Term is the Raft term of the leader that started the snapshot; it
	// fences the snapshot against deposed coordinators.
	Term uint64 `json:"term"`
}

// Type implements Command.
func (SnapshotCreated) Type() Type { return TypeSnapshotCreated }

// Validate implements Command.
func (c SnapshotCreated) Validate() error {
	if err := checkID("id", c.ID); err != nil {
		return err
	}
	if err := checkID("vm_id", c.VMID); err != nil {
		return err
	}
	if err := checkName("name", c.Name); err != nil {
		return err
	}
	if err := checkText("description", c.Description, MaxDescriptionLen); err != nil {
		return err
	}
	if err := checkName("creator", c.Creator); err != nil {
		return err
	}
	if err := checkTime("created_at", c.CreatedAt); err != nil {
		return err
	}
	if len(c.Volumes) == 0 {
		return invalid("volumes", "select at least the boot volume")
	}
	if len(c.Volumes) > MaxVolumes {
		return invalid("volumes", "%d volumes, at most %d", len(c.Volumes), MaxVolumes)
	}
	seen := map[string]bool{}
	for i, v := range c.Volumes {
		if err := checkID(idx("volumes", i, "volume_id"), v.VolumeID); err != nil {
			return err
		}
		if seen[v.VolumeID] {
			return invalid(idx("volumes", i, "volume_id"), "%q selected twice", v.VolumeID)
		}
		seen[v.VolumeID] = true
		if err := checkOptionalID(idx("volumes", i, "parent_id"), v.ParentID); err != nil {
			return err
		}
		if v.ParentID == c.ID {
			return invalid(idx("volumes", i, "parent_id"), "a snapshot cannot be its own parent")
		}
		if v.ParentID != "" && v.FullReason != "" {
			return invalid(idx("volumes", i, "full_reason"), "an incremental capture has no full reason")
		}
		if err := checkText(idx("volumes", i, "full_reason"), v.FullReason, MaxDescriptionLen); err != nil {
			return err
		}
		if err := checkBytes(idx("volumes", i, "estimated_bytes"), v.EstimatedBytes, 0); err != nil {
			return err
		}
	}
	if !c.Desired.Valid() {
		return invalid("desired", "%q is not application or crash", c.Desired)
	}
	if !c.Required.Valid() {
		return invalid("required", "%q is not application or crash", c.Required)
	}
	if c.Required.Rank() > c.Desired.Rank() {
		return invalid("required", "%s is stronger than desired %s", c.Required, c.Desired)
	}
	if err := checkID("coordinator", c.Coordinator); err != nil {
		return err
	}
	return checkTerm("term", c.Term)
}

// VolumeData describes the stored snapshot data of one volume on one node.
type VolumeData struct {
	// VolumeID is the volume.
	VolumeID string `json:"volume_id"`
	// SizeBytes is the volume's virtual size at capture.
	SizeBytes int64 `json:"size_bytes"`
	// StoredBytes is the space the snapshot data takes in the container.
	StoredBytes int64 `json:"stored_bytes"`
	// SHA256 is the hex SHA-256 of the snapshot data.
	SHA256 string `json:"sha256"`
}

// Configuration kinds of a captured VM.
const (
	// ConfigLibvirtXML is a libvirt domain's XML description.
	ConfigLibvirtXML = "libvirt-domain-xml"
	// ConfigQEMULaunch is a bare QEMU VM's launch spec (binary and
	// arguments, as JSON).
	ConfigQEMULaunch = "qemu-launch-spec"
	// MaxConfigLen is the largest captured configuration, in bytes.
	MaxConfigLen = 1 << 20
)

// FileData describes a small file stored with a snapshot on a node.
type FileData struct {
	// SizeBytes is the file's length.
	SizeBytes int64 `json:"size_bytes"`
	// SHA256 is the hex SHA-256 of its bytes.
	SHA256 string `json:"sha256"`
}

func (f *FileData) validate(field string) error {
	if f == nil {
		return nil
	}
	if err := checkBytes(field+".size_bytes", f.SizeBytes, 1); err != nil {
		return err
	}
	return checkSHA256(field+".sha256", f.SHA256)
}

// CapturedConfig is the VM's own configuration as the capture found it.
type CapturedConfig struct {
	// Kind is ConfigLibvirtXML or ConfigQEMULaunch.
	Kind string `json:"kind"`
	// Text is the domain XML or the launch spec's JSON.
	Text string `json:"text"`
	// UEFIVars describes the copy of the VM's UEFI variable store (OVMF
	// VARS), stored and replicated beside the images; nil for a BIOS VM.
	UEFIVars *FileData `json:"uefi_vars,omitempty"`
}

func (c *CapturedConfig) validate() error {
	if c == nil {
		return nil
	}
	if c.Kind != ConfigLibvirtXML && c.Kind != ConfigQEMULaunch {
		return invalid("config.kind", "%q is not %s or %s", c.Kind, ConfigLibvirtXML, ConfigQEMULaunch)
	}
	if c.Text == "" || len(c.Text) > MaxConfigLen {
		return invalid("config.text", "%d bytes, want 1 to %d", len(c.Text), MaxConfigLen)
	}
	return c.UEFIVars.validate("config.uefi_vars")
}

// MergedImage reports that reclaiming a snapshot's image of a volume
// merged it into a child snapshot's image on the reclaiming node, which
// rewrote the child's file (the guest view is unchanged).
type MergedImage struct {
	// SnapshotID is the child snapshot; VolumeID the volume.
	SnapshotID string `json:"snapshot_id"`
	VolumeID   string `json:"volume_id"`
	// StoredBytes and SHA256 describe the child's rewritten file.
	StoredBytes int64  `json:"stored_bytes"`
	SHA256      string `json:"sha256"`
}

func validateVolumeData(vols []VolumeData) error {
	if len(vols) == 0 {
		return invalid("volumes", "required")
	}
	if len(vols) > MaxVolumes {
		return invalid("volumes", "%d volumes, at most %d", len(vols), MaxVolumes)
	}
	seen := map[string]bool{}
	for i, v := range vols {
		if err := checkID(idx("volumes", i, "volume_id"), v.VolumeID); err != nil {
			return err
		}
		if seen[v.VolumeID] {
			return invalid(idx("volumes", i, "volume_id"), "%q appears twice", v.VolumeID)
		}
		seen[v.VolumeID] = true
		if err := checkBytes(idx("volumes", i, "size_bytes"), v.SizeBytes, 1); err != nil {
			return err
		}
		if err := checkBytes(idx("volumes", i, "stored_bytes"), v.StoredBytes, 0); err != nil {
			return err
		}
		if err := checkSHA256(idx("volumes", i, "sha256"), v.SHA256); err != nil {
			return err
		}
	}
	return nil
}

// SnapshotCaptured reports that the coordinator captured the snapshot and
// wrote and verified its own replica: creating becomes partial.
type SnapshotCaptured struct {
	// ID is the snapshot.
	ID string `json:"id"`
	// Term is the snapshot's term as the coordinator knows it.
	Term uint64 `json:"term"`
	// Node is the capturing node; it must be the snapshot's coordinator.
	Node string `json:"node"`
	// Achieved is the consistency reached, between required and desired.
	Achieved Consistency `json:"achieved"`
	// StepDownReason says why Achieved is below Desired; required then.
	StepDownReason string `json:"step_down_reason,omitempty"`
	// Volumes describe the captured data, one entry per selected volume.
	Volumes []VolumeData `json:"volumes"`
	// Verified must be true: the capture is proposed only once the node's
	// replica is written and its checksums verified.
	Verified bool `json:"verified"`
	// CapturedAt is when the capture was taken (the freeze window).
	CapturedAt time.Time `json:"captured_at"`
	// Config is the VM's own configuration; nil when it could not be read
	// (the snapshot then holds only the volumes and the VM record).
	Config *CapturedConfig `json:"config,omitempty"`
}

// Type implements Command.
func (SnapshotCaptured) Type() Type { return TypeSnapshotCaptured }

// Validate implements Command.
func (c SnapshotCaptured) Validate() error {
	if err := checkID("id", c.ID); err != nil {
		return err
	}
	if err := checkTerm("term", c.Term); err != nil {
		return err
	}
	if err := checkID("node", c.Node); err != nil {
		return err
	}
	if !c.Achieved.Valid() {
		return invalid("achieved", "%q is not application or crash", c.Achieved)
	}
	if err := checkText("step_down_reason", c.StepDownReason, MaxDescriptionLen); err != nil {
		return err
	}
	if !c.Verified {
		return invalid("verified", "a capture is proposed only with a verified replica")
	}
	if err := checkTime("captured_at", c.CapturedAt); err != nil {
		return err
	}
	if err := c.Config.validate(); err != nil {
		return err
	}
	return validateVolumeData(c.Volumes)
}

// ReplicaWritten reports a node's replica of a snapshot. When every data
// node holds a verified replica whose checksums equal the capture's, the
// snapshot becomes complete.
type ReplicaWritten struct {
	// ID is the snapshot.
	ID string `json:"id"`
	// Term is the snapshot's term as the proposer knows it.
	Term uint64 `json:"term"`
	// Node holds the replica.
	Node string `json:"node"`
	// Volumes describe the written data, one entry per selected volume.
	Volumes []VolumeData `json:"volumes"`
	// Verified says the node re-read the data and checked its SHA-256.
	Verified bool `json:"verified"`
	// UEFIVars describes the node's copy of the UEFI variables, when the
	// capture has them; it must match the capture's.
	UEFIVars *FileData `json:"uefi_vars,omitempty"`
	// At is when the replica was written.
	At time.Time `json:"at"`
}

// Type implements Command.
func (ReplicaWritten) Type() Type { return TypeReplicaWritten }

// Validate implements Command.
func (c ReplicaWritten) Validate() error {
	if err := checkID("id", c.ID); err != nil {
		return err
	}
	if err := checkTerm("term", c.Term); err != nil {
		return err
	}
	if err := checkID("node", c.Node); err != nil {
		return err
	}
	if err := checkTime("at", c.At); err != nil {
		return err
	}
	if err := c.UEFIVars.validate("uefi_vars"); err != nil {
		return err
	}
	return validateVolumeData(c.Volumes)
}

// SnapshotFailed abandons a snapshot that has no verified replica on a live
// data node: creating (or such a partial) becomes discarded, and every node
// reclaims its space.
type SnapshotFailed struct {
	// ID is the snapshot.
	ID string `json:"id"`
	// Term is the snapshot's term as the proposer knows it.
	Term uint64 `json:"term"`
	// Node is the node reporting the failure.
	Node string `json:"node"`
	// Reason says what went wrong.
	Reason string `json:"reason"`
	// At is when the failure happened.
	At time.Time `json:"at"`
}

// Type implements Command.
func (SnapshotFailed) Type() Type { return TypeSnapshotFailed }

// Validate implements Command.
func (c SnapshotFailed) Validate() error {
	if err := checkID("id", c.ID); err != nil {
		return err
	}
	if err := checkTerm("term", c.Term); err != nil {
		return err
	}
	if err := checkID("node", c.Node); err != nil {
		return err
	}
	if c.Reason == "" {
		return invalid("reason", "required")
	}
	if err := checkText("reason", c.Reason, MaxDescriptionLen); err != nil {
		return err
	}
	return checkTime("at", c.At)
}

// DiscardIncomplete is proposed by a new leader (and after the loss of a
// node). It raises the fencing term to Term and discards every half-written
// snapshot: one in state creating that was started before Term or is
// coordinated by a lost node, and one in state partial with no verified
// replica on a live data node. A live data node is a member data node not
// listed in LostNodes. Partial snapshots with a surviving verified replica
// stay partial.
type DiscardIncomplete struct {
	// Term is the proposing leader's term; snapshots started in earlier
	// terms are fenced.
	Term uint64 `json:"term"`
	// LostNodes are data nodes the leader declares lost: their replicas do
	// not count as surviving and the snapshots they coordinate are abandoned.
	LostNodes []string `json:"lost_nodes,omitempty"`
	// Reason says why (new leader, node lost).
	Reason string `json:"reason,omitempty"`
	// At is when the leader proposed it.
	At time.Time `json:"at"`
}

// Type implements Command.
func (DiscardIncomplete) Type() Type { return TypeDiscardIncomplete }

// Validate implements Command.
func (c DiscardIncomplete) Validate() error {
	if err := checkTerm("term", c.Term); err != nil {
		return err
	}
	if len(c.LostNodes) > MaxLostNodes {
		return invalid("lost_nodes", "%d nodes, at most %d", len(c.LostNodes), MaxLostNodes)
	}
	if !sort.StringsAreSorted(c.LostNodes) {
		return invalid("lost_nodes", "must be sorted")
	}
	for i, n := range c.LostNodes {
		if err := checkID("lost_nodes", n); err != nil {
			return err
		}
		if i > 0 && c.LostNodes[i-1] == n {
			return invalid("lost_nodes", "%q appears twice", n)
		}
	}
	if err := checkText("reason", c.Reason, MaxDescriptionLen); err != nil {
		return err
	}
	return checkTime("at", c.At)
}

// SnapshotDeleteRequested starts deleting a complete snapshot: complete
// becomes deleting, and the snapshot is gone once every node has reclaimed
// its space. A snapshot an unfinished export job reads cannot be deleted.
type SnapshotDeleteRequested struct {
	// ID is the snapshot.
	ID string `json:"id"`
	// Term is the proposing leader's term.
	Term uint64 `json:"term"`
	// Requester names who asked (user or retention policy).
	Requester string `json:"requester"`
	// At is when the request was accepted.
	At time.Time `json:"at"`
}

// Type implements Command.
func (SnapshotDeleteRequested) Type() Type { return TypeSnapshotDeleteRequested }

// Validate implements Command.
func (c SnapshotDeleteRequested) Validate() error {
	if err := checkID("id", c.ID); err != nil {
		return err
	}
	if err := checkTerm("term", c.Term); err != nil {
		return err
	}
	if err := checkName("requester", c.Requester); err != nil {
		return err
	}
	return checkTime("at", c.At)
}

// ReplicaReclaimed reports that a node freed a deleting or discarded
// snapshot's data (merging it into its child where a chain continues). The
// snapshot is gone when every node that held space for it has reclaimed.
type ReplicaReclaimed struct {
	// ID is the snapshot.
	ID string `json:"id"`
	// Term is the snapshot's term as the proposer knows it.
	Term uint64 `json:"term"`
	// Node is the node that reclaimed.
	Node string `json:"node"`
	// Merged lists the children whose images absorbed the reclaimed
	// snapshot's data on Node (deleting the middle of a chain).
	Merged []MergedImage `json:"merged,omitempty"`
	// At is when the space was freed.
	At time.Time `json:"at"`
}

// Type implements Command.
func (ReplicaReclaimed) Type() Type { return TypeReplicaReclaimed }

// Validate implements Command.
func (c ReplicaReclaimed) Validate() error {
	if err := checkID("id", c.ID); err != nil {
		return err
	}
	if err := checkTerm("term", c.Term); err != nil {
		return err
	}
	if err := checkID("node", c.Node); err != nil {
		return err
	}
	if len(c.Merged) > MaxVolumes {
		return invalid("merged", "%d entries, at most %d", len(c.Merged), MaxVolumes)
	}
	for i, m := range c.Merged {
		if err := checkID(idx("merged", i, "snapshot_id"), m.SnapshotID); err != nil {
			return err
		}
		if err := checkID(idx("merged", i, "volume_id"), m.VolumeID); err != nil {
			return err
		}
		if err := checkBytes(idx("merged", i, "stored_bytes"), m.StoredBytes, 0); err != nil {
			return err
		}
		if err := checkSHA256(idx("merged", i, "sha256"), m.SHA256); err != nil {
			return err
		}
	}
	return checkTime("at", c.At)
}

func init() {
	register[SnapshotCreated](TypeSnapshotCreated, "snapshot-created")
	register[SnapshotCaptured](TypeSnapshotCaptured, "snapshot-captured")
	register[ReplicaWritten](TypeReplicaWritten, "replica-written")
	register[SnapshotFailed](TypeSnapshotFailed, "snapshot-failed")
	register[DiscardIncomplete](TypeDiscardIncomplete, "discard-incomplete")
	register[SnapshotDeleteRequested](TypeSnapshotDeleteRequested, "snapshot-delete-requested")
	register[ReplicaReclaimed](TypeReplicaReclaimed, "replica-reclaimed")
}
