package export

// Defaults of Limits, used where a field is zero.
const (
	// DefaultMaxDescriptorBytes bounds an OVF descriptor: 4 MiB.
	DefaultMaxDescriptorBytes = 4 << 20
	// DefaultMaxDiskBytes bounds one disk's capacity: 64 TiB.
	DefaultMaxDiskBytes = 64 << 40
	// DefaultMaxDisks bounds the number of disks in a descriptor.
	DefaultMaxDisks = 64
	// DefaultMaxFiles bounds the files of a package: References entries,
	// manifest lines and archive members.
	DefaultMaxFiles = 128
	// DefaultMaxManifestBytes bounds a manifest: 1 MiB.
	DefaultMaxManifestBytes = 1 << 20
)

// Fixed bounds of a descriptor, the same for every reader.
const (
	// MaxNICs is the largest number of network interfaces a descriptor
	// may describe.
	MaxNICs = 32
	// MaxCPUs is the largest number of virtual CPUs; the least is 1.
	MaxCPUs = 1024
	// MinMemoryMiB is the least memory a VM may have: 1 MiB.
	MinMemoryMiB = 1
	// MaxMemoryMiB is the most memory a VM may have: 16 TiB, in MiB.
	MaxMemoryMiB = 16 << 20
	// MaxConfigBytes bounds the VM configuration text in the twinsnap
	// section (before base64): 1 MiB.
	MaxConfigBytes = 1 << 20
	// MaxUEFIVarsBytes bounds the UEFI variable store file: 64 MiB.
	MaxUEFIVarsBytes = 64 << 20
	// MaxLabelBytes bounds names, ids and other one-line strings.
	MaxLabelBytes = 255
	// MaxDescriptionBytes bounds the free-text description.
	MaxDescriptionBytes = 64 << 10
)

// Limits bounds what the readers of this package accept from untrusted
// input. The zero value, and any zero field, means the default.
type Limits struct {
	// MaxDescriptorBytes bounds the size of an OVF descriptor
	// (default DefaultMaxDescriptorBytes).
	MaxDescriptorBytes int64
	// MaxDiskBytes bounds one disk's capacity (default DefaultMaxDiskBytes).
	MaxDiskBytes int64
	// MaxDisks bounds the number of disks (default DefaultMaxDisks).
	MaxDisks int
	// MaxFiles bounds the number of files in References, lines in a
	// manifest and members in an OVA (default DefaultMaxFiles).
	MaxFiles int
	// MaxManifestBytes bounds the size of a manifest
	// (default DefaultMaxManifestBytes).
	MaxManifestBytes int64
}

// withDefaults returns l with every zero (or negative) field set to its
// default.
func (l Limits) withDefaults() Limits {
	if l.MaxDescriptorBytes <= 0 {
		l.MaxDescriptorBytes = DefaultMaxDescriptorBytes
	}
	if l.MaxDiskBytes <= 0 {
		l.MaxDiskBytes = DefaultMaxDiskBytes
	}
	if l.MaxDisks <= 0 {
		l.MaxDisks = DefaultMaxDisks
	}
	if l.MaxFiles <= 0 {
		l.MaxFiles = DefaultMaxFiles
	}
	if l.MaxManifestBytes <= 0 {
		l.MaxManifestBytes = DefaultMaxManifestBytes
	}
	return l
}

// maxFileBytes is the largest file a disk of the given capacity may come
// in: twice the capacity plus 1 MiB, enough for any qcow2 or VMDK metadata
// and far below what a hostile size could claim.
func maxFileBytes(capacity int64) int64 {
	return capacity*2 + 1<<20
}
