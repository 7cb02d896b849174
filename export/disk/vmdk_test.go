package disk

import (
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// exportVMDK streams src as a streamOptimized VMDK into path, checks it
// with qemu-img check and returns the chunks' identities.
func exportVMDK(t testing.TB, src Source, opts VMDKOptions, path string) []chunkSum {
	t.Helper()
	s, err := NewStreamOptimizedVMDK(src, opts)
	if err != nil {
		t.Fatalf("NewStreamOptimizedVMDK: %v", err)
	}
	if s.Size() != -1 {
		t.Fatalf("Size = %d, want -1", s.Size())
	}
	cs := int64(opts.ChunkSize)
	if cs == 0 {
		cs = DefaultChunkSize
	}
	sums := writeStream(t, s, path, cs)
	check(t, path, "vmdk")
	return sums
}

func TestVMDKScatteredDataAgainstQemu(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "src.qcow2")
	tool(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "64M")
	qemuIO(t, img,
		"write -P 0x11 0 4k",
		"write -P 0x12 100k 300k",
		"write -P 0 2M 128k", // allocated zeros: no grain
		"write -P 0x13 5M 1M",
		"write -z 7M 1M",
		"write -P 0x14 30M 64k",
		"write -P 0x15 40000k 8k",
		"write -P 0x16 65472k 64k")
	tool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", img, "-F", "qcow2", filepath.Join(dir, "top.qcow2"))
	top := filepath.Join(dir, "top.qcow2")
	qemuIO(t, top, "write -P 0x17 36M 3M")
	v := openView(t, top)
	out := filepath.Join(dir, "out.vmdk")
	a := exportVMDK(t, v, VMDKOptions{}, out)
	sameContent(t, out, "vmdk", top)

	ref := filepath.Join(dir, "ref.vmdk")
	tool(t, "qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized", top, ref)
	sameContent(t, out, "vmdk", ref)
	oa, _ := fileSize(t, out)
	ra, _ := fileSize(t, ref)
	t.Logf("64 MiB, %d KiB of data: ours %d bytes in %d chunks, qemu-img convert %d bytes", v.AllocatedBytes()>>10, oa, len(a), ra)
	info := tool(t, "qemu-img", "info", out)
	if !contains(info, "create type: streamOptimized") {
		t.Fatalf("qemu-img info does not see a streamOptimized VMDK:\n%s", info)
	}

	// Deterministic, whatever the number of workers.
	b := exportVMDK(t, openView(t, top), VMDKOptions{Workers: 1}, filepath.Join(dir, "again.vmdk"))
	if !slices.Equal(a, b) {
		t.Fatalf("two exports of the same chain differ")
	}
	// Read back with our reader.
	readBackEqual(t, out, v)
}

func TestVMDKChainOfThreeAndSparse16G(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	mid := filepath.Join(dir, "mid.qcow2")
	top := filepath.Join(dir, "top.qcow2")
	tool(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "16G")
	qemuIO(t, base, "write -P 0x21 0 1M", "write -P 0x22 8G 1M")
	tool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", mid)
	qemuIO(t, mid, "write -P 0x31 512k 128k", "write -z 8G 512k")
	tool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", mid, "-F", "qcow2", top)
	qemuIO(t, top, "write -P 0x41 16383M 1M", "write -P 0x42 8G 4k")
	start := time.Now()
	v := openView(t, top)
	out := filepath.Join(dir, "out.vmdk")
	exportVMDK(t, v, VMDKOptions{}, out)
	ours := time.Since(start)
	start = time.Now()
	ref := filepath.Join(dir, "ref.vmdk")
	tool(t, "qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized", top, ref)
	theirs := time.Since(start)
	sameContent(t, out, "vmdk", top) // about 10 s: qemu-img reads a sparse VMDK slowly
	oa, _ := fileSize(t, out)
	ra, _ := fileSize(t, ref)
	t.Logf("16 GiB, 3-layer chain, %d KiB of data: ours %d bytes in %v, qemu-img convert %d bytes in %v",
		v.AllocatedBytes()>>10, oa, ours, ra, theirs)
	readBackEqual(t, out, v)
}

func TestVMDKOddSizesAndOptions(t *testing.T) {
	needQemu(t)
	rng := rand.New(rand.NewPCG(5, 6))
	for i, size := range []int64{512, 64<<10 + 512, 5<<20 + 3*512, 9<<20 + 1024} {
		m := randomSparse(rng, size, 10)
		out := filepath.Join(t.TempDir(), "out.vmdk")
		opts := VMDKOptions{Level: []int{9, 6, 2, 1}[i], AdapterType: []string{"ide", "lsilogic", "buslogic", "legacyESX"}[i], ChunkSize: 4096 << i}
		exportVMDK(t, m, opts, out)
		sameContent(t, out, "vmdk", m.writeRaw(t))
		readBackEqual(t, out, m)
	}
}

func TestVMDKRefusesBadOptions(t *testing.T) {
	m := &memSource{data: make([]byte, 4096)}
	for _, o := range []VMDKOptions{
		{FileName: `a"b`}, {FileName: "a/b"}, {FileName: "a\nb"}, {AdapterType: "nvme"},
		{HWVersion: -1}, {Level: 10}, {ChunkSize: 100},
	} {
		if _, err := NewStreamOptimizedVMDK(m, o); !errors.Is(err, ErrInvalid) {
			t.Errorf("options %+v: %v, want ErrInvalid", o, err)
		}
	}
	if _, err := NewStreamOptimizedVMDK(&memSource{data: make([]byte, 1000)}, VMDKOptions{}); !errors.Is(err, ErrInvalid) {
		t.Errorf("size not a multiple of 512: %v, want ErrInvalid", err)
	}
}

// readBackEqual parses the VMDK at path with VMDKReader into a sparse file
// and compares it with src.
func readBackEqual(t testing.TB, path string, src Source) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out, err := os.Create(filepath.Join(t.TempDir(), "back.raw"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	info, err := ReadStreamOptimizedVMDK(testCtx(t), f, out, VMDKReaderOptions{})
	if err != nil {
		t.Fatalf("ReadStreamOptimizedVMDK(%s): %v", path, err)
	}
	if info.Capacity != src.Size() {
		t.Fatalf("capacity %d, want %d", info.Capacity, src.Size())
	}
	if err := out.Truncate(info.Capacity); err != nil {
		t.Fatal(err)
	}
	a := make([]byte, 1<<20)
	b := make([]byte, 1<<20)
	for _, e := range src.Extents() {
		for off := e.Start; off < e.End(); off += int64(len(a)) {
			n := min(int64(len(a)), e.End()-off)
			if err := readFull(src, a[:n], off); err != nil {
				t.Fatal(err)
			}
			if _, err := out.ReadAt(b[:n], off); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(a[:n], b[:n]) {
				t.Fatalf("read back differs in [%d,+%d)", off, n)
			}
		}
	}
	// Nothing outside the extents: every data region of the sparse output
	// equals the source (which reads zeros outside its extents).
	for _, r := range dataRegions(t, out) {
		for off := r.Start; off < r.End(); off += int64(len(a)) {
			n := min(int64(len(a)), r.End()-off)
			if err := readFull(src, a[:n], off); err != nil {
				t.Fatal(err)
			}
			if _, err := out.ReadAt(b[:n], off); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(a[:n], b[:n]) {
				t.Fatalf("read back differs from the source in [%d,+%d)", off, n)
			}
		}
	}
}
