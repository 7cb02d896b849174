package cluster

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/twinsnap/twinsnap/cluster/pki"
)

// syncBuffer is a bytes.Buffer safe for concurrent writers, used to capture
// logs.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testCluster is one cluster's CA and node bundles, plus the certificates
// the refusal tests need.
type testCluster struct {
	ca    *pki.CA
	nodes []*pki.Bundle
}

func newTestCluster(t *testing.T, name string, n int) *testCluster {
	t.Helper()
	ca, err := pki.NewCA(name, time.Hour)
	if err != nil {
		t.Fatalf("NewCA: %v", err)
	}
	c := &testCluster{ca: ca}
	for i := range n {
		b, err := ca.IssueNode(fmt.Sprintf("n%d", i+1), time.Hour, "127.0.0.1")
		if err != nil {
			t.Fatalf("IssueNode: %v", err)
		}
		c.nodes = append(c.nodes, b)
	}
	return c
}

// newLayer starts a stream layer for bundle b on a loopback port, logging
// to logs, and closes it at the end of the test.
func newLayer(t *testing.T, b *pki.Bundle, logs io.Writer, opts ...TLSStreamOption) *TLSStreamLayer {
	t.Helper()
	if logs == nil {
		logs = io.Discard
	}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	opts = append([]TLSStreamOption{WithStreamLogger(logger)}, opts...)
	s, err := ListenTLSStream("127.0.0.1:0", b, nil, opts...)
	if err != nil {
		t.Fatalf("ListenTLSStream: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// acceptAll runs Accept in a loop and delivers the connections, until the
// layer is closed.
func acceptAll(s *TLSStreamLayer) <-chan net.Conn {
	ch := make(chan net.Conn, 16)
	go func() {
		defer close(ch)
		for {
			c, err := s.Accept()
			if err != nil {
				return
			}
			ch <- c
		}
	}()
	return ch
}

// nextConn waits up to d for Accept to deliver a connection.
func nextConn(t *testing.T, ch <-chan net.Conn, d time.Duration) net.Conn {
	t.Helper()
	select {
	case c, ok := <-ch:
		if !ok {
			t.Fatal("Accept stopped")
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	case <-time.After(d):
		t.Fatalf("no connection accepted within %v", d)
		return nil
	}
}

// readUntilClosed reads from c until an error and fails if the server did
// not close the connection within d.
func readUntilClosed(t *testing.T, what string, c net.Conn, d time.Duration) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("%s: connection still open after %v", what, d)
	}
}

func TestStreamLayerNodeToNode(t *testing.T) {
	c := newTestCluster(t, "c1", 2)
	server := newLayer(t, c.nodes[0], nil)
	client := newLayer(t, c.nodes[1], nil)
	accepted := acceptAll(server)

	out, err := client.Dial(raft.ServerAddress(server.Addr().String()), 5*time.Second)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer out.Close()
	in := nextConn(t, accepted, 5*time.Second)

	if _, err := out.Write([]byte("ping")); err != nil {
		t.Fatalf("write ping: %v", err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(in, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("read ping: %q %v", buf, err)
	}
	if _, err := in.Write([]byte("pong")); err != nil {
		t.Fatalf("write pong: %v", err)
	}
	if _, err := io.ReadFull(out, buf); err != nil || string(buf) != "pong" {
		t.Fatalf("read pong: %q %v", buf, err)
	}

	for _, tc := range []struct {
		conn net.Conn
		want string
	}{{in, "n2"}, {out, "n1"}} {
		cs := tc.conn.(*tls.Conn).ConnectionState()
		role, name, err := pki.PeerIdentity(cs)
		if err != nil || role != pki.RoleNode || name != tc.want || cs.Version != tls.VersionTLS13 {
			t.Fatalf("peer = %q %q %v (TLS %x), want node %q over TLS 1.3", role, name, err, cs.Version, tc.want)
		}
	}
}

func TestStreamLayerRefusesBadClients(t *testing.T) {
	c := newTestCluster(t, "c1", 2)
	other := newTestCluster(t, "c2", 1)
	admin, err := c.ca.IssueAdmin("alice", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	expired, err := c.ca.Issue(pki.Request{Role: pki.RoleNode, Name: "old", Validity: time.Second, NotBefore: time.Now().Add(-time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	server := newLayer(t, c.nodes[0], logs)
	good := newLayer(t, c.nodes[1], nil)
	accepted := acceptAll(server)
	addr := server.Addr().String()

	// tlsClient connects with the given client certificate (nil: none),
	// trusting this cluster's CA so that the server, not the client, is
	// the one to refuse.
	tlsClient := func(cert *tls.Certificate) (net.Conn, error) {
		cfg := pki.ClientConfig(c.nodes[1], pki.RoleNode, "")
		cfg.Certificates = nil
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if cert == nil {
				return &tls.Certificate{}, nil
			}
			return cert, nil
		}
		return tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	}
	adminCert, expiredCert, foreignCert := admin.TLSCertificate(), expired.TLSCertificate(), other.nodes[0].TLSCertificate()

	for i, tc := range []struct {
		what    string
		connect func() (net.Conn, error)
		logged  string // in the refusal's log line
	}{
		{"plaintext client", func() (net.Conn, error) {
			conn, err := net.Dial("tcp", addr)
			if err == nil {
				_, err = conn.Write([]byte("GET / HTTP/1.0\r\n\r\nraft bytes in the clear"))
			}
			return conn, err
		}, "does not look like a TLS handshake"},
		{"client without certificate", func() (net.Conn, error) { return tlsClient(nil) }, "didn't provide a certificate"},
		{"client of another CA", func() (net.Conn, error) { return tlsClient(&foreignCert) }, pki.ErrUntrusted.Error()},
		{"admin client", func() (net.Conn, error) { return tlsClient(&adminCert) }, pki.ErrWrongRole.Error()},
		{"expired client", func() (net.Conn, error) { return tlsClient(&expiredCert) }, pki.ErrExpired.Error()},
	} {
		before := strings.Count(logs.String(), "refused inbound Raft connection")
		conn, err := tc.connect()
		if err == nil {
			// TLS 1.3 clients finish before the server checks their
			// certificate; the server's refusal shows as a closed stream.
			readUntilClosed(t, tc.what, conn, 5*time.Second)
			_ = conn.Close()
		}

		// A good node still gets through, and it is the next connection
		// raft sees: the refused one was never delivered.
		out, err := good.Dial(raft.ServerAddress(addr), 5*time.Second)
		if err != nil {
			t.Fatalf("%s: good Dial afterwards: %v", tc.what, err)
		}
		if _, err := out.Write([]byte{byte(i)}); err != nil {
			t.Fatalf("%s: write: %v", tc.what, err)
		}
		in := nextConn(t, accepted, 5*time.Second)
		buf := make([]byte, 1)
		if _, err := io.ReadFull(in, buf); err != nil || buf[0] != byte(i) {
			t.Fatalf("%s: accepted connection is not the good client's: %v %v", tc.what, buf, err)
		}
		if _, name, _ := pki.PeerIdentity(in.(*tls.Conn).ConnectionState()); name != "n2" {
			t.Fatalf("%s: accepted peer %q", tc.what, name)
		}
		_ = out.Close()

		// The refusal was logged (the handshake goroutine may log just
		// after the good connection overtook it).
		deadline := time.Now().Add(5 * time.Second)
		for strings.Count(logs.String(), "refused inbound Raft connection") == before && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
		var line string
		for _, l := range lines {
			if strings.Contains(l, "refused inbound Raft connection") {
				line = l
			}
		}
		if strings.Count(logs.String(), "refused inbound Raft connection") != before+1 {
			t.Fatalf("%s: refusal not logged; logs:\n%s", tc.what, logs.String())
		}
		t.Logf("%s: %s", tc.what, line)
		if !strings.Contains(line, "component=raft-tls") || !strings.Contains(line, tc.logged) {
			t.Fatalf("%s: refusal log %q lacks component or %q", tc.what, line, tc.logged)
		}
	}
}

func TestStreamLayerDialRefusesForeignServer(t *testing.T) {
	c := newTestCluster(t, "c1", 1)
	other := newTestCluster(t, "c2", 1)
	foreign := newLayer(t, other.nodes[0], nil)
	accepted := acceptAll(foreign)
	local := newLayer(t, c.nodes[0], nil)

	conn, err := local.Dial(raft.ServerAddress(foreign.Addr().String()), 5*time.Second)
	if err == nil {
		_ = conn.Close()
		t.Fatal("Dial to a server of another cluster succeeded")
	}
	if !errors.Is(err, pki.ErrUntrusted) {
		t.Fatalf("Dial error = %v, want pki.ErrUntrusted", err)
	}
	select {
	case c := <-accepted:
		t.Fatalf("foreign server accepted %v", c.RemoteAddr())
	case <-time.After(200 * time.Millisecond):
	}

	// Nor may a stream layer serve with an admin certificate.
	admin, err := c.ca.IssueAdmin("alice", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ListenTLSStream("127.0.0.1:0", admin, nil); !errors.Is(err, pki.ErrWrongRole) {
		t.Fatalf("ListenTLSStream with admin bundle = %v, want pki.ErrWrongRole", err)
	}
}

func TestStreamLayerSilentClientDoesNotBlockAccept(t *testing.T) {
	const bound = 2 * time.Second
	c := newTestCluster(t, "c1", 2)
	logs := &syncBuffer{}
	server := newLayer(t, c.nodes[0], logs, WithStreamHandshakeTimeout(bound))
	good := newLayer(t, c.nodes[1], nil)
	accepted := acceptAll(server)
	addr := server.Addr().String()

	var silent []net.Conn
	for range 3 {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		silent = append(silent, conn)
	}

	start := time.Now()
	out, err := good.Dial(raft.ServerAddress(addr), bound)
	if err != nil {
		t.Fatalf("good Dial behind silent clients: %v", err)
	}
	defer out.Close()
	nextConn(t, accepted, bound)
	if elapsed := time.Since(start); elapsed >= bound {
		t.Fatalf("good client accepted after %v, not within the %v handshake bound", elapsed, bound)
	}
	t.Logf("good client accepted %v after connecting behind %d silent clients", time.Since(start).Round(time.Millisecond), len(silent))

	// The silent clients are cut off once the bound has passed.
	for _, conn := range silent {
		readUntilClosed(t, "silent client", conn, bound+3*time.Second)
	}
	if time.Since(start) < bound-100*time.Millisecond {
		t.Fatalf("silent clients were cut off after %v, before the %v bound", time.Since(start), bound)
	}
	deadline := time.Now().Add(2 * time.Second)
	for strings.Count(logs.String(), "refused inbound Raft connection") < len(silent) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := strings.Count(logs.String(), "refused inbound Raft connection"); n != len(silent) {
		t.Fatalf("%d refusals logged, want %d:\n%s", n, len(silent), logs.String())
	}
}

func TestStreamLayerClose(t *testing.T) {
	c := newTestCluster(t, "c1", 1)
	s := newLayer(t, c.nodes[0], nil)
	errc := make(chan error, 1)
	go func() {
		_, err := s.Accept()
		errc <- err
	}()
	// A silent client's handshake is aborted by Close, not waited for.
	conn, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Close took %v", d)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close = %v, want net.ErrClosed", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Accept still blocked after Close")
	}
	if _, err := s.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Accept = %v", err)
	}
	if _, err := s.Dial(raft.ServerAddress(s.Addr().String()), time.Second); err == nil {
		t.Fatal("Dial after Close succeeded")
	}
	readUntilClosed(t, "pending client", conn, 2*time.Second)
}

// testFSM records the data of every applied log entry.
type testFSM struct {
	mu      sync.Mutex
	applied []string
}

func (f *testFSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applied = append(f.applied, string(l.Data))
	return len(f.applied)
}

func (f *testFSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &testFSMSnapshot{data: strings.Join(f.applied, "\n")}, nil
}

func (f *testFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applied = nil
	if len(data) > 0 {
		f.applied = strings.Split(string(data), "\n")
	}
	return nil
}

func (f *testFSM) has(s string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, a := range f.applied {
		if a == s {
			return true
		}
	}
	return false
}

type testFSMSnapshot struct{ data string }

func (s *testFSMSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write([]byte(s.data)); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *testFSMSnapshot) Release() {}

func TestRaftOverTLSStreamLayer(t *testing.T) {
	c := newTestCluster(t, "c1", 3)
	raftLogs := &syncBuffer{}
	hlog := hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Info, Output: raftLogs})
	defer func() {
		if t.Failed() {
			t.Logf("raft logs:\n%s", raftLogs.String())
		}
	}()

	type node struct {
		raft      *raft.Raft
		fsm       *testFSM
		transport *raft.NetworkTransport
	}
	layers := make([]*TLSStreamLayer, len(c.nodes))
	var servers []raft.Server
	for i, b := range c.nodes {
		layers[i] = newLayer(t, b, raftLogs)
		servers = append(servers, raft.Server{
			Suffrage: raft.Voter,
			ID:       raft.ServerID(b.Name),
			Address:  raft.ServerAddress(layers[i].Addr().String()),
		})
	}
	var nodes []node
	for i, b := range c.nodes {
		conf := raft.DefaultConfig()
		conf.LocalID = raft.ServerID(b.Name)
		conf.HeartbeatTimeout = 500 * time.Millisecond
		conf.ElectionTimeout = 500 * time.Millisecond
		conf.LeaderLeaseTimeout = 250 * time.Millisecond
		conf.CommitTimeout = 20 * time.Millisecond
		conf.Logger = hlog.Named(b.Name)
		transport := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
			Stream:  layers[i],
			MaxPool: 3,
			Timeout: 5 * time.Second,
			Logger:  hlog.Named(b.Name + "-net"),
		})
		store := raft.NewInmemStore()
		snaps := raft.NewInmemSnapshotStore()
		if err := raft.BootstrapCluster(conf, store, store, snaps, transport, raft.Configuration{Servers: servers}); err != nil {
			t.Fatalf("bootstrap %s: %v", b.Name, err)
		}
		fsm := &testFSM{}
		r, err := raft.NewRaft(conf, fsm, store, store, snaps, transport)
		if err != nil {
			t.Fatalf("NewRaft %s: %v", b.Name, err)
		}
		nodes = append(nodes, node{raft: r, fsm: fsm, transport: transport})
	}
	defer func() {
		for _, n := range nodes {
			if err := n.raft.Shutdown().Error(); err != nil {
				t.Errorf("shutdown: %v", err)
			}
			_ = n.transport.Close()
		}
	}()

	start := time.Now()
	var leader *raft.Raft
	for deadline := time.Now().Add(15 * time.Second); leader == nil; {
		for _, n := range nodes {
			if n.raft.State() == raft.Leader {
				leader = n.raft
			}
		}
		if leader == nil {
			if time.Now().After(deadline) {
				t.Fatal("no leader elected within 15s")
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	_, leaderID := leader.LeaderWithID()
	t.Logf("leader %s elected after %v", leaderID, time.Since(start).Round(time.Millisecond))

	if err := leader.Apply([]byte("hello over mTLS"), 5*time.Second).Error(); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		all := true
		for _, n := range nodes {
			all = all && n.fsm.has("hello over mTLS")
		}
		if all {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("entry not applied on all three FSMs within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("entry applied on all three FSMs %v after the nodes started", time.Since(start).Round(time.Millisecond))
	if strings.Contains(raftLogs.String(), "refused inbound Raft connection") {
		t.Fatalf("a node refused another:\n%s", raftLogs.String())
	}
}
