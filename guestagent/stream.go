package guestagent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Stream speaks the agent protocol over a byte stream: the unix socket that
// QEMU exposes for the agent's virtio-serial port.
//
// It synchronises with guest-sync-delimited before the first command and
// after any timeout, stray bytes or malformed reply, so that a late reply
// to an abandoned command is never taken for the answer to a new one. As a
// second guard every command carries a unique "id", which the agent echoes
// in its reply; a reply carrying another id is skipped. (A reply without an
// id is accepted, for agents that do not echo it.)
//
// Calls are serialised. Close may be called at any time and ends a call in
// progress. Once the connection is lost (end of file, reset), every later
// call fails with ErrClosed: dial again.
type Stream struct {
	mu     sync.Mutex // serialises calls and guards the fields below
	r      *bufio.Reader
	synced bool
	lost   error // why the connection is gone, or nil
	nonce  uint64
	seq    uint64

	conn      net.Conn
	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
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
	return &Stream{conn: conn, r: bufio.NewReaderSize(conn, 64*1024), nonce: rand.Uint64()}
}

// Close closes the connection. It does not wait for a call in progress:
// that call ends with ErrClosed.
func (s *Stream) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.closeErr = s.conn.Close()
	})
	return s.closeErr
}

// request is one command on the wire.
type request struct {
	Execute   string `json:"execute"`
	Arguments any    `json:"arguments,omitempty"`
	ID        string `json:"id,omitempty"`
}

// Execute implements Transport.
func (s *Stream) Execute(ctx context.Context, command string, args any) (json.RawMessage, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed.Load():
		return nil, fmt.Errorf("%w: %s: stream closed", ErrClosed, command)
	case s.lost != nil:
		return nil, fmt.Errorf("%w: %s: connection lost earlier: %w", ErrClosed, command, s.lost)
	case ctx.Err() != nil:
		return nil, fmt.Errorf("%w: %s: %w", ErrTimeout, command, ctx.Err())
	}
	s.seq++
	id := fmt.Sprintf("twinsnap-%x-%d", s.nonce, s.seq)
	line, err := json.Marshal(request{Execute: command, Arguments: args, ID: id})
	if err != nil {
		return nil, fmt.Errorf("guestagent: %s: encoding: %w", command, err)
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
		raw, err := readValue(s.r)
		if err != nil {
			return nil, s.fail(ctx, command, err)
		}
		rep, err := parseReply(raw)
		if err != nil {
			return nil, s.fail(ctx, command, err)
		}
		if rep.id != nil {
			var got string
			if json.Unmarshal(rep.id, &got) != nil || got != id {
				continue // the reply to an earlier command: stale
			}
		}
		if rep.err != nil {
			return nil, &Error{Command: command, Class: rep.err.Class, Desc: rep.err.Desc}
		}
		return rep.ret, nil
	}
}

// bind makes the connection's reads and writes end when ctx does. The
// returned func undoes it; once it returns, the context can no longer
// touch the connection's deadline (the next call sets its own).
func (s *Stream) bind(ctx context.Context) func() {
	if dl, ok := ctx.Deadline(); ok {
		_ = s.conn.SetDeadline(dl)
	} else {
		_ = s.conn.SetDeadline(time.Now().Add(DefaultTimeout))
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(fired)
		_ = s.conn.SetDeadline(time.Unix(1, 0))
	})
	return func() {
		if !stop() {
			<-fired // it ran or is running: let it finish first
		}
		_ = s.conn.SetDeadline(time.Time{})
	}
}

// fail marks the stream as needing a resync and classifies err: a
// context that ended or a deadline is ErrTimeout, a reply that is not
// protocol is ErrProtocol, and any other transport error (end of file,
// reset, closed) is ErrClosed and marks the connection as lost.
func (s *Stream) fail(ctx context.Context, command string, err error) error {
	s.synced = false
	var ne net.Error
	switch {
	case s.closed.Load():
		return fmt.Errorf("%w: %s: stream closed: %w", ErrClosed, command, err)
	case ctx.Err() != nil:
		return fmt.Errorf("%w: %s: %w", ErrTimeout, command, ctx.Err())
	case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, os.ErrDeadlineExceeded):
		// The connection's deadline (the context's, or DefaultTimeout)
		// fired before the context's own timer.
		return fmt.Errorf("%w: %s: %w: %w", ErrTimeout, command, context.DeadlineExceeded, err)
	case errors.Is(err, ErrProtocol):
		return fmt.Errorf("guestagent: %s: %w", command, err)
	default:
		s.lost = err
		return fmt.Errorf("%w: %s: %w", ErrClosed, command, err)
	}
}

// sync sends 0xFF and guest-sync-delimited with a fresh id, discards
// everything up to the agent's 0xFF marker, and repeats reading until the
// reply carrying this id arrives; replies with other ids are stale (the
// answers to earlier syncs that timed out).
func (s *Stream) sync(ctx context.Context) error {
	id := rand.Int64N(1 << 52) // ids stay exact in JSON numbers
	msg := fmt.Sprintf("%c{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":%d}}\n", syncMarker, id)
	if _, err := s.conn.Write([]byte(msg)); err != nil {
		return err
	}
	for {
		if err := skipToMarker(s.r); err != nil {
			return err
		}
		raw, err := readValue(s.r)
		if err != nil {
			if errors.Is(err, ErrProtocol) {
				continue // garbage after a marker: look for the next one
			}
			return err
		}
		if rep, err := parseReply(raw); err == nil && rep.ret != nil {
			var got int64
			if json.Unmarshal(rep.ret, &got) == nil && got == id {
				s.synced = true
				return nil
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}
