package export

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

var sentinels = []error{ErrUnsafeName, ErrEntity, ErrTooLarge, ErrChecksum, ErrTruncated, ErrFormat, ErrMalformed}

// checkSentinel fails unless err wraps one of the package's sentinels.
func checkSentinel(t *testing.T, err error) {
	t.Helper()
	for _, s := range sentinels {
		if errors.Is(err, s) {
			return
		}
	}
	t.Fatalf("error wraps no sentinel: %v", err)
}

// addFiles adds every file matching the patterns under testdata as a seed.
func addFiles(f *testing.F, patterns ...string) {
	for _, p := range patterns {
		paths, err := filepath.Glob(filepath.Join("testdata", p))
		if err != nil {
			f.Fatal(err)
		}
		for _, path := range paths {
			data, err := os.ReadFile(path)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data)
		}
	}
}

// FuzzParseDescriptor: no input panics; every refusal wraps a sentinel;
// a descriptor that parses writes, and reads back equal, and writing it
// again gives the same bytes.
func FuzzParseDescriptor(f *testing.F) {
	addFiles(f, "*.ovf", "malicious/*.ovf")
	f.Add(writeDescriptor(f, sample(false)))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := ParseDescriptor(bytes.NewReader(data), Limits{})
		if err != nil {
			checkSentinel(t, err)
			return
		}
		var a bytes.Buffer
		if err := WriteDescriptor(&a, d); err != nil {
			t.Fatalf("a parsed descriptor does not write: %v\n%+v", err, d)
		}
		d2, err := ParseDescriptor(bytes.NewReader(a.Bytes()), Limits{})
		if err != nil {
			t.Fatalf("a written descriptor does not parse: %v\n%s", err, a.Bytes())
		}
		if !reflect.DeepEqual(d, d2) {
			t.Fatalf("re-read descriptor differs:\n got %+v\nwant %+v", d2, d)
		}
		var b bytes.Buffer
		if err := WriteDescriptor(&b, d2); err != nil || !bytes.Equal(a.Bytes(), b.Bytes()) {
			t.Fatalf("second write differs (%v)", err)
		}
	})
}

// FuzzParseManifest: no input panics; refusals wrap a sentinel; parsed
// entries have safe names and sums of their algorithm's length; SHA-256
// manifests write and read back equal.
func FuzzParseManifest(f *testing.F) {
	addFiles(f, "malicious/*.mf")
	var b bytes.Buffer
	if err := WriteManifest(&b, sampleManifest()); err != nil {
		f.Fatal(err)
	}
	f.Add(b.Bytes())
	f.Add([]byte("SHA1(app.ovf)= da39a3ee5e6b4b0d3255bfef95601890afd80709\r\nSHA256(a)= e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseManifest(bytes.NewReader(data), Limits{})
		if err != nil {
			checkSentinel(t, err)
			return
		}
		sha256Only := true
		for _, e := range m {
			if err := CheckName(e.Name); err != nil {
				t.Fatalf("parsed an unsafe name: %v", err)
			}
			if len(e.Sum) != e.NewHash().Size() {
				t.Fatalf("%s: %d-byte %s sum", e.Name, len(e.Sum), e.Algorithm)
			}
			if e.Algorithm != AlgSHA256 {
				sha256Only = false
			}
		}
		if !sha256Only {
			return
		}
		var out bytes.Buffer
		if err := WriteManifest(&out, m); err != nil {
			t.Fatalf("a parsed manifest does not write: %v", err)
		}
		m2, err := ParseManifest(&out, Limits{})
		if err != nil || !reflect.DeepEqual(m, m2) {
			t.Fatalf("re-read manifest differs (%v):\n got %v\nwant %v", err, m2, m)
		}
	})
}

// FuzzOVAReader: no input panics; refusals wrap a sentinel; every member
// returned has a safe, distinct name, the descriptor comes first, and no
// more data is returned than the input holds.
func FuzzOVAReader(f *testing.F) {
	addFiles(f, "malicious/*.ova")
	f.Add(writeOVA(f, sampleMembers()))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewOVAReader(bytes.NewReader(data), Limits{})
		names := nameSet{}
		var total int64
		for i := 0; ; i++ {
			name, size, err := r.Next()
			if errors.Is(err, io.EOF) {
				return
			}
			if err != nil {
				checkSentinel(t, err)
				return
			}
			if err := names.add(name); err != nil {
				t.Fatalf("member %d: %v", i, err)
			}
			if i == 0 && !hasSuffixFold(name, ".ovf") {
				t.Fatalf("first member %q", name)
			}
			n, err := io.Copy(io.Discard, r)
			total += n
			if total > int64(len(data)) {
				t.Fatalf("read %d bytes from a %d-byte archive", total, len(data))
			}
			if err != nil {
				checkSentinel(t, err)
				return
			}
			if n != size {
				t.Fatalf("member %q: read %d of %d bytes without an error", name, n, size)
			}
		}
	})
}
