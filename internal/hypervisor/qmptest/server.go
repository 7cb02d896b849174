package qmptest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"time"
)

// DefaultGreeting is QEMU 7.2's greeting.
var DefaultGreeting = []byte(`{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "qmptest"}, "capabilities": ["oob"]}}`)

// Handler answers one command.
type Handler func(call *Call) Reply

// Server is a fake QEMU monitor. Set its fields before the first
// connection; they are not changed while it serves.
type Server struct {
	// Greeting is sent when a client connects (DefaultGreeting if nil).
	Greeting []byte
	// Commands answer commands by name; a command without an entry goes
	// to Default, or fails with CommandNotFound. qmp_capabilities is
	// built in (and required first, as in QEMU) unless Commands has it.
	Commands map[string]Handler
	// Default answers commands that Commands does not name.
	Default Handler
	// OnConnect runs in the connection's goroutine after the greeting,
	// before any command is read (to send garbage at once, say).
	OnConnect func(c *Conn)

	mu     sync.Mutex
	conns  map[*Conn]struct{}
	ls     []net.Listener
	calls  []string
	closed bool
	wg     sync.WaitGroup
}

// Call is one command received.
type Call struct {
	// Conn is the connection the command came on.
	Conn *Conn
	// Command is the command's name; Args its arguments (nil if none);
	// ID the raw id the client sent (nil if none).
	Command string
	Args    json.RawMessage
	ID      json.RawMessage
}

// Decode decodes the call's arguments into v.
func (c *Call) Decode(v any) error {
	if c.Args == nil {
		return nil
	}
	return json.Unmarshal(c.Args, v)
}

// Reply is what a handler wants sent back. The zero Reply is a success
// with an empty object as "return".
type Reply struct {
	// Return is the "return" value (an empty object when nil).
	Return any
	// Error makes the reply an error reply.
	Error *Error
	// Events are written before the reply.
	Events []Event
	// Raw is written verbatim instead of a reply: garbage, an oversized
	// reply, a reply carrying another id.
	Raw []byte
	// Delay postpones the reply (ended early when the connection closes).
	Delay time.Duration
	// Hang sends nothing: the call stays unanswered.
	Hang bool
	// Drop closes the connection instead of replying.
	Drop bool
	// CloseAfter closes the connection after the reply, as QEMU does
	// after "quit".
	CloseAfter bool
}

// Error is a QMP error.
type Error struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

// Event is a QMP event to emit.
type Event struct {
	Name string
	// Data is marshalled as the event's data (omitted when nil).
	Data any
}

// Conn is one client connection.
type Conn struct {
	s    *Server
	c    net.Conn
	wmu  sync.Mutex
	done chan struct{}
	once sync.Once
	// negotiated is set once qmp_capabilities succeeded.
	mu         sync.Mutex
	negotiated bool
}

// Pipe returns the client end of an in-memory connection that the server
// serves. Close the server (or the returned conn) to end it.
func (s *Server) Pipe() net.Conn {
	client, server := net.Pipe()
	s.serve(server)
	return client
}

// ListenUnix serves on a new unix socket in dir and returns its path.
func (s *Server) ListenUnix(dir string) (string, error) {
	path := filepath.Join(dir, "qmp.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		return "", fmt.Errorf("qmptest: listen: %w", err)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = l.Close()
		return "", errors.New("qmptest: server closed")
	}
	s.ls = append(s.ls, l)
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.serve(c)
		}
	}()
	return path, nil
}

// serve runs one connection in its own goroutine.
func (s *Server) serve(nc net.Conn) {
	c := &Conn{s: s, c: nc, done: make(chan struct{})}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = nc.Close()
		return
	}
	if s.conns == nil {
		s.conns = map[*Conn]struct{}{}
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		defer func() {
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
		defer func() { _ = c.Close() }()
		c.run()
	}()
}

// run greets, then reads commands and answers each in its own goroutine
// (so that a hanging or delayed command does not hold up the others).
func (c *Conn) run() {
	greeting := c.s.Greeting
	if greeting == nil {
		greeting = DefaultGreeting
	}
	if c.WriteRaw(append(append([]byte{}, greeting...), '\r', '\n')) != nil {
		return
	}
	if c.s.OnConnect != nil {
		c.s.OnConnect(c)
	}
	dec := json.NewDecoder(c.c)
	for {
		var in struct {
			Execute   string          `json:"execute"`
			Arguments json.RawMessage `json:"arguments"`
			ID        json.RawMessage `json:"id"`
		}
		if err := dec.Decode(&in); err != nil {
			var se *json.SyntaxError
			if errors.As(err, &se) {
				// QEMU answers a parse error without an id and
				// resets its parser; the decoder cannot resync.
				_ = c.writeJSON(map[string]any{"error": Error{Class: "GenericError", Desc: "JSON parse error"}})
			}
			return
		}
		call := &Call{Conn: c, Command: in.Execute, Args: in.Arguments, ID: in.ID}
		c.s.mu.Lock()
		c.s.calls = append(c.s.calls, in.Execute)
		c.s.wg.Add(1)
		c.s.mu.Unlock()
		go func() {
			defer c.s.wg.Done()
			c.answer(call)
		}()
	}
}

// answer runs the call's handler and sends its reply.
func (c *Conn) answer(call *Call) {
	h := c.s.handler(call.Command)
	var r Reply
	c.mu.Lock()
	negotiated := c.negotiated
	c.mu.Unlock()
	switch {
	case h == nil && call.Command == "qmp_capabilities":
		if negotiated {
			r.Error = &Error{Class: "CommandNotFound", Desc: "Capabilities negotiation is already complete, command ignored"}
		} else {
			c.mu.Lock()
			c.negotiated = true
			c.mu.Unlock()
		}
	case !negotiated && call.Command != "qmp_capabilities":
		r.Error = &Error{Class: "CommandNotFound", Desc: "Expecting capabilities negotiation with 'qmp_capabilities'"}
	case h == nil:
		r.Error = &Error{Class: "CommandNotFound", Desc: fmt.Sprintf("The command %s has not been found", call.Command)}
	default:
		r = h(call)
		if call.Command == "qmp_capabilities" && r.Error == nil {
			c.mu.Lock()
			c.negotiated = true
			c.mu.Unlock()
		}
	}
	for _, ev := range r.Events {
		if c.Emit(ev.Name, ev.Data) != nil {
			return
		}
	}
	if r.Delay > 0 {
		t := time.NewTimer(r.Delay)
		select {
		case <-t.C:
		case <-c.done:
			t.Stop()
			return
		}
	}
	switch {
	case r.Hang:
		<-c.done
	case r.Drop:
		_ = c.Close()
	case r.Raw != nil:
		_ = c.WriteRaw(r.Raw)
	default:
		reply := map[string]any{}
		if r.Error != nil {
			reply["error"] = r.Error
		} else if r.Return != nil {
			reply["return"] = r.Return
		} else {
			reply["return"] = struct{}{}
		}
		if call.ID != nil {
			reply["id"] = call.ID
		}
		_ = c.writeJSON(reply)
		if r.CloseAfter {
			_ = c.Close()
		}
	}
}

func (s *Server) handler(name string) Handler {
	if h, ok := s.Commands[name]; ok {
		return h
	}
	if name == "qmp_capabilities" {
		return nil
	}
	return s.Default
}

// Calls returns the names of the commands received so far, in order.
func (s *Server) Calls() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.calls...)
}

// Emit sends an event to every connected client, as QEMU broadcasts its
// events to every monitor.
func (s *Server) Emit(name string, data any) {
	s.mu.Lock()
	conns := make([]*Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		_ = c.Emit(name, data)
	}
}

// Close closes the listeners and every connection, and waits for the
// server's goroutines (handlers that hang end when their connection
// closes; handlers must not block otherwise).
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	ls := s.ls
	s.ls = nil
	conns := make([]*Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, l := range ls {
		_ = l.Close()
	}
	for _, c := range conns {
		_ = c.Close()
	}
	s.wg.Wait()
}

// Emit sends one event on this connection, with the current time.
func (c *Conn) Emit(name string, data any) error {
	now := time.Now()
	ev := map[string]any{
		"event":     name,
		"timestamp": map[string]int64{"seconds": now.Unix(), "microseconds": int64(now.Nanosecond() / 1000)},
	}
	if data != nil {
		ev["data"] = data
	}
	return c.writeJSON(ev)
}

// WriteRaw writes b verbatim.
func (c *Conn) WriteRaw(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := c.c.Write(b)
	return err
}

func (c *Conn) writeJSON(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("qmptest: encoding: %w", err)
	}
	return c.WriteRaw(append(b, '\r', '\n'))
}

// Done is closed when the connection is closed.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Close closes the connection.
func (c *Conn) Close() error {
	var err error
	c.once.Do(func() {
		close(c.done)
		err = c.c.Close()
	})
	return err
}

// Oversized returns a syntactically valid reply of at least n bytes whose
// id is the given raw id (nil for none): a string of n bytes as "return".
func Oversized(n int, id json.RawMessage) []byte {
	var b bytes.Buffer
	b.WriteString(`{"return": "`)
	b.Write(bytes.Repeat([]byte{'x'}, n))
	b.WriteString(`"`)
	if id != nil {
		b.WriteString(`, "id": `)
		b.Write(id)
	}
	b.WriteString("}\r\n")
	return b.Bytes()
}
