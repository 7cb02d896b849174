package disk

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/internal/testenv"
	"github.com/twinsnap/twinsnap/volumes"
)

const benchSize = 256 << 20

// denseImage writes a 256 MiB qcow2 image whose every cluster holds data:
// half of each 4 KiB block random, half a repeated text, so it compresses
// about as well as a used file system.
func denseImage(b *testing.B) string {
	b.Helper()
	needQemu(b)
	dir := b.TempDir()
	raw := filepath.Join(dir, "dense.raw")
	data := make([]byte, benchSize)
	rng := rand.NewChaCha8([32]byte{1})
	text := []byte("twinsnap exports a snapshot chain as a disk file. ")
	for off := 0; off < len(data); off += 4096 {
		_, _ = rng.Read(data[off : off+2048])
		for i := off + 2048; i < off+4096; i++ {
			data[i] = text[i%len(text)]
		}
	}
	if err := os.WriteFile(raw, data, 0o600); err != nil {
		b.Fatal(err)
	}
	img := filepath.Join(dir, "dense.qcow2")
	tool(b, "qemu-img", "convert", "-O", "qcow2", raw, img)
	if err := os.Remove(raw); err != nil {
		b.Fatal(err)
	}
	return img
}

// drain reads a Stream to its end and returns the bytes it produced.
func drain(b *testing.B, s Stream) int64 {
	var n int64
	for {
		c, err := s.Next()
		if errors.Is(err, io.EOF) {
			return n
		}
		if err != nil {
			b.Fatal(err)
		}
		n += int64(len(c.Data))
	}
}

// toFile writes a Stream into a new file and syncs it.
func toFile(b *testing.B, s Stream, path string) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	for {
		c, err := s.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			b.Fatal(err)
		}
		if _, err := f.WriteAt(c.Data, c.Off); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Truncate(s.Final()); err != nil {
		b.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
}

// benchStream measures a writer on the dense image: the stream alone (from
// the chain, through the writer, chunks discarded) over b.Loop, then once
// side by side with qemu-img convert, both writing a synced file.
func benchStream(b *testing.B, name string, open func(*volumes.View) (Stream, error), convert []string) {
	img := denseImage(b)
	v := openView(b, img)
	var out int64
	b.SetBytes(benchSize)
	start := time.Now()
	loops := 0
	for b.Loop() {
		s, err := open(v)
		if err != nil {
			b.Fatal(err)
		}
		out = drain(b, s)
		loops++
	}
	mbps := float64(benchSize) * float64(loops) / time.Since(start).Seconds() / 1e6
	b.StopTimer()
	dir := b.TempDir()
	t0 := time.Now()
	s, err := open(v)
	if err != nil {
		b.Fatal(err)
	}
	toFile(b, s, filepath.Join(dir, "ours"))
	ours := time.Since(t0)
	t0 = time.Now()
	tool(b, "qemu-img", append(append([]string{"convert"}, convert...), img, filepath.Join(dir, "ref"))...)
	tool(b, "sync", filepath.Join(dir, "ref"))
	ref := time.Since(t0)
	refSize, _ := fileSize(b, filepath.Join(dir, "ref"))
	note := fmt.Sprintf("256 MiB dense qcow2 source (half random, half text), 2 cores; output %d bytes, qemu-img's %d", out, refSize)
	testenv.RecordMetric(b, testenv.Metric{Name: "export_" + name + "_stream_MBps", Value: mbps, Unit: "MB/s",
		Note: "chain → writer → chunks discarded; " + note})
	testenv.RecordMetric(b, testenv.Metric{Name: "export_" + name + "_to_file_vs_qemu_img", Value: ours.Seconds() / ref.Seconds(), Unit: "ratio",
		Reference: "qemu-img convert " + fmt.Sprint(convert), Note: fmt.Sprintf("ours %v, qemu-img %v, both to a synced local file; %s", ours.Round(time.Millisecond), ref.Round(time.Millisecond), note)})
}

// BenchmarkQCOW2Stream measures NewQCOW2 on a 256 MiB dense chain.
func BenchmarkQCOW2Stream(b *testing.B) {
	benchStream(b, "qcow2", func(v *volumes.View) (Stream, error) { return NewQCOW2(v, QCOW2Options{}) },
		[]string{"-O", "qcow2"})
}

// BenchmarkVMDKStream measures NewStreamOptimizedVMDK (default options:
// zlib level 1, one compressor per core) on a 256 MiB dense chain.
func BenchmarkVMDKStream(b *testing.B) {
	benchStream(b, "vmdk", func(v *volumes.View) (Stream, error) { return NewStreamOptimizedVMDK(v, VMDKOptions{}) },
		[]string{"-O", "vmdk", "-o", "subformat=streamOptimized"})
}

// BenchmarkVMDKStreamLevel6 measures the VMDK writer at zlib's default
// level, qemu-img's choice, for comparison with the default level 1.
func BenchmarkVMDKStreamLevel6(b *testing.B) {
	benchStream(b, "vmdk_level6", func(v *volumes.View) (Stream, error) {
		return NewStreamOptimizedVMDK(v, VMDKOptions{Level: 6})
	}, []string{"-O", "vmdk", "-o", "subformat=streamOptimized"})
}

// BenchmarkVMDKReader measures an import: parsing a streamOptimized VMDK
// of the dense chain into a sparse file.
func BenchmarkVMDKReader(b *testing.B) {
	img := denseImage(b)
	v := openView(b, img)
	dir := b.TempDir()
	vmdk := filepath.Join(dir, "in.vmdk")
	s, err := NewStreamOptimizedVMDK(v, VMDKOptions{})
	if err != nil {
		b.Fatal(err)
	}
	toFile(b, s, vmdk)
	b.SetBytes(benchSize)
	start := time.Now()
	loops := 0
	for b.Loop() {
		in, err := os.Open(vmdk)
		if err != nil {
			b.Fatal(err)
		}
		out, err := os.Create(filepath.Join(dir, "out.raw"))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := ReadStreamOptimizedVMDK(b.Context(), in, out, VMDKReaderOptions{}); err != nil {
			b.Fatal(err)
		}
		in.Close()
		out.Close()
		loops++
	}
	mbps := float64(benchSize) * float64(loops) / time.Since(start).Seconds() / 1e6
	testenv.RecordMetric(b, testenv.Metric{Name: "import_vmdk_reader_MBps", Value: mbps, Unit: "MB/s",
		Note: "streamOptimized VMDK of a 256 MiB dense disk → sparse raw file (page cache, not synced)"})
}
