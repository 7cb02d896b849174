package state

import (
	"testing"

	"github.com/twinsnap/twinsnap/cluster/command"
)

func TestVMRegistered(t *testing.T) {
	h := newHarness(t)
	h.cluster()
	vm, err := h.st.VM("vm-1")
	if err != nil || vm.HostNode != "node-a" || len(vm.Volumes) != 2 || !vm.Volumes[0].Boot || vm.QEMU == nil {
		t.Fatalf("VM(vm-1) = %+v, %v", vm, err)
	}
	vm.Volumes[0].Name = "mutated"
	vm.QEMU.QMPSocket = "/mutated"
	if again, _ := h.st.VM("vm-1"); again.Volumes[0].Name == "mutated" || again.QEMU.QMPSocket == "/mutated" {
		t.Fatalf("VM() returned shared slices or pointers")
	}
	lv := vmSpec("vm-0", "node-b", "vol-9")
	lv.Driver, lv.QEMU = command.DriverLibvirt, nil
	lv.Libvirt = &command.LibvirtConnection{URI: "qemu:///system", Domain: "vm0"}
	h.ok(&command.VMRegistered{VM: lv})
	if got := ids(h.st.VMs(), func(v VM) string { return v.ID }); got != "[vm-0 vm-1]" {
		t.Fatalf("VMs() = %s", got)
	}

	h.refused(&command.VMRegistered{VM: vmSpec("vm-1", "node-a", "vol-5")}, ErrExists)
	sameName := vmSpec("vm-2", "node-a", "vol-5")
	sameName.Name = "vm vm-1"
	h.refused(&command.VMRegistered{VM: sameName}, ErrExists)
	h.refused(&command.VMRegistered{VM: vmSpec("vm-2", "node-a", "vol-2")}, ErrExists)
	h.refused(&command.VMRegistered{VM: vmSpec("vm-2", "node-z", "vol-5")}, ErrNotFound)
	h.refused(&command.VMRegistered{VM: vmSpec("vm-2", "w", "vol-5")}, ErrInvalid)
	h.refused(&command.VMRegistered{VM: vmSpec("vm-2", "node-a")}, ErrInvalid) // no volumes
	if _, err := h.st.VM("vm-2"); !errorsIs(err, ErrNotFound) {
		t.Fatalf("VM(vm-2) err = %v", err)
	}
}

func TestVMUpdated(t *testing.T) {
	h := newHarness(t)
	h.cluster()
	// Move to node-b, grow vol-2, add vol-3.
	spec := vmSpec("vm-1", "node-b", "vol-1", "vol-2", "vol-3")
	spec.Volumes[1].SizeBytes = 12 * gib
	h.ok(&command.VMUpdated{VM: spec})
	if vm, _ := h.st.VM("vm-1"); vm.HostNode != "node-b" || len(vm.Volumes) != 3 {
		t.Fatalf("VM not updated: %+v", vm)
	}
	if ct, _ := h.st.Container("vol-2", "node-a"); ct.ReservedBytes != 12*gib || ct.FreeBytes() != 18*gib {
		t.Fatalf("container of grown volume = %+v", ct)
	}

	shrink := vmSpec("vm-1", "node-b", "vol-1", "vol-2", "vol-3")
	shrink.Volumes[1].SizeBytes = gib
	h.refused(&command.VMUpdated{VM: shrink}, ErrInvalidTransition)
	h.refused(&command.VMUpdated{VM: vmSpec("vm-9", "node-a", "vol-9")}, ErrNotFound)
	h.refused(&command.VMUpdated{VM: vmSpec("vm-1", "w", "vol-1")}, ErrInvalid)

	// Dropping a volume a snapshot holds is refused; dropping another one
	// drops its containers.
	spec.HostNode = "node-a"
	h.ok(&command.VMUpdated{VM: spec})
	h.ok(created("s1", "vm-1", 1, gib, "vol-1", "vol-2"))
	h.refused(&command.VMUpdated{VM: vmSpec("vm-1", "node-a", "vol-1")}, ErrInUse)
	h.ok(&command.ContainerCreated{VolumeID: "vol-3", Node: "node-a", CapacityBytes: 20 * gib})
	spec.Volumes = spec.Volumes[:2]
	h.ok(&command.VMUpdated{VM: spec})
	if cts := h.st.Containers(ContainerFilter{VolumeID: "vol-3"}); len(cts) != 0 {
		t.Fatalf("containers of dropped volume survive: %+v", cts)
	}
}

func TestVMRemoved(t *testing.T) {
	h := newHarness(t)
	h.cluster()
	h.ok(created("s1", "vm-1", 1, gib, "vol-1"))
	h.refused(&command.VMRemoved{ID: "vm-1"}, ErrInUse)
	h.ok(&command.SnapshotFailed{ID: "s1", Term: 1, Node: "node-a", Reason: "boom", At: t0})
	h.refused(&command.VMRemoved{ID: "vm-1"}, ErrInUse) // discarded, space not yet reclaimed
	h.ok(&command.ReplicaReclaimed{ID: "s1", Term: 1, Node: "node-a", At: t0})
	h.ok(&command.ReplicaReclaimed{ID: "s1", Term: 1, Node: "node-b", At: t0})
	h.ok(&command.VMRemoved{ID: "vm-1"})
	if _, err := h.st.VM("vm-1"); !errorsIs(err, ErrNotFound) {
		t.Fatalf("VM(vm-1) err = %v", err)
	}
	if cts := h.st.Containers(ContainerFilter{VMID: "vm-1"}); len(cts) != 0 {
		t.Fatalf("containers survive their VM: %+v", cts)
	}
	h.refused(&command.VMRemoved{ID: "vm-1"}, ErrNotFound)
	h.refused(&command.VMRemoved{}, ErrInvalid)
}
