package exporttest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/export"
)

// Sizes used by the suite: the parallel write is 8 MiB in 1 MiB chunks,
// the size go-smb2 sends in one request.
const (
	ParallelSize  = 8 << 20
	ParallelChunk = 1 << 20
)

// suiteTimeout bounds each subtest.
const suiteTimeout = 2 * time.Minute

// Run runs the conformance suite. open returns a fresh transport whose
// root is an empty directory; Run closes it at the end of each subtest.
func Run(t *testing.T, open func(t *testing.T) export.Transport) {
	tests := []struct {
		name string
		fn   func(ctx context.Context, t *testing.T, tr export.Transport)
	}{
		{"ParallelWriteOutOfOrder", testParallelWrite},
		{"Stat", testStat},
		{"NotExist", testNotExist},
		{"RenameRefusesToReplace", testRenameNoReplace},
		{"Rename", testRename},
		{"Remove", testRemove},
		{"ReopenDoesNotTruncate", testReopen},
		{"Truncate", testTruncate},
		{"UnicodeNames", testUnicode},
		{"List", testList},
		{"MkdirAll", testMkdirAll},
		{"InvalidNames", testInvalidNames},
		{"ReadAtEOF", testReadAtEOF},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := open(t)
			ctx, cancel := context.WithTimeout(context.Background(), suiteTimeout)
			defer cancel()
			tc.fn(ctx, t, tr)
			if err := tr.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
	}
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("random data: %v", err)
	}
	return b
}

// writeFile writes data at offset 0 of name with one WriteAt and closes it.
func writeFile(ctx context.Context, t *testing.T, tr export.Transport, name string, data []byte) {
	t.Helper()
	w, err := tr.OpenWriter(ctx, name)
	if err != nil {
		t.Fatalf("OpenWriter(%q): %v", name, err)
	}
	if len(data) > 0 {
		if n, err := w.WriteAt(data, 0); err != nil || n != len(data) {
			t.Fatalf("WriteAt(%q) = %d, %v; want %d", name, n, err, len(data))
		}
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close(%q): %v", name, err)
	}
}

// ReadAll reads a whole file through OpenReader, with several ReadAt calls
// in parallel.
func ReadAll(ctx context.Context, tr export.Transport, name string) ([]byte, error) {
	r, err := tr.OpenReader(ctx, name)
	if err != nil {
		return nil, err
	}
	defer func() { _ = r.Close() }()
	buf := make([]byte, r.Size())
	const piece = 1 << 20
	var wg sync.WaitGroup
	errs := make([]error, (len(buf)+piece-1)/piece)
	sem := make(chan struct{}, 4)
	for i := range errs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			lo := i * piece
			hi := min(lo+piece, len(buf))
			n, err := r.ReadAt(buf[lo:hi], int64(lo))
			if n == hi-lo && errors.Is(err, io.EOF) {
				err = nil
			}
			if err != nil {
				errs[i] = fmt.Errorf("ReadAt(%d bytes at %d) = %d: %w", hi-lo, lo, n, err)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return buf, nil
}

func mustContent(ctx context.Context, t *testing.T, tr export.Transport, name string, want []byte) {
	t.Helper()
	got, err := ReadAll(ctx, tr, name)
	if err != nil {
		t.Fatalf("read %q: %v", name, err)
	}
	if len(got) != len(want) || sha256.Sum256(got) != sha256.Sum256(want) {
		t.Fatalf("%q holds %d bytes (sha256 %x), want %d bytes (sha256 %x)",
			name, len(got), sha256.Sum256(got), len(want), sha256.Sum256(want))
	}
}

func mustNotExist(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, export.ErrNotExist) {
		t.Fatalf("%s: got %v, want an error wrapping ErrNotExist", what, err)
	}
}

func mkdir(ctx context.Context, t *testing.T, tr export.Transport, dir string) {
	t.Helper()
	if err := tr.MkdirAll(ctx, dir); err != nil {
		t.Fatalf("MkdirAll(%q): %v", dir, err)
	}
}

func testParallelWrite(ctx context.Context, t *testing.T, tr export.Transport) {
	mkdir(ctx, t, tr, "pkg")
	data := randomBytes(t, ParallelSize)
	w, err := tr.OpenWriter(ctx, "pkg/disk1.img")
	if err != nil {
		t.Fatalf("OpenWriter: %v", err)
	}
	order := mrand.Perm(ParallelSize / ParallelChunk)
	chunks := make(chan export.Chunk)
	go func() {
		defer close(chunks)
		for _, i := range order {
			c := export.Chunk{Off: int64(i * ParallelChunk), Data: data[i*ParallelChunk : (i+1)*ParallelChunk]}
			select {
			case chunks <- c:
			case <-ctx.Done():
				return
			}
		}
	}()
	var reported []int64
	err = export.WriteChunks(ctx, w, chunks, 4, func(off, n int64) {
		if n != ParallelChunk {
			t.Errorf("done(%d, %d): want n = %d", off, n, ParallelChunk)
		}
		reported = append(reported, off)
	})
	if err != nil {
		t.Fatalf("WriteChunks: %v", err)
	}
	if err := w.Sync(); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	want := make([]int64, len(order))
	for i, c := range order {
		want[i] = int64(c * ParallelChunk)
	}
	if !slices.Equal(reported, want) {
		t.Fatalf("done reported offsets %v, want them in the order sent, %v", reported, want)
	}
	fi, err := tr.Stat(ctx, "pkg/disk1.img")
	if err != nil {
		t.Fatalf("Stat: %v", err)
	}
	if fi.Size != ParallelSize {
		t.Fatalf("Stat size %d, want %d", fi.Size, ParallelSize)
	}
	mustContent(ctx, t, tr, "pkg/disk1.img", data)
}

func testStat(ctx context.Context, t *testing.T, tr export.Transport) {
	mkdir(ctx, t, tr, "pkg")
	writeFile(ctx, t, tr, "pkg/a.ovf", []byte("12345"))
	fi, err := tr.Stat(ctx, "pkg/a.ovf")
	if err != nil {
		t.Fatalf("Stat: %v", err)
	}
	if fi.Name != "a.ovf" || fi.Size != 5 || fi.IsDir {
		t.Fatalf("Stat = %+v, want a.ovf of 5 bytes, not a directory", fi)
	}
	if since := time.Since(fi.ModTime); since > time.Hour || since < -time.Hour {
		t.Fatalf("Stat ModTime %s is not about now", fi.ModTime)
	}
	di, err := tr.Stat(ctx, "pkg")
	if err != nil {
		t.Fatalf("Stat(dir): %v", err)
	}
	if !di.IsDir || di.Name != "pkg" {
		t.Fatalf("Stat(dir) = %+v, want directory pkg", di)
	}
	r, err := tr.OpenReader(ctx, "pkg/a.ovf")
	if err != nil {
		t.Fatalf("OpenReader: %v", err)
	}
	if r.Size() != 5 {
		t.Fatalf("reader Size %d, want 5", r.Size())
	}
	if err := r.Close(); err != nil {
		t.Fatalf("reader Close: %v", err)
	}
}

func testNotExist(ctx context.Context, t *testing.T, tr export.Transport) {
	mkdir(ctx, t, tr, "pkg")
	_, err := tr.Stat(ctx, "pkg/missing")
	mustNotExist(t, "Stat", err)
	_, err = tr.Stat(ctx, "nodir/missing")
	mustNotExist(t, "Stat in a missing directory", err)
	_, err = tr.OpenReader(ctx, "pkg/missing")
	mustNotExist(t, "OpenReader", err)
	mustNotExist(t, "Remove", tr.Remove(ctx, "pkg/missing"))
	mustNotExist(t, "Rename", tr.Rename(ctx, "pkg/missing", "pkg/other"))
	_, err = tr.List(ctx, "nodir")
	mustNotExist(t, "List", err)
	_, err = tr.OpenWriter(ctx, "nodir/file")
	mustNotExist(t, "OpenWriter in a missing directory", err)
}

func testRenameNoReplace(ctx context.Context, t *testing.T, tr export.Transport) {
	mkdir(ctx, t, tr, "pkg")
	a, b := []byte("contents of a"), []byte("the other file, b")
	writeFile(ctx, t, tr, "pkg/a", a)
	writeFile(ctx, t, tr, "pkg/b", b)
	err := tr.Rename(ctx, "pkg/a", "pkg/b")
	if !errors.Is(err, export.ErrExist) {
		t.Fatalf("Rename onto an existing file: got %v, want an error wrapping ErrExist", err)
	}
	mustContent(ctx, t, tr, "pkg/a", a)
	mustContent(ctx, t, tr, "pkg/b", b)
	mkdir(ctx, t, tr, "pkg/dir")
	if err := tr.Rename(ctx, "pkg/a", "pkg/dir"); !errors.Is(err, export.ErrExist) {
		t.Fatalf("Rename onto an existing directory: got %v, want an error wrapping ErrExist", err)
	}
	mustContent(ctx, t, tr, "pkg/a", a)
}

func testRename(ctx context.Context, t *testing.T, tr export.Transport) {
	mkdir(ctx, t, tr, "pkg")
	mkdir(ctx, t, tr, "other")
	data := randomBytes(t, 3<<20+17)
	writeFile(ctx, t, tr, "pkg/disk.part", data)
	if err := tr.Rename(ctx, "pkg/disk.part", "pkg/disk.qcow2"); err != nil {
		t.Fatalf("Rename: %v", err)
	}
	_, err := tr.Stat(ctx, "pkg/disk.part")
	mustNotExist(t, "Stat of the old name", err)
	mustContent(ctx, t, tr, "pkg/disk.qcow2", data)
	if err := tr.Rename(ctx, "pkg/disk.qcow2", "other/disk.qcow2"); err != nil {
		t.Fatalf("Rename to another directory: %v", err)
	}
	mustContent(ctx, t, tr, "other/disk.qcow2", data)
}

func testRemove(ctx context.Context, t *testing.T, tr export.Transport) {
	mkdir(ctx, t, tr, "pkg/sub")
	writeFile(ctx, t, tr, "pkg/sub/f", []byte("x"))
	if err := tr.Remove(ctx, "pkg/sub"); err == nil {
		t.Fatalf("Remove of a directory that is not empty succeeded")
	}
	if err := tr.Remove(ctx, "pkg/sub/f"); err != nil {
		t.Fatalf("Remove(file): %v", err)
	}
	_, err := tr.Stat(ctx, "pkg/sub/f")
	mustNotExist(t, "Stat after Remove", err)
	mustNotExist(t, "second Remove", tr.Remove(ctx, "pkg/sub/f"))
	if err := tr.Remove(ctx, "pkg/sub"); err != nil {
		t.Fatalf("Remove(empty dir): %v", err)
	}
	_, err = tr.Stat(ctx, "pkg/sub")
	mustNotExist(t, "Stat after removing the directory", err)
}

func testReopen(ctx context.Context, t *testing.T, tr export.Transport) {
	mkdir(ctx, t, tr, "pkg")
	data := randomBytes(t, 4<<20+100)
	head := 3<<20 + 100
	writeFile(ctx, t, tr, "pkg/disk.part", data[:head])
	w, err := tr.OpenWriter(ctx, "pkg/disk.part")
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	fi, err := tr.Stat(ctx, "pkg/disk.part")
	if err != nil || fi.Size != int64(head) {
		t.Fatalf("after reopening: Stat = %+v, %v; want the size written before, %d", fi, err, head)
	}
	if _, err := w.WriteAt(data[head:], int64(head)); err != nil {
		t.Fatalf("WriteAt after reopening: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	mustContent(ctx, t, tr, "pkg/disk.part", data)
}

func testTruncate(ctx context.Context, t *testing.T, tr export.Transport) {
	mkdir(ctx, t, tr, "pkg")
	data := randomBytes(t, 100000)
	writeFile(ctx, t, tr, "pkg/f", data)
	w, err := tr.OpenWriter(ctx, "pkg/f")
	if err != nil {
		t.Fatalf("OpenWriter: %v", err)
	}
	if err := w.Truncate(1000); err != nil {
		t.Fatalf("Truncate(1000): %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	mustContent(ctx, t, tr, "pkg/f", data[:1000])
	w, err = tr.OpenWriter(ctx, "pkg/f")
	if err != nil {
		t.Fatalf("OpenWriter: %v", err)
	}
	if err := w.Truncate(3000); err != nil {
		t.Fatalf("Truncate(3000): %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	mustContent(ctx, t, tr, "pkg/f", append(slices.Clone(data[:1000]), make([]byte, 2000)...))
}

func testUnicode(ctx context.Context, t *testing.T, tr export.Transport) {
	dir := "Ünïcödé Paket 日本"
	name := dir + "/Prüfung ✓ snapshot-é.ovf"
	mkdir(ctx, t, tr, dir)
	data := []byte("<Envelope/>")
	writeFile(ctx, t, tr, name, data)
	mustContent(ctx, t, tr, name, data)
	fis, err := tr.List(ctx, dir)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if len(fis) != 1 || fis[0].Name != "Prüfung ✓ snapshot-é.ovf" {
		t.Fatalf("List(%q) = %+v, want the one file with its exact name", dir, fis)
	}
	to := dir + "/größe-ß.mf"
	if err := tr.Rename(ctx, name, to); err != nil {
		t.Fatalf("Rename: %v", err)
	}
	mustContent(ctx, t, tr, to, data)
	root, err := tr.List(ctx, "")
	if err != nil {
		t.Fatalf("List(root): %v", err)
	}
	if len(root) != 1 || root[0].Name != dir || !root[0].IsDir {
		t.Fatalf("List(root) = %+v, want the directory %q", root, dir)
	}
}

func testList(ctx context.Context, t *testing.T, tr export.Transport) {
	mkdir(ctx, t, tr, "pkg/d")
	writeFile(ctx, t, tr, "pkg/b.mf", []byte("bb"))
	writeFile(ctx, t, tr, "pkg/a.ovf", []byte("a"))
	writeFile(ctx, t, tr, "pkg/c.img", nil)
	fis, err := tr.List(ctx, "pkg")
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	type entry struct {
		name  string
		size  int64
		isDir bool
	}
	var got []entry
	for _, fi := range fis {
		e := entry{fi.Name, fi.Size, fi.IsDir}
		if fi.IsDir {
			e.size = 0
		}
		got = append(got, e)
	}
	want := []entry{{"a.ovf", 1, false}, {"b.mf", 2, false}, {"c.img", 0, false}, {"d", 0, true}}
	if !slices.Equal(got, want) {
		t.Fatalf("List(pkg) = %+v, want %+v", got, want)
	}
	empty, err := tr.List(ctx, "pkg/d")
	if err != nil || len(empty) != 0 {
		t.Fatalf("List(empty dir) = %+v, %v; want nothing", empty, err)
	}
}

func testMkdirAll(ctx context.Context, t *testing.T, tr export.Transport) {
	mkdir(ctx, t, tr, "a/b/c")
	mkdir(ctx, t, tr, "a/b/c")
	mkdir(ctx, t, tr, "a")
	mkdir(ctx, t, tr, "")
	fi, err := tr.Stat(ctx, "a/b/c")
	if err != nil || !fi.IsDir {
		t.Fatalf("Stat(a/b/c) = %+v, %v; want a directory", fi, err)
	}
	writeFile(ctx, t, tr, "a/file", []byte("x"))
	if err := tr.MkdirAll(ctx, "a/file/sub"); err == nil {
		t.Fatalf("MkdirAll below a file succeeded")
	}
}

// BadNames are names that no transport may accept.
var BadNames = []string{
	"", "/abs", "../escape", "pkg/../../escape", "pkg/..", "./pkg", "pkg/./x",
	"pkg//x", "pkg/", "back\\slash", "nul\x00byte", "new\nline",
}

func testInvalidNames(ctx context.Context, t *testing.T, tr export.Transport) {
	mkdir(ctx, t, tr, "pkg")
	for _, name := range BadNames {
		if w, err := tr.OpenWriter(ctx, name); !errors.Is(err, export.ErrInvalidName) {
			if err == nil {
				_ = w.Close()
			}
			t.Errorf("OpenWriter(%q): got %v, want an error wrapping ErrInvalidName", name, err)
		}
		if _, err := tr.Stat(ctx, name); !errors.Is(err, export.ErrInvalidName) {
			t.Errorf("Stat(%q): got %v, want ErrInvalidName", name, err)
		}
		if err := tr.Rename(ctx, "pkg", name); !errors.Is(err, export.ErrInvalidName) {
			t.Errorf("Rename(pkg, %q): got %v, want ErrInvalidName", name, err)
		}
		if name != "" {
			if err := tr.MkdirAll(ctx, name); !errors.Is(err, export.ErrInvalidName) {
				t.Errorf("MkdirAll(%q): got %v, want ErrInvalidName", name, err)
			}
		}
	}
}

func testReadAtEOF(ctx context.Context, t *testing.T, tr export.Transport) {
	mkdir(ctx, t, tr, "pkg")
	data := randomBytes(t, 1000)
	writeFile(ctx, t, tr, "pkg/f", data)
	r, err := tr.OpenReader(ctx, "pkg/f")
	if err != nil {
		t.Fatalf("OpenReader: %v", err)
	}
	defer func() { _ = r.Close() }()
	buf := make([]byte, 600)
	n, err := r.ReadAt(buf, 500)
	if n != 500 || !errors.Is(err, io.EOF) || !bytes.Equal(buf[:n], data[500:]) {
		t.Fatalf("ReadAt across the end = %d, %v; want 500 bytes and io.EOF", n, err)
	}
	n, err = r.ReadAt(buf, 1000)
	if n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("ReadAt at the end = %d, %v; want 0 and io.EOF", n, err)
	}
	n, err = r.ReadAt(buf[:100], 0)
	if n != 100 || err != nil {
		t.Fatalf("ReadAt inside = %d, %v; want 100, nil", n, err)
	}
}
