package exporttest

import (
	"context"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/twinsnap/twinsnap/export"
)

// Memory is an in-memory export.Transport for tests. It meets the contract
// that Run checks. The function fields, when set, run before the calls
// they name and can fail them, slow them down or count them; they may be
// called concurrently.
type Memory struct {
	// BeforeWrite runs before every WriteAt with the file name, offset and
	// length; an error it returns is the write's, and nothing is written.
	BeforeWrite func(name string, off int64, n int) error
	// BeforeOp runs before every other call with an operation name
	// ("open-writer", "open-reader", "stat", "rename", "remove", "mkdir",
	// "list", "truncate", "sync", "read") and the name it concerns; an
	// error it returns is the call's.
	BeforeOp func(op, name string) error

	mu     sync.Mutex // guards the fields below
	files  map[string]*memFile
	dirs   map[string]time.Time
	closed bool
}

type memFile struct {
	data    []byte
	modTime time.Time
}

var _ export.Transport = (*Memory)(nil)

// NewMemory returns an empty Memory transport.
func NewMemory() *Memory {
	return &Memory{files: map[string]*memFile{}, dirs: map[string]time.Time{"": time.Now()}}
}

// Bytes returns a copy of a file's content, or nil and false.
func (m *Memory) Bytes(name string) ([]byte, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f, ok := m.files[name]
	if !ok {
		return nil, false
	}
	return append([]byte(nil), f.data...), true
}

func (m *Memory) before(op, name string) error {
	if m.BeforeOp != nil {
		return m.BeforeOp(op, name)
	}
	return nil
}

// check validates name and the state of m; the caller holds m.mu.
func (m *Memory) check(ctx context.Context, name string, root bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if m.closed {
		return fmt.Errorf("exporttest: memory transport closed")
	}
	if root {
		return export.ValidDir(name)
	}
	return export.ValidName(name)
}

func (m *Memory) parentExists(name string) error {
	dir := path.Dir(name)
	if dir == "." {
		dir = ""
	}
	if _, ok := m.dirs[dir]; !ok {
		return fmt.Errorf("exporttest: directory of %q: %w", name, export.ErrNotExist)
	}
	return nil
}

// OpenWriter implements export.Transport.
func (m *Memory) OpenWriter(ctx context.Context, name string) (export.FileWriter, error) {
	if err := m.before("open-writer", name); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(ctx, name, false); err != nil {
		return nil, err
	}
	if _, ok := m.dirs[name]; ok {
		return nil, fmt.Errorf("exporttest: %q is a directory", name)
	}
	if err := m.parentExists(name); err != nil {
		return nil, err
	}
	if _, ok := m.files[name]; !ok {
		m.files[name] = &memFile{modTime: time.Now()}
	}
	return &memWriter{m: m, name: name}, nil
}

// OpenReader implements export.Transport.
func (m *Memory) OpenReader(ctx context.Context, name string) (export.FileReader, error) {
	if err := m.before("open-reader", name); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(ctx, name, false); err != nil {
		return nil, err
	}
	f, ok := m.files[name]
	if !ok {
		return nil, fmt.Errorf("exporttest: open %q: %w", name, export.ErrNotExist)
	}
	return &memReader{m: m, name: name, size: int64(len(f.data))}, nil
}

// Stat implements export.Transport.
func (m *Memory) Stat(ctx context.Context, name string) (export.FileInfo, error) {
	if err := m.before("stat", name); err != nil {
		return export.FileInfo{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(ctx, name, false); err != nil {
		return export.FileInfo{}, err
	}
	return m.stat(name)
}

func (m *Memory) stat(name string) (export.FileInfo, error) {
	if f, ok := m.files[name]; ok {
		return export.FileInfo{Name: path.Base(name), Size: int64(len(f.data)), ModTime: f.modTime}, nil
	}
	if mt, ok := m.dirs[name]; ok {
		return export.FileInfo{Name: path.Base(name), IsDir: true, ModTime: mt}, nil
	}
	return export.FileInfo{}, fmt.Errorf("exporttest: stat %q: %w", name, export.ErrNotExist)
}

// Rename implements export.Transport (files only).
func (m *Memory) Rename(ctx context.Context, from, to string) error {
	if err := m.before("rename", from); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(ctx, from, false); err != nil {
		return err
	}
	if err := m.check(ctx, to, false); err != nil {
		return err
	}
	f, ok := m.files[from]
	if !ok {
		return fmt.Errorf("exporttest: rename %q: %w", from, export.ErrNotExist)
	}
	if _, err := m.stat(to); err == nil {
		return fmt.Errorf("exporttest: rename %q to %q: %w", from, to, export.ErrExist)
	}
	if err := m.parentExists(to); err != nil {
		return err
	}
	delete(m.files, from)
	m.files[to] = f
	return nil
}

// Remove implements export.Transport.
func (m *Memory) Remove(ctx context.Context, name string) error {
	if err := m.before("remove", name); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(ctx, name, false); err != nil {
		return err
	}
	if _, ok := m.files[name]; ok {
		delete(m.files, name)
		return nil
	}
	if _, ok := m.dirs[name]; !ok {
		return fmt.Errorf("exporttest: remove %q: %w", name, export.ErrNotExist)
	}
	prefix := name + "/"
	for n := range m.files {
		if strings.HasPrefix(n, prefix) {
			return fmt.Errorf("exporttest: remove %q: directory not empty", name)
		}
	}
	for n := range m.dirs {
		if strings.HasPrefix(n, prefix) {
			return fmt.Errorf("exporttest: remove %q: directory not empty", name)
		}
	}
	delete(m.dirs, name)
	return nil
}

// MkdirAll implements export.Transport.
func (m *Memory) MkdirAll(ctx context.Context, dir string) error {
	if err := m.before("mkdir", dir); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(ctx, dir, true); err != nil {
		return err
	}
	if dir == "" {
		return nil
	}
	elems := strings.Split(dir, "/")
	for i := range elems {
		d := strings.Join(elems[:i+1], "/")
		if _, ok := m.files[d]; ok {
			return fmt.Errorf("exporttest: mkdir %q: %q is a file", dir, d)
		}
		if _, ok := m.dirs[d]; !ok {
			m.dirs[d] = time.Now()
		}
	}
	return nil
}

// List implements export.Transport.
func (m *Memory) List(ctx context.Context, dir string) ([]export.FileInfo, error) {
	if err := m.before("list", dir); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(ctx, dir, true); err != nil {
		return nil, err
	}
	if _, ok := m.dirs[dir]; !ok {
		return nil, fmt.Errorf("exporttest: list %q: %w", dir, export.ErrNotExist)
	}
	prefix := ""
	if dir != "" {
		prefix = dir + "/"
	}
	var out []export.FileInfo
	add := func(n string) {
		rest, ok := strings.CutPrefix(n, prefix)
		if ok && rest != "" && !strings.Contains(rest, "/") {
			fi, _ := m.stat(n)
			out = append(out, fi)
		}
	}
	for n := range m.files {
		add(n)
	}
	for n := range m.dirs {
		add(n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Close implements export.Transport.
func (m *Memory) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	return nil
}

type memWriter struct {
	m      *Memory
	name   string
	mu     sync.Mutex
	closed bool
}

func (w *memWriter) file() (*memFile, error) {
	w.mu.Lock()
	closed := w.closed
	w.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("exporttest: %q: writer closed", w.name)
	}
	f, ok := w.m.files[w.name]
	if !ok {
		return nil, fmt.Errorf("exporttest: %q: %w", w.name, export.ErrNotExist)
	}
	return f, nil
}

func (w *memWriter) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("exporttest: negative offset %d", off)
	}
	if w.m.BeforeWrite != nil {
		if err := w.m.BeforeWrite(w.name, off, len(p)); err != nil {
			return 0, err
		}
	}
	w.m.mu.Lock()
	defer w.m.mu.Unlock()
	f, err := w.file()
	if err != nil {
		return 0, err
	}
	if end := off + int64(len(p)); end > int64(len(f.data)) {
		f.data = append(f.data, make([]byte, end-int64(len(f.data)))...)
	}
	copy(f.data[off:], p)
	f.modTime = time.Now()
	return len(p), nil
}

func (w *memWriter) Truncate(size int64) error {
	if err := w.m.before("truncate", w.name); err != nil {
		return err
	}
	w.m.mu.Lock()
	defer w.m.mu.Unlock()
	f, err := w.file()
	if err != nil {
		return err
	}
	if size < 0 {
		return fmt.Errorf("exporttest: negative size %d", size)
	}
	if size <= int64(len(f.data)) {
		f.data = f.data[:size]
	} else {
		f.data = append(f.data, make([]byte, size-int64(len(f.data)))...)
	}
	return nil
}

func (w *memWriter) Sync() error {
	if err := w.m.before("sync", w.name); err != nil {
		return err
	}
	w.m.mu.Lock()
	defer w.m.mu.Unlock()
	_, err := w.file()
	return err
}

func (w *memWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	return nil
}

type memReader struct {
	m    *Memory
	name string
	size int64
}

func (r *memReader) ReadAt(p []byte, off int64) (int, error) {
	if err := r.m.before("read", r.name); err != nil {
		return 0, err
	}
	r.m.mu.Lock()
	defer r.m.mu.Unlock()
	f, ok := r.m.files[r.name]
	if !ok {
		return 0, fmt.Errorf("exporttest: %q: %w", r.name, export.ErrNotExist)
	}
	if off < 0 {
		return 0, fmt.Errorf("exporttest: negative offset %d", off)
	}
	if off >= int64(len(f.data)) {
		return 0, io.EOF
	}
	n := copy(p, f.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (r *memReader) Size() int64  { return r.size }
func (r *memReader) Close() error { return nil }
