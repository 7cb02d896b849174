package export_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/export"
	"github.com/twinsnap/twinsnap/volumes"
)

// memSource is a disk.Source held in memory.
type memSource struct{ data []byte }

func (m memSource) Size() int64 { return int64(len(m.data)) }

func (m memSource) Extents() []volumes.Extent {
	return []volumes.Extent{{Start: 0, Length: int64(len(m.data))}}
}

func (m memSource) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m.data)) {
		return 0, io.EOF
	}
	n := copy(p, m.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func memSpec() export.ExportSpec {
	src := memSource{data: []byte(strings.Repeat("twinsnap", 1<<13))} // 64 KiB
	return export.ExportSpec{
		Package: "mem", Format: export.FormatQCOW2,
		Descriptor: export.Descriptor{Name: "mem", CPUs: 1, MemoryMiB: 64},
		Volumes:    []export.ExportVolume{{VolumeID: "v1", Name: "root", Boot: true, SizeBytes: src.Size(), Source: src}},
	}
}

func TestExportRefusesBadSpecs(t *testing.T) {
	tr, _ := newLocal(t)
	for _, tc := range []struct {
		name string
		edit func(*export.ExportSpec, *export.ExportOptions)
		want error
		msg  string
	}{
		{"no volumes", func(s *export.ExportSpec, _ *export.ExportOptions) { s.Volumes = nil }, export.ErrInvalidSpec, "no volumes"},
		{"format", func(s *export.ExportSpec, _ *export.ExportOptions) { s.Format = "raw" }, export.ErrInvalidSpec, `format "raw"`},
		{"size", func(s *export.ExportSpec, _ *export.ExportOptions) { s.Volumes[0].SizeBytes++ }, export.ErrInvalidSpec, "its source has 65536 bytes"},
		{"name", func(s *export.ExportSpec, _ *export.ExportOptions) {
			s.Descriptor.Disks = []export.Disk{{Name: "other"}}
		}, export.ErrInvalidSpec, `name "other", but volume "root" has "root"`},
		{"boot", func(s *export.ExportSpec, _ *export.ExportOptions) { s.Volumes[0].Boot = false }, export.ErrMalformed, "boot"},
		{"unsafe volume name", func(s *export.ExportSpec, _ *export.ExportOptions) { s.Volumes[0].Name = "../../x" }, export.ErrUnsafeName, "path"},
		{"volumes on one file", func(s *export.ExportSpec, _ *export.ExportOptions) {
			v := s.Volumes[0]
			v.Name, v.Boot = "ROOT", false
			s.Volumes = append(s.Volumes, v)
		}, export.ErrUnsafeName, "case-insensitive"},
		{"unsafe package name", func(s *export.ExportSpec, _ *export.ExportOptions) { s.Package = "a/b" }, export.ErrUnsafeName, "separator"},
		{"package named like a temporary one", func(s *export.ExportSpec, _ *export.ExportOptions) { s.Package = "x.part" }, export.ErrUnsafeName, ".part"},
		{"UEFI store without the twinsnap section", func(s *export.ExportSpec, _ *export.ExportOptions) { s.UEFIVars = "/dev/null" }, export.ErrInvalidSpec, "twinsnap section"},
		{"negative resume", func(_ *export.ExportSpec, o *export.ExportOptions) { o.Resume = -1 }, export.ErrInvalidSpec, "negative"},
		{"zero window", func(_ *export.ExportSpec, o *export.ExportOptions) { o.Window = &export.Window{} }, export.ErrInvalidSpec, "never opens"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec, opts := memSpec(), export.ExportOptions{}
			tc.edit(&spec, &opts)
			_, err := export.Export(context.Background(), tr, spec, opts)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("got %v, want %v saying %q", err, tc.want, tc.msg)
			}
		})
	}
	if list, err := tr.List(context.Background(), ""); err != nil || len(list) != 0 {
		t.Errorf("refused exports left %v (%v)", list, err)
	}
}

// TestExportPausesWhileClosed starts an export outside its window: it
// returns at once with the window's next opening and writes nothing.
func TestExportPausesWhileClosed(t *testing.T) {
	tr, _ := newLocal(t)
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC) // a Monday
	win, err := export.ParseWindow("22:00-04:00", "mon-fri", time.UTC)
	if err != nil {
		t.Fatal(err)
	}
	_, err = export.Export(context.Background(), tr, memSpec(), export.ExportOptions{Window: &win, Now: func() time.Time { return now }})
	var paused *export.PausedError
	if !errors.As(err, &paused) || !errors.Is(err, export.ErrPaused) {
		t.Fatalf("export outside its window: %v", err)
	}
	if want := time.Date(2026, 11, 23, 22, 0, 0, 0, time.UTC); !paused.Until.Equal(want) {
		t.Errorf("Until %v, want %v", paused.Until, want)
	}
	if list, _ := tr.List(context.Background(), ""); len(list) != 0 {
		t.Errorf("a paused export wrote %v", list)
	}
	// Inside the window it runs.
	now = now.Add(11 * time.Hour)
	if _, err := export.Export(context.Background(), tr, memSpec(), export.ExportOptions{Window: &win, Now: func() time.Time { return now }}); err != nil {
		t.Fatalf("export inside its window: %v", err)
	}
}
