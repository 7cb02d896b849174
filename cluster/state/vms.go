package state

import (
	"fmt"
	"slices"

	"github.com/twinsnap/twinsnap/cluster/command"
)

// VM is a registered VM.
type VM struct {
	command.VM
	// UpdatedIndex is the log index of the last change.
	UpdatedIndex uint64 `json:"updated_index"`
}

func (vm *VM) clone() VM {
	n := *vm
	if vm.QEMU != nil {
		q := *vm.QEMU
		n.QEMU = &q
	}
	if vm.Libvirt != nil {
		l := *vm.Libvirt
		n.Libvirt = &l
	}
	n.Volumes = slices.Clone(vm.Volumes)
	return n
}

// volume returns the VM's volume with id, or nil.
func (vm *VM) volume(id string) *command.Volume {
	for i := range vm.Volumes {
		if vm.Volumes[i].ID == id {
			return &vm.Volumes[i]
		}
	}
	return nil
}

func init() {
	on(command.TypeVMRegistered, applyVMRegistered)
	on(command.TypeVMUpdated, applyVMUpdated)
	on(command.TypeVMRemoved, applyVMRemoved)
}

// checkVMFits checks what a VM description needs from the rest of the
// state: a data node to run on, a unique name and volume ids no other VM uses.
func (c *applyCtx) checkVMFits(vm *command.VM) error {
	if _, err := c.dataNode(vm.HostNode); err != nil {
		return fmt.Errorf("host of VM %q: %w", vm.ID, err)
	}
	for _, other := range c.d.vms.sorted() {
		if other.ID == vm.ID {
			continue
		}
		if other.Name == vm.Name {
			return fmt.Errorf("VM name %q (VM %q): %w", vm.Name, other.ID, ErrExists)
		}
		for _, v := range vm.Volumes {
			if other.volume(v.ID) != nil {
				return fmt.Errorf("volume %q (of VM %q): %w", v.ID, other.ID, ErrExists)
			}
		}
	}
	return nil
}

// volumeOwner returns the VM owning volume id, or nil.
func (d *data) volumeOwner(id string) *VM {
	for _, vm := range d.vms.sorted() {
		if vm.volume(id) != nil {
			return vm
		}
	}
	return nil
}

func applyVMRegistered(c *applyCtx, cmd *command.VMRegistered) error {
	if c.d.vms.get(cmd.ID) != nil {
		return fmt.Errorf("VM %q: %w", cmd.ID, ErrExists)
	}
	if err := c.checkVMFits(&cmd.VM); err != nil {
		return err
	}
	vm := VM{VM: cmd.VM, UpdatedIndex: c.index}
	vm = vm.clone()
	c.d.vms.put(vm.ID, &vm)
	return nil
}

// applyVMUpdated replaces a VM's description. Volumes never shrink; a
// dropped volume loses its containers and must not be held by a snapshot.
func applyVMUpdated(c *applyCtx, cmd *command.VMUpdated) error {
	d := c.d
	old := d.vms.get(cmd.ID)
	if old == nil {
		return fmt.Errorf("VM %q: %w", cmd.ID, ErrNotFound)
	}
	if err := c.checkVMFits(&cmd.VM); err != nil {
		return err
	}
	vm := VM{VM: cmd.VM, UpdatedIndex: c.index}
	vm = vm.clone()
	var dropped []string
	for _, ov := range old.Volumes {
		nv := vm.volume(ov.ID)
		if nv == nil {
			dropped = append(dropped, ov.ID)
			continue
		}
		if nv.SizeBytes < ov.SizeBytes {
			return fmt.Errorf("%w: volume %q would shrink from %d to %d bytes", ErrInvalidTransition, ov.ID, ov.SizeBytes, nv.SizeBytes)
		}
	}
	for _, id := range sortedSet(d.snapsByVM[vm.ID]) {
		sn := d.snapshots.get(id)
		for _, v := range sn.Volumes {
			if slices.Contains(dropped, v.VolumeID) {
				return fmt.Errorf("%w: volume %q is held by snapshot %q", ErrInUse, v.VolumeID, id)
			}
		}
	}

	d.vms.put(vm.ID, &vm)
	for _, k := range d.containers.keys() {
		ct := d.containers.get(k)
		if slices.Contains(dropped, ct.VolumeID) {
			d.containers.del(k)
			continue
		}
		if nv := vm.volume(ct.VolumeID); nv != nil && nv.SizeBytes != ct.ReservedBytes {
			n := ct.clone()
			n.ReservedBytes = nv.SizeBytes
			n.UpdatedIndex = c.index
			d.containers.put(k, &n)
		}
	}
	return nil
}

// applyVMRemoved forgets a VM with no snapshots left, and its containers.
func applyVMRemoved(c *applyCtx, cmd *command.VMRemoved) error {
	d := c.d
	vm := d.vms.get(cmd.ID)
	if vm == nil {
		return fmt.Errorf("VM %q: %w", cmd.ID, ErrNotFound)
	}
	if ids := sortedSet(d.snapsByVM[cmd.ID]); len(ids) > 0 {
		return fmt.Errorf("%w: VM %q still has %d snapshots (first %q)", ErrInUse, cmd.ID, len(ids), ids[0])
	}
	d.vms.del(cmd.ID)
	for _, k := range d.containers.keys() {
		if vm.volume(d.containers.get(k).VolumeID) != nil {
			d.containers.del(k)
		}
	}
	return nil
}

// VM returns the VM with id, or an error wrapping ErrNotFound.
func (s *State) VM(id string) (VM, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	vm := s.d.vms.get(id)
	if vm == nil {
		return VM{}, fmt.Errorf("VM %q: %w", id, ErrNotFound)
	}
	return vm.clone(), nil
}

// VMs returns every VM, sorted by id.
func (s *State) VMs() []VM {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []VM
	for _, vm := range s.d.vms.sorted() {
		out = append(out, vm.clone())
	}
	return out
}
