package disk

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/twinsnap/twinsnap/volumes"
)

// FuzzVMDKReader feeds arbitrary bytes to the reader. It must never
// panic, never write outside the disk or out of order, never accept a
// capacity over its limit, and classify every failure with a sentinel
// (or a context error, which cannot happen here). Seeds: files from our
// writer and crafted in every layout (added here), and qemu-img's own
// (testdata/fuzz/FuzzVMDKReader).
func FuzzVMDKReader(f *testing.F) {
	capacity, grains, _ := craftedGrains(f)
	f.Add(craft(capacity, grains, layoutFooter))
	f.Add(craft(capacity, grains, layoutEmbedded))
	f.Add(craft(capacity, grains, layoutRGD))
	small := []craftGrain{{lba: 0, payload: zgrain(f, grainOf(7, vmdkGrainBytes))}, {lba: 2 * vmdkGrainSect, payload: zgrain(f, grainOf(8, 512))}}
	f.Add(craft(2*vmdkGrainSect+1, small, layoutFooter))
	f.Add(craft(2*vmdkGrainSect+1, small, layoutRGD))
	m := &memSource{data: make([]byte, 300<<10)}
	copy(m.data[70<<10:], grainOf(9, 100<<10))
	m.ext = []volumes.Extent{{Start: 70 << 10, Length: 100 << 10}}
	s, err := NewStreamOptimizedVMDK(m, VMDKOptions{})
	if err != nil {
		f.Fatal(err)
	}
	b, _ := streamBytes(f, s)
	f.Add(b)

	const limit = 1 << 30
	f.Fuzz(func(t *testing.T, data []byte) {
		d := NewVMDKReader(bytes.NewReader(data), VMDKReaderOptions{MaxCapacity: limit, BufferSize: 4096})
		info, err := d.Header()
		if err == nil {
			if info.Capacity <= 0 || info.Capacity > limit {
				t.Fatalf("accepted capacity %d", info.Capacity)
			}
			info, err = d.CopyTo(t.Context(), &boundedTarget{size: info.Capacity})
		}
		if err == nil {
			if info.DataBytes > info.Capacity || info.Grains*vmdkGrainBytes < info.DataBytes {
				t.Fatalf("accepted with info %+v", info)
			}
			return
		}
		for _, s := range []error{ErrTruncated, ErrMalformed, ErrUnsupported, ErrLimit} {
			if errors.Is(err, s) {
				return
			}
		}
		t.Fatalf("error without a class: %v", err)
	})
}

// TestFuzzSeedsAreValid makes sure the stored seeds (qemu-img's files,
// trailing zero padding trimmed to one sector) are accepted, so fuzzing
// starts from inputs that reach the grains.
func TestFuzzSeedsAreValid(t *testing.T) {
	files, err := filepath.Glob("testdata/fuzz/FuzzVMDKReader/*")
	if err != nil || len(files) == 0 {
		t.Fatalf("no stored seeds: %v", err)
	}
	for _, p := range files {
		raw, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.SplitN(string(raw), "\n", 3)
		if len(lines) < 2 || lines[0] != "go test fuzz v1" || !strings.HasPrefix(lines[1], "[]byte(") {
			t.Fatalf("%s: not a fuzz corpus file", p)
		}
		s, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[1], "[]byte("), ")"))
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		info, err := readOnly(t, []byte(s), VMDKReaderOptions{})
		if err != nil || info.Grains == 0 {
			t.Fatalf("%s: %+v, %v", p, info, err)
		}
	}
}
