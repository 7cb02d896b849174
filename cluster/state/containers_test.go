package state

import (
	"testing"

	"github.com/twinsnap/twinsnap/cluster/command"
)

func TestContainerCreated(t *testing.T) {
	h := newHarness(t)
	h.cluster()
	ct, err := h.st.Container("vol-1", "node-b")
	if err != nil || ct.VMID != "vm-1" || ct.CapacityBytes != 30*gib || ct.ReservedBytes != 10*gib || ct.UsedBytes != 0 || ct.FreeBytes() != 20*gib {
		t.Fatalf("Container(vol-1, node-b) = %+v, %v", ct, err)
	}
	got := ids(h.st.Containers(ContainerFilter{}), func(c Container) string { return c.VolumeID + "@" + c.Node })
	if got != "[vol-1@node-a vol-1@node-b vol-2@node-a vol-2@node-b]" {
		t.Fatalf("Containers() = %s", got)
	}
	if n := len(h.st.Containers(ContainerFilter{Node: "node-a", VMID: "vm-1"})); n != 2 {
		t.Fatalf("Containers(node-a, vm-1) = %d, want 2", n)
	}

	h.refused(&command.ContainerCreated{VolumeID: "vol-1", Node: "node-a", CapacityBytes: 40 * gib}, ErrExists)
	h.refused(&command.ContainerCreated{VolumeID: "vol-x", Node: "node-a", CapacityBytes: 40 * gib}, ErrNotFound)
	h.refused(&command.ContainerCreated{VolumeID: "vol-1", Node: "node-x", CapacityBytes: 40 * gib}, ErrNotFound)
	h.refused(&command.ContainerCreated{VolumeID: "vol-1", Node: "w", CapacityBytes: 40 * gib}, ErrInvalid)
	h.ok(&command.VMUpdated{VM: vmSpec("vm-1", "node-a", "vol-1", "vol-2", "vol-3")})
	h.refused(&command.ContainerCreated{VolumeID: "vol-3", Node: "node-a", CapacityBytes: gib}, ErrNoSpace)
	h.refused(&command.ContainerCreated{VolumeID: "vol-3", Node: "node-a", CapacityBytes: 0}, ErrInvalid)
	if _, err := h.st.Container("vol-3", "node-a"); !errorsIs(err, ErrNotFound) {
		t.Fatalf("Container(vol-3) err = %v", err)
	}
}

func TestContainerExpanded(t *testing.T) {
	h := newHarness(t)
	h.cluster()
	h.ok(&command.ContainerExpanded{VolumeID: "vol-1", Node: "node-a", CapacityBytes: 50 * gib})
	h.ok(&command.ContainerExpanded{VolumeID: "vol-1", Node: "node-a", CapacityBytes: 50 * gib}) // same size: no-op
	if ct, _ := h.st.Container("vol-1", "node-a"); ct.CapacityBytes != 50*gib || ct.FreeBytes() != 40*gib {
		t.Fatalf("expanded container = %+v", ct)
	}
	h.refused(&command.ContainerExpanded{VolumeID: "vol-1", Node: "node-a", CapacityBytes: 49 * gib}, ErrInvalidTransition)
	h.refused(&command.ContainerExpanded{VolumeID: "vol-1", Node: "w", CapacityBytes: 60 * gib}, ErrNotFound)
	h.refused(&command.ContainerExpanded{VolumeID: "vol-1", Node: "node-a", CapacityBytes: -1}, ErrInvalid)
}
