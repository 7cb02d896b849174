package local_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/export"
	"github.com/twinsnap/twinsnap/export/exporttest"
	"github.com/twinsnap/twinsnap/export/local"
)

func open(t *testing.T) export.Transport {
	t.Helper()
	tr, err := local.New(t.TempDir())
	if err != nil {
		t.Fatalf("local.New: %v", err)
	}
	return tr
}

func TestConformance(t *testing.T) {
	exporttest.Run(t, open)
}

func TestConformanceWithDecorators(t *testing.T) {
	exporttest.Run(t, func(t *testing.T) export.Transport {
		return export.WithBandwidthLimit(export.WithRetry(open(t), export.RetryPolicy{}, nil), 1<<30)
	})
}

func TestNewNeedsAnExistingRoot(t *testing.T) {
	_, err := local.New(filepath.Join(t.TempDir(), "missing"))
	if !errors.Is(err, export.ErrNotExist) {
		t.Fatalf("New on a missing root: got %v, want ErrNotExist", err)
	}
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := local.New(file); err == nil {
		t.Fatalf("New on a file succeeded")
	}
}

func TestRootThroughSymlink(t *testing.T) {
	real := t.TempDir()
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	tr, err := local.New(link)
	if err != nil {
		t.Fatalf("New through a symbolic link: %v", err)
	}
	defer func() { _ = tr.Close() }()
	ctx := context.Background()
	w, err := tr.OpenWriter(ctx, "f")
	if err != nil {
		t.Fatalf("OpenWriter: %v", err)
	}
	if _, err := w.WriteAt([]byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(real, "f")); err != nil {
		t.Fatalf("file not in the resolved root: %v", err)
	}
}

// TestRefusesSymlinks plants symbolic links (to a directory and a file
// outside the root, and inside it) and a FIFO, and checks that no call
// follows them.
func TestRefusesSymlinks(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	secret := filepath.Join(outside, "secret")
	if err := os.WriteFile(secret, []byte("outside"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, l := range []struct{ target, link string }{
		{outside, "escape"},     // a directory outside
		{secret, "secret-link"}, // a file outside
		{".", "self"},           // a directory inside
		{"missing", "dangling"}, // nothing
	} {
		if err := os.Symlink(l.target, filepath.Join(root, l.link)); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Mkfifo(filepath.Join(root, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	tr, err := local.New(root)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tr.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	refused := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, local.ErrSymlink) {
			t.Errorf("%s: got %v, want ErrSymlink", what, err)
		}
	}
	_, err = tr.OpenWriter(ctx, "escape/new")
	refused("OpenWriter through a link to a directory outside", err)
	_, err = tr.OpenWriter(ctx, "escape/secret")
	refused("OpenWriter of a file outside", err)
	_, err = tr.OpenReader(ctx, "escape/secret")
	refused("OpenReader of a file outside", err)
	_, err = tr.OpenWriter(ctx, "secret-link")
	refused("OpenWriter of a link to a file outside", err)
	_, err = tr.OpenReader(ctx, "secret-link")
	refused("OpenReader of a link to a file outside", err)
	_, err = tr.OpenWriter(ctx, "dangling")
	refused("OpenWriter of a dangling link", err)
	_, err = tr.OpenWriter(ctx, "self/x")
	refused("OpenWriter through a link inside", err)
	_, err = tr.Stat(ctx, "secret-link")
	refused("Stat of a link", err)
	_, err = tr.Stat(ctx, "escape/secret")
	refused("Stat through a link", err)
	_, err = tr.List(ctx, "escape")
	refused("List through a link", err)
	refused("MkdirAll through a link", tr.MkdirAll(ctx, "escape/sub"))
	refused("Rename of a link", tr.Rename(ctx, "secret-link", "renamed"))
	refused("Rename into a linked directory", func() error {
		if err := tr.MkdirAll(ctx, "pkg"); err != nil {
			return err
		}
		w, err := tr.OpenWriter(ctx, "pkg/f")
		if err != nil {
			return err
		}
		_ = w.Close()
		return tr.Rename(ctx, "pkg/f", "escape/f")
	}())
	_, err = tr.OpenWriter(ctx, "fifo")
	refused("OpenWriter of a FIFO", err)

	if b, err := os.ReadFile(secret); err != nil || string(b) != "outside" {
		t.Fatalf("file outside the root changed: %q, %v", b, err)
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 1 {
		t.Fatalf("directory outside the root has %d entries, want only the secret", len(entries))
	}
	fis, err := tr.List(ctx, "")
	if err != nil {
		t.Fatalf("List(root): %v", err)
	}
	if len(fis) != 1 || fis[0].Name != "pkg" {
		t.Fatalf("List(root) = %+v; want only pkg (links and the FIFO left out)", fis)
	}
	// Removing a link removes the link, not its target.
	if err := tr.Remove(ctx, "secret-link"); err != nil {
		t.Fatalf("Remove of a link: %v", err)
	}
	if _, err := os.Stat(secret); err != nil {
		t.Fatalf("Remove of a link removed its target: %v", err)
	}
}

func TestWriterHonoursContext(t *testing.T) {
	tr := open(t)
	defer func() { _ = tr.Close() }()
	ctx, cancel := context.WithCancel(context.Background())
	w, err := tr.OpenWriter(ctx, "f")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = w.Close() }()
	cancel()
	if _, err := w.WriteAt([]byte("x"), 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("WriteAt after the context ended: got %v, want context.Canceled", err)
	}
}
