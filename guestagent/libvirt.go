package guestagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/digitalocean/go-libvirt"
)

// ErrLibvirt reports that libvirt refused or failed a call for a reason of
// its own, neither a timeout, a lost domain or connection, nor an error
// reply from the agent (e.g. an unsupported flag or a permission denied).
// The libvirt.Error is wrapped too.
var ErrLibvirt = errors.New("guestagent: libvirt refused the call")

// LibvirtConn is what Libvirt needs of a go-libvirt connection;
// *libvirt.Libvirt satisfies it.
type LibvirtConn interface {
	QEMUDomainAgentCommand(dom libvirt.Domain, cmd string, timeout int32, flags uint32) (libvirt.OptString, error)
	DomainFsfreeze(dom libvirt.Domain, mountpoints []string, flags uint32) (int32, error)
	DomainFsthaw(dom libvirt.Domain, mountpoints []string, flags uint32) (int32, error)
}

var (
	_ LibvirtConn = (*libvirt.Libvirt)(nil)
	_ Transport   = (*Libvirt)(nil)
)

// Agent commands that Libvirt routes to libvirt's own API.
const (
	cmdFreeze     = "guest-fsfreeze-freeze"
	cmdFreezeList = "guest-fsfreeze-freeze-list"
	cmdThaw       = "guest-fsfreeze-thaw"
	cmdStatus     = "guest-fsfreeze-status"
)

// Libvirt is the transport to the guest agent of a libvirt-managed domain,
// whose agent socket belongs to libvirt.
//
// Commands go through virDomainQemuAgentCommand (libvirt syncs with the
// agent itself), except the freeze and thaw commands, which go through
// libvirt's own API, virDomainFSFreeze and virDomainFSThaw: FreezeList,
// FreezeAll and Thaw do so directly, and Execute routes
// guest-fsfreeze-freeze, guest-fsfreeze-freeze-list and guest-fsfreeze-thaw
// to them and returns the count as the agent's "return" would be, so that a
// Client's FreezeList, FreezeAll and Thaw use them too. guest-fsfreeze-status
// has no API of its own and goes through the agent command.
//
// libvirt 9.0 also accepts freeze commands passed through as agent
// commands (they taint the domain, as any agent command does). The
// dedicated API is used because its RPC returns only once the agent has
// answered: libvirt waits as long as the domain's agent response timeout
// allows (virsh guest-agent-timeout), by default for ever, so a freeze
// whose RPC has returned is settled, done or never sent. A passed-through
// freeze is given up by libvirt at the timeout it carries while the agent
// may still carry it out. On that property Libvirt orders freeze, thaw and
// freeze status: each is issued only once the previous one's RPC has
// returned, even if its caller gave up on it, because libvirt does not
// queue its agent jobs first come, first served (seen with libvirt 9.0: a
// thaw issued while an abandoned freeze waited for the agent ran first,
// and the late freeze left the guest frozen). So a thaw on a fresh context
// after a freeze that timed out runs after that freeze and thaws what it
// froze. A freeze or thaw given up on before its turn is not issued. The
// order holds among the calls of one Libvirt, and only while the domain's
// agent response timeout stays at its default; the context still bounds
// every wait here. A caller that gets ErrTimeout from a freeze must thaw.
//
// Every call is bounded by its context (DefaultTimeout when it has none).
// The agent command carries the time left as libvirt's timeout, in whole
// seconds and at least one; libvirt's special values (block, default,
// no wait) are never sent. go-libvirt has no request timeouts, so the RPC
// runs in a goroutine, and when the context ends first the call returns
// ErrTimeout while the RPC stays pending until libvirt answers (Abandoned
// counts these). Libvirt does not own the connection: disconnecting it is
// the only way to reclaim an RPC that libvirt never answers, and the
// caller's to do.
//
// Errors map as for Stream: ErrTimeout for the context's end and for
// libvirt's agent timeouts and unresponsive or not yet connected agent;
// ErrClosed for a closed transport, a lost libvirt connection, a domain
// that is not running or is gone, or a domain without an agent channel;
// *Error for an error reply from the agent; ErrProtocol for a malformed
// reply; ErrLibvirt for anything else libvirt refuses. libvirt reports the
// agent's error reply as an internal error, "unable to execute QEMU agent
// command 'NAME': DESC", keeping the description but not the class: the
// class is CommandNotFound for QEMU's "The command NAME has not been found"
// and "Command NAME has been disabled..." (both of that class), and
// GenericError otherwise. This reads libvirt's English message; a libvirtd
// running in another locale yields ErrLibvirt instead.
//
// Calls may run concurrently; libvirt serialises them per domain. The
// first agent command taints the domain in libvirt ("custom-ga-command");
// freeze and thaw do not.
type Libvirt struct {
	conn LibvirtConn
	dom  libvirt.Domain

	closed    chan struct{}
	closeOnce sync.Once
	abandoned atomic.Int64

	orderMu sync.Mutex
	last    chan struct{} // closed when the last ordered RPC has returned
}

// NewLibvirt returns a transport to the agent of dom through conn, usually
// a connected *libvirt.Libvirt. The caller keeps conn and disconnects it
// after closing the transport.
func NewLibvirt(conn LibvirtConn, dom libvirt.Domain) *Libvirt {
	return &Libvirt{conn: conn, dom: dom, closed: make(chan struct{})}
}

// Close makes later calls fail with ErrClosed and ends calls in progress
// with ErrClosed; their RPCs stay pending (see Abandoned). It does not
// disconnect the libvirt connection.
func (l *Libvirt) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return nil
}

// Abandoned returns how many RPCs were given up on (their context ended
// or the transport was closed) and are still waiting for libvirt's answer.
// A count that stays above zero means libvirt no longer answers: disconnect
// the connection, which fails them.
func (l *Libvirt) Abandoned() int { return int(l.abandoned.Load()) }

// Execute implements Transport.
func (l *Libvirt) Execute(ctx context.Context, command string, args any) (json.RawMessage, error) {
	if err := l.check(ctx, command); err != nil {
		return nil, err
	}
	switch command {
	case cmdFreeze, cmdFreezeList, cmdThaw:
		return l.routed(ctx, command, args)
	}
	req, err := json.Marshal(request{Execute: command, Arguments: args})
	if err != nil {
		return nil, fmt.Errorf("guestagent: %s: encoding: %w", command, err)
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	call := func() (libvirt.OptString, error) {
		// The time left when the command is issued: a status call may
		// have waited for its turn.
		return l.conn.QEMUDomainAgentCommand(l.dom, string(req), agentTimeout(ctx), 0)
	}
	var out libvirt.OptString
	if command == cmdStatus {
		out, err = ordered(ctx, l, command, call)
	} else {
		out, err = rpc(ctx, l, command, call)
	}
	if err != nil {
		return nil, err
	}
	if len(out) != 1 {
		return nil, fmt.Errorf("%w: %s: libvirt returned %d replies, want 1", ErrProtocol, command, len(out))
	}
	raw := []byte(out[0])
	switch {
	case len(raw) > MaxReplySize:
		return nil, fmt.Errorf("guestagent: %s: %w", command, errTooLarge)
	case !json.Valid(raw):
		// parseReply alone would accept trailing bytes after the object.
		return nil, fmt.Errorf("%w: %s: malformed reply: %.200q", ErrProtocol, command, raw)
	}
	rep, err := parseReply(raw)
	if err != nil {
		return nil, fmt.Errorf("guestagent: %s: %w", command, err)
	}
	if rep.err != nil {
		// libvirt turns error replies into errors; this is defence.
		return nil, &Error{Command: command, Class: rep.err.Class, Desc: rep.err.Desc}
	}
	return rep.ret, nil
}

// FreezeList freezes the file systems mounted at mountpoints through
// virDomainFSFreeze and returns how many it froze. An empty list is
// refused: libvirt would freeze every file system (use FreezeAll).
func (l *Libvirt) FreezeList(ctx context.Context, mountpoints []string) (int, error) {
	if len(mountpoints) == 0 {
		return 0, fmt.Errorf("%w: %s: needs at least one mount point", ErrProtocol, cmdFreezeList)
	}
	return l.fsfreeze(ctx, cmdFreezeList, mountpoints)
}

// FreezeAll freezes every guest file system through virDomainFSFreeze and
// returns how many it froze.
func (l *Libvirt) FreezeAll(ctx context.Context) (int, error) {
	return l.fsfreeze(ctx, cmdFreeze, nil)
}

// Thaw thaws every frozen guest file system through virDomainFSThaw and
// returns how many it thawed. It is issued only once an earlier freeze has
// returned from libvirt, even one whose caller gave up (see Libvirt).
func (l *Libvirt) Thaw(ctx context.Context) (int, error) {
	if err := l.check(ctx, cmdThaw); err != nil {
		return 0, err
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	n, err := ordered(ctx, l, cmdThaw, func() (int32, error) { return l.conn.DomainFsthaw(l.dom, nil, 0) })
	return int(n), err
}

// fsfreeze calls virDomainFSFreeze; nil mountpoints freeze everything.
func (l *Libvirt) fsfreeze(ctx context.Context, command string, mountpoints []string) (int, error) {
	if err := l.check(ctx, command); err != nil {
		return 0, err
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	n, err := ordered(ctx, l, command, func() (int32, error) { return l.conn.DomainFsfreeze(l.dom, mountpoints, 0) })
	return int(n), err
}

// routed runs a freeze or thaw command given to Execute through libvirt's
// API and returns the count as the agent's reply would carry it. Arguments
// the agent does not take are refused with a GenericError, as the agent
// refuses them.
func (l *Libvirt) routed(ctx context.Context, command string, args any) (json.RawMessage, error) {
	var members map[string]json.RawMessage
	if args != nil {
		b, err := json.Marshal(args)
		if err != nil {
			return nil, fmt.Errorf("guestagent: %s: encoding: %w", command, err)
		}
		if string(b) != "null" {
			if err := json.Unmarshal(b, &members); err != nil {
				return nil, &Error{Command: command, Class: ClassGenericError, Desc: "arguments must be an object"}
			}
		}
	}
	var mountpoints []string
	for name, v := range members {
		if command != cmdFreezeList || name != "mountpoints" {
			return nil, &Error{Command: command, Class: ClassGenericError, Desc: fmt.Sprintf("Parameter '%s' is unexpected", name)}
		}
		if err := json.Unmarshal(v, &mountpoints); err != nil || mountpoints == nil {
			return nil, &Error{Command: command, Class: ClassGenericError, Desc: "Invalid parameter type for 'mountpoints', expected: array"}
		}
	}
	var n int
	var err error
	switch {
	case command == cmdThaw:
		n, err = l.Thaw(ctx)
	case command == cmdFreezeList && mountpoints != nil:
		n, err = l.FreezeList(ctx, mountpoints)
	default:
		// guest-fsfreeze-freeze, or -freeze-list without a list: the
		// agent freezes everything.
		n, err = l.fsfreeze(ctx, command, nil)
	}
	if err != nil {
		return nil, err
	}
	return json.RawMessage(strconv.Itoa(n)), nil
}

// check refuses a call on a closed transport or with an ended context.
func (l *Libvirt) check(ctx context.Context, command string) error {
	select {
	case <-l.closed:
		return fmt.Errorf("%w: %s: libvirt transport closed", ErrClosed, command)
	default:
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrTimeout, command, err)
	}
	return nil
}

// withDefaultTimeout bounds a context without a deadline by DefaultTimeout.
func withDefaultTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, DefaultTimeout)
}

// agentTimeout returns the timeout in seconds to give libvirt for an
// agent command: the whole seconds left before ctx's deadline, rounded
// down so that libvirt gives up (and frees the domain's agent job) by the
// time the caller does, and at least 1, because libvirt reads -2, -1 and 0
// as block, default and do not wait. A context without a deadline gets
// DefaultTimeout.
func agentTimeout(ctx context.Context) int32 {
	left := DefaultTimeout
	if dl, ok := ctx.Deadline(); ok {
		left = time.Until(dl)
	}
	secs := left / time.Second
	switch {
	case secs < 1:
		return 1
	case secs > math.MaxInt32:
		return math.MaxInt32
	}
	return int32(secs)
}

// rpc runs fn, one go-libvirt call, in a goroutine and returns its result,
// or ErrTimeout when ctx ends first and ErrClosed when l is closed first;
// fn then stays pending, counted by Abandoned, until libvirt answers or the
// connection is lost. Errors from fn are mapped by libvirtError.
func rpc[T any](ctx context.Context, l *Libvirt, command string, fn func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	const running, finished, abandoned = 0, 1, 2
	var state atomic.Int32
	done := make(chan result, 1)
	go func() {
		v, err := fn()
		done <- result{v, err}
		if !state.CompareAndSwap(running, finished) {
			l.abandoned.Add(-1)
		}
	}()
	var r result
	answered := false
	select {
	case r = <-done:
		answered = true
	case <-ctx.Done():
	case <-l.closed:
	}
	if !answered {
		l.abandoned.Add(1)
		if state.CompareAndSwap(running, abandoned) {
			select {
			case <-l.closed:
				return r.v, fmt.Errorf("%w: %s: libvirt transport closed", ErrClosed, command)
			default:
				return r.v, fmt.Errorf("%w: %s: %w", ErrTimeout, command, ctx.Err())
			}
		}
		// It finished meanwhile: take its result (a freeze that
		// succeeded must be known).
		l.abandoned.Add(-1)
		r = <-done
	}
	if r.err != nil {
		return r.v, libvirtError(command, r.err)
	}
	return r.v, nil
}

// ordered is rpc for freeze, thaw and freeze status: fn is issued only
// once the previous ordered RPC has returned, so that they reach libvirt,
// and through it the agent, in the order they were called (libvirt's
// agent job queue is not first come, first served). fn is not issued at
// all when the call was given up on (its context ended, or l was closed)
// before its turn.
func ordered[T any](ctx context.Context, l *Libvirt, command string, fn func() (T, error)) (T, error) {
	l.orderMu.Lock()
	prev := l.last
	mine := make(chan struct{})
	l.last = mine
	l.orderMu.Unlock()
	return rpc(ctx, l, command, func() (T, error) {
		defer close(mine)
		if prev != nil {
			<-prev
		}
		if err := l.check(ctx, command); err != nil {
			var zero T
			return zero, err
		}
		return fn()
	})
}

// Messages of libvirt's report of an agent error reply and of QEMU's
// CommandNotFound errors.
const (
	agentErrorPrefix = "unable to execute QEMU agent command '"
	// libvirt's descriptions for a reply without "desc".
	libvirtNotFound = "The command has not been found"
	libvirtDisabled = "The command has been disabled for this instance"
)

// libvirtError maps an error from a go-libvirt call to the package's
// errors (see Libvirt).
func libvirtError(command string, err error) error {
	if errors.Is(err, ErrTimeout) || errors.Is(err, ErrClosed) {
		return err // an ordered call given up on before its turn
	}
	var le libvirt.Error
	if !errors.As(err, &le) {
		if errors.Is(err, libvirt.ErrUnsupported) {
			return fmt.Errorf("%w: %s: %w", ErrLibvirt, command, err)
		}
		// ErrInterrupted (the connection dropped during the call),
		// EINVAL (not connected), write and decoding errors.
		return fmt.Errorf("%w: %s: libvirt connection: %w", ErrClosed, command, err)
	}
	switch libvirt.ErrorNumber(le.Code) {
	case libvirt.ErrInternalError, libvirt.ErrAgentCommandFailed:
		if e := agentError(command, le.Message); e != nil {
			return e
		}
		if libvirt.ErrorNumber(le.Code) == libvirt.ErrAgentCommandFailed {
			return &Error{Command: command, Class: ClassGenericError, Desc: le.Message}
		}
	case libvirt.ErrAgentUnresponsive, libvirt.ErrAgentCommandTimeout, libvirt.ErrOperationTimeout:
		// Unresponsive covers an agent not (yet) connected and libvirt's
		// timeout in 9.0; the others a timeout in later versions and a
		// domain job that stayed busy.
		return fmt.Errorf("%w: %s: %w", ErrTimeout, command, le)
	case libvirt.ErrOperationInvalid, libvirt.ErrNoDomain, libvirt.ErrArgumentUnsupported:
		// Not running (shut off or paused), gone, or no agent channel.
		return fmt.Errorf("%w: %s: %w", ErrClosed, command, le)
	case libvirt.ErrAgentUnsynced:
		return fmt.Errorf("%w: %s: %w", ErrProtocol, command, le)
	}
	return fmt.Errorf("%w: %s: %w", ErrLibvirt, command, le)
}

// agentError extracts the agent's error from libvirt's message "...unable
// to execute QEMU agent command 'NAME': DESC", or returns nil.
func agentError(command, msg string) *Error {
	_, rest, ok := strings.Cut(msg, agentErrorPrefix)
	if !ok {
		return nil
	}
	name, desc, ok := strings.Cut(rest, "': ")
	if !ok {
		// No description at all.
		name, desc = strings.TrimSuffix(rest, "'"), ""
	}
	class := ClassGenericError
	switch {
	case desc == libvirtNotFound || desc == libvirtDisabled,
		desc == "The command "+name+" has not been found",
		strings.HasPrefix(desc, "Command "+name+" has been disabled"):
		class = ClassCommandNotFound
	}
	return &Error{Command: command, Class: class, Desc: desc}
}
