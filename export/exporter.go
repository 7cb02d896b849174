package export

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/twinsnap/twinsnap/export/disk"
)

// Errors of Export, besides those of the transport and the descriptor.
var (
	// ErrPaused reports an export that stopped because its maintenance
	// window closed. The error is a *PausedError that says when the
	// window opens again; calling Export with the last progress offset as
	// Resume then continues where it stopped.
	ErrPaused = errors.New("export: paused: the maintenance window closed")

	// ErrInvalidSpec reports an ExportSpec or ExportOptions that cannot be
	// exported: no volumes, a volume that does not match its disk, an
	// unknown format, a resume offset beyond the package.
	ErrInvalidSpec = errors.New("export: invalid export")
)

// PausedError is the error of an export paused by its maintenance window.
// It wraps ErrPaused.
type PausedError struct {
	// Until is when the window opens again.
	Until time.Time
}

// Error implements error.
func (e *PausedError) Error() string {
	return fmt.Sprintf("%v; it opens again at %s", ErrPaused, e.Until.Format(time.RFC3339))
}

// Unwrap returns ErrPaused.
func (e *PausedError) Unwrap() error { return ErrPaused }

// Defaults of ExportOptions.
const (
	// DefaultParallelism is the number of concurrent WriteAt calls.
	DefaultParallelism = 4
	// progressEvery is the longest time between two progress reports.
	progressEvery = time.Second
)

// ExportVolume is one volume of the snapshot to export.
type ExportVolume struct {
	// VolumeID identifies the volume (logs and errors).
	VolumeID string
	// Name is the volume's name; the disk file is "P-<Name>.qcow2" or
	// ".vmdk", so it must make a safe file name (CheckName).
	Name string
	// Serial is the disk's serial number; optional.
	Serial string
	// Boot marks the boot volume.
	Boot bool
	// SizeBytes is the volume's virtual size; it must equal Source.Size().
	SizeBytes int64
	// Source is the snapshot's data: a *volumes.View of the snapshot's
	// chain on this node. It must read the same bytes on every call of
	// Export for one package, which a stored snapshot does.
	Source disk.Source
}

// ExportSpec says what to export and how.
type ExportSpec struct {
	// Package is the package's name P (see DiskName and PackagePath).
	Package string
	// Format is FormatQCOW2 or FormatVMDK, for every disk.
	Format string
	// OVA writes the package as one archive "P.ova" instead of a
	// directory "P".
	OVA bool
	// Descriptor describes the VM. The caller fills it, except
	// Disks[i].File, FileSize and PopulatedBytes, which Export fills, and
	// the UEFI store's name and size in Twinsnap. Disks[i] describes
	// Volumes[i]; when Disks is empty it is made from Volumes. A disk's
	// empty Name, Format, CapacityBytes, Serial and Boot are taken from
	// its volume (values that contradict it are refused), an empty ID is
	// "vol-<name>" and an empty Controller ControllerVirtio.
	Descriptor Descriptor
	// Volumes are the volumes to export, in the order of the disks.
	Volumes []ExportVolume
	// UEFIVars is the path of a local file holding the VM's UEFI variable
	// store, or "". It needs Descriptor.Twinsnap and firmware "efi".
	UEFIVars string
}

// Progress reports an export's or an import's advance.
type Progress struct {
	// File is the package file being written or read.
	File string
	// Offset is the resume watermark in the package stream (the package's
	// files in writing order, one after the other): every byte below it
	// is written and, for files already finished, flushed and verified.
	// Pass the last Offset as ExportOptions.Resume to continue. For an
	// import it is the number of bytes read.
	Offset int64
	// Bytes counts the bytes written (or read) by this call.
	Bytes int64
	// Total is the package stream's length. For a VMDK package written
	// as a directory it is an estimate (the sources' allocated bytes
	// stand for compressed sizes not known yet) until the last disk is
	// generated.
	Total int64
	// Rate is the recent transfer rate in bytes per second.
	Rate int64
}

// ExportOptions tunes Export.
type ExportOptions struct {
	// Parallelism is the number of concurrent WriteAt calls (default
	// DefaultParallelism); the read-back of each written file keeps
	// twice as many ReadAt calls in flight.
	Parallelism int
	// ChunkWindow bounds the chunks generated and not yet written, the
	// writes in flight included (default twice Parallelism, at least
	// Parallelism). An interrupted export writes at most this many chunks
	// (of 1 MiB) again when resumed.
	ChunkWindow int
	// Resume is the Offset of the last Progress of an earlier call for
	// the same package and spec, or 0 to start afresh.
	Resume int64
	// Window, if not nil, is the maintenance window the export runs in:
	// Export returns a *PausedError at once when it is closed, and stops
	// at a chunk boundary when it closes.
	Window *Window
	// Now returns the current time (default time.Now).
	Now func() time.Time
	// OnProgress, if not nil, is called at least every second and at the
	// end of every file, never concurrently. An error it returns stops
	// the export and is returned, wrapped.
	OnProgress func(Progress) error
	// Logger receives the export's records (default slog.Default()).
	Logger *slog.Logger
}

// ExportedFile is one file of an exported package.
type ExportedFile struct {
	// Name is the file's name in the package.
	Name string
	// Size is its size in bytes.
	Size int64
	// SHA256 is its SHA-256, as the manifest lists it (the manifest
	// itself included, though it lists no sum of its own).
	SHA256 []byte
}

// ExportResult describes a finished export (or, with an error, how far a
// call got).
type ExportResult struct {
	// Path is the package's name at the transport's root: "P" or "P.ova".
	Path string
	// Files are the package's files in manifest order (the descriptor,
	// the disks, the UEFI store), then the manifest.
	Files []ExportedFile
	// Size is the package's size on the share: the sum of the files'
	// sizes, or the archive's size.
	Size int64
	// Written counts the bytes this call wrote.
	Written int64
	// Rewritten counts the bytes this call wrote where an interrupted
	// earlier call may have written them already: the resume overlap, at
	// most ChunkWindow chunks. It is an upper bound (measured against the
	// interrupted file's size on the share).
	Rewritten int64
	// Duration is how long this call took.
	Duration time.Duration
}

// Export writes the package spec describes to t, or continues an
// interrupted export of it (opts.Resume).
//
// The disks are generated from the volumes chunk by chunk (export/disk)
// and written with opts.Parallelism concurrent writes, skipping
// unallocated space, into "P.part/" (or the archive "P.ova.part"): disk
// files first, then the descriptor and the manifest last. Every file is
// flushed and read back through the transport once written, and its
// SHA-256 compared with what was generated, so the manifest matches what
// is on the share; only then is the watermark moved past it. The
// temporary name is renamed to "P" (or "P.ova") at the end; a package
// that already exists under that name is an error wrapping ErrExist.
//
// A resumed export regenerates, without writing, everything below
// opts.Resume (reading the volumes again, and compressing again for VMDK)
// to recompute the sums, reopens the temporary files without truncating
// them and continues at the first chunk not below the watermark. Files
// finished by earlier calls were verified then; now only their sizes are
// checked. When the temporary package is gone, or shorter than the
// watermark says, the export starts again from the beginning.
//
// An OVA of VMDK disks needs every member's size before the first data
// offset is known, and a compressed VMDK's size is known only once it is
// generated: such an export generates each VMDK twice, once to learn its
// size (reading the whole volume and compressing it, CPU only, no I/O to
// the share) and once to write it. qcow2 sizes are known up front.
//
// When the maintenance window closes, the export stops at a chunk
// boundary, reports its progress and returns a *PausedError (ErrPaused).
func Export(ctx context.Context, t Transport, spec ExportSpec, opts ExportOptions) (ExportResult, error) {
	began := time.Now()
	x, err := newExporter(t, spec, opts)
	if err != nil {
		return ExportResult{}, err
	}
	res, err := x.run(ctx)
	if errors.Is(err, errRestart) {
		x.log.Warn("cannot resume, starting the export again from the beginning", "resume", x.resume, "reason", err)
		x.resume = 0
		res, err = x.run(ctx)
	}
	res.Duration = time.Since(began)
	if err != nil {
		var paused *PausedError
		if errors.As(err, &paused) {
			x.log.Info("export paused by its maintenance window", "until", paused.Until, "offset", x.prog.watermark())
		} else {
			x.log.Error("export failed", "offset", x.prog.watermark(), "err", err)
		}
		return res, err
	}
	x.log.Info("export finished", "path", res.Path, "bytes", res.Size, "written", res.Written,
		"rewritten", res.Rewritten, "duration", res.Duration.Round(time.Millisecond))
	return res, nil
}

// errRestart makes Export start an export again from the beginning.
var errRestart = errors.New("export: the interrupted package cannot be resumed")

// exporter is one call of Export.
type exporter struct {
	t      Transport
	spec   ExportSpec
	opts   ExportOptions
	log    *slog.Logger
	desc   Descriptor // the descriptor with the exporter's fields filled
	uefi   []byte     // the UEFI store's content
	resume int64

	// State of one run, reset by run.
	segs    []*segment
	prog    *progress
	closeAt time.Time     // the window's close; zero without a window
	pause   chan struct{} // closed when the window closes
	ovaW    FileWriter    // the archive, open for the whole run
	renamed bool          // an earlier call renamed the package already
	res     ExportResult

	// The resume overlap: the first file a resumed call writes, and the
	// file offset below which its writes may repeat earlier ones.
	overlapSeg   *segment
	overlapLimit int64
	rewritten    atomic.Int64
}

// newExporter checks spec and opts and fills the descriptor.
func newExporter(t Transport, spec ExportSpec, opts ExportOptions) (*exporter, error) {
	if opts.Parallelism <= 0 {
		opts.Parallelism = DefaultParallelism
	}
	if opts.ChunkWindow <= 0 {
		opts.ChunkWindow = 2 * opts.Parallelism
	}
	opts.ChunkWindow = max(opts.ChunkWindow, opts.Parallelism)
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	x := &exporter{t: t, spec: spec, opts: opts, resume: opts.Resume,
		log: opts.Logger.With("component", "export", "package", spec.Package)}
	if err := x.check(); err != nil {
		return nil, err
	}
	return x, nil
}

// check validates the spec and fills x.desc.
func (x *exporter) check() error {
	spec := &x.spec
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: package %q: %s", ErrInvalidSpec, spec.Package, fmt.Sprintf(format, a...))
	}
	if err := checkPackageName(spec.Package); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if spec.Format != FormatQCOW2 && spec.Format != FormatVMDK {
		return bad("format %q, want %q or %q", spec.Format, FormatQCOW2, FormatVMDK)
	}
	if len(spec.Volumes) == 0 {
		return bad("no volumes")
	}
	if x.opts.Resume < 0 {
		return bad("negative resume offset %d", x.opts.Resume)
	}
	if w := x.opts.Window; w != nil && w.IsZero() {
		return bad("%v: the zero window never opens", ErrWindow)
	}
	d := spec.Descriptor
	d.Disks = append([]Disk(nil), d.Disks...)
	if len(d.Disks) == 0 {
		d.Disks = make([]Disk, len(spec.Volumes))
	}
	if len(d.Disks) != len(spec.Volumes) {
		return bad("%d disks in the descriptor for %d volumes", len(d.Disks), len(spec.Volumes))
	}
	names := nameSet{}
	for i := range spec.Volumes {
		v, k := &spec.Volumes[i], &d.Disks[i]
		if v.Source == nil {
			return bad("volume %q (%s) has no source", v.Name, v.VolumeID)
		}
		size := v.Source.Size()
		if v.SizeBytes != size {
			return bad("volume %q (%s): size %d, but its source has %d bytes", v.Name, v.VolumeID, v.SizeBytes, size)
		}
		fill := func(field string, dst *string, val string) error {
			if *dst == "" {
				*dst = val
			} else if *dst != val {
				return bad("disk %d: %s %q, but volume %q has %q", i, field, *dst, v.Name, val)
			}
			return nil
		}
		if err := errors.Join(fill("name", &k.Name, v.Name), fill("format", &k.Format, spec.Format)); err != nil {
			return err
		}
		if k.ID == "" {
			k.ID = "vol-" + v.Name
		}
		if k.Controller == "" {
			k.Controller = ControllerVirtio
		}
		if v.Serial != "" {
			if err := fill("serial", &k.Serial, v.Serial); err != nil {
				return err
			}
		}
		if k.CapacityBytes == 0 {
			k.CapacityBytes = size
		}
		if k.CapacityBytes != size {
			return bad("disk %d: capacity %d, but volume %q has %d bytes", i, k.CapacityBytes, v.Name, size)
		}
		if v.Boot {
			k.Boot = true
		}
		if k.Boot != v.Boot {
			return bad("disk %d is the boot disk, but volume %q is not the boot volume", i, v.Name)
		}
		k.File = DiskName(spec.Package, v.Name, spec.Format)
		if err := names.add(k.File); err != nil {
			return fmt.Errorf("export: volume %q: %w", v.Name, err)
		}
		for _, e := range v.Source.Extents() {
			k.PopulatedBytes += e.Length
		}
	}
	if spec.UEFIVars != "" {
		if d.Twinsnap == nil {
			return bad("a UEFI variable store needs the twinsnap section (Descriptor.Twinsnap)")
		}
		m := *d.Twinsnap
		m.UEFIVarsFile = UEFIVarsName(spec.Package)
		d.Twinsnap = &m
	}
	x.desc = d
	return nil
}

// finalName and tempName are the package's names at the transport's root.
func (x *exporter) finalName() string {
	if x.spec.OVA {
		return x.spec.Package + OVASuffix
	}
	return x.spec.Package
}

func (x *exporter) tempName() string { return x.finalName() + PartSuffix }

// filePath returns where segment s is written: the package file in the
// temporary directory, or the archive.
func (x *exporter) filePath(s *segment) string {
	dir := x.tempName()
	if x.renamed {
		dir = x.finalName()
	}
	if x.spec.OVA {
		return dir
	}
	return dir + "/" + s.name
}

// run makes one attempt at the export from x.resume.
func (x *exporter) run(ctx context.Context) (ExportResult, error) {
	x.res = ExportResult{Path: x.finalName()}
	x.renamed, x.overlapSeg, x.overlapLimit = false, nil, 0
	x.rewritten.Store(0)
	x.prog = newProgress(x.opts.OnProgress, x.opts.Now, x.resume)
	x.pause = make(chan struct{})
	if w := x.opts.Window; w != nil {
		now := x.opts.Now()
		if !w.Open(now) {
			return x.res, &PausedError{Until: w.NextOpen(now)}
		}
		x.closeAt = w.Close(now)
		timer := time.AfterFunc(x.closeAt.Sub(now), func() { close(x.pause) })
		defer timer.Stop()
	}
	if err := x.readUEFI(); err != nil {
		return x.res, err
	}
	if err := x.plan(); err != nil {
		return x.res, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := x.prog.start(ctx, cancel)
	defer stop()
	err := x.write(ctx)
	if x.ovaW != nil {
		if cerr := x.ovaW.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("export: close %s: %w", x.tempName(), cerr)
		}
		x.ovaW = nil
	}
	if err == nil {
		err = x.finish(ctx)
	}
	x.res.Written = x.prog.written()
	x.res.Rewritten = x.rewritten.Load()
	if err == nil {
		x.prog.advance(x.segs[len(x.segs)-1].end())
	}
	if perr := x.prog.final(); perr != nil {
		switch {
		case err == nil:
			x.log.Warn("progress callback failed after the export finished", "err", perr)
		case errors.Is(err, context.Canceled) || errors.Is(err, ErrPaused):
			return x.res, fmt.Errorf("export: stopped by its progress callback: %w", perr)
		}
	}
	return x.res, err
}
