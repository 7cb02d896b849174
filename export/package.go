package export

import (
	"context"
	"fmt"
	"io"
	"path"
	"strings"
)

// The names of a package's files (docs/formats/export.md, "Files"). For a
// package named P: P.ovf, P.mf, one P-<volume>.qcow2 or P-<volume>.vmdk
// per volume and, optionally, P-uefi-vars.fd. Export writes them into a
// directory P.part (or one archive P.ova.part) and renames that to P (or
// P.ova) once everything is written and verified, so a package appears
// under its final name only when whole.
const (
	// PartSuffix marks a package that is still being written: the
	// directory "P.part" or the archive "P.ova.part". Importers ignore
	// such names; a resumed export continues in them.
	PartSuffix = ".part"
	// OVASuffix is the extension of a package written as one archive.
	OVASuffix = ".ova"
	// UEFIVarsSuffix ends the name of a package's UEFI variable store.
	UEFIVarsSuffix = "-uefi-vars.fd"
)

// DescriptorName returns the name of package pkg's descriptor, "P.ovf".
func DescriptorName(pkg string) string { return pkg + ".ovf" }

// ManifestName returns the name of package pkg's manifest, "P.mf".
func ManifestName(pkg string) string { return pkg + ".mf" }

// UEFIVarsName returns the name of package pkg's UEFI variable store,
// "P-uefi-vars.fd".
func UEFIVarsName(pkg string) string { return pkg + UEFIVarsSuffix }

// DiskName returns the name of the disk file of volume in package pkg:
// "P-<volume>.qcow2" or "P-<volume>.vmdk" for FormatQCOW2 and FormatVMDK.
func DiskName(pkg, volume, format string) string {
	ext := ".qcow2"
	if format == FormatVMDK {
		ext = ".vmdk"
	}
	return pkg + "-" + volume + ext
}

// PackagePath returns the path, relative to a transport's root, that Import
// takes for the package pkg that Export wrote into the directory dir of
// that transport ("" for the root): "dir/P/P.ovf", or "dir/P.ova" for an
// archive.
func PackagePath(dir, pkg string, ova bool) string {
	if ova {
		return path.Join(dir, pkg+OVASuffix)
	}
	return path.Join(dir, pkg, DescriptorName(pkg))
}

// checkPackageName checks a package name: it and every name derived from
// it must pass CheckName.
func checkPackageName(pkg string) error {
	for _, n := range []string{pkg, pkg + OVASuffix + PartSuffix, UEFIVarsName(pkg)} {
		if err := checkName(n); err != nil {
			return fmt.Errorf("package name %q: %w", pkg, err)
		}
	}
	if strings.HasSuffix(strings.ToLower(pkg), PartSuffix) {
		return fmt.Errorf("package name %q: %w %q: ends in %s, which marks unfinished packages", pkg, ErrUnsafeName, pkg, PartSuffix)
	}
	return nil
}

// segKind says what a segment of the package stream holds.
type segKind int

const (
	segDisk  segKind = iota // a disk file, generated from a volume
	segUEFI                 // the UEFI variable store, copied from a local file
	segOVF                  // the descriptor
	segMF                   // the manifest
	segFrame                // an archive's tar headers, paddings and end blocks
)

// segment is one part of the package stream, the concatenation of the
// package's parts in writing order: for a directory its files (disks, the
// UEFI store, the descriptor, the manifest); for an archive the members'
// data in the same order and then the tar frame.
type segment struct {
	kind segKind
	name string // the file's name in the package (the archive's for the frame)
	vol  int    // index in ExportSpec.Volumes (segDisk)

	start int64 // position in the package stream; valid once every earlier size is known
	size  int64 // length in the stream; -1 until known
	base  int64 // file offset of the segment's first byte (an archive member's data offset)

	data      []byte  // content of small files: the UEFI store, the descriptor, the manifest
	pieces    []piece // the frame's pieces, at their file offsets
	sum       []byte  // SHA-256 of the file, once generated (not for the frame)
	populated int64   // bytes of the volume that hold data (segDisk)
}

// end returns the segment's end in the package stream.
func (s *segment) end() int64 { return s.start + s.size }

// piece is a run of bytes of a segment: pos is its position in the
// segment (for the frame, the sum of the lengths of the pieces before it),
// off its offset in the file it is written to.
type piece struct {
	pos, off int64
	data     []byte
}

// frameRecorder collects what WriteOVAFrame writes, in order.
type frameRecorder struct {
	pieces []piece
	pos    int64
}

// WriteAt implements io.WriterAt.
func (f *frameRecorder) WriteAt(p []byte, off int64) (int, error) {
	f.pieces = append(f.pieces, piece{pos: f.pos, off: off, data: append([]byte(nil), p...)})
	f.pos += int64(len(p))
	return len(p), nil
}

// prefetchBlock is the size of one read of a prefetchReader.
const prefetchBlock = 1 << 20

// prefetchReader reads a range of a file sequentially with several ReadAt
// calls in flight (a remote transport overlaps them on the wire, as it
// does concurrent writes), handing the blocks out in order. It reads no
// further than its limit: a caller that must not trust a file's size
// sets the limit one byte past the most it accepts.
type prefetchReader struct {
	ctx      context.Context
	r        io.ReaderAt
	next     int64 // offset of the next block to fetch
	end      int64 // fetch nothing at or beyond end
	parallel int
	queue    []*fetch
	cur      []byte
	curBuf   []byte
	free     [][]byte
	err      error
}

// fetch is one ReadAt in flight.
type fetch struct {
	done chan struct{}
	buf  []byte
	n    int
	err  error
}

// newPrefetchReader reads r from off up to (not including) end with up to
// parallel reads in flight. Close it to wait for the reads still running.
func newPrefetchReader(ctx context.Context, r io.ReaderAt, off, end int64, parallel int) *prefetchReader {
	return &prefetchReader{ctx: ctx, r: r, next: off, end: end, parallel: max(parallel, 1)}
}

// fill starts reads until parallel are in flight or the range is covered.
func (p *prefetchReader) fill() {
	for len(p.queue) < p.parallel && p.next < p.end {
		n := min(int64(prefetchBlock), p.end-p.next)
		var buf []byte
		if k := len(p.free); k > 0 {
			buf, p.free = p.free[k-1], p.free[:k-1]
		} else {
			buf = make([]byte, prefetchBlock)
		}
		f := &fetch{done: make(chan struct{}), buf: buf[:n]}
		off := p.next
		go func() {
			defer close(f.done)
			f.n, f.err = p.r.ReadAt(f.buf, off)
		}()
		p.queue = append(p.queue, f)
		p.next += n
	}
}

// Read implements io.Reader. The end of the file, or of the range, is
// io.EOF.
func (p *prefetchReader) Read(b []byte) (int, error) {
	for len(p.cur) == 0 {
		if p.curBuf != nil {
			p.free = append(p.free, p.curBuf[:cap(p.curBuf)])
			p.curBuf = nil
		}
		if p.err != nil {
			return 0, p.err
		}
		p.fill()
		if len(p.queue) == 0 {
			p.err = io.EOF
			return 0, io.EOF
		}
		f := p.queue[0]
		select {
		case <-f.done:
		case <-p.ctx.Done():
			p.err = p.ctx.Err()
			return 0, p.err
		}
		p.queue = p.queue[1:]
		p.cur, p.curBuf = f.buf[:f.n], f.buf
		switch {
		case f.err == nil && f.n < len(f.buf):
			p.err = io.ErrNoProgress // io.ReaderAt forbids a short read without an error
		case f.err == io.EOF: //nolint:errorlint // io.ReaderAt returns io.EOF itself
			p.err, p.end = io.EOF, 0 // the file ends here: nothing after it counts
		case f.err != nil:
			p.err = f.err
		}
	}
	n := copy(b, p.cur)
	p.cur = p.cur[n:]
	return n, nil
}

// Close waits for the reads still in flight; they are bounded by the
// context their file was opened with.
func (p *prefetchReader) Close() {
	for _, f := range p.queue {
		<-f.done
	}
	p.queue = nil
	if p.err == nil {
		p.err = io.ErrClosedPipe
	}
}
