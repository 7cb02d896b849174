package hypervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/twinsnap/twinsnap/guestagent"
)

// QEMUMachine is a bare QEMU process (not managed by libvirt) reached
// through its QMP socket (-mon chardev=...,mode=control over a unix
// socket chardev) and its guest-agent socket (the chardev of the
// org.qemu.guest_agent.0 virtserialport).
//
// QEMU serves one client at a time on each socket chardev: while a
// QEMUMachine is open, nothing else can use the monitor, and while its
// agent connection is open, nothing else can use the agent (a second
// client connects but is not served until the first one leaves).
type QEMUMachine struct {
	name  string
	qmp   *QMPConn
	agent *agentConn
}

var _ Machine = (*QEMUMachine)(nil)

// OpenQEMU connects to a bare QEMU's monitor at qmpSocket and returns the
// machine. The guest agent at agentSocket is dialled lazily, on its first
// command, so that opening a machine does not take the agent from another
// client that is using it. An empty name is read from QEMU (query-name).
func OpenQEMU(ctx context.Context, name, qmpSocket, agentSocket string, opts ...QMPOption) (*QEMUMachine, error) {
	conn, err := DialQMP(ctx, "unix", qmpSocket, opts...)
	if err != nil {
		return nil, fmt.Errorf("hypervisor: open VM %s: %w", name, err)
	}
	if name == "" {
		var n struct {
			Name string `json:"name"`
		}
		if err := conn.Execute(ctx, "query-name", nil, &n); err != nil {
			_ = conn.Close()
			return nil, fmt.Errorf("hypervisor: open VM at %s: %w", qmpSocket, err)
		}
		name = n.Name
	}
	return &QEMUMachine{name: name, qmp: conn, agent: &agentConn{network: "unix", addr: agentSocket}}, nil
}

// Name implements Machine.
func (m *QEMUMachine) Name() string { return m.name }

// QMP implements Machine.
func (m *QEMUMachine) QMP() QMP { return m.qmp }

// Conn returns the monitor connection itself (for its go-qemu
// qmp.Monitor methods, Greeting and Done).
func (m *QEMUMachine) Conn() *QMPConn { return m.qmp }

// Agent implements Machine. The transport dials the agent socket on its
// first command and again after the connection is lost. Its Close only
// drops the current connection (so that a guestagent.Client wrapped
// around it can be closed to free the agent for another client); the
// machine's Close ends it for good.
func (m *QEMUMachine) Agent() guestagent.Transport { return m.agent }

// Close implements Machine: it closes the monitor and agent connections.
// The VM keeps running.
func (m *QEMUMachine) Close() error {
	m.agent.shutdown()
	if err := m.qmp.Close(); err != nil {
		return fmt.Errorf("hypervisor: close VM %s: %w", m.name, err)
	}
	return nil
}

// Quit stops QEMU at once with the QMP "quit" command (the guest is not
// asked to shut down; running jobs are cancelled) and waits until QEMU
// has closed the monitor, which it does after closing its images, so
// that persistent dirty bitmaps are stored and the images can be opened
// by other programs when Quit returns. The process may still be exiting.
func (m *QEMUMachine) Quit(ctx context.Context) error {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	m.agent.shutdown()
	err := m.qmp.Execute(ctx, "quit", nil, nil)
	if err != nil && !errors.Is(err, ErrClosed) {
		return fmt.Errorf("hypervisor: quit %s: %w", m.name, err)
	}
	select {
	case <-m.qmp.Done():
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: quit %s: QEMU did not close the monitor: %w", ErrTimeout, m.name, ctx.Err())
	}
}

// Powerdown asks the guest to shut down (an ACPI power button press,
// system_powerdown) and waits for QEMU's SHUTDOWN event, which comes once
// the guest has powered off; QEMU then exits unless started with
// -no-shutdown. A guest that ignores the button leaves Powerdown waiting
// until ctx ends (ErrTimeout): follow with Quit.
func (m *QEMUMachine) Powerdown(ctx context.Context) error {
	events, stop := m.qmp.Subscribe(func(ev Event) bool { return ev.Name == "SHUTDOWN" })
	defer stop()
	if err := m.qmp.Execute(ctx, "system_powerdown", nil, nil); err != nil {
		return fmt.Errorf("hypervisor: powerdown %s: %w", m.name, err)
	}
	select {
	case <-events:
		// A SHUTDOWN event, or the end of the stream: QEMU exited.
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: powerdown %s: no SHUTDOWN event: %w", ErrTimeout, m.name, ctx.Err())
	}
}

// agentConn is the guest-agent transport of a bare QEMU: a
// guestagent.Stream on the agent socket, dialled when first needed and
// again after the connection is lost.
type agentConn struct {
	network, addr string

	mu     sync.Mutex
	s      *guestagent.Stream
	closed bool
}

var _ guestagent.Transport = (*agentConn)(nil)

// Execute implements guestagent.Transport.
func (a *agentConn) Execute(ctx context.Context, command string, args any) (json.RawMessage, error) {
	s, err := a.stream(ctx)
	if err != nil {
		return nil, err
	}
	raw, err := s.Execute(ctx, command, args)
	if errors.Is(err, guestagent.ErrClosed) {
		a.drop(s)
	}
	return raw, err
}

// stream returns the current connection, dialling one if needed.
func (a *agentConn) stream(ctx context.Context) (*guestagent.Stream, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil, fmt.Errorf("%w: agent of a closed machine", guestagent.ErrClosed)
	}
	if a.s != nil {
		return a.s, nil
	}
	s, err := guestagent.Dial(ctx, a.network, a.addr)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w: %w", guestagent.ErrTimeout, err)
		}
		return nil, fmt.Errorf("%w: %w", guestagent.ErrClosed, err)
	}
	a.s = s
	return s, nil
}

// drop closes s if it is still the current connection.
func (a *agentConn) drop(s *guestagent.Stream) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.s == s {
		_ = a.s.Close()
		a.s = nil
	}
}

// Close implements guestagent.Transport: it drops the current connection
// (a call in progress ends with ErrClosed); the next command dials again.
func (a *agentConn) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.s != nil {
		err := a.s.Close()
		a.s = nil
		return err
	}
	return nil
}

// shutdown closes the connection for good.
func (a *agentConn) shutdown() {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	_ = a.Close()
}
