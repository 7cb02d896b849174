package state

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/twinsnap/twinsnap/cluster/command"
)

// SnapshotState is where a snapshot is in its life (DESIGN.md):
//
//	creating ──capture verified on host──▶ partial ──peer verified──▶ complete
//	creating, partial ──(no verified replica survives)──▶ discarded
//	complete ──delete──▶ deleting ──every node reclaimed──▶ (gone)
//
// A discarded snapshot stays until every node has reclaimed its space, then
// it is gone too.
type SnapshotState string

// The snapshot states.
const (
	// Creating: started, not yet captured and verified on its host.
	Creating SnapshotState = "creating"
	// Partial ("broken"): one verified replica.
	Partial SnapshotState = "partial"
	// Complete ("normal"): a verified replica on both data nodes.
	Complete SnapshotState = "complete"
	// Discarded: abandoned with no surviving verified replica; its space is
	// being reclaimed.
	Discarded SnapshotState = "discarded"
	// Deleting: being deleted; its space is being reclaimed.
	Deleting SnapshotState = "deleting"
)

// SnapshotVolume is one selected volume of a snapshot.
type SnapshotVolume struct {
	// VolumeID is the volume.
	VolumeID string `json:"volume_id"`
	// ParentID is the snapshot this one is incremental to for this volume;
	// when that parent is gone it is merged and ParentID moves to its parent.
	ParentID string `json:"parent_id,omitempty"`
	// FullReason says why the volume was captured in full (the first
	// snapshot, a lost or invalid dirty bitmap, a raw volume); empty for an
	// incremental capture.
	FullReason string `json:"full_reason,omitempty"`
	// EstimatedBytes is the size estimate space was reserved for.
	EstimatedBytes int64 `json:"estimated_bytes"`
	// SizeBytes is the volume's virtual size at capture.
	SizeBytes int64 `json:"size_bytes,omitempty"`
	// StoredBytes is the space the captured data takes.
	StoredBytes int64 `json:"stored_bytes,omitempty"`
	// SHA256 is the captured data's checksum, which every replica must match.
	SHA256 string `json:"sha256,omitempty"`
	// ChargedBytes is what the snapshot charges, for this volume, to the
	// container on each node in Snapshot.Charged.
	ChargedBytes int64 `json:"charged_bytes"`
}

// Replica is one node's copy of a snapshot.
type Replica struct {
	// Node holds the replica.
	Node string `json:"node"`
	// Verified says the node re-read and checked the data.
	Verified bool `json:"verified"`
	// Volumes describe the data written.
	Volumes []command.VolumeData `json:"volumes"`
	// UEFIVars describes the copy of the VM's UEFI variables, if it has any.
	UEFIVars *command.FileData `json:"uefi_vars,omitempty"`
	// At is when it was written.
	At time.Time `json:"at"`
	// Index is the log index that recorded it.
	Index uint64 `json:"index"`
}

// Discard records why a snapshot was discarded.
type Discard struct {
	// By is the command that discarded it: snapshot-failed or discard-incomplete.
	By string `json:"by"`
	// Fenced is true when a discard-incomplete (a new term or a lost node)
	// discarded it; changes to it are then refused with ErrFenced.
	Fenced bool `json:"fenced"`
	// Node reported the failure (snapshot-failed only).
	Node string `json:"node,omitempty"`
	// Reason says why.
	Reason string `json:"reason,omitempty"`
	// Term is the term of the discarding command.
	Term uint64 `json:"term"`
	// At is when it happened.
	At time.Time `json:"at"`
}

// Snapshot is a point-in-time image of a VM's selected volumes and its
// configuration.
type Snapshot struct {
	// ID identifies the snapshot.
	ID string `json:"id"`
	// VMID is the VM it is of.
	VMID string `json:"vm_id"`
	// Name names the snapshot for people; it defaults to the VM's name and
	// need not be unique.
	Name string `json:"name"`
	// Description is optional free text.
	Description string `json:"description,omitempty"`
	// Creator names who asked for it.
	Creator string `json:"creator"`
	// CreatedAt is when the leader accepted the request.
	CreatedAt time.Time `json:"created_at"`
	// State is where the snapshot is in its life.
	State SnapshotState `json:"state"`
	// Desired is the consistency to try first.
	Desired command.Consistency `json:"desired"`
	// Required is the lowest acceptable consistency.
	Required command.Consistency `json:"required"`
	// Achieved is what the capture reached; empty until partial.
	Achieved command.Consistency `json:"achieved,omitempty"`
	// StepDownReason says why Achieved is below Desired.
	StepDownReason string `json:"step_down_reason,omitempty"`
	// Coordinator is the node that captures and drives the snapshot.
	Coordinator string `json:"coordinator"`
	// Term is the term the snapshot was started in: its fencing term.
	Term uint64 `json:"term"`
	// Volumes are the selected volumes.
	Volumes []SnapshotVolume `json:"volumes"`
	// Replicas are the nodes' copies, sorted by node.
	Replicas []Replica `json:"replicas,omitempty"`
	// Config is the VM's description when the snapshot was started.
	Config command.VM `json:"config"`
	// Captured is the VM's own configuration as the capture found it
	// (libvirt domain XML or QEMU launch spec, UEFI variables); set on
	// reaching partial.
	Captured *command.CapturedConfig `json:"captured,omitempty"`
	// CapturedAt is when the capture was taken; set on reaching partial.
	CapturedAt time.Time `json:"captured_at,omitzero"`
	// CompletedAt is when the second replica was written; set on complete.
	CompletedAt time.Time `json:"completed_at,omitzero"`
	// Discard is set in state discarded.
	Discard *Discard `json:"discard,omitempty"`
	// DeleteRequester names who asked for the deletion (state deleting).
	DeleteRequester string `json:"delete_requester,omitempty"`
	// DeleteRequestedAt is when the deletion was accepted (state deleting).
	DeleteRequestedAt time.Time `json:"delete_requested_at,omitzero"`
	// Charged lists, sorted, the nodes whose containers the snapshot charges.
	Charged []string `json:"charged,omitempty"`
	// Reclaim lists, sorted, the nodes yet to reclaim the snapshot's space
	// (states deleting and discarded).
	Reclaim []string `json:"reclaim,omitempty"`
	// CreatedIndex is the log index of snapshot-created.
	CreatedIndex uint64 `json:"created_index"`
	// UpdatedIndex is the log index of the last change.
	UpdatedIndex uint64 `json:"updated_index"`
}

func (sn *Snapshot) clone() Snapshot {
	n := *sn
	n.Volumes = slices.Clone(sn.Volumes)
	n.Replicas = slices.Clone(sn.Replicas)
	for i := range n.Replicas {
		n.Replicas[i].Volumes = slices.Clone(n.Replicas[i].Volumes)
		if v := n.Replicas[i].UEFIVars; v != nil {
			c := *v
			n.Replicas[i].UEFIVars = &c
		}
	}
	if sn.Captured != nil {
		c := *sn.Captured
		if c.UEFIVars != nil {
			v := *c.UEFIVars
			c.UEFIVars = &v
		}
		n.Captured = &c
	}
	n.Config = (&VM{VM: sn.Config}).clone().VM
	if sn.Discard != nil {
		dc := *sn.Discard
		n.Discard = &dc
	}
	n.Charged = slices.Clone(sn.Charged)
	n.Reclaim = slices.Clone(sn.Reclaim)
	return n
}

// Replica returns the replica on node, if any.
func (sn *Snapshot) Replica(node string) (Replica, bool) {
	for _, r := range sn.Replicas {
		if r.Node == node {
			return r, true
		}
	}
	return Replica{}, false
}

// volume returns the selected volume with id, or nil.
func (sn *Snapshot) volume(id string) *SnapshotVolume {
	for i := range sn.Volumes {
		if sn.Volumes[i].VolumeID == id {
			return &sn.Volumes[i]
		}
	}
	return nil
}

// setReplica adds or replaces the replica of r.Node, keeping node order.
func (sn *Snapshot) setReplica(r Replica) {
	i, found := slices.BinarySearchFunc(sn.Replicas, r.Node, func(x Replica, node string) int { return cmp.Compare(x.Node, node) })
	if found {
		sn.Replicas[i] = r
		return
	}
	sn.Replicas = slices.Insert(sn.Replicas, i, r)
}

// survivingReplicas returns, sorted, the nodes holding a verified replica
// of sn that are member data nodes and not in lost.
func (d *data) survivingReplicas(sn *Snapshot, lost []string) []string {
	var out []string
	for _, r := range sn.Replicas {
		if r.Verified && d.isDataNode(r.Node) && !slices.Contains(lost, r.Node) {
			out = append(out, r.Node)
		}
	}
	return out
}

// indexSnapshot adds sn to the derived indexes.
func (d *data) indexSnapshot(sn *Snapshot) {
	ids := d.snapsByVM[sn.VMID]
	if ids == nil {
		ids = map[string]struct{}{}
		d.snapsByVM[sn.VMID] = ids
	}
	ids[sn.ID] = struct{}{}
	if sn.State != Discarded {
		names := d.snapNames[sn.VMID]
		if names == nil {
			names = map[string]string{}
			d.snapNames[sn.VMID] = names
		}
		names[sn.Name] = sn.ID
	}
}

// releaseName frees sn's name for reuse by another snapshot of its VM.
func (d *data) releaseName(sn *Snapshot) {
	if names := d.snapNames[sn.VMID]; names[sn.Name] == sn.ID {
		delete(names, sn.Name)
		if len(names) == 0 {
			delete(d.snapNames, sn.VMID)
		}
	}
}

// unindexSnapshot removes sn from the derived indexes.
func (d *data) unindexSnapshot(sn *Snapshot) {
	d.releaseName(sn)
	if ids := d.snapsByVM[sn.VMID]; ids != nil {
		delete(ids, sn.ID)
		if len(ids) == 0 {
			delete(d.snapsByVM, sn.VMID)
		}
	}
}

// Snapshot returns the snapshot with id, or an error wrapping ErrNotFound.
func (s *State) Snapshot(id string) (Snapshot, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	sn := s.d.snapshots.get(id)
	if sn == nil {
		return Snapshot{}, fmt.Errorf("snapshot %q: %w", id, ErrNotFound)
	}
	return sn.clone(), nil
}

// SnapshotFilter selects snapshots; empty fields match everything.
type SnapshotFilter struct {
	// VMID keeps one VM's snapshots.
	VMID string
	// States keeps snapshots in any of these states.
	States []SnapshotState
}

// Snapshots returns the snapshots f selects, oldest first (by the log index
// of their creation).
func (s *State) Snapshots(f SnapshotFilter) []Snapshot {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var cand []*Snapshot
	if f.VMID != "" {
		for _, id := range sortedSet(s.d.snapsByVM[f.VMID]) {
			cand = append(cand, s.d.snapshots.get(id))
		}
	} else {
		cand = s.d.snapshots.sorted()
	}
	var out []Snapshot
	for _, sn := range cand {
		if len(f.States) == 0 || slices.Contains(f.States, sn.State) {
			out = append(out, sn.clone())
		}
	}
	slices.SortStableFunc(out, func(a, b Snapshot) int { return cmp.Compare(a.CreatedIndex, b.CreatedIndex) })
	return out
}
