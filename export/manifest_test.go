package export

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func sampleManifest() Manifest {
	sum := func(s string) []byte { h := sha256.Sum256([]byte(s)); return h[:] }
	return Manifest{
		{Name: "web01.ovf", Algorithm: AlgSHA256, Sum: sum("ovf")},
		{Name: "web01-root.qcow2", Algorithm: AlgSHA256, Sum: sum("root")},
		{Name: "web01-data.vmdk", Algorithm: AlgSHA256, Sum: sum("data")},
	}
}

func TestManifestRoundTrip(t *testing.T) {
	m := sampleManifest()
	var a, b bytes.Buffer
	if err := WriteManifest(&a, m); err != nil {
		t.Fatal(err)
	}
	if err := WriteManifest(&b, m); err != nil || !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatalf("two writes differ (%v)", err)
	}
	want := "SHA256(web01.ovf)= " + hex.EncodeToString(m[0].Sum) + "\n"
	if line := strings.SplitAfter(a.String(), "\n")[0]; line != want {
		t.Fatalf("first line %q, want %q", line, want)
	}
	got, err := ParseManifest(&a, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, m) {
		t.Fatalf("round trip:\n got %v\nwant %v", got, m)
	}
	for _, e := range m {
		if err := got.Check(e.Name, e.Sum); err != nil {
			t.Errorf("Check(%s): %v", e.Name, err)
		}
	}
	if miss := got.Missing([]string{"web01-root.qcow2", "web01-uefi-vars.fd", "web01.ovf", "extra.vmdk"}); !reflect.DeepEqual(miss, []string{"web01-uefi-vars.fd", "extra.vmdk"}) {
		t.Fatalf("Missing = %v", miss)
	}
}

// TestParseManifestForeign reads what other tools write: SHA-1 lines
// (OVF 1.x), upper-case hex, CRLF line ends, no final newline.
func TestParseManifestForeign(t *testing.T) {
	in := "SHA1(app.ovf)= DA39A3EE5E6B4B0D3255BFEF95601890AFD80709\r\n" +
		"SHA256(app-disk1.vmdk)= e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	m, err := ParseManifest(strings.NewReader(in), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 2 || m[0].Algorithm != AlgSHA1 || len(m[0].Sum) != 20 || m[1].Algorithm != AlgSHA256 {
		t.Fatalf("parsed %+v", m)
	}
	h := m[0].NewHash()
	if err := m.Check("app.ovf", h.Sum(nil)); err != nil {
		t.Fatalf("SHA-1 of nothing: %v", err)
	}
	h = m[1].NewHash()
	if err := m.Check("app-disk1.vmdk", h.Sum(nil)); err != nil {
		t.Fatalf("SHA-256 of nothing: %v", err)
	}
	// twinsnap never writes SHA-1.
	if err := WriteManifest(&bytes.Buffer{}, m); !errors.Is(err, ErrMalformed) || !strings.Contains(fmtErr(err), `algorithm "SHA1"`) {
		t.Fatalf("WriteManifest of a SHA-1 entry: %v", err)
	}
}

func TestWriteManifestRefuses(t *testing.T) {
	for _, tc := range []struct {
		name    string
		entries []ManifestEntry
		want    error
	}{
		{"unsafe", []ManifestEntry{{Name: "../x", Sum: make([]byte, 32)}}, ErrUnsafeName},
		{"duplicate", []ManifestEntry{{Name: "x", Sum: make([]byte, 32)}, {Name: "X", Sum: make([]byte, 32)}}, ErrUnsafeName},
		{"short sum", []ManifestEntry{{Name: "x", Sum: make([]byte, 20)}}, ErrMalformed},
	} {
		var b bytes.Buffer
		if err := WriteManifest(&b, tc.entries); !errors.Is(err, tc.want) || b.Len() != 0 {
			t.Errorf("%s: %v (%d bytes written), want %v", tc.name, err, b.Len(), tc.want)
		}
	}
}
