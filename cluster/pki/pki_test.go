package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func newTestCA(t *testing.T, name string) *CA {
	t.Helper()
	ca, err := NewCA(name, 24*time.Hour)
	if err != nil {
		t.Fatalf("NewCA: %v", err)
	}
	return ca
}

func TestIdentityRoundTrip(t *testing.T) {
	ca := newTestCA(t, "c1")
	node, err := ca.IssueNode("n1", time.Hour, "127.0.0.1", "::1", "node1.example")
	if err != nil {
		t.Fatalf("IssueNode: %v", err)
	}
	admin, err := ca.IssueAdmin("alice", time.Hour)
	if err != nil {
		t.Fatalf("IssueAdmin: %v", err)
	}
	for _, tc := range []struct {
		b    *Bundle
		role Role
		name string
		uri  string
	}{
		{node, RoleNode, "n1", "twinsnap://node/n1"},
		{admin, RoleAdmin, "alice", "twinsnap://admin/alice"},
	} {
		role, name, err := Identity(tc.b.Cert)
		if err != nil || role != tc.role || name != tc.name {
			t.Fatalf("Identity = %q, %q, %v; want %q, %q", role, name, err, tc.role, tc.name)
		}
		if len(tc.b.Cert.URIs) != 1 || tc.b.Cert.URIs[0].String() != tc.uri {
			t.Fatalf("URIs = %v, want [%s]", tc.b.Cert.URIs, tc.uri)
		}
		if err := tc.b.Verify(time.Now()); err != nil {
			t.Fatalf("Verify %s: %v", tc.uri, err)
		}
	}
	if len(node.Cert.IPAddresses) != 2 || len(node.Cert.DNSNames) != 1 || node.Cert.DNSNames[0] != "node1.example" {
		t.Fatalf("node SANs: IPs %v DNS %v", node.Cert.IPAddresses, node.Cert.DNSNames)
	}
	if len(admin.Cert.ExtKeyUsage) != 1 || admin.Cert.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
		t.Fatalf("admin EKU = %v, want client auth only", admin.Cert.ExtKeyUsage)
	}
	// A node verifies as a server and as a client; an admin only as a client.
	if _, _, err := Verify(ca.Pool(), []*x509.Certificate{node.Cert}, x509.ExtKeyUsageClientAuth, time.Now()); err != nil {
		t.Fatalf("node as client: %v", err)
	}
	if _, _, err := Verify(ca.Pool(), []*x509.Certificate{admin.Cert}, x509.ExtKeyUsageServerAuth, time.Now()); !errors.Is(err, ErrWrongRole) {
		t.Fatalf("admin as server: %v, want ErrWrongRole", err)
	}
}

// forge signs a certificate with the CA's key from a hand-made template, to
// build certificates this package would never issue.
func forge(t *testing.T, ca *CA, uris []string, eku []x509.ExtKeyUsage) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := newSerial()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "forged"},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  eku,
	}
	for _, s := range uris {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func TestIdentityRejectsMalformed(t *testing.T) {
	ca := newTestCA(t, "c1")
	both := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	for _, tc := range []struct {
		what string
		uris []string
		eku  []x509.ExtKeyUsage
	}{
		{"no URI", nil, both},
		{"other scheme only", []string{"spiffe://node/n1"}, both},
		{"two identities", []string{"twinsnap://node/n1", "twinsnap://node/n2"}, both},
		{"unknown role", []string{"twinsnap://witness/w"}, both},
		{"empty name", []string{"twinsnap://node/"}, both},
		{"nested name", []string{"twinsnap://node/a/b"}, both},
		{"port", []string{"twinsnap://node:1/n1"}, both},
		{"query", []string{"twinsnap://node/n1?x=1"}, both},
		{"node without client auth", []string{"twinsnap://node/n1"}, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}},
		{"admin with server auth", []string{"twinsnap://admin/a"}, both},
	} {
		cert := forge(t, ca, tc.uris, tc.eku)
		if _, _, err := Identity(cert); !errors.Is(err, ErrNoIdentity) {
			t.Fatalf("%s: Identity error = %v, want ErrNoIdentity", tc.what, err)
		}
	}
	// A foreign scheme beside a twinsnap URI is ignored.
	cert := forge(t, ca, []string{"spiffe://x/y", "twinsnap://node/n1"}, both)
	if role, name, err := Identity(cert); err != nil || role != RoleNode || name != "n1" {
		t.Fatalf("Identity with extra URI = %q %q %v", role, name, err)
	}
	if _, _, err := Identity(nil); !errors.Is(err, ErrNoCertificate) {
		t.Fatalf("Identity(nil) = %v", err)
	}
}

func TestValidName(t *testing.T) {
	for _, ok := range []string{"n1", "node-1", "a.b_c", "A9"} {
		if err := ValidName(ok); err != nil {
			t.Fatalf("ValidName(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "ca", "-a", ".a", "a/b", "a b", "ü", string(make([]byte, 65))} {
		if err := ValidName(bad); !errors.Is(err, ErrInvalidName) {
			t.Fatalf("ValidName(%q) = %v, want ErrInvalidName", bad, err)
		}
	}
	ca := newTestCA(t, "c1")
	if _, err := ca.IssueNode("n1", time.Hour, "bad host"); !errors.Is(err, ErrInvalidName) {
		t.Fatalf("bad host: %v", err)
	}
	if _, err := ca.Issue(Request{Role: "root", Name: "x", Validity: time.Hour}); !errors.Is(err, ErrInvalidName) {
		t.Fatalf("bad role: %v", err)
	}
	if _, err := ca.Issue(Request{Role: RoleAdmin, Name: "x", Validity: time.Hour, Hosts: []string{"h"}}); !errors.Is(err, ErrInvalidName) {
		t.Fatalf("admin with hosts: %v", err)
	}
}

func TestIssueValidity(t *testing.T) {
	ca := newTestCA(t, "c1")
	b, err := ca.IssueNode("n1", 1000*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !b.Cert.NotAfter.Equal(ca.Cert.NotAfter) {
		t.Fatalf("NotAfter %v not capped at the CA's %v", b.Cert.NotAfter, ca.Cert.NotAfter)
	}
	old, err := ca.Issue(Request{Role: RoleNode, Name: "old", Validity: time.Minute, NotBefore: time.Now().Add(-time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Verify(time.Now().Add(time.Minute)); !errors.Is(err, ErrExpired) {
		t.Fatalf("expired bundle Verify = %v, want ErrExpired", err)
	}
}

func TestCASaveLoad(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	ca := newTestCA(t, "c1")
	if err := ca.Save(dir); err != nil {
		t.Fatalf("Save: %v", err)
	}
	fi, err := os.Stat(filepath.Join(dir, CAKeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("ca.key mode: %v %v", fi, err)
	}
	if err := ca.Save(dir); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second Save = %v, want fs.ErrExist", err)
	}
	got, err := LoadCA(dir)
	if err != nil {
		t.Fatalf("LoadCA: %v", err)
	}
	if !got.Cert.Equal(ca.Cert) {
		t.Fatal("loaded CA certificate differs")
	}
	// The loaded CA issues certificates that the original's pool trusts.
	b, err := got.IssueAdmin("bob", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := Verify(ca.Pool(), []*x509.Certificate{b.Cert}, x509.ExtKeyUsageClientAuth, time.Now()); err != nil {
		t.Fatalf("certificate of loaded CA: %v", err)
	}
	if err := os.Chmod(filepath.Join(dir, CAKeyFile), 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCA(dir); !errors.Is(err, ErrInsecureKey) {
		t.Fatalf("LoadCA with 0640 key = %v, want ErrInsecureKey", err)
	}
	// A CA certificate paired with another CA's key is refused.
	other := newTestCA(t, "c2")
	otherDir := filepath.Join(t.TempDir(), "other")
	if err := other.Save(otherDir); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(otherDir, CAKeyFile), filepath.Join(dir, CAKeyFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCA(dir); !errors.Is(err, ErrKeyMismatch) {
		t.Fatalf("LoadCA with foreign key = %v, want ErrKeyMismatch", err)
	}
}

func TestBundleWriteLoad(t *testing.T) {
	ca := newTestCA(t, "c1")
	b, err := ca.IssueNode("n1", time.Hour, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "n1")
	if err := WriteBundle(dir, b); err != nil {
		t.Fatalf("WriteBundle: %v", err)
	}
	for name, want := range map[string]os.FileMode{"ca.crt": 0o644, "n1.crt": 0o644, "n1.key": 0o600} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.Mode().Perm() != want {
			t.Fatalf("%s: %v %v, want mode %v", name, fi, err, want)
		}
	}
	got, err := LoadBundle(dir, "n1")
	if err != nil {
		t.Fatalf("LoadBundle: %v", err)
	}
	if !got.Cert.Equal(b.Cert) || !got.CACert.Equal(ca.Cert) || got.Name != "n1" {
		t.Fatal("loaded bundle differs")
	}
	if role, name, err := got.Identity(); err != nil || role != RoleNode || name != "n1" {
		t.Fatalf("loaded identity %q %q %v", role, name, err)
	}
	// Renewal overwrites in place.
	b2, err := ca.IssueNode("n1", 2*time.Hour, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteBundle(dir, b2); err != nil {
		t.Fatalf("WriteBundle renewal: %v", err)
	}
	if got, err := LoadBundle(dir, "n1"); err != nil || !got.Cert.Equal(b2.Cert) {
		t.Fatalf("renewed bundle: %v", err)
	}
	// Files under another holder's name.
	if err := os.Rename(filepath.Join(dir, "n1.crt"), filepath.Join(dir, "n2.crt")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "n1.key"), filepath.Join(dir, "n2.key")); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadBundle(dir, "n2"); !errors.Is(err, ErrWrongName) {
		t.Fatalf("renamed bundle = %v, want ErrWrongName", err)
	}
	// A bundle whose ca.crt is another cluster's CA.
	other := newTestCA(t, "c2")
	ob, err := other.IssueNode("n3", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ob.CACert = ca.Cert
	odir := t.TempDir()
	if err := WriteBundle(odir, ob); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadBundle(odir, "n3"); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("foreign-signed bundle = %v, want ErrUntrusted", err)
	}
	// A key that is not the certificate's.
	mixed := &Bundle{Name: "n1", CACert: ca.Cert, Cert: b.Cert, Key: ob.Key}
	if err := WriteBundle(t.TempDir(), mixed); !errors.Is(err, ErrKeyMismatch) {
		t.Fatalf("mismatched WriteBundle = %v, want ErrKeyMismatch", err)
	}
}

func TestVerifyErrors(t *testing.T) {
	ca := newTestCA(t, "c1")
	other := newTestCA(t, "c2")
	node, _ := ca.IssueNode("n1", time.Hour)
	foreign, _ := other.IssueNode("n1", time.Hour)
	for _, tc := range []struct {
		what  string
		chain []*x509.Certificate
		at    time.Time
		want  error
	}{
		{"no certificate", nil, time.Now(), ErrNoCertificate},
		{"other CA", []*x509.Certificate{foreign.Cert}, time.Now(), ErrUntrusted},
		{"expired", []*x509.Certificate{node.Cert}, time.Now().Add(2 * time.Hour), ErrExpired},
		{"not yet valid", []*x509.Certificate{node.Cert}, time.Now().Add(-time.Hour), ErrExpired},
		// A CA certificate presented as a peer has no identity.
		{"CA as peer", []*x509.Certificate{ca.Cert}, time.Now(), ErrNoIdentity},
	} {
		if _, _, err := Verify(ca.Pool(), tc.chain, x509.ExtKeyUsageServerAuth, tc.at); !errors.Is(err, tc.want) {
			t.Fatalf("%s: Verify = %v, want %v", tc.what, err, tc.want)
		}
	}
}

func TestClassify(t *testing.T) {
	if Classify(nil) != nil {
		t.Fatal("Classify(nil) != nil")
	}
	plain := errors.New("x")
	if got := Classify(plain); !errors.Is(got, plain) || got.Error() != plain.Error() {
		t.Fatalf("unknown error changed to %v", got)
	}
	already := errors.Join(ErrWrongRole, plain)
	if got := Classify(already); !errors.Is(got, ErrWrongRole) || got.Error() != already.Error() {
		t.Fatalf("classified error changed to %v", got)
	}
	inner := x509.CertificateInvalidError{Reason: x509.Expired}
	if err := Classify(inner); !errors.Is(err, ErrExpired) || !errors.As(err, new(x509.CertificateInvalidError)) {
		t.Fatalf("Classify(expired) = %v", err)
	}
	if err := Classify(x509.UnknownAuthorityError{}); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("Classify(unknown authority) = %v", err)
	}
}
