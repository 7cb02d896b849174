package agenttest

import (
	"bufio"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// Agent is a fake QEMU guest agent. Set its exported fields before it
// serves (SetFault changes the fault later); its state is safe for
// concurrent use.
type Agent struct {
	// Version is what guest-info reports; "" means "7.2.22".
	Version string
	// FileSystems are what guest-get-fsinfo reports and the freeze
	// commands freeze; nil means DefaultFileSystems().
	FileSystems []FileSystem
	// Fault, if non-nil, picks the Action for each command.
	Fault Fault
	// Exec, if non-nil, decides what a program started with guest-exec
	// does; by default it exits 0 at once without output.
	Exec func(path string, args []string, input []byte) ExecResult
	// QuietReset, if true, makes the agent reset its parser on 0xFF
	// without the JSON parse error the real agent sends for that byte.
	QuietReset bool

	initOnce sync.Once
	done     chan struct{}
	wg       sync.WaitGroup

	mu        sync.Mutex
	closed    bool
	listeners []net.Listener
	conns     map[net.Conn]bool
	frozen    map[string]bool // frozen mount points
	isFrozen  bool            // the agent's frozen state (ga_is_frozen)
	commands  []Command
	prevReply []byte
	procs     map[int]*proc
	nextPID   int
}

// proc is a program started with guest-exec.
type proc struct {
	res     ExecResult
	capture bool
	polls   int
}

// New returns a thawed agent with the default file systems.
func New() *Agent { return &Agent{} }

func (a *Agent) init() {
	a.initOnce.Do(func() {
		a.done = make(chan struct{})
		a.conns = map[net.Conn]bool{}
		a.frozen = map[string]bool{}
		a.procs = map[int]*proc{}
		a.nextPID = 1000
		if a.Version == "" {
			a.Version = "7.2.22"
		}
		if a.FileSystems == nil {
			a.FileSystems = DefaultFileSystems()
		}
	})
}

// Start serves the agent on a fresh unix socket and returns its path. The
// agent is closed when t ends.
func (a *Agent) Start(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "agenttest") // short: unix socket paths are limited
	if err != nil {
		t.Fatalf("agenttest: %v", err)
	}
	path := filepath.Join(dir, "agent.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		_ = os.RemoveAll(dir)
		t.Fatalf("agenttest: %v", err)
	}
	a.init()
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		_ = a.Serve(l)
	}()
	t.Cleanup(func() {
		_ = a.Close()
		_ = os.RemoveAll(dir)
	})
	return path
}

// Pipe serves the agent on one end of a net.Pipe and returns the other.
// The agent is closed when t ends.
func (a *Agent) Pipe(t testing.TB) net.Conn {
	t.Helper()
	client, server := net.Pipe()
	a.init()
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		_ = a.ServeConn(server)
	}()
	t.Cleanup(func() {
		_ = client.Close()
		_ = a.Close()
	})
	return client
}

// Serve accepts connections on l and serves them one at a time, as QEMU's
// character device does, until l or the agent is closed.
func (a *Agent) Serve(l net.Listener) error {
	a.init()
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		_ = l.Close()
		return net.ErrClosed
	}
	a.listeners = append(a.listeners, l)
	a.mu.Unlock()
	for {
		conn, err := l.Accept()
		if err != nil {
			return err
		}
		_ = a.ServeConn(conn)
	}
}

// ServeConn speaks the protocol on conn until the peer closes it, a fault
// drops it, or the agent is closed. It closes conn.
func (a *Agent) ServeConn(conn net.Conn) error {
	a.init()
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		_ = conn.Close()
		return net.ErrClosed
	}
	a.conns[conn] = true
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		delete(a.conns, conn)
		a.mu.Unlock()
		_ = conn.Close()
	}()
	r := bufio.NewReader(conn)
	for {
		raw, err := readRequest(r)
		var pe *parseError
		switch {
		case errors.Is(err, errReset):
			if !a.QuietReset {
				err = a.write(conn, replyTo(Command{}, nil, &ErrorReply{"GenericError", "JSON parse error, stray '\uFFFD'"}))
			} else {
				err = nil
			}
		case errors.As(err, &pe):
			err = a.write(conn, replyTo(Command{}, nil, &ErrorReply{"GenericError", pe.desc}))
		case err != nil:
		default:
			c, e := decodeRequest(raw)
			if e != nil {
				err = a.write(conn, replyTo(c, nil, e))
			} else {
				err = a.handle(conn, c)
			}
		}
		if err != nil {
			return err
		}
	}
}

// errDropped reports a connection a fault closed.
var errDropped = errors.New("agenttest: connection dropped by a fault")

// handle runs one command with the Action its fault picks.
func (a *Agent) handle(conn net.Conn, c Command) error {
	a.mu.Lock()
	a.commands = append(a.commands, c)
	fault := a.Fault
	a.mu.Unlock()
	var act Action
	if fault != nil {
		act = fault(c)
	}
	if act.Wait != nil {
		select {
		case <-act.Wait:
		case <-a.done:
			return net.ErrClosed
		}
	}
	if act.Delay > 0 {
		t := time.NewTimer(act.Delay)
		select {
		case <-t.C:
		case <-a.done:
			t.Stop()
			return net.ErrClosed
		}
	}
	if act.Before != nil {
		if err := a.write(conn, act.Before); err != nil {
			return err
		}
	}
	if act.ReplayPrevious {
		a.mu.Lock()
		prev := a.prevReply
		a.mu.Unlock()
		if err := a.write(conn, prev); err != nil {
			return err
		}
	}
	var reply []byte
	if act.Error != nil {
		reply = replyTo(c, nil, act.Error)
	} else {
		ret, e := a.run(c)
		if act.Return != nil {
			ret, e = act.Return, nil
		}
		reply = replyTo(c, ret, e)
		if c.Name == "guest-sync-delimited" && e == nil {
			reply = append([]byte{syncMarker}, reply...)
		}
	}
	a.mu.Lock()
	a.prevReply = reply
	a.mu.Unlock()
	if act.Reply != nil {
		reply = act.Reply
	}
	switch {
	case act.NoReply:
	case act.Drop:
		_ = a.write(conn, reply[:len(reply)/2])
		return errDropped
	default:
		if err := a.write(conn, reply); err != nil {
			return err
		}
	}
	if act.Close {
		return errDropped
	}
	return nil
}

// write writes b to conn; a peer that stops reading cannot hold the agent
// for long.
func (a *Agent) write(conn net.Conn, b []byte) error {
	_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err := conn.Write(b)
	return err
}

// Close stops the agent: it closes its listeners and connections and ends
// every hang and delay. It waits for the connections Start and Pipe serve.
func (a *Agent) Close() error {
	a.init()
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		a.wg.Wait()
		return nil
	}
	a.closed = true
	close(a.done)
	for _, l := range a.listeners {
		_ = l.Close()
	}
	for c := range a.conns {
		_ = c.Close()
	}
	a.mu.Unlock()
	a.wg.Wait()
	return nil
}

// SetFault replaces the agent's fault while it serves.
func (a *Agent) SetFault(f Fault) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.Fault = f
}

// Frozen reports whether the agent is in its frozen state.
func (a *Agent) Frozen() bool {
	a.init()
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.isFrozen
}

// FrozenMounts returns the frozen mount points, sorted.
func (a *Agent) FrozenMounts() []string {
	a.init()
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for mp := range a.frozen {
		out = append(out, mp)
	}
	slices.Sort(out)
	return out
}

// SetFrozen puts the agent in its frozen state with the given mount points
// frozen, as a guest left frozen by an earlier client would be.
func (a *Agent) SetFrozen(mountpoints ...string) {
	a.init()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.isFrozen = true
	for _, mp := range mountpoints {
		a.frozen[mp] = true
	}
}

// Commands returns the commands the agent received, in order, including
// guest-sync-delimited.
func (a *Agent) Commands() []Command {
	a.init()
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.commands)
}

// Count returns how many commands named name the agent received.
func (a *Agent) Count(name string) int {
	n := 0
	for _, c := range a.Commands() {
		if c.Name == name {
			n++
		}
	}
	return n
}
