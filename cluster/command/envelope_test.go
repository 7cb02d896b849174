package command

import (
	"errors"
	"strings"
	"testing"
)

func TestTypeNumbering(t *testing.T) {
	numbers := map[uint8]Type{}
	names := map[string]Type{}
	for _, typ := range Types() {
		if typ.Number() == 0 {
			t.Fatalf("%s uses number 0", typ)
		}
		if prev, dup := numbers[typ.Number()]; dup {
			t.Fatalf("%s and %s share number %d", typ, prev, typ.Number())
		}
		numbers[typ.Number()] = typ
		if prev, dup := names[typ.String()]; dup {
			t.Fatalf("types %d and %d share name %q", typ, prev, typ.String())
		}
		names[typ.String()] = typ
		if strings.HasPrefix(typ.String(), "type(") {
			t.Fatalf("type %d has no name", typ)
		}
	}
	if len(Types()) != 23 {
		t.Fatalf("Types() = %d types, want 23", len(Types()))
	}
	// The numbers are part of the log format: pin them.
	pinned := map[Type]uint8{
		TypeNodeAdded: 1, TypeNodeUpdated: 2, TypeNodeRemoved: 3, TypeSettingsSet: 4,
		TypeVMRegistered: 5, TypeVMUpdated: 6, TypeVMRemoved: 7,
		TypeContainerCreated: 8, TypeContainerExpanded: 9,
		TypeSnapshotCreated: 10, TypeSnapshotCaptured: 11, TypeReplicaWritten: 12,
		TypeSnapshotFailed: 13, TypeDiscardIncomplete: 14, TypeSnapshotDeleteRequested: 15,
		TypeReplicaReclaimed: 16, TypeExportJobCreated: 17, TypeImportJobCreated: 18,
		TypeJobProgress: 19, TypeJobStateChanged: 20,
		TypeShareAdded: 21, TypeShareRemoved: 22, TypeJobAssigned: 23,
	}
	for typ, n := range pinned {
		if uint8(typ) != n {
			t.Fatalf("%s = %d, pinned at %d", typ, uint8(typ), n)
		}
	}
	if got := Type(0x85).String(); got != "type(5|ignore)" {
		t.Fatalf("String of unknown ignorable type = %q", got)
	}
}

func TestDecodeUnknownType(t *testing.T) {
	_, err := Decode([]byte{0x7f, 1, '{', '}'})
	var ut *UnknownTypeError
	if !errors.As(err, &ut) || ut.Type != 0x7f {
		t.Fatalf("Decode unknown type: err = %v, want *UnknownTypeError{0x7f}", err)
	}
	if errors.Is(err, ErrIgnorable) {
		t.Fatalf("unknown type without the ignore bit must not be ignorable")
	}
}

func TestDecodeIgnorableUnknownType(t *testing.T) {
	_, err := Decode([]byte{0xff, 9, 'x'})
	if !errors.Is(err, ErrIgnorable) {
		t.Fatalf("Decode unknown ignorable type: err = %v, want ErrIgnorable", err)
	}
	var ut *UnknownTypeError
	if errors.As(err, &ut) {
		t.Fatalf("ignorable type reported as *UnknownTypeError")
	}
}

func TestDecodeUnknownVersion(t *testing.T) {
	_, err := Decode([]byte{byte(TypeNodeRemoved), 2, '{', '}'})
	var uv *UnknownVersionError
	if !errors.As(err, &uv) || uv.Type != TypeNodeRemoved || uv.Version != 2 {
		t.Fatalf("Decode version 2: err = %v, want *UnknownVersionError", err)
	}
}

func TestDecodeMalformed(t *testing.T) {
	n := byte(TypeNodeRemoved)
	cases := map[string][]byte{
		"empty":          nil,
		"type only":      {n},
		"no payload":     {n, 1},
		"bad json":       append([]byte{n, 1}, `{"id":`...),
		"unknown field":  append([]byte{n, 1}, `{"id":"a","extra":1}`...),
		"trailing data":  append([]byte{n, 1}, `{"id":"a"}{}`...),
		"wrong type":     append([]byte{n, 1}, `{"id":7}`...),
		"array":          append([]byte{n, 1}, `["a"]`...),
		"too large":      append([]byte{n, 1}, make([]byte, MaxSize)...),
		"trailing token": append([]byte{n, 1}, `{"id":"a"} x`...),
	}
	for name, b := range cases {
		_, err := Decode(b)
		var de *DecodeError
		if !errors.As(err, &de) {
			t.Fatalf("%s: err = %v, want *DecodeError", name, err)
		}
	}
	// White space around the object is fine.
	c, err := Decode(append([]byte{n, 1}, " {\"id\":\"a\"}\n"...))
	if err != nil || c.(*NodeRemoved).ID != "a" {
		t.Fatalf("Decode with white space = %v, %v", c, err)
	}
}

func TestDecodeDoesNotValidate(t *testing.T) {
	// Validation is the state machine's job: an invalid command must decode
	// so that every node refuses it the same way instead of stopping.
	c, err := Decode(append([]byte{byte(TypeNodeRemoved), 1}, `{"id":""}`...))
	if err != nil {
		t.Fatalf("Decode invalid command: %v", err)
	}
	if err := c.Validate(); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Validate = %v, want ErrInvalid", err)
	}
}

func TestEncodeValidates(t *testing.T) {
	if _, err := Encode(&NodeRemoved{}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Encode invalid: err = %v, want ErrInvalid", err)
	}
	if _, err := Encode(nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Encode nil: err = %v, want ErrInvalid", err)
	}
}

func TestEncodeValueAndPointer(t *testing.T) {
	a, err := Encode(NodeRemoved{ID: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Encode(&NodeRemoved{ID: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	if string(a) != string(b) || a[0] != byte(TypeNodeRemoved) || a[1] != 1 {
		t.Fatalf("value %q and pointer %q encodings differ or have a bad header", a, b)
	}
}

// TestPayloadVersions: a command is written at the lowest payload version
// that carries the fields it sets, so the samples of before version 2 keep
// their bytes; an old version's decoder refuses the newer fields, and an
// unknown version is refused as such.
func TestPayloadVersions(t *testing.T) {
	for name, c := range samples() {
		want := newFieldSamples[name]
		if want == 0 {
			want = 1
		}
		b, err := Encode(c)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if PayloadVersion(c) != want || b[1] != want {
			t.Fatalf("%s: PayloadVersion %d, envelope version %d; want %d", name, PayloadVersion(c), b[1], want)
		}
		if want == 1 {
			continue
		}
		// The same payload under an older version header is malformed.
		old := append([]byte{b[0], want - 1}, b[2:]...)
		var de *DecodeError
		if _, err := Decode(old); !errors.As(err, &de) {
			t.Fatalf("%s: version %d header over version %d fields: err = %v, want *DecodeError", name, want-1, want, err)
		}
		// A version this node does not know.
		var uv *UnknownVersionError
		if _, err := Decode(append([]byte{b[0], want + 1}, b[2:]...)); !errors.As(err, &uv) {
			t.Fatalf("%s: version %d: err = %v, want *UnknownVersionError", name, want+1, err)
		}
	}
	// A newer version's header over a payload without its fields decodes,
	// and is written back at the older version.
	old, err := Encode(samples()["export-job-created"])
	if err != nil {
		t.Fatal(err)
	}
	c, err := Decode(append([]byte{old[0], 2}, old[2:]...))
	if err != nil {
		t.Fatalf("version 2 header over a version 1 payload: %v", err)
	}
	again, err := Encode(c)
	if err != nil || string(again) != string(old) {
		t.Fatalf("re-encoded as %q, %v; want %q", again, err, old)
	}
	// Fields one at a time: each alone makes the payload version 2.
	one := map[string]Command{
		"share":           &ExportJobCreated{Share: "s"},
		"package":         &ExportJobCreated{Package: "p"},
		"ova":             &ExportJobCreated{OVA: true},
		"volumes":         &ExportJobCreated{Volumes: []string{"v"}},
		"window":          &ExportJobCreated{Window: &Window{}},
		"bandwidth":       &ExportJobCreated{BandwidthBytes: 1},
		"import share":    &ImportJobCreated{Share: "s"},
		"import path":     &ImportJobCreated{Path: "p.ovf"},
		"readdress":       &ImportJobCreated{Readdress: &Readdress{}},
		"rate":            &JobProgress{Rate: 1},
		"file":            &JobProgress{File: "f"},
		"reason":          &JobStateChanged{Reason: "r"},
		"vm":              &JobStateChanged{VMID: "v"},
		"empty volumes":   &ExportJobCreated{Volumes: []string{}},
		"nothing new":     &ExportJobCreated{},
		"nothing new too": &JobStateChanged{},
	}
	for name, c := range one {
		want := uint8(2)
		if strings.HasPrefix(name, "nothing") || name == "empty volumes" {
			want = 1
		}
		if got := PayloadVersion(c); got != want {
			t.Fatalf("%s: PayloadVersion = %d, want %d", name, got, want)
		}
	}
	if PayloadVersion(&NodeRemoved{ID: "n"}) != 1 {
		t.Fatal("a command without versions is not at version 1")
	}
}
