package state

import (
	"fmt"

	"github.com/twinsnap/twinsnap/cluster/command"
)

// Container is the volume container of one volume on one data node: the
// space set aside for the volume and its snapshot data. It grows, never
// shrinks.
type Container struct {
	// VolumeID is the volume it holds.
	VolumeID string `json:"volume_id"`
	// Node is the data node it lives on.
	Node string `json:"node"`
	// VMID is the VM owning the volume.
	VMID string `json:"vm_id"`
	// CapacityBytes is the space set aside.
	CapacityBytes int64 `json:"capacity_bytes"`
	// ReservedBytes is the space kept for the volume itself (its virtual size).
	ReservedBytes int64 `json:"reserved_bytes"`
	// UsedBytes is the space charged to snapshots: their estimates until
	// captured, their stored size afterwards, until the node reclaims them.
	UsedBytes int64 `json:"used_bytes"`
	// UpdatedIndex is the log index of the last change.
	UpdatedIndex uint64 `json:"updated_index"`
}

// FreeBytes is the room left for new snapshot data; negative when a
// capture came out larger than its estimate or the volume grew.
func (ct Container) FreeBytes() int64 {
	return ct.CapacityBytes - ct.ReservedBytes - ct.UsedBytes
}

func (ct *Container) clone() Container { return *ct }

// containerKey is the table key of a container. Ids never hold a NUL, so
// keys sort by volume id, then node.
func containerKey(volume, node string) string { return volume + "\x00" + node }

func init() {
	on(command.TypeContainerCreated, applyContainerCreated)
	on(command.TypeContainerExpanded, applyContainerExpanded)
}

func applyContainerCreated(c *applyCtx, cmd *command.ContainerCreated) error {
	d := c.d
	if _, err := c.dataNode(cmd.Node); err != nil {
		return err
	}
	vm := d.volumeOwner(cmd.VolumeID)
	if vm == nil {
		return fmt.Errorf("volume %q: %w", cmd.VolumeID, ErrNotFound)
	}
	key := containerKey(cmd.VolumeID, cmd.Node)
	if d.containers.get(key) != nil {
		return fmt.Errorf("container of volume %q on node %q: %w", cmd.VolumeID, cmd.Node, ErrExists)
	}
	size := vm.volume(cmd.VolumeID).SizeBytes
	if cmd.CapacityBytes < size {
		return fmt.Errorf("%w: capacity %d is below the size %d of volume %q", ErrNoSpace, cmd.CapacityBytes, size, cmd.VolumeID)
	}
	d.containers.put(key, &Container{
		VolumeID:      cmd.VolumeID,
		Node:          cmd.Node,
		VMID:          vm.ID,
		CapacityBytes: cmd.CapacityBytes,
		ReservedBytes: size,
		UpdatedIndex:  c.index,
	})
	return nil
}

func applyContainerExpanded(c *applyCtx, cmd *command.ContainerExpanded) error {
	key := containerKey(cmd.VolumeID, cmd.Node)
	old := c.d.containers.get(key)
	if old == nil {
		return fmt.Errorf("container of volume %q on node %q: %w", cmd.VolumeID, cmd.Node, ErrNotFound)
	}
	if cmd.CapacityBytes < old.CapacityBytes {
		return fmt.Errorf("%w: container of volume %q on node %q cannot shrink from %d to %d bytes",
			ErrInvalidTransition, cmd.VolumeID, cmd.Node, old.CapacityBytes, cmd.CapacityBytes)
	}
	n := old.clone()
	n.CapacityBytes = cmd.CapacityBytes
	n.UpdatedIndex = c.index
	c.d.containers.put(key, &n)
	return nil
}

// charge adds delta bytes to the container of volume on node, if it exists.
func (c *applyCtx) charge(volume, node string, delta int64) {
	if delta == 0 {
		return
	}
	key := containerKey(volume, node)
	old := c.d.containers.get(key)
	if old == nil {
		return
	}
	n := old.clone()
	n.UsedBytes += delta
	n.UpdatedIndex = c.index
	c.d.containers.put(key, &n)
}

// Container returns the container of volume on node, or an error wrapping
// ErrNotFound.
func (s *State) Container(volume, node string) (Container, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	ct := s.d.containers.get(containerKey(volume, node))
	if ct == nil {
		return Container{}, fmt.Errorf("container of volume %q on node %q: %w", volume, node, ErrNotFound)
	}
	return *ct, nil
}

// ContainerFilter selects containers; empty fields match everything.
type ContainerFilter struct {
	// VMID keeps the containers of one VM's volumes.
	VMID string
	// VolumeID keeps the containers of one volume.
	VolumeID string
	// Node keeps the containers on one node.
	Node string
}

// Containers returns the containers f selects, sorted by volume id, then node.
func (s *State) Containers(f ContainerFilter) []Container {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []Container
	for _, ct := range s.d.containers.sorted() {
		if (f.VMID == "" || ct.VMID == f.VMID) && (f.VolumeID == "" || ct.VolumeID == f.VolumeID) && (f.Node == "" || ct.Node == f.Node) {
			out = append(out, *ct)
		}
	}
	return out
}
