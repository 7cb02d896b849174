// Package jsonframe reads JSON objects from a byte stream that carries one
// object after another with no other framing: the QEMU guest agent's
// protocol and QMP. It finds an object's end by matching braces outside
// strings, not by lines, bounds its size, and checks that it is valid
// JSON. It imports no project package, so that both the guest-agent
// client and the QMP client can use it.
package jsonframe

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
)

// Errors of Read. Each is wrapped with details; match with errors.Is.
var (
	// ErrStray: a byte other than white space stood before an object.
	ErrStray = errors.New("unexpected byte outside an object")
	// ErrTooLarge: the object exceeds the size bound.
	ErrTooLarge = errors.New("object too large")
	// ErrMalformed: the braces balance but the object is not valid JSON.
	ErrMalformed = errors.New("malformed object")
	// ErrTruncated: the stream ended inside an object; the read error is
	// wrapped too.
	ErrTruncated = errors.New("stream ended inside an object")
	// ErrStop: the stop byte appeared; it is left unread.
	ErrStop = errors.New("stop byte")
)

// NoStop disables the stop byte.
const NoStop = -1

// Read reads one JSON object from r, skipping white space before it, and
// returns it only if it is valid JSON of at most max bytes. A stray byte
// before the object is consumed and reported. When stop is a byte value
// (not NoStop), that byte ends the read with ErrStop wherever it appears,
// and is left unread (the guest agent's 0xFF sync marker, which never
// occurs in UTF-8 text). Read scans bufio's buffer a chunk at a time, so
// objects of megabytes cost no per-byte calls. Errors from r are returned
// as they are between objects and wrapped in ErrTruncated inside one.
func Read(r *bufio.Reader, max, stop int) ([]byte, error) {
	var buf []byte
	started := false
	depth := 0
	inString, escaped := false, false
	for {
		if r.Buffered() == 0 {
			if _, err := r.Peek(1); err != nil {
				if started {
					return nil, fmt.Errorf("%w (%d bytes read): %w", ErrTruncated, len(buf), err)
				}
				return nil, err
			}
		}
		chunk, _ := r.Peek(r.Buffered())
		from := 0 // where this chunk's part of the object begins
		for i, b := range chunk {
			if stop != NoStop && int(b) == stop {
				_, _ = r.Discard(i)
				return nil, ErrStop
			}
			if !started {
				switch b {
				case ' ', '\t', '\r', '\n':
					continue
				case '{':
					started, from = true, i
				default:
					_, _ = r.Discard(i + 1)
					return nil, fmt.Errorf("%w: %#x", ErrStray, b)
				}
			}
			switch {
			case inString && escaped:
				escaped = false
			case inString && b == '\\':
				escaped = true
			case inString && b == '"':
				inString = false
			case inString:
			case b == '"':
				inString = true
			case b == '{' || b == '[':
				depth++
			case b == '}' || b == ']':
				depth--
				if depth > 0 {
					continue
				}
				if len(buf)+i+1-from > max {
					_, _ = r.Discard(i + 1)
					return nil, fmt.Errorf("%w: over %d bytes", ErrTooLarge, max)
				}
				buf = append(buf, chunk[from:i+1]...)
				_, _ = r.Discard(i + 1)
				// Brackets balance; the object may still be malformed
				// ({"a" 1}, {]).
				if !json.Valid(buf) {
					return nil, fmt.Errorf("%w: %.200q", ErrMalformed, buf)
				}
				return buf, nil
			}
		}
		if started {
			if len(buf)+len(chunk)-from > max {
				_, _ = r.Discard(len(chunk))
				return nil, fmt.Errorf("%w: over %d bytes", ErrTooLarge, max)
			}
			buf = append(buf, chunk[from:]...)
		}
		_, _ = r.Discard(len(chunk))
	}
}
