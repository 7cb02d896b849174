package disk

import (
	"errors"
	"os"
	"syscall"
	"testing"

	"github.com/twinsnap/twinsnap/volumes"
)

// allocatedBytes returns the bytes a file occupies on disk.
func allocatedBytes(st os.FileInfo) int64 {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return s.Blocks * 512
	}
	return st.Size()
}

// dataRegions lists a sparse file's data regions (SEEK_DATA/SEEK_HOLE).
func dataRegions(t testing.TB, f *os.File) []volumes.Extent {
	t.Helper()
	const seekData, seekHole = 3, 4
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	var out []volumes.Extent
	for off := int64(0); off < st.Size(); {
		d, err := f.Seek(off, seekData)
		if errors.Is(err, syscall.ENXIO) {
			break
		}
		if err != nil {
			t.Fatalf("SEEK_DATA: %v", err)
		}
		h, err := f.Seek(d, seekHole)
		if err != nil {
			t.Fatalf("SEEK_HOLE: %v", err)
		}
		out = append(out, volumes.Extent{Start: d, Length: h - d})
		off = h
	}
	return out
}
