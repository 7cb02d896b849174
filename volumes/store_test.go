package volumes

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func openStore(t *testing.T) *Store {
	t.Helper()
	s, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatalf("OpenStore: %v", err)
	}
	return s
}

func TestCreateExpandRemove(t *testing.T) {
	s := openStore(t)
	c, err := s.Create("vol1", 1<<20)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if c.ID != "vol1" || c.Capacity != 1<<20 {
		t.Fatalf("Create returned %+v", c)
	}
	if _, err := s.Create("vol1", 1<<20); !errors.Is(err, ErrExists) {
		t.Fatalf("second Create: got %v, want ErrExists", err)
	}
	if _, err := s.Create("vol2", 0); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Create with capacity 0: got %v, want ErrInvalid", err)
	}
	if c, err = s.Expand("vol1", 2<<20); err != nil || c.Capacity != 2<<20 {
		t.Fatalf("Expand: %+v, %v", c, err)
	}
	if _, err := s.Expand("vol1", 1<<20); !errors.Is(err, ErrShrink) {
		t.Fatalf("shrinking Expand: got %v, want ErrShrink", err)
	}
	if c, err = s.Get("vol1"); err != nil || c.Capacity != 2<<20 {
		t.Fatalf("Get after refused shrink: %+v, %v", c, err)
	}
	if _, err := s.Expand("nope", 5); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Expand of missing: got %v, want ErrNotFound", err)
	}
	if _, err := s.Create("vol0", 10); err != nil {
		t.Fatalf("Create vol0: %v", err)
	}
	list, err := s.List()
	if err != nil || len(list) != 2 || list[0].ID != "vol0" || list[1].ID != "vol1" {
		t.Fatalf("List: %v, %v", list, err)
	}

	// Not empty: an image file and a reservation each keep it.
	img := s.NewImagePath("vol1", "snap1")
	if err := os.WriteFile(img, []byte("x"), 0o600); err != nil {
		t.Fatalf("write image: %v", err)
	}
	if err := s.Remove("vol1", false); !errors.Is(err, ErrInUse) {
		t.Fatalf("Remove with image: got %v, want ErrInUse", err)
	}
	if err := os.Remove(img); err != nil {
		t.Fatalf("remove image: %v", err)
	}
	r, err := s.Reserve("vol1", 10)
	if err != nil {
		t.Fatalf("Reserve: %v", err)
	}
	if err := s.Remove("vol1", false); !errors.Is(err, ErrInUse) {
		t.Fatalf("Remove with reservation: got %v, want ErrInUse", err)
	}
	r.Release()
	if err := s.Remove("vol1", false); err != nil {
		t.Fatalf("Remove of empty: %v", err)
	}
	if _, err := s.Get("vol1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after Remove: got %v, want ErrNotFound", err)
	}
	if _, err := os.Stat(filepath.Join(s.Root(), "vol1")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("container directory left behind: %v", err)
	}

	// Force removes a container with images.
	if err := os.WriteFile(s.NewImagePath("vol0", "s"), []byte("x"), 0o600); err != nil {
		t.Fatalf("write image: %v", err)
	}
	if err := s.Remove("vol0", true); err != nil {
		t.Fatalf("forced Remove: %v", err)
	}
	if err := s.Remove("vol0", true); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Remove of missing: got %v, want ErrNotFound", err)
	}
}

func TestBadIDs(t *testing.T) {
	s := openStore(t)
	bad := []string{"", ".", "..", "../x", "a/b", `a\b`, ".hidden", "a b", "x\x00", strings.Repeat("a", MaxIDLen+1), "é"}
	for _, id := range bad {
		if _, err := s.Create(id, 10); !errors.Is(err, ErrInvalid) {
			t.Fatalf("Create(%q): got %v, want ErrInvalid", id, err)
		}
		if _, err := s.Get(id); !errors.Is(err, ErrInvalid) {
			t.Fatalf("Get(%q): got %v, want ErrInvalid", id, err)
		}
		if _, err := s.Expand(id, 10); !errors.Is(err, ErrInvalid) {
			t.Fatalf("Expand(%q): got %v, want ErrInvalid", id, err)
		}
		if err := s.Remove(id, true); !errors.Is(err, ErrInvalid) {
			t.Fatalf("Remove(%q): got %v, want ErrInvalid", id, err)
		}
		if _, err := s.Reserve(id, 1); !errors.Is(err, ErrInvalid) {
			t.Fatalf("Reserve(%q): got %v, want ErrInvalid", id, err)
		}
	}
	ents, err := os.ReadDir(s.Root())
	if err != nil || len(ents) != 0 {
		t.Fatalf("bad ids touched the store: %v, %v", ents, err)
	}
	if err := ValidateID(strings.Repeat("a", MaxIDLen)); err != nil {
		t.Fatalf("id of MaxIDLen refused: %v", err)
	}
}

func TestMetadataSurvivesReopen(t *testing.T) {
	root := t.TempDir()
	s, err := OpenStore(root)
	if err != nil {
		t.Fatalf("OpenStore: %v", err)
	}
	if _, err := s.Create("v", 100); err != nil {
		t.Fatalf("Create: %v", err)
	}
	if _, err := s.Expand("v", 300); err != nil {
		t.Fatalf("Expand: %v", err)
	}
	s2, err := OpenStore(root)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	c, err := s2.Get("v")
	if err != nil || c.Capacity != 300 || c.Created.IsZero() || c.Expanded.IsZero() {
		t.Fatalf("Get after reopen: %+v, %v", c, err)
	}
	// No temporary files are left next to the metadata.
	ents, err := os.ReadDir(filepath.Join(root, "v"))
	if err != nil {
		t.Fatalf("ReadDir: %v", err)
	}
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp") {
			t.Fatalf("temporary file left: %s", e.Name())
		}
	}
}

func TestCorruptMetadata(t *testing.T) {
	s := openStore(t)
	if _, err := s.Create("v", 100); err != nil {
		t.Fatalf("Create: %v", err)
	}
	meta := filepath.Join(s.Root(), "v", "container.json")
	for _, content := range []string{"{not json", `{"version":1,"id":"other","capacity":5}`, `{"version":1,"id":"v","capacity":-1}`, ""} {
		if err := os.WriteFile(meta, []byte(content), 0o600); err != nil {
			t.Fatalf("write: %v", err)
		}
		_, err := s.Get("v")
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), meta) {
			t.Fatalf("Get with metadata %q: got %v, want ErrCorrupt naming %s", content, err, meta)
		}
		if _, err := s.List(); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("List with metadata %q: got %v, want ErrCorrupt", content, err)
		}
		if _, err := s.Expand("v", 1000); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Expand with metadata %q: got %v, want ErrCorrupt", content, err)
		}
	}
}

func TestReserve(t *testing.T) {
	s := openStore(t)
	if _, err := s.Create("v", 1<<20); err != nil {
		t.Fatalf("Create: %v", err)
	}
	// 64 KiB of real data: used counts allocated blocks.
	data := make([]byte, 64<<10)
	for i := range data {
		data[i] = 1
	}
	if err := os.WriteFile(s.NewImagePath("v", "a"), data, 0o600); err != nil {
		t.Fatalf("write: %v", err)
	}
	// A sparse file of large apparent size allocates (almost) nothing.
	f, err := os.Create(s.NewImagePath("v", "sparse"))
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if err := f.Truncate(100 << 20); err != nil {
		t.Fatalf("truncate: %v", err)
	}
	f.Close()
	used, err := s.Used("v")
	if err != nil || used < 64<<10 || used > 128<<10 {
		t.Fatalf("Used = %d, %v; want about 64 KiB", used, err)
	}
	free, err := s.Free("v")
	if err != nil || free != 1<<20-used {
		t.Fatalf("Free = %d, %v; want %d", free, err, 1<<20-used)
	}
	r1, err := s.Reserve("v", free-100)
	if err != nil {
		t.Fatalf("Reserve: %v", err)
	}
	if _, err := s.Reserve("v", 101); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Reserve over capacity: got %v, want ErrNoSpace", err)
	}
	r2, err := s.Reserve("v", 100)
	if err != nil {
		t.Fatalf("Reserve of exactly the rest: %v", err)
	}
	if free, _ := s.Free("v"); free != 0 {
		t.Fatalf("Free = %d with everything reserved", free)
	}
	r1.Release()
	r1.Release() // idempotent
	if free2, _ := s.Free("v"); free2 != r1.Bytes() {
		t.Fatalf("Free after release = %d, want %d", free2, r1.Bytes())
	}
	r2.Release()
	if _, err := s.Reserve("v", -1); !errors.Is(err, ErrInvalid) {
		t.Fatalf("negative Reserve: got %v, want ErrInvalid", err)
	}
	if _, err := s.Reserve("missing", 1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Reserve in missing: got %v, want ErrNotFound", err)
	}
	// Expanding makes room.
	if _, err := s.Reserve("v", 2<<20); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("big Reserve: got %v, want ErrNoSpace", err)
	}
	if _, err := s.Expand("v", 4<<20); err != nil {
		t.Fatalf("Expand: %v", err)
	}
	r3, err := s.Reserve("v", 2<<20)
	if err != nil {
		t.Fatalf("Reserve after Expand: %v", err)
	}
	r3.Release()
	var zero Reservation
	zero.Release()
}

func TestConcurrentReservations(t *testing.T) {
	s := openStore(t)
	const capacity, each, workers = 1000, 7, 64
	if _, err := s.Create("v", capacity); err != nil {
		t.Fatalf("Create: %v", err)
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		got  []Reservation
		fail int
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 10 {
				r, err := s.Reserve("v", each)
				mu.Lock()
				switch {
				case err == nil:
					got = append(got, r)
				case errors.Is(err, ErrNoSpace):
					fail++
				default:
					mu.Unlock()
					t.Errorf("Reserve: %v", err)
					return
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if want := capacity / each; len(got) != want || fail != workers*10-want {
		t.Fatalf("granted %d, refused %d; want %d granted", len(got), fail, want)
	}
	// Release concurrently, twice each.
	for _, r := range got {
		wg.Add(2)
		go func() { defer wg.Done(); r.Release() }()
		go func() { defer wg.Done(); r.Release() }()
	}
	wg.Wait()
	if free, err := s.Free("v"); err != nil || free != capacity {
		t.Fatalf("Free after releasing all = %d, %v", free, err)
	}
}
