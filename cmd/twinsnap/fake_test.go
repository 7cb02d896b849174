package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// testPKI is a throwaway CA with a server certificate for 127.0.0.1 and an
// admin client certificate written to dir as ca.crt, admin.crt and
// admin.key.
type testPKI struct {
	dir    string
	pool   *x509.CertPool
	server tls.Certificate
}

// newTestPKI creates a CA, a server and an admin certificate in a
// temporary directory.
func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	caKey := newKey(t)
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "twinsnap test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatalf("create CA: %v", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatalf("parse CA: %v", err)
	}
	issue := func(serial int64, name string, usage x509.ExtKeyUsage, ips []net.IP) ([]byte, *ecdsa.PrivateKey) {
		key := newKey(t)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: name},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
			IPAddresses:  ips,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
		if err != nil {
			t.Fatalf("issue %s: %v", name, err)
		}
		return der, key
	}
	serverDER, serverKey := issue(2, "n1", x509.ExtKeyUsageServerAuth, []net.IP{net.IPv4(127, 0, 0, 1)})
	adminDER, adminKey := issue(3, "admin", x509.ExtKeyUsageClientAuth, nil)

	dir := t.TempDir()
	writePEM(t, filepath.Join(dir, "ca.crt"), "CERTIFICATE", caDER)
	writePEM(t, filepath.Join(dir, "admin.crt"), "CERTIFICATE", adminDER)
	keyDER, err := x509.MarshalPKCS8PrivateKey(adminKey)
	if err != nil {
		t.Fatalf("marshal key: %v", err)
	}
	writePEM(t, filepath.Join(dir, "admin.key"), "PRIVATE KEY", keyDER)

	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return &testPKI{
		dir:    dir,
		pool:   pool,
		server: tls.Certificate{Certificate: [][]byte{serverDER}, PrivateKey: serverKey},
	}
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("generate key: %v", err)
	}
	return key
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
}

// reply is a canned answer of the fake API.
type reply struct {
	status int
	body   string
}

// fakeAPI serves canned JSON for each endpoint ("METHOD /v1/path", or
// "METHOD /v1/path?query" to answer one query alone) and records the
// requests it gets.
type fakeAPI struct {
	routes map[string]reply
	// sequences answer an endpoint with successive replies, one per
	// request; the last one repeats. They win over routes.
	sequences map[string][]reply
	// delay holds every answer back, until the request is abandoned.
	delay time.Duration

	mu       sync.Mutex
	requests []string       // "METHOD /v1/path?query body"
	served   map[string]int // requests answered from each sequence
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	key := r.Method + " " + r.URL.EscapedPath()
	full := key
	if r.URL.RawQuery != "" {
		full += "?" + r.URL.RawQuery
	}
	f.mu.Lock()
	f.requests = append(f.requests, strings.TrimSpace(full+" "+string(body)))
	f.mu.Unlock()
	if f.delay > 0 {
		select {
		case <-time.After(f.delay):
		case <-r.Context().Done():
			// No reply at all: returning would send an empty 200, which
			// a client still reading would take for an answer.
			panic(http.ErrAbortHandler)
		}
	}
	rep, ok := f.next(full)
	if !ok {
		rep, ok = f.next(key)
	}
	if !ok {
		rep = reply{http.StatusNotFound, `{"error":{"code":"not_found","message":"no route ` + key + `"}}`}
	}
	if rep.status == 0 {
		rep.status = http.StatusOK
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(rep.status)
	_, _ = io.WriteString(w, rep.body)
}

// next returns the reply for key: the next of its sequence, or its route.
func (f *fakeAPI) next(key string) (reply, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if seq := f.sequences[key]; len(seq) > 0 {
		if f.served == nil {
			f.served = map[string]int{}
		}
		i := min(f.served[key], len(seq)-1)
		f.served[key]++
		return seq[i], true
	}
	rep, ok := f.routes[key]
	return rep, ok
}

// seen returns the requests received so far.
func (f *fakeAPI) seen() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.requests...)
}

// startFake serves f over TLS 1.3, requiring a client certificate signed
// by p's CA, and returns its address.
func startFake(t *testing.T, p *testPKI, f http.Handler) string {
	t.Helper()
	srv := httptest.NewUnstartedServer(f)
	srv.TLS = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    p.pool,
		Certificates: []tls.Certificate{p.server},
	}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are expected
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// deadAddress returns a loopback address nothing listens on.
func deadAddress(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// cliSetup is the process environment of one in-process CLI run.
type cliSetup struct {
	env      map[string]string
	stdin    string
	terminal bool
	// stdoutWidth > 0 makes stdout a terminal that wide.
	stdoutWidth int
}

// testZone is the time zone of the CLI runs: one hour east of UTC.
var testZone = time.FixedZone("CET", 3600)

// testPoll is how often the CLI runs poll a waited-for operation.
const testPoll = 20 * time.Millisecond

// result is the outcome of one CLI run.
type result struct {
	code           int
	stdout, stderr string
}

// runCLI runs the CLI in-process with args and an empty environment.
func runCLI(t *testing.T, args ...string) result {
	t.Helper()
	return runCLIWith(t, cliSetup{}, args...)
}

// runCLIWith runs the CLI in-process with args in setup's environment.
func runCLIWith(t *testing.T, setup cliSetup, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	stdin := strings.NewReader(setup.stdin)
	env := &cliEnv{
		stdin:           stdin,
		stdout:          &stdout,
		stderr:          &stderr,
		getenv:          func(k string) string { return setup.env[k] },
		stdinIsTerminal: func() bool { return setup.terminal },
		readPassword:    func(context.Context) ([]byte, error) { return readLine(stdin) },
		stdoutTerminal:  func() (int, bool) { return setup.stdoutWidth, setup.stdoutWidth > 0 },
		location:        testZone,
		pollInterval:    testPoll,
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	code := run(ctx, args, env)
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// flagsFor returns the global flags that point the CLI at servers with
// p's TLS files.
func flagsFor(p *testPKI, servers ...string) []string {
	args := []string{"--tls-dir", p.dir}
	for _, s := range servers {
		args = append(args, "--server", s)
	}
	return args
}

// readLine reads one line from r, a byte at a time (so that a second
// prompt finds the next line), without its line break: the tests'
// stand-in for reading a password from a terminal without echo.
func readLine(r io.Reader) ([]byte, error) {
	var line []byte
	b := make([]byte, 1)
	for {
		if _, err := r.Read(b); err != nil {
			if errors.Is(err, io.EOF) && len(line) > 0 {
				return line, nil
			}
			return line, err
		}
		if b[0] == '\n' {
			return line, nil
		}
		line = append(line, b[0])
	}
}
