package main

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/twinsnap/twinsnap/internal/api"
)

func TestServerErrorExitCodes(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	for _, tc := range []struct {
		code string
		exit int
	}{
		{api.CodeInvalid, exitInvalid},
		{api.CodeUnauthorized, exitUnauthorized},
		{api.CodeNotFound, exitNotFound},
		{api.CodeConflict, exitConflict},
		{api.CodeDisabled, exitConflict},
		{api.CodeNoSpace, exitNoSpace},
		{api.CodeUnavailable, exitUnavailable},
		{api.CodeUnknownResult, exitUnknownResult},
		{api.CodeInternal, exitInternal},
		{"some_future_code", exitInternal},
	} {
		msg := "canned " + tc.code + " error"
		body := fmt.Sprintf(`{"error":{"code":%q,"message":%q,"leader":"n1"}}`, tc.code, msg)
		fake := &fakeAPI{routes: map[string]reply{
			"GET /v1/nodes":       {status: api.StatusFor(tc.code), body: body},
			"DELETE /v1/nodes/n2": {status: api.StatusFor(tc.code), body: body},
		}}
		addr := startFake(t, p, fake)
		for _, args := range [][]string{{"node", "list"}, {"node", "remove", "n2", "--yes"}} {
			r := runCLI(t, append(flagsFor(p, addr), args...)...)
			if r.code != tc.exit {
				t.Fatalf("%s from %v: exit %d, want %d; stderr %q", tc.code, args, r.code, tc.exit, r.stderr)
			}
			if !strings.HasPrefix(r.stderr, "twinsnap: ") || !strings.Contains(r.stderr, msg+" (leader: n1)") {
				t.Fatalf("%s from %v: stderr %q does not carry the message", tc.code, args, r.stderr)
			}
			if r.stdout != "" {
				t.Fatalf("%s from %v: stdout %q, want nothing", tc.code, args, r.stdout)
			}
		}
	}
}

func TestServerErrorWithoutBodyIsInternal(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	addr := startFake(t, p, &fakeAPI{routes: map[string]reply{"GET /v1/nodes": {status: http.StatusBadGateway, body: "<html>bad gateway</html>"}}})
	r := runCLI(t, append(flagsFor(p, addr), "node", "list")...)
	if r.code != exitInternal || !strings.Contains(r.stderr, "502") {
		t.Fatalf("502 without an error body: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestNoServerListening(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	dead1, dead2 := deadAddress(t), deadAddress(t)
	r := runCLI(t, append(flagsFor(p, dead1+","+dead2), "cluster", "status")...)
	if r.code != exitConnect {
		t.Fatalf("no server: exit %d, want %d; stderr %q", r.code, exitConnect, r.stderr)
	}
	for _, want := range []string{"twinsnap: ", dead1, dead2, "hint: tried " + dead1 + ", " + dead2, "--server"} {
		if !strings.Contains(r.stderr, want) {
			t.Fatalf("no server: stderr %q does not mention %q", r.stderr, want)
		}
	}
}

func TestFailoverToSecondServer(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	fake := cannedAPI()
	good := startFake(t, p, fake)
	r := runCLI(t, append(flagsFor(p, deadAddress(t), good), "node", "list", "-o", "json")...)
	if r.code != 0 {
		t.Fatalf("failover: exit %d, stderr %q", r.code, r.stderr)
	}
	checkJSON[api.NodeList](t, r.stdout, nodesJSON)
	if len(fake.seen()) != 1 {
		t.Fatalf("second server saw %q, want one request", fake.seen())
	}
}

func TestEnvironment(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	good := startFake(t, p, cannedAPI())
	dead := deadAddress(t)

	r := runCLIWith(t, cliSetup{env: map[string]string{envServer: dead + ", " + good, envTLSDir: p.dir}}, "settings", "show")
	if r.code != 0 || !strings.Contains(r.stdout, "snapshots         enabled") {
		t.Fatalf("TWINSNAP_SERVER and TWINSNAP_TLS_DIR: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}

	// $HOME/.config/twinsnap is the default TLS directory.
	home := t.TempDir()
	conf := filepath.Join(home, ".config", "twinsnap")
	if err := os.MkdirAll(conf, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"ca.crt", "admin.crt", "admin.key"} {
		data, err := os.ReadFile(filepath.Join(p.dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(conf, f), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	r = runCLIWith(t, cliSetup{env: map[string]string{envServer: good, "HOME": home}}, "settings", "show")
	if r.code != 0 {
		t.Fatalf("default TLS dir: exit %d, stderr %q", r.code, r.stderr)
	}

	// --server wins over TWINSNAP_SERVER.
	r = runCLIWith(t, cliSetup{env: map[string]string{envServer: good, envTLSDir: p.dir}}, "--server", dead, "settings", "show")
	if r.code != exitConnect {
		t.Fatalf("--server over TWINSNAP_SERVER: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	addr := startFake(t, p, cannedAPI())
	base := flagsFor(p, addr)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"bad flag", []string{"node", "list", "--bogus"}, "unknown flag: --bogus"},
		{"bad global flag value", []string{"--timeout", "soon", "node", "list"}, "--timeout"},
		{"missing argument", []string{"node", "remove", "--yes"}, "needs ID"},
		{"extra argument", []string{"node", "list", "extra"}, "takes 0 argument"},
		{"unknown command", []string{"nodes"}, `did you mean "node"`},
		{"unknown subcommand", []string{"node", "lst"}, `did you mean "list"`},
		{"unknown settings verb", []string{"settings", "snapshots", "on"}, `unknown command "on"`},
		{"bad output format", []string{"node", "list", "-o", "yaml"}, "not table or json"},
		{"zero timeout", []string{"--timeout", "0s", "node", "list"}, "--timeout must be positive"},
		{"bad server address", []string{"--server", "nohostport", "node", "list"}, "not host:port"},
		{"empty node id", []string{"node", "remove", "", "--yes"}, "empty"},
	} {
		r := runCLI(t, append(append([]string(nil), base...), tc.args...)...)
		if r.code != exitUsage {
			t.Fatalf("%s: exit %d, want %d; stderr %q", tc.name, r.code, exitUsage, r.stderr)
		}
		if !strings.HasPrefix(r.stderr, "twinsnap: ") || !strings.Contains(r.stderr, tc.want) {
			t.Fatalf("%s: stderr %q does not mention %q", tc.name, r.stderr, tc.want)
		}
	}

	r := runCLIWith(t, cliSetup{env: map[string]string{envTLSDir: p.dir}}, "node", "list")
	if r.code != exitUsage || !strings.Contains(r.stderr, "--server") {
		t.Fatalf("no server given: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestTLSFailures(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	other := newTestPKI(t) // a different cluster's CA and admin certificate
	addr := startFake(t, p, cannedAPI())

	// No certificate files at all.
	r := runCLI(t, "--tls-dir", t.TempDir(), "--server", addr, "node", "list")
	if r.code != exitConnect || !strings.Contains(r.stderr, "admin.key") || !strings.Contains(r.stderr, "twinsnapd tls admin") {
		t.Fatalf("missing TLS files: exit %d, stderr %q", r.code, r.stderr)
	}

	// A file that is no certificate.
	junk := filepath.Join(t.TempDir(), "junk")
	if err := os.WriteFile(junk, []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	r = runCLI(t, append(flagsFor(p, addr), "--ca", junk, "node", "list")...)
	if r.code != exitConnect || strings.Contains(r.stderr, "invalid request") {
		t.Fatalf("junk CA file: exit %d, stderr %q", r.code, r.stderr)
	}

	// The server's certificate is not signed by our CA.
	r = runCLI(t, append(flagsFor(p, addr), "--ca", filepath.Join(other.dir, "ca.crt"), "node", "list")...)
	if r.code != exitConnect || !strings.Contains(r.stderr, "not signed by the CA") || !strings.Contains(r.stderr, "--tls-dir") {
		t.Fatalf("unknown server CA: exit %d, stderr %q", r.code, r.stderr)
	}

	// The server refuses our certificate.
	r = runCLI(t, append(flagsFor(p, addr),
		"--cert", filepath.Join(other.dir, "admin.crt"), "--key", filepath.Join(other.dir, "admin.key"), "node", "list")...)
	// The refusal arrives as a TLS alert; should the connection be reset
	// before the alert is read, only the exit code tells.
	if r.code != exitConnect || !strings.Contains(r.stderr, "refused the TLS handshake") && !strings.Contains(r.stderr, "reset") {
		t.Fatalf("client certificate of another CA: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestTimeout(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	addr := startFake(t, p, &fakeAPI{delay: time.Minute, routes: cannedAPI().routes})

	// A read that gets no answer: the server counts as unreachable.
	start := time.Now()
	r := runCLI(t, append(flagsFor(p, addr), "--timeout", "300ms", "node", "list")...)
	if r.code != exitConnect || !strings.Contains(r.stderr, "--timeout 300ms") {
		t.Fatalf("slow read: exit %d, want %d; stderr %q", r.code, exitConnect, r.stderr)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("slow read took %s with --timeout 300ms", d)
	}

	// A change that gets no answer may have been applied.
	r = runCLI(t, append(flagsFor(p, addr), "--timeout", "300ms", "settings", "snapshots", "disable")...)
	if r.code != exitUnknownResult || !strings.Contains(r.stderr, "may or may not") {
		t.Fatalf("slow write: exit %d, want %d; stderr %q", r.code, exitUnknownResult, r.stderr)
	}
}

func TestExitCode(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, exitOK},
		{errors.New("boom"), exitInternal},
		{usagef("bad"), exitUsage},
		{fmt.Errorf("x: %w", api.ErrConnect), exitConnect},
		{fmt.Errorf("x: %w", errTLSSetup), exitConnect},
		{fmt.Errorf("%w: %w", api.ErrUnknownResult, api.ErrConnect), exitUnknownResult},
		{&api.Error{Status: 409, Detail: api.ErrorDetail{Code: api.CodeDisabled}}, exitConflict},
		{withHint(fmt.Errorf("x: %w", api.ErrNoSpace), "h"), exitNoSpace},
		{withHint(markf(errFailed, "snapshot %s was discarded", "s1"), "h"), exitInternal},
		{markf(errWaitEnded, "stopped waiting"), exitUnknownResult},
		{&markedError{mark: errWaitEnded, err: fmt.Errorf("x: %w", api.ErrConnect)}, exitUnknownResult},
	} {
		if got := exitCode(tc.err); got != tc.want {
			t.Fatalf("exitCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}

// TestHelpListsExitCodes checks every command's help and docs/cli.md for
// the exit codes.
func TestHelpListsExitCodes(t *testing.T) {
	t.Parallel()
	var walk func(c *cobra.Command)
	var paths [][]string
	walk = func(c *cobra.Command) {
		paths = append(paths, strings.Fields(c.CommandPath())[1:])
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRootCommand(&globalOptions{env: &cliEnv{}}))
	if len(paths) < 9 {
		t.Fatalf("walked only %d commands", len(paths))
	}
	for _, path := range paths {
		r := runCLI(t, append(path, "--help")...)
		if r.code != 0 || !strings.Contains(r.stdout, exitCodesHelp) {
			t.Fatalf("%q --help: exit %d, no exit codes in:\n%s", path, r.code, r.stdout)
		}
	}

	doc, err := os.ReadFile("../../docs/cli.md")
	if err != nil {
		t.Fatalf("reading docs/cli.md: %v", err)
	}
	for code := exitOK; code <= exitInvalid; code++ {
		if !strings.Contains(string(doc), fmt.Sprintf("\n| %d | ", code)) {
			t.Fatalf("docs/cli.md has no row for exit code %d", code)
		}
	}
}
