package pki

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"
)

// handshake runs one TLS connection over loopback TCP between a server using
// srv and a client using cli. The server writes one byte after a successful
// handshake and the client reads it, so a refusal the server makes after the
// client's side of a TLS 1.3 handshake has finished still reaches the
// client. It returns each side's error.
func handshake(t *testing.T, srv, cli *tls.Config) (serverErr, clientErr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		tc := tls.Server(c, srv)
		if err := tc.HandshakeContext(ctx); err != nil {
			done <- err
			return
		}
		_, err = tc.Write([]byte{1})
		done <- err
	}()
	d := tls.Dialer{Config: cli}
	c, err := d.DialContext(ctx, "tcp", ln.Addr().String())
	if err == nil {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
		_ = c.Close()
	}
	return <-done, err
}

func TestTLSConfigs(t *testing.T) {
	ca := newTestCA(t, "c1")
	other := newTestCA(t, "c2")
	n1, _ := ca.IssueNode("n1", time.Hour, "127.0.0.1")
	n2, _ := ca.IssueNode("n2", time.Hour, "127.0.0.1")
	admin, _ := ca.IssueAdmin("alice", time.Hour)
	foreign, _ := other.IssueNode("n2", time.Hour, "127.0.0.1")
	expired, err := ca.Issue(Request{Role: RoleNode, Name: "n3", Validity: time.Second, NotBefore: time.Now().Add(-time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	raftPort := ServerConfig(n1, RoleNode)
	apiPort := ServerConfig(n1, RoleNode, RoleAdmin)
	noCert := ClientConfig(n2, RoleNode, "")
	noCert.Certificates = nil
	// A client that trusts this cluster's CA but holds another's certificate.
	// It sends that certificate even though the server's request names
	// another CA (Go's client would otherwise send none).
	foreignCert := foreign.TLSCertificate()
	foreignClient := ClientConfig(n2, RoleNode, "")
	foreignClient.Certificates = nil
	foreignClient.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return &foreignCert, nil
	}

	for _, tc := range []struct {
		what                string
		srv, cli            *tls.Config
		serverWant, cliWant error // nil: success
	}{
		{"node to raft port", raftPort, ClientConfig(n2, RoleNode, ""), nil, nil},
		{"node to raft port, expected id", raftPort, ClientConfig(n2, RoleNode, "n1"), nil, nil},
		{"admin to API port", apiPort, ClientConfig(admin, RoleNode, "n1"), nil, nil},
		{"admin to raft port", raftPort, ClientConfig(admin, RoleNode, ""), ErrWrongRole, errAny},
		{"client of other CA", raftPort, foreignClient, ErrUntrusted, errAny},
		{"expired client", raftPort, ClientConfig(expired, RoleNode, ""), ErrExpired, errAny},
		{"client without certificate", raftPort, noCert, errAny, errAny},
		{"server of other CA", ServerConfig(foreign, RoleNode), ClientConfig(n2, RoleNode, ""), errAny, ErrUntrusted},
		{"expired server", ServerConfig(expired, RoleNode), ClientConfig(n2, RoleNode, ""), errAny, ErrExpired},
		{"server is another node", raftPort, ClientConfig(n2, RoleNode, "n9"), errAny, ErrWrongName},
		{"admin as server", ServerConfig(admin, RoleNode), ClientConfig(n2, RoleNode, ""), errAny, ErrWrongRole},
		{"server with no allowed role", ServerConfig(n1), ClientConfig(n2, RoleNode, ""), ErrWrongRole, errAny},
	} {
		serverErr, clientErr := handshake(t, tc.srv, tc.cli)
		check := func(side string, got, want error) {
			switch {
			case want == nil:
				if got != nil {
					t.Fatalf("%s: %s failed: %v", tc.what, side, got)
				}
			case errors.Is(want, errAny):
				if got == nil {
					t.Fatalf("%s: %s succeeded, want an error", tc.what, side)
				}
			case !errors.Is(got, want):
				t.Fatalf("%s: %s error = %v, want %v", tc.what, side, got, want)
			}
		}
		// The standard library verifies the server side's chains itself, so
		// its errors need Classify; the client's come from this package.
		check("server", Classify(serverErr), tc.serverWant)
		check("client", clientErr, tc.cliWant)
	}
}

// errAny stands for "some error" in test tables.
var errAny = errors.New("any error")

func TestConfigsAreTLS13Only(t *testing.T) {
	ca := newTestCA(t, "c1")
	n1, _ := ca.IssueNode("n1", time.Hour, "127.0.0.1")
	old := ClientConfig(n1, RoleNode, "")
	old.MinVersion, old.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	serverErr, clientErr := handshake(t, ServerConfig(n1, RoleNode), old)
	if serverErr == nil || clientErr == nil {
		t.Fatalf("TLS 1.2 client accepted: server %v, client %v", serverErr, clientErr)
	}
	if cfg := ServerConfig(n1, RoleNode); cfg.MinVersion != tls.VersionTLS13 || cfg.ClientAuth != tls.RequireAndVerifyClientCert || !cfg.SessionTicketsDisabled {
		t.Fatalf("server config: min %x auth %v tickets off %v", cfg.MinVersion, cfg.ClientAuth, cfg.SessionTicketsDisabled)
	}
}
