package guestagent

// Info is the reply of guest-info.
type Info struct {
	// Version is the agent's version, e.g. "7.2.22".
	Version string `json:"version"`
	// Commands are the commands the agent knows, enabled or not.
	Commands []CommandInfo `json:"supported_commands"`
}

// CommandInfo describes one agent command.
type CommandInfo struct {
	// Name is the command's name.
	Name string `json:"name"`
	// Enabled is false for a command the agent refuses: blocked by its
	// configuration, or disabled while the guest is frozen.
	Enabled bool `json:"enabled"`
	// SuccessResponse is false for commands that send no reply on
	// success (guest-shutdown, guest-suspend-*).
	SuccessResponse bool `json:"success-response"`
}

// Supports reports whether the agent has the named command enabled.
func (i *Info) Supports(name string) bool {
	for _, c := range i.Commands {
		if c.Name == name {
			return c.Enabled
		}
	}
	return false
}

// FileSystem is one guest file system as guest-get-fsinfo reports it.
type FileSystem struct {
	// Name is the guest's device name, e.g. "vdb" or "dm-0".
	Name string `json:"name"`
	// Mountpoint is where the file system is mounted, e.g. "/mnt/data".
	Mountpoint string `json:"mountpoint"`
	// Type is the file system type, e.g. "ext4".
	Type string `json:"type"`
	// UsedBytes and TotalBytes are the file system's space; zero when
	// the agent does not report them.
	UsedBytes  uint64 `json:"used-bytes,omitempty"`
	TotalBytes uint64 `json:"total-bytes,omitempty"`
	// Disks are the disks behind the file system (several for LVM or
	// RAID).
	Disks []Disk `json:"disk"`
}

// Disk is one disk backing a guest file system.
type Disk struct {
	// PCIController is the PCI address of the disk's controller: for a
	// virtio-blk disk, the disk itself.
	PCIController PCIAddress `json:"pci-controller"`
	// BusType is the disk's bus, e.g. "virtio", "scsi", "sata".
	BusType string `json:"bus-type"`
	// Bus, Target and Unit address the disk on its controller (SCSI
	// style; zero for virtio-blk).
	Bus    int `json:"bus"`
	Target int `json:"target"`
	Unit   int `json:"unit"`
	// Serial is the disk's serial number, as set on the host.
	Serial string `json:"serial,omitempty"`
	// Dev is the guest's device node, e.g. "/dev/vdb".
	Dev string `json:"dev,omitempty"`
}

// PCIAddress is a PCI address in the guest.
type PCIAddress struct {
	// Domain, Bus, Slot and Function make up the address.
	Domain   int `json:"domain"`
	Bus      int `json:"bus"`
	Slot     int `json:"slot"`
	Function int `json:"function"`
}

// FreezeStatus is the reply of guest-fsfreeze-status.
type FreezeStatus string

// Freeze states.
const (
	Thawed FreezeStatus = "thawed"
	Frozen FreezeStatus = "frozen"
)

// ExecStatus is the reply of guest-exec-status.
type ExecStatus struct {
	// Exited reports whether the program has ended; the other fields
	// are set only once it has.
	Exited bool `json:"exited"`
	// ExitCode is the exit code of a program that exited normally.
	ExitCode int `json:"exitcode"`
	// Signal is the signal that killed the program, or zero.
	Signal int `json:"signal"`
	// OutData and ErrData are the captured output.
	OutData []byte `json:"out-data"`
	ErrData []byte `json:"err-data"`
	// OutTruncated and ErrTruncated report output the agent cut short.
	OutTruncated bool `json:"out-truncated"`
	ErrTruncated bool `json:"err-truncated"`
}
