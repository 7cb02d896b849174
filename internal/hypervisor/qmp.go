package hypervisor

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// DefaultTimeout bounds a QMP call, and the greeting, when the caller's
// context has no deadline.
const DefaultTimeout = 30 * time.Second

// QMPConn is a QMP client over a byte stream: the unix socket of a bare
// QEMU's -mon chardev.
//
// One reader goroutine decodes QEMU's messages (a message may be as large
// as the connection's limit, DefaultMaxMessageSize; there is no line
// limit). Each command carries a fresh "id", which QEMU echoes, and its
// reply is handed to the call waiting for that id, so concurrent calls
// never mix their replies, and the late reply of a call whose context
// ended is discarded. Events go to subscribers, each with its own queue,
// so the reader never waits for a slow subscriber (see Subscribe).
//
// When the connection is lost (QEMU exits, the stream ends, or QEMU sends
// something that is not QMP), every pending and later call fails with
// ErrClosed, wrapping the cause (an ErrProtocol error for garbage), and
// every subscription is closed.
//
// QMPConn is safe for concurrent use. It also implements go-qemu's
// qmp.Monitor (see monitor.go), for go-qemu's helpers; twinsnap's own
// code uses the context-aware methods.
type QMPConn struct {
	conn       net.Conn
	r          *bufio.Reader
	log        *slog.Logger
	maxMsg     int
	eventLimit int
	prefix     string // every id we send starts with it
	seq        atomic.Uint64
	greeting   QMPGreeting

	wsem chan struct{} // held while a command is written; selectable

	mu      sync.Mutex
	pending map[string]chan message // id -> the waiting call (buffered 1)
	cause   error                   // why the connection is down; nil while up

	subs          subscriptions
	discarded     atomic.Uint64
	eventsDropped atomic.Uint64

	done       chan struct{} // closed once the connection is down
	shutOnce   sync.Once
	closeErr   error
	readerDone chan struct{}
}

var _ QMP = (*QMPConn)(nil)

// QMPGreeting is what QEMU announces when a client connects.
type QMPGreeting struct {
	Version      QEMUVersion
	Capabilities []string
}

// QEMUVersion is QEMU's version from the greeting.
type QEMUVersion struct {
	Major, Minor, Micro int
	// Package is the distribution's package version, e.g.
	// "Debian 1:7.2+dfsg-7+deb12u18".
	Package string
}

// String returns "major.minor.micro".
func (v QEMUVersion) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro) }

// QMPStats counts what a connection discarded.
type QMPStats struct {
	// Discarded counts replies that matched no waiting call: the late
	// replies of calls whose context ended, and replies without an id
	// of ours.
	Discarded uint64
	// EventsDropped counts events dropped from full subscriber queues.
	EventsDropped uint64
}

// QMPOption configures a QMPConn.
type QMPOption func(*QMPConn)

// WithLogger sets the logger (default slog.Default()); the connection
// adds a component attribute.
func WithLogger(l *slog.Logger) QMPOption { return func(c *QMPConn) { c.log = l } }

// WithMaxMessageSize sets the largest message accepted from QEMU (default
// DefaultMaxMessageSize); a larger one is a protocol error that ends the
// connection.
func WithMaxMessageSize(n int) QMPOption { return func(c *QMPConn) { c.maxMsg = n } }

// WithEventQueueLimit sets how many events each subscription holds for a
// consumer that is not reading (default DefaultEventQueueLimit).
func WithEventQueueLimit(n int) QMPOption { return func(c *QMPConn) { c.eventLimit = n } }

// errClosedByCaller is the cause of a connection that Close ended.
var errClosedByCaller = errors.New("closed by the caller")

// DialQMP connects to a QEMU monitor socket ("unix" network for a path),
// reads the greeting and leaves capability negotiation with
// qmp_capabilities. QEMU's socket chardev serves one client at a time: a
// second client connects but gets no greeting until the first one
// leaves, so DialQMP then fails with ErrTimeout when ctx ends.
func DialQMP(ctx context.Context, network, addr string, opts ...QMPOption) (*QMPConn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w: qmp dial %s: %w", ErrTimeout, addr, err)
		}
		return nil, fmt.Errorf("%w: qmp dial %s: %w", ErrClosed, addr, err)
	}
	c, err := NewQMPConn(ctx, conn, opts...)
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", addr, err)
	}
	return c, nil
}

// NewQMPConn does the QMP handshake on an established connection and
// starts the reader. On error conn is closed.
func NewQMPConn(ctx context.Context, conn net.Conn, opts ...QMPOption) (*QMPConn, error) {
	c := &QMPConn{
		conn:       conn,
		r:          bufio.NewReaderSize(conn, 64<<10),
		log:        slog.Default(),
		maxMsg:     DefaultMaxMessageSize,
		eventLimit: DefaultEventQueueLimit,
		prefix:     fmt.Sprintf("twinsnap-%08x-", rand.Uint32()),
		wsem:       make(chan struct{}, 1),
		pending:    map[string]chan message{},
		done:       make(chan struct{}),
		readerDone: make(chan struct{}),
	}
	for _, o := range opts {
		o(c)
	}
	if c.maxMsg <= 0 {
		c.maxMsg = DefaultMaxMessageSize
	}
	if c.eventLimit <= 0 {
		c.eventLimit = DefaultEventQueueLimit
	}
	c.log = c.log.With("component", "qmp")
	if err := c.handshake(ctx); err != nil {
		_ = conn.Close()
		return nil, err
	}
	go c.read()
	return c, nil
}

// handshake reads the greeting and negotiates capabilities, bounded by ctx
// (or DefaultTimeout).
func (c *QMPConn) handshake(ctx context.Context) error {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	stop := bindDeadline(ctx, c.conn.SetDeadline)
	defer stop()
	fail := func(step string, err error) error {
		var ne net.Error
		switch {
		case ctx.Err() != nil:
			return fmt.Errorf("%w: qmp %s: %w", ErrTimeout, step, ctx.Err())
		case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, os.ErrDeadlineExceeded):
			return fmt.Errorf("%w: qmp %s: %w", ErrTimeout, step, err)
		case errors.Is(err, ErrProtocol):
			return fmt.Errorf("qmp %s: %w", step, err)
		default:
			return fmt.Errorf("%w: qmp %s: %w", ErrClosed, step, err)
		}
	}

	raw, err := readMessage(c.r, c.maxMsg)
	if err != nil {
		return fail("greeting", err)
	}
	m, err := parseMessage(raw)
	if err != nil {
		return fail("greeting", err)
	}
	if m.kind != kindGreeting {
		return fail("greeting", fmt.Errorf("%w: expected the greeting, got %.200q", ErrProtocol, raw))
	}
	if c.greeting, err = parseGreeting(m.greeting); err != nil {
		return fail("greeting", err)
	}

	id := c.prefix + "0"
	line, err := json.Marshal(command{Execute: "qmp_capabilities", ID: id})
	if err != nil {
		return fmt.Errorf("qmp_capabilities: encoding: %w", err)
	}
	if _, err := c.conn.Write(append(line, '\n')); err != nil {
		return fail("qmp_capabilities", err)
	}
	for {
		raw, err := readMessage(c.r, c.maxMsg)
		if err != nil {
			return fail("qmp_capabilities", err)
		}
		m, err := parseMessage(raw)
		if err != nil {
			return fail("qmp_capabilities", err)
		}
		if m.kind != kindReply {
			continue // QEMU sends no events before negotiation; ignore any
		}
		if got, ok := replyID(m.id); !ok || got != id {
			continue
		}
		if m.err != nil {
			m.err.Command = "qmp_capabilities"
			return m.err
		}
		return nil
	}
}

// parseGreeting decodes the "QMP" member of the greeting.
func parseGreeting(raw json.RawMessage) (QMPGreeting, error) {
	var g struct {
		Version struct {
			QEMU struct {
				Major, Minor, Micro int
			} `json:"qemu"`
			Package string `json:"package"`
		} `json:"version"`
		Capabilities []string `json:"capabilities"`
	}
	if err := json.Unmarshal(raw, &g); err != nil {
		return QMPGreeting{}, fmt.Errorf("%w: greeting: %w", ErrProtocol, err)
	}
	v := g.Version
	return QMPGreeting{
		Version:      QEMUVersion{Major: v.QEMU.Major, Minor: v.QEMU.Minor, Micro: v.QEMU.Micro, Package: v.Package},
		Capabilities: g.Capabilities,
	}, nil
}

// Greeting returns what QEMU announced: its version and capabilities.
func (c *QMPConn) Greeting() QMPGreeting { return c.greeting }

// Stats returns the counts of discarded replies and dropped events.
func (c *QMPConn) Stats() QMPStats {
	return QMPStats{Discarded: c.discarded.Load(), EventsDropped: c.eventsDropped.Load()}
}

// Done is closed when the connection is down (lost, or closed by Close).
func (c *QMPConn) Done() <-chan struct{} { return c.done }

// Err returns why the connection is down (wrapping ErrClosed), or nil
// while it is up.
func (c *QMPConn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cause == nil {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrClosed, c.cause)
}

// Execute implements QMP. It runs command with args (nil, or anything
// that encodes as a JSON object) and decodes the "return" member into out
// (nil to ignore it; a *json.RawMessage keeps it raw). A context without a
// deadline gets DefaultTimeout. When ctx ends first, Execute returns
// ErrTimeout wrapping ctx.Err() and the reply, if QEMU sends it later, is
// discarded (the command may still have taken effect in QEMU). A reply
// that arrives as ctx ends is still returned.
func (c *QMPConn) Execute(ctx context.Context, command string, args, out any) error {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	ret, err := c.execute(ctx, command, args)
	if err != nil {
		return err
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(ret, out); err != nil {
		return fmt.Errorf("%w: qmp %s: decoding the reply: %w", ErrProtocol, command, err)
	}
	return nil
}

// execute sends one command and waits for its reply, returning the raw
// "return" member.
func (c *QMPConn) execute(ctx context.Context, name string, args any) (json.RawMessage, error) {
	argsRaw, err := encodeArgs(args)
	if err != nil {
		return nil, fmt.Errorf("hypervisor: qmp %s: encoding the arguments: %w", name, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%w: qmp %s: %w", ErrTimeout, name, err)
	}
	id := c.prefix + strconv.FormatUint(c.seq.Add(1), 10)
	line, err := json.Marshal(command{Execute: name, Arguments: argsRaw, ID: id})
	if err != nil {
		return nil, fmt.Errorf("hypervisor: qmp %s: encoding: %w", name, err)
	}
	line = append(line, '\n')

	ch := make(chan message, 1)
	c.mu.Lock()
	if c.cause != nil {
		cause := c.cause
		c.mu.Unlock()
		return nil, fmt.Errorf("%w: qmp %s: %w", ErrClosed, name, cause)
	}
	c.pending[id] = ch
	c.mu.Unlock()

	if err := c.write(ctx, name, line); err != nil {
		c.forget(id)
		return nil, err
	}
	select {
	case m := <-ch:
		return c.result(name, m)
	case <-ctx.Done():
		if c.forget(id) {
			c.log.Debug("command abandoned; a late reply will be discarded", "command", name, "id", id)
			return nil, fmt.Errorf("%w: qmp %s: %w", ErrTimeout, name, ctx.Err())
		}
		// The reader took the reply as ctx ended, or the connection
		// went down: one of the two is ready now or very soon.
		select {
		case m := <-ch:
			return c.result(name, m)
		case <-c.done:
			return nil, c.lostErr(name)
		}
	case <-c.done:
		select {
		case m := <-ch: // delivered just before the connection went down
			return c.result(name, m)
		default:
			return nil, c.lostErr(name)
		}
	}
}

// result turns a reply into the call's outcome.
func (c *QMPConn) result(name string, m message) (json.RawMessage, error) {
	if m.err != nil {
		e := *m.err
		e.Command = name
		return nil, &e
	}
	return m.ret, nil
}

// forget removes a pending call and reports whether it was still waiting
// (false: the reader delivered its reply, or the connection is down).
func (c *QMPConn) forget(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.pending[id]
	delete(c.pending, id)
	return ok
}

// lostErr is the error of a call on a connection that is down.
func (c *QMPConn) lostErr(name string) error {
	c.mu.Lock()
	cause := c.cause
	c.mu.Unlock()
	return fmt.Errorf("%w: qmp %s: %w", ErrClosed, name, cause)
}

// write sends one command line. Writers take turns; the wait for the turn
// and the write itself end with ctx. A command cut short by ctx leaves a
// partial JSON object on the stream, after which QEMU would misread
// everything: the connection is then closed.
func (c *QMPConn) write(ctx context.Context, name string, line []byte) error {
	select {
	case c.wsem <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("%w: qmp %s: waiting to send: %w", ErrTimeout, name, ctx.Err())
	case <-c.done:
		return c.lostErr(name)
	}
	defer func() { <-c.wsem }()
	stop := bindDeadline(ctx, c.conn.SetWriteDeadline)
	n, err := c.conn.Write(line)
	stop()
	if err == nil {
		return nil
	}
	if n > 0 {
		c.shutdown(fmt.Errorf("a command was cut short while being written: %w", err))
	}
	var ne net.Error
	if ctx.Err() != nil || (errors.As(err, &ne) && ne.Timeout()) {
		if n == 0 {
			cause := context.Cause(ctx)
			if cause == nil {
				cause = err // the deadline fired before ctx was marked done
			}
			return fmt.Errorf("%w: qmp %s: sending: %w", ErrTimeout, name, cause)
		}
		return fmt.Errorf("%w: qmp %s: sending: %w (the connection is closed)", ErrTimeout, name, ErrClosed)
	}
	c.shutdown(fmt.Errorf("writing: %w", err))
	return c.lostErr(name)
}

// read is the reader goroutine: it decodes messages until the connection
// ends, hands replies to their calls and events to the subscribers.
func (c *QMPConn) read() {
	defer close(c.readerDone)
	for {
		raw, err := readMessage(c.r, c.maxMsg)
		if err != nil {
			if errors.Is(err, io.EOF) && !errors.Is(err, ErrProtocol) {
				err = fmt.Errorf("reading: %w", err)
			}
			c.shutdown(err)
			break
		}
		m, err := parseMessage(raw)
		if err != nil {
			c.shutdown(err)
			break
		}
		switch m.kind {
		case kindEvent:
			c.subs.dispatch(m.event)
		case kindReply:
			c.deliver(m)
		case kindGreeting:
			c.shutdown(fmt.Errorf("%w: a greeting in the middle of the session", ErrProtocol))
		}
		if c.isDown() {
			break
		}
	}
	c.subs.closeAll(false)
}

// deliver hands a reply to the call waiting for its id, or discards it.
func (c *QMPConn) deliver(m message) {
	id, ok := replyID(m.id)
	c.mu.Lock()
	ch, found := c.pending[id]
	if ok && found {
		delete(c.pending, id)
		ch <- m // buffered: never blocks
	}
	c.mu.Unlock()
	if ok && found {
		return
	}
	c.discarded.Add(1)
	switch {
	case ok && strings.HasPrefix(id, c.prefix):
		c.log.Debug("discarded the late reply of an abandoned command", "id", id)
	case m.err != nil:
		c.log.Warn("discarded an error reply that names no command of ours", "id", string(m.id), "class", m.err.Class, "desc", m.err.Desc)
	default:
		c.log.Warn("discarded a reply that names no command of ours", "id", string(m.id))
	}
}

func (c *QMPConn) isDown() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// shutdown takes the connection down once, for cause: pending calls fail
// with ErrClosed wrapping cause.
func (c *QMPConn) shutdown(cause error) {
	c.shutOnce.Do(func() {
		c.mu.Lock()
		c.cause = cause
		c.pending = nil
		c.mu.Unlock()
		c.closeErr = c.conn.Close()
		close(c.done)
		switch {
		case errors.Is(cause, errClosedByCaller):
		case (errors.Is(cause, io.EOF) || errors.Is(cause, syscall.ECONNRESET)) && !errors.Is(cause, ErrProtocol):
			c.log.Info("QEMU closed the connection", "cause", cause)
		default:
			c.log.Warn("connection lost", "cause", cause)
		}
	})
}

// Subscribe implements QMP. Each subscription has its own queue of up to
// the connection's event queue limit (DefaultEventQueueLimit): the reader
// appends to it without waiting, and a goroutine feeds the channel from
// it. When the queue is full, new events are dropped and an EventsLost
// event marks the gap in their place, so a consumer always learns that it
// missed events and can re-read the state it follows. match runs on the
// reader goroutine: it must be quick and must not call the connection.
//
// When the connection is lost, events already queued are still delivered
// before the channel is closed. cancel stops delivery at once, closes the
// channel and returns once the subscription's goroutine has exited; it is
// idempotent, and a consumer must call it (or drain the channel after the
// connection ends) so that the goroutine exits. Close cancels every
// subscription.
func (c *QMPConn) Subscribe(match func(Event) bool) (<-chan Event, func()) {
	s := newSubscription(match, c.eventLimit, func() {
		c.log.Warn("a subscriber is not keeping up; dropping its events", "queued", c.eventLimit)
	}, &c.eventsDropped)
	c.subs.add(s)
	return s.out, func() {
		c.subs.remove(s)
		s.cancel()
	}
}

// Close closes the connection: subscriptions are cancelled, and pending
// and later calls fail with ErrClosed. It waits for the reader goroutine
// to exit and is idempotent.
func (c *QMPConn) Close() error {
	c.subs.closeAll(true)
	c.shutdown(errClosedByCaller)
	<-c.readerDone
	return c.closeErr
}

// withDefaultTimeout bounds ctx by DefaultTimeout if it has no deadline.
func withDefaultTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, DefaultTimeout)
}

// bindDeadline makes set's deadline follow ctx: ctx's deadline now, and an
// immediate deadline when ctx is cancelled. The returned func undoes it;
// once it returns, ctx no longer touches the deadline.
func bindDeadline(ctx context.Context, set func(time.Time) error) func() {
	if dl, ok := ctx.Deadline(); ok {
		_ = set(dl)
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(fired)
		_ = set(time.Unix(1, 0))
	})
	return func() {
		if !stop() {
			<-fired // it ran or is running: let it finish first
		}
		_ = set(time.Time{})
	}
}
