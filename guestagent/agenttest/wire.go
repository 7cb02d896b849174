package agenttest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// maxRequest bounds one request, as the real agent's JSON streamer bounds
// a message.
const maxRequest = 64 << 20

// syncMarker is the byte that resets the agent's parser and precedes its
// reply to guest-sync-delimited.
const syncMarker = 0xFF

// errReset reports a 0xFF byte in the input: the parser starts afresh.
var errReset = errors.New("agenttest: parser reset by 0xFF")

// parseError is a GenericError the agent sends for input it cannot parse.
type parseError struct{ desc string }

// Error implements error.
func (e *parseError) Error() string { return e.desc }

// readRequest reads the next JSON object from r, as the agent's streaming
// parser does: white space between objects is skipped, 0xFF resets the
// parser (errReset), and stray bytes outside an object are a *parseError.
// Any other error is the connection's.
func readRequest(r *bufio.Reader) ([]byte, error) {
	var buf bytes.Buffer
	depth := 0
	inString, escaped := false, false
	for {
		b, err := r.ReadByte()
		if err != nil {
			return nil, err
		}
		if b == syncMarker {
			return nil, errReset
		}
		if depth == 0 {
			switch b {
			case ' ', '\t', '\r', '\n':
				continue
			case '{':
			default:
				return nil, strayRun(r, b)
			}
		}
		buf.WriteByte(b)
		if buf.Len() > maxRequest {
			return nil, &parseError{"JSON parse error, message too large"}
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
			if depth == 0 {
				return buf.Bytes(), nil
			}
		}
	}
}

// strayRun consumes a run of stray bytes that began with first, up to
// white space, an object or a marker, and returns the parse error the
// agent reports for it.
func strayRun(r *bufio.Reader, first byte) error {
	run := []byte{first}
	for len(run) < 64 {
		b, err := r.ReadByte()
		if err != nil {
			break
		}
		if b == ' ' || b == '\t' || b == '\r' || b == '\n' || b == '{' || b == syncMarker {
			_ = r.UnreadByte()
			break
		}
		run = append(run, b)
	}
	return &parseError{fmt.Sprintf("JSON parse error, invalid keyword '%s'", run)}
}

// decodeRequest checks one request object as QEMU's dispatcher does and
// returns the command.
func decodeRequest(raw []byte) (Command, *ErrorReply) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return Command{}, &ErrorReply{"GenericError", "JSON parse error, " + err.Error()}
	}
	var c Command
	for k, v := range m {
		switch k {
		case "execute":
			if json.Unmarshal(v, &c.Name) != nil {
				return Command{}, &ErrorReply{"GenericError", "QMP input member 'execute' must be a string"}
			}
		case "arguments":
			if len(v) == 0 || v[0] != '{' {
				return Command{}, &ErrorReply{"GenericError", "QMP input member 'arguments' must be an object"}
			}
			c.Args = v
		case "id":
			c.ID = v
		default:
			return Command{}, &ErrorReply{"GenericError", fmt.Sprintf("QMP input member '%s' is unexpected", k)}
		}
	}
	if _, ok := m["execute"]; !ok {
		return Command{}, &ErrorReply{"GenericError", "QMP input lacks member 'execute'"}
	}
	return c, nil
}

// replyTo returns the encoded reply to c: the return value or the error,
// with c's id echoed.
func replyTo(c Command, ret any, e *ErrorReply) []byte {
	m := map[string]any{}
	if e != nil {
		m["error"] = map[string]string{"class": e.Class, "desc": e.Desc}
	} else {
		m["return"] = ret
	}
	if c.ID != nil {
		m["id"] = c.ID
	}
	return encodeReply(m)
}

// encodeReply encodes v as the agent writes a reply: one line, with a
// space after every colon and comma, as QEMU's JSON writer puts them.
func encodeReply(v any) []byte {
	compact, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("agenttest: encoding a reply: %v", err))
	}
	out := make([]byte, 0, len(compact)+len(compact)/8+1)
	inString := false
	for len(compact) > 0 {
		special := `":,`
		if inString {
			special = `"\`
		}
		i := bytes.IndexAny(compact, special)
		if i < 0 {
			out = append(out, compact...)
			break
		}
		out = append(out, compact[:i+1]...)
		switch compact[i] {
		case '\\':
			// Copy the escaped byte as is: it may be a quote.
			if i+1 < len(compact) {
				out = append(out, compact[i+1])
				i++
			}
		case '"':
			inString = !inString
		default: // ':' or ',' outside a string
			out = append(out, ' ')
		}
		compact = compact[i+1:]
	}
	return append(out, '\n')
}
