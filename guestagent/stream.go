package guestagent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"time"
)

// MaxReplySize bounds one reply from the agent; a longer one is a protocol
// error (the agent's largest replies, guest-get-fsinfo and guest-exec
// output, stay far below it).
const MaxReplySize = 16 << 20

// syncMarker is the byte the agent sends before the reply to
// guest-sync-delimited, and the byte a client sends to reset the agent's
// parser.
const syncMarker = 0xFF

// Stream speaks the agent protocol over a byte stream: the unix socket that
// QEMU exposes for the agent's virtio-serial port. It synchronises with
// guest-sync-delimited before the first command and after any timeout,
// stray bytes or malformed reply, so that a late reply to an abandoned
// command is never taken for the answer to a new one. Calls are
// serialised.
type Stream struct {
	mu     sync.Mutex
	conn   net.Conn
	r      *bufio.Reader
	synced bool
	closed bool
}

var _ Transport = (*Stream)(nil)

// Dial connects to the agent socket at addr ("unix" network for a path).
func Dial(ctx context.Context, network, addr string) (*Stream, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("guestagent: dial %s: %w", addr, err)
	}
	return NewStream(conn), nil
}

// NewStream wraps an established connection to the agent.
func NewStream(conn net.Conn) *Stream {
	return &Stream{conn: conn, r: bufio.NewReaderSize(conn, 64*1024)}
}

// Close closes the connection.
func (s *Stream) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	return s.conn.Close()
}

// Execute implements Transport.
func (s *Stream) Execute(ctx context.Context, command string, args any) (json.RawMessage, error) {
	req := map[string]any{"execute": command}
	if args != nil {
		req["arguments"] = args
	}
	line, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("guestagent: %s: encoding: %w", command, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, fmt.Errorf("%w: %s", ErrClosed, command)
	}
	stop := s.bind(ctx)
	defer stop()

	if !s.synced {
		if err := s.sync(ctx); err != nil {
			return nil, s.fail(ctx, "guest-sync-delimited", err)
		}
	}
	if _, err := s.conn.Write(append(line, '\n')); err != nil {
		return nil, s.fail(ctx, command, err)
	}
	for {
		raw, err := s.readValue()
		if err != nil {
			return nil, s.fail(ctx, command, err)
		}
		var reply struct {
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Class string `json:"class"`
				Desc  string `json:"desc"`
			} `json:"error"`
		}
		if err := json.Unmarshal(raw, &reply); err != nil {
			return nil, s.fail(ctx, command, fmt.Errorf("%w: %w", ErrProtocol, err))
		}
		switch {
		case reply.Error != nil:
			return nil, &Error{Command: command, Class: reply.Error.Class, Desc: reply.Error.Desc}
		case reply.Return != nil:
			return reply.Return, nil
		default:
			// Events or other unsolicited objects: the agent sends none
			// today; anything else is a protocol error.
			return nil, s.fail(ctx, command, fmt.Errorf("%w: reply has neither return nor error: %.200s", ErrProtocol, raw))
		}
	}
}

// bind makes the connection's reads and writes end when ctx does.
func (s *Stream) bind(ctx context.Context) func() {
	if dl, ok := ctx.Deadline(); ok {
		_ = s.conn.SetDeadline(dl)
	} else {
		_ = s.conn.SetDeadline(time.Now().Add(DefaultTimeout))
	}
	stop := context.AfterFunc(ctx, func() { _ = s.conn.SetDeadline(time.Unix(1, 0)) })
	return func() {
		stop()
		_ = s.conn.SetDeadline(time.Time{})
	}
}

// fail marks the stream as needing a resync and classifies err.
func (s *Stream) fail(ctx context.Context, command string, err error) error {
	s.synced = false
	var ne net.Error
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("%w: %s: %w", ErrTimeout, command, ctx.Err())
	case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("%w: %s: %w", ErrTimeout, command, err)
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed), errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%w: %s: %w", ErrClosed, command, err)
	default:
		return fmt.Errorf("guestagent: %s: %w", command, err)
	}
}

// sync sends 0xFF and guest-sync-delimited with a fresh id, discards
// everything up to the agent's 0xFF marker, and repeats reading until the
// reply carrying this id arrives; replies with other ids are stale.
func (s *Stream) sync(ctx context.Context) error {
	id := rand.Int64N(1 << 52) // ids stay exact in JSON numbers
	msg := fmt.Sprintf("%c{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":%d}}\n", syncMarker, id)
	if _, err := s.conn.Write([]byte(msg)); err != nil {
		return err
	}
	for {
		if err := s.skipToMarker(); err != nil {
			return err
		}
		raw, err := s.readValue()
		if err != nil {
			if errors.Is(err, ErrProtocol) {
				continue // garbage after a marker: look for the next one
			}
			return err
		}
		var reply struct {
			Return *int64 `json:"return"`
		}
		if json.Unmarshal(raw, &reply) == nil && reply.Return != nil && *reply.Return == id {
			s.synced = true
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// skipToMarker discards bytes up to and including the next 0xFF.
func (s *Stream) skipToMarker() error {
	for {
		b, err := s.r.ReadByte()
		if err != nil {
			return err
		}
		if b == syncMarker {
			return nil
		}
	}
}

// readValue reads one JSON object from the stream, skipping white space
// before it. Anything else before the object is a protocol error.
func (s *Stream) readValue() ([]byte, error) {
	var buf bytes.Buffer
	depth := 0
	inString, escaped := false, false
	for {
		b, err := s.r.ReadByte()
		if err != nil {
			return nil, err
		}
		if depth == 0 {
			switch b {
			case ' ', '\t', '\r', '\n':
				continue
			case '{':
			default:
				return nil, fmt.Errorf("%w: unexpected byte %#x outside a reply", ErrProtocol, b)
			}
		}
		buf.WriteByte(b)
		if buf.Len() > MaxReplySize {
			return nil, fmt.Errorf("%w: reply larger than %d bytes", ErrProtocol, MaxReplySize)
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
		case b == syncMarker:
			return nil, fmt.Errorf("%w: sync marker inside a reply", ErrProtocol)
		}
	}
}
