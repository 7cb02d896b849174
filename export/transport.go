package export

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Error classes of a Transport. Transports wrap them with %w, so callers
// decide with errors.Is; an error of none of these classes is permanent.
var (
	// ErrNotExist reports that a named file or directory does not exist.
	ErrNotExist = errors.New("export: file does not exist")
	// ErrExist reports that a name is already taken (Rename's target).
	ErrExist = errors.New("export: file already exists")
	// ErrTransient reports a failure that a later attempt may not meet: a
	// broken connection, a lost session, a call that timed out on the
	// network. The retry decorator (WithRetry) re-dials and retries these.
	ErrTransient = errors.New("export: transient transport failure")
	// ErrInvalidName reports a name that is not a safe relative name (see
	// ValidName), or one that the destination cannot hold.
	ErrInvalidName = errors.New("export: invalid file name")
)

// Transport stores the files of export packages at one destination: a
// directory on an SMB share, a local directory. Every name is a safe
// relative name (see ValidName) below the transport's root, with "/" as
// the separator; the transport creates the package directories
// (MkdirAll) and never follows a name outside its root.
//
// Every method is safe for concurrent use. A context bounds the call it is
// given; for OpenWriter and OpenReader it bounds every later call on the
// returned file as well, so pass a context that lives as long as the file.
//
// Errors wrap ErrNotExist, ErrExist, ErrTransient or ErrInvalidName where
// one applies (test with errors.Is); any other error is permanent.
type Transport interface {
	// OpenWriter opens the named file for writing at offsets, creating it
	// if it is absent. It never truncates: a writer reopened after a
	// broken transfer finds what was written before, which is what
	// resuming relies on. The file's directory must exist.
	OpenWriter(ctx context.Context, name string) (FileWriter, error)

	// OpenReader opens an existing file for reading at offsets. A missing
	// file gives ErrNotExist.
	OpenReader(ctx context.Context, name string) (FileReader, error)

	// Stat describes the named file or directory, or returns ErrNotExist.
	Stat(ctx context.Context, name string) (FileInfo, error)

	// Rename gives the file from the name to. It never replaces: when to
	// exists, it fails with ErrExist and leaves both files as they were.
	// It is atomic where the destination allows it (a rename on the
	// server, renameat2 locally), so to appears whole or not at all.
	Rename(ctx context.Context, from, to string) error

	// Remove removes a file or an empty directory; a missing one gives
	// ErrNotExist.
	Remove(ctx context.Context, name string) error

	// MkdirAll creates the directory dir and any missing parents below the
	// root; existing directories are fine. An empty dir is the root.
	MkdirAll(ctx context.Context, dir string) error

	// List describes the entries of the directory dir (the root if empty)
	// sorted by name, without "." and "..". A missing dir gives
	// ErrNotExist.
	List(ctx context.Context, dir string) ([]FileInfo, error)

	// Close releases the transport (a session, a directory handle). Files
	// still open become unusable.
	Close() error
}

// FileWriter writes one file of a package at offsets.
//
// WriteAt is safe to call from several goroutines at once, on different or
// overlapping ranges; remote transports overlap such calls on the wire
// (see WriteChunks), which is how they reach their throughput. The other
// methods must not run concurrently with WriteAt.
type FileWriter interface {
	// WriteAt writes all of p at offset off, or returns an error. It
	// follows io.WriterAt.
	WriteAt(p []byte, off int64) (int, error)
	// Truncate sets the file's size, cutting or extending it.
	Truncate(size int64) error
	// Sync makes what was written durable at the destination: the local
	// file system, or the SMB server's (a flush).
	Sync() error
	// Close releases the file. It does not imply Sync.
	Close() error
}

// FileReader reads one file at offsets. ReadAt is safe for concurrent use.
type FileReader interface {
	// ReadAt follows io.ReaderAt: a short read comes with an error, io.EOF
	// at the end of the file.
	ReadAt(p []byte, off int64) (int, error)
	// Size is the file's size when it was opened.
	Size() int64
	// Close releases the file.
	Close() error
}

// FileInfo describes a file or a directory at a destination.
type FileInfo struct {
	// Name is the last element of the name (the base name).
	Name string
	// Size is the file's size in bytes; 0 for directories.
	Size int64
	// IsDir reports a directory.
	IsDir bool
	// ModTime is the last modification time as the destination reports it.
	ModTime time.Time
}

// MaxNameLen bounds the length of a name, in bytes, and MaxElemLen the
// length of each of its elements: the limits that both Linux file systems
// and SMB servers accept.
const (
	MaxNameLen = 1024
	MaxElemLen = 255
)

// ValidName returns nil when name is a safe relative name for a Transport:
// valid UTF-8, "/"-separated elements that are neither empty nor "." nor
// "..", no leading or trailing "/", no backslash, no control characters,
// and within MaxNameLen and MaxElemLen. The empty name (the root) is not a
// file name; MkdirAll and List accept it as the root. Errors wrap
// ErrInvalidName.
func ValidName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty name", ErrInvalidName)
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("%w: name of %d bytes is longer than %d", ErrInvalidName, len(name), MaxNameLen)
	}
	if !utf8.ValidString(name) {
		return fmt.Errorf("%w: %q is not valid UTF-8", ErrInvalidName, name)
	}
	for _, r := range name {
		if r == '\\' || unicode.IsControl(r) {
			return fmt.Errorf("%w: %q holds %q", ErrInvalidName, name, r)
		}
	}
	for elem := range strings.SplitSeq(name, "/") {
		switch {
		case elem == "":
			return fmt.Errorf("%w: %q has an empty element (leading, trailing or double \"/\")", ErrInvalidName, name)
		case elem == "." || elem == "..":
			return fmt.Errorf("%w: %q has a %q element", ErrInvalidName, name, elem)
		case len(elem) > MaxElemLen:
			return fmt.Errorf("%w: %q has an element longer than %d bytes", ErrInvalidName, name, MaxElemLen)
		}
	}
	return nil
}

// ValidDir is ValidName for directories: the empty name, the root, is
// valid too.
func ValidDir(dir string) error {
	if dir == "" {
		return nil
	}
	return ValidName(dir)
}
