package disk

import (
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/volumes"
)

// exportQCOW2 streams src as qcow2 into dir/name, checks it with
// qemu-img check and returns the path and the chunks' identities.
func exportQCOW2(t testing.TB, src Source, opts QCOW2Options, path string) []chunkSum {
	t.Helper()
	s, err := NewQCOW2(src, opts)
	if err != nil {
		t.Fatalf("NewQCOW2: %v", err)
	}
	cs := int64(opts.ChunkSize)
	if cs == 0 {
		cs = DefaultChunkSize
	}
	sums := writeStream(t, s, path, cs)
	check(t, path, "qcow2")
	return sums
}

func TestQCOW2ScatteredData(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "src.qcow2")
	tool(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "64M")
	qemuIO(t, img,
		"write -P 0x11 0 4k",
		"write -P 0x12 100k 300k",
		"write -P 0 2M 128k", // allocated, but zeros
		"write -P 0x13 5M 1M",
		"write -z 7M 1M",
		"write -P 0x14 30M 64k",
		"write -P 0x15 40000k 8k",
		"write -P 0x16 65472k 64k")
	v := openView(t, img)
	out := filepath.Join(dir, "out.qcow2")
	a := exportQCOW2(t, v, QCOW2Options{}, out)
	sameContent(t, out, "qcow2", img)
	if st, err := os.Stat(out); err != nil {
		t.Fatal(err)
	} else {
		t.Logf("64 MiB source with %d KiB of data: %d-byte qcow2 in %d chunks", v.AllocatedBytes()>>10, st.Size(), len(a))
	}
	// Deterministic: the same chain gives the same chunks.
	b := exportQCOW2(t, openView(t, img), QCOW2Options{}, filepath.Join(dir, "again.qcow2"))
	if !slices.Equal(a, b) {
		t.Fatalf("two exports of the same chain differ")
	}
	// Smaller chunks: the same file, cut finer.
	small := filepath.Join(dir, "small.qcow2")
	exportQCOW2(t, v, QCOW2Options{ChunkSize: 128 << 10}, small)
	x, _ := os.ReadFile(out)
	y, _ := os.ReadFile(small)
	if !slices.Equal(x, y) {
		t.Fatalf("chunk size changed the file's bytes")
	}
}

func TestQCOW2ChainOfThree(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	mid := filepath.Join(dir, "mid.qcow2")
	top := filepath.Join(dir, "top.qcow2")
	tool(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "96M")
	qemuIO(t, base, "write -P 0x21 0 8M", "write -P 0x22 600k 4k", "write -P 0x23 95M 1M")
	tool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", mid)
	qemuIO(t, mid, "write -P 0x31 1M 1M", "write -z 3M 2M", "write -P 0x32 50M 200k")
	tool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", mid, "-F", "qcow2", top)
	qemuIO(t, top, "write -P 0x41 1536k 64k", "write -P 0x42 4M 512", "write -z 95M 512k")
	out := filepath.Join(dir, "out.qcow2")
	exportQCOW2(t, openView(t, top), QCOW2Options{}, out)
	sameContent(t, out, "qcow2", top)
	info := tool(t, "qemu-img", "info", out)
	if !contains(info, "compat: 1.1") || contains(info, "backing file") {
		t.Fatalf("not a standalone qcow2 v3 image:\n%s", info)
	}
}

// TestQCOW2Sparse16G streams a 16 GiB image holding 3 MiB and compares
// with qemu-img convert doing the same in the same run.
func TestQCOW2Sparse16G(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "big.qcow2")
	tool(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "16G")
	qemuIO(t, img, "write -P 0x51 0 1M", "write -P 0x52 8G 1M", "write -P 0x53 16383M 1M")
	start := time.Now()
	v := openView(t, img)
	out := filepath.Join(dir, "out.qcow2")
	exportQCOW2(t, v, QCOW2Options{}, out)
	ours := time.Since(start)
	start = time.Now()
	ref := filepath.Join(dir, "ref.qcow2")
	tool(t, "qemu-img", "convert", "-O", "qcow2", img, ref)
	theirs := time.Since(start)
	sameContent(t, out, "qcow2", img)
	oa, ob := fileSize(t, out)
	ra, rb := fileSize(t, ref)
	t.Logf("16 GiB, 3 MiB of data: ours %d bytes (%d allocated) in %v (OpenView+stream+write); qemu-img convert %d bytes (%d allocated) in %v",
		oa, ob, ours, ra, rb, theirs)
	if oa > 4<<20 {
		t.Fatalf("output of %d bytes for 3 MiB of data", oa)
	}
}

// TestQCOW2OddSizesAndUnalignedExtents uses an in-memory source whose size
// and extents are not cluster-aligned.
func TestQCOW2OddSizesAndUnalignedExtents(t *testing.T) {
	needQemu(t)
	rng := rand.New(rand.NewPCG(3, 4))
	for _, size := range []int64{512, 64<<10 + 512, 5<<20 + 3*512} {
		m := randomSparse(rng, size, 12)
		out := filepath.Join(t.TempDir(), "out.qcow2")
		exportQCOW2(t, m, QCOW2Options{}, out)
		sameContent(t, out, "qcow2", m.writeRaw(t))
	}
	// Across the 512 MiB that one L2 table maps, with a partial last
	// cluster.
	p := &piecesSource{size: 1<<30 + 1536}
	p.add(rng, 512<<20-70000, 200000)
	p.add(rng, 1<<30-4096, 5632)
	out := filepath.Join(t.TempDir(), "out.qcow2")
	exportQCOW2(t, p, QCOW2Options{}, out)
	sameContent(t, out, "qcow2", p.writeRaw(t))
}

// TestQCOW2ManyRefcountBlocks lays out an image whose data needs more
// than one refcount block (over 2 GiB of clusters) and more than one L1
// cluster. The data is zeros, so the file is all gaps but metadata and
// qemu-img check reads only what is there.
func TestQCOW2ManyRefcountBlocks(t *testing.T) {
	needQemu(t)
	z := &zeroSource{size: 5 << 40, ext: []volumes.Extent{{Start: 0, Length: 2100 << 20}, {Start: 4<<40 + 12345, Length: 1 << 20}}}
	s, err := NewQCOW2(z, QCOW2Options{})
	if err != nil {
		t.Fatal(err)
	}
	l := s.(*qcow2Stream).l
	if l.rbLen < 2 || l.l1Len < 2 {
		t.Fatalf("layout has %d refcount blocks and %d L1 clusters, want several", l.rbLen, l.l1Len)
	}
	out := filepath.Join(t.TempDir(), "big.qcow2")
	writeStream(t, s, out, DefaultChunkSize)
	check(t, out, "qcow2")
	if got := tool(t, "qemu-img", "map", "--output=json", out); !contains(got, `"start": 4398046511104, "length": 1114112`) {
		t.Fatalf("map of the export does not show the cluster at 4 TiB:\n%.2000s", got)
	}
}

func TestQCOW2RefusesBadSources(t *testing.T) {
	for _, m := range []*memSource{
		{data: nil},
		{data: make([]byte, 4096), ext: []volumes.Extent{{Start: 0, Length: 8192}}},
		{data: make([]byte, 4096), ext: []volumes.Extent{{Start: 1024, Length: 10}, {Start: 0, Length: 10}}},
		{data: make([]byte, 4096), ext: []volumes.Extent{{Start: 0, Length: 0}}},
	} {
		if _, err := NewQCOW2(m, QCOW2Options{}); !errors.Is(err, ErrInvalid) {
			t.Errorf("NewQCOW2(size %d, %v) = %v, want ErrInvalid", m.Size(), m.ext, err)
		}
	}
	if _, err := NewQCOW2(&memSource{data: make([]byte, 4096)}, QCOW2Options{ChunkSize: 1000}); !errors.Is(err, ErrInvalid) {
		t.Errorf("NewQCOW2 with a 1000-byte chunk size = %v, want ErrInvalid", err)
	}
}

// randomSparse returns a source of size bytes with about n random extents
// of random data (some of it zeros).
func randomSparse(rng *rand.Rand, size int64, n int) *memSource {
	m := &memSource{data: make([]byte, size)}
	var ext []volumes.Extent
	for range n {
		start := rng.Int64N(size)
		length := 1 + rng.Int64N(min(size-start, 3<<20))
		if rng.IntN(2) == 0 { // sector-aligned, as a real disk's
			start &^= 511
			length = max(512, length&^511)
			if start+length > size {
				continue
			}
		}
		ext = append(ext, volumes.Extent{Start: start, Length: length})
		if rng.IntN(5) > 0 {
			fill(rng, m.data[start:start+length])
		}
	}
	slices.SortFunc(ext, func(a, b volumes.Extent) int { return int(a.Start - b.Start) })
	for _, e := range ext {
		if k := len(m.ext); k > 0 && m.ext[k-1].End() >= e.Start {
			m.ext[k-1].Length = max(m.ext[k-1].End(), e.End()) - m.ext[k-1].Start
			continue
		}
		m.ext = append(m.ext, e)
	}
	return m
}

// fill writes half-compressible bytes: runs of one value with random ones.
func fill(rng *rand.Rand, p []byte) {
	for i := 0; i < len(p); {
		n := min(len(p)-i, 1+rng.IntN(64))
		if rng.IntN(2) == 0 {
			for j := range n {
				p[i+j] = byte(rng.Uint32())
			}
		} else {
			b := byte(rng.Uint32())
			for j := range n {
				p[i+j] = b
			}
		}
		i += n
	}
}

func contains(s, sub string) bool { return len(sub) == 0 || indexOf(s, sub) >= 0 }

func indexOf(s, sub string) int {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return i
		}
	}
	return -1
}
