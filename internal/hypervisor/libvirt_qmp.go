package hypervisor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/digitalocean/go-libvirt"
)

// ErrLibvirt reports that libvirt refused or failed a call for a reason of
// its own: neither a timeout, a lost connection or domain, nor an error
// reply from QEMU (for example an XML document it rejects, a domain that is
// already running, or a QEMU monitor that failed mid-call). The
// libvirt.Error is wrapped too, for its code.
var ErrLibvirt = errors.New("hypervisor: libvirt refused the call")

// LibvirtMonitor is what LibvirtQMP needs of a go-libvirt connection;
// *libvirt.Libvirt satisfies it. SubscribeQEMUEvents must close its
// channel once its context is cancelled or the connection is lost.
type LibvirtMonitor interface {
	QEMUDomainMonitorCommand(dom libvirt.Domain, cmd string, flags uint32) (string, error)
	SubscribeQEMUEvents(ctx context.Context, dom string) (<-chan libvirt.DomainEvent, error)
}

var (
	_ LibvirtMonitor = (*libvirt.Libvirt)(nil)
	_ QMP            = (*LibvirtQMP)(nil)
)

// LibvirtQMP is the QEMU monitor of a libvirt domain, reached through
// libvirt (virDomainQemuMonitorCommand and virConnectDomainQemuMonitorEvent
// Register): the monitor socket of a libvirt-managed QEMU belongs to
// libvirtd.
//
// Commands. Each command is sent without an "id": libvirt adds its own
// ("libvirt-N") and refuses a command that carries one ("internal error:
// Unable to append command 'id' string"). libvirt 9.0 passes QEMU's reply
// back verbatim as the call's result, error replies included, so an error
// reply keeps its class exactly (*QMPError with CommandNotFound,
// DeviceNotFound, DeviceNotActive, GenericError, ...); libvirt does not
// turn it into a libvirt error. libvirt runs each command as a job of the
// domain, one at a time per domain, between its own monitor commands, and
// marks the domain tainted ("custom-monitor") on the first one.
//
// Bounds. go-libvirt has no request timeouts: every call runs in a
// goroutine, and when the context ends first (DefaultTimeout when it has
// no deadline) Execute returns ErrTimeout while the RPC stays pending until
// libvirt answers; the command may still take effect in QEMU. Abandoned
// counts such calls. libvirt itself waits for QEMU's reply for ever (a
// stopped QEMU holds the call), and a call that waits for the domain's job
// lock fails after libvirt's 30 s with ErrTimeout. Only disconnecting the
// libvirt connection reclaims an RPC that libvirt never answers: that is
// the connection owner's to do (Libvirt.Close, LibvirtMachine.Close for a
// machine from OpenLibvirt).
//
// Events. libvirt accepts one QMP-event registration per domain and
// connection (a second one fails with "event callback already tracked"),
// so the LibvirtQMPs of one domain on one connection share one go-libvirt
// event stream, registered when the first is created and ended when the
// last is closed. The stream feeds every subscriber through a queue of its
// own (see Subscribe), so a slow subscriber never blocks it. go-libvirt
// drops events that carry no data (STOP, RESUME, SHUTDOWN, POWERDOWN, ...):
// they never arrive here. Events with data (JOB_STATUS_CHANGE,
// BLOCK_JOB_COMPLETED, BLOCK_JOB_CANCELLED, BLOCK_JOB_ERROR, ...) do.
// libvirt relays events asynchronously, so an event that QEMU sent before
// a command's reply may arrive after Execute has returned; subscribe before
// the command, as with any QMP.
//
// Block jobs behind libvirt's back (libvirt 9.0, QEMU 7.2, seen in
// TestLibvirtDomain). libvirt accepts, through qemu-monitor-command, a
// transaction of block-dirty-bitmap-add (persistent) and blockdev-backup
// (or drive-backup) on its own format nodes ("libvirt-N-format", from
// the live XML's source index), blockdev-add and blockdev-del of target
// nodes, sync=incremental through the bitmap, block-job-cancel,
// job-finalize and job-dismiss. It does not track such jobs: virsh
// blockjob and domjobinfo do not show them, its event handlers ignore job
// ids it did not create, and it neither finalizes nor dismisses them (a
// concluded job with auto-dismiss off stays until job-dismiss), so the
// job helpers (WatchJob, Wait) follow them by id as on a bare QEMU. Its
// own push backup (virDomainBackupBegin, with a checkpoint) runs next to
// such a job, and its own jobs emit JOB_STATUS_CHANGE to our subscribers
// too ("backup-vdb-libvirt-1-format", "create-libvirt-3-format" while it
// formats a target): filter by job id, and keep our ids apart from
// libvirt's. A bitmap added this way is no libvirt checkpoint
// (checkpoint-list does not show it; libvirt's checkpoints add and remove
// only their own bitmaps). Not seen here: what libvirtd does with such a
// job when it restarts and reconnects to QEMU (the test daemon cannot
// restart without its guests), and whether an operation that makes libvirt
// reopen the disk's chain (blockcommit, an external snapshot) tolerates a
// foreign job or target node.
//
// Errors. QEMU's error replies are *QMPError; a context that ends first is
// ErrTimeout; a closed LibvirtQMP, a lost connection, a domain that is not
// running or no longer exists are ErrClosed (the libvirt.Error wrapped,
// when there is one); libvirt's job-lock timeout is ErrTimeout; a reply
// that is not a QMP reply is ErrProtocol; anything else libvirt refuses is
// ErrLibvirt.
//
// LibvirtQMP does not own the libvirt connection. It is safe for
// concurrent use.
type LibvirtQMP struct {
	conn       LibvirtMonitor
	dom        libvirt.Domain
	log        *slog.Logger
	maxMsg     int
	eventLimit int

	subs          subscriptions
	abandoned     atomic.Int64
	discarded     atomic.Uint64
	eventsDropped atomic.Uint64

	closed    chan struct{} // closed by Close
	closeOnce sync.Once

	src *eventSource

	mu       sync.Mutex
	cause    error         // why the event stream ended; nil while it runs
	done     chan struct{} // closed when the event stream has ended
	doneOnce sync.Once
}

// NewLibvirtQMP returns the monitor of dom through conn (usually a
// connected *libvirt.Libvirt) and registers for the domain's QMP events,
// bounded by ctx (DefaultTimeout when it has no deadline). Of the options
// it uses WithLogger, WithEventQueueLimit and WithMaxMessageSize (the
// largest reply accepted). The caller keeps conn and disconnects it after
// closing the LibvirtQMP.
func NewLibvirtQMP(ctx context.Context, conn LibvirtMonitor, dom libvirt.Domain, opts ...QMPOption) (*LibvirtQMP, error) {
	var o QMPConn
	for _, opt := range opts {
		opt(&o)
	}
	q := &LibvirtQMP{
		conn:       conn,
		dom:        dom,
		log:        o.log,
		maxMsg:     o.maxMsg,
		eventLimit: o.eventLimit,
		closed:     make(chan struct{}),
		done:       make(chan struct{}),
	}
	if q.log == nil {
		q.log = slog.Default()
	}
	if q.maxMsg <= 0 {
		q.maxMsg = DefaultMaxMessageSize
	}
	if q.eventLimit <= 0 {
		q.eventLimit = DefaultEventQueueLimit
	}
	q.log = q.log.With("component", "libvirt-qmp", "domain", dom.Name)

	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	src, err := attachEvents(ctx, q)
	if err != nil {
		return nil, err
	}
	q.src = src
	return q, nil
}

// Domain returns the libvirt domain.
func (q *LibvirtQMP) Domain() libvirt.Domain { return q.dom }

// Abandoned returns how many commands were given up on (their context
// ended, or the LibvirtQMP was closed) and still wait for libvirt's
// answer. A count that stays above zero means libvirt or QEMU no longer
// answers: disconnect the libvirt connection, which fails them.
func (q *LibvirtQMP) Abandoned() int { return int(q.abandoned.Load()) }

// Stats returns the count of dropped events, and as Discarded the replies
// that arrived for commands given up on.
func (q *LibvirtQMP) Stats() QMPStats {
	return QMPStats{Discarded: q.discarded.Load(), EventsDropped: q.eventsDropped.Load()}
}

// Done is closed once the event stream has ended: the LibvirtQMP was
// closed or the libvirt connection was lost.
func (q *LibvirtQMP) Done() <-chan struct{} { return q.done }

// Err returns why the event stream ended (wrapping ErrClosed), or nil
// while it runs.
func (q *LibvirtQMP) Err() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.cause == nil {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrClosed, q.cause)
}

// Execute implements QMP: it runs command with args (nil, or anything that
// encodes as a JSON object) through libvirt and decodes the "return"
// member into out (nil to ignore it; a *json.RawMessage keeps it raw).
// See LibvirtQMP for the bounds and the errors.
func (q *LibvirtQMP) Execute(ctx context.Context, command string, args, out any) error {
	ret, err := q.execute(ctx, command, args)
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

// execute sends one command and returns the raw "return" member.
func (q *LibvirtQMP) execute(ctx context.Context, name string, args any) (json.RawMessage, error) {
	argsRaw, err := encodeArgs(args)
	if err != nil {
		return nil, fmt.Errorf("hypervisor: qmp %s: encoding the arguments: %w", name, err)
	}
	line, err := json.Marshal(struct {
		Execute   string          `json:"execute"`
		Arguments json.RawMessage `json:"arguments,omitempty"`
	}{name, argsRaw})
	if err != nil {
		return nil, fmt.Errorf("hypervisor: qmp %s: encoding: %w", name, err)
	}
	if err := q.check(ctx, name); err != nil {
		return nil, err
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	reply, err := bounded(ctx, q.closed, &q.abandoned, &q.discarded, func() (string, error) {
		return q.conn.QEMUDomainMonitorCommand(q.dom, string(line), 0)
	})
	switch {
	case errors.Is(err, errGaveUp):
		if isClosed(q.closed) {
			return nil, fmt.Errorf("%w: qmp %s: closed while waiting for libvirt", ErrClosed, name)
		}
		return nil, fmt.Errorf("%w: qmp %s: %w", ErrTimeout, name, ctx.Err())
	case err != nil:
		return nil, libvirtQMPError(name, q.dom.Name, err)
	}
	return q.parseReply(name, reply)
}

// parseReply checks libvirt's result: QEMU's reply, {"return": ...} or
// {"error": ...}, with libvirt's id.
func (q *LibvirtQMP) parseReply(name, reply string) (json.RawMessage, error) {
	if len(reply) > q.maxMsg {
		return nil, fmt.Errorf("%w: qmp %s: reply of %d bytes is larger than %d", ErrProtocol, name, len(reply), q.maxMsg)
	}
	raw := bytes.TrimSpace([]byte(reply))
	if !json.Valid(raw) {
		return nil, fmt.Errorf("%w: qmp %s: malformed reply: %.200q", ErrProtocol, name, raw)
	}
	m, err := parseMessage(raw)
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", name, err)
	}
	if m.kind != kindReply {
		return nil, fmt.Errorf("%w: qmp %s: libvirt returned something that is not a reply: %.200q", ErrProtocol, name, raw)
	}
	if m.err != nil {
		e := *m.err
		e.Command = name
		return nil, &e
	}
	return m.ret, nil
}

// check refuses a call on a closed LibvirtQMP, on a lost event stream, or
// with an ended context.
func (q *LibvirtQMP) check(ctx context.Context, name string) error {
	if isClosed(q.closed) {
		return fmt.Errorf("%w: qmp %s: closed", ErrClosed, name)
	}
	if err := q.Err(); err != nil {
		return fmt.Errorf("qmp %s: %w", name, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: qmp %s: %w", ErrTimeout, name, err)
	}
	return nil
}

// end records that the event stream ended for cause: later calls fail,
// and the subscriptions close once they have delivered what they hold.
func (q *LibvirtQMP) end(cause error) {
	q.doneOnce.Do(func() {
		q.mu.Lock()
		q.cause = cause
		q.mu.Unlock()
		close(q.done)
		q.subs.closeAll(false)
	})
}

// Subscribe implements QMP: each subscription has its own queue of up to
// the event queue limit (DefaultEventQueueLimit); past it, events are
// dropped and an EventsLost event marks the gap, so the stream is never
// held up. match runs on the reader goroutine: it must be quick and must
// not call the LibvirtQMP. When the event stream ends, queued events are
// still delivered before the channel is closed; cancel stops delivery at
// once and is idempotent. Close cancels every subscription.
func (q *LibvirtQMP) Subscribe(match func(Event) bool) (<-chan Event, func()) {
	s := newSubscription(match, q.eventLimit, func() {
		q.log.Warn("a subscriber is not keeping up; dropping its events", "queued", q.eventLimit)
	}, &q.eventsDropped)
	q.subs.add(s)
	return s.out, func() {
		q.subs.remove(s)
		s.cancel()
	}
}

// Close implements QMP: it cancels the subscriptions, ends the event
// stream when no other LibvirtQMP of the domain on the connection uses it
// (waiting until its reader has exited, which go-libvirt allows at once),
// and fails calls in progress and later calls with ErrClosed; their RPCs
// stay pending until libvirt answers (see Abandoned). It does not
// disconnect the libvirt connection. It is idempotent.
func (q *LibvirtQMP) Close() error {
	q.closeOnce.Do(func() {
		close(q.closed)
		q.subs.closeAll(true)
		q.src.detach(q)
		q.end(errClosedByCaller)
	})
	return nil
}

// errGaveUp is bounded's result when the context ended or closed was
// closed before the call returned.
var errGaveUp = errors.New("gave up waiting for libvirt")

// bounded runs fn, one go-libvirt call, in a goroutine and returns its
// result, or errGaveUp when ctx ends or closed is closed first; fn then
// stays pending, counted in abandoned, until libvirt answers or the
// connection is lost, and its late result is counted in late (if not nil)
// and dropped. A result that is ready when ctx ends is still returned.
func bounded[T any](ctx context.Context, closed <-chan struct{}, abandoned *atomic.Int64, late *atomic.Uint64, fn func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	const running, finished, gaveUp = 0, 1, 2
	var state atomic.Int32
	done := make(chan result, 1)
	go func() {
		v, err := fn()
		done <- result{v, err}
		if !state.CompareAndSwap(running, finished) {
			abandoned.Add(-1)
			if late != nil {
				late.Add(1)
			}
		}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-ctx.Done():
	case <-closed:
	}
	select {
	case r := <-done:
		return r.v, r.err
	default:
	}
	abandoned.Add(1)
	if state.CompareAndSwap(running, gaveUp) {
		var zero T
		return zero, errGaveUp
	}
	// It finished meanwhile: take its result.
	abandoned.Add(-1)
	r := <-done
	return r.v, r.err
}

// isClosed reports whether ch is closed.
func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// libvirtQMPError maps an error of a monitor RPC (see LibvirtQMP).
func libvirtQMPError(op, domain string, err error) error {
	var le libvirt.Error
	if !errors.As(err, &le) {
		if errors.Is(err, libvirt.ErrUnsupported) {
			return fmt.Errorf("%w: qmp %s (domain %s): %w", ErrLibvirt, op, domain, err)
		}
		// ErrInterrupted (the connection dropped during the call), EINVAL
		// (not connected), write and decoding errors.
		return fmt.Errorf("%w: qmp %s (domain %s): libvirt connection: %w", ErrClosed, op, domain, err)
	}
	switch libvirt.ErrorNumber(le.Code) {
	case libvirt.ErrOperationInvalid, libvirt.ErrNoDomain:
		// "domain is not running", or the domain is gone.
		return fmt.Errorf("%w: qmp %s (domain %s): %w", ErrClosed, op, domain, le)
	case libvirt.ErrOperationTimeout:
		// "cannot acquire state change lock": another job held the domain.
		return fmt.Errorf("%w: qmp %s (domain %s): %w", ErrTimeout, op, domain, le)
	}
	return fmt.Errorf("%w: qmp %s (domain %s): %w", ErrLibvirt, op, domain, le)
}

// sourceKey names one domain's QMP-event registration on one connection.
type sourceKey struct {
	conn LibvirtMonitor
	uuid libvirt.UUID
	name string
}

// eventSources are the live event registrations, shared by the
// LibvirtQMPs of one domain on one connection. Lock order: eventSources.mu,
// then an eventSource's mu.
var eventSources struct {
	mu sync.Mutex
	m  map[sourceKey]*eventSource
}

// eventSource is one go-libvirt QMP event stream and the LibvirtQMPs it
// feeds.
type eventSource struct {
	key  sourceKey
	log  *slog.Logger
	stop context.CancelFunc // ends the stream's context
	// ready is closed once the registration has returned, err is its
	// error.
	ready chan struct{}
	err   error
	// done is closed once the reader has exited (or the registration
	// failed).
	done chan struct{}

	mu    sync.Mutex
	refs  int                      // attached or attaching LibvirtQMPs
	sinks map[*LibvirtQMP]struct{} // the attached ones
	ended error                    // why the stream ended; nil while it runs
}

// attachEvents attaches q to its domain's event stream on q's connection,
// registering one (a lookup and a register RPC) if there is none, bounded
// by ctx.
func attachEvents(ctx context.Context, q *LibvirtQMP) (*eventSource, error) {
	key := sourceKey{conn: q.conn, uuid: q.dom.UUID, name: q.dom.Name}
	eventSources.mu.Lock()
	src := eventSources.m[key]
	if src != nil && !src.ref() {
		src = nil // its stream ended: register anew
	}
	if src == nil {
		life, stop := context.WithCancel(context.Background())
		src = &eventSource{
			key:   key,
			log:   q.log,
			stop:  stop,
			ready: make(chan struct{}),
			done:  make(chan struct{}),
			refs:  1,
			sinks: map[*LibvirtQMP]struct{}{},
		}
		if eventSources.m == nil {
			eventSources.m = map[sourceKey]*eventSource{}
		}
		eventSources.m[key] = src
		go src.register(life)
	}
	eventSources.mu.Unlock()

	select {
	case <-src.ready:
	case <-ctx.Done():
		src.detach(q)
		return nil, fmt.Errorf("%w: qmp events of domain %s: registering: %w", ErrTimeout, q.dom.Name, ctx.Err())
	}
	if src.err != nil {
		src.detach(q)
		return nil, libvirtQMPError("registering for events", q.dom.Name, src.err)
	}
	src.mu.Lock()
	defer src.mu.Unlock()
	if src.ended != nil {
		src.refs--
		return nil, fmt.Errorf("%w: qmp events of domain %s: %w", ErrClosed, q.dom.Name, src.ended)
	}
	src.sinks[q] = struct{}{}
	return src, nil
}

// ref counts one more LibvirtQMP attaching, unless the stream has ended.
func (src *eventSource) ref() bool {
	src.mu.Lock()
	defer src.mu.Unlock()
	if src.ended != nil {
		return false
	}
	src.refs++
	return true
}

// Retries of a registration that libvirt refuses as a duplicate.
const (
	registerRetries = 20
	registerBackoff = 100 * time.Millisecond
)

// register registers for the domain's events and runs the reader. When
// everyone has given up on it meanwhile, it ends the stream at once.
//
// libvirt refuses a registration while the previous one for the domain
// on the connection is still registered ("event callback already
// tracked"). go-libvirt deregisters a stream after it has closed its
// channel, so a LibvirtQMP opened right after the last one was closed can
// meet the old registration: register retries for a while.
func (src *eventSource) register(life context.Context) {
	var ch <-chan libvirt.DomainEvent
	var err error
	for attempt := 0; ; attempt++ {
		ch, err = src.key.conn.SubscribeQEMUEvents(life, src.key.name)
		if err == nil || !isLibvirtCode(err, libvirt.ErrInvalidArg) || attempt == registerRetries {
			break
		}
		select {
		case <-life.Done():
		case <-time.After(registerBackoff):
			continue
		}
		break
	}
	src.err = err
	close(src.ready)
	if err != nil {
		src.stop()
		src.finish(fmt.Errorf("registering: %w", err))
		return
	}
	src.mu.Lock()
	unused := src.refs == 0
	src.mu.Unlock()
	if unused {
		src.stop()
	}
	src.read(ch)
}

// read drains go-libvirt's channel until it is closed (go-libvirt's
// sender blocks until it is read) and offers each event to every attached
// LibvirtQMP's subscribers.
func (src *eventSource) read(ch <-chan libvirt.DomainEvent) {
	for de := range ch {
		ev := src.event(de)
		src.mu.Lock()
		for q := range src.sinks {
			q.subs.dispatch(ev) // never blocks
		}
		src.mu.Unlock()
	}
	src.finish(errors.New("the libvirt event stream ended (connection lost)"))
}

// finish marks the stream ended, ends it for the LibvirtQMPs still
// attached, forgets the source and closes done.
func (src *eventSource) finish(cause error) {
	src.stop()
	src.mu.Lock()
	src.ended = cause
	sinks := make([]*LibvirtQMP, 0, len(src.sinks))
	for q := range src.sinks {
		sinks = append(sinks, q)
	}
	src.sinks = map[*LibvirtQMP]struct{}{}
	src.mu.Unlock()
	for _, q := range sinks {
		q.log.Warn("event stream ended", "cause", cause)
		q.end(cause)
	}
	src.forget()
	close(src.done)
}

// forget removes the source from eventSources if it is still there.
func (src *eventSource) forget() {
	eventSources.mu.Lock()
	defer eventSources.mu.Unlock()
	if eventSources.m[src.key] == src {
		delete(eventSources.m, src.key)
	}
}

// detach removes q. The last one out ends the stream and, once the
// registration has returned, waits for the reader to exit.
func (src *eventSource) detach(q *LibvirtQMP) {
	eventSources.mu.Lock()
	src.mu.Lock()
	if _, ok := src.sinks[q]; ok || src.ended == nil {
		// q counts in refs while attaching or attached; after finish,
		// refs no longer matters.
		delete(src.sinks, q)
		src.refs--
	}
	last := src.refs <= 0
	src.mu.Unlock()
	if last && eventSources.m[src.key] == src {
		delete(eventSources.m, src.key)
	}
	eventSources.mu.Unlock()
	if !last {
		return
	}
	src.stop()
	select {
	case <-src.ready:
		<-src.done // go-libvirt closes the channel at once on stop
	default:
		// register ends the stream when the registration returns.
	}
}

// event converts a go-libvirt event. libvirt sends the data as JSON text;
// data that is not a JSON object is left out (and logged).
func (src *eventSource) event(de libvirt.DomainEvent) Event {
	ev := Event{Name: de.Event}
	if de.Seconds > 0 || de.Microseconds > 0 {
		ev.Time = time.Unix(int64(de.Seconds), int64(de.Microseconds)*1000)
	}
	data := bytes.TrimSpace(bytes.TrimRight(de.Details, "\x00"))
	switch {
	case len(data) == 0:
	case json.Valid(data) && isObject(data):
		ev.Data = json.RawMessage(bytes.Clone(data))
	default:
		src.log.Warn("event data is not a JSON object; delivered without it", "event", de.Event, "data", fmt.Sprintf("%.200q", data))
	}
	return ev
}
