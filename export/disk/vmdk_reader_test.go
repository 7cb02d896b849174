package disk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// grainOf returns one grain of recognisable data.
func grainOf(b byte, n int) []byte { return bytes.Repeat([]byte{b, b ^ 0x5a, 1, 2}, n/4) }

// craftedDisk is a disk of 2,000 sectors... with grains in two tables.
func craftedGrains(t testing.TB) (capacity uint64, grains []craftGrain, want []byte) {
	capacity = 600*vmdkGrainSect + 64 // two grain tables, a partial last grain
	want = make([]byte, capacity*sectorSize)
	for _, g := range []struct {
		idx uint64
		b   byte
	}{{0, 1}, {3, 2}, {511, 3}, {512, 4}, {600, 5}} {
		n := min(vmdkGrainBytes, int(capacity-g.idx*vmdkGrainSect)*sectorSize)
		data := grainOf(g.b, n)
		copy(want[g.idx*vmdkGrainBytes:], data)
		grains = append(grains, craftGrain{lba: g.idx * vmdkGrainSect, payload: zgrain(t, data)})
	}
	return capacity, grains, want
}

func TestVMDKReaderCraftedLayouts(t *testing.T) {
	capacity, grains, want := craftedGrains(t)
	for _, l := range []layout{layoutFooter, layoutEmbedded, layoutRGD} {
		b := craft(capacity, grains, l)
		got, info, err := readVMDK(t, b, VMDKReaderOptions{})
		if err != nil {
			t.Fatalf("layout %d: %v", l, err)
		}
		if !bytes.Equal(got, want) || info.Grains != 5 || info.GDAtEnd != (l == layoutFooter) || info.CID != 0x1234abcd {
			t.Fatalf("layout %d: content equal %v, info %+v", l, bytes.Equal(got, want), info)
		}
		// qemu-img reads the crafted file the same way.
		if _, err := os.Stat("/usr/bin/qemu-img"); err == nil || os.Getenv("CI") == "true" {
			needQemu(t)
			dir := t.TempDir()
			p, raw := filepath.Join(dir, "c.vmdk"), filepath.Join(dir, "want.raw")
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(raw, want, 0o600); err != nil {
				t.Fatal(err)
			}
			check(t, p, "vmdk")
			sameContent(t, p, "vmdk", raw)
		}
	}
}

// TestVMDKReaderQemuFiles reads what qemu-img writes: its embedded layout
// with a redundant directory, partial last grains, an empty disk and a
// large sparse one.
func TestVMDKReaderQemuFiles(t *testing.T) {
	needQemu(t)
	for _, c := range []struct {
		size string
		cmds []string
	}{
		{"1M", nil},
		{"5121k", []string{"write -P 0x11 0 100k", "write -P 0x12 5000k 121k"}},
		{"64M", []string{"write -P 0x13 1M 3M", "write -P 0x14 33M 64k", "write -z 2M 64k"}},
		{"16G", []string{"write -P 0x15 0 64k", "write -P 0x16 9G 1M"}},
	} {
		dir := t.TempDir()
		img := filepath.Join(dir, "s.qcow2")
		tool(t, "qemu-img", "create", "-q", "-f", "qcow2", img, c.size)
		if len(c.cmds) > 0 {
			qemuIO(t, img, c.cmds...)
		}
		ref := filepath.Join(dir, "ref.vmdk")
		tool(t, "qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized", img, ref)
		readBackEqual(t, ref, openView(t, img))
	}
}

// mutation changes a valid file; want is the error class the reader must
// report.
type mutation struct {
	name string
	edit func(b []byte) []byte
	want error
}

// markerAt lists the byte offsets of the markers after the first grain.
func markersOf(b []byte, overhead int) (grains, meta []int) {
	for at := overhead; at+sectorSize <= len(b); {
		size := binary.LittleEndian.Uint32(b[at+8:])
		if size != 0 {
			grains = append(grains, at)
			at += grainMarkerLen + int(size) + padTo(grainMarkerLen+int(size))
			continue
		}
		meta = append(meta, at)
		n := int(binary.LittleEndian.Uint64(b[at:]))
		if binary.LittleEndian.Uint32(b[at+12:]) == markerEOS {
			break
		}
		at += sectorSize * (1 + n)
	}
	return grains, meta
}

func setDesc(old, new string) func([]byte) []byte {
	return func(b []byte) []byte {
		desc := b[sectorSize : sectorSize*(1+binary.LittleEndian.Uint64(b[36:]))]
		text := string(desc[:bytes.IndexByte(desc, 0)])
		text = strings.Replace(text, old, new, 1)
		clear(desc)
		copy(desc, text)
		return b
	}
}

func put32(off int, v uint32) func([]byte) []byte {
	return func(b []byte) []byte { binary.LittleEndian.PutUint32(b[off:], v); return b }
}

func put64(off int, v uint64) func([]byte) []byte {
	return func(b []byte) []byte { binary.LittleEndian.PutUint64(b[off:], v); return b }
}

func TestVMDKReaderRejects(t *testing.T) {
	capacity, grains, _ := craftedGrains(t)
	valid := craft(capacity, grains, layoutFooter)
	descEnd := 1 + int(binary.LittleEndian.Uint64(valid[36:]))
	gs, meta := markersOf(valid, descEnd*sectorSize)
	gt0, gd, footer, eos := meta[0], meta[len(meta)-3], meta[len(meta)-2], meta[len(meta)-1]
	bomb := zgrain(t, make([]byte, 4<<20))
	short := zgrain(t, make([]byte, 1000))
	swapped := slices.Clone(grains)
	swapped[1], swapped[2] = swapped[2], swapped[1]
	dup := append(slices.Clone(grains[:2]), grains[1:]...)
	withPayload := func(i int, p []byte) []craftGrain {
		g := slices.Clone(grains)
		g[i].payload = p
		return g
	}
	muts := []mutation{
		{"magic", func(b []byte) []byte { b[0] ^= 1; return b }, ErrMalformed},
		{"version 4", put32(4, 4), ErrUnsupported},
		{"unknown flag", put32(8, flagNewlineTest|flagCompressed|flagMarkers|1<<5), ErrUnsupported},
		{"no markers", put32(8, flagNewlineTest|flagCompressed), ErrUnsupported},
		{"newline bytes", func(b []byte) []byte { b[75] = '\n'; return b }, ErrMalformed},
		{"capacity over the limit", put64(12, 1<<40), ErrLimit},
		{"capacity 0", put64(12, 0), ErrMalformed},
		{"grain size 64", put64(20, 64), ErrUnsupported},
		{"descriptor at 2", put64(28, 2), ErrUnsupported},
		{"descriptor size 0", put64(36, 0), ErrMalformed},
		{"descriptor size 129", put64(36, 129), ErrMalformed},
		{"GTEs per GT 256", put32(44, 256), ErrUnsupported},
		{"overhead in the descriptor", put64(64, 5), ErrMalformed},
		{"overhead huge", put64(64, 1<<40), ErrMalformed},
		{"rgd with gd at end", put64(48, 30), ErrUnsupported},
		{"unclean shutdown", func(b []byte) []byte { b[72] = 1; return b }, ErrMalformed},
		{"compression 2", func(b []byte) []byte { b[77] = 2; return b }, ErrUnsupported},
		{"create type", setDesc(`"streamOptimized"`, `"monolithicSparse"`), ErrUnsupported},
		{"extent capacity", setDesc("RW 76864 ", "RW 76865 "), ErrMalformed},
		{"extent flat", setDesc(" SPARSE ", " FLAT "), ErrUnsupported},
		{"two extents", setDesc("RW 76864 SPARSE \"crafted.vmdk\"", "RW 76864 SPARSE \"crafted.vmdk\"\nRW 1 SPARSE \"x\""), ErrUnsupported},
		{"no extent", setDesc("RW 76864 SPARSE \"crafted.vmdk\"", ""), ErrMalformed},
		{"parent", setDesc("parentCID=ffffffff", "parentCID=12345678"), ErrUnsupported},
		{"bad CID", setDesc("CID=1234abcd", "CID=12x4abcd"), ErrMalformed},
		{"garbage line", setDesc("# Extent description", "this is not a descriptor line"), ErrMalformed},
		{"control character", setDesc("# Extent description", "# Extent\x01description"), ErrMalformed},
		{"duplicate key", setDesc("version=1", "version=1\nversion=1"), ErrMalformed},
		{"not UTF-8", setDesc("# Extent description", "# \xff"), ErrMalformed},
		{"data after the NUL", func(b []byte) []byte { b[sectorSize*descEnd-1] = 'x'; return b }, ErrMalformed},
		{"grain LBA unaligned", put64(gs[1], 3*vmdkGrainSect+1), ErrMalformed},
		{"grain LBA beyond capacity", put64(gs[4], capacity+vmdkGrainSect), ErrMalformed},
		{"grain LBA moved", put64(gs[1], 4*vmdkGrainSect), ErrMalformed},
		{"grain size huge", put32(gs[0]+8, 3*vmdkGrainBytes), ErrMalformed},
		{"grain size short", put32(gs[0]+8, 10), ErrMalformed},
		{"grain data flipped", func(b []byte) []byte { b[gs[0]+grainMarkerLen+20] ^= 0x40; return b }, ErrMalformed},
		{"grain table entry", put32((gt0+sectorSize)+4*3, uint32(gs[2]/sectorSize)), ErrMalformed},
		{"grain table entry zeroed", put32((gt0+sectorSize)+4*3, 0), ErrMalformed},
		{"grain directory entry", put32(gd+sectorSize, 7), ErrMalformed},
		{"grain directory entry zeroed", put32(gd+sectorSize+4, 0), ErrMalformed},
		{"grain directory padding", func(b []byte) []byte { b[gd+2*sectorSize-1] = 1; return b }, ErrMalformed},
		{"footer directory offset", put64(footer+sectorSize+56, 99), ErrMalformed},
		{"footer capacity", put64(footer+sectorSize+12, capacity-1), ErrMalformed},
		{"footer marker length", put64(footer, 2), ErrMalformed},
		{"unknown marker type", put32(eos+12, 7), ErrMalformed},
		{"EOS with a length", put64(eos, 1), ErrMalformed},
		{"data after EOS", func(b []byte) []byte { return append(b, 1) }, ErrMalformed},
		{"too many zeros after EOS", func(b []byte) []byte { return append(b, make([]byte, maxTrailingZeros+512)...) }, ErrMalformed},
		{"no EOS", func(b []byte) []byte { return b[:eos] }, ErrTruncated},
		{"no footer", func(b []byte) []byte { return append(b[:footer], metaMarker(0, markerEOS)...) }, ErrTruncated},
		{"grain after the directory", func(b []byte) []byte {
			return slices.Concat(b[:gd+2*sectorSize], b[gs[4]:gt0], b[footer:])
		}, ErrMalformed},
		{"zip bomb", func([]byte) []byte { return craft(capacity, withPayload(0, bomb), layoutFooter) }, ErrMalformed},
		{"short grain", func([]byte) []byte { return craft(capacity, withPayload(1, short), layoutFooter) }, ErrMalformed},
		{"bytes after the zlib stream", func([]byte) []byte {
			return craft(capacity, withPayload(1, append(slices.Clone(grains[1].payload), 0)), layoutFooter)
		}, ErrMalformed},
		{"not zlib", func([]byte) []byte { return craft(capacity, withPayload(1, []byte("hello, world")), layoutFooter) }, ErrMalformed},
		{"descending grains", func([]byte) []byte { return craft(capacity, swapped, layoutFooter) }, ErrMalformed},
		{"a grain twice", func([]byte) []byte { return craft(capacity, dup, layoutFooter) }, ErrMalformed},
		{"embedded table entry", func([]byte) []byte {
			b := craft(capacity, grains, layoutEmbedded)
			at := (descEnd + 1) * sectorSize // the first table
			binary.LittleEndian.PutUint32(b[at+4*3:], binary.LittleEndian.Uint32(b[at+4*3:])+1)
			return b
		}, ErrMalformed},
		{"embedded directory into the descriptor", func([]byte) []byte {
			b := craft(capacity, grains, layoutEmbedded)
			binary.LittleEndian.PutUint32(b[descEnd*sectorSize:], 1)
			return b
		}, ErrMalformed},
		{"embedded tables overlap", func([]byte) []byte {
			b := craft(capacity, grains, layoutEmbedded)
			at := descEnd * sectorSize
			binary.LittleEndian.PutUint32(b[at+4:], binary.LittleEndian.Uint32(b[at:])+1)
			return b
		}, ErrMalformed},
		{"redundant directory differs", func([]byte) []byte {
			b := craft(capacity, grains, layoutRGD)
			at := (descEnd + 1) * sectorSize // the redundant directory's first table
			binary.LittleEndian.PutUint32(b[at+4*3:], 0)
			return b
		}, ErrMalformed},
		{"embedded, last grain missing", func([]byte) []byte {
			b := craft(capacity, grains, layoutRGD)
			g, _ := markersOf(b, int(binary.LittleEndian.Uint64(b[64:]))*sectorSize)
			return b[:g[len(g)-1]]
		}, ErrTruncated},
	}
	for _, m := range muts {
		t.Run(m.name, func(t *testing.T) {
			b := m.edit(slices.Clone(valid))
			_, err := readOnly(t, b, VMDKReaderOptions{MaxCapacity: 1 << 30})
			if !errors.Is(err, m.want) {
				t.Fatalf("got %v, want %v", err, m.want)
			}
		})
	}
	// Zeros after the end-of-stream marker are padding.
	if _, err := readOnly(t, append(slices.Clone(valid), make([]byte, 4096)...), VMDKReaderOptions{}); err != nil {
		t.Fatalf("zero padding after EOS: %v", err)
	}
}

// TestVMDKReaderTruncated cuts valid files at every sector and at points
// inside sectors: each cut is ErrTruncated (or, for qemu-img's layout cut
// inside its zero padding, a complete file).
func TestVMDKReaderTruncated(t *testing.T) {
	capacity, grains, _ := craftedGrains(t)
	for _, l := range []layout{layoutFooter, layoutEmbedded, layoutRGD} {
		b := craft(capacity, grains, l)
		step := 97
		if raceEnabled {
			step = 397
		}
		for cut := 0; cut < len(b); cut += step {
			_, err := readOnly(t, b[:cut], VMDKReaderOptions{})
			if !errors.Is(err, ErrTruncated) {
				t.Fatalf("layout %d cut at %d of %d: %v, want ErrTruncated", l, cut, len(b), err)
			}
		}
	}
}

// TestVMDKRoundTrip is the property: any sparse source, written by
// NewStreamOptimizedVMDK and read by VMDKReader, comes back equal; and the
// output does not depend on the number of workers.
func TestVMDKRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	cases := 25
	if raceEnabled {
		cases = 5
	}
	for i := range cases {
		size := (1 + rng.Int64N(3<<20/sectorSize)) * sectorSize
		m := randomSparse(rng, size, rng.IntN(8))
		opts := VMDKOptions{Level: 1 + rng.IntN(9), ChunkSize: (1 + rng.IntN(64)) * 4096, Workers: 1 + rng.IntN(4)}
		s, err := NewStreamOptimizedVMDK(m, opts)
		if err != nil {
			t.Fatal(err)
		}
		b, sums := streamBytes(t, s)
		got, info, err := readVMDK(t, b, VMDKReaderOptions{})
		if err != nil {
			t.Fatalf("case %d (size %d, %d extents, %+v): %v", i, size, len(m.ext), opts, err)
		}
		if !bytes.Equal(got, m.data) || info.Capacity != size {
			t.Fatalf("case %d (size %d, %+v): content differs", i, size, opts)
		}
		opts.Workers = 1 + opts.Workers%3
		s2, err := NewStreamOptimizedVMDK(m, opts)
		if err != nil {
			t.Fatal(err)
		}
		if b2, sums2 := streamBytes(t, s2); !bytes.Equal(b, b2) || !slices.Equal(sums, sums2) {
			t.Fatalf("case %d: output depends on the number of workers", i)
		}
	}
}
