package pki

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"slices"
	"time"
)

// ServerConfig returns the TLS configuration of a twinsnap server (the Raft
// port, the HTTP API, snapshot replication) that holds bundle b and accepts
// clients holding one of the roles in allow; with no role, every client is
// refused.
//
// TLS 1.3 is the minimum. Clients must present a certificate, which the
// standard library verifies against the cluster CA only
// (RequireAndVerifyClientCert, ClientCAs = the bundle's CA) for client
// authentication usage; a VerifyConnection hook then reads the verified
// certificate's identity and fails the handshake with [ErrWrongRole] when
// its role is not allowed, e.g. an admin certificate on the Raft port.
// Session tickets are off so that no connection skips these checks by
// resuming an earlier session.
//
// Handshake failures reported by the standard library (unknown CA, expiry)
// carry its x509 errors; pass them through [Classify] to get this package's
// sentinels.
func ServerConfig(b *Bundle, allow ...Role) *tls.Config {
	allowed := slices.Clone(allow)
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		Certificates:           []tls.Certificate{b.TLSCertificate()},
		ClientAuth:             tls.RequireAndVerifyClientCert,
		ClientCAs:              b.Pool(),
		SessionTicketsDisabled: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.VerifiedChains) == 0 || len(cs.PeerCertificates) == 0 {
				return ErrNoCertificate
			}
			role, name, err := Identity(cs.PeerCertificates[0])
			if err != nil {
				return err
			}
			if !slices.Contains(allowed, role) {
				return fmt.Errorf("%w: %s %q may not connect here (allowed: %v)", ErrWrongRole, role, name, allowed)
			}
			return nil
		},
	}
}

// ClientConfig returns the TLS configuration of a twinsnap client holding
// bundle b that connects to a server which must hold role expectRole (in
// practice [RoleNode]: only node certificates allow server authentication)
// and, when serverName is not empty, whose identity name is serverName (the
// node id expected at that address).
//
// How the server is verified: peers are addressed by IP as often as by
// name, so host names are not what twinsnap trusts. The configuration sets
// InsecureSkipVerify, which turns off only the standard library's
// host-name-based check, and verifies in VerifyConnection instead, on every
// connection: the server's leaf certificate must chain to the cluster CA
// alone (RootCAs holds just that CA; no system roots), be valid now and
// allow server authentication ([Verify]); then its twinsnap:// identity
// must hold expectRole ([ErrWrongRole]) and, if given, the name serverName
// ([ErrWrongName]). A failure aborts the handshake with an error wrapping
// the matching sentinel, so the client never writes a byte to an
// unverified server. The DNS and IP SANs of node certificates are kept for
// tools such as curl that check host names.
func ClientConfig(b *Bundle, expectRole Role, serverName string) *tls.Config {
	pool := b.Pool()
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{b.TLSCertificate()},
		RootCAs:      pool,
		// Verification happens in VerifyConnection below, by identity
		// rather than host name; see the doc comment.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return checkServer(pool, cs, expectRole, serverName, time.Now())
		},
	}
}

// checkServer is ClientConfig's verification of a server.
func checkServer(pool *x509.CertPool, cs tls.ConnectionState, expectRole Role, serverName string, now time.Time) error {
	role, name, err := Verify(pool, cs.PeerCertificates, x509.ExtKeyUsageServerAuth, now)
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	if role != expectRole {
		return fmt.Errorf("%w: server is %s %q, expected a %s", ErrWrongRole, role, name, expectRole)
	}
	if serverName != "" && name != serverName {
		return fmt.Errorf("%w: server is %s %q, expected %q", ErrWrongName, role, name, serverName)
	}
	return nil
}
