package export

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// An OVA is a tar archive of a package: the descriptor first, then the
// manifest, then the files in References order. twinsnap writes every
// member as a regular file with mode 0644, owner and group 0, no owner
// names and the fixed modification time OVAModTime, in ustar format, and
// in pax format where ustar cannot hold the member (a name over 100 bytes
// or not ASCII, a file of 8 GiB or more). Each header therefore depends on
// the member's name and size alone, and so does the archive: OVALayout
// computes every member's position before any data exists.

// OVAModTime is the modification time of every member twinsnap writes
// (2000-01-01T00:00:00Z), fixed so that archives are reproducible.
var OVAModTime = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

const (
	tarBlock   = 512
	tarTrailer = 2 * tarBlock // two zero blocks end an archive
)

// ovaHeader is the tar header of a member.
func ovaHeader(name string, size int64) *tar.Header {
	return &tar.Header{
		Typeflag: tar.TypeReg,
		Name:     name,
		Size:     size,
		Mode:     0o644,
		ModTime:  OVAModTime,
	}
}

// checkMember checks a member's name and size as the writers require.
func checkMember(name string, size int64) error {
	if err := checkName(name); err != nil {
		return err
	}
	if size < 0 {
		return fmt.Errorf("%w: member %q: negative size %d", ErrTooLarge, name, size)
	}
	return nil
}

// OVAHeader returns the exact bytes of the tar header that precedes the
// data of a member with this name and size in an archive twinsnap writes:
// one 512-byte block, or more where a pax header is needed. A writer that
// places members itself (see OVALayout) writes these bytes so that they
// end where the member's data begins.
func OVAHeader(name string, size int64) ([]byte, error) {
	if err := checkMember(name, size); err != nil {
		return nil, fmt.Errorf("export: OVA header: %w", err)
	}
	var b bytes.Buffer
	if err := tar.NewWriter(&b).WriteHeader(ovaHeader(name, size)); err != nil {
		return nil, fmt.Errorf("export: OVA header %q: %w: %v", name, ErrMalformed, err)
	}
	return b.Bytes(), nil
}

// padding returns the zero bytes that follow size bytes of member data to
// fill its last 512-byte block.
func padding(size int64) int64 {
	return (tarBlock - size%tarBlock) % tarBlock
}

// OVALayout returns where each member's data starts in the archive that
// OVAWriter writes for these names and sizes, in this order, and the
// archive's total size. Each member is its header (OVAHeader), its data
// at the returned offset, and zeros up to the next 512-byte boundary;
// after the last one come two zero blocks. A writer that cannot stream,
// one that writes parts of the archive in parallel with WriteAt (parallel
// SMB writes) or resumes a broken transfer, writes the frame with
// WriteOVAFrame and each member's data at its offset, and gets the same
// bytes as OVAWriter. For names CheckName refuses, negative sizes or
// slices of different lengths it returns nil and -1.
func OVALayout(names []string, sizes []int64) ([]int64, int64) {
	if len(names) != len(sizes) {
		return nil, -1
	}
	offsets := make([]int64, len(names))
	var off int64
	for i, name := range names {
		h, err := OVAHeader(name, sizes[i])
		if err != nil {
			return nil, -1
		}
		off += int64(len(h))
		offsets[i] = off
		off += sizes[i] + padding(sizes[i])
	}
	return offsets, off + tarTrailer
}

// WriteOVAFrame writes everything of the archive for these members except
// their data: each header just before its data offset (see OVALayout), the
// zero padding after each member's data and the two zero blocks at the
// end. With each member's data written at its offset, the result equals
// what OVAWriter writes. The order rules of OVAWriter apply.
func WriteOVAFrame(w io.WriterAt, names []string, sizes []int64) error {
	if err := checkOrder(names, sizes); err != nil {
		return fmt.Errorf("export: OVA frame: %w", err)
	}
	offsets, total := OVALayout(names, sizes)
	zeros := make([]byte, tarTrailer)
	for i, name := range names {
		h, err := OVAHeader(name, sizes[i])
		if err != nil {
			return err
		}
		if _, err := w.WriteAt(h, offsets[i]-int64(len(h))); err != nil {
			return fmt.Errorf("export: OVA frame: header of %q: %w", name, err)
		}
		if p := padding(sizes[i]); p > 0 {
			if _, err := w.WriteAt(zeros[:p], offsets[i]+sizes[i]); err != nil {
				return fmt.Errorf("export: OVA frame: padding of %q: %w", name, err)
			}
		}
	}
	if _, err := w.WriteAt(zeros, total-tarTrailer); err != nil {
		return fmt.Errorf("export: OVA frame: trailer: %w", err)
	}
	return nil
}

// checkOrder checks a whole member list: lengths, names, sizes, no
// duplicates, the descriptor first and a manifest, if any, second.
func checkOrder(names []string, sizes []int64) error {
	if len(names) != len(sizes) {
		return fmt.Errorf("%w: %d names but %d sizes", ErrMalformed, len(names), len(sizes))
	}
	seen := nameSet{}
	for i, name := range names {
		if err := checkMember(name, sizes[i]); err != nil {
			return err
		}
		if err := seen.add(name); err != nil {
			return err
		}
		if err := checkPosition(i, name); err != nil {
			return err
		}
	}
	return nil
}

// checkPosition enforces the member order of an OVA for the i-th member.
func checkPosition(i int, name string) error {
	isOVF := hasSuffixFold(name, ".ovf")
	isMF := hasSuffixFold(name, ".mf")
	switch {
	case i == 0 && !isOVF:
		return fmt.Errorf("%w: first member %q is not the .ovf descriptor", ErrMalformed, name)
	case i > 0 && isOVF:
		return fmt.Errorf("%w: member %q: a second descriptor", ErrMalformed, name)
	case i > 1 && isMF:
		return fmt.Errorf("%w: member %q: the manifest must follow the descriptor", ErrMalformed, name)
	}
	return nil
}

func hasSuffixFold(s, suffix string) bool {
	return len(s) >= len(suffix) && strings.EqualFold(s[len(s)-len(suffix):], suffix)
}

// OVAWriter writes an OVA archive as a stream: the descriptor first, then
// the manifest, then the files in References order, each with its size
// known before its data (see OVALayout for the layout, which it matches).
type OVAWriter struct {
	tw    *tar.Writer
	names nameSet
	count int
	cur   string
	left  int64
	err   error
}

// NewOVAWriter returns a writer of an OVA archive to w. Close it to finish
// the archive; it does not close w.
func NewOVAWriter(w io.Writer) *OVAWriter {
	return &OVAWriter{tw: tar.NewWriter(w), names: nameSet{}}
}

// AddFile starts the next member, of exactly size bytes, and returns the
// writer for its data. The previous member must be complete (else
// ErrTruncated). The first member must be the .ovf descriptor and a .mf
// manifest, if any, the second; names must pass CheckName and be
// distinct. Writing more than size bytes fails with ErrTooLarge.
func (o *OVAWriter) AddFile(name string, size int64) (io.Writer, error) {
	if o.err != nil {
		return nil, o.err
	}
	if err := o.finish(); err != nil {
		return nil, err
	}
	if err := checkMember(name, size); err != nil {
		return nil, fmt.Errorf("export: OVA: %w", err)
	}
	if err := checkPosition(o.count, name); err != nil {
		return nil, fmt.Errorf("export: OVA: %w", err)
	}
	if err := o.names.add(name); err != nil {
		return nil, fmt.Errorf("export: OVA: %w", err)
	}
	if err := o.tw.WriteHeader(ovaHeader(name, size)); err != nil {
		o.err = fmt.Errorf("export: OVA: header of %q: %w", name, err)
		return nil, o.err
	}
	o.count++
	o.cur, o.left = name, size
	return ovaMember{o}, nil
}

// finish checks that the current member got all its bytes.
func (o *OVAWriter) finish() error {
	if o.left > 0 {
		return fmt.Errorf("export: OVA: member %q: %w: %d bytes missing", o.cur, ErrTruncated, o.left)
	}
	return nil
}

// Close checks that the last member is complete and writes the end of
// the archive.
func (o *OVAWriter) Close() error {
	if o.err != nil {
		return o.err
	}
	if err := o.finish(); err != nil {
		return err
	}
	if o.count == 0 {
		return fmt.Errorf("export: OVA: %w: no members", ErrMalformed)
	}
	if err := o.tw.Close(); err != nil {
		o.err = fmt.Errorf("export: OVA: %w", err)
		return o.err
	}
	o.err = errors.New("export: OVA: writer closed")
	return nil
}

// ovaMember writes the current member's data.
type ovaMember struct{ o *OVAWriter }

func (m ovaMember) Write(p []byte) (int, error) {
	o := m.o
	if o.err != nil {
		return 0, o.err
	}
	if int64(len(p)) > o.left {
		return 0, fmt.Errorf("export: OVA: member %q: %w: %d bytes more than its size", o.cur, ErrTooLarge, int64(len(p))-o.left)
	}
	n, err := o.tw.Write(p)
	o.left -= int64(n)
	if err != nil {
		o.err = fmt.Errorf("export: OVA: member %q: %w", o.cur, err)
		return n, o.err
	}
	return n, nil
}

// OVAReader reads an OVA archive from untrusted input, member by member,
// like archive/tar's Reader, with every member checked before its data is
// read: a regular file (no links, devices or directories), a safe name
// (CheckName, after any pax or GNU long-name header has applied) used by
// no earlier member (case-insensitively), a size within the limits, and
// the .ovf descriptor first. A member that ends early gives ErrTruncated.
// It does not compare members with the descriptor; the caller checks that
// the files are those of References, with the manifest's checksums.
type OVAReader struct {
	tr    *tar.Reader
	lim   Limits
	names nameSet
	count int
	cur   string
	size  int64
	read  int64
	err   error
}

// NewOVAReader returns a reader of the OVA archive r, bounded by lim.
func NewOVAReader(r io.Reader, lim Limits) *OVAReader {
	return &OVAReader{tr: tar.NewReader(r), lim: lim.withDefaults(), names: nameSet{}}
}

// Next advances to the next member and returns its name and size; at the
// end of the archive it returns io.EOF. Any refusal is final: later calls
// return the same error.
func (o *OVAReader) Next() (string, int64, error) {
	if o.err != nil {
		return "", 0, o.err
	}
	name, size, err := o.next()
	if err != nil {
		o.err = err
		o.cur = ""
		return "", 0, err
	}
	o.cur, o.size, o.read = name, size, 0
	return name, size, nil
}

func (o *OVAReader) next() (string, int64, error) {
	hdr, err := o.tr.Next()
	switch {
	case errors.Is(err, io.EOF):
		if o.count == 0 {
			return "", 0, fmt.Errorf("export: OVA: %w: no members", ErrMalformed)
		}
		return "", 0, io.EOF
	case errors.Is(err, io.ErrUnexpectedEOF):
		if o.cur != "" {
			return "", 0, fmt.Errorf("export: OVA: member %q: %w: archive ends inside it or the next header", o.cur, ErrTruncated)
		}
		return "", 0, fmt.Errorf("export: OVA: %w: archive ends inside a header", ErrTruncated)
	case errors.Is(err, tar.ErrInsecurePath) && hdr != nil:
		// CheckName below refuses it with the reason.
	case err != nil:
		return "", 0, fmt.Errorf("export: OVA: %w: after member %q: %v", ErrMalformed, o.cur, err)
	}
	name := hdr.Name
	if hdr.Typeflag != tar.TypeReg {
		return "", 0, fmt.Errorf("export: OVA: member %q: %w: %s, want a regular file", truncate(name), ErrUnsafeName, memberType(hdr))
	}
	if err := o.names.add(name); err != nil {
		return "", 0, fmt.Errorf("export: OVA: member: %w", err)
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return "", 0, fmt.Errorf("export: OVA: member %q: %w: sparse members are not supported", name, ErrMalformed)
		}
	}
	if o.count++; o.count > o.lim.MaxFiles {
		return "", 0, fmt.Errorf("export: OVA: %w: more than %d members", ErrTooLarge, o.lim.MaxFiles)
	}
	if err := checkPosition(o.count-1, name); err != nil {
		return "", 0, fmt.Errorf("export: OVA: %w", err)
	}
	limit := maxFileBytes(o.lim.MaxDiskBytes)
	switch {
	case o.count == 1:
		limit = o.lim.MaxDescriptorBytes
	case hasSuffixFold(name, ".mf"):
		limit = o.lim.MaxManifestBytes
	}
	if hdr.Size < 0 || hdr.Size > limit {
		return "", 0, fmt.Errorf("export: OVA: member %q: %w: %d bytes, more than %d", name, ErrTooLarge, hdr.Size, limit)
	}
	return name, hdr.Size, nil
}

// memberType describes a non-regular member for an error message.
func memberType(hdr *tar.Header) string {
	switch hdr.Typeflag {
	case tar.TypeSymlink:
		return fmt.Sprintf("a symbolic link to %q", truncate(hdr.Linkname))
	case tar.TypeLink:
		return fmt.Sprintf("a hard link to %q", truncate(hdr.Linkname))
	case tar.TypeChar, tar.TypeBlock:
		return "a device"
	case tar.TypeDir:
		return "a directory"
	case tar.TypeFifo:
		return "a FIFO"
	}
	return fmt.Sprintf("type %q", hdr.Typeflag)
}

// Read reads the current member's data. A member that ends before its
// size gives an error wrapping ErrTruncated.
func (o *OVAReader) Read(p []byte) (int, error) {
	if o.err != nil {
		return 0, o.err
	}
	if o.cur == "" {
		return 0, fmt.Errorf("export: OVA: %w: Read before Next", ErrMalformed)
	}
	n, err := o.tr.Read(p)
	o.read += int64(n)
	if errors.Is(err, io.ErrUnexpectedEOF) {
		o.err = fmt.Errorf("export: OVA: member %q: %w: archive ends after %d of %d bytes", o.cur, ErrTruncated, o.read, o.size)
		return n, o.err
	}
	if err != nil && !errors.Is(err, io.EOF) {
		o.err = fmt.Errorf("export: OVA: member %q: %w", o.cur, err)
		return n, o.err
	}
	return n, err
}
