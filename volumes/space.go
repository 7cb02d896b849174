package volumes

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

// imageFiles returns the absolute paths of the container's image files,
// sorted. A missing images directory is an empty list.
func (s *Store) imageFiles(id string) ([]string, error) {
	dir := s.imagesDir(id)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if e.Type().IsRegular() && strings.HasSuffix(e.Name(), imageExt) && !strings.HasPrefix(e.Name(), ".") {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	sort.Strings(out)
	return out, nil
}

// allocated returns the bytes a file occupies on disk (st_blocks*512), not
// its apparent size: a sparse qcow2 costs only what it has allocated.
func allocated(path string) (int64, error) {
	st, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		return sys.Blocks * 512, nil
	}
	return st.Size(), nil
}

// used sums the allocated sizes of the container's image files.
func (s *Store) used(id string) (int64, error) {
	files, err := s.imageFiles(id)
	if err != nil {
		return 0, err
	}
	var total int64
	for _, f := range files {
		n, err := allocated(f)
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed since the listing
		}
		if err != nil {
			return 0, err
		}
		total += n
	}
	return total, nil
}

// Used returns the container's used space in bytes: the sum of the
// allocated (on-disk) sizes of its image files.
func (s *Store) Used(id string) (int64, error) {
	if err := ValidateID(id); err != nil {
		return 0, fmt.Errorf("used: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.readMeta(id); err != nil {
		return 0, fmt.Errorf("used: %w", err)
	}
	n, err := s.used(id)
	if err != nil {
		return 0, fmt.Errorf("used %s: %w", id, err)
	}
	return n, nil
}

// Free returns the bytes that can still be reserved in the container:
// capacity minus used space minus outstanding reservations, never below 0.
func (s *Store) Free(id string) (int64, error) {
	if err := ValidateID(id); err != nil {
		return 0, fmt.Errorf("free: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c, err := s.readMeta(id)
	if err != nil {
		return 0, fmt.Errorf("free: %w", err)
	}
	u, err := s.used(id)
	if err != nil {
		return 0, fmt.Errorf("free %s: %w", id, err)
	}
	return max(0, c.Capacity-u-s.reservedBytes(id)), nil
}

func (s *Store) reservedBytes(id string) int64 {
	var n int64
	for r := range s.reserved[id] {
		n += r.bytes
	}
	return n
}

type reservation struct {
	id       string
	bytes    int64
	released bool // guarded by Store.mu
}

// Reservation holds space in a container for data about to be written (a
// snapshot's images) so that concurrent snapshots cannot together overrun
// the container. It lives in memory only. Release it once the data is
// written (the images now count as used) or abandoned. The zero value is a
// released reservation.
type Reservation struct {
	s *Store
	r *reservation
}

// Bytes returns the number of bytes the reservation holds.
func (r Reservation) Bytes() int64 {
	if r.r == nil {
		return 0
	}
	return r.r.bytes
}

// Release returns the reserved space. It is safe to call more than once and
// from several goroutines.
func (r Reservation) Release() {
	if r.s == nil || r.r == nil {
		return
	}
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	if r.r.released {
		return
	}
	r.r.released = true
	delete(r.s.reserved[r.r.id], r.r)
	if len(r.s.reserved[r.r.id]) == 0 {
		delete(r.s.reserved, r.r.id)
	}
}

// Reserve sets bytes aside in the container. It fails with ErrNoSpace when
// used space plus outstanding reservations plus bytes would exceed the
// capacity, so a snapshot can be refused before a guest is touched.
func (s *Store) Reserve(id string, bytes int64) (Reservation, error) {
	if err := ValidateID(id); err != nil {
		return Reservation{}, fmt.Errorf("reserve: %w", err)
	}
	if bytes < 0 {
		return Reservation{}, fmt.Errorf("reserve %d bytes in %s: %w", bytes, id, ErrInvalid)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c, err := s.readMeta(id)
	if err != nil {
		return Reservation{}, fmt.Errorf("reserve: %w", err)
	}
	u, err := s.used(id)
	if err != nil {
		return Reservation{}, fmt.Errorf("reserve in %s: %w", id, err)
	}
	held := s.reservedBytes(id)
	if u+held+bytes > c.Capacity || u+held+bytes < 0 {
		return Reservation{}, fmt.Errorf("reserve %d bytes in %s: used %d + reserved %d exceeds capacity %d: %w",
			bytes, id, u, held, c.Capacity, ErrNoSpace)
	}
	r := &reservation{id: id, bytes: bytes}
	if s.reserved[id] == nil {
		s.reserved[id] = map[*reservation]struct{}{}
	}
	s.reserved[id][r] = struct{}{}
	return Reservation{s: s, r: r}, nil
}
