package export

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"

	"github.com/twinsnap/twinsnap/export/disk"
)

// pieceSource yields a segment's pieces in ascending order of position.
type pieceSource interface {
	// next returns the next piece, or io.EOF after the last.
	next() (piece, error)
	// final returns the segment's size once next has returned io.EOF.
	final() int64
}

// streamPieces yields a generated disk file's chunks, placed at base.
type streamPieces struct {
	s    disk.Stream
	base int64
}

func (p streamPieces) next() (piece, error) {
	c, err := p.s.Next()
	if err != nil {
		return piece{}, err
	}
	return piece{pos: c.Off, off: p.base + c.Off, data: c.Data}, nil
}

func (p streamPieces) final() int64 { return p.s.Final() }

// slicePieces yields fixed pieces (a small file cut at every MiB, or the
// frame).
type slicePieces struct {
	p    []piece
	size int64
}

func (s *slicePieces) next() (piece, error) {
	if len(s.p) == 0 {
		return piece{}, io.EOF
	}
	p := s.p[0]
	s.p = s.p[1:]
	return p, nil
}

func (s *slicePieces) final() int64 { return s.size }

// bytesPieces cuts data, placed at base, into pieces of at most 1 MiB.
func bytesPieces(data []byte, base int64) *slicePieces {
	s := &slicePieces{size: int64(len(data))}
	for pos := 0; pos < len(data); pos += disk.DefaultChunkSize {
		end := min(pos+disk.DefaultChunkSize, len(data))
		s.p = append(s.p, piece{pos: int64(pos), off: base + int64(pos), data: data[pos:end]})
	}
	return s
}

// source returns the generator of segment s.
func (x *exporter) source(s *segment) (pieceSource, error) {
	switch s.kind {
	case segDisk:
		st, err := x.newStream(s.vol)
		if err != nil {
			return nil, err
		}
		return streamPieces{st, s.base}, nil
	case segFrame:
		return &slicePieces{p: s.pieces, size: s.size}, nil
	}
	return bytesPieces(s.data, s.base), nil
}

var zeroBlock = make([]byte, 64<<10)

// hashZeros feeds n zero bytes to h.
func hashZeros(h hash.Hash, n int64) {
	for n > 0 {
		k := min(n, int64(len(zeroBlock)))
		h.Write(zeroBlock[:k])
		n -= k
	}
}

// hashStream generates a segment without writing it and returns its size
// and SHA-256; fn, if not nil, sees every piece.
func hashStream(src pieceSource, fn func(piece)) (int64, []byte, error) {
	h := sha256.New()
	var hashed int64
	for {
		p, err := src.next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, nil, err
		}
		hashZeros(h, p.pos-hashed)
		h.Write(p.data)
		hashed = p.pos + int64(len(p.data))
		if fn != nil {
			fn(p)
		}
	}
	size := src.final()
	hashZeros(h, size-hashed)
	return size, h.Sum(nil), nil
}

// write writes every segment from the watermark on.
func (x *exporter) write(ctx context.Context) error {
	if err := x.prepare(ctx); err != nil {
		return err
	}
	for _, s := range x.segs {
		switch {
		case s.kind == segOVF && s.data == nil:
			if err := x.buildDescriptor(); err != nil {
				return err
			}
			x.place()
		case s.kind == segMF:
			var entries []ManifestEntry
			for _, o := range x.manifestOrder() {
				entries = append(entries, ManifestEntry{Name: o.name, Algorithm: AlgSHA256, Sum: o.sum})
			}
			var b bytesWriter
			if err := WriteManifest(&b, entries); err != nil {
				return fmt.Errorf("export: %w", err)
			}
			if int64(len(b.buf)) != s.size {
				return fmt.Errorf("export: manifest of %d bytes, %d planned", len(b.buf), s.size)
			}
			s.data = b.buf
		}
		if err := x.segment(ctx, s); err != nil {
			return err
		}
		x.place()
	}
	return nil
}

// manifestOrder returns the files the manifest lists, in its order: the
// descriptor, then References order (the disks, the UEFI store).
func (x *exporter) manifestOrder() []*segment {
	var out []*segment
	for _, k := range []segKind{segOVF, segDisk, segUEFI} {
		for _, s := range x.segs {
			if s.kind == k {
				out = append(out, s)
			}
		}
	}
	return out
}

// prepare checks the names at the destination and opens the temporary
// package: a fresh export clears it, a resumed one finds it.
func (x *exporter) prepare(ctx context.Context) error {
	final, temp := x.finalName(), x.tempName()
	_, err := x.t.Stat(ctx, final)
	switch {
	case err == nil:
		if x.resume > 0 {
			if _, terr := x.t.Stat(ctx, temp); errors.Is(terr, ErrNotExist) {
				// An earlier call renamed it and was cut before it
				// could report: check it is all there.
				x.renamed = true
				return nil
			}
		}
		return fmt.Errorf("export: package %q already exists: %w", final, ErrExist)
	case !errors.Is(err, ErrNotExist):
		return fmt.Errorf("export: stat %q: %w", final, err)
	}
	if x.resume > 0 {
		if _, err := x.t.Stat(ctx, temp); errors.Is(err, ErrNotExist) {
			return fmt.Errorf("%w: %q is gone", errRestart, temp)
		} else if err != nil {
			return fmt.Errorf("export: stat %q: %w", temp, err)
		}
	}
	if x.spec.OVA {
		w, err := x.t.OpenWriter(ctx, temp)
		if err != nil {
			return fmt.Errorf("export: open %q: %w", temp, err)
		}
		x.ovaW = w
		if x.resume == 0 {
			if err := w.Truncate(0); err != nil {
				return fmt.Errorf("export: truncate %q: %w", temp, err)
			}
		}
		return nil
	}
	if err := x.t.MkdirAll(ctx, temp); err != nil {
		return fmt.Errorf("export: create %q: %w", temp, err)
	}
	if x.resume == 0 {
		// Left by an abandoned export of the same package.
		old, err := x.t.List(ctx, temp)
		if err != nil {
			return fmt.Errorf("export: list %q: %w", temp, err)
		}
		for _, fi := range old {
			if err := x.t.Remove(ctx, temp+"/"+fi.Name); err != nil {
				return fmt.Errorf("export: clear %q: %w", temp, err)
			}
		}
	}
	return nil
}

// windowClosed reports whether the maintenance window has closed.
func (x *exporter) windowClosed() bool {
	return !x.closeAt.IsZero() && !x.opts.Now().Before(x.closeAt)
}

// paused returns the error of a pause.
func (x *exporter) paused() error {
	return &PausedError{Until: x.opts.Window.NextOpen(x.opts.Now())}
}

// errPauseSignal stops a sender when the window closes.
var errPauseSignal = errors.New("export: window closed")

// segment generates segment s, writes what lies at or above the
// watermark, and finishes the file (flush, read back, verify) unless an
// earlier call did.
func (x *exporter) segment(ctx context.Context, s *segment) error {
	w := x.resume
	if s.sum != nil && s.size >= 0 && s.end() <= w {
		return nil // generated to learn its size, and finished earlier
	}
	x.prog.setFile(s.name)
	src, err := x.source(s)
	if err != nil {
		return err
	}
	var (
		h      hash.Hash
		hashed int64
		fw     FileWriter
		cs     *chunkSender
	)
	if s.kind != segFrame {
		h = sha256.New()
	}
	closeFile := func() {
		if cs != nil {
			_ = cs.close()
		}
		if fw != nil && !x.spec.OVA {
			_ = fw.Close()
		}
	}
	send := func(p piece, last bool) error {
		if cs == nil {
			if fw, err = x.openFile(ctx, s); err != nil {
				return err
			}
			cs = x.startSender(ctx, fw, s)
		}
		if x.windowClosed() {
			return errPauseSignal
		}
		mark := s.start + p.pos + int64(len(p.data))
		if last {
			mark = s.start + p.pos // the file is not finished before it is verified
		}
		return cs.send(ctx, Chunk{Off: p.off, Data: p.data}, mark, x.pause)
	}
	var pending *piece
	for {
		p, err := src.next()
		eof := errors.Is(err, io.EOF)
		if err != nil && !eof {
			closeFile()
			return fmt.Errorf("export: generating %s: %w", s.name, err)
		}
		if pending != nil && s.start+pending.pos+int64(len(pending.data)) > w {
			if err := send(*pending, eof); err != nil {
				closeFile()
				if errors.Is(err, errPauseSignal) {
					return x.paused()
				}
				return err
			}
		}
		if eof {
			break
		}
		if h != nil {
			hashZeros(h, p.pos-hashed)
			h.Write(p.data)
			hashed = p.pos + int64(len(p.data))
		}
		pending = &p
	}
	if cs != nil {
		err := cs.close()
		cs = nil
		if err != nil {
			closeFile()
			return err
		}
	}
	size := src.final()
	if s.size >= 0 && size != s.size {
		closeFile()
		return fmt.Errorf("%w: %s: generated %d bytes, planned %d: the volume changed", ErrInvalidSpec, s.name, size, s.size)
	}
	s.size = size
	if h != nil {
		hashZeros(h, size-hashed)
		sum := h.Sum(nil)
		if s.sum != nil && !bytes.Equal(sum, s.sum) {
			closeFile()
			return fmt.Errorf("%w: %s: generated twice with different contents: the volume changed", ErrInvalidSpec, s.name)
		}
		s.sum = sum
	}
	x.place()
	if s.end() <= w {
		return nil // finished, flushed and verified by an earlier call
	}
	if fw == nil {
		if fw, err = x.openFile(ctx, s); err != nil {
			return err
		}
	}
	err = x.finishFile(ctx, s, fw)
	if !x.spec.OVA {
		if cerr := fw.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("export: close %s: %w", x.filePath(s), cerr)
		}
	}
	if err != nil {
		return err
	}
	if err := x.verify(ctx, s); err != nil {
		return err
	}
	x.prog.advance(s.end())
	x.prog.report()
	return nil
}

// finishFile sets a directory file's size (covering a trailing gap) and
// flushes it.
func (x *exporter) finishFile(_ context.Context, s *segment, fw FileWriter) error {
	if !x.spec.OVA {
		if err := fw.Truncate(s.size); err != nil {
			return fmt.Errorf("export: truncate %s: %w", x.filePath(s), err)
		}
	}
	if err := fw.Sync(); err != nil {
		return fmt.Errorf("export: flush %s: %w", x.filePath(s), err)
	}
	return nil
}

// openFile returns the writer of segment s: the archive's, or the file's
// own, opened without truncation. The first file a resumed call writes
// is checked against the watermark, and its size on the share bounds the
// bytes counted as written twice.
func (x *exporter) openFile(ctx context.Context, s *segment) (FileWriter, error) {
	if x.renamed {
		return nil, fmt.Errorf("export: package %q already exists, but %s is not complete in it: %w", x.finalName(), s.name, ErrExist)
	}
	name := x.filePath(s)
	if x.resume > 0 && x.overlapSeg == nil && s.kind != segFrame {
		x.overlapSeg = s
		need := s.base + max(x.resume-s.start, 0)
		fi, err := x.t.Stat(ctx, name)
		switch {
		case errors.Is(err, ErrNotExist) && need == s.base:
			x.overlapLimit = 0
		case errors.Is(err, ErrNotExist):
			return nil, fmt.Errorf("%w: %s is gone", errRestart, name)
		case err != nil:
			return nil, fmt.Errorf("export: stat %s: %w", name, err)
		case fi.Size < need:
			return nil, fmt.Errorf("%w: %s has %d bytes, the watermark needs %d", errRestart, name, fi.Size, need)
		default:
			x.overlapLimit = min(fi.Size, s.base+s.size)
			if s.size < 0 {
				x.overlapLimit = fi.Size
			}
		}
	}
	if x.spec.OVA {
		return x.ovaW, nil
	}
	fw, err := x.t.OpenWriter(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("export: open %s: %w", name, err)
	}
	return fw, nil
}

// chunkSender feeds one file's chunks to WriteChunks and moves the
// watermark as they are written, in order.
type chunkSender struct {
	ch    chan Chunk
	errc  chan error
	mu    sync.Mutex
	marks []int64 // the watermark after each chunk sent, in order
	done  bool
	err   error
}

// startSender starts writing chunks to fw.
func (x *exporter) startSender(ctx context.Context, fw FileWriter, s *segment) *chunkSender {
	cs := &chunkSender{ch: make(chan Chunk, x.opts.ChunkWindow-x.opts.Parallelism), errc: make(chan error, 1)}
	overlap := x.overlapSeg == s
	limit := x.overlapLimit
	go func() {
		cs.errc <- WriteChunks(ctx, fw, cs.ch, x.opts.Parallelism, func(off, n int64) {
			cs.mu.Lock()
			mark := cs.marks[0]
			cs.marks = cs.marks[1:]
			cs.mu.Unlock()
			x.prog.wrote(n, mark)
			if overlap && off < limit {
				x.rewritten.Add(min(off+n, limit) - off)
			}
		})
	}()
	return cs
}

// send queues c, whose completion moves the watermark to mark. It
// returns errPauseSignal when pause fires first, and WriteChunks' error
// when it stopped.
func (cs *chunkSender) send(ctx context.Context, c Chunk, mark int64, pause <-chan struct{}) error {
	cs.mu.Lock()
	cs.marks = append(cs.marks, mark)
	cs.mu.Unlock()
	select {
	case cs.ch <- c:
		return nil
	case err := <-cs.errc:
		cs.done, cs.err = true, err
		if err == nil {
			err = errors.New("export: writer stopped early")
		}
		return err
	case <-pause:
		return errPauseSignal
	case <-ctx.Done():
		return fmt.Errorf("export: %w", ctx.Err())
	}
}

// close ends the chunks and waits for the writes in flight.
func (cs *chunkSender) close() error {
	if !cs.done {
		close(cs.ch)
		cs.err = <-cs.errc
		cs.done = true
	}
	return cs.err
}

// verify reads segment s back through the transport and compares it with
// what was generated.
func (x *exporter) verify(ctx context.Context, s *segment) error {
	name := x.filePath(s)
	r, err := x.t.OpenReader(ctx, name)
	if err != nil {
		return fmt.Errorf("export: verify %s: %w", name, err)
	}
	defer func() { _ = r.Close() }()
	if s.kind == segFrame {
		for _, p := range s.pieces {
			got := make([]byte, len(p.data))
			if _, err := r.ReadAt(got, p.off); err != nil {
				return fmt.Errorf("export: verify %s at %d: %w", name, p.off, err)
			}
			if !bytes.Equal(got, p.data) {
				return fmt.Errorf("export: verify %s: %w: the archive's headers at %d differ from what was written", name, ErrChecksum, p.off)
			}
		}
		return nil
	}
	if !x.spec.OVA && r.Size() != s.size {
		return fmt.Errorf("export: verify %s: %w: %d bytes on the share, %d written", name, ErrChecksum, r.Size(), s.size)
	}
	pr := newPrefetchReader(ctx, r, s.base, s.base+s.size, 2*x.opts.Parallelism)
	defer pr.Close()
	h := sha256.New()
	n, err := io.Copy(h, pr)
	if err != nil {
		return fmt.Errorf("export: verify %s: %w", name, err)
	}
	if n != s.size {
		return fmt.Errorf("export: verify %s: %w: read back %d of %d bytes", name, ErrChecksum, n, s.size)
	}
	if sum := h.Sum(nil); !bytes.Equal(sum, s.sum) {
		return fmt.Errorf("export: verify %s: %w: the share holds SHA-256 %x, %x was written", name, ErrChecksum, sum, s.sum)
	}
	return nil
}

// finish checks the files that earlier calls finished, renames the
// package to its final name and fills the result.
func (x *exporter) finish(ctx context.Context) error {
	earlier := func(s *segment) bool { return s.end() <= x.resume }
	if x.spec.OVA {
		fi, err := x.t.Stat(ctx, x.filePath(x.segs[0]))
		if err != nil {
			return fmt.Errorf("export: stat %s: %w", x.filePath(x.segs[0]), err)
		}
		if fi.Size != x.res.Size {
			return x.damaged(fmt.Errorf("export: %s has %d bytes, the archive %d: %w", x.filePath(x.segs[0]), fi.Size, x.res.Size, ErrChecksum))
		}
	} else {
		for _, s := range x.segs {
			if !earlier(s) {
				continue
			}
			fi, err := x.t.Stat(ctx, x.filePath(s))
			if errors.Is(err, ErrNotExist) {
				return x.damaged(fmt.Errorf("export: %s is gone: %w", x.filePath(s), err))
			}
			if err != nil {
				return fmt.Errorf("export: stat %s: %w", x.filePath(s), err)
			}
			if fi.Size != s.size {
				return x.damaged(fmt.Errorf("export: %s has %d bytes, %d were written: %w", x.filePath(s), fi.Size, s.size, ErrChecksum))
			}
		}
	}
	if !x.renamed {
		if err := x.t.Rename(ctx, x.tempName(), x.finalName()); err != nil {
			return fmt.Errorf("export: rename %q to %q: %w", x.tempName(), x.finalName(), err)
		}
	}
	var size int64
	files := x.manifestOrder()
	for _, s := range x.segs {
		if s.kind == segMF {
			files = append(files, s)
		}
	}
	for _, s := range files {
		size += s.size
		x.res.Files = append(x.res.Files, ExportedFile{Name: s.name, Size: s.size, SHA256: s.sum})
	}
	if !x.spec.OVA {
		x.res.Size = size
	}
	x.res.Rewritten = x.rewritten.Load()
	return nil
}

// damaged turns the loss of a file finished by an earlier call into a
// fresh start, once.
func (x *exporter) damaged(err error) error {
	if x.resume > 0 && !x.renamed {
		return fmt.Errorf("%w: %w", errRestart, err)
	}
	return err
}
