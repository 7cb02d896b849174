package export

import "errors"

// The sentinel errors of package export. Every error the package returns
// wraps exactly one of them with %w, and its message names the file,
// element or value at fault, so that callers decide with errors.Is and
// operators read the details.
var (
	// ErrUnsafeName means that a file name (an OVF href, a manifest entry,
	// an OVA member) is not a plain, safe file name inside the package:
	// a path, a URL, a drive letter, a control character, a reserved
	// Windows name, an over-long name, or a duplicate.
	ErrUnsafeName = errors.New("unsafe file name")

	// ErrEntity means that an OVF descriptor holds a document type
	// declaration or an entity (<!DOCTYPE, <!ENTITY, or a reference to an
	// undeclared entity). Such descriptors are refused outright.
	ErrEntity = errors.New("XML document type declarations and entities are not allowed")

	// ErrTooLarge means that a size or a count lies outside its limits:
	// an input larger than its bound, a disk capacity of zero or beyond
	// the maximum, a negative size, too many disks, files, NICs or CPUs.
	ErrTooLarge = errors.New("size or count outside its limits")

	// ErrChecksum means that a file's checksum does not match its
	// manifest entry, or that the manifest lists no checksum for it.
	ErrChecksum = errors.New("checksum mismatch")

	// ErrTruncated means that a file or an archive member ended before
	// its declared size.
	ErrTruncated = errors.New("truncated")

	// ErrFormat means that a disk file's format (or a file's compression
	// or chunking) is not one this package supports: qcow2 and
	// streamOptimized VMDK, uncompressed and whole.
	ErrFormat = errors.New("unsupported disk format")

	// ErrMalformed means that the input is structurally wrong in any other
	// way: invalid XML, missing or duplicate elements, dangling
	// references, values that do not parse.
	ErrMalformed = errors.New("malformed")
)
