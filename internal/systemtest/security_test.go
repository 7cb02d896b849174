package systemtest

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/cluster/pki"
	"github.com/twinsnap/twinsnap/internal/api"
	"github.com/twinsnap/twinsnap/internal/testenv"
)

// TestPortsRefuseStrangers connects to every port of a running daemon with
// no TLS, with TLS but no certificate, with a certificate of another CA
// and with a certificate of the wrong role, and expects each to be
// refused, while the right certificate works and the cluster stays
// healthy.
func TestPortsRefuseStrangers(t *testing.T) {
	c := testenv.StartCluster(t, testenv.ClusterOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	n := c.Nodes[testenv.DataA]

	ca, err := pki.LoadCA(c.CADir)
	if err != nil {
		t.Fatalf("load CA: %v", err)
	}
	foreignCA, err := pki.NewCA("foreign", time.Hour)
	if err != nil {
		t.Fatalf("foreign CA: %v", err)
	}
	foreignAdmin, err := foreignCA.IssueAdmin("admin", time.Hour)
	if err != nil {
		t.Fatalf("foreign admin: %v", err)
	}
	foreignNode, err := foreignCA.IssueNode(testenv.DataB, time.Hour, "127.0.0.1")
	if err != nil {
		t.Fatalf("foreign node: %v", err)
	}
	admin, err := ca.IssueAdmin("tester", time.Hour)
	if err != nil {
		t.Fatalf("admin: %v", err)
	}
	node, err := pki.LoadBundle(filepath.Join(c.Nodes[testenv.DataB].Dir, "tls"), testenv.DataB)
	if err != nil {
		t.Fatalf("node bundle: %v", err)
	}
	trust := admin.Pool()

	// The data port's client speaks first with a hello frame; sending
	// nothing and waiting shows whether the server kept the connection.
	const httpProbe, raftProbe, dataProbe = "GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n", "R", ""
	for _, port := range []struct{ name, addr, probe string }{{"api", n.APIAddr, httpProbe}, {"raft", n.RaftAddr, raftProbe}, {"data", n.DataAddr, dataProbe}} {
		// Plaintext: the server must not answer with anything useful.
		t.Run(port.name+"/plaintext", func(t *testing.T) {
			conn, err := net.DialTimeout("tcp", port.addr, 5*time.Second)
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			_, _ = conn.Write([]byte("GET /v1/nodes HTTP/1.1\r\nHost: x\r\n\r\n"))
			b, _ := io.ReadAll(conn)
			if len(b) > 0 && containsHTTPSuccess(b) {
				t.Fatalf("plaintext request answered: %q", b)
			}
		})
		for _, tc := range []struct {
			name  string
			certs []tls.Certificate
		}{
			{"no-certificate", nil},
			{"foreign-admin", []tls.Certificate{foreignAdmin.TLSCertificate()}},
			{"foreign-node", []tls.Certificate{foreignNode.TLSCertificate()}},
		} {
			t.Run(port.name+"/"+tc.name, func(t *testing.T) {
				if err := handshakeAndRead(port.addr, port.probe, tc.certs); err == nil {
					t.Fatalf("%s was accepted on the %s port", tc.name, port.name)
				}
			})
		}
	}
	t.Run("raft/admin-certificate", func(t *testing.T) {
		if err := handshakeAndRead(n.RaftAddr, raftProbe, []tls.Certificate{admin.TLSCertificate()}); err == nil {
			t.Fatalf("an admin certificate was accepted on the raft port")
		}
	})
	t.Run("data/admin-certificate", func(t *testing.T) {
		if err := handshakeAndRead(n.DataAddr, dataProbe, []tls.Certificate{admin.TLSCertificate()}); err == nil {
			t.Fatalf("an admin certificate was accepted on the data port")
		}
	})
	// Positive controls: the probe does see acceptance.
	t.Run("data/node-certificate", func(t *testing.T) {
		if err := handshakeAndRead(n.DataAddr, dataProbe, []tls.Certificate{node.TLSCertificate()}); err != nil {
			t.Fatalf("a node certificate was refused on the data port: %v", err)
		}
	})
	t.Run("raft/node-certificate", func(t *testing.T) {
		if err := handshakeAndRead(n.RaftAddr, raftProbe, []tls.Certificate{node.TLSCertificate()}); err != nil {
			t.Fatalf("a node certificate was refused on the raft port: %v", err)
		}
	})
	t.Run("api/admin-certificate-handshake", func(t *testing.T) {
		if err := handshakeAndRead(n.APIAddr, httpProbe, []tls.Certificate{admin.TLSCertificate()}); err != nil {
			t.Fatalf("an admin certificate was refused on the API port: %v", err)
		}
	})
	t.Run("api/node-certificate-on-admin-endpoint", func(t *testing.T) {
		cl := api.NewClientTLS([]string{n.APIAddr}, pki.ClientConfig(node, pki.RoleNode, ""))
		defer cl.Close()
		if _, err := cl.Nodes(ctx); !errors.Is(err, api.ErrUnauthorized) {
			t.Fatalf("node certificate on GET /v1/nodes: %v, want unauthorized", err)
		}
		if _, err := cl.Health(ctx); err != nil {
			t.Fatalf("node certificate on GET /v1/health: %v", err)
		}
	})
	t.Run("api/admin-certificate", func(t *testing.T) {
		cl := api.NewClientTLS([]string{n.APIAddr}, &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: trust, Certificates: []tls.Certificate{admin.TLSCertificate()}})
		defer cl.Close()
		if _, err := cl.Nodes(ctx); err != nil {
			t.Fatalf("admin certificate refused: %v", err)
		}
	})
	t.Run("api/old-tls", func(t *testing.T) {
		conf := &tls.Config{MaxVersion: tls.VersionTLS12, RootCAs: trust, Certificates: []tls.Certificate{admin.TLSCertificate()}}
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", n.APIAddr, conf)
		if err == nil {
			_ = conn.Close()
			t.Fatalf("a TLS 1.2 connection was accepted")
		}
	})
	// The daemon and the cluster are unharmed.
	if _, err := c.WaitLeader(ctx, ""); err != nil {
		t.Fatalf("cluster after the refusals: %v", err)
	}
	st := clusterStatus(ctx, t, c)
	for _, p := range st.Peers {
		if !p.Healthy {
			t.Fatalf("%s unhealthy after the refusals: %+v", p.ID, p)
		}
	}
}

// handshakeAndRead completes a TLS handshake with the given certificates,
// sends a probe and reads: in TLS 1.3 a server refuses a client
// certificate after the client's side of the handshake is done, so the
// refusal shows on the first read. It returns nil when the server accepted
// the connection (it answered, or waited silently for more), and the
// refusal otherwise. The probe is what a legitimate client sends first:
// an HTTP request on the API port, the Raft channel byte on the Raft port.
func handshakeAndRead(addr string, probe string, certs []tls.Certificate) error {
	// The server's identity is not what this checks; its refusals are.
	conf := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, Certificates: certs} //nolint:gosec // see above
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, conf)
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := conn.Write([]byte(probe)); err != nil {
		return err
	}
	buf := make([]byte, 512)
	_, err = conn.Read(buf)
	var ne net.Error
	if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		return nil
	}
	return err
}

func containsHTTPSuccess(b []byte) bool {
	return len(b) >= 12 && string(b[:9]) == "HTTP/1.1 " && b[9] == '2'
}
