package local

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/twinsnap/twinsnap/export"
)

// ErrSymlink reports a symbolic link (or another kind of file that is
// neither a regular file nor a directory) where a name leads through or
// to it. Such names are refused, never followed.
var ErrSymlink = errors.New("local: symbolic link or special file in the path")

// Transport is an export.Transport over the directory tree below a root.
type Transport struct {
	root string

	mu     sync.RWMutex // held for reading while the root descriptor is in use
	rootFd int
	closed bool
}

var _ export.Transport = (*Transport)(nil)

// New returns a Transport rooted at the directory root, which must exist:
// a missing mount point must not turn into a directory on the local disk.
// Symbolic links in root itself are resolved here, once.
func New(root string) (*Transport, error) {
	resolved, err := filepath.EvalSymlinks(root)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("local: root %q: %w: %w", root, export.ErrNotExist, err)
		}
		return nil, fmt.Errorf("local: root %q: %w", root, err)
	}
	resolved, err = filepath.Abs(resolved)
	if err != nil {
		return nil, fmt.Errorf("local: root %q: %w", root, err)
	}
	fd, err := unix.Open(resolved, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("local: open root %q: %w", resolved, classify(err))
	}
	return &Transport{root: resolved, rootFd: fd}, nil
}

// Root returns the root directory, its symbolic links resolved.
func (t *Transport) Root() string { return t.root }

// classify wraps an errno with its export error class, keeping both.
func classify(err error) error {
	switch {
	case errors.Is(err, unix.ENOENT):
		return fmt.Errorf("%w: %w", export.ErrNotExist, err)
	case errors.Is(err, unix.EEXIST):
		return fmt.Errorf("%w: %w", export.ErrExist, err)
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.ENXIO):
		// ELOOP: O_NOFOLLOW met a link; ENXIO: a FIFO or device opened
		// without blocking.
		return fmt.Errorf("%w: %w", ErrSymlink, err)
	case errors.Is(err, unix.ENAMETOOLONG):
		return fmt.Errorf("%w: %w", export.ErrInvalidName, err)
	}
	return err
}

// begin checks ctx and the name, and holds the root descriptor until the
// returned function runs.
func (t *Transport) begin(ctx context.Context, names ...string) (func(), error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("local: %w", err)
	}
	for _, n := range names {
		if err := export.ValidName(n); err != nil {
			return nil, fmt.Errorf("local: %w", err)
		}
	}
	t.mu.RLock()
	if t.closed {
		t.mu.RUnlock()
		return nil, errors.New("local: transport closed")
	}
	return t.mu.RUnlock, nil
}

// openDir opens the directory of the given elements below the root,
// refusing symbolic links; with create it makes missing directories (and
// fsyncs each parent it changed). The caller closes the descriptor.
func (t *Transport) openDir(elems []string, create bool) (int, error) {
	fd, err := unix.Openat(t.rootFd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, classify(err)
	}
	for i, e := range elems {
		if create {
			switch err := unix.Mkdirat(fd, e, 0o755); {
			case err == nil:
				if err := unix.Fsync(fd); err != nil {
					closeFd(fd)
					return -1, fmt.Errorf("fsync of the parent of %q: %w", strings.Join(elems[:i+1], "/"), err)
				}
			case errors.Is(err, unix.EEXIST):
			default:
				closeFd(fd)
				return -1, fmt.Errorf("mkdir %q: %w", strings.Join(elems[:i+1], "/"), classify(err))
			}
		}
		next, err := unix.Openat(fd, e, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil && errors.Is(err, unix.ENOTDIR) {
			// A symbolic link to a directory gives ENOTDIR or ELOOP
			// depending on the kernel; tell the two cases apart.
			var st unix.Stat_t
			if unix.Fstatat(fd, e, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
				err = unix.ELOOP
			}
		}
		closeFd(fd)
		if err != nil {
			return -1, fmt.Errorf("directory %q: %w", strings.Join(elems[:i+1], "/"), classify(err))
		}
		fd = next
	}
	return fd, nil
}

// closeFd closes a descriptor that was only read from or looked up in.
func closeFd(fd int) { _ = unix.Close(fd) }

// split returns the directory elements and the base of a valid name.
func split(name string) ([]string, string) {
	elems := strings.Split(name, "/")
	return elems[:len(elems)-1], elems[len(elems)-1]
}

// openFile opens name with flags (O_NOFOLLOW and O_NONBLOCK added, so that
// neither a symbolic link nor a FIFO can capture the call) and checks that
// it is a regular file. It reports whether the file was created.
func (t *Transport) openFile(name string, flags int) (*os.File, bool, error) {
	dirs, base := split(name)
	dfd, err := t.openDir(dirs, false)
	if err != nil {
		return nil, false, err
	}
	defer closeFd(dfd)
	flags |= unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_CLOEXEC
	created := false
	var fd int
	if flags&unix.O_CREAT != 0 {
		fd, err = unix.Openat(dfd, base, flags|unix.O_EXCL, 0o644)
		if err == nil {
			created = true
		} else if errors.Is(err, unix.EEXIST) {
			fd, err = unix.Openat(dfd, base, flags&^unix.O_CREAT, 0)
		}
	} else {
		fd, err = unix.Openat(dfd, base, flags, 0)
	}
	if err != nil {
		return nil, false, classify(err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		closeFd(fd)
		return nil, false, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		closeFd(fd)
		return nil, false, fmt.Errorf("%w: not a regular file (mode %#o)", ErrSymlink, st.Mode)
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		closeFd(fd)
		return nil, false, err
	}
	if created {
		if err := unix.Fsync(dfd); err != nil {
			closeFd(fd)
			return nil, false, fmt.Errorf("fsync of the directory: %w", err)
		}
	}
	return os.NewFile(uintptr(fd), filepath.Join(t.root, name)), created, nil
}

// OpenWriter implements export.Transport. A file it creates gets mode 0644
// and its directory is fsynced at once.
func (t *Transport) OpenWriter(ctx context.Context, name string) (export.FileWriter, error) {
	done, err := t.begin(ctx, name)
	if err != nil {
		return nil, err
	}
	defer done()
	f, _, err := t.openFile(name, unix.O_WRONLY|unix.O_CREAT)
	if err != nil {
		return nil, fmt.Errorf("local: open %q for writing: %w", name, err)
	}
	return &writer{ctx: ctx, f: f, name: name}, nil
}

// OpenReader implements export.Transport.
func (t *Transport) OpenReader(ctx context.Context, name string) (export.FileReader, error) {
	done, err := t.begin(ctx, name)
	if err != nil {
		return nil, err
	}
	defer done()
	f, _, err := t.openFile(name, unix.O_RDONLY)
	if err != nil {
		return nil, fmt.Errorf("local: open %q: %w", name, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("local: stat %q: %w", name, err)
	}
	return &reader{ctx: ctx, f: f, size: fi.Size()}, nil
}

// fileInfo describes st; ok is false for anything but files and
// directories.
func fileInfo(name string, st *unix.Stat_t) (export.FileInfo, bool) {
	fi := export.FileInfo{Name: name, ModTime: time.Unix(st.Mtim.Unix())}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		fi.Size = st.Size
	case unix.S_IFDIR:
		fi.IsDir = true
	default:
		return fi, false
	}
	return fi, true
}

// Stat implements export.Transport. A symbolic link or a special file
// gives ErrSymlink.
func (t *Transport) Stat(ctx context.Context, name string) (export.FileInfo, error) {
	done, err := t.begin(ctx, name)
	if err != nil {
		return export.FileInfo{}, err
	}
	defer done()
	dirs, base := split(name)
	dfd, err := t.openDir(dirs, false)
	if err != nil {
		return export.FileInfo{}, fmt.Errorf("local: stat %q: %w", name, err)
	}
	defer closeFd(dfd)
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return export.FileInfo{}, fmt.Errorf("local: stat %q: %w", name, classify(err))
	}
	fi, ok := fileInfo(base, &st)
	if !ok {
		return export.FileInfo{}, fmt.Errorf("local: stat %q: %w (mode %#o)", name, ErrSymlink, st.Mode)
	}
	return fi, nil
}

// Rename implements export.Transport with renameat2(RENAME_NOREPLACE), or
// with link and unlink where the file system does not support that flag
// (then only files can be renamed). Both directories are fsynced.
func (t *Transport) Rename(ctx context.Context, from, to string) error {
	done, err := t.begin(ctx, from, to)
	if err != nil {
		return err
	}
	defer done()
	if err := t.rename(from, to); err != nil {
		return fmt.Errorf("local: rename %q to %q: %w", from, to, err)
	}
	return nil
}

func (t *Transport) rename(from, to string) error {
	fromDirs, fromBase := split(from)
	toDirs, toBase := split(to)
	ffd, err := t.openDir(fromDirs, false)
	if err != nil {
		return err
	}
	defer closeFd(ffd)
	tfd, err := t.openDir(toDirs, false)
	if err != nil {
		return err
	}
	defer closeFd(tfd)
	var st unix.Stat_t
	if err := unix.Fstatat(ffd, fromBase, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return classify(err)
	}
	if _, ok := fileInfo(fromBase, &st); !ok {
		return fmt.Errorf("%w (mode %#o)", ErrSymlink, st.Mode)
	}
	err = unix.Renameat2(ffd, fromBase, tfd, toBase, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP) {
		// No RENAME_NOREPLACE here: a hard link fails when the target
		// exists, which keeps the no-replace guarantee.
		if err = unix.Linkat(ffd, fromBase, tfd, toBase, 0); err == nil {
			err = unix.Unlinkat(ffd, fromBase, 0)
		}
	}
	if err != nil {
		return classify(err)
	}
	if err := unix.Fsync(tfd); err != nil {
		return fmt.Errorf("fsync of the target directory: %w", err)
	}
	if err := unix.Fsync(ffd); err != nil {
		return fmt.Errorf("fsync of the source directory: %w", err)
	}
	return nil
}

// Remove implements export.Transport; the directory is fsynced.
func (t *Transport) Remove(ctx context.Context, name string) error {
	done, err := t.begin(ctx, name)
	if err != nil {
		return err
	}
	defer done()
	dirs, base := split(name)
	dfd, err := t.openDir(dirs, false)
	if err != nil {
		return fmt.Errorf("local: remove %q: %w", name, err)
	}
	defer closeFd(dfd)
	err = unix.Unlinkat(dfd, base, 0)
	if errors.Is(err, unix.EISDIR) {
		err = unix.Unlinkat(dfd, base, unix.AT_REMOVEDIR)
	}
	if err != nil {
		return fmt.Errorf("local: remove %q: %w", name, classify(err))
	}
	if err := unix.Fsync(dfd); err != nil {
		return fmt.Errorf("local: remove %q: fsync of the directory: %w", name, err)
	}
	return nil
}

// MkdirAll implements export.Transport. New directories get mode 0755.
func (t *Transport) MkdirAll(ctx context.Context, dir string) error {
	var names []string
	if dir != "" {
		names = []string{dir}
	}
	done, err := t.begin(ctx, names...)
	if err != nil {
		return err
	}
	defer done()
	var elems []string
	if dir != "" {
		elems = strings.Split(dir, "/")
	}
	fd, err := t.openDir(elems, true)
	if err != nil {
		return fmt.Errorf("local: mkdir %q: %w", dir, err)
	}
	closeFd(fd)
	return nil
}

// List implements export.Transport. It lists regular files and
// directories only; symbolic links and special files are left out.
func (t *Transport) List(ctx context.Context, dir string) ([]export.FileInfo, error) {
	var names []string
	if dir != "" {
		names = []string{dir}
	}
	done, err := t.begin(ctx, names...)
	if err != nil {
		return nil, err
	}
	defer done()
	var elems []string
	if dir != "" {
		elems = strings.Split(dir, "/")
	}
	dfd, err := t.openDir(elems, false)
	if err != nil {
		return nil, fmt.Errorf("local: list %q: %w", dir, err)
	}
	d := os.NewFile(uintptr(dfd), filepath.Join(t.root, dir))
	defer d.Close()
	entries, err := d.ReadDir(-1)
	if err != nil {
		return nil, fmt.Errorf("local: list %q: %w", dir, err)
	}
	out := make([]export.FileInfo, 0, len(entries))
	for _, e := range entries {
		var st unix.Stat_t
		if err := unix.Fstatat(dfd, e.Name(), &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue // removed since the directory was read
			}
			return nil, fmt.Errorf("local: list %q: stat %q: %w", dir, e.Name(), err)
		}
		if fi, ok := fileInfo(e.Name(), &st); ok {
			out = append(out, fi)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Close implements export.Transport. Open files stay usable.
func (t *Transport) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	if err := unix.Close(t.rootFd); err != nil {
		return fmt.Errorf("local: close root: %w", err)
	}
	return nil
}

// writer is the FileWriter of a Transport.
type writer struct {
	ctx  context.Context
	f    *os.File
	name string
}

// WriteAt implements export.FileWriter with pwrite; it fails once the
// writer's context has ended.
func (w *writer) WriteAt(p []byte, off int64) (int, error) {
	if err := w.ctx.Err(); err != nil {
		return 0, fmt.Errorf("local: write %q: %w", w.name, err)
	}
	n, err := w.f.WriteAt(p, off)
	if err != nil {
		return n, fmt.Errorf("local: %w", err)
	}
	return n, nil
}

// Truncate implements export.FileWriter.
func (w *writer) Truncate(size int64) error {
	if err := w.ctx.Err(); err != nil {
		return fmt.Errorf("local: truncate %q: %w", w.name, err)
	}
	if err := w.f.Truncate(size); err != nil {
		return fmt.Errorf("local: %w", err)
	}
	return nil
}

// Sync implements export.FileWriter with fsync.
func (w *writer) Sync() error {
	if err := w.ctx.Err(); err != nil {
		return fmt.Errorf("local: sync %q: %w", w.name, err)
	}
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("local: %w", err)
	}
	return nil
}

// Close implements export.FileWriter.
func (w *writer) Close() error {
	if err := w.f.Close(); err != nil {
		return fmt.Errorf("local: %w", err)
	}
	return nil
}

// reader is the FileReader of a Transport.
type reader struct {
	ctx  context.Context
	f    *os.File
	size int64
}

// ReadAt implements export.FileReader; it fails once the reader's context
// has ended.
func (r *reader) ReadAt(p []byte, off int64) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, fmt.Errorf("local: read: %w", err)
	}
	return r.f.ReadAt(p, off)
}

// Size implements export.FileReader.
func (r *reader) Size() int64 { return r.size }

// Close implements export.FileReader.
func (r *reader) Close() error { return r.f.Close() }
