package command

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzDecode feeds arbitrary envelopes to Decode. Decode must never panic,
// must classify every failure, and whatever it accepts and validates must
// survive Encode and Decode unchanged.
func FuzzDecode(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.bin"))
	if err != nil {
		f.Fatal(err)
	}
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		if len(b) > 2 && b[1] > 1 { // the payload under an older version's header
			f.Add(append([]byte{b[0], b[1] - 1}, b[2:]...))
		}
	}
	f.Add([]byte{})
	f.Add(append([]byte{byte(TypeShareAdded), 1}, `{"name":"n","url":"smb://h/s","password":"!!","created_at":"2026-01-01T00:00:00Z"}`...))
	f.Add(append([]byte{byte(TypeExportJobCreated), 2}, `{"id":"j","snapshot_id":"s","node":"n","target":"","format":"qcow2","creator":"a","created_at":"2026-01-01T00:00:00Z","share":"x","volumes":[]}`...))
	f.Add([]byte{0xff, 1})
	f.Add([]byte{byte(TypeNodeRemoved), 2, '{', '}'})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Decode(b)
		if err != nil {
			var (
				ut *UnknownTypeError
				uv *UnknownVersionError
				de *DecodeError
			)
			if !errors.Is(err, ErrIgnorable) && !errors.As(err, &ut) && !errors.As(err, &uv) && !errors.As(err, &de) {
				t.Fatalf("Decode(%q) returned an unclassified error: %v", b, err)
			}
			if c != nil {
				t.Fatalf("Decode(%q) returned a command with error %v", b, err)
			}
			return
		}
		if c.Type() != Type(b[0]) {
			t.Fatalf("Decode(%q) returned %s", b, c.Type())
		}
		if c.Validate() != nil {
			return
		}
		enc, err := Encode(c)
		if err != nil {
			t.Fatalf("Encode of a decoded, valid %s: %v", c.Type(), err)
		}
		c2, err := Decode(enc)
		if err != nil {
			t.Fatalf("Decode(Encode(Decode(%q))): %v", b, err)
		}
		enc2, err := Encode(c2)
		if err != nil {
			t.Fatalf("second Encode: %v", err)
		}
		if !bytes.Equal(enc, enc2) {
			t.Fatalf("re-encoding is unstable:\n%q\n%q", enc, enc2)
		}
	})
}
