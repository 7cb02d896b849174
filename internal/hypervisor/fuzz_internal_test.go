package hypervisor

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"testing"
)

// decodeSeeds are QMP streams, valid and not, that seed FuzzQMPDecode.
var decodeSeeds = []string{
	`{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}` + "\r\n",
	`{"return": {}, "id": "twinsnap-0000abcd-1"}` + "\r\n",
	`{"return": [{"device": "", "qdev": "/machine/peripheral/disk-a/virtio-backend"}], "id": "twinsnap-0000abcd-2"}`,
	`{"id": "twinsnap-0000abcd-1", "error": {"class": "GenericError", "desc": "x"}}{"return": 1, "id": "twinsnap-0000abcd-2"}`,
	`{"return": {}, "id": "twinsnap-0000abcd-3"}{"return": {}, "id": "other"}{"return": {}, "id": 1}{"return": {}}`,
	`{"timestamp": {"seconds": 1795311375, "microseconds": 421015}, "event": "JOB_STATUS_CHANGE", "data": {"status": "created", "id": "j1"}}` + "\r\n",
	`{"event": "STOP", "timestamp": {"seconds": -1, "microseconds": -1}}`,
	`{"return": "a } string { with \" braces ] and \\ escapes", "id": "twinsnap-0000abcd-1"}`,
	`{"return": {}, "return": {}, "id": "twinsnap-0000abcd-1"}`,
	`{"Return": {}, "id": "twinsnap-0000abcd-1"}`,
	`{"return": {}, "id": "twinsnap-0000abcd-1"`,
	`not json {"return": {}, "id": "twinsnap-0000abcd-2"}`,
	`[{"return": {}}]`,
	`{"a" 1}{]}`,
	`{"return": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]], "id": "twinsnap-0000abcd-1"}`,
	"{\"return\": \"\xff\xfe\", \"id\": \"twinsnap-0000abcd-1\"}",
	`{"return": 1e999999, "id": "twinsnap-0000abcd-1"}`,
}

// FuzzQMPDecode feeds arbitrary bytes through the message framing, the
// parser and the reply dispatch. It must never panic or stop making
// progress, every message it yields must be valid JSON within the size
// limit, and a reply may reach only the call waiting for exactly its id.
func FuzzQMPDecode(f *testing.F) {
	for _, s := range decodeSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		const max = 4096
		c := &QMPConn{
			prefix:  "twinsnap-0000abcd-",
			pending: map[string]chan message{},
			log:     slog.New(slog.NewTextHandler(io.Discard, nil)),
		}
		// Two calls wait; a third id was sent and abandoned (not pending).
		waiting := []string{"twinsnap-0000abcd-1", "twinsnap-0000abcd-2"}
		for _, id := range waiting {
			c.pending[id] = make(chan message, 1)
		}
		chans := map[string]chan message{}
		for id, ch := range c.pending {
			chans[id] = ch
		}

		src := bytes.NewReader(data)
		r := bufio.NewReaderSize(src, 16) // small: values span many chunks
		left := func() int { return src.Len() + r.Buffered() }
		for {
			before := left()
			raw, err := readMessage(r, max)
			if err != nil {
				if errors.Is(err, io.EOF) && !errors.Is(err, ErrProtocol) {
					break
				}
				if !errors.Is(err, ErrProtocol) {
					t.Fatalf("readMessage error without a class: %v", err)
				}
				if left() >= before {
					t.Fatalf("readMessage returned %v without consuming input", err)
				}
				continue
			}
			if len(raw) > max || !json.Valid(raw) {
				t.Fatalf("readMessage yielded %d bytes of invalid or oversized JSON: %q", len(raw), raw)
			}
			m, err := parseMessage(raw)
			if err != nil {
				if !errors.Is(err, ErrProtocol) {
					t.Fatalf("parseMessage error without a class: %v", err)
				}
				continue
			}
			switch m.kind {
			case kindReply:
				if (m.ret == nil) == (m.err == nil) {
					t.Fatalf("reply with both or neither of return and error: %q", raw)
				}
				if m.err != nil && m.err.Class == "" {
					t.Fatalf("error reply without a class: %q", raw)
				}
				c.deliver(m)
			case kindEvent:
				if m.event.Name == "" || (m.event.Data != nil && !isObject(m.event.Data)) {
					t.Fatalf("malformed event accepted: %q", raw)
				}
			case kindGreeting:
			default:
				t.Fatalf("message of no kind: %q", raw)
			}
		}
		for id, ch := range chans {
			select {
			case m := <-ch:
				got, ok := replyID(m.id)
				if !ok || got != id {
					t.Fatalf("the call waiting for %s got the reply for %s", id, m.id)
				}
				if _, still := c.pending[id]; still {
					t.Fatalf("%s answered but still pending", id)
				}
			default:
				if _, still := c.pending[id]; !still {
					t.Fatalf("%s no longer pending but got no reply", id)
				}
			}
		}
	})
}
