package volumes

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
)

// ErrUnsupported marks an image or chain whose layout a View cannot read
// directly: compressed or encrypted clusters, an external data file, a
// format other than qcow2 and raw, or data without a host offset.
var ErrUnsupported = errors.New("volumes: unsupported image layout")

// Extent is a range of the guest-visible disk, in bytes.
type Extent struct {
	// Start is the guest offset of the first byte.
	Start int64
	// Length is the number of bytes; always positive.
	Length int64
}

// End returns the guest offset just past the extent.
func (e Extent) End() int64 { return e.Start + e.Length }

// segment is one range of guest data and where it lives: file index
// (the depth in the chain, 0 = top) and the host offset of its first byte.
type segment struct {
	start, length int64
	file          int
	host          int64
}

// View is the guest's view of a qcow2 backing chain: the top image with
// its backing files, read directly from the files at the host offsets that
// qemu-img map reports. It is an io.ReaderAt over the whole virtual disk
// (holes read as zeros) and knows which ranges hold data.
//
// A View takes its map once, when it is opened: it is meant for images
// that no longer change (a stored snapshot). ReadAt may be called from
// several goroutines at once.
type View struct {
	top      string
	size     int64
	files    []*os.File
	segs     []segment // sorted by start, non-overlapping
	extents  []Extent  // segs merged
	allocate int64

	closeOnce sync.Once
	closeErr  error
}

var _ io.ReaderAt = (*View)(nil)

// viewImageInfo is the part of qemu-img info's answer a View checks.
type viewImageInfo struct {
	Filename        string `json:"filename"`
	Format          string `json:"format"`
	VirtualSize     int64  `json:"virtual-size"`
	BackingFile     string `json:"backing-filename"`
	FullBackingFile string `json:"full-backing-filename"`
	Encrypted       bool   `json:"encrypted"`
	FormatSpecific  struct {
		Type string `json:"type"`
		Data struct {
			DataFile string `json:"data-file"`
			Corrupt  bool   `json:"corrupt"`
		} `json:"data"`
	} `json:"format-specific"`
}

// mapEntry is one element of qemu-img map --output=json.
type mapEntry struct {
	Start      *int64 `json:"start"`
	Length     *int64 `json:"length"`
	Depth      int    `json:"depth"`
	Present    bool   `json:"present"`
	Zero       bool   `json:"zero"`
	Data       bool   `json:"data"`
	Compressed bool   `json:"compressed"`
	Offset     *int64 `json:"offset"`
}

// OpenView opens the chain whose top image is at top and maps it. It
// refuses (with ErrUnsupported) chains it cannot read directly: compressed
// or encrypted clusters, external data files, formats other than qcow2 and
// raw, and data without a host offset. ctx bounds the qemu-img calls.
func OpenView(ctx context.Context, top string) (*View, error) {
	abs, err := filepath.Abs(top)
	if err != nil {
		return nil, fmt.Errorf("open view %q: %w", top, ErrInvalid)
	}
	infos, err := viewChainInfo(ctx, abs)
	if err != nil {
		return nil, fmt.Errorf("open view %s: %w", abs, err)
	}
	paths, err := viewChainPaths(abs, infos)
	if err != nil {
		return nil, fmt.Errorf("open view %s: %w", abs, err)
	}
	v := &View{top: abs, size: infos[0].VirtualSize}
	ok := false
	defer func() {
		if !ok {
			_ = v.Close() // the error that made us give up matters more
		}
	}()
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return nil, fmt.Errorf("open view %s: %w", abs, err)
		}
		v.files = append(v.files, f)
		st, err := f.Stat()
		if err != nil {
			return nil, fmt.Errorf("open view %s: %w", abs, err)
		}
		if !st.Mode().IsRegular() {
			return nil, fmt.Errorf("open view %s: chain file %s is not a regular file: %w", abs, p, ErrUnsupported)
		}
	}
	if err := v.load(ctx, infos[0].Format); err != nil {
		return nil, fmt.Errorf("open view %s: %w", abs, err)
	}
	// The files were opened before the map was taken: make sure the paths
	// still name the same files, so the map describes what we read.
	for i, p := range paths {
		a, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("open view %s: %w", abs, err)
		}
		b, err := v.files[i].Stat()
		if err != nil {
			return nil, fmt.Errorf("open view %s: %w", abs, err)
		}
		if !os.SameFile(a, b) {
			return nil, fmt.Errorf("open view %s: chain file %s was replaced while mapping: %w", abs, p, ErrCorrupt)
		}
	}
	ok = true
	return v, nil
}

// viewChainInfo asks qemu-img for the chain and checks every layer.
func viewChainInfo(ctx context.Context, path string) ([]viewImageInfo, error) {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("image %s: %w", path, ErrNotFound)
	}
	out, err := run(ctx, "info", "--output=json", "--force-share", "--backing-chain", path)
	if err != nil {
		return nil, err
	}
	var infos []viewImageInfo
	if err := json.Unmarshal(out, &infos); err != nil {
		return nil, fmt.Errorf("qemu-img info %s: decoding output: %w", path, err)
	}
	if len(infos) == 0 {
		return nil, fmt.Errorf("qemu-img info %s: empty answer", path)
	}
	if infos[0].VirtualSize <= 0 {
		return nil, fmt.Errorf("image %s: virtual size %d: %w", path, infos[0].VirtualSize, ErrCorrupt)
	}
	for _, in := range infos {
		switch {
		case in.Format != "qcow2" && in.Format != "raw":
			return nil, fmt.Errorf("layer %s has format %q (want qcow2 or raw): %w", in.Filename, in.Format, ErrUnsupported)
		case in.Encrypted:
			return nil, fmt.Errorf("layer %s is encrypted: %w", in.Filename, ErrUnsupported)
		case in.FormatSpecific.Data.DataFile != "":
			return nil, fmt.Errorf("layer %s has an external data file: %w", in.Filename, ErrUnsupported)
		case in.FormatSpecific.Data.Corrupt:
			return nil, fmt.Errorf("layer %s is marked corrupt: %w", in.Filename, ErrCorrupt)
		}
	}
	return infos, nil
}

// viewChainPaths returns the file of every layer, top first: the top as
// given, each backing file as its child records it (resolved against the
// child's directory).
func viewChainPaths(top string, infos []viewImageInfo) ([]string, error) {
	paths := []string{top}
	for i := 1; i < len(infos); i++ {
		rec := infos[i-1].BackingFile
		if strings.HasPrefix(rec, "json:") || strings.Contains(rec, "://") {
			return nil, fmt.Errorf("layer %s has backing %q, not a plain file: %w", paths[i-1], rec, ErrUnsupported)
		}
		b := backingOf(ImageInfo{BackingFile: rec, FullBackingFile: infos[i-1].FullBackingFile}, paths[i-1])
		if b == "" {
			return nil, fmt.Errorf("layer %s has no backing file but qemu-img lists %d layers: %w", paths[i-1], len(infos), ErrCorrupt)
		}
		paths = append(paths, b)
	}
	return paths, nil
}

// load runs qemu-img map on the top image and records the data segments.
// The answer is decoded as it arrives: a fragmented image can have many
// extents, and only the data ones are kept.
func (v *View) load(ctx context.Context, format string) error {
	bin, err := tool("qemu-img")
	if err != nil {
		return err
	}
	mapCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := exec.CommandContext(mapCtx, bin, "map", "--output=json", "--force-share", "-f", format, v.top)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("qemu-img map: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("qemu-img map: %w", err)
	}
	decErr := v.decodeMap(stdout)
	if decErr != nil {
		cancel() // stop the tool; what it says on stderr may still explain
	} else {
		_, _ = io.Copy(io.Discard, stdout) // nothing should follow the array
	}
	waitErr := cmd.Wait()
	msg := strings.TrimSpace(stderr.String())
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("qemu-img map: %w", ctx.Err())
	case decErr != nil && msg != "":
		return fmt.Errorf("%w (qemu-img: %s)", decErr, msg)
	case decErr != nil:
		return decErr
	case waitErr != nil:
		return fmt.Errorf("qemu-img map %s: %w: %s", v.top, waitErr, msg)
	}
	return nil
}

// decodeMap reads qemu-img map's JSON array and checks that the entries
// tile the virtual disk in order.
func (v *View) decodeMap(r io.Reader) error {
	dec := json.NewDecoder(r)
	if t, err := dec.Token(); err != nil || t != json.Delim('[') {
		return fmt.Errorf("qemu-img map %s: output is not a JSON array (%v): %w", v.top, err, ErrCorrupt)
	}
	var pos int64
	for dec.More() {
		var e mapEntry
		if err := dec.Decode(&e); err != nil {
			return fmt.Errorf("qemu-img map %s: decoding output: %w", v.top, err)
		}
		if err := v.addEntry(e, pos); err != nil {
			return fmt.Errorf("qemu-img map %s: %w", v.top, err)
		}
		pos += *e.Length
	}
	if _, err := dec.Token(); err != nil {
		return fmt.Errorf("qemu-img map %s: decoding output: %w", v.top, err)
	}
	if pos != v.size {
		return fmt.Errorf("qemu-img map %s: extents cover %d of %d bytes: %w", v.top, pos, v.size, ErrCorrupt)
	}
	for _, s := range v.segs {
		v.allocate += s.length
		if n := len(v.extents); n > 0 && v.extents[n-1].End() == s.start {
			v.extents[n-1].Length += s.length
			continue
		}
		v.extents = append(v.extents, Extent{Start: s.start, Length: s.length})
	}
	return nil
}

// addEntry checks one map entry that should start at pos and records it
// when it holds data.
func (v *View) addEntry(e mapEntry, pos int64) error {
	if e.Start == nil || e.Length == nil {
		return fmt.Errorf("entry without start or length: %w", ErrCorrupt)
	}
	start, length := *e.Start, *e.Length
	if start != pos || length <= 0 || length > v.size-start {
		return fmt.Errorf("entry [%d,+%d) does not continue at %d within %d bytes: %w", start, length, pos, v.size, ErrCorrupt)
	}
	if e.Depth < 0 || e.Depth >= len(v.files) {
		return fmt.Errorf("entry at %d has depth %d in a chain of %d: %w", start, e.Depth, len(v.files), ErrCorrupt)
	}
	if e.Zero || !e.Present {
		return nil // reads as zeros
	}
	if !e.Data {
		// Neither data nor zero: qemu-img does not know what the range
		// reads as. Refuse rather than guess zeros.
		return fmt.Errorf("range at %d (depth %d) is neither data nor zero: %w", start, e.Depth, ErrUnsupported)
	}
	if e.Compressed {
		return fmt.Errorf("data at %d (depth %d) is compressed: %w", start, e.Depth, ErrUnsupported)
	}
	if e.Offset == nil {
		return fmt.Errorf("data at %d (depth %d) has no host offset (compressed clusters?): %w", start, e.Depth, ErrUnsupported)
	}
	if *e.Offset < 0 || *e.Offset > (1<<62)-length {
		return fmt.Errorf("data at %d has host offset %d: %w", start, *e.Offset, ErrCorrupt)
	}
	s := segment{start: start, length: length, file: e.Depth, host: *e.Offset}
	// qemu-img merges entries only when they are contiguous on the host
	// too; join what it left apart in the same file for fewer reads.
	if n := len(v.segs); n > 0 {
		p := &v.segs[n-1]
		if p.start+p.length == s.start && p.file == s.file && p.host+p.length == s.host {
			p.length += s.length
			return nil
		}
	}
	v.segs = append(v.segs, s)
	return nil
}

// Path returns the absolute path of the top image.
func (v *View) Path() string { return v.top }

// Size returns the virtual disk's size in bytes.
func (v *View) Size() int64 { return v.size }

// Extents returns the ranges that hold data, sorted and merged; zero and
// unallocated ranges are left out. The slice is a copy.
func (v *View) Extents() []Extent { return append([]Extent(nil), v.extents...) }

// AllocatedBytes returns the number of guest bytes that hold data (the sum
// of the extents' lengths).
func (v *View) AllocatedBytes() int64 { return v.allocate }

// ReadAt reads len(p) bytes of the virtual disk at off. Holes read as
// zeros. As io.ReaderAt asks, it returns io.EOF with fewer bytes at the
// end of the disk.
func (v *View) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read view %s at %d: negative offset: %w", v.top, off, ErrInvalid)
	}
	if off >= v.size {
		return 0, io.EOF
	}
	n := len(p)
	if int64(n) > v.size-off {
		n = int(v.size - off)
	}
	buf := p[:n]
	end := off + int64(n)
	// First segment that ends after off.
	i := sort.Search(len(v.segs), func(i int) bool { return v.segs[i].start+v.segs[i].length > off })
	pos := off
	for ; i < len(v.segs) && v.segs[i].start < end; i++ {
		s := v.segs[i]
		a, b := max(s.start, off), min(s.start+s.length, end)
		clear(buf[pos-off : a-off])
		if err := v.readFile(s.file, buf[a-off:b-off], s.host+(a-s.start)); err != nil {
			return int(a - off), err
		}
		pos = b
	}
	clear(buf[pos-off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// readFile fills p from chain file i at host offset off; a file shorter
// than its map says is corrupt.
func (v *View) readFile(i int, p []byte, off int64) error {
	n, err := v.files[i].ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return fmt.Errorf("read %s at %d: file ends before the mapped data (%d of %d bytes): %w",
			v.files[i].Name(), off, n, len(p), errors.Join(ErrCorrupt, io.ErrUnexpectedEOF))
	}
	return fmt.Errorf("read view %s: %w", v.top, err)
}

// Close closes the chain's files. It is safe to call more than once.
func (v *View) Close() error {
	v.closeOnce.Do(func() {
		var errs []error
		for _, f := range v.files {
			if err := f.Close(); err != nil {
				errs = append(errs, err)
			}
		}
		if err := errors.Join(errs...); err != nil {
			v.closeErr = fmt.Errorf("close view %s: %w", v.top, err)
		}
	})
	return v.closeErr
}
