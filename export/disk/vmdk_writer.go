package disk

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"io"
	"math"
	"runtime"
	"strings"
	"sync"
)

// VMDKOptions adjusts NewStreamOptimizedVMDK. The zero value is the
// default. Every field but Workers is part of the output's identity: a
// resumed export must use the same values (and the same build, since the
// compressor's output is only guaranteed stable within one).
type VMDKOptions struct {
	// FileName is the extent's file name in the embedded descriptor
	// (default "disk.vmdk"): a base name without quotes or control
	// characters, at most 255 bytes.
	FileName string
	// AdapterType is ddb.adapterType: "ide", "buslogic", "lsilogic"
	// (default) or "legacyESX".
	AdapterType string
	// HWVersion is ddb.virtualHWVersion (default 4, what most tools write).
	HWVersion int
	// CID is the content id in the descriptor; 0 derives one from the
	// source's size and extents, so the same source gets the same id.
	CID uint32
	// Level is the zlib compression level, 1 (fastest, default) to 9.
	Level int
	// Workers is how many grains are read and compressed in parallel
	// (default GOMAXPROCS). It does not change the output.
	Workers int
	// ChunkSize is the size chunks are cut at: a multiple of 512 up to
	// 64 MiB; 0 means DefaultChunkSize.
	ChunkSize int
}

// vmdkStream produces a streamOptimized VMDK: header and descriptor, then
// from 64 KiB on each non-zero grain as a grain marker with its zlib
// stream (padded to a sector), a grain table after the grains it covers
// (only for tables with grains), the grain directory, the footer and the
// end-of-stream marker.
type vmdkStream struct {
	src      Source
	level    int
	workers  int
	capacity uint64 // sectors
	header   sparseHeader
	ext      []extent
	ei       int   // current extent
	grain    int64 // next candidate grain
	gd       []uint32
	gt       []uint32 // current grain table
	gtIndex  int64    // its index, -1 before the first grain
	sector   uint64   // next output sector
	asm      assembler
	slots    []grainSlot
	comps    []*zlib.Writer
	done     bool
	final    int64
	err      error
}

var _ Stream = (*vmdkStream)(nil)

// grainSlot is one grain of a batch: its index, its data and its encoded
// form (marker, zlib stream, padding); empty when the grain is all zeros.
type grainSlot struct {
	grain int64
	in    []byte
	out   bytes.Buffer
	err   error
}

// NewStreamOptimizedVMDK returns a Stream of a streamOptimized VMDK
// (monolithicSparse extent with createType "streamOptimized": compressed
// grains with markers, grain directory at the end) of src.
//
// Grains are 64 KiB; those that an extent touches are read and those that
// are all zeros are left out. Compressed sizes are known only after
// compressing, so Size is -1 and Final gives the size at the end; chunk
// boundaries are still deterministic (every chunk-size multiple), because
// each grain is compressed on its own with a fixed level.
func NewStreamOptimizedVMDK(src Source, opts VMDKOptions) (Stream, error) {
	cs, err := checkChunkSize(opts.ChunkSize, sectorSize)
	if err != nil {
		return nil, fmt.Errorf("vmdk stream: %w", err)
	}
	size := src.Size()
	if size <= 0 || size%sectorSize != 0 || size > qcowMaxSize {
		return nil, fmt.Errorf("vmdk stream: source size %d must be a positive multiple of 512: %w", size, ErrInvalid)
	}
	vext := src.Extents()
	if err := checkExtents(size, vext); err != nil {
		return nil, fmt.Errorf("vmdk stream: %w", err)
	}
	if opts.FileName == "" {
		opts.FileName = "disk.vmdk"
	}
	if len(opts.FileName) > 255 || strings.ContainsAny(opts.FileName, "\"/\\") || !printable(opts.FileName) {
		return nil, fmt.Errorf("vmdk stream: file name %q: %w", opts.FileName, ErrInvalid)
	}
	switch opts.AdapterType {
	case "":
		opts.AdapterType = "lsilogic"
	case "ide", "buslogic", "lsilogic", "legacyESX":
	default:
		return nil, fmt.Errorf("vmdk stream: adapter type %q: %w", opts.AdapterType, ErrInvalid)
	}
	if opts.HWVersion == 0 {
		opts.HWVersion = 4
	}
	if opts.HWVersion < 1 || opts.HWVersion > 99 {
		return nil, fmt.Errorf("vmdk stream: hardware version %d: %w", opts.HWVersion, ErrInvalid)
	}
	if opts.Level == 0 {
		opts.Level = zlib.BestSpeed
	}
	if opts.Level < zlib.BestSpeed || opts.Level > zlib.BestCompression {
		return nil, fmt.Errorf("vmdk stream: compression level %d: %w", opts.Level, ErrInvalid)
	}
	if opts.Workers <= 0 {
		opts.Workers = runtime.GOMAXPROCS(0)
	}
	ext := make([]extent, len(vext))
	for i, e := range vext {
		ext[i] = extent{e.Start, e.Length}
	}
	capacity := uint64(size) / sectorSize
	if opts.CID == 0 {
		opts.CID = deriveCID(capacity, ext)
	}
	grains := (capacity + vmdkGrainSect - 1) / vmdkGrainSect
	s := &vmdkStream{
		src:      src,
		level:    opts.Level,
		workers:  opts.Workers,
		capacity: capacity,
		ext:      ext,
		gd:       make([]uint32, (grains+vmdkGTEs-1)/vmdkGTEs),
		gt:       make([]uint32, vmdkGTEs),
		gtIndex:  -1,
		asm:      assembler{size: int64(cs)},
		final:    -1,
		header: sparseHeader{
			Version:           vmdkVersion,
			Flags:             flagNewlineTest | flagCompressed | flagMarkers,
			Capacity:          capacity,
			GrainSize:         vmdkGrainSect,
			DescriptorOffset:  vmdkDescOffset,
			DescriptorSize:    vmdkDescSectors,
			NumGTEsPerGT:      vmdkGTEs,
			GDOffset:          vmdkGDAtEnd,
			OverHead:          vmdkOverhead,
			Newline:           newlineBytes,
			CompressAlgorithm: vmdkDeflate,
		},
	}
	desc := renderDescriptor(opts.CID, capacity, opts.FileName, opts.AdapterType, opts.HWVersion)
	if len(desc) > vmdkDescSectors*sectorSize {
		return nil, fmt.Errorf("vmdk stream: descriptor of %d bytes does not fit: %w", len(desc), ErrInvalid)
	}
	first := s.header.marshal()
	first = append(first, desc...)
	first = append(first, make([]byte, padTo(len(desc)))...)
	s.asm.write(0, first)
	s.sector = vmdkOverhead
	return s, nil
}

// deriveCID makes a content id from what the layout depends on; it avoids
// the values tools read as "no parent".
func deriveCID(capacity uint64, ext []extent) uint32 {
	h := fnv.New32a()
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:], capacity)
	h.Write(b[:8])
	for _, e := range ext {
		binary.LittleEndian.PutUint64(b[:], uint64(e.start))
		binary.LittleEndian.PutUint64(b[8:], uint64(e.length))
		h.Write(b[:])
	}
	cid := h.Sum32()
	if cid >= 0xfffffffe || cid == 0 {
		cid = 0x7a11c1d
	}
	return cid
}

func printable(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

// padTo returns how many bytes pad n to a whole sector.
func padTo(n int) int { return (sectorSize - n%sectorSize) % sectorSize }

// Size returns -1: a compressed file's size is known only at the end.
func (s *vmdkStream) Size() int64 { return -1 }

// Final returns the file's size after the last chunk, -1 before.
func (s *vmdkStream) Final() int64 { return s.final }

// Next returns the next chunk of the file.
func (s *vmdkStream) Next() (Chunk, error) {
	for len(s.asm.ready) == 0 {
		if s.err != nil {
			return Chunk{}, s.err
		}
		if s.done {
			return Chunk{}, io.EOF
		}
		if err := s.step(); err != nil {
			s.err = fmt.Errorf("vmdk stream: %w", err)
			return Chunk{}, s.err
		}
	}
	c := s.asm.ready[0]
	s.asm.ready = s.asm.ready[1:]
	return c, nil
}

// nextGrains returns up to n further grains that an extent touches.
func (s *vmdkStream) nextGrains(n int) []int64 {
	var out []int64
	for len(out) < n && s.ei < len(s.ext) {
		e := s.ext[s.ei]
		first, last := e.start/vmdkGrainBytes, (e.start+e.length-1)/vmdkGrainBytes
		s.grain = max(s.grain, first)
		for ; s.grain <= last && len(out) < n; s.grain++ {
			out = append(out, s.grain)
		}
		if s.grain > last {
			s.ei++
		}
	}
	return out
}

// step encodes one batch of grains, or the trailing metadata when no
// grains are left.
func (s *vmdkStream) step() error {
	grains := s.nextGrains(8 * s.workers)
	if len(grains) == 0 {
		return s.finish()
	}
	if len(s.slots) < len(grains) {
		s.slots = make([]grainSlot, len(grains))
		for i := range s.slots {
			s.slots[i].in = make([]byte, vmdkGrainBytes)
		}
	}
	for len(s.comps) < s.workers {
		w, err := zlib.NewWriterLevel(io.Discard, s.level)
		if err != nil {
			return err
		}
		s.comps = append(s.comps, w)
	}
	var wg sync.WaitGroup
	for w := range min(s.workers, len(grains)) {
		wg.Go(func() {
			for i := w; i < len(grains); i += s.workers {
				s.slots[i].grain = grains[i]
				s.slots[i].err = s.encode(&s.slots[i], s.comps[w])
			}
		})
	}
	wg.Wait()
	for i := range grains {
		sl := &s.slots[i]
		if sl.err != nil {
			return sl.err
		}
		if sl.out.Len() == 0 {
			continue
		}
		if err := s.enterTable(sl.grain / vmdkGTEs); err != nil {
			return err
		}
		if s.sector > math.MaxUint32 {
			return fmt.Errorf("file passes 2 TiB, beyond what grain tables address: %w", ErrLimit)
		}
		s.gt[sl.grain%vmdkGTEs] = uint32(s.sector)
		s.put(sl.out.Bytes())
	}
	return nil
}

// encode reads one grain and, unless it is all zeros, compresses it into
// its marker form.
func (s *vmdkStream) encode(sl *grainSlot, zw *zlib.Writer) error {
	sl.out.Reset()
	off := sl.grain * vmdkGrainBytes
	n := min(int64(vmdkGrainBytes), int64(s.capacity)*sectorSize-off)
	in := sl.in[:n]
	if err := readFull(s.src, in, off); err != nil {
		return err
	}
	if isZero(in) {
		return nil
	}
	var hdr [grainMarkerLen]byte
	binary.LittleEndian.PutUint64(hdr[0:], uint64(sl.grain)*vmdkGrainSect)
	sl.out.Write(hdr[:])
	zw.Reset(&sl.out)
	if _, err := zw.Write(in); err != nil {
		return fmt.Errorf("compress grain %d: %w", sl.grain, err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("compress grain %d: %w", sl.grain, err)
	}
	b := sl.out.Bytes()
	binary.LittleEndian.PutUint32(b[8:], uint32(len(b)-grainMarkerLen))
	sl.out.Write(make([]byte, padTo(len(b))))
	return nil
}

// enterTable makes table the current grain table, writing out the one
// before it if it held grains.
func (s *vmdkStream) enterTable(table int64) error {
	if table == s.gtIndex {
		return nil
	}
	if err := s.flushTable(); err != nil {
		return err
	}
	s.gtIndex = table
	return nil
}

// flushTable writes the current grain table (marker, then the table) and
// records it in the directory.
func (s *vmdkStream) flushTable() error {
	if s.gtIndex < 0 {
		return nil
	}
	if s.sector+1 > math.MaxUint32 {
		return fmt.Errorf("file passes 2 TiB, beyond what the grain directory addresses: %w", ErrLimit)
	}
	b := metaMarker(vmdkGTSectors, markerGT)
	for _, e := range s.gt {
		b = binary.LittleEndian.AppendUint32(b, e)
	}
	s.gd[s.gtIndex] = uint32(s.sector + 1)
	s.put(b)
	clear(s.gt)
	s.gtIndex = -1
	return nil
}

// finish writes the last grain table, the grain directory, the footer and
// the end-of-stream marker.
func (s *vmdkStream) finish() error {
	if err := s.flushTable(); err != nil {
		return err
	}
	gdSectors := uint64(len(s.gd)*4+sectorSize-1) / sectorSize
	b := metaMarker(gdSectors, markerGD)
	gdAt := s.sector + 1
	for _, e := range s.gd {
		b = binary.LittleEndian.AppendUint32(b, e)
	}
	b = append(b, make([]byte, padTo(len(b)))...)
	s.put(b)
	footer := s.header
	footer.GDOffset = gdAt
	s.put(metaMarker(1, markerFooter))
	s.put(footer.marshal())
	s.put(metaMarker(0, markerEOS))
	s.asm.flush()
	s.done = true
	s.final = int64(s.sector) * sectorSize
	return nil
}

// put appends whole sectors at the current output sector.
func (s *vmdkStream) put(b []byte) {
	s.asm.write(int64(s.sector)*sectorSize, b)
	s.sector += uint64(len(b)) / sectorSize
}

// assembler cuts bytes written at ascending offsets into chunks that end
// at every multiple of size and wherever a gap begins.
type assembler struct {
	size  int64
	off   int64 // offset of cur
	cur   []byte
	ready []Chunk
}

// write appends p at off, which must not be below the end of what was
// written; a gap flushes the current chunk.
func (a *assembler) write(off int64, p []byte) {
	if len(a.cur) > 0 && off != a.off+int64(len(a.cur)) {
		a.flush()
	}
	if len(a.cur) == 0 {
		a.off = off
	}
	for len(p) > 0 {
		limit := (a.off/a.size + 1) * a.size
		if a.cur == nil {
			a.cur = make([]byte, 0, limit-a.off)
		}
		n := min(int64(len(p)), limit-a.off-int64(len(a.cur)))
		a.cur = append(a.cur, p[:n]...)
		p = p[n:]
		if a.off+int64(len(a.cur)) == limit {
			a.flush()
			a.off = limit
		}
	}
}

// flush turns what is pending into a chunk.
func (a *assembler) flush() {
	if len(a.cur) > 0 {
		a.ready = append(a.ready, Chunk{Off: a.off, Data: a.cur})
		a.off += int64(len(a.cur))
	}
	a.cur = nil
}
