package agenttest

// The types below are the agent's wire shapes, written from QEMU 7.2's
// qga/qapi-schema.json independently of package guestagent's own types, so
// that a misspelt member name on either side shows up in tests.

// FileSystem is one guest file system (GuestFilesystemInfo).
type FileSystem struct {
	// Name, Mountpoint and Type are the device name ("vdb"), the mount
	// point and the file system type ("ext4").
	Name       string `json:"name"`
	Mountpoint string `json:"mountpoint"`
	Type       string `json:"type"`
	// UsedBytes and TotalBytes are optional in the schema.
	UsedBytes  *uint64 `json:"used-bytes,omitempty"`
	TotalBytes *uint64 `json:"total-bytes,omitempty"`
	// Disks are the disks behind the file system.
	Disks []Disk `json:"disk"`
}

// Disk is one disk behind a file system (GuestDiskAddress).
type Disk struct {
	// PCIController is the PCI address of the disk's controller.
	PCIController PCIAddress `json:"pci-controller"`
	// BusType is "virtio", "scsi", ...; Bus, Target and Unit address
	// the disk on its controller.
	BusType string `json:"bus-type"`
	Bus     int    `json:"bus"`
	Target  int    `json:"target"`
	Unit    int    `json:"unit"`
	// Serial and Dev are optional: the serial number and the device
	// node ("/dev/vdb").
	Serial string `json:"serial,omitempty"`
	Dev    string `json:"dev,omitempty"`
}

// PCIAddress is a PCI address (GuestPCIAddress).
type PCIAddress struct {
	// Domain, Bus, Slot and Function make up the address.
	Domain   int `json:"domain"`
	Bus      int `json:"bus"`
	Slot     int `json:"slot"`
	Function int `json:"function"`
}

// ExecResult is what a program started with guest-exec does, as the Exec
// field decides it.
type ExecResult struct {
	// Polls is how many guest-exec-status calls report the program as
	// still running before it exits.
	Polls int
	// ExitCode is the exit code of a program that exits normally.
	ExitCode int
	// Signal, if non-zero, is the signal that killed the program; then
	// the status carries "signal" and no "exitcode", as the real agent's.
	Signal int
	// Stdout and Stderr are the program's output, reported when the
	// command asked to capture it.
	Stdout, Stderr []byte
}

// DefaultFileSystems returns the file systems of the test guests of
// internal/testenv: the root on the boot disk and two data disks, each a
// virtio disk in its own PCI slot.
func DefaultFileSystems() []FileSystem {
	fs := func(name, mp, serial string, slot int, total uint64) FileSystem {
		used := total / 8
		return FileSystem{
			Name: name, Mountpoint: mp, Type: "ext4", UsedBytes: &used, TotalBytes: &total,
			Disks: []Disk{{
				PCIController: PCIAddress{Slot: slot},
				BusType:       "virtio",
				Serial:        serial,
				Dev:           "/dev/" + name,
			}},
		}
	}
	return []FileSystem{
		fs("vda", "/", "boot", 4, 256<<20),
		fs("vdb", "/mnt/data1", "data1", 5, 60<<20),
		fs("vdc", "/mnt/data2", "data2", 6, 60<<20),
	}
}
