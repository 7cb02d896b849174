package disk

import (
	"bytes"
	"fmt"
	"io"

	"github.com/twinsnap/twinsnap/volumes"
)

// DefaultChunkSize is the size of the chunks a Stream produces unless its
// options ask for another: chunks never cross a multiple of it.
const DefaultChunkSize = 1 << 20

// Chunk is a piece of an output file: Data belongs at byte offset Off.
// Data is the caller's to keep: the Stream does not reuse it.
type Chunk struct {
	// Off is the file offset of Data's first byte.
	Off int64
	// Data is the chunk's content; never empty.
	Data []byte
}

// End returns the file offset just past the chunk.
func (c Chunk) End() int64 { return c.Off + int64(len(c.Data)) }

// Stream produces a disk file as chunks in ascending, non-overlapping
// order. Bytes not covered by any chunk (gaps, including a gap at the end
// of the file) must read as zero: a new file gives that; a transport
// writes the chunks at their offsets and makes the file Final() bytes
// long (a truncate, which also covers a trailing gap).
//
// Chunk boundaries are deterministic: for the same source and options a
// Stream yields the same chunks, and no chunk crosses a multiple of the
// chunk size, so a chunk's offset identifies it.
type Stream interface {
	// Size is the final file size if it is known before any data is read
	// (qcow2), or -1 if it is known only at the end (streamOptimized VMDK).
	Size() int64
	// Next returns the next chunk, or io.EOF after the last one. After an
	// error other than io.EOF the Stream is unusable.
	Next() (Chunk, error)
	// Final returns the file size once Next has returned io.EOF, and -1
	// before that.
	Final() int64
}

// Source is a virtual disk to export: its size, the ranges that hold data
// (sorted, non-overlapping; everything else reads as zero) and its content.
// A *volumes.View is a Source. ReadAt may be called from several
// goroutines at once, as io.ReaderAt allows.
type Source interface {
	// Size returns the virtual disk's size in bytes.
	Size() int64
	// Extents returns the ranges that hold data, sorted and merged.
	Extents() []volumes.Extent
	// ReadAt reads the virtual disk as io.ReaderAt does.
	ReadAt(p []byte, off int64) (int, error)
}

var _ Source = (*volumes.View)(nil)

// checkChunkSize returns the chunk size an option asks for (0 means the
// default), which must be a positive multiple of unit and at most 64 MiB.
func checkChunkSize(n, unit int) (int, error) {
	if n == 0 {
		return DefaultChunkSize, nil
	}
	if n < unit || n%unit != 0 || n > 64<<20 {
		return 0, fmt.Errorf("chunk size %d: must be a multiple of %d up to 64 MiB: %w", n, unit, ErrInvalid)
	}
	return n, nil
}

// checkExtents validates a source's extents against its size.
func checkExtents(size int64, ext []volumes.Extent) error {
	var prev int64
	for i, e := range ext {
		if e.Length <= 0 || e.Start < prev || e.Start > size-e.Length {
			return fmt.Errorf("source extent %d [%d,+%d) is empty, unsorted or beyond the disk's %d bytes: %w",
				i, e.Start, e.Length, size, ErrInvalid)
		}
		prev = e.Start + e.Length
	}
	return nil
}

// readFull fills p from src at off; the part of p beyond the end of the
// disk is zeroed.
func readFull(src Source, p []byte, off int64) error {
	n, err := src.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF { //nolint:errorlint // io.ReaderAt returns io.EOF itself
		if off+int64(n) >= src.Size() {
			clear(p[n:])
			return nil
		}
		return fmt.Errorf("read source at %d: short read (%d of %d bytes): %w", off, n, len(p), io.ErrUnexpectedEOF)
	}
	return fmt.Errorf("read source at %d: %w", off, err)
}

var zeros = make([]byte, 1<<16)

// isZero reports whether p holds only zero bytes.
func isZero(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), len(zeros))
		if !bytes.Equal(p[:n], zeros[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}
