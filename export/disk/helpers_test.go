package disk

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/volumes"
)

// needQemu fails the test in CI and skips it elsewhere when the QEMU tools
// are not installed: nothing is skipped silently where it must run.
func needQemu(t testing.TB) {
	t.Helper()
	for _, name := range []string{"qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(name); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is required in CI (install qemu-utils): %v", name, err)
			}
			t.Skipf("%s not installed (qemu-utils): %v", name, err)
		}
	}
}

func testCtx(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// tool runs a program and fails the test if it fails.
func tool(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// qemuIO runs qemu-io commands (e.g. "write -P 0x11 0 64k") on a qcow2 image.
func qemuIO(t testing.TB, img string, cmds ...string) {
	t.Helper()
	args := []string{"-f", "qcow2"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	tool(t, "qemu-io", append(args, img)...)
}

// openView opens img as a volumes.View closed at the end of the test.
func openView(t testing.TB, img string) *volumes.View {
	t.Helper()
	v, err := volumes.OpenView(testCtx(t), img)
	if err != nil {
		t.Fatalf("OpenView(%s): %v", img, err)
	}
	t.Cleanup(func() { _ = v.Close() })
	return v
}

// chunkSum identifies a chunk: offset, length and content hash.
type chunkSum struct {
	off int64
	n   int
	sum [32]byte
}

// writeStream writes every chunk of s into a new file at path, as a
// transport would (WriteAt, then a truncate to the final size), checks the
// Stream's contract on the way and returns the chunks' identities.
func writeStream(t testing.TB, s Stream, path string, chunkSize int64) []chunkSum {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	size := s.Size()
	if s.Final() != -1 {
		t.Fatalf("Final before the end = %d, want -1", s.Final())
	}
	var sums []chunkSum
	var end int64
	for {
		c, err := s.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		if len(c.Data) == 0 || c.Off < end || c.Off/chunkSize != (c.End()-1)/chunkSize {
			t.Fatalf("chunk [%d,+%d) empty, out of order (after %d) or across a %d boundary", c.Off, len(c.Data), end, chunkSize)
		}
		if size >= 0 && c.End() > size {
			t.Fatalf("chunk [%d,+%d) beyond Size %d", c.Off, len(c.Data), size)
		}
		end = c.End()
		if _, err := f.WriteAt(c.Data, c.Off); err != nil {
			t.Fatal(err)
		}
		sums = append(sums, chunkSum{c.Off, len(c.Data), sha256.Sum256(c.Data)})
	}
	if _, err := s.Next(); !errors.Is(err, io.EOF) {
		t.Fatalf("Next after the end: %v, want io.EOF", err)
	}
	final := s.Final()
	if final < end || (size >= 0 && final != size) {
		t.Fatalf("Final = %d (Size %d, last chunk end %d)", final, size, end)
	}
	if err := f.Truncate(final); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return sums
}

// sameContent asserts that qemu-img compare finds img (of format fmt_) and
// ref (a qcow2 or raw chain) equal, and that their virtual sizes match.
// (Not strict mode: that also compares allocation, which an export
// changes by design.)
func sameContent(t testing.TB, img, fmt_, ref string) {
	t.Helper()
	out, err := exec.Command("qemu-img", "compare", "-f", fmt_, img, ref).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img compare %s %s: %v\n%s", img, ref, err, out)
	}
	if a, b := virtualSize(t, img, fmt_), virtualSize(t, ref, ""); a != b {
		t.Fatalf("virtual size of %s is %d, of %s %d", img, a, ref, b)
	}
}

// virtualSize returns what qemu-img info says an image's virtual size is.
func virtualSize(t testing.TB, img, fmt_ string) int64 {
	t.Helper()
	args := []string{"info", "--output=json"}
	if fmt_ != "" {
		args = append(args, "-f", fmt_)
	}
	var info struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	if err := json.Unmarshal([]byte(tool(t, "qemu-img", append(args, img)...)), &info); err != nil {
		t.Fatalf("qemu-img info %s: %v", img, err)
	}
	return info.VirtualSize
}

// check runs qemu-img check on img.
func check(t testing.TB, img, fmt_ string) {
	t.Helper()
	out, err := exec.Command("qemu-img", "check", "-f", fmt_, img).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img check %s: %v\n%s", img, err, out)
	}
}

// memSource is an in-memory Source: its extents as given, its content a
// byte slice.
type memSource struct {
	data []byte
	ext  []volumes.Extent
}

func (m *memSource) Size() int64               { return int64(len(m.data)) }
func (m *memSource) Extents() []volumes.Extent { return slices.Clone(m.ext) }
func (m *memSource) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("negative offset")
	}
	if off >= int64(len(m.data)) {
		return 0, io.EOF
	}
	n := copy(p, m.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// writeRaw stores m's content as a raw file for qemu-img to compare with.
func (m *memSource) writeRaw(t testing.TB) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "src.raw")
	if err := os.WriteFile(p, m.data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// piecesSource is a Source of size bytes holding data only in its pieces
// (sorted, apart): large disks without large buffers.
type piecesSource struct {
	size   int64
	pieces []volumes.Extent
	data   [][]byte
}

// add appends a piece of random data at off.
func (p *piecesSource) add(rng *rand.Rand, off, n int64) {
	b := make([]byte, n)
	fill(rng, b)
	p.pieces = append(p.pieces, volumes.Extent{Start: off, Length: n})
	p.data = append(p.data, b)
}

func (p *piecesSource) Size() int64               { return p.size }
func (p *piecesSource) Extents() []volumes.Extent { return slices.Clone(p.pieces) }
func (p *piecesSource) ReadAt(b []byte, off int64) (int, error) {
	if off >= p.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(b)), p.size-off))
	clear(b[:n])
	for i, e := range p.pieces {
		a, z := max(e.Start, off), min(e.End(), off+int64(n))
		if a < z {
			copy(b[a-off:z-off], p.data[i][a-e.Start:z-e.Start])
		}
	}
	if n < len(b) {
		return n, io.EOF
	}
	return n, nil
}

// writeRaw stores the source as a sparse raw file.
func (p *piecesSource) writeRaw(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "src.raw")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i, e := range p.pieces {
		if _, err := f.WriteAt(p.data[i], e.Start); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(p.size); err != nil {
		t.Fatal(err)
	}
	return path
}

// zeroSource is a Source of size bytes whose extents read as zeros: it
// drives layouts far larger than the test machine's disk.
type zeroSource struct {
	size int64
	ext  []volumes.Extent
}

func (z *zeroSource) Size() int64               { return z.size }
func (z *zeroSource) Extents() []volumes.Extent { return slices.Clone(z.ext) }
func (z *zeroSource) ReadAt(p []byte, off int64) (int, error) {
	if off >= z.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), z.size-off))
	clear(p[:n])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// fileSize returns the apparent and allocated size of a file.
func fileSize(t testing.TB, path string) (apparent, allocated int64) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size(), allocatedBytes(st)
}
