package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// File names in a CA or bundle directory.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

// backdate is subtracted from every certificate's NotBefore so that peers
// whose clocks run a little behind the issuer's accept it at once.
const backdate = 5 * time.Minute

// CA is a cluster's certificate authority: a self-signed ECDSA P-256
// certificate and its key, and the cluster key that node bundles get a
// copy of.
type CA struct {
	// Cert is the self-signed CA certificate.
	Cert *x509.Certificate
	// Key is the CA's private key.
	Key crypto.Signer
	// ClusterKey is the cluster's symmetric key (see [ClusterKey]). [CA.Issue]
	// hands it to node bundles; nil leaves node bundles without one.
	ClusterKey *ClusterKey
}

// NewCA creates a CA for the cluster called name, valid for validity from
// now, and a new cluster key. The CA may sign leaf certificates only (path
// length zero).
func NewCA(name string, validity time.Duration) (*CA, error) {
	if strings.TrimSpace(name) == "" {
		return nil, fmt.Errorf("%w: empty CA name", ErrInvalidName)
	}
	if validity <= 0 {
		return nil, fmt.Errorf("pki: new CA: validity %v is not positive", validity)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: new CA: generate key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name, Organization: []string{"twinsnap"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("pki: new CA: create certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: new CA: parse certificate: %w", err)
	}
	ck, err := NewClusterKey()
	if err != nil {
		return nil, fmt.Errorf("pki: new CA: %w", err)
	}
	return &CA{Cert: cert, Key: key, ClusterKey: &ck}, nil
}

// Save writes the CA to dir as ca.crt (0644), ca.key (0600) and, when the CA
// has one, cluster.key (0600), creating dir (0700) if needed. It never
// overwrites: if any of the files exists it returns an error wrapping
// fs.ErrExist, since replacing a cluster's CA cuts every holder off and
// replacing its cluster key makes every sealed secret unreadable.
func (ca *CA) Save(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("pki: save CA: %w", err)
	}
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	for _, p := range []string{certPath, keyPath, filepath.Join(dir, ClusterKeyFile)} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("pki: save CA: %s: %w", p, fs.ErrExist)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("pki: save CA: %w", err)
		}
	}
	keyPEM, err := encodeKey(ca.Key)
	if err != nil {
		return fmt.Errorf("pki: save CA: %w", err)
	}
	if ca.ClusterKey != nil {
		if err := createClusterKey(dir, *ca.ClusterKey); err != nil {
			return fmt.Errorf("pki: save CA: %w", err)
		}
	}
	if err := writeFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return fmt.Errorf("pki: save CA: %w", err)
	}
	if err := writeFileAtomic(certPath, encodeCert(ca.Cert), 0o644); err != nil {
		return fmt.Errorf("pki: save CA: %w", err)
	}
	return nil
}

// LoadCA reads a CA saved by [CA.Save] from dir. It checks that the
// certificate is a CA certificate and that the key belongs to it.
//
// It also reads the cluster key. A CA directory made before cluster keys
// existed has none: LoadCA then creates cluster.key there (0600, never
// replacing one another process created meanwhile), so that the next
// `twinsnapd tls node` gives every node of an existing cluster the same
// key.
func LoadCA(dir string) (*CA, error) {
	cert, err := readCert(filepath.Join(dir, CACertFile))
	if err != nil {
		return nil, fmt.Errorf("pki: load CA: %w", err)
	}
	if !cert.IsCA || !cert.BasicConstraintsValid {
		return nil, fmt.Errorf("pki: load CA: %s is not a CA certificate: %w", CACertFile, ErrUntrusted)
	}
	if err := cert.CheckSignatureFrom(cert); err != nil {
		return nil, fmt.Errorf("pki: load CA: %s is not self-signed: %w: %w", CACertFile, ErrUntrusted, err)
	}
	key, err := readKey(filepath.Join(dir, CAKeyFile))
	if err != nil {
		return nil, fmt.Errorf("pki: load CA: %w", err)
	}
	if err := matchKey(cert, key); err != nil {
		return nil, fmt.Errorf("pki: load CA: %w", err)
	}
	ck, err := loadOrCreateClusterKey(dir)
	if err != nil {
		return nil, fmt.Errorf("pki: load CA: %w", err)
	}
	return &CA{Cert: cert, Key: key, ClusterKey: &ck}, nil
}

// loadOrCreateClusterKey reads dir's cluster key, creating it first if the
// directory has none.
func loadOrCreateClusterKey(dir string) (ClusterKey, error) {
	ck, err := LoadClusterKey(dir)
	if !errors.Is(err, ErrNoClusterKey) {
		return ck, err
	}
	ck, err = NewClusterKey()
	if err != nil {
		return ClusterKey{}, err
	}
	if err := createClusterKey(dir, ck); err != nil && !errors.Is(err, fs.ErrExist) {
		return ClusterKey{}, fmt.Errorf("create %s: %w", filepath.Join(dir, ClusterKeyFile), err)
	}
	return LoadClusterKey(dir) // the one on disk, whoever wrote it
}

// Pool returns a certificate pool holding only this CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Request describes a certificate to issue.
type Request struct {
	// Role and Name are the holder's identity: twinsnap://<Role>/<Name>.
	Role Role
	Name string
	// Hosts are the DNS names and IP addresses a node is reached at; they
	// become DNS and IP SANs. Only nodes have hosts.
	Hosts []string
	// Validity is how long the certificate is valid from NotBefore.
	Validity time.Duration
	// NotBefore is when validity starts; zero means now. Five minutes of
	// backdating are added for clock skew. The resulting period is clamped
	// to the CA's own; a request that falls wholly outside it fails with
	// ErrExpired.
	NotBefore time.Time
}

// IssueNode issues a node certificate for the node id, reachable at hosts
// (DNS names or IP addresses), valid for validity.
func (ca *CA) IssueNode(id string, validity time.Duration, hosts ...string) (*Bundle, error) {
	return ca.Issue(Request{Role: RoleNode, Name: id, Hosts: hosts, Validity: validity})
}

// IssueAdmin issues an admin certificate for name, valid for validity.
func (ca *CA) IssueAdmin(name string, validity time.Duration) (*Bundle, error) {
	return ca.Issue(Request{Role: RoleAdmin, Name: name, Validity: validity})
}

// Issue generates a key pair and issues a certificate as req asks, returning
// the holder's bundle. Node certificates allow server and client
// authentication; admin certificates client authentication only. A node
// bundle carries the CA's cluster key, an admin bundle never does.
func (ca *CA) Issue(req Request) (*Bundle, error) {
	uri, err := IdentityURI(req.Role, req.Name)
	if err != nil {
		return nil, fmt.Errorf("pki: issue: %w", err)
	}
	if req.Validity <= 0 {
		return nil, fmt.Errorf("pki: issue %s: validity %v is not positive", uri, req.Validity)
	}
	tmpl := &x509.Certificate{
		Subject:  pkix.Name{CommonName: req.Name, OrganizationalUnit: []string{string(req.Role)}, Organization: []string{"twinsnap"}},
		URIs:     []*url.URL{uri},
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	switch req.Role {
	case RoleNode:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
		for _, h := range req.Hosts {
			if ip := net.ParseIP(h); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
				continue
			}
			if !validDNSName(h) {
				return nil, fmt.Errorf("pki: issue %s: %w: host %q is neither an IP address nor a DNS name", uri, ErrInvalidName, h)
			}
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	case RoleAdmin:
		if len(req.Hosts) > 0 {
			return nil, fmt.Errorf("pki: issue %s: %w: admin certificates carry no hosts", uri, ErrInvalidName)
		}
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	start := req.NotBefore
	if start.IsZero() {
		start = time.Now()
	}
	tmpl.NotBefore = start.Add(-backdate)
	tmpl.NotAfter = start.Add(req.Validity)
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	if tmpl.NotBefore.Before(ca.Cert.NotBefore) {
		tmpl.NotBefore = ca.Cert.NotBefore
	}
	if !tmpl.NotAfter.After(tmpl.NotBefore) {
		return nil, fmt.Errorf("pki: issue %s: %w: validity falls outside the CA's", uri, ErrExpired)
	}
	if tmpl.SerialNumber, err = newSerial(); err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: issue %s: generate key: %w", uri, err)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, fmt.Errorf("pki: issue %s: create certificate: %w", uri, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: issue %s: parse certificate: %w", uri, err)
	}
	b := &Bundle{Name: req.Name, CACert: ca.Cert, Cert: cert, Key: key}
	if req.Role == RoleNode && ca.ClusterKey != nil {
		ck := *ca.ClusterKey
		b.ClusterKey = &ck
	}
	return b, nil
}

// newSerial returns a random positive 128-bit serial number.
func newSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	n, err := rand.Int(rand.Reader, limit)
	if err != nil {
		return nil, fmt.Errorf("pki: serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

// validDNSName accepts host names made of dot-separated labels of letters,
// digits and hyphens, optionally with a leading "*." wildcard.
func validDNSName(h string) bool {
	h = strings.TrimPrefix(h, "*.")
	if h == "" || len(h) > 253 {
		return false
	}
	for label := range strings.SplitSeq(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			if c := label[i]; !isAlnum(c) && c != '-' {
				return false
			}
		}
	}
	return true
}
