package export

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/twinsnap/twinsnap/export/disk"
)

// readUEFI reads the UEFI variable store, bounded by MaxUEFIVarsBytes.
func (x *exporter) readUEFI() error {
	if x.spec.UEFIVars == "" || x.uefi != nil {
		return nil
	}
	f, err := os.Open(x.spec.UEFIVars)
	if err != nil {
		return fmt.Errorf("export: UEFI variable store: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxUEFIVarsBytes+1))
	if err != nil {
		return fmt.Errorf("export: UEFI variable store %s: %w", x.spec.UEFIVars, err)
	}
	switch {
	case len(data) > MaxUEFIVarsBytes:
		return fmt.Errorf("%w: UEFI variable store %s: %w: more than %d bytes", ErrInvalidSpec, x.spec.UEFIVars, ErrTooLarge, MaxUEFIVarsBytes)
	case len(data) == 0:
		return fmt.Errorf("%w: UEFI variable store %s is empty", ErrInvalidSpec, x.spec.UEFIVars)
	}
	x.uefi = data
	x.desc.Twinsnap.UEFIVarsSize = int64(len(data))
	return nil
}

// newStream returns the generator of disk file i. Every option is fixed,
// so a resumed export regenerates the same bytes.
func (x *exporter) newStream(i int) (disk.Stream, error) {
	v := x.spec.Volumes[i]
	var s disk.Stream
	var err error
	if x.spec.Format == FormatVMDK {
		adapter := "lsilogic"
		if x.desc.Disks[i].Controller == ControllerIDE {
			adapter = "ide"
		}
		s, err = disk.NewStreamOptimizedVMDK(v.Source, disk.VMDKOptions{FileName: x.desc.Disks[i].File, AdapterType: adapter})
	} else {
		s, err = disk.NewQCOW2(v.Source, disk.QCOW2Options{})
	}
	if err != nil {
		return nil, fmt.Errorf("%w: volume %q (%s): %w", ErrInvalidSpec, v.Name, v.VolumeID, err)
	}
	return s, nil
}

// plan lays out the package: its segments in writing order with every
// size known before writing, and the archive's layout.
func (x *exporter) plan() error {
	x.segs = nil
	for i, k := range x.desc.Disks {
		s := &segment{kind: segDisk, name: k.File, vol: i, size: -1, populated: k.PopulatedBytes}
		if x.spec.Format == FormatQCOW2 {
			st, err := x.newStream(i)
			if err != nil {
				return err
			}
			s.size = st.Size()
		}
		x.segs = append(x.segs, s)
	}
	if x.uefi != nil {
		x.segs = append(x.segs, &segment{kind: segUEFI, name: x.desc.Twinsnap.UEFIVarsFile, size: int64(len(x.uefi)), data: x.uefi})
	}
	x.segs = append(x.segs,
		&segment{kind: segOVF, name: DescriptorName(x.spec.Package), size: -1},
		&segment{kind: segMF, name: ManifestName(x.spec.Package), size: -1})
	if x.spec.OVA {
		if x.spec.Format == FormatVMDK {
			if err := x.sizeVMDKs(); err != nil {
				return err
			}
		}
		if err := x.buildDescriptor(); err != nil {
			return err
		}
		x.segs = append(x.segs, &segment{kind: segFrame, name: x.finalName(), size: -1})
		if err := x.layOutArchive(); err != nil {
			return err
		}
	} else if x.spec.Format == FormatQCOW2 {
		if err := x.buildDescriptor(); err != nil {
			return err
		}
	}
	x.place()
	return nil
}

// sizeVMDKs generates every VMDK once, without writing it, to learn its
// size (and its sum) before the archive is laid out.
func (x *exporter) sizeVMDKs() error {
	for _, s := range x.segs {
		if s.kind != segDisk {
			continue
		}
		began := time.Now()
		st, err := x.newStream(s.vol)
		if err != nil {
			return err
		}
		size, sum, err := hashStream(streamPieces{st, 0}, nil)
		if err != nil {
			return fmt.Errorf("export: generating %s: %w", s.name, err)
		}
		s.size, s.sum = size, sum
		x.log.Info("VMDK generated once to learn its size for the archive layout", "file", s.name, "size", size, "took", time.Since(began).Round(time.Millisecond))
	}
	return nil
}

// buildDescriptor writes the descriptor with the disks' sizes; it needs
// every disk's size.
func (x *exporter) buildDescriptor() error {
	d := x.desc
	d.Disks = append([]Disk(nil), x.desc.Disks...)
	for _, s := range x.segs {
		if s.kind == segDisk {
			d.Disks[s.vol].FileSize = s.size
		}
	}
	var b bytesWriter
	if err := WriteDescriptor(&b, &d); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidSpec, err)
	}
	for _, s := range x.segs {
		if s.kind == segOVF {
			s.data, s.size = b.buf, int64(len(b.buf))
		}
		if s.kind == segMF {
			// Every line is "SHA256(name)= " and 64 hex digits: the
			// size is known before the sums are.
			s.size = 0
			for _, o := range x.segs {
				if o.kind != segMF && o.kind != segFrame {
					s.size += int64(len(AlgSHA256+"()= \n")) + int64(len(o.name)) + 64
				}
			}
		}
	}
	return nil
}

// bytesWriter collects what is written to it.
type bytesWriter struct{ buf []byte }

func (b *bytesWriter) Write(p []byte) (int, error) { b.buf = append(b.buf, p...); return len(p), nil }

// layOutArchive places the members' data in the archive (descriptor,
// manifest, then the files in References order) and records the frame.
func (x *exporter) layOutArchive() error {
	byKind := func(k segKind) []*segment {
		var out []*segment
		for _, s := range x.segs {
			if s.kind == k {
				out = append(out, s)
			}
		}
		return out
	}
	var members []*segment
	members = append(members, byKind(segOVF)...)
	members = append(members, byKind(segMF)...)
	members = append(members, byKind(segDisk)...)
	members = append(members, byKind(segUEFI)...)
	names := make([]string, len(members))
	sizes := make([]int64, len(members))
	for i, s := range members {
		names[i], sizes[i] = s.name, s.size
	}
	offsets, total := OVALayout(names, sizes)
	if offsets == nil {
		return fmt.Errorf("%w: package %q: no archive layout for %v", ErrInvalidSpec, x.spec.Package, names)
	}
	for i, s := range members {
		s.base = offsets[i]
	}
	var rec frameRecorder
	if err := WriteOVAFrame(&rec, names, sizes); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidSpec, err)
	}
	frame := x.segs[len(x.segs)-1]
	frame.pieces, frame.size = rec.pieces, rec.pos
	x.res.Size = total
	return nil
}

// place sets the stream positions of the segments whose predecessors'
// sizes are known, and the progress total.
func (x *exporter) place() {
	var pos, est int64
	known := true
	for _, s := range x.segs {
		if known {
			s.start = pos
		}
		switch {
		case s.size >= 0:
			pos += s.size
			est += s.size
		case s.kind == segDisk:
			known = false
			est += s.populated
		default:
			known = false
			est += 4 << 10 // the descriptor or the manifest
		}
	}
	x.prog.setTotal(est, known)
}
