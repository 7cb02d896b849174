package volumes

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// needTools fails the test in CI and skips it elsewhere when the QEMU tools
// are not installed: nothing is skipped silently where it must run.
func needTools(t *testing.T) {
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

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// qemuWrite writes pattern at offset/length into an image through its chain.
func qemuWrite(t *testing.T, img string, pattern, offset, length string) {
	t.Helper()
	runTool(t, "qemu-io", "-f", "qcow2", "-c", "write -P "+pattern+" "+offset+" "+length, img)
}

// qemuRead asserts the guest view of img holds pattern at offset/length.
func qemuRead(t *testing.T, img string, pattern, offset, length string) {
	t.Helper()
	out := runTool(t, "qemu-io", "-f", "qcow2", "-c", "read -P "+pattern+" "+offset+" "+length, img)
	if strings.Contains(out, "Pattern verification failed") {
		t.Fatalf("%s: pattern %s not at %s+%s:\n%s", img, pattern, offset, length, out)
	}
}

func TestImagesCreateInfoCheckHash(t *testing.T) {
	needTools(t)
	ctx := testCtx(t)
	s := openStore(t)
	if _, err := s.Create("v", 64<<20); err != nil {
		t.Fatalf("Create: %v", err)
	}
	if _, err := s.Create("w", 64<<20); err != nil {
		t.Fatalf("Create: %v", err)
	}
	if _, err := s.CreateTarget(ctx, "missing", "s1", 1<<20, ""); !errors.Is(err, ErrNotFound) {
		t.Fatalf("CreateTarget in missing container: got %v, want ErrNotFound", err)
	}
	if _, err := s.CreateTarget(ctx, "v", "../s1", 1<<20, ""); !errors.Is(err, ErrInvalid) {
		t.Fatalf("CreateTarget with bad snapshot id: got %v, want ErrInvalid", err)
	}
	if _, err := s.CreateTarget(ctx, "v", "s1", 0, ""); !errors.Is(err, ErrInvalid) {
		t.Fatalf("CreateTarget full with size 0: got %v, want ErrInvalid", err)
	}
	base, err := s.CreateTarget(ctx, "v", "s1", 1<<20, "")
	if err != nil {
		t.Fatalf("CreateTarget full: %v", err)
	}
	if base != s.NewImagePath("v", "s1") {
		t.Fatalf("CreateTarget path %s, want %s", base, s.NewImagePath("v", "s1"))
	}
	if _, err := s.CreateTarget(ctx, "v", "s1", 1<<20, ""); !errors.Is(err, ErrExists) {
		t.Fatalf("CreateTarget again: got %v, want ErrExists", err)
	}
	in, err := s.Info(ctx, base)
	if err != nil || in.Format != "qcow2" || in.VirtualSize != 1<<20 || in.FullBackingFile != "" || in.ActualSize <= 0 {
		t.Fatalf("Info(base) = %+v, %v", in, err)
	}

	// Backing files must be images of the same container.
	other, err := s.CreateTarget(ctx, "w", "o1", 1<<20, "")
	if err != nil {
		t.Fatalf("CreateTarget in w: %v", err)
	}
	if _, err := s.CreateTarget(ctx, "v", "s2", 0, other); !errors.Is(err, ErrInvalid) {
		t.Fatalf("backing from another container: got %v, want ErrInvalid", err)
	}
	if _, err := s.CreateTarget(ctx, "v", "s2", 0, filepath.Join(s.Root(), "v", "container.json")); !errors.Is(err, ErrInvalid) {
		t.Fatalf("backing not an image: got %v, want ErrInvalid", err)
	}
	if _, err := s.CreateTarget(ctx, "v", "s2", 0, s.NewImagePath("v", "nosuch")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing backing: got %v, want ErrNotFound", err)
	}
	inc, err := s.CreateTarget(ctx, "v", "s2", 0, base)
	if err != nil {
		t.Fatalf("CreateTarget incremental: %v", err)
	}
	in, err = s.Info(ctx, inc)
	if err != nil || in.VirtualSize != 1<<20 || in.FullBackingFile != base || in.BackingFormat != "qcow2" {
		t.Fatalf("Info(incremental) = %+v, %v", in, err)
	}
	chain, err := s.Chain(ctx, inc)
	if err != nil || len(chain) != 2 || chain[0] != inc || chain[1] != base {
		t.Fatalf("Chain = %v, %v", chain, err)
	}

	// Used follows the images' allocation.
	before, err := s.Used("v")
	if err != nil || before <= 0 {
		t.Fatalf("Used = %d, %v", before, err)
	}
	qemuWrite(t, inc, "0xAA", "0", "512k")
	after, err := s.Used("v")
	if err != nil || after < before+512<<10 {
		t.Fatalf("Used after writing 512 KiB = %d (before %d), %v", after, before, err)
	}

	// SHA256 is the hash of the file's bytes.
	sum, err := s.SHA256(ctx, inc)
	if err != nil {
		t.Fatalf("SHA256: %v", err)
	}
	b, err := os.ReadFile(inc)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if want := sha256.Sum256(b); sum != hex.EncodeToString(want[:]) {
		t.Fatalf("SHA256 = %s, want %x", sum, want)
	}
	if _, err := s.SHA256(ctx, s.NewImagePath("v", "nosuch")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("SHA256 of missing: got %v, want ErrNotFound", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.SHA256(cctx, inc); !errors.Is(err, context.Canceled) {
		t.Fatalf("SHA256 with cancelled context: got %v", err)
	}

	// Check: clean, then corrupt (cluster 0's refcount zeroed).
	if err := s.Check(ctx, inc); err != nil {
		t.Fatalf("Check of clean image: %v", err)
	}
	f, err := os.OpenFile(base, os.O_WRONLY, 0)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	if _, err := f.WriteAt([]byte{0, 0}, 0x20000); err != nil {
		t.Fatalf("corrupt: %v", err)
	}
	f.Close()
	err = s.Check(ctx, base)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "refcount") {
		t.Fatalf("Check of corrupt image: got %v, want ErrCorrupt with the tool's output", err)
	}
	if err := s.Check(ctx, s.NewImagePath("v", "nosuch")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Check of missing: got %v, want ErrNotFound", err)
	}
}

func TestToolMissing(t *testing.T) {
	s := openStore(t)
	if _, err := s.Create("v", 1<<20); err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Setenv("PATH", t.TempDir())
	ctx := testCtx(t)
	if _, err := s.CreateTarget(ctx, "v", "s", 1<<20, ""); !errors.Is(err, ErrToolMissing) || !strings.Contains(err.Error(), "qemu-img") {
		t.Fatalf("CreateTarget without qemu-img: got %v, want ErrToolMissing", err)
	}
	if _, err := os.Stat(s.NewImagePath("v", "s")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("image created without the tool: %v", err)
	}
}

// chain3 builds base <- mid <- top in container "v", each with data at its
// own offsets and some overwriting the layer below, and returns their paths
// and a raw copy of top's guest view.
func chain3(t *testing.T, ctx context.Context, s *Store) (base, mid, top, ref string) {
	t.Helper()
	if _, err := s.Create("v", 64<<20); err != nil {
		t.Fatalf("Create: %v", err)
	}
	var err error
	if base, err = s.CreateTarget(ctx, "v", "s1", 1<<20, ""); err != nil {
		t.Fatalf("CreateTarget base: %v", err)
	}
	qemuWrite(t, base, "0xAA", "0", "64k")
	qemuWrite(t, base, "0xAB", "512k", "64k")
	qemuWrite(t, base, "0xAC", "768k", "64k")
	if mid, err = s.CreateTarget(ctx, "v", "s2", 0, base); err != nil {
		t.Fatalf("CreateTarget mid: %v", err)
	}
	qemuWrite(t, mid, "0xBB", "64k", "64k")
	qemuWrite(t, mid, "0xBC", "512k", "64k") // overwrites base
	if top, err = s.CreateTarget(ctx, "v", "s3", 0, mid); err != nil {
		t.Fatalf("CreateTarget top: %v", err)
	}
	qemuWrite(t, top, "0xCC", "128k", "64k")
	qemuWrite(t, top, "0xCD", "768k", "4k") // partly overwrites base
	ref = filepath.Join(t.TempDir(), "top.raw")
	runTool(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", top, ref)
	return base, mid, top, ref
}

func sameGuestView(t *testing.T, img, ref string) {
	t.Helper()
	runTool(t, "qemu-img", "compare", "-f", "qcow2", "-F", "raw", img, ref)
}

func TestRemoveMiddleOfChain(t *testing.T) {
	needTools(t)
	ctx := testCtx(t)
	s := openStore(t)
	base, mid, top, ref := chain3(t, ctx, s)

	if err := s.RemoveFromChain(ctx, "v", mid); err != nil {
		t.Fatalf("RemoveFromChain(mid): %v", err)
	}
	if _, err := os.Stat(mid); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("mid still exists: %v", err)
	}
	sameGuestView(t, top, ref)
	qemuRead(t, top, "0xBB", "64k", "64k")
	qemuRead(t, top, "0xBC", "512k", "64k")
	chain, err := s.Chain(ctx, top)
	if err != nil || len(chain) != 2 || chain[0] != top || chain[1] != base {
		t.Fatalf("Chain after removing mid = %v, %v", chain, err)
	}
	for _, img := range []string{top, base} {
		if err := s.Check(ctx, img); err != nil {
			t.Fatalf("Check(%s): %v", img, err)
		}
	}

	// Then the base: top becomes standalone with the same content.
	if err := s.RemoveFromChain(ctx, "v", base); err != nil {
		t.Fatalf("RemoveFromChain(base): %v", err)
	}
	sameGuestView(t, top, ref)
	chain, err = s.Chain(ctx, top)
	if err != nil || len(chain) != 1 || chain[0] != top {
		t.Fatalf("Chain after removing base = %v, %v", chain, err)
	}
	if err := s.Check(ctx, top); err != nil {
		t.Fatalf("Check(top): %v", err)
	}

	// A leaf is simply deleted; the container is then empty.
	if err := s.RemoveFromChain(ctx, "v", top); err != nil {
		t.Fatalf("RemoveFromChain(top): %v", err)
	}
	if err := s.RemoveFromChain(ctx, "v", top); !errors.Is(err, ErrNotFound) {
		t.Fatalf("RemoveFromChain of missing: got %v, want ErrNotFound", err)
	}
	if err := s.Remove("v", false); err != nil {
		t.Fatalf("Remove of emptied container: %v", err)
	}
}

func TestRemoveBaseOfChain(t *testing.T) {
	needTools(t)
	ctx := testCtx(t)
	s := openStore(t)
	base, mid, top, ref := chain3(t, ctx, s)
	midRef := filepath.Join(t.TempDir(), "mid.raw")
	runTool(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", mid, midRef)

	if err := s.RemoveFromChain(ctx, "v", base); err != nil {
		t.Fatalf("RemoveFromChain(base): %v", err)
	}
	if _, err := os.Stat(base); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("base still exists: %v", err)
	}
	sameGuestView(t, top, ref)
	sameGuestView(t, mid, midRef)
	qemuRead(t, top, "0xAA", "0", "64k")
	chain, err := s.Chain(ctx, top)
	if err != nil || len(chain) != 2 || chain[0] != top || chain[1] != mid {
		t.Fatalf("Chain after removing base = %v, %v", chain, err)
	}
	in, err := s.Info(ctx, mid)
	if err != nil || in.FullBackingFile != "" {
		t.Fatalf("mid after removing base: %+v, %v (want standalone)", in, err)
	}
	for _, img := range []string{top, mid} {
		if err := s.Check(ctx, img); err != nil {
			t.Fatalf("Check(%s): %v", img, err)
		}
	}
}

func TestRemoveFromChainRefusesOutsidePaths(t *testing.T) {
	ctx := testCtx(t)
	s := openStore(t)
	if _, err := s.Create("v", 1<<20); err != nil {
		t.Fatalf("Create: %v", err)
	}
	outside := filepath.Join(t.TempDir(), "x.qcow2")
	if err := os.WriteFile(outside, []byte("keep"), 0o600); err != nil {
		t.Fatalf("write: %v", err)
	}
	for _, p := range []string{outside, filepath.Join(s.Root(), "v", "container.json"), s.NewImagePath("v", "a") + "/../../container.json"} {
		if err := s.RemoveFromChain(ctx, "v", p); !errors.Is(err, ErrInvalid) {
			t.Fatalf("RemoveFromChain(%s): got %v, want ErrInvalid", p, err)
		}
	}
	if _, err := os.Stat(outside); err != nil {
		t.Fatalf("outside file touched: %v", err)
	}
	if _, err := s.Get("v"); err != nil {
		t.Fatalf("metadata touched: %v", err)
	}
}
