package volumes

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// ImageInfo is what qemu-img info reports about one image.
type ImageInfo struct {
	// Filename is the image's path as qemu-img names it.
	Filename string `json:"filename"`
	// Format is the image format ("qcow2", "raw", ...).
	Format string `json:"format"`
	// VirtualSize is the guest-visible size in bytes.
	VirtualSize int64 `json:"virtual-size"`
	// ActualSize is the bytes allocated on the host for the image file.
	ActualSize int64 `json:"actual-size"`
	// BackingFile is the backing file as recorded in the image ("" if none).
	BackingFile string `json:"backing-filename"`
	// FullBackingFile is BackingFile resolved to a full path ("" if none).
	FullBackingFile string `json:"full-backing-filename"`
	// BackingFormat is the recorded format of the backing file.
	BackingFormat string `json:"backing-filename-format"`
}

// tool finds an external program with exec.LookPath.
func tool(name string) (string, error) {
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s not found in PATH (install qemu-utils): %w", name, errors.Join(ErrToolMissing, err))
	}
	return p, nil
}

// run runs qemu-img with args and returns its standard output; a failure
// carries the tool's combined output.
func run(ctx context.Context, args ...string) ([]byte, error) {
	bin, err := tool("qemu-img")
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return stdout.Bytes(), fmt.Errorf("qemu-img %s: %w", args[0], ctx.Err())
		}
		return stdout.Bytes(), fmt.Errorf("qemu-img %s: %w: %s", strings.Join(args, " "), err,
			strings.TrimSpace(stderr.String()+"\n"+stdout.String()))
	}
	return stdout.Bytes(), nil
}

// NewImagePath returns the path of the image of snapshot snapshotID in
// container id. It does not validate the ids or touch the disk; CreateTarget
// does both.
func (s *Store) NewImagePath(id, snapshotID string) string {
	return filepath.Join(s.imagesDir(id), snapshotID+imageExt)
}

// inContainer checks that path names an image file directly inside the
// images directory of container id and returns its cleaned absolute form.
func (s *Store) inContainer(id, path string) (string, error) {
	if err := ValidateID(id); err != nil {
		return "", err
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("image %q: %w", path, ErrInvalid)
	}
	if filepath.Dir(abs) != s.imagesDir(id) || !strings.HasSuffix(abs, imageExt) {
		return "", fmt.Errorf("image %q is not an image of container %s: %w", path, id, ErrInvalid)
	}
	return abs, nil
}

// CreateTarget creates an empty qcow2 image for snapshot snapshotID in
// container id and returns its path. With backing == "" the image is a full
// one of size bytes; otherwise it is an incremental one on top of backing
// (which must be an image of the same container) and size 0 means the
// backing image's size.
func (s *Store) CreateTarget(ctx context.Context, id, snapshotID string, size int64, backing string) (string, error) {
	if err := ValidateID(id); err != nil {
		return "", fmt.Errorf("create image: %w", err)
	}
	if err := ValidateID(snapshotID); err != nil {
		return "", fmt.Errorf("create image: snapshot %w", err)
	}
	if size < 0 || (size == 0 && backing == "") {
		return "", fmt.Errorf("create image %s/%s: size %d: %w", id, snapshotID, size, ErrInvalid)
	}
	if _, err := s.Get(id); err != nil {
		return "", fmt.Errorf("create image: %w", err)
	}
	path := s.NewImagePath(id, snapshotID)
	args := []string{"create", "-q", "-f", "qcow2"}
	if backing != "" {
		b, err := s.inContainer(id, backing)
		if err != nil {
			return "", fmt.Errorf("create image %s/%s: backing: %w", id, snapshotID, err)
		}
		if b == path {
			return "", fmt.Errorf("create image %s/%s: backing is the image itself: %w", id, snapshotID, ErrInvalid)
		}
		if _, err := os.Stat(b); err != nil {
			return "", fmt.Errorf("create image %s/%s: backing %s: %w", id, snapshotID, b, errors.Join(ErrNotFound, err))
		}
		// The backing file is recorded by its name alone, relative to the
		// image's directory, so that a replica on the peer (whose store
		// root differs) resolves it to its own copy of the parent.
		args = append(args, "-b", filepath.Base(b), "-F", "qcow2")
	}
	args = append(args, path)
	if size > 0 {
		args = append(args, strconv.FormatInt(size, 10))
	}
	if _, err := tool("qemu-img"); err != nil {
		return "", fmt.Errorf("create image: %w", err)
	}
	s.chainMu.Lock()
	defer s.chainMu.Unlock()
	if _, err := os.Lstat(path); err == nil {
		return "", fmt.Errorf("create image %s: %w", path, ErrExists)
	}
	if _, err := run(ctx, args...); err != nil {
		os.Remove(path)
		return "", fmt.Errorf("create image %s/%s: %w", id, snapshotID, err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return "", fmt.Errorf("create image %s/%s: %w", id, snapshotID, err)
	}
	return path, nil
}

// infoChain returns qemu-img's view of path and its backing chain, top
// first. It opens the images with --force-share so that it also works on
// an image a VM or a backup job has open.
func infoChain(ctx context.Context, path string, chain bool) ([]ImageInfo, error) {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("image %s: %w", path, ErrNotFound)
	}
	args := []string{"info", "--output=json", "--force-share"}
	if chain {
		args = append(args, "--backing-chain")
	}
	out, err := run(ctx, append(args, path)...)
	if err != nil {
		return nil, err
	}
	var infos []ImageInfo
	if chain {
		err = json.Unmarshal(out, &infos)
	} else {
		infos = make([]ImageInfo, 1)
		err = json.Unmarshal(out, &infos[0])
	}
	if err != nil {
		return nil, fmt.Errorf("qemu-img info %s: decoding output: %w", path, err)
	}
	if len(infos) == 0 {
		return nil, fmt.Errorf("qemu-img info %s: empty answer", path)
	}
	return infos, nil
}

// Info returns what qemu-img info reports about the image at path (the
// top of its backing chain, which qemu-img opens and checks whole).
func (s *Store) Info(ctx context.Context, path string) (*ImageInfo, error) {
	infos, err := infoChain(ctx, path, true)
	if err != nil {
		return nil, fmt.Errorf("image info: %w", err)
	}
	return &infos[0], nil
}

// Chain returns the paths of the image at path and its backing files, top
// to base.
func (s *Store) Chain(ctx context.Context, path string) ([]string, error) {
	infos, err := infoChain(ctx, path, true)
	if err != nil {
		return nil, fmt.Errorf("image chain: %w", err)
	}
	out := make([]string, len(infos))
	for i, in := range infos {
		out[i] = in.Filename
	}
	return out, nil
}

// Check runs qemu-img check on the image at path. Corruption or leaked
// clusters fail with ErrCorrupt and the tool's output.
func (s *Store) Check(ctx context.Context, path string) error {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("check image %s: %w", path, ErrNotFound)
	}
	bin, err := tool("qemu-img")
	if err != nil {
		return fmt.Errorf("check image: %w", err)
	}
	cmd := exec.CommandContext(ctx, bin, "check", "-f", "qcow2", path)
	out, err := cmd.CombinedOutput()
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("check image %s: %w", path, ctx.Err())
	}
	text := strings.TrimSpace(string(out))
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		switch ee.ExitCode() {
		case 2:
			return fmt.Errorf("check image %s: corruptions found: %w: %s", path, ErrCorrupt, text)
		case 3:
			return fmt.Errorf("check image %s: leaked clusters: %w: %s", path, ErrCorrupt, text)
		}
	}
	return fmt.Errorf("check image %s: check not completed: %w: %s", path, err, text)
}

// SHA256 returns the hex SHA-256 of the image file's bytes, streamed. It
// identifies the stored image (the qcow2 file, not the guest-visible disk
// content): two replicas verify equal when their files are byte-identical,
// which is what replica verification needs, and hashing the file avoids
// expanding a sparse image to its full virtual size.
func (s *Store) SHA256(ctx context.Context, path string) (string, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("hash image %s: %w", path, ErrNotFound)
	}
	if err != nil {
		return "", fmt.Errorf("hash image: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for {
		if err := ctx.Err(); err != nil {
			return "", fmt.Errorf("hash image %s: %w", path, err)
		}
		n, err := f.Read(buf)
		h.Write(buf[:n])
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", fmt.Errorf("hash image %s: %w", path, err)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
