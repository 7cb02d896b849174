package testenv

import (
	"bufio"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// imageBuilderVersion changes whenever the layout of the built guest
// changes in a way the package versions do not capture.
const imageBuilderVersion = "4"

// bootDiskMiB is the size of the boot volume's ext4 file system.
const bootDiskMiB = 128

//go:embed guest/init
var guestInit []byte

//go:embed guest/stage2
var guestStage2 []byte

// stallMeterSource is the source of the guest's stall meter
// (guestbin/stallmeter), compiled into every guest at /usr/bin/stallmeter.
//
//go:embed guestbin/stallmeter/*.go
var stallMeterSource embed.FS

// guestModules are loaded in the guest; their dependencies (from the
// kernel's modules.dep) are loaded first. crc32c_generic comes first
// because ext4, jbd2 and libcrc32c need a crc32c implementation through
// the crypto API, which modules.dep does not express.
var guestModules = []string{
	"crc32c_generic", "libcrc32c",
	"virtio_pci", "virtio_console", "virtio_blk", "virtio_net",
	"ext4",
}

// GuestImage is a built test guest: a Debian kernel, an initramfs holding
// busybox, the real qemu-ga with its libraries, the stall meter
// (/usr/bin/stallmeter, built from guestbin/stallmeter) and the kernel
// modules, and a boot-volume template carrying the same root file system
// on ext4.
type GuestImage struct {
	// Kernel is the path of the vmlinuz file.
	Kernel string
	// Initrd is the path of the gzip-compressed newc initramfs.
	Initrd string
	// BootDisk is the path of the qcow2 boot-volume template; launchers
	// copy it, they never write to it.
	BootDisk string
	// Key identifies the build: a digest of the package versions and the
	// builder's inputs (init scripts, stall meter source).
	Key string
	// KernelVersion is the kernel's release string, e.g. 6.1.0-56-amd64.
	KernelVersion string
}

// Cmdline returns the kernel command line for a guest whose root volume
// has the given serial.
func (g *GuestImage) Cmdline(rootSerial string) string {
	return "console=ttyS0 panic=-1 loglevel=4 twinsnap.root=" + rootSerial
}

// BuildGuestImage returns the test guest, building it into the cache
// directory when no build for the current package versions exists. Builds
// from concurrent test binaries are serialised with a file lock.
func BuildGuestImage(ctx context.Context) (*GuestImage, error) {
	for _, bin := range []string{"apt-get", "apt-cache", "dpkg-deb", "dpkg-query", "depmod", "mkfs.ext4", "qemu-img", "cpio", "gzip"} {
		if _, err := LookBinary(bin); err != nil {
			return nil, err
		}
	}
	if _, err := os.Stat("/usr/sbin/qemu-ga"); err != nil {
		return nil, fmt.Errorf("%w: /usr/sbin/qemu-ga missing (install qemu-guest-agent): %w", ErrUnavailable, err)
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		return nil, fmt.Errorf("%w: /bin/busybox missing (install busybox-static): %w", ErrUnavailable, err)
	}
	cache, err := CacheDir()
	if err != nil {
		return nil, err
	}
	kpkg, kver, err := kernelPackage(ctx)
	if err != nil {
		return nil, err
	}
	busyboxVer, err := installedVersion(ctx, "busybox-static")
	if err != nil {
		return nil, err
	}
	qgaVer, err := installedVersion(ctx, "qemu-guest-agent")
	if err != nil {
		return nil, err
	}
	meterSum, err := stallMeterDigest()
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	h.Write(fmt.Appendf(nil, "builder=%s\nkernel=%s=%s\nbusybox=%s\nqemu-ga=%s\nmodules=%s\nstallmeter=%s\n",
		imageBuilderVersion, kpkg, kver, busyboxVer, qgaVer, strings.Join(guestModules, ","), meterSum))
	h.Write(guestInit)
	h.Write(guestStage2)
	key := hex.EncodeToString(h.Sum(nil))[:16]

	dir := filepath.Join(cache, "guest", key)
	img := &GuestImage{
		Kernel:   filepath.Join(dir, "vmlinuz"),
		Initrd:   filepath.Join(dir, "initrd.gz"),
		BootDisk: filepath.Join(dir, "boot.qcow2"),
		Key:      key,
	}
	release := strings.TrimPrefix(kpkg, "linux-image-")
	img.KernelVersion = release
	if _, err := os.Stat(filepath.Join(dir, "complete")); err == nil {
		return img, nil
	}

	if err := os.MkdirAll(filepath.Join(cache, "guest"), 0o755); err != nil {
		return nil, fmt.Errorf("testenv: guest cache: %w", err)
	}
	unlock, err := lockFile(ctx, filepath.Join(cache, "guest", "build.lock"))
	if err != nil {
		return nil, err
	}
	defer unlock()
	if _, err := os.Stat(filepath.Join(dir, "complete")); err == nil {
		return img, nil // built by another process while we waited
	}
	start := time.Now()
	slog.Info("building test guest image", "component", "testenv", "key", key, "kernel", kpkg, "version", kver)
	if err := buildGuest(ctx, cache, dir, kpkg, release); err != nil {
		return nil, err
	}
	slog.Info("built test guest image", "component", "testenv", "key", key, "took", time.Since(start).Round(time.Millisecond))
	return img, nil
}

// buildGuest builds the guest into dir by way of a temporary directory
// that is renamed into place when whole.
func buildGuest(ctx context.Context, cache, dir, kpkg, release string) error {
	work, err := os.MkdirTemp(filepath.Join(cache, "guest"), "build-")
	if err != nil {
		return fmt.Errorf("testenv: guest build dir: %w", err)
	}
	defer os.RemoveAll(work)

	// The kernel package: download it (the .deb is kept in the cache) and
	// unpack it.
	debs := filepath.Join(cache, "debs")
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return fmt.Errorf("testenv: deb cache: %w", err)
	}
	deb, err := downloadDeb(ctx, debs, kpkg)
	if err != nil {
		return err
	}
	kroot := filepath.Join(work, "kernel")
	if err := run(ctx, "", "dpkg-deb", "-x", deb, kroot); err != nil {
		return err
	}
	if err := run(ctx, "", "depmod", "-b", kroot, release); err != nil {
		return err
	}
	modDir := filepath.Join(kroot, "lib", "modules", release)
	order, err := moduleLoadOrder(filepath.Join(modDir, "modules.dep"), guestModules)
	if err != nil {
		return err
	}

	// The root file system shared by the initramfs and the boot volume.
	root := filepath.Join(work, "root")
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "etc/twinsnap", "lib/modules", "proc", "sys", "dev", "run", "tmp", "mnt", "var/run", "root"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return fmt.Errorf("testenv: guest root: %w", err)
		}
	}
	if err := copyFile("/bin/busybox", filepath.Join(root, "bin", "busybox"), 0o755); err != nil {
		return err
	}
	if err := installApplets(ctx, root); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root, "init"), guestInit, 0o755); err != nil {
		return fmt.Errorf("testenv: guest root: %w", err)
	}
	if err := os.WriteFile(filepath.Join(root, "sbin", "twinsnap-stage2"), guestStage2, 0o755); err != nil {
		return fmt.Errorf("testenv: guest root: %w", err)
	}
	if err := copyWithLibraries(ctx, "/usr/sbin/qemu-ga", root); err != nil {
		return err
	}
	if err := BuildStallMeter(ctx, filepath.Join(root, "usr", "bin", "stallmeter")); err != nil {
		return err
	}
	var loadList []string
	for _, rel := range order {
		dst := filepath.Join(root, "lib", "modules", rel)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return fmt.Errorf("testenv: guest modules: %w", err)
		}
		if err := copyFile(filepath.Join(modDir, rel), dst, 0o644); err != nil {
			return err
		}
		loadList = append(loadList, rel)
	}
	if err := os.WriteFile(filepath.Join(root, "etc", "twinsnap", "modules"), []byte(strings.Join(loadList, "\n")+"\n"), 0o644); err != nil {
		return fmt.Errorf("testenv: guest modules: %w", err)
	}
	for name, content := range map[string]string{
		"etc/passwd":   "root:x:0:0:root:/root:/bin/sh\n",
		"etc/group":    "root:x:0:\n",
		"etc/hostname": "twinsnap-guest\n",
	} {
		if err := os.WriteFile(filepath.Join(root, name), []byte(content), 0o644); err != nil {
			return fmt.Errorf("testenv: guest root: %w", err)
		}
	}

	out := filepath.Join(work, "out")
	if err := os.MkdirAll(out, 0o755); err != nil {
		return fmt.Errorf("testenv: guest out: %w", err)
	}
	if err := copyFile(filepath.Join(kroot, "boot", "vmlinuz-"+release), filepath.Join(out, "vmlinuz"), 0o644); err != nil {
		return err
	}
	initrd := filepath.Join(out, "initrd.gz")
	if err := run(ctx, root, "sh", "-c", "find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet --reproducible | gzip -6 > "+shellQuote(initrd)); err != nil {
		return err
	}
	raw := filepath.Join(work, "boot.raw")
	if err := run(ctx, "", "mkfs.ext4", "-q", "-F", "-L", "twinsnap-boot", "-d", root, raw, fmt.Sprintf("%dM", bootDiskMiB)); err != nil {
		return err
	}
	if err := run(ctx, "", "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, filepath.Join(out, "boot.qcow2")); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "complete"), []byte(kpkg+"\n"), 0o644); err != nil {
		return fmt.Errorf("testenv: guest out: %w", err)
	}
	_ = os.RemoveAll(dir)
	if err := os.Rename(out, dir); err != nil {
		return fmt.Errorf("testenv: guest out: %w", err)
	}
	return nil
}

// stallMeterFiles returns the names (under guestbin/stallmeter) of the stall
// meter's source files, tests left out, sorted.
func stallMeterFiles() ([]string, error) {
	entries, err := stallMeterSource.ReadDir("guestbin/stallmeter")
	if err != nil {
		return nil, fmt.Errorf("testenv: stall meter source: %w", err)
	}
	var names []string
	for _, e := range entries {
		if !e.IsDir() && !strings.HasSuffix(e.Name(), "_test.go") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}

// stallMeterDigest returns a digest of the stall meter's source.
func stallMeterDigest() (string, error) {
	names, err := stallMeterFiles()
	if err != nil {
		return "", err
	}
	h := sha256.New()
	for _, name := range names {
		b, err := stallMeterSource.ReadFile("guestbin/stallmeter/" + name)
		if err != nil {
			return "", fmt.Errorf("testenv: stall meter source: %w", err)
		}
		h.Write(fmt.Appendf(nil, "%s %d\n", name, len(b)))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// BuildStallMeter compiles the guest's stall meter into out: a static
// linux/amd64 binary (CGO_ENABLED=0, -trimpath) built with the go tool on
// PATH from the source embedded in this package, which is that of
// internal/testenv/guestbin/stallmeter. A missing go tool is
// ErrUnavailable.
func BuildStallMeter(ctx context.Context, out string) error {
	goTool, err := LookBinary("go")
	if err != nil {
		return err
	}
	names, err := stallMeterFiles()
	if err != nil {
		return err
	}
	src, err := os.MkdirTemp("", "tsn-stallmeter-")
	if err != nil {
		return fmt.Errorf("testenv: stall meter build dir: %w", err)
	}
	defer os.RemoveAll(src)
	// A module of its own: the meter uses the standard library only, and
	// the build needs neither the repository nor the module cache.
	files := map[string][]byte{"go.mod": []byte("module stallmeter\n\ngo 1.22\n")}
	for _, name := range names {
		if files[name], err = stallMeterSource.ReadFile("guestbin/stallmeter/" + name); err != nil {
			return fmt.Errorf("testenv: stall meter source: %w", err)
		}
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(src, name), b, 0o644); err != nil {
			return fmt.Errorf("testenv: stall meter source: %w", err)
		}
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return fmt.Errorf("testenv: stall meter: %w", err)
	}
	cmd := exec.CommandContext(ctx, goTool, "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w", "-o", out, ".")
	cmd.Dir = src
	// Later entries win: the target is fixed whatever the caller's
	// environment says, and the local toolchain is used as it is.
	cmd.Env = append(os.Environ(), "GOOS=linux", "GOARCH=amd64", "CGO_ENABLED=0", "GOFLAGS=", "GOTOOLCHAIN=local", "GOWORK=off")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("testenv: building the stall meter: %w: %s", err, tail(b, 2048))
	}
	return nil
}

// kernelPackage resolves linux-image-amd64 to the versioned kernel package
// and its candidate version, from the local package lists.
func kernelPackage(ctx context.Context) (pkg, version string, err error) {
	out, err := output(ctx, "apt-cache", "depends", "linux-image-amd64")
	if err != nil {
		return "", "", fmt.Errorf("%w: resolving the kernel package (run scripts/deps): %w", ErrUnavailable, err)
	}
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if name, ok := strings.CutPrefix(line, "Depends: "); ok && strings.HasPrefix(name, "linux-image-") {
			pkg = strings.TrimSpace(name)
			break
		}
	}
	if pkg == "" {
		return "", "", fmt.Errorf("%w: linux-image-amd64 depends on no linux-image package (apt lists missing? run scripts/deps)", ErrUnavailable)
	}
	pol, err := output(ctx, "apt-cache", "policy", pkg)
	if err != nil {
		return "", "", fmt.Errorf("%w: apt-cache policy %s: %w", ErrUnavailable, pkg, err)
	}
	for _, line := range strings.Split(pol, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "Candidate: "); ok {
			version = v
		}
	}
	if version == "" || version == "(none)" {
		return "", "", fmt.Errorf("%w: no candidate version of %s", ErrUnavailable, pkg)
	}
	return pkg, version, nil
}

// installedVersion returns the installed version of a Debian package.
func installedVersion(ctx context.Context, pkg string) (string, error) {
	v, err := output(ctx, "dpkg-query", "-W", "-f=${Version}", pkg)
	if err != nil || strings.TrimSpace(v) == "" {
		return "", fmt.Errorf("%w: package %s not installed (run scripts/deps): %v", ErrUnavailable, pkg, err)
	}
	return strings.TrimSpace(v), nil
}

// downloadDeb fetches a package's .deb into dir unless it is there.
func downloadDeb(ctx context.Context, dir, pkg string) (string, error) {
	find := func() string {
		m, _ := filepath.Glob(filepath.Join(dir, pkg+"_*.deb"))
		sort.Strings(m)
		if len(m) == 0 {
			return ""
		}
		return m[len(m)-1]
	}
	if f := find(); f != "" {
		return f, nil
	}
	if err := run(ctx, dir, "apt-get", "download", "-q", pkg); err != nil {
		return "", fmt.Errorf("%w: downloading %s: %w", ErrUnavailable, pkg, err)
	}
	if f := find(); f != "" {
		return f, nil
	}
	return "", fmt.Errorf("testenv: apt-get download %s left no .deb in %s", pkg, dir)
}

// moduleLoadOrder returns the modules (paths relative to the module
// directory) to load for the wanted module names, dependencies first.
func moduleLoadOrder(depFile string, wanted []string) ([]string, error) {
	f, err := os.Open(depFile)
	if err != nil {
		return nil, fmt.Errorf("testenv: modules.dep: %w", err)
	}
	defer f.Close()
	deps := map[string][]string{}
	byName := map[string]string{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		mod, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		deps[mod] = strings.Fields(rest)
		name := strings.TrimSuffix(filepath.Base(mod), ".ko")
		byName[strings.ReplaceAll(name, "-", "_")] = mod
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("testenv: modules.dep: %w", err)
	}
	var order []string
	seen := map[string]bool{}
	var visit func(mod string)
	visit = func(mod string) {
		if seen[mod] {
			return
		}
		seen[mod] = true
		d := deps[mod]
		for i := len(d) - 1; i >= 0; i-- { // modprobe loads the last first
			visit(d[i])
		}
		order = append(order, mod)
	}
	for _, w := range wanted {
		mod, ok := byName[w]
		if !ok {
			return nil, fmt.Errorf("testenv: kernel module %s not found in %s", w, depFile)
		}
		visit(mod)
	}
	return order, nil
}

// installApplets links every busybox applet into root, as
// `busybox --install -s` would inside the guest, so that the boot volume is
// usable without the initramfs.
func installApplets(ctx context.Context, root string) error {
	out, err := output(ctx, "/bin/busybox", "--list-full")
	if err != nil {
		return fmt.Errorf("testenv: busybox applets: %w", err)
	}
	for _, applet := range strings.Fields(out) {
		dst := filepath.Join(root, applet)
		if _, err := os.Lstat(dst); err == nil {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return fmt.Errorf("testenv: guest root: %w", err)
		}
		if err := os.Symlink("/bin/busybox", dst); err != nil {
			return fmt.Errorf("testenv: applet %s: %w", applet, err)
		}
	}
	return nil
}

// copyWithLibraries copies a dynamically linked binary and every library
// ldd lists into root at the same paths.
func copyWithLibraries(ctx context.Context, bin, root string) error {
	out, err := output(ctx, "ldd", bin)
	if err != nil {
		return fmt.Errorf("testenv: ldd %s: %w", bin, err)
	}
	files := []string{bin}
	for _, line := range strings.Split(out, "\n") {
		for _, field := range strings.Fields(line) {
			if strings.HasPrefix(field, "/") {
				files = append(files, field)
			}
		}
	}
	for _, src := range files {
		real, err := filepath.EvalSymlinks(src)
		if err != nil {
			return fmt.Errorf("testenv: %s: %w", src, err)
		}
		dst := filepath.Join(root, src)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return fmt.Errorf("testenv: guest root: %w", err)
		}
		if err := copyFile(real, dst, 0o755); err != nil {
			return err
		}
	}
	// The dynamic loader is looked up by its canonical path on x86_64.
	if _, err := os.Stat(filepath.Join(root, "lib64", "ld-linux-x86-64.so.2")); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("testenv: ldd listed no dynamic loader for %s", bin)
	}
	return nil
}

// copyFile copies src to dst with the given permissions.
func copyFile(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("testenv: copy: %w", err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, perm)
	if err != nil {
		return fmt.Errorf("testenv: copy: %w", err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("testenv: copy %s: %w", src, err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("testenv: copy %s: %w", dst, err)
	}
	return nil
}

// lockFile takes an exclusive flock on path, polling until ctx ends.
func lockFile(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("testenv: lock %s: %w", path, err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("testenv: lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("testenv: waiting for lock %s: %w", path, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// run runs a command in dir, returning its combined output in the error.
func run(ctx context.Context, dir, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("testenv: %s %s: %w: %s", name, strings.Join(args, " "), err, tail(out, 2048))
	}
	return nil
}

// output runs a command and returns its standard output.
func output(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}

// tail returns at most the last n bytes of b as a string.
func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}

// shellQuote quotes s for sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
