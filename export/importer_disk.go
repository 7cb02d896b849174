package export

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"os/exec"
	"strconv"
	"time"

	"github.com/twinsnap/twinsnap/export/disk"
)

// Bounds of the qemu-img runs of an import.
const (
	qemuInfoTimeout = 2 * time.Minute
	qemuLongTimeout = 6 * time.Hour // check and convert, which read the whole image
	qemuOutputLimit = 64 << 10
)

// hashReader hashes and counts what is read through it and keeps the first
// error of the reader below (the transport's, or the archive's).
type hashReader struct {
	r   io.Reader
	h   hash.Hash
	n   int64
	err error
}

func (h *hashReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.h.Write(p[:n])
	h.n += int64(n)
	if err != nil && !errors.Is(err, io.EOF) && h.err == nil {
		h.err = err
	}
	return n, err
}

// receive streams one package file from r (at most limit+1 bytes of it)
// into Dir, hashing it, and then checks, in this order, that it was read
// whole, that its size is the declared one (or within the limit), that its
// sum is the manifest's, and that its content is a disk image the
// package may hold. The content is parsed while it streams, but no
// verdict on it comes before the checks of the bytes themselves.
func (im *importer) receive(ctx context.Context, f packageFile, r io.Reader, limit int64) error {
	im.prog.setFile(f.name)
	e, _ := im.man.Lookup(f.name)
	hr := &hashReader{r: io.LimitReader(r, limit+1), h: e.NewHash()}
	var (
		sink  func(context.Context, io.Reader) (string, error)
		after func(context.Context, string) (string, error)
		k     Disk
	)
	switch {
	case f.disk < 0:
		sink = im.sinkFile("uefi-vars.fd")
	case im.desc.Disks[f.disk].Format == FormatVMDK:
		k = im.desc.Disks[f.disk]
		sink = im.sinkVMDK(fmt.Sprintf("disk%d.raw", f.disk), k)
		after = im.convertRaw(fmt.Sprintf("disk%d.qcow2", f.disk))
	default:
		k = im.desc.Disks[f.disk]
		sink = im.sinkQCOW2(fmt.Sprintf("disk%d.qcow2", f.disk))
		after = func(ctx context.Context, p string) (string, error) { return p, inspectQCOW2(ctx, p, k.CapacityBytes) }
	}
	local, sinkErr := sink(ctx, hr)
	// The sum covers the whole file, however far the sink read.
	if _, err := io.Copy(io.Discard, hr); err != nil && hr.err == nil {
		hr.err = err
	}
	switch {
	case hr.err != nil:
		return fmt.Errorf("reading %q: %w", f.name, hr.err)
	case ctx.Err() != nil:
		return fmt.Errorf("reading %q: %w", f.name, ctx.Err())
	case f.declared > 0 && hr.n < f.declared:
		return fmt.Errorf("%w: %q has %d bytes, the descriptor declares %d", ErrTruncated, f.name, hr.n, f.declared)
	case f.declared > 0 && hr.n > f.declared:
		return fmt.Errorf("%w: %q is longer than the %d bytes the descriptor declares", ErrTooLarge, f.name, f.declared)
	case hr.n > limit:
		return fmt.Errorf("%w: %q is larger than %d bytes", ErrTooLarge, f.name, limit)
	}
	if err := im.man.Check(f.name, hr.h.Sum(nil)); err != nil {
		return err
	}
	if sinkErr != nil {
		return fmt.Errorf("%q: %w", f.name, sinkErr)
	}
	if after != nil {
		var err error
		if local, err = after(ctx, local); err != nil {
			return fmt.Errorf("%q: %w", f.name, err)
		}
	}
	if f.disk < 0 {
		im.res.UEFIVars = local
	} else {
		im.res.Disks[f.disk] = ImportedDisk{Disk: k, Path: local}
	}
	im.prog.report()
	im.log.Debug("package file imported", "file", f.name, "bytes", hr.n, "local", local)
	return nil
}

// sinkFile copies the file as it is.
func (im *importer) sinkFile(name string) func(context.Context, io.Reader) (string, error) {
	return func(_ context.Context, r io.Reader) (string, error) {
		f, p, err := im.create(name)
		if err != nil {
			return "", err
		}
		defer f.Close()
		if _, err := io.Copy(f, r); err != nil {
			return "", fmt.Errorf("writing %s: %w", p, err)
		}
		return p, f.Close()
	}
}

// sinkQCOW2 copies the image, leaving holes where it holds zeros.
func (im *importer) sinkQCOW2(name string) func(context.Context, io.Reader) (string, error) {
	return func(ctx context.Context, r io.Reader) (string, error) {
		f, p, err := im.create(name)
		if err != nil {
			return "", err
		}
		defer f.Close()
		buf := make([]byte, 1<<20)
		var off int64
		for {
			if err := ctx.Err(); err != nil {
				return "", err
			}
			n, rerr := io.ReadFull(r, buf)
			for b := 0; b < n; b += len(zeroBlock) {
				blk := buf[b:min(b+len(zeroBlock), n)]
				if !bytes.Equal(blk, zeroBlock[:len(blk)]) {
					if _, err := f.WriteAt(blk, off+int64(b)); err != nil {
						return "", fmt.Errorf("writing %s: %w", p, err)
					}
				}
			}
			off += int64(n)
			if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
				break
			}
			if rerr != nil {
				return "", rerr
			}
		}
		if err := f.Truncate(off); err != nil {
			return "", fmt.Errorf("writing %s: %w", p, err)
		}
		return p, f.Close()
	}
}

// sinkVMDK decodes a streamOptimized VMDK into a sparse raw file.
func (im *importer) sinkVMDK(name string, k Disk) func(context.Context, io.Reader) (string, error) {
	return func(ctx context.Context, r io.Reader) (string, error) {
		vr := disk.NewVMDKReader(r, disk.VMDKReaderOptions{MaxCapacity: im.lim.MaxDiskBytes})
		info, err := vr.Header()
		if err != nil {
			return "", vmdkError(err)
		}
		if info.Capacity != k.CapacityBytes {
			return "", fmt.Errorf("%w: the VMDK's capacity is %d bytes, the descriptor says %d", ErrMalformed, info.Capacity, k.CapacityBytes)
		}
		f, p, err := im.create(name)
		if err != nil {
			return "", err
		}
		defer f.Close()
		if err := f.Truncate(info.Capacity); err != nil {
			return "", fmt.Errorf("sizing %s: %w", p, err)
		}
		if _, err := vr.CopyTo(ctx, f); err != nil {
			return "", vmdkError(err)
		}
		return p, f.Close()
	}
}

// vmdkError classes an error of disk.VMDKReader with this package's
// sentinels, keeping its text.
func vmdkError(err error) error {
	switch {
	case errors.Is(err, disk.ErrTruncated):
		return fmt.Errorf("%w: %w", ErrTruncated, err)
	case errors.Is(err, disk.ErrLimit):
		return fmt.Errorf("%w: %w", ErrTooLarge, err)
	case errors.Is(err, disk.ErrMalformed), errors.Is(err, disk.ErrUnsupported):
		return fmt.Errorf("%w: not a streamOptimized VMDK this importer accepts: %w", ErrFormat, err)
	}
	return err
}

// convertRaw converts the raw file into a qcow2 image and removes it.
func (im *importer) convertRaw(name string) func(context.Context, string) (string, error) {
	return func(ctx context.Context, raw string) (string, error) {
		f, p, err := im.create(name)
		if err != nil {
			return "", err
		}
		_ = f.Close()
		if _, err := qemuImg(ctx, qemuLongTimeout, "convert", "-f", "raw", "-O", "qcow2", raw, p); err != nil {
			return "", err
		}
		if err := os.Remove(raw); err != nil {
			return "", fmt.Errorf("removing %s: %w", raw, err)
		}
		return p, nil
	}
}

// qcow2 header fields and extensions the import checks.
const (
	qcow2Magic         = 0x514649fb
	qcow2IncompatDirty = 1 << 0
	qcow2IncompatCorr  = 1 << 1
	qcow2IncompatData  = 1 << 2
	qcow2ExtDataFile   = 0x44415441
	qcow2ExtCrypto     = 0x0537be77
	qcow2HeaderRead    = 64 << 10
)

// inspectQCOW2 checks an imported qcow2 image: its header here, before
// qemu-img opens it (so that no backing or data file named in it is ever
// opened), then qemu-img info and qemu-img check.
func inspectQCOW2(ctx context.Context, p string, capacity int64) error {
	if err := checkQCOW2Header(p, capacity); err != nil {
		return err
	}
	out, err := qemuImg(ctx, qemuInfoTimeout, "info", "-f", "qcow2", "--output=json", p)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrFormat, err)
	}
	var info struct {
		Format         string `json:"format"`
		VirtualSize    int64  `json:"virtual-size"`
		BackingFile    string `json:"backing-filename"`
		Encrypted      bool   `json:"encrypted"`
		FormatSpecific struct {
			Data struct {
				DataFile string `json:"data-file"`
				Corrupt  bool   `json:"corrupt"`
			} `json:"data"`
		} `json:"format-specific"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return fmt.Errorf("%w: qemu-img info: %v", ErrFormat, err)
	}
	switch {
	case info.Format != "qcow2":
		return fmt.Errorf("%w: qemu-img info says format %q, want qcow2", ErrFormat, info.Format)
	case info.BackingFile != "":
		return fmt.Errorf("%w: qcow2 image with a backing file %q: a package's disks must be standalone", ErrFormat, info.BackingFile)
	case info.FormatSpecific.Data.DataFile != "":
		return fmt.Errorf("%w: qcow2 image with an external data file %q", ErrFormat, info.FormatSpecific.Data.DataFile)
	case info.Encrypted:
		return fmt.Errorf("%w: encrypted qcow2 image", ErrFormat)
	case info.FormatSpecific.Data.Corrupt:
		return fmt.Errorf("%w: qcow2 image marked corrupt", ErrFormat)
	case info.VirtualSize != capacity:
		return fmt.Errorf("%w: the qcow2 image's virtual size is %d bytes, the descriptor's capacity %d", ErrMalformed, info.VirtualSize, capacity)
	}
	out, err = qemuImg(ctx, qemuLongTimeout, "check", "-f", "qcow2", p)
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee) && ee.ExitCode() == 3:
		// Leaked clusters waste space and harm nothing.
	case err != nil:
		return fmt.Errorf("%w: qemu-img check: %w", ErrFormat, err)
	}
	_ = out
	return nil
}

// checkQCOW2Header reads the header of the image at p and refuses what an
// import must not hand to qemu-img: another format, a backing file, an
// external data file, encryption, a corrupt mark, or a virtual size other
// than capacity.
func checkQCOW2Header(p string, capacity int64) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	b := make([]byte, qcow2HeaderRead)
	n, err := f.ReadAt(b, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	b = b[:n]
	be := binary.BigEndian
	if n < 72 || be.Uint32(b) != qcow2Magic {
		return fmt.Errorf("%w: not a qcow2 image (no qcow2 header)", ErrFormat)
	}
	version := be.Uint32(b[4:])
	if version != 2 && version != 3 || version == 3 && n < 104 {
		return fmt.Errorf("%w: qcow2 version %d, want 2 or 3", ErrFormat, version)
	}
	if off, size := be.Uint64(b[8:]), be.Uint32(b[16:]); off != 0 {
		name := "(beyond the header)"
		if size <= 1023 && off < uint64(n) && off+uint64(size) <= uint64(n) {
			name = strconv.Quote(string(b[off : off+uint64(size)]))
		}
		return fmt.Errorf("%w: qcow2 image with a backing file %s: a package's disks must be standalone", ErrFormat, name)
	}
	if m := be.Uint32(b[32:]); m != 0 {
		return fmt.Errorf("%w: encrypted qcow2 image (method %d)", ErrFormat, m)
	}
	extAt := uint64(72)
	if version == 3 {
		incompat := be.Uint64(b[72:])
		switch {
		case incompat&qcow2IncompatData != 0:
			return fmt.Errorf("%w: qcow2 image with an external data file", ErrFormat)
		case incompat&qcow2IncompatCorr != 0:
			return fmt.Errorf("%w: qcow2 image marked corrupt", ErrFormat)
		}
		extAt = uint64(be.Uint32(b[100:]))
	}
	for extAt+8 <= uint64(n) {
		typ, length := be.Uint32(b[extAt:]), uint64(be.Uint32(b[extAt+4:]))
		switch typ {
		case 0:
			extAt = uint64(n)
			continue
		case qcow2ExtDataFile:
			return fmt.Errorf("%w: qcow2 image naming an external data file", ErrFormat)
		case qcow2ExtCrypto:
			return fmt.Errorf("%w: encrypted qcow2 image", ErrFormat)
		}
		extAt += 8 + (length+7)/8*8
	}
	if size := be.Uint64(b[24:]); size != uint64(capacity) {
		return fmt.Errorf("%w: the qcow2 image's virtual size is %d bytes, the descriptor's capacity %d", ErrMalformed, size, capacity)
	}
	return nil
}

// limitedBuffer keeps the first qemuOutputLimit bytes written to it.
type limitedBuffer struct{ bytes.Buffer }

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := qemuOutputLimit - l.Len(); room > 0 {
		l.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// qemuImg runs qemu-img with args, bounded by ctx and timeout, and
// returns its standard output; a failure carries the exit status and the
// start of its output.
func qemuImg(ctx context.Context, timeout time.Duration, args ...string) ([]byte, error) {
	bin, err := exec.LookPath("qemu-img")
	if err != nil {
		return nil, fmt.Errorf("qemu-img: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var stdout, stderr limitedBuffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		msg := bytes.TrimSpace(append(stderr.Bytes(), stdout.Bytes()...))
		return nil, fmt.Errorf("qemu-img %s: %w: %s", args[0], err, msg)
	}
	return stdout.Bytes(), nil
}
