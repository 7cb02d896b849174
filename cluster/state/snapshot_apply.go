package state

import (
	"fmt"
	"slices"

	"github.com/twinsnap/twinsnap/cluster/command"
)

func init() {
	on(command.TypeSnapshotCreated, applySnapshotCreated)
	on(command.TypeSnapshotCaptured, applySnapshotCaptured)
	on(command.TypeReplicaWritten, applyReplicaWritten)
	on(command.TypeSnapshotFailed, applySnapshotFailed)
	on(command.TypeDiscardIncomplete, applyDiscardIncomplete)
	on(command.TypeSnapshotDeleteRequested, applySnapshotDeleteRequested)
	on(command.TypeReplicaReclaimed, applyReplicaReclaimed)
}

// snapshotForChange loads snapshot id for a state change proposed with
// term and applies the fencing rules:
//
//   - a term later than the log entry's is impossible (ErrInvalid);
//   - a term older than the snapshot's fencing term comes from a deposed
//     coordinator (ErrFenced);
//   - a snapshot started before the fencing term that is still creating
//     is fenced (discard-incomplete discards those; ErrFenced);
//   - a discarded snapshot takes no changes: ErrFenced when fencing
//     discarded it, ErrInvalidTransition when it failed.
func (c *applyCtx) snapshotForChange(id string, term uint64) (*Snapshot, error) {
	if err := c.checkTerm(term); err != nil {
		return nil, err
	}
	sn := c.d.snapshots.get(id)
	if sn == nil {
		return nil, fmt.Errorf("snapshot %q: %w", id, ErrNotFound)
	}
	if term < sn.Term {
		return nil, fmt.Errorf("%w: snapshot %q has fencing term %d, the change carries term %d", ErrFenced, id, sn.Term, term)
	}
	switch {
	case sn.State == Discarded && sn.Discard != nil && sn.Discard.Fenced:
		return nil, fmt.Errorf("%w: snapshot %q was discarded by discard-incomplete in term %d", ErrFenced, id, sn.Discard.Term)
	case sn.State == Discarded:
		return nil, fmt.Errorf("%w: snapshot %q is discarded", ErrInvalidTransition, id)
	case sn.State == Creating && sn.Term < c.d.fenceTerm:
		return nil, fmt.Errorf("%w: snapshot %q was started in term %d, before fencing term %d", ErrFenced, id, sn.Term, c.d.fenceTerm)
	}
	return sn, nil
}

func applySnapshotCreated(c *applyCtx, cmd *command.SnapshotCreated) error {
	d := c.d
	if !d.settings.SnapshotsEnabled {
		return ErrSnapshotsDisabled
	}
	if err := c.checkTerm(cmd.Term); err != nil {
		return err
	}
	if cmd.Term < d.fenceTerm {
		return fmt.Errorf("%w: snapshot %q started in term %d, before fencing term %d", ErrFenced, cmd.ID, cmd.Term, d.fenceTerm)
	}
	if d.snapshots.get(cmd.ID) != nil {
		return fmt.Errorf("snapshot %q: %w", cmd.ID, ErrExists)
	}
	vm := d.vms.get(cmd.VMID)
	if vm == nil {
		return fmt.Errorf("VM %q: %w", cmd.VMID, ErrNotFound)
	}
	if _, err := c.dataNode(cmd.Coordinator); err != nil {
		return fmt.Errorf("coordinator: %w", err)
	}
	if cmd.Coordinator != vm.HostNode {
		return fmt.Errorf("%w: coordinator %q is not VM %q's host %q", ErrInvalid, cmd.Coordinator, vm.ID, vm.HostNode)
	}
	for _, id := range sortedSet(d.snapsByVM[vm.ID]) {
		if d.snapshots.get(id).State == Creating {
			return fmt.Errorf("%w: VM %q is being captured by snapshot %q", ErrInUse, vm.ID, id)
		}
	}
	boot := false
	for _, v := range cmd.Volumes {
		vol := vm.volume(v.VolumeID)
		if vol == nil {
			return fmt.Errorf("%w: volume %q is not a volume of VM %q", ErrInvalid, v.VolumeID, vm.ID)
		}
		boot = boot || vol.Boot
		if v.ParentID == "" {
			continue
		}
		p := d.snapshots.get(v.ParentID)
		if p == nil {
			return fmt.Errorf("parent snapshot %q: %w", v.ParentID, ErrNotFound)
		}
		if p.VMID != vm.ID || p.volume(v.VolumeID) == nil {
			return fmt.Errorf("%w: parent snapshot %q holds no volume %q of VM %q", ErrInvalid, p.ID, v.VolumeID, vm.ID)
		}
		if p.State != Partial && p.State != Complete {
			return fmt.Errorf("%w: parent snapshot %q is %s", ErrInvalidTransition, p.ID, p.State)
		}
	}
	if !boot {
		return fmt.Errorf("%w: the boot volume of VM %q is not selected", ErrInvalid, vm.ID)
	}
	nodes := d.dataNodes()
	for _, v := range cmd.Volumes {
		for _, node := range nodes {
			ct := d.containers.get(containerKey(v.VolumeID, node))
			if ct == nil {
				return fmt.Errorf("container of volume %q on node %q: %w", v.VolumeID, node, ErrNotFound)
			}
			if free := ct.FreeBytes(); free < v.EstimatedBytes {
				return fmt.Errorf("%w: volume %q on node %q has %d bytes free, the snapshot needs %d",
					ErrNoSpace, v.VolumeID, node, max(free, 0), v.EstimatedBytes)
			}
		}
	}

	sn := &Snapshot{
		ID: cmd.ID, VMID: cmd.VMID, Name: cmd.Name, Description: cmd.Description,
		Creator: cmd.Creator, CreatedAt: cmd.CreatedAt.UTC(),
		State:   Creating,
		Desired: cmd.Desired, Required: cmd.Required,
		Coordinator: cmd.Coordinator, Term: cmd.Term,
		Config:       vm.clone().VM,
		Charged:      nodes,
		CreatedIndex: c.index, UpdatedIndex: c.index,
	}
	for _, v := range cmd.Volumes {
		sn.Volumes = append(sn.Volumes, SnapshotVolume{
			VolumeID: v.VolumeID, ParentID: v.ParentID, FullReason: v.FullReason,
			EstimatedBytes: v.EstimatedBytes, ChargedBytes: v.EstimatedBytes,
		})
		for _, node := range nodes {
			c.charge(v.VolumeID, node, v.EstimatedBytes)
		}
	}
	d.snapshots.put(sn.ID, sn)
	d.indexSnapshot(sn)
	return nil
}

// checkVolumeData checks that vols describe exactly sn's selected volumes.
func checkVolumeData(sn *Snapshot, vols []command.VolumeData) error {
	if len(vols) != len(sn.Volumes) {
		return fmt.Errorf("%w: %d volumes reported, snapshot %q has %d", ErrInvalid, len(vols), sn.ID, len(sn.Volumes))
	}
	for _, v := range vols {
		if sn.volume(v.VolumeID) == nil {
			return fmt.Errorf("%w: volume %q is not part of snapshot %q", ErrInvalid, v.VolumeID, sn.ID)
		}
	}
	return nil
}

func applySnapshotCaptured(c *applyCtx, cmd *command.SnapshotCaptured) error {
	d := c.d
	sn, err := c.snapshotForChange(cmd.ID, cmd.Term)
	if err != nil {
		return err
	}
	if sn.State != Creating {
		return fmt.Errorf("%w: snapshot %q is %s, not creating", ErrInvalidTransition, sn.ID, sn.State)
	}
	if cmd.Node != sn.Coordinator {
		return fmt.Errorf("%w: node %q is not the coordinator %q of snapshot %q", ErrFenced, cmd.Node, sn.Coordinator, sn.ID)
	}
	if _, err := c.dataNode(cmd.Node); err != nil {
		return err
	}
	if cmd.Achieved.Rank() < sn.Required.Rank() {
		return fmt.Errorf("%w: achieved %s consistency is below the required %s", ErrInvalid, cmd.Achieved, sn.Required)
	}
	if cmd.Achieved.Rank() > sn.Desired.Rank() {
		return fmt.Errorf("%w: achieved %s consistency is above the desired %s", ErrInvalid, cmd.Achieved, sn.Desired)
	}
	if cmd.Achieved != sn.Desired && cmd.StepDownReason == "" {
		return fmt.Errorf("%w: stepped down from %s to %s without a reason", ErrInvalid, sn.Desired, cmd.Achieved)
	}
	if err := checkVolumeData(sn, cmd.Volumes); err != nil {
		return err
	}

	if sn.Config.Driver == command.DriverLibvirt && cmd.Config != nil && cmd.Config.Kind != command.ConfigLibvirtXML {
		return fmt.Errorf("%w: a libvirt VM's configuration is its domain XML, not %q", ErrInvalid, cmd.Config.Kind)
	}
	n := sn.clone()
	n.State = Partial
	n.Achieved = cmd.Achieved
	if cmd.Config != nil {
		cfg := *cmd.Config
		if cfg.UEFIVars != nil {
			v := *cfg.UEFIVars
			cfg.UEFIVars = &v
		}
		n.Captured = &cfg
	}
	n.StepDownReason = cmd.StepDownReason
	n.CapturedAt = cmd.CapturedAt.UTC()
	n.UpdatedIndex = c.index
	for _, v := range cmd.Volumes {
		sv := n.volume(v.VolumeID)
		sv.SizeBytes, sv.StoredBytes, sv.SHA256 = v.SizeBytes, v.StoredBytes, v.SHA256
		for _, node := range n.Charged {
			c.charge(v.VolumeID, node, v.StoredBytes-sv.ChargedBytes)
		}
		sv.ChargedBytes = v.StoredBytes
	}
	n.setReplica(Replica{
		Node: cmd.Node, Verified: true, Volumes: slices.Clone(cmd.Volumes),
		UEFIVars: uefiVars(cmd.Config),
		At:       cmd.CapturedAt.UTC(), Index: c.index,
	})
	d.snapshots.put(n.ID, &n)
	return nil
}

func applyReplicaWritten(c *applyCtx, cmd *command.ReplicaWritten) error {
	d := c.d
	sn, err := c.snapshotForChange(cmd.ID, cmd.Term)
	if err != nil {
		return err
	}
	if sn.State != Partial {
		return fmt.Errorf("%w: snapshot %q is %s, not partial", ErrInvalidTransition, sn.ID, sn.State)
	}
	if _, err := c.dataNode(cmd.Node); err != nil {
		return err
	}
	if r, ok := sn.Replica(cmd.Node); ok && r.Verified {
		return fmt.Errorf("verified replica of snapshot %q on node %q: %w", sn.ID, cmd.Node, ErrExists)
	}
	if err := checkVolumeData(sn, cmd.Volumes); err != nil {
		return err
	}
	for _, v := range cmd.Volumes {
		want := sn.volume(v.VolumeID)
		if v.SHA256 != want.SHA256 || v.SizeBytes != want.SizeBytes || v.StoredBytes != want.StoredBytes {
			return fmt.Errorf("%w: volume %q of snapshot %q on node %q: sha256 %s, size %d, stored %d; captured %s, %d, %d",
				ErrChecksumMismatch, v.VolumeID, sn.ID, cmd.Node, v.SHA256, v.SizeBytes, v.StoredBytes,
				want.SHA256, want.SizeBytes, want.StoredBytes)
		}
	}

	if want := uefiVars(sn.Captured); (want == nil) != (cmd.UEFIVars == nil) || (want != nil && *want != *cmd.UEFIVars) {
		return fmt.Errorf("%w: UEFI variables of snapshot %q on node %q do not match the capture's", ErrChecksumMismatch, sn.ID, cmd.Node)
	}
	n := sn.clone()
	var vars *command.FileData
	if cmd.UEFIVars != nil {
		v := *cmd.UEFIVars
		vars = &v
	}
	n.setReplica(Replica{
		Node: cmd.Node, Verified: cmd.Verified, Volumes: slices.Clone(cmd.Volumes),
		UEFIVars: vars, At: cmd.At.UTC(), Index: c.index,
	})
	n.UpdatedIndex = c.index
	if len(d.survivingReplicas(&n, nil)) >= MaxDataNodes {
		n.State = Complete
		n.CompletedAt = cmd.At.UTC()
	}
	d.snapshots.put(n.ID, &n)
	return nil
}

func applySnapshotFailed(c *applyCtx, cmd *command.SnapshotFailed) error {
	sn, err := c.snapshotForChange(cmd.ID, cmd.Term)
	if err != nil {
		return err
	}
	switch sn.State {
	case Creating:
	case Partial:
		if alive := c.d.survivingReplicas(sn, nil); len(alive) > 0 {
			return fmt.Errorf("%w: snapshot %q has a verified replica on %q; it stays partial", ErrInvalidTransition, sn.ID, alive[0])
		}
	default:
		return fmt.Errorf("%w: snapshot %q is %s", ErrInvalidTransition, sn.ID, sn.State)
	}
	n := sn.clone()
	c.discard(&n, &Discard{By: command.TypeSnapshotFailed.String(), Node: cmd.Node, Reason: cmd.Reason, Term: cmd.Term, At: cmd.At.UTC()})
	return nil
}

// applyDiscardIncomplete raises the fencing term and discards every
// half-written snapshot (see command.DiscardIncomplete).
func applyDiscardIncomplete(c *applyCtx, cmd *command.DiscardIncomplete) error {
	d := c.d
	if err := c.checkTerm(cmd.Term); err != nil {
		return err
	}
	if cmd.Term < d.fenceTerm {
		return fmt.Errorf("%w: term %d is older than fencing term %d", ErrFenced, cmd.Term, d.fenceTerm)
	}
	d.fenceTerm = cmd.Term
	reason := cmd.Reason
	if reason == "" {
		reason = fmt.Sprintf("half-written after failover to term %d", cmd.Term)
	}
	for _, sn := range d.snapshots.sorted() {
		var drop bool
		switch sn.State {
		case Creating:
			drop = sn.Term < cmd.Term || slices.Contains(cmd.LostNodes, sn.Coordinator) || !d.isDataNode(sn.Coordinator)
		case Partial:
			drop = len(d.survivingReplicas(sn, cmd.LostNodes)) == 0
		}
		if !drop {
			continue
		}
		n := sn.clone()
		c.discard(&n, &Discard{By: command.TypeDiscardIncomplete.String(), Fenced: true, Reason: reason, Term: cmd.Term, At: cmd.At.UTC()})
		c.affected = append(c.affected, n.ID)
	}
	return nil
}

func applySnapshotDeleteRequested(c *applyCtx, cmd *command.SnapshotDeleteRequested) error {
	d := c.d
	sn, err := c.snapshotForChange(cmd.ID, cmd.Term)
	if err != nil {
		return err
	}
	if sn.State != Complete {
		return fmt.Errorf("%w: snapshot %q is %s; only a complete snapshot is deleted", ErrInvalidTransition, sn.ID, sn.State)
	}
	for _, j := range d.jobs.sorted() {
		if j.SnapshotID == sn.ID && !j.State.Final() {
			return fmt.Errorf("%w: snapshot %q is read by %s job %q", ErrInUse, sn.ID, j.State, j.ID)
		}
	}
	for _, id := range sortedSet(d.snapsByVM[sn.VMID]) {
		child := d.snapshots.get(id)
		if child.State != Creating && child.State != Partial {
			continue
		}
		// Deleting merges the snapshot into its children on every node;
		// a child must be whole on both nodes first, so that both merge
		// the same images.
		for _, v := range child.Volumes {
			if v.ParentID == sn.ID {
				return fmt.Errorf("%w: snapshot %q, built on snapshot %q, is still %s", ErrInUse, child.ID, sn.ID, child.State)
			}
		}
	}
	n := sn.clone()
	n.State = Deleting
	n.DeleteRequester = cmd.Requester
	n.DeleteRequestedAt = cmd.At.UTC()
	n.Reclaim = slices.Clone(n.Charged)
	n.UpdatedIndex = c.index
	if len(n.Reclaim) == 0 {
		c.gone(&n)
		return nil
	}
	d.snapshots.put(n.ID, &n)
	return nil
}

// applyReplicaReclaimed accepts reclaims for deleting and for discarded
// snapshots: a discarded snapshot takes no other change, but its space must
// still be freed on every node.
func applyReplicaReclaimed(c *applyCtx, cmd *command.ReplicaReclaimed) error {
	if err := c.checkTerm(cmd.Term); err != nil {
		return err
	}
	sn := c.d.snapshots.get(cmd.ID)
	if sn == nil {
		return fmt.Errorf("snapshot %q: %w", cmd.ID, ErrNotFound)
	}
	if cmd.Term < sn.Term {
		return fmt.Errorf("%w: snapshot %q has fencing term %d, the change carries term %d", ErrFenced, sn.ID, sn.Term, cmd.Term)
	}
	if sn.State != Deleting && sn.State != Discarded {
		return fmt.Errorf("%w: snapshot %q is %s; only deleting and discarded snapshots are reclaimed", ErrInvalidTransition, sn.ID, sn.State)
	}
	if !slices.Contains(sn.Reclaim, cmd.Node) {
		return fmt.Errorf("%w: node %q has nothing to reclaim for snapshot %q", ErrInvalidTransition, cmd.Node, sn.ID)
	}
	for _, m := range cmd.Merged {
		if err := c.mergedInto(sn, cmd.Node, m); err != nil {
			return err
		}
	}
	n := sn.clone()
	for _, v := range n.Volumes {
		c.charge(v.VolumeID, cmd.Node, -v.ChargedBytes)
	}
	n.Charged = without(n.Charged, cmd.Node)
	n.Reclaim = without(n.Reclaim, cmd.Node)
	n.Replicas = slices.DeleteFunc(n.Replicas, func(r Replica) bool { return r.Node == cmd.Node })
	n.UpdatedIndex = c.index
	if len(n.Reclaim) == 0 {
		c.gone(&n)
		return nil
	}
	c.d.snapshots.put(n.ID, &n)
	return nil
}

// discard moves the clone n to state discarded. Every node still charged
// must reclaim its space; with none left the snapshot is gone at once.
func (c *applyCtx) discard(n *Snapshot, why *Discard) {
	n.State = Discarded
	n.Discard = why
	n.Reclaim = slices.Clone(n.Charged)
	n.UpdatedIndex = c.index
	c.d.releaseName(n)
	if len(n.Reclaim) == 0 {
		c.gone(n)
		return
	}
	c.d.snapshots.put(n.ID, n)
}

// gone removes snapshot n: it releases what it still charges, and its
// children's chains skip it (they were merged with it on disk).
func (c *applyCtx) gone(n *Snapshot) {
	d := c.d
	for _, node := range n.Charged {
		for _, v := range n.Volumes {
			c.charge(v.VolumeID, node, -v.ChargedBytes)
		}
	}
	d.snapshots.del(n.ID)
	d.unindexSnapshot(n)
	for _, id := range sortedSet(d.snapsByVM[n.VMID]) {
		child := d.snapshots.get(id)
		var moved *Snapshot
		for i, v := range child.Volumes {
			if v.ParentID != n.ID {
				continue
			}
			if moved == nil {
				m := child.clone()
				moved = &m
			}
			moved.Volumes[i].ParentID = ""
			if pv := n.volume(v.VolumeID); pv != nil {
				moved.Volumes[i].ParentID = pv.ParentID
			}
		}
		if moved != nil {
			moved.UpdatedIndex = c.index
			d.snapshots.put(moved.ID, moved)
		}
	}
	c.affected = append(c.affected, n.ID)
}

// uefiVars returns the UEFI variables file a capture recorded, or nil.
func uefiVars(cfg *command.CapturedConfig) *command.FileData {
	if cfg == nil || cfg.UEFIVars == nil {
		return nil
	}
	v := *cfg.UEFIVars
	return &v
}

// mergedInto records that node merged the reclaimed snapshot sn's image of
// a volume into a child snapshot's image: the child's replica on node now
// holds a rewritten file (new checksum and size) with the same guest view.
func (c *applyCtx) mergedInto(sn *Snapshot, node string, m command.MergedImage) error {
	child := c.d.snapshots.get(m.SnapshotID)
	if child == nil {
		return fmt.Errorf("merged child snapshot %q: %w", m.SnapshotID, ErrNotFound)
	}
	cv := child.volume(m.VolumeID)
	if cv == nil || cv.ParentID != sn.ID || child.VMID != sn.VMID {
		return fmt.Errorf("%w: snapshot %q volume %q is not a child of snapshot %q", ErrInvalid, m.SnapshotID, m.VolumeID, sn.ID)
	}
	r, ok := child.Replica(node)
	if !ok {
		return fmt.Errorf("%w: snapshot %q has no replica on node %q", ErrInvalid, m.SnapshotID, node)
	}
	n := child.clone()
	for i := range r.Volumes {
		if r.Volumes[i].VolumeID != m.VolumeID {
			continue
		}
		delta := m.StoredBytes - r.Volumes[i].StoredBytes
		for j := range n.Replicas {
			if n.Replicas[j].Node == node {
				n.Replicas[j].Volumes[i].StoredBytes = m.StoredBytes
				n.Replicas[j].Volumes[i].SHA256 = m.SHA256
			}
		}
		c.charge(m.VolumeID, node, delta)
	}
	n.UpdatedIndex = c.index
	c.d.snapshots.put(n.ID, &n)
	return nil
}
