package export

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"
)

// ImportOptions tunes Import.
type ImportOptions struct {
	// Limits bounds what is accepted from the package (zero fields take
	// the defaults).
	Limits Limits
	// Dir is the import job's own local directory, which must exist.
	// Import writes nothing anywhere else, and on failure removes what it
	// wrote there (Dir itself stays).
	Dir string
	// OnProgress, if not nil, is called at least every second while data
	// flows and at the end of every file; Progress.Offset counts the
	// bytes read. An error it returns stops the import and is returned,
	// wrapped.
	OnProgress func(Progress) error
	// Logger receives the import's records (default slog.Default()).
	Logger *slog.Logger
}

// ImportedDisk is one disk of an imported package.
type ImportedDisk struct {
	// Disk is the disk as the descriptor describes it.
	Disk Disk
	// Path is the local standalone qcow2 image (no backing file) in
	// ImportOptions.Dir holding the disk's data.
	Path string
}

// Imported is a package read, verified and stored locally by Import.
type Imported struct {
	// Descriptor is the package's parsed descriptor.
	Descriptor *Descriptor
	// Disks are the disks in descriptor order.
	Disks []ImportedDisk
	// UEFIVars is the local path of the UEFI variable store, or "".
	UEFIVars string
	// Foreign reports a package without a twinsnap section: written by
	// another tool, or by twinsnap without its metadata.
	Foreign bool
}

// Import reads the package at p on t — "dir/P.ovf" (the files side by
// side, as in "dir/P/P.ovf") or an archive "dir/P.ova" — verifies it and
// stores its disks as standalone qcow2 images in opts.Dir.
//
// Everything read is untrusted. The descriptor and the manifest are read
// with ParseDescriptor and ParseManifest within opts.Limits; every file
// the import uses, and the descriptor itself, must be listed in the
// manifest; names go through CheckName. Each file is streamed from the
// share into Dir while it is hashed, reading at most one byte more than
// its declared size (or, without one, than the limits allow): a shorter
// file is refused with ErrTruncated, a longer one with ErrTooLarge, and a
// sum that differs from the manifest's with ErrChecksum, naming the file.
// A qcow2 disk must then be a qcow2 image (its header is checked here
// before qemu-img opens it) without a backing file, an external data
// file or encryption, of the descriptor's capacity, and pass `qemu-img
// check`. A streamOptimized VMDK is decoded by disk.VMDKReader into a
// sparse raw file, converted with `qemu-img convert -O qcow2`, and the raw
// file removed.
//
// On any error everything the import wrote in Dir is removed, and the
// error wraps one of ErrUnsafeName, ErrEntity, ErrTooLarge, ErrChecksum,
// ErrTruncated, ErrFormat or ErrMalformed, or a transport's error class.
func Import(ctx context.Context, t Transport, p string, opts ImportOptions) (*Imported, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	im := &importer{t: t, path: p, opts: opts, lim: opts.Limits.withDefaults(),
		log:  opts.Logger.With("component", "export", "import", p),
		prog: newProgress(opts.OnProgress, time.Now, 0)}
	began := time.Now()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := im.prog.start(ctx, cancel)
	res, err := im.run(ctx)
	stop()
	if perr := im.prog.final(); perr != nil && err != nil {
		err = fmt.Errorf("stopped by its progress callback: %w", perr)
	}
	if err != nil {
		im.cleanup()
		im.log.Warn("import refused", "err", err)
		return nil, fmt.Errorf("export: import %s: %w", p, err)
	}
	im.log.Info("imported", "disks", len(res.Disks), "bytes", im.prog.written(), "foreign", res.Foreign,
		"duration", time.Since(began).Round(time.Millisecond))
	return res, nil
}

// importer is one call of Import.
type importer struct {
	t       Transport
	path    string
	opts    ImportOptions
	lim     Limits
	log     *slog.Logger
	prog    *progress
	created []string // local files written, removed on failure

	desc    *Descriptor
	man     Manifest
	ovfName string
	res     *Imported
}

// run checks the path and imports the package.
func (im *importer) run(ctx context.Context) (*Imported, error) {
	if err := ValidName(im.path); err != nil {
		return nil, err
	}
	for elem := range strings.SplitSeq(im.path, "/") {
		if strings.HasSuffix(strings.ToLower(elem), PartSuffix) {
			return nil, fmt.Errorf("%w: %q is a package still being written (%s)", ErrMalformed, elem, PartSuffix)
		}
	}
	base := path.Base(im.path)
	if err := checkName(base); err != nil {
		return nil, err
	}
	fi, err := os.Stat(im.opts.Dir)
	if err != nil || !fi.IsDir() || im.opts.Dir == "" {
		return nil, fmt.Errorf("local directory %q: not a directory: %v", im.opts.Dir, err)
	}
	switch {
	case hasSuffixFold(base, OVASuffix):
		return im.fromOVA(ctx)
	case hasSuffixFold(base, ".ovf"):
		return im.fromDir(ctx)
	}
	return nil, fmt.Errorf("%w: %q is neither an .ovf descriptor nor an .ova archive", ErrMalformed, base)
}

// cleanup removes every local file the import created.
func (im *importer) cleanup() {
	for i := len(im.created) - 1; i >= 0; i-- {
		if err := os.Remove(im.created[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
			im.log.Warn("cannot remove a file of the refused import", "path", im.created[i], "err", err)
		}
	}
	im.created = nil
}

// create makes a new local file in Dir, never replacing one.
func (im *importer) create(name string) (*os.File, string, error) {
	p := filepath.Join(im.opts.Dir, name)
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, "", fmt.Errorf("local file: %w", err)
	}
	im.created = append(im.created, p)
	return f, p, nil
}

// descriptor parses the descriptor's bytes, and the manifest's, and checks
// that the manifest lists every file the import uses.
func (im *importer) descriptor(ovfName string, ovf []byte, mfName string, mf []byte, mfFound bool) error {
	d, err := ParseDescriptor(bytes.NewReader(ovf), im.lim)
	if err != nil {
		return err
	}
	if !mfFound {
		return fmt.Errorf("%w: the package has no manifest %q: its files cannot be verified", ErrChecksum, mfName)
	}
	m, err := ParseManifest(bytes.NewReader(mf), im.lim)
	if err != nil {
		return err
	}
	names := []string{ovfName}
	for _, k := range d.Disks {
		names = append(names, k.File)
	}
	if d.Twinsnap != nil && d.Twinsnap.UEFIVarsFile != "" {
		names = append(names, d.Twinsnap.UEFIVarsFile)
	}
	if missing := m.Missing(names); len(missing) > 0 {
		return fmt.Errorf("%w: the manifest %q does not list %q", ErrChecksum, mfName, missing)
	}
	e, _ := m.Lookup(ovfName)
	h := e.NewHash()
	h.Write(ovf)
	if err := m.Check(ovfName, h.Sum(nil)); err != nil {
		return err
	}
	im.desc, im.man, im.ovfName = d, m, ovfName
	im.res = &Imported{Descriptor: d, Disks: make([]ImportedDisk, len(d.Disks)), Foreign: d.Twinsnap == nil}
	return nil
}

// packageFile is a file of the package the import reads.
type packageFile struct {
	name     string
	disk     int   // index of the disk, -1 for the UEFI store
	declared int64 // the descriptor's size, 0 if none
	limit    int64 // the most accepted without a declared size
}

// files returns the package files the import reads, in References order.
func (im *importer) files() []packageFile {
	var out []packageFile
	for i, k := range im.desc.Disks {
		out = append(out, packageFile{name: k.File, disk: i, declared: k.FileSize, limit: maxFileBytes(k.CapacityBytes)})
	}
	if m := im.desc.Twinsnap; m != nil && m.UEFIVarsFile != "" {
		out = append(out, packageFile{name: m.UEFIVarsFile, disk: -1, declared: m.UEFIVarsSize, limit: MaxUEFIVarsBytes})
	}
	return out
}

// readSmall reads a whole small file (descriptor, manifest) of at most
// limit bytes from the share; found is false when it does not exist.
func (im *importer) readSmall(ctx context.Context, name string, limit int64) (data []byte, found bool, err error) {
	r, err := im.t.OpenReader(ctx, name)
	if errors.Is(err, ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("open %s: %w", name, err)
	}
	defer func() { _ = r.Close() }()
	im.prog.setFile(path.Base(name))
	pr := newPrefetchReader(ctx, r, 0, limit+1, 1)
	defer pr.Close()
	data, err = io.ReadAll(pr)
	if err != nil {
		return nil, false, fmt.Errorf("read %s: %w", name, err)
	}
	im.prog.wrote(int64(len(data)), im.prog.watermark()+int64(len(data)))
	if int64(len(data)) > limit {
		return nil, false, fmt.Errorf("%w: %s: larger than %d bytes", ErrTooLarge, path.Base(name), limit)
	}
	return data, true, nil
}

// fromDir imports a package whose files lie side by side with its
// descriptor.
func (im *importer) fromDir(ctx context.Context) (*Imported, error) {
	dir := path.Dir(im.path)
	if dir == "." {
		dir = ""
	}
	join := func(name string) string { return path.Join(dir, name) }
	ovfName := path.Base(im.path)
	mfName := ovfName[:len(ovfName)-len(".ovf")] + ".mf"
	ovf, found, err := im.readSmall(ctx, im.path, im.lim.MaxDescriptorBytes)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("descriptor %s: %w", im.path, ErrNotExist)
	}
	mf, mfFound, err := im.readSmall(ctx, join(mfName), im.lim.MaxManifestBytes)
	if err != nil {
		return nil, err
	}
	if err := im.descriptor(ovfName, ovf, mfName, mf, mfFound); err != nil {
		return nil, err
	}
	// Every file must be there before any is copied.
	files := im.files()
	total := int64(len(ovf) + len(mf))
	for _, f := range files {
		fi, err := im.t.Stat(ctx, join(f.name))
		if err != nil {
			return nil, fmt.Errorf("%w: package file %q: %w", ErrMalformed, f.name, err)
		}
		if fi.IsDir {
			return nil, fmt.Errorf("%w: package file %q is a directory", ErrMalformed, f.name)
		}
		total += fi.Size
	}
	im.prog.setTotal(total, true)
	for _, f := range files {
		if err := im.fromShare(ctx, f, join(f.name)); err != nil {
			return nil, err
		}
	}
	return im.res, nil
}

// fromShare reads one package file from its own file on the share.
func (im *importer) fromShare(ctx context.Context, f packageFile, name string) error {
	r, err := im.t.OpenReader(ctx, name)
	if err != nil {
		return fmt.Errorf("%w: package file %q: %w", ErrMalformed, f.name, err)
	}
	defer func() { _ = r.Close() }()
	limit := f.limit
	if f.declared > 0 {
		limit = f.declared
	}
	pr := newPrefetchReader(ctx, r, 0, limit+1, DefaultParallelism)
	defer pr.Close()
	return im.receive(ctx, f, &countReader{r: pr, prog: im.prog}, limit)
}

// fromOVA imports a package archive.
func (im *importer) fromOVA(ctx context.Context) (*Imported, error) {
	r, err := im.t.OpenReader(ctx, im.path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", im.path, err)
	}
	defer func() { _ = r.Close() }()
	im.prog.setTotal(r.Size(), true)
	pr := newPrefetchReader(ctx, r, 0, r.Size(), DefaultParallelism)
	defer pr.Close()
	ova := NewOVAReader(&countReader{r: pr, prog: im.prog}, im.lim)
	ovfName, _, err := ova.Next()
	if err != nil {
		return nil, err
	}
	im.prog.setFile(ovfName)
	ovf, err := io.ReadAll(ova)
	if err != nil {
		return nil, err
	}
	mfName := ovfName[:len(ovfName)-len(".ovf")] + ".mf"
	var mf []byte
	name, _, err := ova.Next()
	mfFound := err == nil && name == mfName
	switch {
	case errors.Is(err, io.EOF):
	case err != nil:
		return nil, err
	case mfFound:
		im.prog.setFile(name)
		if mf, err = io.ReadAll(ova); err != nil {
			return nil, err
		}
	}
	if err := im.descriptor(ovfName, ovf, mfName, mf, mfFound); err != nil {
		return nil, err
	}
	want := map[string]packageFile{}
	for _, f := range im.files() {
		want[f.name] = f
	}
	seen := map[string]bool{}
	for {
		name, size, err := ova.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		f, ok := want[name]
		if !ok {
			// Not a file this import uses (VMware's NVRAM, say):
			// skipped if small.
			if size > MaxUEFIVarsBytes {
				return nil, fmt.Errorf("%w: member %q of %d bytes is not a file of the package", ErrMalformed, name, size)
			}
			im.log.Debug("skipping a member the import does not use", "member", name, "size", size)
			continue
		}
		switch {
		case f.declared > 0 && size < f.declared:
			return nil, fmt.Errorf("%w: member %q has %d bytes, the descriptor declares %d", ErrTruncated, name, size, f.declared)
		case f.declared > 0 && size > f.declared:
			return nil, fmt.Errorf("%w: member %q has %d bytes, more than the %d the descriptor declares", ErrTooLarge, name, size, f.declared)
		case size > f.limit:
			return nil, fmt.Errorf("%w: member %q has %d bytes, more than %d", ErrTooLarge, name, size, f.limit)
		}
		if err := im.receive(ctx, f, ova, size); err != nil {
			return nil, err
		}
		seen[name] = true
	}
	for _, f := range im.files() {
		if !seen[f.name] {
			return nil, fmt.Errorf("%w: the archive has no member %q", ErrMalformed, f.name)
		}
	}
	return im.res, nil
}

// countReader counts the bytes read for progress.
type countReader struct {
	r    io.Reader
	prog *progress
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.prog.wrote(int64(n), c.prog.watermark()+int64(n))
	return n, err
}
