package disk

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"testing"
)

// This file builds streamOptimized VMDKs by hand, in the three layouts the
// reader accepts, with grains whose payload the test chooses: the way to
// reach what no real writer produces.

// layout is where a crafted file keeps its grain directory.
type layout int

const (
	layoutFooter   layout = iota // after the grains, with a footer (the stream layout; what we write)
	layoutEmbedded               // before the grains, right after the descriptor (open-vmdk)
	layoutRGD                    // before the grains, with a redundant directory (qemu-img)
)

// craftGrain is one grain: its LBA (sectors) and its marker payload (a zlib
// stream, or anything at all).
type craftGrain struct {
	lba     uint64
	payload []byte
}

// zgrain compresses data as a grain payload.
func zgrain(t testing.TB, data []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	w, err := zlib.NewWriterLevel(&b, zlib.BestCompression)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// craft builds a VMDK of capacity sectors holding grains (in the order
// given) in layout l.
func craft(capacity uint64, grains []craftGrain, l layout) []byte {
	nGrains := (capacity + vmdkGrainSect - 1) / vmdkGrainSect
	gts := (nGrains + vmdkGTEs - 1) / vmdkGTEs
	gdSectors := (gts*4 + sectorSize - 1) / sectorSize
	// A descriptor just large enough, and in the footer layout grains
	// right after it, keep crafted files small (fuzz seeds).
	desc := renderDescriptor(0x1234abcd, capacity, "crafted.vmdk", "lsilogic", 4)
	descSectors := uint64(len(desc)+sectorSize-1) / sectorSize
	h := sparseHeader{
		Version: vmdkVersion, Flags: flagNewlineTest | flagCompressed | flagMarkers,
		Capacity: capacity, GrainSize: vmdkGrainSect, DescriptorOffset: 1, DescriptorSize: descSectors,
		NumGTEsPerGT: vmdkGTEs, GDOffset: vmdkGDAtEnd, Newline: newlineBytes, CompressAlgorithm: vmdkDeflate,
	}
	descEnd := 1 + descSectors
	// Embedded layouts: directories and all their tables between the
	// descriptor and the grains.
	var dirAt []uint64
	switch l {
	case layoutFooter:
		h.OverHead = descEnd
	case layoutEmbedded:
		dirAt = []uint64{descEnd}
		h.GDOffset = descEnd
		h.OverHead = descEnd + gdSectors + gts*vmdkGTSectors
	case layoutRGD:
		h.Flags |= flagRGD
		h.RGDOffset = descEnd
		h.GDOffset = descEnd + gdSectors + gts*vmdkGTSectors
		dirAt = []uint64{h.RGDOffset, h.GDOffset}
		h.OverHead = (h.GDOffset + gdSectors + gts*vmdkGTSectors + vmdkGrainSect - 1) / vmdkGrainSect * vmdkGrainSect
	}
	out := make([]byte, h.OverHead*sectorSize)
	copy(out, h.marshal())
	copy(out[sectorSize:], desc)
	gt := make([]uint32, gts*vmdkGTEs)
	for _, g := range grains {
		at := uint64(len(out)) / sectorSize
		if gi := g.lba / vmdkGrainSect; gi < uint64(len(gt)) {
			gt[gi] = uint32(at)
		}
		m := make([]byte, grainMarkerLen, grainMarkerLen+len(g.payload)+sectorSize)
		binary.LittleEndian.PutUint64(m, g.lba)
		binary.LittleEndian.PutUint32(m[8:], uint32(len(g.payload)))
		m = append(m, g.payload...)
		out = append(out, append(m, make([]byte, padTo(len(m)))...)...)
	}
	le := binary.LittleEndian
	if l != layoutFooter {
		for _, at := range dirAt {
			for k := range gts {
				tableAt := at + gdSectors + k*vmdkGTSectors
				le.PutUint32(out[at*sectorSize+4*k:], uint32(tableAt))
				for j := range uint64(vmdkGTEs) {
					le.PutUint32(out[tableAt*sectorSize+4*j:], gt[k*vmdkGTEs+j])
				}
			}
		}
		return append(out, metaMarker(0, markerEOS)...)
	}
	gd := make([]uint32, gts)
	for k := range gts {
		used := false
		for _, e := range gt[k*vmdkGTEs : (k+1)*vmdkGTEs] {
			used = used || e != 0
		}
		if !used {
			continue
		}
		out = append(out, metaMarker(vmdkGTSectors, markerGT)...)
		gd[k] = uint32(len(out) / sectorSize)
		for _, e := range gt[k*vmdkGTEs : (k+1)*vmdkGTEs] {
			out = le.AppendUint32(out, e)
		}
	}
	out = append(out, metaMarker(gdSectors, markerGD)...)
	footer := h
	footer.GDOffset = uint64(len(out) / sectorSize)
	for _, e := range gd {
		out = le.AppendUint32(out, e)
	}
	out = append(out, make([]byte, padTo(len(out)))...)
	out = append(out, metaMarker(1, markerFooter)...)
	out = append(out, footer.marshal()...)
	return append(out, metaMarker(0, markerEOS)...)
}

// memTarget is an io.WriterAt into memory that refuses writes outside its
// size and overlapping or descending writes, the reader's promises.
type memTarget struct {
	buf  []byte
	next int64
}

func (m *memTarget) WriteAt(p []byte, off int64) (int, error) {
	if off < m.next || off+int64(len(p)) > int64(len(m.buf)) {
		return 0, fmt.Errorf("write [%d,+%d) below %d or beyond %d", off, len(p), m.next, len(m.buf))
	}
	m.next = off + int64(len(p))
	return copy(m.buf[off:], p), nil
}

// boundedTarget accepts writes within size without keeping them.
type boundedTarget struct {
	size, next int64
}

func (b *boundedTarget) WriteAt(p []byte, off int64) (int, error) {
	if off < b.next || off+int64(len(p)) > b.size {
		return 0, fmt.Errorf("write [%d,+%d) below %d or beyond %d", off, len(p), b.next, b.size)
	}
	b.next = off + int64(len(p))
	return len(p), nil
}

// readOnly parses a VMDK held in memory, checking where it writes but
// keeping nothing.
func readOnly(t testing.TB, b []byte, opts VMDKReaderOptions) (VMDKInfo, error) {
	t.Helper()
	d := NewVMDKReader(bytes.NewReader(b), opts)
	info, err := d.Header()
	if err != nil {
		return info, err
	}
	return d.CopyTo(testCtx(t), &boundedTarget{size: info.Capacity})
}

// readVMDK parses a VMDK held in memory into memory.
func readVMDK(t testing.TB, b []byte, opts VMDKReaderOptions) ([]byte, VMDKInfo, error) {
	t.Helper()
	d := NewVMDKReader(bytes.NewReader(b), opts)
	info, err := d.Header()
	if err != nil {
		return nil, info, err
	}
	if info.Capacity > 1<<30 {
		t.Fatalf("test input of capacity %d", info.Capacity)
	}
	m := &memTarget{buf: make([]byte, info.Capacity)}
	info, err = d.CopyTo(testCtx(t), m)
	return m.buf, info, err
}

// streamBytes collects a Stream into memory (gaps as zeros).
func streamBytes(t testing.TB, s Stream) ([]byte, []chunkSum) {
	t.Helper()
	var out []byte
	var sums []chunkSum
	for {
		c, err := s.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		if int64(len(out)) < c.End() {
			out = append(out, make([]byte, c.End()-int64(len(out)))...)
		}
		copy(out[c.Off:], c.Data)
		sums = append(sums, chunkSum{off: c.Off, n: len(c.Data)})
	}
	if s.Final() < int64(len(out)) {
		t.Fatalf("Final %d below the end of the last chunk %d", s.Final(), len(out))
	}
	return append(out, make([]byte, s.Final()-int64(len(out)))...), sums
}
