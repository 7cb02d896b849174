package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// Channel bytes: the first byte a dialer writes on a node-to-node
// connection names the service it wants. Raft and write forwarding share
// one mutually authenticated TLS port.
const (
	chanRaft    byte = 'R'
	chanForward byte = 'F'
)

// muxTimeout bounds the wait for a new connection's channel byte.
const muxTimeout = 10 * time.Second

// mux splits the verified connections of a TLSStreamLayer into Raft's
// stream layer and the forwarding service.
type mux struct {
	layer   *TLSStreamLayer
	raft    chan net.Conn
	forward chan net.Conn
	log     *slog.Logger

	done chan struct{}
	once sync.Once
	wg   sync.WaitGroup
}

func newMux(layer *TLSStreamLayer, log *slog.Logger) *mux {
	m := &mux{
		layer:   layer,
		raft:    make(chan net.Conn),
		forward: make(chan net.Conn),
		log:     log,
		done:    make(chan struct{}),
	}
	m.wg.Add(1)
	go m.loop()
	return m
}

func (m *mux) loop() {
	defer m.wg.Done()
	for {
		conn, err := m.layer.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				m.log.Error("node-to-node listener failed", "err", err)
			}
			return
		}
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.route(conn)
		}()
	}
}

// route reads the channel byte and hands the connection over.
func (m *mux) route(conn net.Conn) {
	_ = conn.SetReadDeadline(time.Now().Add(muxTimeout))
	var b [1]byte
	if _, err := conn.Read(b[:]); err != nil {
		m.log.Warn("node connection sent no channel byte", "remote", conn.RemoteAddr().String(), "err", err)
		conn.Close()
		return
	}
	_ = conn.SetReadDeadline(time.Time{})
	var ch chan net.Conn
	switch b[0] {
	case chanRaft:
		ch = m.raft
	case chanForward:
		ch = m.forward
	default:
		m.log.Warn("node connection asked for an unknown channel", "remote", conn.RemoteAddr().String(), "channel", b[0])
		conn.Close()
		return
	}
	select {
	case ch <- conn:
	case <-m.done:
		conn.Close()
	}
}

// dial opens a verified connection to a node and selects a channel.
func (m *mux) dial(addr string, channel byte, timeout time.Duration) (net.Conn, error) {
	conn, err := m.layer.Dial(raft.ServerAddress(addr), timeout)
	if err != nil {
		return nil, err
	}
	_ = conn.SetWriteDeadline(time.Now().Add(timeout))
	if _, err := conn.Write([]byte{channel}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("cluster: selecting channel on %s: %w", addr, err)
	}
	_ = conn.SetWriteDeadline(time.Time{})
	return conn, nil
}

func (m *mux) close() error {
	var err error
	m.once.Do(func() {
		close(m.done)
		err = m.layer.Close()
		m.wg.Wait()
	})
	return err
}

// raftLayer is the raft.StreamLayer view of the mux.
type raftLayer struct{ m *mux }

var _ raft.StreamLayer = raftLayer{}

// Accept implements net.Listener.
func (l raftLayer) Accept() (net.Conn, error) {
	select {
	case c := <-l.m.raft:
		return c, nil
	case <-l.m.done:
		return nil, ErrStreamClosed
	}
}

// Close implements net.Listener; the mux is closed by its node.
func (l raftLayer) Close() error { return nil }

// Addr implements net.Listener.
func (l raftLayer) Addr() net.Addr { return l.m.layer.Addr() }

// Dial implements raft.StreamLayer.
func (l raftLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return l.m.dial(string(address), chanRaft, timeout)
}
