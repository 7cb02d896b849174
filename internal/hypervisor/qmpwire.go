package hypervisor

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/twinsnap/twinsnap/guestagent/jsonframe"
)

// DefaultMaxMessageSize bounds one QMP message (a reply or an event) read
// from QEMU. The largest replies seen in practice, query-qmp-schema and
// query-named-block-nodes on VMs with many disks and long backing chains,
// stay below a few MiB.
const DefaultMaxMessageSize = 64 << 20

// readMessage reads one JSON object from r, skipping white space before
// it, and returns it only if it is valid JSON of at most max bytes.
// Anything else between objects is a protocol error. It does not depend
// on QEMU's line breaks: an object may span lines, several may share one,
// and there is no limit on a line's length other than max.
func readMessage(r *bufio.Reader, max int) ([]byte, error) {
	b, err := jsonframe.Read(r, max, jsonframe.NoStop)
	switch {
	case err == nil:
		return b, nil
	case errors.Is(err, jsonframe.ErrStray), errors.Is(err, jsonframe.ErrTooLarge),
		errors.Is(err, jsonframe.ErrMalformed), errors.Is(err, jsonframe.ErrTruncated):
		return nil, fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	return nil, err
}

// msgKind tells what a QMP message is.
type msgKind int

const (
	kindReply    msgKind = iota + 1 // "return" or "error", with an optional "id"
	kindEvent                       // "event", "data", "timestamp"
	kindGreeting                    // "QMP"
)

// message is one parsed QMP message.
type message struct {
	kind msgKind
	// Replies.
	ret json.RawMessage // the "return" member, nil if absent
	err *QMPError       // the "error" member (Command left empty), nil if absent
	id  json.RawMessage // the "id" member, nil if absent
	// Events.
	event Event
	// The greeting.
	greeting json.RawMessage
}

// parseMessage parses one QMP message strictly: member names match exactly
// (encoding/json alone would take "Return" for "return"), no member
// appears twice, a reply has exactly one of "return" and "error", an error
// carries a string class and description, and an event has a string name,
// an object as data and a well-formed timestamp. Unknown members are
// ignored, as QMP's compatibility rules ask.
func parseMessage(raw []byte) (message, error) {
	var m message
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return m, fmt.Errorf("%w: message is not an object: %.200q", ErrProtocol, raw)
	}
	members := map[string]json.RawMessage{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return m, fmt.Errorf("%w: message: %w", ErrProtocol, err)
		}
		key, _ := tok.(string)
		if _, dup := members[key]; dup {
			return m, fmt.Errorf("%w: message has member %q twice", ErrProtocol, key)
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return m, fmt.Errorf("%w: message member %q: %w", ErrProtocol, key, err)
		}
		members[key] = v
	}
	ret, hasRet := members["return"]
	errv, hasErr := members["error"]
	ev, hasEvent := members["event"]
	greet, hasGreet := members["QMP"]
	n := 0
	for _, has := range []bool{hasRet, hasErr, hasEvent, hasGreet} {
		if has {
			n++
		}
	}
	if n != 1 {
		return m, fmt.Errorf("%w: message is not exactly one of a reply, an error, an event and a greeting: %.200q", ErrProtocol, raw)
	}
	switch {
	case hasRet:
		m.kind, m.ret, m.id = kindReply, ret, members["id"]
	case hasErr:
		e, err := parseError(errv)
		if err != nil {
			return m, err
		}
		m.kind, m.err, m.id = kindReply, e, members["id"]
	case hasEvent:
		e, err := parseEvent(ev, members["data"], members["timestamp"])
		if err != nil {
			return m, err
		}
		m.kind, m.event = kindEvent, e
	case hasGreet:
		if !isObject(greet) {
			return m, fmt.Errorf("%w: greeting is not an object: %.200q", ErrProtocol, greet)
		}
		m.kind, m.greeting = kindGreeting, greet
	}
	return m, nil
}

// parseError parses the "error" member of a reply.
func parseError(v json.RawMessage) (*QMPError, error) {
	if !isObject(v) {
		return nil, fmt.Errorf("%w: error member is not an object: %.200q", ErrProtocol, v)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(v, &m); err != nil {
		return nil, fmt.Errorf("%w: error member: %w", ErrProtocol, err)
	}
	var e QMPError
	if err := json.Unmarshal(m["class"], &e.Class); err != nil || e.Class == "" {
		return nil, fmt.Errorf("%w: error member without a class: %.200q", ErrProtocol, v)
	}
	if err := json.Unmarshal(m["desc"], &e.Desc); err != nil {
		return nil, fmt.Errorf("%w: error member without a description: %.200q", ErrProtocol, v)
	}
	return &e, nil
}

// parseEvent parses an event's name, data and timestamp. A missing data
// member is left nil; a missing or negative timestamp (QEMU sends -1 when
// it cannot read the clock) leaves Time zero.
func parseEvent(name, data, ts json.RawMessage) (Event, error) {
	var e Event
	if err := json.Unmarshal(name, &e.Name); err != nil || e.Name == "" {
		return e, fmt.Errorf("%w: event name is not a string: %.200q", ErrProtocol, name)
	}
	if data != nil {
		if !isObject(data) {
			return e, fmt.Errorf("%w: event %s: data is not an object: %.200q", ErrProtocol, e.Name, data)
		}
		e.Data = data
	}
	if ts != nil {
		var t struct {
			Seconds      *int64 `json:"seconds"`
			Microseconds *int64 `json:"microseconds"`
		}
		if !isObject(ts) || json.Unmarshal(ts, &t) != nil || t.Seconds == nil || t.Microseconds == nil {
			return e, fmt.Errorf("%w: event %s: malformed timestamp: %.200q", ErrProtocol, e.Name, ts)
		}
		if *t.Seconds >= 0 && *t.Microseconds >= 0 && *t.Microseconds < 1e6 {
			e.Time = time.Unix(*t.Seconds, *t.Microseconds*1000)
		}
	}
	return e, nil
}

// isObject reports whether v is a JSON object (v is known to be valid).
func isObject(v json.RawMessage) bool {
	v = bytes.TrimLeft(v, " \t\r\n")
	return len(v) > 0 && v[0] == '{'
}

// replyID returns the string id of a reply, and false when the reply has
// no id or one that is not a string (so none of ours).
func replyID(id json.RawMessage) (string, bool) {
	if id == nil {
		return "", false
	}
	var s string
	if err := json.Unmarshal(id, &s); err != nil {
		return "", false
	}
	return s, true
}

// command is one command on the wire.
type command struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments,omitempty"`
	ID        string          `json:"id"`
}

// encodeArgs marshals a command's arguments; nil, and anything that
// encodes as null, means no arguments.
func encodeArgs(args any) (json.RawMessage, error) {
	if args == nil {
		return nil, nil
	}
	if raw, ok := args.(json.RawMessage); ok && len(bytes.TrimSpace(raw)) == 0 {
		return nil, nil
	}
	b, err := json.Marshal(args)
	if err != nil {
		return nil, err
	}
	if string(b) == "null" {
		return nil, nil
	}
	if !isObject(b) {
		return nil, fmt.Errorf("arguments must encode as a JSON object, not %.40s", b)
	}
	return b, nil
}
