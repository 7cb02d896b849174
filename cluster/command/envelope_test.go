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
	if len(Types()) != 20 {
		t.Fatalf("Types() = %d types, want 20", len(Types()))
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
