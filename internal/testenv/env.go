package testenv

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// Marker appears in the command line of every process the test environment
// starts, so that `make test` can prove that none outlives its test.
const Marker = "twinsnap-testenv"

// ErrUnavailable reports that a component (a binary, a kernel package, a
// service) cannot be started on this machine.
var ErrUnavailable = errors.New("testenv: component unavailable")

// InCI reports whether the tests run in CI, where every integration test
// must run and a missing component is a failure, not a skip.
func InCI() bool { return os.Getenv("CI") == "true" }

// Need ends the test when err is not nil: with a skip outside CI when the
// component is merely unavailable, and with a failure otherwise.
func Need(tb testing.TB, what string, err error) {
	tb.Helper()
	if err == nil {
		return
	}
	if errors.Is(err, ErrUnavailable) && !InCI() {
		tb.Skipf("%s unavailable (set CI=true to fail instead): %v", what, err)
	}
	tb.Fatalf("%s: %v", what, err)
}

// RepoRoot returns the directory holding the module's go.mod, searched
// upwards from the working directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("testenv: working directory: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("testenv: no go.mod above the working directory")
		}
		dir = parent
	}
}

// CacheDir returns the git-ignored directory where built artefacts (guest
// kernels, initramfs images, boot disks) are kept between runs:
// $TWINSNAP_CACHE if set, else .cache in the repository root.
func CacheDir() (string, error) {
	if d := os.Getenv("TWINSNAP_CACHE"); d != "" {
		return d, os.MkdirAll(d, 0o755)
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	d := filepath.Join(root, ".cache")
	return d, os.MkdirAll(d, 0o755)
}

// TempDir returns a fresh directory for one component. Unix socket paths
// are limited to 108 bytes, and t.TempDir() paths can exceed that, so
// components that listen on sockets use short directories under /tmp.
func TempDir(tb testing.TB, prefix string) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "tsn-"+prefix+"-")
	if err != nil {
		tb.Fatalf("testenv: temp dir: %v", err)
	}
	tb.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}
