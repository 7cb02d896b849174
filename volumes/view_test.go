package volumes

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// rawOf converts the chain at img to a raw file with qemu-img and returns
// its bytes: the reference for what a View must read.
func rawOf(t *testing.T, img string) []byte {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "ref.raw")
	runTool(t, "qemu-img", "convert", "-O", "raw", img, raw)
	b, err := os.ReadFile(raw)
	if err != nil {
		t.Fatalf("read reference: %v", err)
	}
	return b
}

// checkView opens img as a View and checks it against qemu-img's raw
// conversion: whole reads, random small reads, the extents (every byte
// outside them is zero) and the end-of-disk behaviour.
func checkView(t *testing.T, img string) *View {
	t.Helper()
	v, err := OpenView(testCtx(t), img)
	if err != nil {
		t.Fatalf("OpenView(%s): %v", img, err)
	}
	t.Cleanup(func() { _ = v.Close() })
	ref := rawOf(t, img)
	if v.Size() != int64(len(ref)) {
		t.Fatalf("Size = %d, want %d", v.Size(), len(ref))
	}
	got := make([]byte, len(ref))
	if n, err := v.ReadAt(got, 0); n != len(got) || err != nil {
		t.Fatalf("ReadAt whole = %d, %v", n, err)
	}
	if !bytes.Equal(got, ref) {
		t.Fatalf("whole view differs from qemu-img convert -O raw")
	}
	var sum, prevEnd int64 = 0, -1
	outside := bytes.Clone(ref)
	for _, e := range v.Extents() {
		if e.Length <= 0 || e.Start <= prevEnd || e.End() > v.Size() {
			t.Fatalf("extents not sorted, merged and in range: %+v", v.Extents())
		}
		prevEnd = e.End()
		sum += e.Length
		clear(outside[e.Start:e.End()])
	}
	if sum != v.AllocatedBytes() {
		t.Fatalf("AllocatedBytes = %d, extents sum to %d", v.AllocatedBytes(), sum)
	}
	if !bytes.Equal(outside, make([]byte, len(outside))) {
		t.Fatalf("data outside the extents")
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 300 {
		off := rng.Int64N(v.Size())
		buf := make([]byte, 1+rng.IntN(300<<10))
		n, err := v.ReadAt(buf, off)
		want := min(int64(len(buf)), v.Size()-off)
		if int64(n) != want || (n < len(buf)) != errors.Is(err, io.EOF) || (err != nil && !errors.Is(err, io.EOF)) {
			t.Fatalf("ReadAt(%d bytes at %d) = %d, %v; want %d", len(buf), off, n, err, want)
		}
		if !bytes.Equal(buf[:n], ref[off:off+int64(n)]) {
			t.Fatalf("ReadAt(%d bytes at %d) differs from reference", len(buf), off)
		}
	}
	if n, err := v.ReadAt(make([]byte, 10), v.Size()); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("ReadAt at end = %d, %v; want 0, EOF", n, err)
	}
	if _, err := v.ReadAt(make([]byte, 10), -1); !errors.Is(err, ErrInvalid) {
		t.Fatalf("ReadAt at -1: %v, want ErrInvalid", err)
	}
	return v
}

func TestViewChainOfThree(t *testing.T) {
	needTools(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	mid := filepath.Join(dir, "mid.qcow2")
	top := filepath.Join(dir, "top.qcow2")
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "64M")
	qemuWrite(t, base, "0x11", "0", "3M")
	qemuWrite(t, base, "0x12", "20M", "100k")
	qemuWrite(t, base, "0x13", "63M", "1M")
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", mid)
	qemuWrite(t, mid, "0x21", "1M", "512k")
	runTool(t, "qemu-io", "-f", "qcow2", "-c", "write -z 2M 512k", mid) // hides base's data
	qemuWrite(t, mid, "0x22", "40M", "4k")
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", top)
	qemuWrite(t, top, "0x31", "1280k", "64k")
	qemuWrite(t, top, "0x32", "63M", "4k")
	runTool(t, "qemu-io", "-f", "qcow2", "-c", "write -z 20M 64k", top)

	v := checkView(t, top)
	if len(v.files) != 3 {
		t.Fatalf("chain of %d files, want 3", len(v.files))
	}
	// Concurrent readers see the same bytes.
	ref := rawOf(t, top)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			buf := make([]byte, 1<<20)
			for off := int64(g) << 20; off < v.Size(); off += 4 << 20 {
				if n, err := v.ReadAt(buf, off); n != len(buf) || err != nil || !bytes.Equal(buf, ref[off:off+1<<20]) {
					t.Errorf("concurrent ReadAt at %d: %d, %v", off, n, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := v.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := v.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestViewRawBackingAndOddSize(t *testing.T) {
	needTools(t)
	dir := t.TempDir()
	raw := filepath.Join(dir, "base.raw")
	b := make([]byte, 5<<20+512)
	for i := 1<<20 + 100; i < 1<<20+9000; i++ {
		b[i] = byte(i)
	}
	copy(b[len(b)-3:], "end")
	if err := os.WriteFile(raw, b, 0o600); err != nil {
		t.Fatal(err)
	}
	top := filepath.Join(dir, "top.qcow2")
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", raw, "-F", "raw", top, "7M")
	qemuWrite(t, top, "0x44", "3M", "64k")
	qemuWrite(t, top, "0x45", "6M", "512")
	checkView(t, top)
}

func TestViewRefusesCompressed(t *testing.T) {
	needTools(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "src.qcow2")
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", src, "8M")
	qemuWrite(t, src, "0x55", "1M", "1M")
	comp := filepath.Join(dir, "comp.qcow2")
	runTool(t, "qemu-img", "convert", "-c", "-O", "qcow2", src, comp)
	if _, err := OpenView(testCtx(t), comp); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("OpenView(compressed) = %v, want ErrUnsupported", err)
	}
	if _, err := OpenView(testCtx(t), filepath.Join(dir, "missing.qcow2")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("OpenView(missing) = %v, want ErrNotFound", err)
	}
	vmdk := filepath.Join(dir, "d.vmdk")
	runTool(t, "qemu-img", "create", "-q", "-f", "vmdk", vmdk, "8M")
	if _, err := OpenView(testCtx(t), vmdk); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("OpenView(vmdk) = %v, want ErrUnsupported", err)
	}
}

func TestViewLargeSparse(t *testing.T) {
	needTools(t)
	img := filepath.Join(t.TempDir(), "big.qcow2")
	runTool(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "16G")
	qemuWrite(t, img, "0x66", "0", "1M")
	qemuWrite(t, img, "0x67", "8G", "1M")
	qemuWrite(t, img, "0x68", "16383M", "1M")
	start := time.Now()
	v, err := OpenView(testCtx(t), img)
	if err != nil {
		t.Fatalf("OpenView: %v", err)
	}
	defer func() { _ = v.Close() }()
	took := time.Since(start)
	t.Logf("OpenView of a 16 GiB image with 3 MiB of data: %v", took)
	if took > 10*time.Second {
		t.Fatalf("OpenView took %v", took)
	}
	want := []Extent{{0, 1 << 20}, {8 << 30, 1 << 20}, {16383 << 20, 1 << 20}}
	if got := v.Extents(); len(got) != 3 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Fatalf("Extents = %+v, want %+v", got, want)
	}
	if v.AllocatedBytes() != 3<<20 {
		t.Fatalf("AllocatedBytes = %d", v.AllocatedBytes())
	}
	buf := make([]byte, 4096)
	if _, err := v.ReadAt(buf, 8<<30+4096); err != nil || buf[0] != 0x67 || buf[4095] != 0x67 {
		t.Fatalf("ReadAt in the middle: %v, %x", err, buf[0])
	}
}
