package disk

import "errors"

// Sentinel errors; every error of one of these classes that the package
// returns wraps it, so callers decide with errors.Is.
var (
	// ErrTruncated: the input ended before the structure being read was
	// complete.
	ErrTruncated = errors.New("disk: input truncated")
	// ErrMalformed: the input is not a well-formed file of the expected
	// kind (bad magic, inconsistent fields, corrupt compressed data, ...).
	ErrMalformed = errors.New("disk: malformed input")
	// ErrUnsupported: the input is well-formed but uses a feature this
	// package does not handle (another VMDK subformat, a parent disk, ...).
	ErrUnsupported = errors.New("disk: unsupported format feature")
	// ErrLimit: the input or the output exceeds a configured or format
	// limit (capacity, file size).
	ErrLimit = errors.New("disk: limit exceeded")
	// ErrInvalid: an argument (options, source size) is not acceptable.
	ErrInvalid = errors.New("disk: invalid argument")
)
