package guestagent

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// FuzzReadValue feeds arbitrary bytes through a Stream over a pipe and
// reads them as the client does: values, and after a protocol error a
// skip to the next sync marker. It must never panic or hang, every value
// must be a JSON object that json.Valid accepts, and the first value must
// be the one encoding/json finds when the input starts with an object.
func FuzzReadValue(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		client, server := net.Pipe()
		go func() {
			_, _ = server.Write(data)
			_ = server.Close()
		}()
		s := NewStream(client)
		defer s.Close()
		_ = client.SetDeadline(time.Now().Add(10 * time.Second))

		var first []byte
		firstErr := error(nil)
		for i := 0; ; i++ {
			v, err := readValue(s.r)
			if i == 0 {
				first, firstErr = v, err
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("readValue hung on %q", data)
			}
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				if !errors.Is(err, ErrProtocol) {
					t.Fatalf("readValue error %v is neither ErrProtocol nor EOF", err)
				}
				if err := skipToMarker(s.r); errors.Is(err, io.EOF) {
					break
				} else if err != nil && !errors.Is(err, ErrProtocol) {
					t.Fatalf("skipToMarker: %v", err)
				}
				continue
			}
			if len(v) == 0 || v[0] != '{' || !json.Valid(v) || len(v) > MaxReplySize {
				t.Fatalf("readValue returned %q, not a valid JSON object", v)
			}
		}

		// Completeness: an input that starts with a JSON object (and no
		// sync marker in it) yields exactly that object.
		dec := json.NewDecoder(bytes.NewReader(data))
		var raw json.RawMessage
		if dec.Decode(&raw) == nil && raw[0] == '{' && !bytes.Contains(data[:dec.InputOffset()], []byte{syncMarker}) {
			if firstErr != nil || !bytes.Equal(first, raw) {
				t.Fatalf("first value of %q = %q, %v; encoding/json reads %q", data, first, firstErr, raw)
			}
		}
	})
}

// TestReadValueLimit checks the size bound exactly: a reply of
// MaxReplySize bytes is read, one byte more is a protocol error.
func TestReadValueLimit(t *testing.T) {
	for _, n := range []int{MaxReplySize, MaxReplySize + 1} {
		v := `{"return": "` + strings.Repeat("x", n-len(`{"return": ""}`)) + `"}`
		got, err := readValue(bufio.NewReader(strings.NewReader(v + "\n")))
		if n <= MaxReplySize && (err != nil || len(got) != n) {
			t.Fatalf("reply of %d bytes: %d bytes, %v", n, len(got), err)
		}
		if n > MaxReplySize && !errors.Is(err, ErrProtocol) {
			t.Fatalf("reply of %d bytes: %v; want ErrProtocol", n, err)
		}
	}
}

// TestReadValueLeavesMarker checks that a sync marker inside a reply ends
// it and stays in the stream for the resync.
func TestReadValueLeavesMarker(t *testing.T) {
	r := bufio.NewReader(strings.NewReader("{\"return\": \"ab\xff{\"return\": 7}"))
	if _, err := readValue(r); !errors.Is(err, ErrProtocol) {
		t.Fatalf("reply cut by a marker: %v; want ErrProtocol", err)
	}
	if err := skipToMarker(r); err != nil {
		t.Fatalf("marker consumed by readValue: %v", err)
	}
	if v, err := readValue(r); err != nil || string(v) != `{"return": 7}` {
		t.Fatalf("value after the marker = %q, %v", v, err)
	}
}
