package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/twinsnap/twinsnap/cluster/pki"
)

// Defaults of a TLSStreamLayer.
const (
	// DefaultHandshakeTimeout bounds an inbound TLS handshake and an
	// outbound one when raft passes no timeout.
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultMaxPendingHandshakes bounds the inbound handshakes in progress
	// at once; further connections wait in the listen backlog.
	DefaultMaxPendingHandshakes = 64
)

// ErrStreamClosed is returned by Accept after Close.
var ErrStreamClosed = fmt.Errorf("cluster: TLS stream layer closed: %w", net.ErrClosed)

// TLSStreamLayer is a raft.StreamLayer that carries Raft's traffic over
// mutually authenticated TLS 1.3 between the nodes of one cluster.
//
// Inbound connections are handshaken in the background, each in its own
// goroutine bounded by the handshake timeout, and Accept hands raft only
// connections whose handshake succeeded and whose peer holds a verified node
// certificate of the cluster. A client that connects and says nothing, a
// plaintext client, or a client with the wrong certificate therefore never
// reaches raft and never holds up the connections behind it; each refusal is
// logged. Dial handshakes within raft's timeout and returns only connections
// to a verified node.
type TLSStreamLayer struct {
	ln        net.Listener
	server    *tls.Config
	client    *tls.Config
	advertise net.Addr

	handshakeTimeout time.Duration
	maxPending       int
	log              *slog.Logger

	ctx     context.Context // cancelled by Close; aborts pending handshakes
	cancel  context.CancelFunc
	conns   chan net.Conn // handshaken, verified inbound connections
	pending chan struct{} // semaphore of inbound handshakes in progress
	wg      sync.WaitGroup
	once    sync.Once

	mu       sync.Mutex
	loopErr  error // why the accept loop stopped, if not Close
	loopDone chan struct{}
}

var _ raft.StreamLayer = (*TLSStreamLayer)(nil)

// TLSStreamOption adjusts a TLSStreamLayer.
type TLSStreamOption func(*TLSStreamLayer)

// WithStreamHandshakeTimeout sets the bound on an inbound handshake, and on
// an outbound one when raft passes no timeout (default
// DefaultHandshakeTimeout).
func WithStreamHandshakeTimeout(d time.Duration) TLSStreamOption {
	return func(s *TLSStreamLayer) {
		if d > 0 {
			s.handshakeTimeout = d
		}
	}
}

// WithStreamMaxPendingHandshakes sets how many inbound handshakes may be in
// progress at once (default DefaultMaxPendingHandshakes).
func WithStreamMaxPendingHandshakes(n int) TLSStreamOption {
	return func(s *TLSStreamLayer) {
		if n > 0 {
			s.maxPending = n
		}
	}
}

// WithStreamLogger sets the logger for refused connections (default
// slog.Default()); the layer adds component=raft-tls.
func WithStreamLogger(l *slog.Logger) TLSStreamOption {
	return func(s *TLSStreamLayer) {
		if l != nil {
			s.log = l
		}
	}
}

// NewTLSStreamLayer returns a stream layer that accepts Raft connections on
// ln and dials other nodes. server must verify client certificates against
// the cluster CA (as pki.ServerConfig does; the layer additionally refuses
// any connection without a verified chain or whose peer is not a node), and
// client must verify the server's identity (as pki.ClientConfig does; the
// layer additionally refuses a server that does not present a node
// identity). advertise is the address other nodes reach this one at; nil
// means ln.Addr(). The layer owns ln and closes it in Close.
func NewTLSStreamLayer(ln net.Listener, server, client *tls.Config, advertise net.Addr, opts ...TLSStreamOption) *TLSStreamLayer {
	if advertise == nil {
		advertise = ln.Addr()
	}
	s := &TLSStreamLayer{
		ln:               ln,
		server:           server,
		client:           client,
		advertise:        advertise,
		handshakeTimeout: DefaultHandshakeTimeout,
		maxPending:       DefaultMaxPendingHandshakes,
		log:              slog.Default(),
		conns:            make(chan net.Conn),
		loopDone:         make(chan struct{}),
	}
	for _, o := range opts {
		o(s)
	}
	s.log = s.log.With("component", "raft-tls")
	s.pending = make(chan struct{}, s.maxPending)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	go s.acceptLoop()
	return s
}

// ListenTLSStream listens on addr (host:port) and returns a stream layer
// that uses node bundle b for both directions: it accepts only nodes of b's
// cluster and dials only nodes of b's cluster.
func ListenTLSStream(addr string, b *pki.Bundle, advertise net.Addr, opts ...TLSStreamOption) (*TLSStreamLayer, error) {
	if role, name, err := b.Identity(); err != nil {
		return nil, fmt.Errorf("cluster: TLS stream layer: %w", err)
	} else if role != pki.RoleNode {
		return nil, fmt.Errorf("cluster: TLS stream layer needs a node certificate, got %s %q: %w", role, name, pki.ErrWrongRole)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("cluster: TLS stream layer: %w", err)
	}
	return NewTLSStreamLayer(ln, pki.ServerConfig(b, pki.RoleNode), pki.ClientConfig(b, pki.RoleNode, ""), advertise, opts...), nil
}

// Accept returns the next inbound connection whose TLS handshake completed
// and whose peer is a verified node. It returns an error only once the layer
// is closed or its listener has failed for good.
func (s *TLSStreamLayer) Accept() (net.Conn, error) {
	select {
	case <-s.ctx.Done():
		return nil, ErrStreamClosed
	default:
	}
	select {
	case c := <-s.conns:
		return c, nil
	case <-s.ctx.Done():
		return nil, ErrStreamClosed
	case <-s.loopDone:
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.loopErr == nil {
			return nil, ErrStreamClosed
		}
		return nil, s.loopErr
	}
}

// Close stops accepting, closes the listener, aborts handshakes in progress
// and closes handshaken connections not yet accepted. Connections already
// returned by Accept or Dial stay open; raft closes them.
func (s *TLSStreamLayer) Close() error {
	var err error
	s.once.Do(func() {
		s.cancel()
		err = s.ln.Close()
		<-s.loopDone
		s.wg.Wait()
	})
	return err
}

// Addr returns the advertised address.
func (s *TLSStreamLayer) Addr() net.Addr { return s.advertise }

// Dial connects to the node at address and completes a TLS 1.3 handshake,
// both within timeout (the handshake timeout if timeout is not positive). It
// returns an error, and no connection, unless the peer proved it holds a
// node certificate of this cluster.
func (s *TLSStreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	if timeout <= 0 {
		timeout = s.handshakeTimeout
	}
	ctx, cancel := context.WithTimeout(s.ctx, timeout)
	defer cancel()
	d := tls.Dialer{Config: s.client}
	c, err := d.DialContext(ctx, "tcp", string(address))
	if err != nil {
		return nil, fmt.Errorf("cluster: dial %s: %w", address, pki.Classify(err))
	}
	tc := c.(*tls.Conn)
	if err := checkStreamPeer(tc.ConnectionState(), false); err != nil {
		_ = tc.Close()
		return nil, fmt.Errorf("cluster: dial %s: %w", address, err)
	}
	return tc, nil
}

// acceptLoop accepts TCP connections and starts a bounded handshake for
// each, until Close or a permanent listener failure.
func (s *TLSStreamLayer) acceptLoop() {
	defer close(s.loopDone)
	var delay time.Duration
	for {
		select {
		case s.pending <- struct{}{}:
		case <-s.ctx.Done():
			return
		}
		raw, err := s.ln.Accept()
		if err != nil {
			<-s.pending
			if s.ctx.Err() != nil {
				return
			}
			if errors.Is(err, net.ErrClosed) {
				s.mu.Lock()
				s.loopErr = fmt.Errorf("cluster: TLS stream layer: %w", err)
				s.mu.Unlock()
				s.log.Error("listener failed; no longer accepting Raft connections", "error", err)
				return
			}
			// Transient (out of file descriptors, aborted connection):
			// back off as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed; retrying", "error", err, "retry_in", delay)
			select {
			case <-time.After(delay):
			case <-s.ctx.Done():
				return
			}
			continue
		}
		delay = 0
		s.wg.Add(1)
		go s.handshake(raw)
	}
}

// handshake completes the server side of one inbound connection within the
// handshake timeout and hands it to Accept, or closes and logs it.
func (s *TLSStreamLayer) handshake(raw net.Conn) {
	defer s.wg.Done()
	tc := tls.Server(raw, s.server)
	ctx, cancel := context.WithTimeout(s.ctx, s.handshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("TLS handshake not completed within %v: %w", s.handshakeTimeout, err)
	}
	if err == nil {
		err = checkStreamPeer(tc.ConnectionState(), true)
	}
	<-s.pending
	if err != nil {
		_ = raw.Close()
		if s.ctx.Err() == nil {
			s.log.Warn("refused inbound Raft connection", "remote", raw.RemoteAddr().String(), "error", pki.Classify(err))
		}
		return
	}
	if s.log.Enabled(s.ctx, slog.LevelDebug) {
		_, name, _ := pki.PeerIdentity(tc.ConnectionState())
		s.log.Debug("accepted inbound Raft connection", "remote", raw.RemoteAddr().String(), "node", name)
	}
	select {
	case s.conns <- tc:
	case <-s.ctx.Done():
		_ = tc.Close()
	}
}

// checkStreamPeer is the layer's own check of a handshaken connection, on
// top of what the TLS configuration verified: TLS 1.3 and a node peer. On
// the server side it also insists that the standard library verified the
// client's chain, so that a configuration that does not require verified
// client certificates fails closed.
func checkStreamPeer(cs tls.ConnectionState, inbound bool) error {
	if cs.Version != tls.VersionTLS13 {
		return fmt.Errorf("cluster: TLS version %s negotiated, 1.3 required", tls.VersionName(cs.Version))
	}
	if inbound && len(cs.VerifiedChains) == 0 {
		return fmt.Errorf("cluster: client certificate not verified: %w", pki.ErrNoCertificate)
	}
	role, name, err := pki.PeerIdentity(cs)
	if err != nil {
		return err
	}
	if role != pki.RoleNode {
		return fmt.Errorf("cluster: peer is %s %q, not a node: %w", role, name, pki.ErrWrongRole)
	}
	return nil
}
