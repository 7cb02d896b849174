package command

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// MaxSize is the largest encoded command, envelope included. Validation
// keeps real commands far below it; Decode refuses anything larger before
// parsing it.
const MaxSize = 1 << 20

// headerSize is the envelope header: the type byte and the payload-version byte.
const headerSize = 2

// Command is one entry of the replicated log. Every command is a plain
// struct with a fixed Type; Decode returns pointers to them.
type Command interface {
	// Type returns the command's type byte.
	Type() Type
	// Validate checks the command on its own: required fields, sane values,
	// sizes and names. It never looks at replicated state.
	Validate() error
}

// ErrIgnorable is returned by Decode for a command type this node does not
// know whose IgnoreUnknown bit is set. The state machine skips such entries.
var ErrIgnorable = errors.New("command: unknown command type marked ignore-if-unknown")

// ErrInvalid is matched (through errors.Is) by every error Validate returns.
var ErrInvalid = errors.New("command: invalid")

// UnknownTypeError is returned by Decode for a command type this node does
// not know and must not skip. Applying past it would let state diverge, so
// the state machine stops on it.
type UnknownTypeError struct {
	// Type is the unknown type byte.
	Type Type
}

// Error implements error.
func (e *UnknownTypeError) Error() string {
	return fmt.Sprintf("command: unknown command type %d (upgrade this node)", uint8(e.Type))
}

// UnknownVersionError is returned by Decode for a known command type with a
// payload version this node cannot read, typically one written by a newer
// release.
type UnknownVersionError struct {
	// Type is the command type.
	Type Type
	// Version is the payload version found.
	Version uint8
}

// Error implements error.
func (e *UnknownVersionError) Error() string {
	return fmt.Sprintf("command: %s payload version %d is not supported (upgrade this node)", e.Type, e.Version)
}

// DecodeError is returned by Decode for an envelope or payload that cannot be
// parsed: too short, too large, malformed JSON, unknown fields or trailing
// data.
type DecodeError struct {
	// Type is the envelope's type byte, or 0 when even that was missing.
	Type Type
	// Err is the underlying cause.
	Err error
}

// Error implements error.
func (e *DecodeError) Error() string {
	return fmt.Sprintf("command: decode %s: %v", e.Type, e.Err)
}

// Unwrap returns the cause.
func (e *DecodeError) Unwrap() error { return e.Err }

// codec describes one command type: its name, the newest payload version
// and a decoder per payload version it can read.
type codec struct {
	name    string
	version uint8
	decode  map[uint8]func([]byte) (Command, error)
}

// versioned is implemented by commands whose payload gained fields after
// payload version 1. Fields are only ever added, each with omitempty, so
// one struct reads every version; payloadVersion says which fields are set.
type versioned interface {
	// payloadVersion returns the lowest payload version that carries every
	// field the command sets (non-zero, as omitempty sees it).
	payloadVersion() uint8
}

// PayloadVersion returns the payload version Encode writes for c: the
// lowest version that carries every field c sets. A command that uses no
// field of a newer version is written at the older one, byte for byte as
// before, so that nodes of an older release keep reading it; one that does
// is written at the newer version, which older nodes refuse with
// *UnknownVersionError ("upgrade this node") instead of misreading it.
func PayloadVersion(c Command) uint8 {
	if v, ok := c.(versioned); ok {
		return v.payloadVersion()
	}
	return 1
}

// registry holds every known command type. It is filled by init functions
// and read-only afterwards.
var registry = map[Type]*codec{}

// register adds command type t, written at payload version 1 as JSON of C.
// A later payload version adds another decoder that converts old payloads.
func register[C any, P interface {
	*C
	Command
}](t Type, name string) {
	if _, dup := registry[t]; dup {
		panic(fmt.Sprintf("command: type %d registered twice", t))
	}
	for other, c := range registry {
		if other.Number() == t.Number() {
			panic(fmt.Sprintf("command: number %d of %s already used by %s", t.Number(), name, c.name))
		}
	}
	registry[t] = &codec{
		name:    name,
		version: 1,
		decode:  map[uint8]func([]byte) (Command, error){1: decodeJSON[C, P](1)},
	}
}

// addVersion makes version the newest payload version of command type t,
// registered before with register: C gained fields, and C's payloadVersion
// reports when they are set. Decoders of the older versions refuse payloads
// that carry the newer fields.
func addVersion[C any, P interface {
	*C
	Command
	versioned
}](t Type, version uint8) {
	cd := registry[t]
	if cd == nil || version != cd.version+1 {
		panic(fmt.Sprintf("command: version %d of type %d does not follow a registered version", version, t))
	}
	cd.version = version
	cd.decode[version] = decodeJSON[C, P](version)
}

// decodeJSON returns a decoder of payload version v: it strictly decodes a
// JSON payload into a new C. Unknown fields and trailing data are errors,
// because a field this node does not know could carry meaning it would
// silently drop; so are fields of a later payload version than v.
func decodeJSON[C any, P interface {
	*C
	Command
}](v uint8) func([]byte) (Command, error) {
	return func(b []byte) (Command, error) {
		p := P(new(C))
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(p); err != nil {
			return nil, err
		}
		if _, err := dec.Token(); err != io.EOF {
			return nil, errors.New("trailing data after payload")
		}
		if pv := PayloadVersion(p); pv > v {
			return nil, fmt.Errorf("payload version %d carries fields of version %d", v, pv)
		}
		return p, nil
	}
}

// Encode validates c and returns its envelope: the type byte, the payload
// version byte (see PayloadVersion), then the JSON payload.
func Encode(c Command) ([]byte, error) {
	if c == nil {
		return nil, fmt.Errorf("command: encode nil command: %w", ErrInvalid)
	}
	t := c.Type()
	cd, ok := registry[t]
	if !ok {
		return nil, &UnknownTypeError{Type: t}
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("command: encode %s: %w", t, err)
	}
	version := PayloadVersion(c)
	if cd.decode[version] == nil {
		return nil, fmt.Errorf("command: encode %s: payload version %d is not registered", t, version)
	}
	payload, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("command: encode %s: %w", t, err)
	}
	if headerSize+len(payload) > MaxSize {
		return nil, fmt.Errorf("command: encode %s: %d bytes exceeds %d: %w", t, headerSize+len(payload), MaxSize, ErrInvalid)
	}
	out := make([]byte, 0, headerSize+len(payload))
	out = append(out, byte(t), version)
	return append(out, payload...), nil
}

// Decode parses an envelope. It does not validate the command: the state
// machine does that and reports failures as business errors. Decode returns
// an error wrapping ErrIgnorable for an unknown type with the IgnoreUnknown
// bit, *UnknownTypeError for other unknown types, *UnknownVersionError for an
// unreadable payload version and *DecodeError for malformed input.
func Decode(b []byte) (Command, error) {
	if len(b) < headerSize {
		var t Type
		if len(b) > 0 {
			t = Type(b[0])
		}
		return nil, &DecodeError{Type: t, Err: fmt.Errorf("envelope of %d bytes is shorter than its %d-byte header", len(b), headerSize)}
	}
	t, version := Type(b[0]), b[1]
	if len(b) > MaxSize {
		return nil, &DecodeError{Type: t, Err: fmt.Errorf("envelope of %d bytes exceeds %d", len(b), MaxSize)}
	}
	cd, ok := registry[t]
	if !ok {
		if t.Ignorable() {
			return nil, fmt.Errorf("%w: type %d", ErrIgnorable, t.Number())
		}
		return nil, &UnknownTypeError{Type: t}
	}
	dec, ok := cd.decode[version]
	if !ok {
		return nil, &UnknownVersionError{Type: t, Version: version}
	}
	c, err := dec(b[headerSize:])
	if err != nil {
		return nil, &DecodeError{Type: t, Err: err}
	}
	return c, nil
}
