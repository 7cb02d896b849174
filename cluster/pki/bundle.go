package pki

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Bundle is what one holder (a node or an admin) needs to take part in the
// cluster's TLS: the cluster CA's certificate, its own certificate and its
// private key. On disk it is a directory with ca.crt, <Name>.crt and
// <Name>.key.
type Bundle struct {
	// Name is the holder's node id or admin name, and the base name of its
	// files.
	Name string
	// CACert is the cluster CA's certificate, the only trust anchor.
	CACert *x509.Certificate
	// Cert is the holder's certificate, issued by CACert.
	Cert *x509.Certificate
	// Key is the holder's private key.
	Key crypto.Signer
	// ClusterKey is the cluster key, which [CA.Issue] sets for node bundles
	// so that [WriteBundle] copies it into the node's directory. LoadBundle
	// leaves it nil: a daemon reads the key with [LoadClusterKey], so that a
	// node whose directory predates cluster keys still starts.
	ClusterKey *ClusterKey
}

// TLSCertificate returns the holder's certificate and key for a tls.Config.
func (b *Bundle) TLSCertificate() tls.Certificate {
	return tls.Certificate{
		Certificate: [][]byte{b.Cert.Raw},
		PrivateKey:  b.Key,
		Leaf:        b.Cert,
	}
}

// Pool returns a certificate pool holding only the cluster CA.
func (b *Bundle) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(b.CACert)
	return p
}

// Identity returns the role and name of the bundle's certificate.
func (b *Bundle) Identity() (Role, string, error) { return Identity(b.Cert) }

// Verify checks that the bundle's certificate is valid at now as a peer
// would see it: issued by the bundle's CA, within its validity period, with
// a well-formed identity. A daemon calls it at start so that an expired
// certificate is reported at once rather than as refused connections.
func (b *Bundle) Verify(now time.Time) error {
	role, _, err := Identity(b.Cert)
	if err != nil {
		return fmt.Errorf("pki: bundle %s: %w", b.Name, err)
	}
	usage := x509.ExtKeyUsageClientAuth
	if role == RoleNode {
		usage = x509.ExtKeyUsageServerAuth
	}
	if _, _, err := Verify(b.Pool(), []*x509.Certificate{b.Cert}, usage, now); err != nil {
		return fmt.Errorf("pki: bundle %s: %w", b.Name, err)
	}
	return nil
}

// WriteBundle writes b to dir as ca.crt (0644), <Name>.crt (0644),
// <Name>.key (0600) and, when b carries one, cluster.key (0600), creating
// dir (0700) if needed and replacing earlier files of the same holder (a
// renewal). Each file is replaced atomically.
func WriteBundle(dir string, b *Bundle) error {
	if err := ValidName(b.Name); err != nil {
		return fmt.Errorf("pki: write bundle: %w", err)
	}
	if err := matchKey(b.Cert, b.Key); err != nil {
		return fmt.Errorf("pki: write bundle %s: %w", b.Name, err)
	}
	keyPEM, err := encodeKey(b.Key)
	if err != nil {
		return fmt.Errorf("pki: write bundle %s: %w", b.Name, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("pki: write bundle %s: %w", b.Name, err)
	}
	files := []struct {
		name string
		data []byte
		perm os.FileMode
	}{
		{b.Name + ".key", keyPEM, 0o600},
		{b.Name + ".crt", encodeCert(b.Cert), 0o644},
		{CACertFile, encodeCert(b.CACert), 0o644},
	}
	if b.ClusterKey != nil && !b.ClusterKey.IsZero() {
		files = append(files, struct {
			name string
			data []byte
			perm os.FileMode
		}{ClusterKeyFile, b.ClusterKey.secret, 0o600})
	}
	for _, f := range files {
		if err := writeFileAtomic(filepath.Join(dir, f.name), f.data, f.perm); err != nil {
			return fmt.Errorf("pki: write bundle %s: %w", b.Name, err)
		}
	}
	return nil
}

// LoadBundle reads the bundle of the holder called name from dir. It checks
// that the key belongs to the certificate, that the CA signed the
// certificate, and that the certificate's identity names name; it does not
// check expiry (see [Bundle.Verify]), so that an expired bundle can still be
// inspected and renewed.
func LoadBundle(dir, name string) (*Bundle, error) {
	if err := ValidName(name); err != nil {
		return nil, fmt.Errorf("pki: load bundle: %w", err)
	}
	caCert, err := readCert(filepath.Join(dir, CACertFile))
	if err != nil {
		return nil, fmt.Errorf("pki: load bundle %s: %w", name, err)
	}
	cert, err := readCert(filepath.Join(dir, name+".crt"))
	if err != nil {
		return nil, fmt.Errorf("pki: load bundle %s: %w", name, err)
	}
	key, err := readKey(filepath.Join(dir, name+".key"))
	if err != nil {
		return nil, fmt.Errorf("pki: load bundle %s: %w", name, err)
	}
	if err := matchKey(cert, key); err != nil {
		return nil, fmt.Errorf("pki: load bundle %s: %w", name, err)
	}
	if !caCert.IsCA {
		return nil, fmt.Errorf("pki: load bundle %s: %s is not a CA certificate: %w", name, CACertFile, ErrUntrusted)
	}
	if err := cert.CheckSignatureFrom(caCert); err != nil {
		return nil, fmt.Errorf("pki: load bundle %s: %w: %w", name, ErrUntrusted, err)
	}
	_, certName, err := Identity(cert)
	if err != nil {
		return nil, fmt.Errorf("pki: load bundle %s: %w", name, err)
	}
	if certName != name {
		return nil, fmt.Errorf("pki: load bundle %s: certificate names %q: %w", name, certName, ErrWrongName)
	}
	return &Bundle{Name: name, CACert: caCert, Cert: cert, Key: key}, nil
}
