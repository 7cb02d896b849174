package command

import (
	"strings"
	"time"
)

// Driver says how twinsnap reaches a VM.
type Driver string

// The VM drivers.
const (
	// DriverQEMU is a bare QEMU process reached through its QMP and
	// guest-agent Unix sockets.
	DriverQEMU Driver = "qemu"
	// DriverLibvirt is a libvirt domain; monitor and agent go through libvirt.
	DriverLibvirt Driver = "libvirt"
)

// Valid reports whether d is a known driver.
func (d Driver) Valid() bool { return d == DriverQEMU || d == DriverLibvirt }

// VolumeFormat is the image format of a volume.
type VolumeFormat string

// The volume formats.
const (
	// FormatQCOW2 is a qcow2 image.
	FormatQCOW2 VolumeFormat = "qcow2"
	// FormatRaw is a raw image or block device.
	FormatRaw VolumeFormat = "raw"
)

// Valid reports whether f is a known format.
func (f VolumeFormat) Valid() bool { return f == FormatQCOW2 || f == FormatRaw }

// QEMUConnection reaches a bare QEMU process.
type QEMUConnection struct {
	// QMPSocket is the path of the QMP monitor's Unix socket.
	QMPSocket string `json:"qmp_socket"`
	// AgentSocket is the path of the guest agent's Unix socket; empty when
	// the guest has no agent (crash-consistent snapshots only).
	AgentSocket string `json:"agent_socket,omitempty"`
}

// LibvirtConnection reaches a libvirt domain.
type LibvirtConnection struct {
	// URI is the libvirt connection URI, such as "qemu:///system".
	URI string `json:"uri"`
	// Domain is the libvirt domain name.
	Domain string `json:"domain"`
}

// Volume is one virtual disk of a VM.
type Volume struct {
	// ID identifies the volume cluster-wide; volume containers are keyed by it.
	ID string `json:"id"`
	// Name is the volume's display name, unique within the VM.
	Name string `json:"name"`
	// Serial is the disk serial the guest sees, used to map volumes to guest
	// mount points; optional, unique within the VM when set.
	Serial string `json:"serial,omitempty"`
	// Boot marks the boot volume; a VM has exactly one.
	Boot bool `json:"boot,omitempty"`
	// SizeBytes is the virtual size.
	SizeBytes int64 `json:"size_bytes"`
	// Format is the image format.
	Format VolumeFormat `json:"format"`
	// Path is the volume's image file on its host node, as QEMU reported
	// it at registration; it lets a stopped VM be copied.
	Path string `json:"path,omitempty"`
}

// VM describes a VM as VMRegistered and VMUpdated carry it.
type VM struct {
	// ID identifies the VM cluster-wide (its UUID, typically).
	ID string `json:"id"`
	// Name is the VM's display name, unique in the cluster.
	Name string `json:"name"`
	// HostNode is the data node the VM runs on.
	HostNode string `json:"host_node"`
	// Driver is qemu or libvirt.
	Driver Driver `json:"driver"`
	// QEMU is set for DriverQEMU.
	QEMU *QEMUConnection `json:"qemu,omitempty"`
	// Libvirt is set for DriverLibvirt.
	Libvirt *LibvirtConnection `json:"libvirt,omitempty"`
	// Volumes are the VM's disks, one of them the boot volume.
	Volumes []Volume `json:"volumes"`
	// FreezeEnabled allows freezing guest file systems through the agent
	// for application-consistent snapshots.
	FreezeEnabled bool `json:"freeze_enabled,omitempty"`
	// FreezeTimeout bounds the freeze-transaction-thaw step; required when
	// FreezeEnabled. Encoded in nanoseconds.
	FreezeTimeout time.Duration `json:"freeze_timeout,omitempty"`
}

// Validate checks vm on its own.
func (vm VM) Validate() error {
	if err := checkID("id", vm.ID); err != nil {
		return err
	}
	if err := checkName("name", vm.Name); err != nil {
		return err
	}
	if err := checkID("host_node", vm.HostNode); err != nil {
		return err
	}
	switch vm.Driver {
	case DriverQEMU:
		if vm.QEMU == nil || vm.Libvirt != nil {
			return invalid("qemu", "driver qemu needs qemu connection details and no libvirt ones")
		}
		if err := checkSocketPath("qemu.qmp_socket", vm.QEMU.QMPSocket); err != nil {
			return err
		}
		if vm.QEMU.AgentSocket != "" {
			if err := checkSocketPath("qemu.agent_socket", vm.QEMU.AgentSocket); err != nil {
				return err
			}
		}
	case DriverLibvirt:
		if vm.Libvirt == nil || vm.QEMU != nil {
			return invalid("libvirt", "driver libvirt needs libvirt connection details and no qemu ones")
		}
		if err := checkURL("libvirt.uri", vm.Libvirt.URI, "qemu", "qemu+unix", "qemu+tls", "qemu+ssh"); err != nil {
			return err
		}
		if err := checkName("libvirt.domain", vm.Libvirt.Domain); err != nil {
			return err
		}
	default:
		return invalid("driver", "%q is not qemu or libvirt", vm.Driver)
	}
	if vm.FreezeTimeout < 0 || vm.FreezeTimeout > MaxFreezeTimeout {
		return invalid("freeze_timeout", "%v is outside 0..%v", vm.FreezeTimeout, MaxFreezeTimeout)
	}
	if vm.FreezeEnabled && vm.FreezeTimeout == 0 {
		return invalid("freeze_timeout", "required when freeze_enabled")
	}
	return validateVolumes(vm.Volumes)
}

func validateVolumes(vols []Volume) error {
	if len(vols) == 0 {
		return invalid("volumes", "a VM needs at least its boot volume")
	}
	if len(vols) > MaxVolumes {
		return invalid("volumes", "%d volumes, at most %d", len(vols), MaxVolumes)
	}
	ids := map[string]bool{}
	names := map[string]bool{}
	serials := map[string]bool{}
	boots := 0
	for i, v := range vols {
		if err := checkID(idx("volumes", i, "id"), v.ID); err != nil {
			return err
		}
		if err := checkName(idx("volumes", i, "name"), v.Name); err != nil {
			return err
		}
		if len(v.Serial) > MaxSerialLen {
			return invalid(idx("volumes", i, "serial"), "longer than %d bytes", MaxSerialLen)
		}
		for j := 0; j < len(v.Serial); j++ {
			if c := v.Serial[j]; c <= ' ' || c > '~' {
				return invalid(idx("volumes", i, "serial"), "%q: printable ASCII without spaces only", v.Serial)
			}
		}
		if err := checkBytes(idx("volumes", i, "size_bytes"), v.SizeBytes, 1); err != nil {
			return err
		}
		if v.Path != "" && (!strings.HasPrefix(v.Path, "/") || len(v.Path) > MaxPathLen || strings.ContainsRune(v.Path, 0)) {
			return invalid(idx("volumes", i, "path"), "%q: an absolute path of at most %d bytes", v.Path, MaxPathLen)
		}
		if !v.Format.Valid() {
			return invalid(idx("volumes", i, "format"), "%q is not qcow2 or raw", v.Format)
		}
		if ids[v.ID] {
			return invalid(idx("volumes", i, "id"), "%q appears twice", v.ID)
		}
		if names[v.Name] {
			return invalid(idx("volumes", i, "name"), "%q appears twice", v.Name)
		}
		if v.Serial != "" && serials[v.Serial] {
			return invalid(idx("volumes", i, "serial"), "%q appears twice", v.Serial)
		}
		ids[v.ID], names[v.Name], serials[v.Serial] = true, true, true
		if v.Boot {
			boots++
		}
	}
	if boots != 1 {
		return invalid("volumes", "%d boot volumes, want exactly 1", boots)
	}
	return nil
}

// VMRegistered registers a VM. Its id, name and volume ids must be new.
type VMRegistered struct {
	VM
}

// Type implements Command.
func (VMRegistered) Type() Type { return TypeVMRegistered }

// Validate implements Command.
func (c VMRegistered) Validate() error { return c.VM.Validate() }

// VMUpdated replaces the description of a registered VM (a move to another
// host, new sockets, a new volume, a grown volume). Volumes never shrink,
// and a volume a snapshot still holds cannot be dropped.
type VMUpdated struct {
	VM
}

// Type implements Command.
func (VMUpdated) Type() Type { return TypeVMUpdated }

// Validate implements Command.
func (c VMUpdated) Validate() error { return c.VM.Validate() }

// VMRemoved forgets a VM and its volume containers. A VM that still has
// snapshots (in any state) cannot be removed.
type VMRemoved struct {
	// ID is the VM to forget.
	ID string `json:"id"`
}

// Type implements Command.
func (VMRemoved) Type() Type { return TypeVMRemoved }

// Validate implements Command.
func (c VMRemoved) Validate() error { return checkID("id", c.ID) }

func init() {
	register[VMRegistered](TypeVMRegistered, "vm-registered")
	register[VMUpdated](TypeVMUpdated, "vm-updated")
	register[VMRemoved](TypeVMRemoved, "vm-removed")
}
