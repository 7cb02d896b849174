package disk

import (
	"bufio"
	"bytes"
	"compress/zlib"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"maps"
	"math"
	"sort"
)

// DefaultMaxCapacity is the largest virtual disk a VMDKReader accepts
// unless its options say otherwise: 16 TiB.
const DefaultMaxCapacity = 16 << 40

// maxTrailingZeros bounds the zero padding accepted after the
// end-of-stream marker (qemu-img pads its files).
const maxTrailingZeros = 1 << 20

// VMDKReaderOptions bounds what a VMDKReader accepts.
type VMDKReaderOptions struct {
	// MaxCapacity is the largest virtual disk accepted, in bytes;
	// 0 means DefaultMaxCapacity.
	MaxCapacity int64
	// BufferSize is the size of the reads from the input; 0 means 1 MiB,
	// which suits a network share.
	BufferSize int
}

// VMDKInfo describes a streamOptimized VMDK.
type VMDKInfo struct {
	// Capacity is the virtual disk's size in bytes.
	Capacity int64
	// CID is the descriptor's content id.
	CID uint32
	// AdapterType is ddb.adapterType ("" if absent).
	AdapterType string
	// HWVersion is ddb.virtualHWVersion ("" if absent).
	HWVersion string
	// ExtentFile is the file name in the extent line.
	ExtentFile string
	// Descriptor holds every key = value pair of the descriptor.
	Descriptor map[string]string
	// GDAtEnd reports the layout: the grain directory after the grains,
	// found through the footer (true), or embedded before them (false).
	GDAtEnd bool
	// Grains is the number of grains read (after CopyTo).
	Grains int64
	// DataBytes is the number of bytes written to the target (after
	// CopyTo): grains that decompress to zeros are not written.
	DataBytes int64
}

// VMDKReader parses a streamOptimized VMDK sequentially from an io.Reader
// and writes the guest data into an io.WriterAt. It reads untrusted input:
// the header, the descriptor (at most 64 KiB, parsed strictly), every
// marker and every grain are checked, each grain must decompress to
// exactly one grain (never more: zip-bomb safe), grains must come in
// ascending order, and the grain tables and directory (embedded before the
// grains, as qemu-img and open-vmdk write them, or after them with a
// footer, as the stream layout has it) must point at exactly the grains
// the stream holds, so every other reader sees the same disk. An input that
// ends early fails with ErrTruncated, anything else wrong with
// ErrMalformed, ErrUnsupported or ErrLimit.
type VMDKReader struct {
	r    *bufio.Reader
	pos  int64 // bytes consumed
	opts VMDKReaderOptions
	hdr  sparseHeader
	info VMDKInfo
	err  error // sticky

	headerRead, copied bool
	gts, gdSectors     uint64 // grain tables and directory sectors
	descEnd            uint64

	grain []byte // decompression target
	comp  []byte // one grain marker with its compressed data
	zr    io.ReadCloser
	br    bytes.Reader
}

// NewVMDKReader returns a reader of the streamOptimized VMDK in r.
func NewVMDKReader(r io.Reader, opts VMDKReaderOptions) *VMDKReader {
	if opts.MaxCapacity <= 0 {
		opts.MaxCapacity = DefaultMaxCapacity
	}
	if opts.BufferSize <= 0 {
		opts.BufferSize = 1 << 20
	}
	return &VMDKReader{r: bufio.NewReaderSize(r, opts.BufferSize), opts: opts}
}

// ReadStreamOptimizedVMDK reads the streamOptimized VMDK in r and writes
// its guest data into w (see VMDKReader). w must read as zeros where
// nothing is written, as a new sparse file does; the caller sizes it to
// the returned Capacity.
func ReadStreamOptimizedVMDK(ctx context.Context, r io.Reader, w io.WriterAt, opts VMDKReaderOptions) (VMDKInfo, error) {
	return NewVMDKReader(r, opts).CopyTo(ctx, w)
}

// Header reads and checks the header and the descriptor, and returns what
// they say, so the caller can size the target before the data arrives.
func (d *VMDKReader) Header() (VMDKInfo, error) {
	if !d.headerRead && d.err == nil {
		d.headerRead = true
		d.err = d.readHeader()
	}
	if d.err != nil {
		return VMDKInfo{}, d.err
	}
	info := d.info
	info.Descriptor = maps.Clone(d.info.Descriptor)
	return info, nil
}

// fail records and returns a sticky error.
func (d *VMDKReader) fail(err error) error {
	d.err = fmt.Errorf("vmdk: %w", err)
	return d.err
}

// read fills p from the input; an early end is ErrTruncated.
func (d *VMDKReader) read(p []byte, what string) error {
	n, err := io.ReadFull(d.r, p)
	d.pos += int64(n)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%s at byte %d: %w", what, d.pos, ErrTruncated)
	default:
		return fmt.Errorf("reading %s at byte %d: %w", what, d.pos, err)
	}
}

// skip discards n sectors of input.
func (d *VMDKReader) skip(sectors uint64, what string) error {
	n, err := io.CopyN(io.Discard, d.r, int64(sectors)*sectorSize)
	d.pos += n
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("%s at byte %d: %w", what, d.pos, ErrTruncated)
	}
	if err != nil {
		return fmt.Errorf("reading %s at byte %d: %w", what, d.pos, err)
	}
	return nil
}

func (d *VMDKReader) sector() uint64 { return uint64(d.pos) / sectorSize }

func (d *VMDKReader) readHeader() error {
	b := make([]byte, sectorSize)
	if err := d.read(b, "header"); err != nil {
		return d.fail(err)
	}
	h, err := unmarshalHeader(b)
	if err != nil {
		return d.fail(err)
	}
	if err := d.checkHeader(h); err != nil {
		return d.fail(err)
	}
	d.hdr = h
	desc := make([]byte, h.DescriptorSize*sectorSize)
	if err := d.read(desc, "descriptor"); err != nil {
		return d.fail(err)
	}
	dd, err := parseDescriptor(desc)
	if err != nil {
		return d.fail(err)
	}
	if dd.Capacity != h.Capacity {
		return d.fail(fmt.Errorf("descriptor's extent has %d sectors, header %d: %w", dd.Capacity, h.Capacity, ErrMalformed))
	}
	d.info = VMDKInfo{
		Capacity:    int64(h.Capacity) * sectorSize,
		CID:         dd.CID,
		AdapterType: dd.AdapterType,
		HWVersion:   dd.HWVersion,
		ExtentFile:  dd.ExtentFile,
		Descriptor:  dd.Keys,
		GDAtEnd:     h.GDOffset == vmdkGDAtEnd,
	}
	return nil
}

// checkHeader validates a header and derives the table geometry.
func (d *VMDKReader) checkHeader(h sparseHeader) error {
	const known = flagNewlineTest | flagRGD | flagCompressed | flagMarkers
	switch {
	case h.Version < 1 || h.Version > 3:
		return fmt.Errorf("version %d: %w", h.Version, ErrUnsupported)
	case h.Flags&^known != 0:
		return fmt.Errorf("flags %#x: unknown bits: %w", h.Flags, ErrUnsupported)
	case h.Flags&(flagCompressed|flagMarkers) != flagCompressed|flagMarkers:
		return fmt.Errorf("flags %#x: not streamOptimized (compressed grains with markers): %w", h.Flags, ErrUnsupported)
	case h.Flags&flagNewlineTest != 0 && h.Newline != newlineBytes:
		return fmt.Errorf("newline detection bytes %q altered (text-mode transfer?): %w", h.Newline[:], ErrMalformed)
	case h.CompressAlgorithm != vmdkDeflate:
		return fmt.Errorf("compression algorithm %d: %w", h.CompressAlgorithm, ErrUnsupported)
	case h.GrainSize != vmdkGrainSect:
		return fmt.Errorf("grain size %d sectors (only %d is accepted): %w", h.GrainSize, vmdkGrainSect, ErrUnsupported)
	case h.NumGTEsPerGT != vmdkGTEs:
		return fmt.Errorf("%d entries per grain table (want %d): %w", h.NumGTEsPerGT, vmdkGTEs, ErrUnsupported)
	case h.Capacity == 0:
		return fmt.Errorf("capacity 0: %w", ErrMalformed)
	case h.Capacity > uint64(d.opts.MaxCapacity)/sectorSize:
		return fmt.Errorf("capacity %d sectors exceeds the limit of %d bytes: %w", h.Capacity, d.opts.MaxCapacity, ErrLimit)
	case h.DescriptorOffset != vmdkDescOffset:
		return fmt.Errorf("descriptor at sector %d (want %d): %w", h.DescriptorOffset, vmdkDescOffset, ErrUnsupported)
	case h.DescriptorSize == 0 || h.DescriptorSize > vmdkMaxDescSect:
		return fmt.Errorf("descriptor of %d sectors (1 to %d): %w", h.DescriptorSize, vmdkMaxDescSect, ErrMalformed)
	case h.UncleanShutdown != 0:
		return fmt.Errorf("unclean shutdown flag set: %w", ErrMalformed)
	}
	grains := (h.Capacity + vmdkGrainSect - 1) / vmdkGrainSect
	d.gts = (grains + vmdkGTEs - 1) / vmdkGTEs
	d.gdSectors = (d.gts*4 + sectorSize - 1) / sectorSize
	d.descEnd = h.DescriptorOffset + h.DescriptorSize
	// Room for two directories with all their tables, aligned to a grain.
	maxOverhead := d.descEnd + 2*(d.gdSectors+d.gts*vmdkGTSectors) + vmdkGrainSect
	if h.OverHead < d.descEnd || h.OverHead > maxOverhead {
		return fmt.Errorf("grains start at sector %d (want %d to %d): %w", h.OverHead, d.descEnd, maxOverhead, ErrMalformed)
	}
	inOverhead := func(at uint64) bool {
		return at >= d.descEnd && at <= h.OverHead-d.gdSectors && h.OverHead >= d.gdSectors
	}
	if h.GDOffset == vmdkGDAtEnd {
		if h.Flags&flagRGD != 0 || h.RGDOffset != 0 {
			return fmt.Errorf("redundant grain directory with the directory at the end: %w", ErrUnsupported)
		}
		return nil
	}
	if !inOverhead(h.GDOffset) {
		return fmt.Errorf("grain directory at sector %d, outside sectors %d to %d: %w", h.GDOffset, d.descEnd, h.OverHead, ErrMalformed)
	}
	if h.Flags&flagRGD == 0 {
		if h.RGDOffset != 0 {
			return fmt.Errorf("redundant grain directory offset %d without its flag: %w", h.RGDOffset, ErrMalformed)
		}
		return nil
	}
	if !inOverhead(h.RGDOffset) {
		return fmt.Errorf("redundant grain directory at sector %d, outside sectors %d to %d: %w", h.RGDOffset, d.descEnd, h.OverHead, ErrMalformed)
	}
	if h.RGDOffset < h.GDOffset+d.gdSectors && h.GDOffset < h.RGDOffset+d.gdSectors {
		return fmt.Errorf("grain directories at sectors %d and %d overlap: %w", h.GDOffset, h.RGDOffset, ErrMalformed)
	}
	return nil
}

// directory is one grain directory and what its grain tables hold: for
// each table with grains, a digest of its (index, sector) entries.
type directory struct {
	at      uint64
	entries []uint32
	tables  map[uint64][32]byte
	grains  int64 // non-zero entries over all tables
}

// gtDigest hashes a grain table's non-zero entries (index in the table,
// sector); ok is false for an empty table. Every entry must point between
// lo and hi (sectors, hi exclusive).
func gtDigest(raw []byte, lo, hi uint64) (sum [32]byte, n int64, err error) {
	h := sha256.New()
	var b [8]byte
	for j := range vmdkGTEs {
		e := binary.LittleEndian.Uint32(raw[4*j:])
		if e == 0 {
			continue
		}
		if uint64(e) < lo || uint64(e) >= hi {
			return sum, 0, fmt.Errorf("grain table entry %d points to sector %d, outside %d to %d: %w", j, e, lo, hi, ErrMalformed)
		}
		binary.LittleEndian.PutUint32(b[0:], uint32(j))
		binary.LittleEndian.PutUint32(b[4:], e)
		h.Write(b[:])
		n++
	}
	copy(sum[:], h.Sum(nil))
	return sum, n, nil
}

// region is a directory or a grain table in the embedded metadata.
type region struct {
	at, sectors uint64
	dir         int   // which directory
	table       int64 // -1 for the directory itself
}

// readEmbedded reads the metadata between the descriptor and the first
// grain: the directories the header names and the tables they point to.
// Each table must come after its directory (as every writer lays them
// out), so the input is read once, in order.
func (d *VMDKReader) readEmbedded() ([]*directory, error) {
	h := d.hdr
	if h.GDOffset == vmdkGDAtEnd {
		return nil, d.skip(h.OverHead-d.descEnd, "space before the first grain")
	}
	dirs := []*directory{{at: h.GDOffset, tables: map[uint64][32]byte{}}}
	pending := []region{{at: h.GDOffset, sectors: d.gdSectors, table: -1}}
	if h.Flags&flagRGD != 0 {
		dirs = append(dirs, &directory{at: h.RGDOffset, tables: map[uint64][32]byte{}})
		pending = append(pending, region{at: h.RGDOffset, sectors: d.gdSectors, dir: 1, table: -1})
	}
	sort.Slice(pending, func(i, j int) bool { return pending[i].at < pending[j].at })
	buf := make([]byte, max(d.gdSectors, vmdkGTSectors)*sectorSize)
	for len(pending) > 0 {
		r := pending[0]
		pending = pending[1:]
		if r.at < d.sector() {
			return nil, fmt.Errorf("metadata at sector %d overlaps other metadata or precedes its directory: %w", r.at, ErrMalformed)
		}
		if err := d.skip(r.at-d.sector(), "metadata"); err != nil {
			return nil, err
		}
		raw := buf[:r.sectors*sectorSize]
		if err := d.read(raw, "grain directory or table"); err != nil {
			return nil, err
		}
		dir := dirs[r.dir]
		if r.table >= 0 {
			sum, n, err := gtDigest(raw, h.OverHead, math.MaxUint32+1)
			if err != nil {
				return nil, err
			}
			if n > 0 {
				dir.tables[uint64(r.table)] = sum
				dir.grains += n
			}
			continue
		}
		dir.entries = make([]uint32, d.gts)
		var added []region
		for k := range dir.entries {
			e := binary.LittleEndian.Uint32(raw[4*k:])
			dir.entries[k] = e
			if e == 0 {
				continue
			}
			if uint64(e) < d.sector() || uint64(e)+vmdkGTSectors > h.OverHead {
				return nil, fmt.Errorf("grain directory at %d: table %d at sector %d, outside sectors %d to %d: %w",
					r.at, k, e, d.sector(), h.OverHead, ErrMalformed)
			}
			added = append(added, region{at: uint64(e), sectors: vmdkGTSectors, dir: r.dir, table: int64(k)})
		}
		if !isZero(raw[4*d.gts:]) {
			return nil, fmt.Errorf("grain directory at %d: data after its last entry: %w", r.at, ErrMalformed)
		}
		pending = append(pending, added...)
		sort.SliceStable(pending, func(i, j int) bool { return pending[i].at < pending[j].at })
	}
	if err := d.skip(h.OverHead-d.sector(), "space before the first grain"); err != nil {
		return nil, err
	}
	return dirs, nil
}

// streamState is what CopyTo learns from the markers after the embedded
// metadata.
type streamState struct {
	lastLBA   int64
	table     int64 // table of the grains being hashed, -1 before any
	hash      hash.Hash
	grainSums map[uint64][32]byte // per table: digest of its grains
	gtAt      map[uint64]*gtSeen  // footer layout: tables by sector
	gd        []uint32            // footer layout: the directory
	gdAt      uint64
	footer    bool
	eos       bool
}

type gtSeen struct {
	sum  [32]byte
	n    int64
	used bool
}

// CopyTo reads the rest of the VMDK and writes its guest data into w at
// the guest offsets; grains that decompress to zeros are not written, so
// w must read as zeros where nothing is written (a new sparse file).
// ctx is checked between grains.
func (d *VMDKReader) CopyTo(ctx context.Context, w io.WriterAt) (VMDKInfo, error) {
	if _, err := d.Header(); err != nil {
		return VMDKInfo{}, err
	}
	if d.copied {
		return VMDKInfo{}, fmt.Errorf("vmdk: CopyTo called twice: %w", ErrInvalid)
	}
	d.copied = true
	dirs, err := d.readEmbedded()
	if err != nil {
		return VMDKInfo{}, d.fail(err)
	}
	st := &streamState{lastLBA: -1, table: -1, hash: sha256.New(), grainSums: map[uint64][32]byte{}, gtAt: map[uint64]*gtSeen{}}
	if err := d.readMarkers(ctx, w, st); err != nil {
		return VMDKInfo{}, d.fail(err)
	}
	if err := d.verify(dirs, st); err != nil {
		return VMDKInfo{}, d.fail(err)
	}
	info := d.info
	info.Descriptor = maps.Clone(d.info.Descriptor)
	return info, nil
}

// readMarkers reads grain and metadata markers up to the end of the
// stream.
func (d *VMDKReader) readMarkers(ctx context.Context, w io.WriterAt, st *streamState) error {
	atEnd := d.hdr.GDOffset == vmdkGDAtEnd
	if d.comp == nil {
		d.comp = make([]byte, 2*vmdkGrainBytes+2*sectorSize)
		d.grain = make([]byte, vmdkGrainBytes)
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		at := d.sector()
		m := d.comp[:sectorSize]
		n, err := io.ReadFull(d.r, m)
		d.pos += int64(n)
		if errors.Is(err, io.EOF) {
			return nil // the end without an end-of-stream marker; verify decides
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("marker at byte %d: %w", d.pos, ErrTruncated)
		}
		if err != nil {
			return fmt.Errorf("reading marker at byte %d: %w", d.pos, err)
		}
		val := binary.LittleEndian.Uint64(m[0:])
		size := binary.LittleEndian.Uint32(m[8:])
		if size != 0 {
			if st.gd != nil || st.footer {
				return fmt.Errorf("grain at sector %d after the grain directory or footer: %w", at, ErrMalformed)
			}
			if err := d.readGrain(w, st, at, val, size); err != nil {
				return err
			}
			continue
		}
		typ := binary.LittleEndian.Uint32(m[12:])
		switch typ {
		case markerEOS:
			if val != 0 {
				return fmt.Errorf("end-of-stream marker at sector %d with length %d: %w", at, val, ErrMalformed)
			}
			st.eos = true
			return d.trailing()
		case markerGT:
			if !atEnd || st.gd != nil || val != vmdkGTSectors || len(st.gtAt) >= int(d.gts) {
				return fmt.Errorf("grain table marker at sector %d (length %d) out of place: %w", at, val, ErrMalformed)
			}
			raw := d.comp[:vmdkGTSectors*sectorSize]
			if err := d.read(raw, "grain table"); err != nil {
				return err
			}
			sum, n, err := gtDigest(raw, d.hdr.OverHead, at)
			if err != nil {
				return err
			}
			st.gtAt[at+1] = &gtSeen{sum: sum, n: n}
		case markerGD:
			if !atEnd || st.gd != nil || val != d.gdSectors {
				return fmt.Errorf("grain directory marker at sector %d (length %d) out of place: %w", at, val, ErrMalformed)
			}
			raw := make([]byte, d.gdSectors*sectorSize)
			if err := d.read(raw, "grain directory"); err != nil {
				return err
			}
			st.gd = make([]uint32, d.gts)
			for k := range st.gd {
				st.gd[k] = binary.LittleEndian.Uint32(raw[4*k:])
			}
			if !isZero(raw[4*d.gts:]) {
				return fmt.Errorf("grain directory: data after its last entry: %w", ErrMalformed)
			}
			st.gdAt = at + 1
		case markerFooter:
			if st.footer || val != 1 || (atEnd && st.gd == nil) {
				return fmt.Errorf("footer marker at sector %d (length %d) out of place: %w", at, val, ErrMalformed)
			}
			raw := d.comp[:sectorSize]
			if err := d.read(raw, "footer"); err != nil {
				return err
			}
			f, err := unmarshalHeader(raw)
			if err != nil {
				return fmt.Errorf("footer: %w", err)
			}
			want := d.hdr
			if atEnd {
				want.GDOffset = st.gdAt
			}
			if f != want {
				return fmt.Errorf("footer differs from the header (directory at %d, footer says %d): %w", st.gdAt, f.GDOffset, ErrMalformed)
			}
			st.footer = true
		default:
			return fmt.Errorf("marker of unknown type %d at sector %d: %w", typ, at, ErrMalformed)
		}
	}
}

// readGrain reads the rest of a grain marker whose first sector is in
// d.comp, decompresses it and writes it out.
func (d *VMDKReader) readGrain(w io.WriterAt, st *streamState, at, lba uint64, size uint32) error {
	capSect := d.hdr.Capacity
	switch {
	case lba%vmdkGrainSect != 0 || lba >= capSect:
		return fmt.Errorf("grain at sector %d for LBA %d: not aligned to a grain or beyond the capacity of %d sectors: %w", at, lba, capSect, ErrMalformed)
	case int64(lba) <= st.lastLBA:
		return fmt.Errorf("grain at sector %d for LBA %d after LBA %d: grains must ascend: %w", at, lba, st.lastLBA, ErrMalformed)
	case size > 2*vmdkGrainBytes:
		return fmt.Errorf("grain at sector %d: %d compressed bytes, more than twice a grain: %w", at, size, ErrMalformed)
	case at > math.MaxUint32:
		return fmt.Errorf("grain at sector %d: beyond what grain tables address: %w", at, ErrMalformed)
	}
	total := grainMarkerLen + int(size)
	total += padTo(total)
	if total > sectorSize {
		if err := d.read(d.comp[sectorSize:total], "grain"); err != nil {
			return err
		}
	}
	want := int(min(vmdkGrainSect, capSect-lba)) * sectorSize
	n, err := d.inflate(d.comp[grainMarkerLen : grainMarkerLen+int(size)])
	if err != nil {
		return fmt.Errorf("grain at sector %d for LBA %d: %w", at, lba, err)
	}
	if n != vmdkGrainBytes && n != want {
		return fmt.Errorf("grain at sector %d for LBA %d decompresses to %d bytes, want %d: %w", at, lba, n, want, ErrMalformed)
	}
	data := d.grain[:want]
	if !isZero(data) {
		if _, err := w.WriteAt(data, int64(lba)*sectorSize); err != nil {
			return fmt.Errorf("write grain for LBA %d: %w", lba, err)
		}
		d.info.DataBytes += int64(want)
	}
	d.info.Grains++
	st.lastLBA = int64(lba)
	g := lba / vmdkGrainSect
	if t := int64(g / vmdkGTEs); t != st.table {
		st.closeTable()
		st.table = t
	}
	var b [8]byte
	binary.LittleEndian.PutUint32(b[0:], uint32(g%vmdkGTEs))
	binary.LittleEndian.PutUint32(b[4:], uint32(at))
	st.hash.Write(b[:])
	return nil
}

// closeTable records the digest of the grains of the table being hashed.
func (st *streamState) closeTable() {
	if st.table >= 0 {
		var sum [32]byte
		copy(sum[:], st.hash.Sum(nil))
		st.grainSums[uint64(st.table)] = sum
	}
	st.hash.Reset()
	st.table = -1
}

// inflate decompresses one zlib stream into d.grain and returns its
// length. The stream must end within one grain, with a valid checksum,
// exactly at the end of comp.
func (d *VMDKReader) inflate(comp []byte) (int, error) {
	d.br.Reset(comp)
	if d.zr == nil {
		zr, err := zlib.NewReader(&d.br)
		if err != nil {
			return 0, fmt.Errorf("zlib: %v: %w", err, ErrMalformed)
		}
		d.zr = zr
	} else if err := d.zr.(zlib.Resetter).Reset(&d.br, nil); err != nil {
		return 0, fmt.Errorf("zlib: %v: %w", err, ErrMalformed)
	}
	n := 0
	for idle := 0; ; {
		dst := d.grain[n:]
		if len(dst) == 0 {
			var one [1]byte
			dst = one[:]
		}
		m, err := d.zr.Read(dst)
		if len(d.grain[n:]) == 0 && m > 0 {
			return 0, fmt.Errorf("decompresses to more than one grain: %w", ErrMalformed)
		}
		n += m
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("zlib: %v: %w", err, ErrMalformed)
		}
		if m == 0 {
			if idle++; idle > 100 {
				return 0, fmt.Errorf("zlib: no progress: %w", ErrMalformed)
			}
		}
	}
	if d.br.Len() != 0 {
		return 0, fmt.Errorf("%d bytes after the zlib stream: %w", d.br.Len(), ErrMalformed)
	}
	return n, nil
}

// trailing accepts zero padding after the end-of-stream marker, up to a
// bound, and nothing else.
func (d *VMDKReader) trailing() error {
	buf := d.comp[:sectorSize]
	var total int64
	for {
		n, err := d.r.Read(buf)
		total += int64(n)
		d.pos += int64(n)
		if !isZero(buf[:n]) {
			return fmt.Errorf("data after the end-of-stream marker at byte %d: %w", d.pos-int64(n), ErrMalformed)
		}
		if total > maxTrailingZeros {
			return fmt.Errorf("more than %d bytes after the end-of-stream marker: %w", maxTrailingZeros, ErrMalformed)
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading after the end-of-stream marker: %w", err)
		}
	}
}

// verify checks that the directories and tables point at exactly the
// grains the stream held.
func (d *VMDKReader) verify(dirs []*directory, st *streamState) error {
	st.closeTable()
	if d.hdr.GDOffset == vmdkGDAtEnd {
		if !st.eos || st.gd == nil || !st.footer {
			return fmt.Errorf("the stream ends at byte %d before its directory, footer and end-of-stream marker: %w", d.pos, ErrTruncated)
		}
		for k, e := range st.gd {
			got, has := st.grainSums[uint64(k)]
			if e == 0 {
				if has {
					return fmt.Errorf("grains of table %d are in no grain table: %w", k, ErrMalformed)
				}
				continue
			}
			gt, ok := st.gtAt[uint64(e)]
			if !ok {
				return fmt.Errorf("grain directory entry %d points to sector %d, not a grain table: %w", k, e, ErrMalformed)
			}
			if gt.n > 0 && gt.used {
				return fmt.Errorf("grain table at sector %d used twice: %w", e, ErrMalformed)
			}
			gt.used = true
			if (gt.n > 0) != has || (has && gt.sum != got) {
				return fmt.Errorf("grain table %d does not point at the grains the stream holds: %w", k, ErrMalformed)
			}
		}
		for at, gt := range st.gtAt {
			if gt.n > 0 && !gt.used {
				return fmt.Errorf("grain table at sector %d is in no directory: %w", at, ErrMalformed)
			}
		}
		return nil
	}
	for _, dir := range dirs {
		for k, e := range dir.entries {
			got, has := st.grainSums[uint64(k)]
			want, wants := dir.tables[uint64(k)]
			if e == 0 && has || e != 0 && (has != wants || got != want) {
				if !st.eos && d.info.Grains < dir.grains {
					return fmt.Errorf("the stream ends at byte %d with %d of %d grains: %w", d.pos, d.info.Grains, dir.grains, ErrTruncated)
				}
				return fmt.Errorf("grain directory at sector %d, table %d, does not point at the grains the stream holds: %w", dir.at, k, ErrMalformed)
			}
		}
	}
	return nil
}
