package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
)

// Sentinel errors. Every error of this package wraps one of them with %w, so
// callers decide with errors.Is.
var (
	// ErrUntrusted means a certificate does not chain to the cluster CA: it
	// was signed by another CA, or its signature is broken.
	ErrUntrusted = errors.New("pki: certificate not issued by this cluster's CA")
	// ErrExpired means a certificate is outside its validity period: expired
	// or not yet valid.
	ErrExpired = errors.New("pki: certificate expired or not yet valid")
	// ErrWrongRole means a certificate holds a role that may not be used
	// here, e.g. an admin certificate on the Raft port, or a certificate used
	// for a purpose its key usage forbids.
	ErrWrongRole = errors.New("pki: certificate role not allowed here")
	// ErrWrongName means the peer holds the expected role but is not the
	// expected holder (another node id).
	ErrWrongName = errors.New("pki: certificate names another holder")
	// ErrNoCertificate means the peer presented no certificate.
	ErrNoCertificate = errors.New("pki: peer presented no certificate")
	// ErrNoIdentity means a certificate carries no well-formed twinsnap
	// identity (a single twinsnap://<role>/<name> URI SAN that agrees with
	// its key usage).
	ErrNoIdentity = errors.New("pki: certificate carries no twinsnap identity")
	// ErrInvalidName means a node id, admin name, host or role given to this
	// package is not acceptable.
	ErrInvalidName = errors.New("pki: invalid name")
	// ErrKeyMismatch means a private key does not belong to its certificate.
	ErrKeyMismatch = errors.New("pki: private key does not match certificate")
	// ErrInsecureKey means a private key file (or the cluster key) is
	// readable by group or others.
	ErrInsecureKey = errors.New("pki: private key file is accessible by group or others")
	// ErrNoClusterKey means there is no cluster key: a node directory made
	// before cluster keys existed, or the zero ClusterKey. Operations that
	// need the key (sealing and opening share credentials) are refused; the
	// rest of the node works.
	ErrNoClusterKey = errors.New("pki: no cluster key")
	// ErrBadClusterKey means a cluster key file does not hold exactly
	// ClusterKeySize bytes or is not a regular file.
	ErrBadClusterKey = errors.New("pki: malformed cluster key")
	// ErrSealed means sealed bytes do not open: they were changed, sealed
	// under another cluster key, or sealed for another record (another aad).
	ErrSealed = errors.New("pki: sealed value does not open with this cluster key")
)

// Classify maps an error from certificate verification or a TLS handshake
// onto this package's sentinels, so that a server can log or count refusals
// by cause. The result wraps both the sentinel and err. Errors that already
// wrap a sentinel of this package, errors with no known cause and nil are
// returned unchanged.
//
// Classify is needed on the server side: with ClientAuth
// RequireAndVerifyClientCert the standard library verifies the client's
// chain itself and fails the handshake with its own x509 errors.
func Classify(err error) error {
	if err == nil {
		return nil
	}
	for _, s := range []error{ErrUntrusted, ErrExpired, ErrWrongRole, ErrWrongName, ErrNoCertificate, ErrNoIdentity} {
		if errors.Is(err, s) {
			return err
		}
	}
	var unknown x509.UnknownAuthorityError
	if errors.As(err, &unknown) {
		return fmt.Errorf("%w: %w", ErrUntrusted, err)
	}
	var invalid x509.CertificateInvalidError
	if errors.As(err, &invalid) {
		switch invalid.Reason {
		case x509.Expired:
			return fmt.Errorf("%w: %w", ErrExpired, err)
		case x509.IncompatibleUsage:
			return fmt.Errorf("%w: %w", ErrWrongRole, err)
		default:
			return fmt.Errorf("%w: %w", ErrUntrusted, err)
		}
	}
	var sig x509.InsecureAlgorithmError
	if errors.As(err, &sig) || errors.Is(err, x509.ErrUnsupportedAlgorithm) {
		return fmt.Errorf("%w: %w", ErrUntrusted, err)
	}
	var constraint x509.ConstraintViolationError
	if errors.As(err, &constraint) {
		return fmt.Errorf("%w: %w", ErrUntrusted, err)
	}
	var verr *tls.CertificateVerificationError
	if errors.As(err, &verr) {
		return fmt.Errorf("%w: %w", ErrUntrusted, err)
	}
	return err
}
