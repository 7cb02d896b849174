package guestagent

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/twinsnap/twinsnap/guestagent/jsonframe"
)

// MaxReplySize bounds one reply from the agent; a longer one is a protocol
// error (the agent's largest replies, guest-get-fsinfo and guest-exec
// output, stay far below it).
const MaxReplySize = 16 << 20

// maxSkip bounds the bytes discarded while looking for the agent's sync
// marker: room for one abandoned reply of MaxReplySize and the agent's
// parse-error replies around it. A stream that goes on longer without a
// marker is not speaking the protocol.
const maxSkip = 2 * MaxReplySize

// syncMarker is the byte the agent sends before the reply to
// guest-sync-delimited, and the byte a client sends to reset the agent's
// parser. It never occurs in UTF-8 text, so it cannot be part of a reply.
const syncMarker = 0xFF

// skipToMarker discards bytes up to and including the next 0xFF.
func skipToMarker(r *bufio.Reader) error {
	for n := 0; ; n++ {
		if n > maxSkip {
			return fmt.Errorf("%w: no sync marker within %d bytes", ErrProtocol, maxSkip)
		}
		b, err := r.ReadByte()
		if err != nil {
			return err
		}
		if b == syncMarker {
			return nil
		}
	}
}

// readValue reads one JSON object from r, skipping white space before it,
// and returns it only if it is valid JSON of at most MaxReplySize bytes.
// Anything else before the object is a protocol error. A sync marker ends
// the value with a protocol error and is left unread, so that a resync
// finds it.
func readValue(r *bufio.Reader) ([]byte, error) {
	b, err := jsonframe.Read(r, MaxReplySize, syncMarker)
	switch {
	case err == nil:
		return b, nil
	case errors.Is(err, jsonframe.ErrTooLarge):
		return nil, errTooLarge
	case errors.Is(err, jsonframe.ErrStop):
		return nil, fmt.Errorf("%w: sync marker inside or before a reply", ErrProtocol)
	case errors.Is(err, jsonframe.ErrStray), errors.Is(err, jsonframe.ErrMalformed):
		return nil, fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	return nil, err // the connection's error, possibly inside a reply
}

// errTooLarge reports a reply over MaxReplySize.
var errTooLarge = fmt.Errorf("%w: reply larger than %d bytes", ErrProtocol, MaxReplySize)

// reply is one parsed reply object.
type reply struct {
	// ret is the "return" member, nil if absent.
	ret json.RawMessage
	// err is the "error" member, nil if absent.
	err *replyError
	// id is the "id" member, nil if absent.
	id json.RawMessage
}

// replyError is the "error" member of a reply.
type replyError struct {
	Class string
	Desc  string
}

// parseReply parses one reply object strictly: member names match exactly
// (encoding/json alone would accept "Return"), no member appears twice,
// exactly one of "return" and "error" is present, and an error carries a
// string class and description. Other members are ignored.
func parseReply(raw []byte) (reply, error) {
	var r reply
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return r, fmt.Errorf("%w: reply is not an object: %.200q", ErrProtocol, raw)
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return r, fmt.Errorf("%w: reply: %w", ErrProtocol, err)
		}
		key, _ := tok.(string)
		if seen[key] {
			return r, fmt.Errorf("%w: reply has member %q twice", ErrProtocol, key)
		}
		seen[key] = true
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return r, fmt.Errorf("%w: reply member %q: %w", ErrProtocol, key, err)
		}
		switch key {
		case "return":
			r.ret = v
		case "id":
			r.id = v
		case "error":
			e, err := parseError(v)
			if err != nil {
				return r, err
			}
			r.err = e
		}
	}
	switch {
	case r.ret != nil && r.err != nil:
		return r, fmt.Errorf("%w: reply has both return and error: %.200q", ErrProtocol, raw)
	case r.ret == nil && r.err == nil:
		// Events or other unsolicited objects: the agent sends none.
		return r, fmt.Errorf("%w: reply has neither return nor error: %.200q", ErrProtocol, raw)
	}
	return r, nil
}

// parseError parses the "error" member of a reply.
func parseError(v json.RawMessage) (*replyError, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(v, &m); err != nil || m == nil {
		return nil, fmt.Errorf("%w: error member is not an object: %.200q", ErrProtocol, v)
	}
	var e replyError
	if err := json.Unmarshal(m["class"], &e.Class); err != nil || e.Class == "" {
		return nil, fmt.Errorf("%w: error member without a class: %.200q", ErrProtocol, v)
	}
	if err := json.Unmarshal(m["desc"], &e.Desc); err != nil {
		return nil, fmt.Errorf("%w: error member without a description: %.200q", ErrProtocol, v)
	}
	return &e, nil
}
