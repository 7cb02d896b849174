package volumes

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// Sentinel errors; every error this package returns that belongs to one of
// these classes wraps it, so callers decide with errors.Is.
var (
	// ErrNotFound: the container or image does not exist.
	ErrNotFound = errors.New("volumes: not found")
	// ErrExists: the container or image already exists.
	ErrExists = errors.New("volumes: already exists")
	// ErrShrink: a container's capacity can grow, never shrink.
	ErrShrink = errors.New("volumes: capacity cannot shrink")
	// ErrNoSpace: the container has no room for what was asked.
	ErrNoSpace = errors.New("volumes: not enough space in volume container")
	// ErrInvalid: an argument (id, size, path) is not acceptable.
	ErrInvalid = errors.New("volumes: invalid argument")
	// ErrInUse: the container still holds images or reservations.
	ErrInUse = errors.New("volumes: volume container in use")
	// ErrCorrupt: a metadata file or an image failed its check.
	ErrCorrupt = errors.New("volumes: corrupt")
	// ErrToolMissing: qemu-img (or another required tool) is not installed.
	ErrToolMissing = errors.New("volumes: required tool not found")
)

const (
	// MaxIDLen bounds container and snapshot ids.
	MaxIDLen  = 128
	metaName  = "container.json"
	imagesDir = "images"
	imageExt  = ".qcow2"
	// metaVersion is the version of the metadata file format.
	metaVersion = 1
)

// Container describes one volume container: the space set aside on this
// data node for one volume plus its snapshot data.
type Container struct {
	// Version is the metadata format version.
	Version int `json:"version"`
	// ID names the container (usually the volume's id).
	ID string `json:"id"`
	// Capacity is the space set aside, in bytes; it only grows.
	Capacity int64 `json:"capacity"`
	// Created is when the container was created (UTC).
	Created time.Time `json:"created"`
	// Expanded is when the capacity last grew (zero if never).
	Expanded time.Time `json:"expanded,omitzero"`
}

// Store manages the volume containers under one storage path: one
// directory per container holding container.json and an images/ directory.
// A Store is safe for concurrent use. Reservations are held in memory only
// and do not survive a restart of the process (nothing in flight does).
type Store struct {
	root string

	mu       sync.Mutex // guards metadata changes and reserved
	reserved map[string]map[*reservation]struct{}

	chainMu sync.Mutex // serialises image creation and chain edits
}

// OpenStore opens (creating it if needed) the store rooted at root.
func OpenStore(root string) (*Store, error) {
	if root == "" {
		return nil, fmt.Errorf("open store: empty root: %w", ErrInvalid)
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("open store %q: %w", root, err)
	}
	if err := os.MkdirAll(abs, 0o750); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	st, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("open store: %s is not a directory: %w", abs, ErrInvalid)
	}
	return &Store{root: abs, reserved: map[string]map[*reservation]struct{}{}}, nil
}

// Root returns the absolute storage path of the store.
func (s *Store) Root() string { return s.root }

// ValidateID reports whether id is acceptable as a container or snapshot
// id: 1 to MaxIDLen characters from [A-Za-z0-9._-], not starting with a dot
// (which also rules out "." and "..").
func ValidateID(id string) error {
	if id == "" || len(id) > MaxIDLen {
		return fmt.Errorf("id %q: length must be 1..%d: %w", id, MaxIDLen, ErrInvalid)
	}
	if id[0] == '.' {
		return fmt.Errorf("id %q: must not start with '.': %w", id, ErrInvalid)
	}
	for _, r := range id {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' ||
			r == '-' || r == '_' || r == '.'
		if !ok {
			return fmt.Errorf("id %q: character %q not allowed: %w", id, r, ErrInvalid)
		}
	}
	return nil
}

func (s *Store) dir(id string) string       { return filepath.Join(s.root, id) }
func (s *Store) imagesDir(id string) string { return filepath.Join(s.root, id, imagesDir) }
func (s *Store) metaPath(id string) string  { return filepath.Join(s.root, id, metaName) }

// Create makes a new container with the given capacity in bytes.
func (s *Store) Create(id string, capacity int64) (*Container, error) {
	if err := ValidateID(id); err != nil {
		return nil, fmt.Errorf("create container: %w", err)
	}
	if capacity <= 0 {
		return nil, fmt.Errorf("create container %s: capacity %d must be positive: %w", id, capacity, ErrInvalid)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	dir := s.dir(id)
	if err := os.Mkdir(dir, 0o750); err != nil {
		if !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("create container %s: %w", id, err)
		}
		// A directory without metadata and without images is what a crash
		// between mkdir and the metadata write leaves behind: reuse it.
		if _, err := os.Stat(s.metaPath(id)); !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("create container %s: %w", id, ErrExists)
		}
		if n, err := s.imageFiles(id); err != nil || len(n) > 0 {
			return nil, fmt.Errorf("create container %s: directory exists with content: %w", id, ErrExists)
		}
	}
	if err := os.MkdirAll(s.imagesDir(id), 0o750); err != nil {
		return nil, fmt.Errorf("create container %s: %w", id, err)
	}
	c := &Container{Version: metaVersion, ID: id, Capacity: capacity, Created: time.Now().UTC()}
	if err := s.writeMeta(c); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("create container %s: %w", id, err)
	}
	if err := syncDir(s.root); err != nil {
		return nil, fmt.Errorf("create container %s: %w", id, err)
	}
	return c, nil
}

// Expand grows a container's capacity to newCapacity bytes. Asking for the
// current capacity is a no-op; asking for less fails with ErrShrink.
func (s *Store) Expand(id string, newCapacity int64) (*Container, error) {
	if err := ValidateID(id); err != nil {
		return nil, fmt.Errorf("expand container: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c, err := s.readMeta(id)
	if err != nil {
		return nil, fmt.Errorf("expand container: %w", err)
	}
	if newCapacity < c.Capacity {
		return nil, fmt.Errorf("expand container %s from %d to %d bytes: %w", id, c.Capacity, newCapacity, ErrShrink)
	}
	if newCapacity == c.Capacity {
		return c, nil
	}
	c.Capacity = newCapacity
	c.Expanded = time.Now().UTC()
	if err := s.writeMeta(c); err != nil {
		return nil, fmt.Errorf("expand container %s: %w", id, err)
	}
	return c, nil
}

// Get returns a container's metadata.
func (s *Store) Get(id string) (*Container, error) {
	if err := ValidateID(id); err != nil {
		return nil, fmt.Errorf("get container: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c, err := s.readMeta(id)
	if err != nil {
		return nil, fmt.Errorf("get container: %w", err)
	}
	return c, nil
}

// List returns every container, sorted by id. Directories that are not
// containers (no metadata file) are ignored; a corrupt metadata file makes
// List fail with ErrCorrupt naming the file.
func (s *Store) List() ([]*Container, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ents, err := os.ReadDir(s.root)
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	var out []*Container
	for _, e := range ents {
		if !e.IsDir() || ValidateID(e.Name()) != nil {
			continue
		}
		c, err := s.readMeta(e.Name())
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("list containers: %w", err)
		}
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Remove deletes a container. Without force it fails with ErrInUse while the
// container holds images or outstanding reservations; with force it deletes
// the images too (outstanding reservations are dropped).
func (s *Store) Remove(id string, force bool) error {
	if err := ValidateID(id); err != nil {
		return fmt.Errorf("remove container: %w", err)
	}
	s.chainMu.Lock()
	defer s.chainMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.readMeta(id); err != nil && (!force || !errors.Is(err, ErrCorrupt)) {
		return fmt.Errorf("remove container: %w", err)
	}
	if !force {
		imgs, err := s.imageFiles(id)
		if err != nil {
			return fmt.Errorf("remove container %s: %w", id, err)
		}
		if len(imgs) > 0 {
			return fmt.Errorf("remove container %s: holds %d image(s): %w", id, len(imgs), ErrInUse)
		}
		if n := len(s.reserved[id]); n > 0 {
			return fmt.Errorf("remove container %s: %d outstanding reservation(s): %w", id, n, ErrInUse)
		}
	}
	// Remove the metadata first so a crash part-way leaves a directory that
	// is no longer taken for a container.
	if err := os.Remove(s.metaPath(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove container %s: %w", id, err)
	}
	if err := syncDir(s.dir(id)); err != nil {
		return fmt.Errorf("remove container %s: %w", id, err)
	}
	if err := os.RemoveAll(s.dir(id)); err != nil {
		return fmt.Errorf("remove container %s: %w", id, err)
	}
	for r := range s.reserved[id] {
		r.released = true
	}
	delete(s.reserved, id)
	if err := syncDir(s.root); err != nil {
		return fmt.Errorf("remove container %s: %w", id, err)
	}
	return nil
}

// readMeta reads and validates a container's metadata; s.mu must be held.
func (s *Store) readMeta(id string) (*Container, error) {
	p := s.metaPath(id)
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("container %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", id, err)
	}
	var c Container
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("container %s: metadata %s unreadable (%v): %w", id, p, err, ErrCorrupt)
	}
	switch {
	case c.Version != metaVersion:
		return nil, fmt.Errorf("container %s: metadata %s has version %d, want %d: %w", id, p, c.Version, metaVersion, ErrCorrupt)
	case c.ID != id:
		return nil, fmt.Errorf("container %s: metadata %s names container %q: %w", id, p, c.ID, ErrCorrupt)
	case c.Capacity <= 0:
		return nil, fmt.Errorf("container %s: metadata %s has capacity %d: %w", id, p, c.Capacity, ErrCorrupt)
	}
	return &c, nil
}

// writeMeta writes a container's metadata atomically: a temporary file in
// the same directory, fsync, rename over the old file, fsync of the
// directory.
func (s *Store) writeMeta(c *Container) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(s.metaPath(c.ID), append(b, '\n'))
}

func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o640); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	ok = true
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}
