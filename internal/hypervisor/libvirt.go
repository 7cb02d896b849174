package hypervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket"
	"github.com/digitalocean/go-libvirt/socket/dialers"

	"github.com/twinsnap/twinsnap/guestagent"
)

// libvirtCloseTimeout bounds the polite part of Libvirt.Close (libvirt's
// connect-close RPC) before the socket is closed under it.
const libvirtCloseTimeout = 5 * time.Second

// shutdownPoll is how often ShutdownDomain polls the domain's state.
const shutdownPoll = 200 * time.Millisecond

// Libvirt is a connection to libvirtd's QEMU driver (qemu:///system) for
// the libvirt driver: domain lifecycle, and machines (OpenMachine) whose
// monitor and guest agent go through libvirt.
//
// go-libvirt has no request timeouts: every method is bounded by its
// context (DefaultTimeout when it has none) by running the RPC in a
// goroutine, and returns ErrTimeout when the context ends first while the
// RPC stays pending until libvirt answers (Abandoned counts them). Close
// reclaims them: it disconnects, and if libvirtd does not answer within a
// few seconds it closes the socket, which fails every pending RPC.
//
// Methods that take a domain name return ErrNotFound (wrapping libvirt's
// error) for a domain that libvirt does not know, ErrClosed once the
// connection is closed or lost, and ErrLibvirt for anything else libvirt
// refuses. It is safe for concurrent use.
type Libvirt struct {
	l *libvirt.Libvirt
	d *abortDialer

	closed    chan struct{}
	closeOnce sync.Once
	closeErr  error
	abandoned atomic.Int64
}

// DialLibvirt connects to libvirtd's unix socket at socketPath (for
// example /var/run/libvirt/libvirt-sock) and opens qemu:///system, bounded
// by ctx.
func DialLibvirt(ctx context.Context, socketPath string) (*Libvirt, error) {
	return ConnectLibvirt(ctx, dialers.NewLocal(dialers.WithSocket(socketPath)))
}

// ConnectLibvirt connects to libvirtd through d (any go-libvirt dialer:
// local socket, TLS, SSH) and opens qemu:///system, bounded by ctx: when
// ctx ends first, the socket is closed and ErrTimeout returned.
func ConnectLibvirt(ctx context.Context, d socket.Dialer) (*Libvirt, error) {
	ad := &abortDialer{inner: d}
	c := &Libvirt{l: libvirt.NewWithDialer(ad), d: ad, closed: make(chan struct{})}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.l.ConnectToURI(libvirt.QEMUSystem) }()
	select {
	case err := <-done:
		if err != nil {
			return nil, fmt.Errorf("%w: connecting to libvirtd: %w", ErrClosed, err)
		}
		return c, nil
	case <-ctx.Done():
	}
	// Closing the socket fails the pending RPC; ConnectToURI then returns.
	ad.abort()
	if err := <-done; err == nil {
		_ = c.l.Disconnect()
	}
	return nil, fmt.Errorf("%w: connecting to libvirtd: %w", ErrTimeout, ctx.Err())
}

// Conn returns the go-libvirt connection, for calls this package does not
// wrap (DomainBackupBegin, checkpoints). Bound them yourself: only Close
// reclaims an RPC that libvirt never answers.
func (c *Libvirt) Conn() *libvirt.Libvirt { return c.l }

// Abandoned returns how many RPCs were given up on and still wait for
// libvirt's answer; Close fails them.
func (c *Libvirt) Abandoned() int { return int(c.abandoned.Load()) }

// Done is closed once the connection is closed or lost.
func (c *Libvirt) Done() <-chan struct{} { return c.l.Disconnected() }

// Close disconnects from libvirtd. Pending and later calls fail with
// ErrClosed. libvirt's connect-close RPC gets libvirtCloseTimeout; if
// libvirtd does not answer, the socket is closed under it. Machines opened
// on the connection stop working; close them first. It is idempotent.
func (c *Libvirt) Close() error {
	c.closeOnce.Do(func() {
		close(c.closed)
		done := make(chan error, 1)
		go func() { done <- c.l.Disconnect() }()
		select {
		case err := <-done:
			// libvirtd may drop the socket before it answers the
			// disconnect (a stream or an abandoned call still open): the
			// connection is closed either way.
			if !errors.Is(err, libvirt.ErrInterrupted) {
				c.closeErr = err
			}
		case <-time.After(libvirtCloseTimeout):
			c.d.abort()
			<-done // the aborted socket fails the RPC at once
			c.closeErr = fmt.Errorf("%w: libvirtd did not answer the disconnect within %s; the socket was closed", ErrTimeout, libvirtCloseTimeout)
		}
		c.d.abort() // refuse reconnects; a no-op on a closed socket
		if c.closeErr != nil {
			c.closeErr = fmt.Errorf("hypervisor: closing the libvirt connection: %w", c.closeErr)
		}
	})
	return c.closeErr
}

// call runs fn bounded by ctx and maps its error with libvirtError.
func call[T any](ctx context.Context, c *Libvirt, op string, fn func() (T, error)) (T, error) {
	var zero T
	if isClosed(c.closed) {
		return zero, fmt.Errorf("%w: libvirt %s: connection closed", ErrClosed, op)
	}
	if err := ctx.Err(); err != nil {
		return zero, fmt.Errorf("%w: libvirt %s: %w", ErrTimeout, op, err)
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	v, err := bounded(ctx, c.closed, &c.abandoned, nil, fn)
	switch {
	case errors.Is(err, errGaveUp):
		if isClosed(c.closed) {
			return zero, fmt.Errorf("%w: libvirt %s: connection closed while waiting", ErrClosed, op)
		}
		return zero, fmt.Errorf("%w: libvirt %s: %w", ErrTimeout, op, ctx.Err())
	case err != nil:
		return zero, libvirtError(op, err)
	}
	return v, nil
}

// libvirtError maps an error of a lifecycle RPC (see Libvirt).
func libvirtError(op string, err error) error {
	var le libvirt.Error
	if !errors.As(err, &le) {
		if errors.Is(err, libvirt.ErrUnsupported) {
			return fmt.Errorf("%w: libvirt %s: %w", ErrLibvirt, op, err)
		}
		return fmt.Errorf("%w: libvirt %s: connection: %w", ErrClosed, op, err)
	}
	switch libvirt.ErrorNumber(le.Code) {
	case libvirt.ErrNoDomain:
		return fmt.Errorf("%w: libvirt %s: %w", ErrNotFound, op, le)
	case libvirt.ErrOperationTimeout:
		return fmt.Errorf("%w: libvirt %s: %w", ErrTimeout, op, le)
	}
	return fmt.Errorf("%w: libvirt %s: %w", ErrLibvirt, op, le)
}

// isLibvirtCode reports whether err wraps a libvirt error with code.
func isLibvirtCode(err error, code libvirt.ErrorNumber) bool {
	var le libvirt.Error
	return errors.As(err, &le) && libvirt.ErrorNumber(le.Code) == code
}

// lookup returns the domain called name.
func (c *Libvirt) lookup(ctx context.Context, name string) (libvirt.Domain, error) {
	return call(ctx, c, "lookup "+name, func() (libvirt.Domain, error) { return c.l.DomainLookupByName(name) })
}

// LookupDomain returns the domain called name (ErrNotFound if libvirt
// knows none).
func (c *Libvirt) LookupDomain(ctx context.Context, name string) (libvirt.Domain, error) {
	return c.lookup(ctx, name)
}

// DefineDomain defines (or redefines) a persistent domain from its XML,
// which libvirt validates against its schema, and returns its name and
// UUID. The domain is not started.
func (c *Libvirt) DefineDomain(ctx context.Context, xml string) (name, uuid string, err error) {
	dom, err := call(ctx, c, "define", func() (libvirt.Domain, error) {
		return c.l.DomainDefineXMLFlags(xml, libvirt.DomainDefineValidate)
	})
	if err != nil {
		return "", "", err
	}
	return dom.Name, FormatUUID(dom.UUID), nil
}

// StartDomain starts a defined domain. A domain that is already running is
// ErrLibvirt (libvirt's "operation invalid").
func (c *Libvirt) StartDomain(ctx context.Context, name string) error {
	dom, err := c.lookup(ctx, name)
	if err != nil {
		return err
	}
	_, err = call(ctx, c, "start "+name, func() (libvirt.Domain, error) { return c.l.DomainCreateWithFlags(dom, 0) })
	return err
}

// ShutdownDomain shuts a domain down: it presses the ACPI power button,
// waits up to grace for the guest to power off, and then destroys the
// domain (see DestroyDomain) and waits until it is shut off. forced
// reports that it had to destroy it, also when libvirt refused the power
// button (a domain without ACPI). A domain that is not running is left
// alone. ctx bounds the whole: give it grace plus time for the destroy (a
// QEMU that ignores SIGTERM gets SIGKILL from libvirt after about 10 s).
func (c *Libvirt) ShutdownDomain(ctx context.Context, name string, grace time.Duration) (forced bool, err error) {
	dom, err := c.lookup(ctx, name)
	if err != nil {
		return false, err
	}
	st, err := c.state(ctx, dom)
	if err != nil || st == DomainShutoff {
		return false, err
	}
	_, perr := call(ctx, c, "shutdown "+name, func() (struct{}, error) {
		return struct{}{}, c.l.DomainShutdownFlags(dom, libvirt.DomainShutdownAcpiPowerBtn)
	})
	switch {
	case perr == nil:
		gctx, cancel := context.WithTimeout(ctx, grace)
		off, werr := c.waitShutoff(gctx, dom)
		cancel()
		if off {
			return false, nil
		}
		if werr != nil && !errors.Is(werr, ErrTimeout) {
			return false, werr
		}
		if ctx.Err() != nil {
			return false, fmt.Errorf("%w: shutdown %s: the guest did not power off: %w", ErrTimeout, name, ctx.Err())
		}
	case errors.Is(perr, ErrLibvirt):
		// The button was refused; if because the domain stopped
		// meanwhile, the destroy below finds it off.
	default:
		return false, fmt.Errorf("hypervisor: shutdown %s: %w", name, perr)
	}
	if err := c.destroy(ctx, dom); err != nil {
		return true, err
	}
	off, err := c.waitShutoff(ctx, dom)
	if !off && err == nil {
		err = fmt.Errorf("%w: shutdown %s: not shut off after destroy", ErrTimeout, name)
	}
	return true, err
}

// waitShutoff polls dom's state until it is shut off or ctx ends
// (ErrTimeout).
func (c *Libvirt) waitShutoff(ctx context.Context, dom libvirt.Domain) (bool, error) {
	t := time.NewTicker(shutdownPoll)
	defer t.Stop()
	for {
		st, err := c.state(ctx, dom)
		if err != nil {
			return false, err
		}
		if st == DomainShutoff {
			return true, nil
		}
		select {
		case <-ctx.Done():
			return false, fmt.Errorf("%w: waiting for %s to shut off (it is %s): %w", ErrTimeout, dom.Name, st, ctx.Err())
		case <-t.C:
		}
	}
}

// DestroyDomain stops a domain at once (libvirt sends QEMU SIGTERM, then
// SIGKILL); the guest is not asked. A domain that is not running is not an
// error.
func (c *Libvirt) DestroyDomain(ctx context.Context, name string) error {
	dom, err := c.lookup(ctx, name)
	if err != nil {
		return err
	}
	return c.destroy(ctx, dom)
}

// destroy destroys dom; not running is not an error.
func (c *Libvirt) destroy(ctx context.Context, dom libvirt.Domain) error {
	_, err := call(ctx, c, "destroy "+dom.Name, func() (struct{}, error) {
		return struct{}{}, c.l.DomainDestroyFlags(dom, 0)
	})
	if err != nil && isLibvirtCode(err, libvirt.ErrOperationInvalid) {
		if st, serr := c.state(ctx, dom); serr == nil && st == DomainShutoff {
			return nil
		}
	}
	return err
}

// UndefineDomain removes a domain's definition; its disk images stay. A
// running domain goes on running as a transient domain until it stops.
// libvirt's metadata of the domain's snapshots and checkpoints and its
// managed-save image are removed with it (the bitmaps in the images stay);
// its NVRAM (UEFI variables) file is kept unless removeNVRAM.
func (c *Libvirt) UndefineDomain(ctx context.Context, name string, removeNVRAM bool) error {
	dom, err := c.lookup(ctx, name)
	if err != nil {
		return err
	}
	flags := libvirt.DomainUndefineManagedSave | libvirt.DomainUndefineSnapshotsMetadata | libvirt.DomainUndefineCheckpointsMetadata
	if removeNVRAM {
		flags |= libvirt.DomainUndefineNvram
	} else {
		flags |= libvirt.DomainUndefineKeepNvram
	}
	_, err = call(ctx, c, "undefine "+name, func() (struct{}, error) {
		return struct{}{}, c.l.DomainUndefineFlags(dom, flags)
	})
	return err
}

// DomainXML returns a domain's XML: the running configuration (with
// libvirt's aliases and node indexes), or with inactive the persistent
// definition that the next start uses. Secrets (VNC passwords) are left
// out, as libvirt does by default.
func (c *Libvirt) DomainXML(ctx context.Context, name string, inactive bool) (string, error) {
	dom, err := c.lookup(ctx, name)
	if err != nil {
		return "", err
	}
	var flags libvirt.DomainXMLFlags
	if inactive {
		flags = libvirt.DomainXMLInactive
	}
	return call(ctx, c, "dumpxml "+name, func() (string, error) { return c.l.DomainGetXMLDesc(dom, flags) })
}

// DomainState is a domain's state, as libvirt names it.
type DomainState string

// Domain states.
const (
	DomainNoState      DomainState = "nostate"
	DomainRunning      DomainState = "running"
	DomainBlocked      DomainState = "blocked"
	DomainPaused       DomainState = "paused"
	DomainShuttingDown DomainState = "shutdown" // being shut down
	DomainShutoff      DomainState = "shutoff"
	DomainCrashed      DomainState = "crashed"
	DomainPMSuspended  DomainState = "pmsuspended"
)

// domainStates maps libvirt's state numbers.
var domainStates = map[libvirt.DomainState]DomainState{
	libvirt.DomainNostate:     DomainNoState,
	libvirt.DomainRunning:     DomainRunning,
	libvirt.DomainBlocked:     DomainBlocked,
	libvirt.DomainPaused:      DomainPaused,
	libvirt.DomainShutdown:    DomainShuttingDown,
	libvirt.DomainShutoff:     DomainShutoff,
	libvirt.DomainCrashed:     DomainCrashed,
	libvirt.DomainPmsuspended: DomainPMSuspended,
}

// DomainState returns a domain's state.
func (c *Libvirt) DomainState(ctx context.Context, name string) (DomainState, error) {
	dom, err := c.lookup(ctx, name)
	if err != nil {
		return "", err
	}
	return c.state(ctx, dom)
}

// state returns dom's state.
func (c *Libvirt) state(ctx context.Context, dom libvirt.Domain) (DomainState, error) {
	n, err := call(ctx, c, "state of "+dom.Name, func() (int32, error) {
		st, _, err := c.l.DomainGetState(dom, 0)
		return st, err
	})
	if err != nil {
		return "", err
	}
	if s, ok := domainStates[libvirt.DomainState(n)]; ok {
		return s, nil
	}
	return DomainState(fmt.Sprintf("state-%d", n)), nil
}

// FormatUUID renders a libvirt UUID in its canonical text form.
func FormatUUID(u libvirt.UUID) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// LibvirtMachine is a libvirt domain as a Machine: its monitor through
// libvirt (LibvirtQMP) and its guest agent through libvirt
// (guestagent.Libvirt).
type LibvirtMachine struct {
	name  string
	dom   libvirt.Domain
	qmp   *LibvirtQMP
	agent *guestagent.Libvirt
	conn  *Libvirt
	owned bool // the machine closes conn
}

var _ Machine = (*LibvirtMachine)(nil)

// OpenLibvirt connects to libvirtd at socketPath and opens the domain
// called domain as a machine that owns the connection: its Close
// disconnects. See OpenMachine.
func OpenLibvirt(ctx context.Context, socketPath, domain string, opts ...QMPOption) (*LibvirtMachine, error) {
	c, err := DialLibvirt(ctx, socketPath)
	if err != nil {
		return nil, fmt.Errorf("hypervisor: open domain %s: %w", domain, err)
	}
	m, err := c.OpenMachine(ctx, domain, opts...)
	if err != nil {
		_ = c.Close()
		return nil, err
	}
	m.owned = true
	return m, nil
}

// OpenMachine opens the domain called domain on this connection: it looks
// it up and registers for its QMP events, bounded by ctx. The options are
// NewLibvirtQMP's. The machine's Close leaves the connection open.
func (c *Libvirt) OpenMachine(ctx context.Context, domain string, opts ...QMPOption) (*LibvirtMachine, error) {
	dom, err := c.lookup(ctx, domain)
	if err != nil {
		return nil, fmt.Errorf("hypervisor: open domain %s: %w", domain, err)
	}
	if isClosed(c.closed) {
		return nil, fmt.Errorf("%w: open domain %s: connection closed", ErrClosed, domain)
	}
	q, err := NewLibvirtQMP(ctx, c.l, dom, opts...)
	if err != nil {
		return nil, fmt.Errorf("hypervisor: open domain %s: %w", domain, err)
	}
	return &LibvirtMachine{name: dom.Name, dom: dom, qmp: q, agent: guestagent.NewLibvirt(c.l, dom), conn: c}, nil
}

// Name implements Machine: the libvirt domain name.
func (m *LibvirtMachine) Name() string { return m.name }

// UUID returns the domain's UUID in canonical text form.
func (m *LibvirtMachine) UUID() string { return FormatUUID(m.dom.UUID) }

// Domain returns the go-libvirt handle of the domain.
func (m *LibvirtMachine) Domain() libvirt.Domain { return m.dom }

// QMP implements Machine.
func (m *LibvirtMachine) QMP() QMP { return m.qmp }

// LibvirtQMP returns the monitor as its concrete type (Abandoned, Done).
func (m *LibvirtMachine) LibvirtQMP() *LibvirtQMP { return m.qmp }

// Libvirt returns the connection the machine runs on.
func (m *LibvirtMachine) Libvirt() *Libvirt { return m.conn }

// Agent implements Machine: the guest agent through libvirt, freeze and
// thaw through virDomainFSFreeze and virDomainFSThaw (see
// guestagent.Libvirt). Every caller shares the machine's one transport, so
// that freeze, thaw and freeze status stay in call order; its Close does
// nothing (a guestagent.Client around it may be closed freely), and the
// machine's Close ends it.
func (m *LibvirtMachine) Agent() guestagent.Transport { return sharedAgent{m.agent} }

// Close implements Machine: it closes the monitor and the agent transport,
// and the connection when the machine owns it (OpenLibvirt). The domain
// keeps running.
func (m *LibvirtMachine) Close() error {
	_ = m.agent.Close()
	err := m.qmp.Close()
	if m.owned {
		err = errors.Join(err, m.conn.Close())
	}
	if err != nil {
		return fmt.Errorf("hypervisor: close domain %s: %w", m.name, err)
	}
	return nil
}

// sharedAgent is the machine's agent transport with a Close that leaves
// it open.
type sharedAgent struct{ a *guestagent.Libvirt }

// Execute implements guestagent.Transport.
func (s sharedAgent) Execute(ctx context.Context, command string, args any) (json.RawMessage, error) {
	return s.a.Execute(ctx, command, args)
}

// Close implements guestagent.Transport; the machine's Close closes the
// transport.
func (sharedAgent) Close() error { return nil }

// abortDialer wraps a go-libvirt dialer and can close the connection from
// outside, which is the only way to fail go-libvirt's pending RPCs.
type abortDialer struct {
	inner socket.Dialer

	mu      sync.Mutex
	conn    net.Conn
	aborted bool
}

// Dial implements socket.Dialer; it refuses once aborted.
func (d *abortDialer) Dial() (net.Conn, error) {
	d.mu.Lock()
	if d.aborted {
		d.mu.Unlock()
		return nil, net.ErrClosed
	}
	d.mu.Unlock()
	conn, err := d.inner.Dial()
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.aborted {
		_ = conn.Close()
		return nil, net.ErrClosed
	}
	d.conn = conn
	return conn, nil
}

// abort closes the connection and refuses new ones.
func (d *abortDialer) abort() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.aborted = true
	if d.conn != nil {
		_ = d.conn.Close()
	}
}
