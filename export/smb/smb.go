package smb

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hirochachacha/go-smb2"

	"github.com/twinsnap/twinsnap/export"
)

// DefaultCallTimeout is the CallTimeout of a zero Config.
const DefaultCallTimeout = 60 * time.Second

// logoffTimeout bounds the unmount and logoff in Close.
const logoffTimeout = 5 * time.Second

// Config says where and how to connect.
type Config struct {
	// Addr is the server's host:port; the port defaults to 445.
	Addr string
	// Share is the share's name (not a path).
	Share string
	// Dir is the transport's root inside the share, "/"-separated, or ""
	// for the share's root. It must exist.
	Dir string
	// User, Password and Domain are the NTLMv2 credentials.
	User, Password, Domain string
	// RequireEncryption makes Dial fail with ErrNotEncrypted unless the
	// session's messages are encrypted.
	RequireEncryption bool
	// CallTimeout bounds each SMB call; past it the connection is closed.
	// Zero means DefaultCallTimeout.
	CallTimeout time.Duration
	// Logger receives records about the connection; nil means
	// slog.Default().
	Logger *slog.Logger
}

// Transport is an export.Transport over one SMB session and share.
type Transport struct {
	cfg       Config
	dir       string // Dir with backslashes
	conn      *wireConn
	sess      *smb2.Session
	share     *smb2.Share
	log       *slog.Logger
	encrypted bool
	signed    bool
	interims  atomic.Int64 // calls repeated after an unsigned interim response

	closeOnce sync.Once
	closeErr  error
}

var _ export.Transport = (*Transport)(nil)

// Dial connects to the server, sets up an NTLMv2 session, mounts the share
// and checks that Dir is a directory, all within ctx. A refused, reset or
// timed-out connection gives an error wrapping export.ErrTransient; a
// failed logon, a missing share or Dir, and an unencrypted session under
// RequireEncryption are permanent.
func Dial(ctx context.Context, cfg Config) (*Transport, error) {
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = DefaultCallTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := cfg.check(); err != nil {
		return nil, err
	}
	addr := cfg.Addr
	if _, _, err := net.SplitHostPort(addr); err != nil {
		addr = net.JoinHostPort(addr, "445")
	}
	log := cfg.Logger.With("component", "export.smb", "addr", addr, "share", cfg.Share)

	d := net.Dialer{KeepAlive: 15 * time.Second}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, classify("dial", addr, err)
	}
	conn := &wireConn{Conn: raw}
	// go-smb2 checks ctx only between requests; closing the connection
	// ends a read that hangs.
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	t, err := setup(ctx, conn, cfg, log)
	if !stop() && err == nil {
		err = classify("dial", addr, ctx.Err())
	}
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	log.Debug("connected", "dir", cfg.Dir, "encrypted", t.encrypted, "signed", t.signed)
	if !t.encrypted && !t.signed {
		log.Warn("session is neither encrypted nor signed (a guest session?)")
	}
	if cfg.RequireEncryption && !t.encrypted {
		_ = t.Close()
		return nil, fmt.Errorf("smb: %s share %q: %w (the server must require encryption: smb encrypt = required)", addr, cfg.Share, ErrNotEncrypted)
	}
	return t, nil
}

func (cfg Config) check() error {
	switch {
	case cfg.Addr == "":
		return errors.New("smb: no server address")
	case cfg.Share == "" || strings.ContainsAny(cfg.Share, `/\`):
		return fmt.Errorf("smb: share name %q is empty or a path", cfg.Share)
	case cfg.User == "":
		return errors.New("smb: no user (go-smb2 has no anonymous logon)")
	}
	if err := export.ValidDir(cfg.Dir); err != nil {
		return fmt.Errorf("smb: Dir: %w", err)
	}
	return nil
}

// setup authenticates, mounts and probes; ctx bounds it.
func setup(ctx context.Context, conn *wireConn, cfg Config, log *slog.Logger) (*Transport, error) {
	dialer := &smb2.Dialer{Initiator: &smb2.NTLMInitiator{User: cfg.User, Password: cfg.Password, Domain: cfg.Domain}}
	sess, err := dialer.DialContext(ctx, conn)
	if err != nil {
		return nil, classify("session setup as", cfg.User, err)
	}
	share, err := sess.WithContext(ctx).Mount(cfg.Share)
	if err != nil {
		lctx, cancel := context.WithTimeout(context.Background(), logoffTimeout)
		defer cancel()
		_ = sess.WithContext(lctx).Logoff()
		return nil, classify("mount", cfg.Share, err)
	}
	t := &Transport{
		cfg:   cfg,
		dir:   strings.ReplaceAll(cfg.Dir, "/", `\`),
		conn:  conn,
		sess:  sess,
		share: share,
		log:   log,
	}
	// The probe's messages tell how the session protects them.
	before := conn.Counts()
	fi, err := share.WithContext(ctx).Stat(t.dir)
	after := conn.Counts()
	if err != nil {
		_ = t.Close()
		return nil, classify("stat root", cfg.Dir, err)
	}
	if !fi.IsDir() {
		_ = t.Close()
		return nil, fmt.Errorf("smb: root %q in share %q is not a directory", cfg.Dir, cfg.Share)
	}
	sent := after.Encrypted + after.Signed + after.Plain - before.Encrypted - before.Signed - before.Plain
	t.encrypted = sent > 0 && after.Encrypted-before.Encrypted == sent
	t.signed = sent > 0 && after.Signed-before.Signed == sent
	return t, nil
}

// Encrypted reports whether the session encrypts its messages (SMB3
// transform headers on the wire).
func (t *Transport) Encrypted() bool { return t.encrypted }

// Signed reports whether the session signs, rather than encrypts, its
// messages. A session that does neither (a guest session) is logged as a
// warning by Dial.
func (t *Transport) Signed() bool { return t.signed }

// path returns the share path of a name below the root.
func (t *Transport) path(name string) string {
	p := strings.ReplaceAll(name, "/", `\`)
	switch {
	case t.dir == "":
		return p
	case p == "":
		return t.dir
	}
	return t.dir + `\` + p
}

// watch bounds one call by CallTimeout: past it, the connection is closed.
// The returned function ends the watch.
func (t *Transport) watch(op, name string) func() {
	timer := time.AfterFunc(t.cfg.CallTimeout, func() {
		t.log.Warn("SMB call took too long; closing the connection", "op", op, "name", name, "timeout", t.cfg.CallTimeout)
		_ = t.conn.Close()
	})
	return func() { timer.Stop() }
}

// begin validates names and returns the share bound to ctx.
func (t *Transport) begin(ctx context.Context, names ...string) (*smb2.Share, error) {
	for _, n := range names {
		if err := export.ValidName(n); err != nil {
			return nil, fmt.Errorf("smb: %w", err)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("smb: %w", err)
	}
	return t.share.WithContext(ctx), nil
}

// OpenWriter implements export.Transport: the file is opened with
// FILE_OPEN_IF (created if absent, never truncated). Close the writer
// before renaming the file: go-smb2 opens files without delete sharing.
func (t *Transport) OpenWriter(ctx context.Context, name string) (export.FileWriter, error) {
	share, err := t.begin(ctx, name)
	if err != nil {
		return nil, err
	}
	defer t.watch("open", name)()
	f, err := share.OpenFile(t.path(name), os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return nil, classify("open", name, err)
	}
	return &writer{t: t, ctx: ctx, f: f, name: name}, nil
}

// OpenReader implements export.Transport.
func (t *Transport) OpenReader(ctx context.Context, name string) (export.FileReader, error) {
	share, err := t.begin(ctx, name)
	if err != nil {
		return nil, err
	}
	defer t.watch("open", name)()
	f, err := share.Open(t.path(name))
	if err != nil {
		return nil, classify("open", name, err)
	}
	fi, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, classify("stat", name, err)
	}
	if fi.IsDir() {
		_ = f.Close()
		return nil, fmt.Errorf("smb: open %q: is a directory", name)
	}
	return &reader{t: t, ctx: ctx, f: f, name: name, size: fi.Size()}, nil
}

func fileInfo(name string, fi os.FileInfo) export.FileInfo {
	out := export.FileInfo{Name: name, IsDir: fi.IsDir(), ModTime: fi.ModTime()}
	if !out.IsDir {
		out.Size = fi.Size()
	}
	return out
}

// Stat implements export.Transport.
func (t *Transport) Stat(ctx context.Context, name string) (export.FileInfo, error) {
	share, err := t.begin(ctx, name)
	if err != nil {
		return export.FileInfo{}, err
	}
	defer t.watch("stat", name)()
	fi, err := share.Stat(t.path(name))
	if err != nil {
		return export.FileInfo{}, classify("stat", name, err)
	}
	return fileInfo(path.Base(name), fi), nil
}

// Rename implements export.Transport with one SMB rename
// (FileRenameInformation with ReplaceIfExists off, which go-smb2 v1.1.0
// always sends): the server refuses an existing target with
// STATUS_OBJECT_NAME_COLLISION, reported as export.ErrExist. The file
// must not be open.
func (t *Transport) Rename(ctx context.Context, from, to string) error {
	share, err := t.begin(ctx, from, to)
	if err != nil {
		return err
	}
	defer t.watch("rename", from)()
	if err := share.Rename(t.path(from), t.path(to)); err != nil {
		return classify("rename", from+" to "+to, err)
	}
	return nil
}

// Remove implements export.Transport.
func (t *Transport) Remove(ctx context.Context, name string) error {
	share, err := t.begin(ctx, name)
	if err != nil {
		return err
	}
	defer t.watch("remove", name)()
	if err := share.Remove(t.path(name)); err != nil {
		return classify("remove", name, err)
	}
	return nil
}

// MkdirAll implements export.Transport.
func (t *Transport) MkdirAll(ctx context.Context, dir string) error {
	if dir == "" {
		_, err := t.begin(ctx)
		return err
	}
	share, err := t.begin(ctx, dir)
	if err != nil {
		return err
	}
	elems := strings.Split(dir, "/")
	for i := range elems {
		sub := strings.Join(elems[:i+1], "/")
		err := t.mkdir(share, sub)
		if err == nil {
			continue
		}
		if !errors.Is(err, export.ErrExist) {
			return err
		}
		fi, serr := t.Stat(ctx, sub)
		if serr != nil {
			return serr
		}
		if !fi.IsDir {
			return fmt.Errorf("smb: mkdir %q: %q is a file", dir, sub)
		}
	}
	return nil
}

func (t *Transport) mkdir(share *smb2.Share, dir string) error {
	defer t.watch("mkdir", dir)()
	return classify("mkdir", dir, share.Mkdir(t.path(dir), 0o755))
}

// List implements export.Transport.
func (t *Transport) List(ctx context.Context, dir string) ([]export.FileInfo, error) {
	var share *smb2.Share
	var err error
	if dir == "" {
		share, err = t.begin(ctx)
	} else {
		share, err = t.begin(ctx, dir)
	}
	if err != nil {
		return nil, err
	}
	defer t.watch("list", dir)()
	fis, err := share.ReadDir(t.path(dir))
	if err != nil {
		return nil, classify("list", dir, err)
	}
	out := make([]export.FileInfo, 0, len(fis))
	for _, fi := range fis {
		out = append(out, fileInfo(fi.Name(), fi))
	}
	return out, nil // ReadDir sorts by name
}

// Close implements export.Transport: it unmounts the share, logs off and
// closes the connection, waiting at most a few seconds for the server.
func (t *Transport) Close() error {
	t.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), logoffTimeout)
		defer cancel()
		stop := context.AfterFunc(ctx, func() { _ = t.conn.Close() })
		defer stop()
		uerr := t.share.WithContext(ctx).Umount()
		lerr := t.sess.WithContext(ctx).Logoff()
		cerr := t.conn.Close()
		if errors.Is(cerr, net.ErrClosed) {
			cerr = nil
		}
		if uerr != nil || lerr != nil {
			// A lost connection cannot log off; that is not worth an error.
			if transientNet(uerr) || transientNet(lerr) {
				uerr, lerr = nil, nil
			}
		}
		if err := errors.Join(uerr, lerr, cerr); err != nil {
			t.closeErr = fmt.Errorf("smb: close: %w", err)
		}
	})
	return t.closeErr
}
