package pki

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/url"
	"slices"
	"time"
)

// Role is what a certificate's holder may do in the cluster; servers
// authorise by it.
type Role string

// The roles a cluster CA issues.
const (
	// RoleNode is held by data nodes and the witness.
	RoleNode Role = "node"
	// RoleAdmin is held by operators using the admin CLI.
	RoleAdmin Role = "admin"
)

// URIScheme is the scheme of the URI SAN that names a certificate's holder:
// twinsnap://<role>/<name>.
const URIScheme = "twinsnap"

// maxNameLen bounds node ids and admin names.
const maxNameLen = 64

// Valid reports whether r is a role this package issues.
func (r Role) Valid() bool { return r == RoleNode || r == RoleAdmin }

// String returns the role as it appears in a certificate.
func (r Role) String() string { return string(r) }

// ValidName reports whether s may be used as a node id or admin name: 1 to
// 64 characters from [A-Za-z0-9._-], starting with a letter or digit, and
// not "ca" (which would collide with the CA's files in a bundle directory).
func ValidName(s string) error {
	if s == "" || len(s) > maxNameLen {
		return fmt.Errorf("%w: %q: must be 1 to %d characters", ErrInvalidName, s, maxNameLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := isAlnum(c)
		if i == 0 && !alnum {
			return fmt.Errorf("%w: %q: must start with a letter or digit", ErrInvalidName, s)
		}
		if !alnum && c != '.' && c != '_' && c != '-' {
			return fmt.Errorf("%w: %q: only letters, digits, '.', '_' and '-' are allowed", ErrInvalidName, s)
		}
	}
	if s == "ca" {
		return fmt.Errorf("%w: %q is reserved for the CA's files", ErrInvalidName, s)
	}
	return nil
}

// isAlnum reports whether c is an ASCII letter or digit.
func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// IdentityURI returns the URI SAN that names the holder of role: for example
// twinsnap://node/n1 or twinsnap://admin/alice.
func IdentityURI(role Role, name string) (*url.URL, error) {
	if !role.Valid() {
		return nil, fmt.Errorf("%w: unknown role %q", ErrInvalidName, role)
	}
	if err := ValidName(name); err != nil {
		return nil, err
	}
	return &url.URL{Scheme: URIScheme, Host: string(role), Path: "/" + name}, nil
}

// Identity returns the role and name a certificate was issued for, read from
// its single twinsnap:// URI SAN. It also checks that the extended key usage
// agrees with the role (a node certificate allows server and client
// authentication, an admin certificate client authentication only), so a
// certificate with a forged-looking mix is refused. Identity does not verify
// the chain; use [Verify] for a certificate received from a peer.
func Identity(cert *x509.Certificate) (Role, string, error) {
	if cert == nil {
		return "", "", ErrNoCertificate
	}
	var found *url.URL
	for _, u := range cert.URIs {
		if u.Scheme != URIScheme {
			continue
		}
		if found != nil {
			return "", "", fmt.Errorf("%w: more than one %s URI", ErrNoIdentity, URIScheme)
		}
		found = u
	}
	if found == nil {
		return "", "", fmt.Errorf("%w: no %s:// URI SAN", ErrNoIdentity, URIScheme)
	}
	u := found
	if u.User != nil || u.Port() != "" || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" || len(u.Path) < 2 || u.Path[0] != '/' {
		return "", "", fmt.Errorf("%w: malformed URI %q", ErrNoIdentity, u.String())
	}
	role, name := Role(u.Host), u.Path[1:]
	if !role.Valid() {
		return "", "", fmt.Errorf("%w: unknown role %q in %q", ErrNoIdentity, u.Host, u.String())
	}
	if err := ValidName(name); err != nil {
		return "", "", fmt.Errorf("%w: %w", ErrNoIdentity, err)
	}
	server := slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	client := slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	switch role {
	case RoleNode:
		if !server || !client {
			return "", "", fmt.Errorf("%w: node certificate without server and client authentication usage", ErrNoIdentity)
		}
	case RoleAdmin:
		if server || !client {
			return "", "", fmt.Errorf("%w: admin certificate must allow client authentication only", ErrNoIdentity)
		}
	}
	return role, name, nil
}

// Verify checks a peer's certificate chain (leaf first, as in
// tls.ConnectionState.PeerCertificates) against pool at time now, for the
// given extended key usage (x509.ExtKeyUsageServerAuth when the peer is a
// server, x509.ExtKeyUsageClientAuth when it is a client), and returns the
// leaf's identity. Only the leaf is used: the cluster CA signs leaves
// directly, so any intermediates the peer sent are ignored. Errors wrap
// [ErrNoCertificate], [ErrUntrusted], [ErrExpired], [ErrWrongRole] or
// [ErrNoIdentity].
func Verify(pool *x509.CertPool, chain []*x509.Certificate, usage x509.ExtKeyUsage, now time.Time) (Role, string, error) {
	if len(chain) == 0 {
		return "", "", ErrNoCertificate
	}
	leaf := chain[0]
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots:       pool,
		CurrentTime: now,
		KeyUsages:   []x509.ExtKeyUsage{usage},
	})
	if err != nil {
		return "", "", fmt.Errorf("verify %s: %w", describe(leaf), Classify(err))
	}
	return Identity(leaf)
}

// PeerIdentity returns the identity of the peer of a TLS connection built
// from [ServerConfig] or [ClientConfig]: those verify the peer during the
// handshake, so a connection that exists has a verified peer. On a
// connection built from any other configuration the result proves nothing.
func PeerIdentity(cs tls.ConnectionState) (Role, string, error) {
	if len(cs.PeerCertificates) == 0 {
		return "", "", ErrNoCertificate
	}
	return Identity(cs.PeerCertificates[0])
}

// describe names a certificate in error messages: its twinsnap URI if it has
// one, otherwise its subject.
func describe(cert *x509.Certificate) string {
	for _, u := range cert.URIs {
		if u.Scheme == URIScheme {
			return u.String()
		}
	}
	return fmt.Sprintf("%q", cert.Subject.String())
}
