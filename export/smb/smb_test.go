package smb_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/export"
	"github.com/twinsnap/twinsnap/export/exporttest"
	"github.com/twinsnap/twinsnap/export/smb"
	"github.com/twinsnap/twinsnap/internal/testenv"
)

// config returns the Config for a directory of the share (created in the
// share's local directory).
func config(s *testenv.Samba, dir string) smb.Config {
	return smb.Config{Addr: s.Addr, Share: s.Share, Dir: dir, User: s.User, Password: s.Password}
}

// freshDir creates an empty directory in the share and returns its name.
func freshDir(t *testing.T, s *testenv.Samba) string {
	t.Helper()
	dir, err := os.MkdirTemp(s.Dir, "t-")
	if err != nil {
		t.Fatalf("directory in the share: %v", err)
	}
	return filepath.Base(dir)
}

func dial(t *testing.T, cfg smb.Config) *smb.Transport {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tr, err := smb.Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("smb.Dial: %v", err)
	}
	return tr
}

func TestConformanceEncrypted(t *testing.T) {
	s := testenv.StartSamba(t, testenv.SambaOptions{})
	exporttest.Run(t, func(t *testing.T) export.Transport {
		tr := dial(t, config(s, freshDir(t, s)))
		if !tr.Encrypted() || tr.Signed() {
			t.Fatalf("Encrypted %v, Signed %v against a server that requires encryption", tr.Encrypted(), tr.Signed())
		}
		return tr
	})
	checkProtection(t, s, "encrypted")
}

func TestConformanceSigningOnly(t *testing.T) {
	s := testenv.StartSamba(t, testenv.SambaOptions{SigningOnly: true})
	exporttest.Run(t, func(t *testing.T) export.Transport {
		tr := dial(t, config(s, freshDir(t, s)))
		if tr.Encrypted() || !tr.Signed() {
			t.Fatalf("Encrypted %v, Signed %v against a signing-only server", tr.Encrypted(), tr.Signed())
		}
		return tr
	})
}

// TestConformanceWithDecorators runs the suite through both decorators,
// with a re-dial that never happens (no transient failures).
func TestConformanceWithDecorators(t *testing.T) {
	s := testenv.StartSamba(t, testenv.SambaOptions{})
	exporttest.Run(t, func(t *testing.T) export.Transport {
		cfg := config(s, freshDir(t, s))
		redial := func(ctx context.Context) (export.Transport, error) { return smb.Dial(ctx, cfg) }
		return export.WithBandwidthLimit(export.WithRetry(dial(t, cfg), export.RetryPolicy{}, redial), 1<<30)
	})
}

// checkProtection asks smbstatus how the server sees the sessions still
// open, independently of the client's own view.
func checkProtection(t *testing.T, s *testenv.Samba, want string) {
	t.Helper()
	smbstatus, err := testenv.LookBinary("smbstatus")
	if err != nil {
		t.Logf("not checking with smbstatus: %v", err)
		return
	}
	tr := dial(t, config(s, ""))
	defer func() { _ = tr.Close() }()
	out, err := exec.Command(smbstatus, "-s", s.ConfPath, "--json", "-b").Output()
	if err != nil {
		t.Fatalf("smbstatus: %v", err)
	}
	var status struct {
		Sessions map[string]struct {
			Encryption struct {
				Degree string `json:"degree"`
			} `json:"encryption"`
		} `json:"sessions"`
	}
	if err := json.Unmarshal(out, &status); err != nil {
		t.Fatalf("smbstatus --json: %v", err)
	}
	if len(status.Sessions) == 0 {
		t.Fatalf("smbstatus lists no session")
	}
	for id, ss := range status.Sessions {
		if want == "encrypted" && ss.Encryption.Degree != "full" {
			t.Fatalf("session %s: encryption %q, want full", id, ss.Encryption.Degree)
		}
	}
}

func TestRequireEncryption(t *testing.T) {
	signing := testenv.StartSamba(t, testenv.SambaOptions{SigningOnly: true})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := config(signing, "")
	cfg.RequireEncryption = true
	if tr, err := smb.Dial(ctx, cfg); !errors.Is(err, smb.ErrNotEncrypted) {
		if err == nil {
			_ = tr.Close()
		}
		t.Fatalf("Dial with RequireEncryption to a signing-only server: got %v, want ErrNotEncrypted", err)
	}
	encrypted := testenv.StartSamba(t, testenv.SambaOptions{})
	cfg = config(encrypted, "")
	cfg.RequireEncryption = true
	tr := dial(t, cfg)
	if err := tr.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func TestDialErrors(t *testing.T) {
	s := testenv.StartSamba(t, testenv.SambaOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := l.Addr().String()
	_ = l.Close()

	tests := []struct {
		name      string
		mutate    func(*smb.Config)
		transient bool
		notExist  bool
	}{
		{"refused", func(c *smb.Config) { c.Addr = closedAddr }, true, false},
		{"wrong password", func(c *smb.Config) { c.Password += "x" }, false, false},
		{"missing share", func(c *smb.Config) { c.Share = "nosuchshare" }, false, false},
		{"missing dir", func(c *smb.Config) { c.Dir = "no/such/dir" }, false, true},
	}
	for _, tc := range tests {
		cfg := config(s, "")
		tc.mutate(&cfg)
		tr, err := smb.Dial(ctx, cfg)
		if err == nil {
			_ = tr.Close()
			t.Errorf("%s: Dial succeeded", tc.name)
			continue
		}
		if got := errors.Is(err, export.ErrTransient); got != tc.transient {
			t.Errorf("%s: %v; transient %v, want %v", tc.name, err, got, tc.transient)
		}
		if got := errors.Is(err, export.ErrNotExist); got != tc.notExist {
			t.Errorf("%s: %v; not-exist %v, want %v", tc.name, err, got, tc.notExist)
		}
		t.Logf("%s: %v", tc.name, err)
	}
}

// TestRenameNeverReplacesOnServer checks, in the share's local directory,
// that a refused rename left both files as they were.
func TestRenameNeverReplacesOnServer(t *testing.T) {
	s := testenv.StartSamba(t, testenv.SambaOptions{})
	dir := freshDir(t, s)
	for name, content := range map[string]string{"a.part": "new package", "a.ovf": "old package"} {
		if err := os.WriteFile(filepath.Join(s.Dir, dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tr := dial(t, config(s, dir))
	defer func() { _ = tr.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := tr.Rename(ctx, "a.part", "a.ovf"); !errors.Is(err, export.ErrExist) {
		t.Fatalf("Rename onto an existing file: %v, want ErrExist", err)
	}
	for name, want := range map[string]string{"a.part": "new package", "a.ovf": "old package"} {
		if got, err := os.ReadFile(filepath.Join(s.Dir, dir, name)); err != nil || string(got) != want {
			t.Fatalf("%s on the server: %q, %v; want %q", name, got, err, want)
		}
	}
}

// TestCallTimeoutClosesConnection stops smbd (SIGSTOP) so that a call
// hangs, and checks that the call timeout ends it as a transient failure.
func TestCallTimeoutClosesConnection(t *testing.T) {
	s := testenv.StartSamba(t, testenv.SambaOptions{})
	cfg := config(s, "")
	cfg.CallTimeout = time.Second
	tr := dial(t, cfg)
	defer func() { _ = tr.Close() }()
	if err := syscall.Kill(-s.Pid(), syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP smbd: %v", err)
	}
	defer func() { _ = syscall.Kill(-s.Pid(), syscall.SIGCONT) }()
	began := time.Now()
	_, err := tr.Stat(context.Background(), "anything")
	took := time.Since(began)
	if !errors.Is(err, export.ErrTransient) {
		t.Fatalf("Stat against a stopped server: %v, want ErrTransient", err)
	}
	if took > 10*time.Second {
		t.Fatalf("Stat returned after %s with a 1 s call timeout", took)
	}
	t.Logf("Stat against a stopped server returned after %s: %v", took.Round(time.Millisecond), err)
}

// TestContextBoundsCalls checks that an ended context ends a call at once.
func TestContextBoundsCalls(t *testing.T) {
	s := testenv.StartSamba(t, testenv.SambaOptions{})
	tr := dial(t, config(s, ""))
	defer func() { _ = tr.Close() }()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := tr.Stat(ctx, "x"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Stat with an ended context: %v, want context.Canceled", err)
	}
	wctx, wcancel := context.WithCancel(context.Background())
	w, err := tr.OpenWriter(wctx, "f")
	if err != nil {
		t.Fatal(err)
	}
	wcancel()
	if _, err := w.WriteAt([]byte("x"), 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("WriteAt after the writer's context ended: %v, want context.Canceled", err)
	}
	_ = w.Close()
}
