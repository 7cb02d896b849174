package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hirochachacha/go-smb2"
)

// SambaOptions configures a private Samba server. The zero value gives an
// encrypted share for root named "twinsnap".
type SambaOptions struct {
	// SigningOnly turns SMB encryption off and makes message signing
	// mandatory instead (`server signing = mandatory`). Samba's async I/O
	// is then switched off too: with it on, go-smb2 v1.1.0 rejects the
	// unsigned interim responses of writes with "signing required".
	SigningOnly bool

	// User is the Unix account that the SMB user maps to; it must exist.
	// Empty means "root".
	User string

	// Share is the name of the one writable share. Empty means "twinsnap".
	Share string

	// ReadyTimeout bounds the wait, per start attempt, for a real SMB
	// session. Zero means 30 s.
	ReadyTimeout time.Duration

	// LogLevel is Samba's `log level`. Zero means 1.
	LogLevel int

	// Logger receives debug records about the server. Nil means
	// slog.Default().
	Logger *slog.Logger
}

// Samba is a running private smbd serving one writable share on a loopback
// TCP port. It runs in its own process group, without systemd, and keeps
// all its state under one directory.
type Samba struct {
	// Addr is the server's host:port on 127.0.0.1.
	Addr string
	// Share is the name of the writable share.
	Share string
	// User is the SMB (and Unix) user name.
	User string
	// Password is the SMB password of User, random per server.
	Password string
	// Dir is the local directory that backs the share.
	Dir string
	// ConfPath is the private smb.conf; it holds Marker in its name, and it
	// appears in the command line of smbd and of every process it forks.
	ConfPath string
	// LogPath is the file holding smbd's log and its standard output and
	// error.
	LogPath string
	// SigningOnly reports that the server signs instead of encrypting.
	SigningOnly bool
	// ReadyAfter is how long smbd took, from its start to the first
	// successful SMB session setup and tree connect.
	ReadyAfter time.Duration

	proc         *Process
	smbd         string
	readyTimeout time.Duration
	log          *slog.Logger
	closeOnce    sync.Once
	closeErr     error
}

const (
	sambaStopGrace    = 10 * time.Second
	sambaPollEvery    = 20 * time.Millisecond
	sambaPortAttempts = 5
	sambaLogTail      = 4 << 10
)

// errPortClash is the cause given to the readiness wait when smbd could not
// bind its port because something took it after it was chosen.
var errPortClash = errors.New("testenv: smbd port taken")

// StartSamba starts a private Samba server for the test and stops it when the
// test ends. A missing smbd or smbpasswd skips the test outside CI (see Need).
func StartSamba(tb testing.TB, opts SambaOptions) *Samba {
	tb.Helper()
	if err := SambaAvailable(); err != nil {
		Need(tb, "samba", err)
	}
	dir := TempDir(tb, "smb")
	timeout := opts.ReadyTimeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), sambaPortAttempts*timeout)
	defer cancel()
	s, err := LaunchSamba(ctx, dir, opts)
	Need(tb, "samba", err)
	tb.Cleanup(func() {
		if err := s.Close(); err != nil {
			tb.Errorf("samba: %v", err)
		}
	})
	return s
}

// SambaAvailable returns an error wrapping ErrUnavailable when a private
// Samba server cannot be started here: smbd or smbpasswd is missing, or the
// process is not root (smbd changes user ids for every session).
func SambaAvailable() error {
	for _, bin := range []string{"smbd", "smbpasswd"} {
		if _, err := LookBinary(bin); err != nil {
			return err
		}
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: smbd must run as root (euid %d)", ErrUnavailable, os.Geteuid())
	}
	return nil
}

// LaunchSamba starts a private Samba server whose configuration, state and
// share live under dir, which should be empty and have a short path (use
// TempDir, or os.MkdirTemp under /tmp); it is created if missing. It returns once a real SMB
// session can be set up, or when ctx ends. The caller must call Close; dir
// is left for the caller to remove.
func LaunchSamba(ctx context.Context, dir string, opts SambaOptions) (*Samba, error) {
	if err := SambaAvailable(); err != nil {
		return nil, err
	}
	smbd, _ := LookBinary("smbd")
	smbpasswd, _ := LookBinary("smbpasswd")

	if opts.User == "" {
		opts.User = "root"
	}
	if opts.Share == "" {
		opts.Share = "twinsnap"
	}
	if opts.ReadyTimeout <= 0 {
		opts.ReadyTimeout = 30 * time.Second
	}
	if opts.LogLevel <= 0 {
		opts.LogLevel = 1
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if _, err := user.Lookup(opts.User); err != nil {
		return nil, fmt.Errorf("testenv: samba user %q needs a Unix account: %w", opts.User, err)
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("testenv: samba dir: %w", err)
	}
	pw, err := sambaPassword()
	if err != nil {
		return nil, err
	}
	s := &Samba{
		smbd:         smbd,
		readyTimeout: opts.ReadyTimeout,
		Share:        opts.Share,
		User:         opts.User,
		Password:     pw,
		Dir:          filepath.Join(dir, "share"),
		ConfPath:     filepath.Join(dir, Marker+"-smb.conf"),
		LogPath:      filepath.Join(dir, "smbd.log"),
		SigningOnly:  opts.SigningOnly,
		log:          opts.Logger.With("component", "testenv.samba", "dir", dir),
	}
	for _, sub := range []string{"share", "state", "lock", "cache", "pid", "private", "ncalrpc"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return nil, fmt.Errorf("testenv: samba dir: %w", err)
		}
	}
	// The passdb only needs the configuration's paths, not the port.
	if err := s.writeConf(dir, 0, opts); err != nil {
		return nil, err
	}
	if err := s.addUser(ctx, smbpasswd); err != nil {
		return nil, err
	}

	var lastErr error
	for attempt := 1; attempt <= sambaPortAttempts; attempt++ {
		port, err := sambaFreePort()
		if err != nil {
			return nil, err
		}
		if err := s.writeConf(dir, port, opts); err != nil {
			return nil, err
		}
		s.Addr = net.JoinHostPort("127.0.0.1", fmt.Sprint(port))
		clash, err := s.start(ctx, smbd, opts.ReadyTimeout)
		if err == nil {
			return s, nil
		}
		lastErr = err
		if !clash || ctx.Err() != nil {
			break
		}
		s.log.Debug("port taken, retrying", "addr", s.Addr, "attempt", attempt)
	}
	return nil, lastErr
}

// start runs smbd once and waits for it to serve a session. It reports
// whether the failure was a port clash, worth another attempt.
func (s *Samba) start(ctx context.Context, smbd string, timeout time.Duration) (clash bool, err error) {
	_ = os.Remove(s.LogPath)
	logf, err := os.OpenFile(s.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return false, fmt.Errorf("testenv: samba log: %w", err)
	}
	defer logf.Close() // the child holds its own descriptors

	cmd := exec.Command(smbd, "--foreground", "--no-process-group", "-s", s.ConfPath)
	cmd.Dir = filepath.Dir(s.ConfPath)
	cmd.Stdout = logf
	cmd.Stderr = logf
	began := time.Now()
	proc, err := StartProcess("smbd", cmd)
	if err != nil {
		return false, err
	}

	waitCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	waitCtx, cancelT := context.WithTimeout(waitCtx, timeout)
	defer cancelT()
	// smbd keeps running when it cannot bind its port, and a probe may hang
	// on whatever holds the port: watch the log on the side and cut the
	// wait short.
	go func() {
		tick := time.NewTicker(sambaPollEvery)
		defer tick.Stop()
		for {
			select {
			case <-waitCtx.Done():
				return
			case <-tick.C:
				if sambaLogHas(s.LogPath, "Address already in use") {
					cancel(errPortClash)
					return
				}
			}
		}
	}()
	err = WaitFor(waitCtx, proc, sambaPollEvery, s.probe)
	if err == nil {
		s.proc = proc
		s.ReadyAfter = time.Since(began)
		s.log.Debug("smbd ready", "addr", s.Addr, "pid", proc.Pid(), "after", s.ReadyAfter, "signing_only", s.SigningOnly)
		return false, nil
	}
	err = errors.Join(err, proc.Stop(sambaStopGrace))
	clash = errors.Is(context.Cause(waitCtx), errPortClash)
	return clash, fmt.Errorf("testenv: smbd on %s not ready: %w\n--- %s (tail) ---\n%s",
		s.Addr, err, s.LogPath, sambaTail(s.LogPath, sambaLogTail))
}

// probe sets up a real SMB session and connects to the share.
func (s *Samba) probe(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	share, done, err := s.Dial(pctx)
	if err != nil {
		return err
	}
	if _, err := share.WithContext(pctx).Stat("."); err != nil {
		_ = done()
		return fmt.Errorf("testenv: samba probe stat: %w", err)
	}
	return done()
}

// DialSession connects to the server and sets up an authenticated SMB
// session. ctx bounds the connection and the session setup only; later
// calls use the session's own context (see smb2.Session.WithContext). The
// returned cleanup logs off and closes the connection.
func (s *Samba) DialSession(ctx context.Context) (*smb2.Session, func() error, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", s.Addr)
	if err != nil {
		return nil, nil, fmt.Errorf("testenv: samba dial %s: %w", s.Addr, err)
	}
	// go-smb2 honours ctx only between requests; closing the connection
	// also ends a read that hangs.
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	dialer := &smb2.Dialer{Initiator: &smb2.NTLMInitiator{User: s.User, Password: s.Password}}
	sess, err := dialer.DialContext(ctx, conn)
	if !stop() {
		if err == nil {
			err = ctx.Err()
		}
	}
	if err != nil {
		_ = conn.Close()
		return nil, nil, fmt.Errorf("testenv: samba session setup on %s: %w", s.Addr, err)
	}
	cleanup := func() error {
		lctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		stop := context.AfterFunc(lctx, func() { _ = conn.Close() })
		defer stop()
		lerr := sess.WithContext(lctx).Logoff()
		cerr := conn.Close()
		if errors.Is(cerr, net.ErrClosed) {
			cerr = nil
		}
		if err := errors.Join(lerr, cerr); err != nil {
			return fmt.Errorf("testenv: samba logoff: %w", err)
		}
		return nil
	}
	return sess, cleanup, nil
}

// Dial connects to the server, sets up a session and mounts the share. ctx
// bounds the setup only; bound later calls with smb2.Share.WithContext. The
// returned cleanup unmounts, logs off and closes the connection.
func (s *Samba) Dial(ctx context.Context) (*smb2.Share, func() error, error) {
	sess, done, err := s.DialSession(ctx)
	if err != nil {
		return nil, nil, err
	}
	share, err := sess.WithContext(ctx).Mount(s.Share)
	if err != nil {
		return nil, nil, errors.Join(fmt.Errorf("testenv: samba mount %s: %w", s.Share, err), done())
	}
	share = share.WithContext(context.Background())
	cleanup := func() error {
		uctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		uerr := share.WithContext(uctx).Umount()
		if uerr != nil {
			uerr = fmt.Errorf("testenv: samba umount: %w", uerr)
		}
		return errors.Join(uerr, done())
	}
	return share, cleanup, nil
}

// Pid returns the process id of the main smbd, which is also the id of the
// process group holding every smbd it forks.
func (s *Samba) Pid() int { return s.proc.Pid() }

// Kill ends smbd and every process it forked with SIGKILL, as a crash
// would: clients see their connections reset. It waits for the main smbd
// to exit. Restart starts the server again.
func (s *Samba) Kill() {
	s.proc.Kill()
	s.log.Debug("smbd killed", "addr", s.Addr)
}

// Restart starts smbd again on the same address, with the same
// configuration, share, user and password, after Kill or a crash; a
// running smbd is killed first. It returns once a real SMB session can be
// set up, or when ctx ends. It must not be called after Close.
func (s *Samba) Restart(ctx context.Context) error {
	s.proc.Kill()
	for {
		clash, err := s.start(ctx, s.smbd, s.readyTimeout)
		if err == nil {
			return nil
		}
		if !clash || ctx.Err() != nil {
			return err
		}
		// The port is still held (a dying child's socket): try again.
		s.log.Debug("port still taken, retrying", "addr", s.Addr)
		select {
		case <-ctx.Done():
			return fmt.Errorf("testenv: restart smbd on %s: %w (last: %w)", s.Addr, ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Close stops smbd with SIGTERM, waits for it, and then kills whatever is
// left of its process group. It is safe to call more than once.
func (s *Samba) Close() error {
	s.closeOnce.Do(func() {
		if s.proc == nil {
			return
		}
		if err := s.proc.Stop(sambaStopGrace); err != nil {
			s.closeErr = fmt.Errorf("%w\n--- %s (tail) ---\n%s", err, s.LogPath, sambaTail(s.LogPath, sambaLogTail))
		}
		s.log.Debug("smbd stopped", "addr", s.Addr)
	})
	return s.closeErr
}

// writeConf writes the private smb.conf. Every path Samba would otherwise
// take from its build (/var/lib/samba, /run/samba, …) points under dir.
func (s *Samba) writeConf(dir string, port int, opts SambaOptions) error {
	p := func(sub string) string { return filepath.Join(dir, sub) }
	var b strings.Builder
	fmt.Fprintf(&b, "# private smbd of %s; generated, do not edit\n[global]\n", Marker)
	set := func(k string, v any) { fmt.Fprintf(&b, "  %s = %v\n", k, v) }
	if port > 0 {
		set("smb ports", port)
	}
	set("interfaces", "lo")
	set("bind interfaces only", "yes")
	set("disable netbios", "yes")
	set("server role", "standalone server")
	set("workgroup", "TWINSNAP")
	set("state directory", p("state"))
	set("lock directory", p("lock"))
	set("cache directory", p("cache"))
	set("pid directory", p("pid"))
	set("private dir", p("private"))
	set("ncalrpc dir", p("ncalrpc"))
	set("passdb backend", "tdbsam:"+p("passdb.tdb"))
	set("log file", s.LogPath)
	set("log level", opts.LogLevel)
	set("max log size", 0)
	set("load printers", "no")
	set("printing", "bsd")
	set("printcap name", "/dev/null")
	set("disable spoolss", "yes")
	set("map to guest", "never")
	set("unix password sync", "no")
	if opts.SigningOnly {
		set("server smb encrypt", "off")
		set("server signing", "mandatory")
		set("aio read size", 0)
		set("aio write size", 0)
	} else {
		set("server smb encrypt", "required")
	}
	fmt.Fprintf(&b, "\n[%s]\n", opts.Share)
	set("path", s.Dir)
	set("read only", "no")
	set("guest ok", "no")
	set("valid users", opts.User)
	set("create mask", "0644")
	set("directory mask", "0755")
	if err := os.WriteFile(s.ConfPath, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("testenv: samba conf: %w", err)
	}
	return nil
}

// addUser adds s.User with s.Password to the private passdb.
func (s *Samba) addUser(ctx context.Context, smbpasswd string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, smbpasswd, "-c", s.ConfPath, "-s", "-a", s.User)
	cmd.Stdin = strings.NewReader(s.Password + "\n" + s.Password + "\n")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("testenv: smbpasswd -a %s: %w: %s", s.User, err, bytes.TrimSpace(out))
	}
	return nil
}

// sambaFreePort returns a TCP port that was free on 127.0.0.1 a moment
// ago. Another process may take it before smbd binds it: callers retry.
func sambaFreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("testenv: free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func sambaPassword() (string, error) {
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("testenv: password: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// sambaLogHas reports whether the file at path contains s.
func sambaLogHas(path, s string) bool {
	b, err := os.ReadFile(path)
	return err == nil && bytes.Contains(b, []byte(s))
}

// sambaTail returns at most the last n bytes of the file at path.
func sambaTail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > n {
		_, _ = f.Seek(fi.Size()-n, io.SeekStart)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	return string(b)
}
