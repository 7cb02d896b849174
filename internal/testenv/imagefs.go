package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ReadGuestFile reads a file from the ext4 file system on a disk image
// (qcow2 or raw, with its backing chain) on the host, without a guest: the
// image is converted to a sparse raw copy in a temporary directory (the
// image may be open by a VM: the copy shares it read-only) and debugfs
// reads the file. found is false when the file does not exist.
func ReadGuestFile(ctx context.Context, image, path string) (data []byte, found bool, err error) {
	dir, err := os.MkdirTemp("", "twinsnap-imagefs-")
	if err != nil {
		return nil, false, err
	}
	defer os.RemoveAll(dir)
	raw := filepath.Join(dir, "disk.raw")
	if out, err := exec.CommandContext(ctx, "qemu-img", "convert", "-U", "-O", "raw", image, raw).CombinedOutput(); err != nil {
		return nil, false, fmt.Errorf("testenv: qemu-img convert %s: %w: %s", image, err, out)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "debugfs", "-R", "cat "+path, raw)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, false, fmt.Errorf("testenv: debugfs %s: %w: %s", image, err, stderr.String())
	}
	if strings.Contains(stderr.String(), "File not found") {
		return nil, false, nil
	}
	return stdout.Bytes(), true, nil
}

// CompareImages runs qemu-img compare on two images (either may be open by
// a VM) and reports whether their guest-visible contents are equal.
func CompareImages(ctx context.Context, a, b string) (bool, string, error) {
	out, err := exec.CommandContext(ctx, "qemu-img", "compare", "-U", a, b).CombinedOutput()
	if err == nil {
		return true, string(out), nil
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 1 {
		return false, string(out), nil
	}
	return false, string(out), fmt.Errorf("testenv: qemu-img compare %s %s: %w: %s", a, b, err, out)
}

// DiffBytes returns the offsets of the bytes in which the guest-visible
// contents of two images of the same size differ (at most limit of them).
func DiffBytes(ctx context.Context, a, b string, limit int) ([]int64, error) {
	dir, err := os.MkdirTemp("", "twinsnap-imagefs-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	var raws [2]string
	for i, img := range []string{a, b} {
		raws[i] = filepath.Join(dir, fmt.Sprintf("%d.raw", i))
		if out, err := exec.CommandContext(ctx, "qemu-img", "convert", "-U", "-O", "raw", img, raws[i]).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("testenv: qemu-img convert %s: %w: %s", img, err, out)
		}
	}
	fa, err := os.ReadFile(raws[0])
	if err != nil {
		return nil, err
	}
	fb, err := os.ReadFile(raws[1])
	if err != nil {
		return nil, err
	}
	if len(fa) != len(fb) {
		return nil, fmt.Errorf("testenv: %s has %d bytes, %s %d", a, len(fa), b, len(fb))
	}
	var out []int64
	for i := range fa {
		if fa[i] != fb[i] {
			out = append(out, int64(i))
			if len(out) >= limit {
				break
			}
		}
	}
	return out, nil
}
