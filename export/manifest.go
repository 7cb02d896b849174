package export

import (
	"bufio"
	"bytes"
	"crypto/sha1" //nolint:gosec // SHA-1 only verifies foreign packages that name it
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"strings"
)

// Manifest checksum algorithms. twinsnap writes SHA-256 only; SHA-1, which
// OVF 1.x named and some older tools still write, is accepted when reading
// a foreign package.
const (
	// AlgSHA256 names SHA-256, the algorithm twinsnap writes.
	AlgSHA256 = "SHA256"
	// AlgSHA1 names SHA-1, accepted only in manifests being read.
	AlgSHA1 = "SHA1"
)

// ManifestEntry is one line of a manifest: a file name and its checksum.
type ManifestEntry struct {
	// Name is the file's name inside the package (see CheckName).
	Name string
	// Algorithm is AlgSHA256 or AlgSHA1; empty means AlgSHA256 when
	// writing.
	Algorithm string
	// Sum is the raw checksum: 32 bytes for SHA-256, 20 for SHA-1.
	Sum []byte
}

// NewHash returns a new hash of the entry's algorithm, to compute the sum
// that Manifest.Check compares.
func (e ManifestEntry) NewHash() hash.Hash {
	if e.Algorithm == AlgSHA1 {
		return sha1.New() //nolint:gosec // see the import
	}
	return sha256.New()
}

// Manifest is a parsed manifest: its entries in file order.
type Manifest []ManifestEntry

// WriteManifest writes entries as a manifest, one line each, exactly
// "SHA256(<name>)= <lower-case hex>\n", in the order given. Every entry
// must be a SHA-256 entry with a 32-byte sum and a safe, distinct name
// (CheckName); otherwise nothing is written.
func WriteManifest(w io.Writer, entries []ManifestEntry) error {
	var b bytes.Buffer
	names := nameSet{}
	for _, e := range entries {
		if err := names.add(e.Name); err != nil {
			return fmt.Errorf("export: write manifest: %w", err)
		}
		if e.Algorithm != "" && e.Algorithm != AlgSHA256 {
			return fmt.Errorf("export: write manifest: %w: %q: algorithm %q, want SHA256", ErrMalformed, e.Name, e.Algorithm)
		}
		if len(e.Sum) != sha256.Size {
			return fmt.Errorf("export: write manifest: %w: %q: %d-byte checksum, want %d", ErrMalformed, e.Name, len(e.Sum), sha256.Size)
		}
		fmt.Fprintf(&b, "%s(%s)= %s\n", AlgSHA256, e.Name, hex.EncodeToString(e.Sum))
	}
	if _, err := w.Write(b.Bytes()); err != nil {
		return fmt.Errorf("export: write manifest: %w", err)
	}
	return nil
}

// ParseManifest reads a manifest from untrusted input. Each line must be
// exactly "<ALG>(<name>)= <hex>" with ALG SHA256 or SHA1, a hex sum of
// that algorithm's length (either case) and a safe name that no earlier
// line used (CheckName; case-insensitive); lines may end in "\n" or
// "\r\n", and the last newline is optional. Empty lines, anything else on
// a line, more than lim.MaxFiles lines and more than lim.MaxManifestBytes
// (default 1 MiB) are refused, each with the line number.
func ParseManifest(r io.Reader, lim Limits) (Manifest, error) {
	lim = lim.withDefaults()
	data, err := io.ReadAll(io.LimitReader(r, lim.MaxManifestBytes+1))
	if err != nil {
		return nil, fmt.Errorf("export: read manifest: %w", err)
	}
	if int64(len(data)) > lim.MaxManifestBytes {
		return nil, fmt.Errorf("export: manifest: %w: larger than %d bytes", ErrTooLarge, lim.MaxManifestBytes)
	}
	var m Manifest
	names := nameSet{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), len(data)+1)
	for n := 1; sc.Scan(); n++ {
		if len(m) >= lim.MaxFiles {
			return nil, fmt.Errorf("export: manifest: %w: more than %d lines", ErrTooLarge, lim.MaxFiles)
		}
		e, err := parseManifestLine(strings.TrimSuffix(sc.Text(), "\r"))
		if err == nil {
			err = names.add(e.Name)
		}
		if err != nil {
			return nil, fmt.Errorf("export: manifest line %d: %w", n, err)
		}
		m = append(m, e)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("export: manifest: %w: %v", ErrMalformed, err)
	}
	return m, nil
}

// parseManifestLine parses one line without its line ending.
func parseManifestLine(line string) (ManifestEntry, error) {
	bad := func(why string) (ManifestEntry, error) {
		return ManifestEntry{}, fmt.Errorf("%w: %q: %s", ErrMalformed, truncate(line), why)
	}
	if line == "" {
		return bad("empty line")
	}
	alg, rest, ok := strings.Cut(line, "(")
	if !ok {
		return bad(`want "SHA256(name)= hex"`)
	}
	var size int
	switch alg {
	case AlgSHA256:
		size = sha256.Size
	case AlgSHA1:
		size = sha1.Size
	default:
		return bad(fmt.Sprintf("algorithm %q, want SHA256 or SHA1", truncate(alg)))
	}
	i := strings.LastIndex(rest, ")= ")
	if i < 0 {
		return bad(`want "SHA256(name)= hex"`)
	}
	name, sum := rest[:i], rest[i+3:]
	if err := checkName(name); err != nil {
		return ManifestEntry{}, err
	}
	if len(sum) != 2*size {
		return bad(fmt.Sprintf("%d hex digits, want %d for %s", len(sum), 2*size, alg))
	}
	raw, err := hex.DecodeString(sum)
	if err != nil {
		return bad("checksum is not hexadecimal")
	}
	return ManifestEntry{Name: name, Algorithm: alg, Sum: raw}, nil
}

// Lookup returns the entry for name (compared exactly).
func (m Manifest) Lookup(name string) (ManifestEntry, bool) {
	for _, e := range m {
		if e.Name == name {
			return e, true
		}
	}
	return ManifestEntry{}, false
}

// Check compares sum, computed with the entry's algorithm (see
// ManifestEntry.NewHash), with the manifest's entry for name. It returns
// an error wrapping ErrChecksum that names the file and both sums when
// they differ or when the manifest lists no entry for name.
func (m Manifest) Check(name string, sum []byte) error {
	e, ok := m.Lookup(name)
	if !ok {
		return fmt.Errorf("export: %w: %q is not listed in the manifest", ErrChecksum, name)
	}
	if !bytes.Equal(e.Sum, sum) {
		return fmt.Errorf("export: %w: %q: %s is %x, manifest says %x", ErrChecksum, name, e.algorithm(), sum, e.Sum)
	}
	return nil
}

func (e ManifestEntry) algorithm() string {
	if e.Algorithm == "" {
		return AlgSHA256
	}
	return e.Algorithm
}

// Missing returns, in the order given, the names the manifest has no
// entry for: the files of a package that could not be verified.
func (m Manifest) Missing(names []string) []string {
	var out []string
	for _, n := range names {
		if _, ok := m.Lookup(n); !ok {
			out = append(out, n)
		}
	}
	return out
}
