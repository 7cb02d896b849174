package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/twinsnap/twinsnap/cluster/command"
	"github.com/twinsnap/twinsnap/cluster/state"
	"github.com/twinsnap/twinsnap/export"
	"github.com/twinsnap/twinsnap/export/local"
	"github.com/twinsnap/twinsnap/export/smb"
	"github.com/twinsnap/twinsnap/internal/api"
)

// shareLocation is a parsed share URL.
type shareLocation struct {
	smb   bool
	addr  string // host:port
	share string
	dir   string // "/"-separated, relative to the share (smb) or absolute (file)
}

// parseShareURL reads smb://host[:port]/share[/dir] or file:///dir.
func parseShareURL(raw string) (shareLocation, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return shareLocation{}, fmt.Errorf("share URL %q: %w", raw, err)
	}
	switch u.Scheme {
	case "smb":
		if u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
			return shareLocation{}, fmt.Errorf("share URL %q: want smb://host[:port]/share[/dir] without user, query or fragment", raw)
		}
		parts := strings.SplitN(strings.Trim(u.Path, "/"), "/", 2)
		if parts[0] == "" {
			return shareLocation{}, fmt.Errorf("share URL %q names no share", raw)
		}
		loc := shareLocation{smb: true, addr: u.Host, share: parts[0]}
		if _, _, err := net.SplitHostPort(loc.addr); err != nil {
			loc.addr = net.JoinHostPort(u.Host, "445")
		}
		if len(parts) == 2 {
			loc.dir = path.Clean(parts[1])
			if loc.dir == "." || strings.HasPrefix(loc.dir, "..") {
				return shareLocation{}, fmt.Errorf("share URL %q: bad directory", raw)
			}
		}
		return loc, nil
	case "file":
		if u.Host != "" || !path.IsAbs(u.Path) {
			return shareLocation{}, fmt.Errorf("share URL %q: want file:///absolute/dir", raw)
		}
		return shareLocation{dir: path.Clean(u.Path)}, nil
	}
	return shareLocation{}, fmt.Errorf("share URL %q: the scheme must be smb or file", raw)
}

// dialShare opens a transport rooted at sub (a relative directory, "" for
// the share's own directory) of a registered share, with retries and
// re-dialling after a lost connection. With create, sub is made first.
func (d *Daemon) dialShare(ctx context.Context, sh state.Share, sub string, create bool) (export.Transport, error) {
	return d.dialShareCounting(ctx, sh, sub, create, nil)
}

// dialShareCounting is dialShare with the bytes written to the server,
// resent ones included, counted in wire (when not nil).
func (d *Daemon) dialShareCounting(ctx context.Context, sh state.Share, sub string, create bool, wire *atomic.Int64) (export.Transport, error) {
	loc, err := parseShareURL(sh.URL)
	if err != nil {
		return nil, err
	}
	if loc.smb {
		password := ""
		if len(sh.Password) > 0 {
			if d.clusterKey == nil {
				return nil, apiError(api.CodeUnavailable, "this node has no cluster key to open the share's password: run `twinsnapd tls node` again for it and restart")
			}
			b, err := d.clusterKey.Open(sh.Password, []byte(sh.Name))
			if err != nil {
				return nil, fmt.Errorf("share %s: the stored password does not open with this cluster's key: %w", sh.Name, err)
			}
			password = string(b)
		}
		cfg := smb.Config{Addr: loc.addr, Share: loc.share, Dir: loc.dir, User: sh.User, Password: password, Domain: sh.Domain,
			Logger: d.log.With("component", "smb", "share", sh.Name)}
		dial := func(ctx context.Context, dir string) (export.Transport, error) {
			c := cfg
			c.Dir = dir
			t, err := smb.Dial(ctx, c)
			if err != nil || wire == nil {
				return t, err
			}
			return countingTransport{Transport: t, n: wire}, nil
		}
		if create && sub != "" {
			t, err := dial(ctx, loc.dir)
			if err != nil {
				return nil, err
			}
			err = t.MkdirAll(ctx, sub)
			_ = t.Close()
			if err != nil {
				return nil, fmt.Errorf("share %s: making %s: %w", sh.Name, sub, err)
			}
		}
		root := path.Join(loc.dir, sub)
		t, err := dial(ctx, root)
		if err != nil {
			return nil, err
		}
		return export.WithRetry(t, export.DefaultRetryPolicy, func(ctx context.Context) (export.Transport, error) { return dial(ctx, root) }), nil
	}
	root := filepath.Join(loc.dir, filepath.FromSlash(sub))
	if create {
		if err := os.MkdirAll(root, 0o750); err != nil {
			return nil, err
		}
	}
	t, err := local.New(root)
	if err != nil || wire == nil {
		return t, err
	}
	return countingTransport{Transport: t, n: wire}, nil
}

func shareView(sh state.Share) api.Share {
	return api.Share{Name: sh.Name, URL: sh.URL, User: sh.User, Domain: sh.Domain, HasPassword: len(sh.Password) > 0, CreatedAt: sh.CreatedAt}
}

func (d *Daemon) getShares(w http.ResponseWriter, _ *http.Request) error {
	out := api.ShareList{Shares: []api.Share{}}
	for _, sh := range d.st.Shares() {
		out.Shares = append(out.Shares, shareView(sh))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// postShare registers a share. The password is sealed with the cluster
// key before it leaves this node; only the sealed bytes are replicated.
func (d *Daemon) postShare(w http.ResponseWriter, r *http.Request) error {
	var req api.ShareAddRequest
	if err := readJSON(r, &req); err != nil {
		return err
	}
	loc, err := parseShareURL(req.URL)
	if err != nil {
		return apiError(api.CodeInvalid, err.Error())
	}
	if !loc.smb && (req.User != "" || req.Password != "") {
		return apiError(api.CodeInvalid, "a file:// share takes no user or password")
	}
	if _, err := d.st.Share(req.Name); err == nil {
		return apiError(api.CodeConflict, fmt.Sprintf("a share named %q exists; remove it first", req.Name))
	}
	cmd := &command.ShareAdded{Name: req.Name, URL: req.URL, User: req.User, Domain: req.Domain, CreatedAt: time.Now().UTC()}
	if req.Password != "" {
		if d.clusterKey == nil {
			return apiError(api.CodeUnavailable, "this node has no cluster key to seal the password: run `twinsnapd tls node` again for it and restart")
		}
		sealed, err := d.clusterKey.Seal([]byte(req.Password), []byte(req.Name))
		if err != nil {
			return err
		}
		cmd.Password, cmd.KeyID = sealed, d.clusterKey.ID()
	}
	if err := cmd.Validate(); err != nil {
		return apiError(api.CodeInvalid, err.Error())
	}
	if req.Check == nil || *req.Check {
		sh := state.Share{Name: cmd.Name, URL: cmd.URL, User: cmd.User, Domain: cmd.Domain, Password: cmd.Password}
		if err := d.checkShare(r.Context(), sh); err != nil {
			return apiError(api.CodeInvalid, fmt.Sprintf("cannot use share %s: %v", req.Name, err))
		}
	}
	res, err := d.propose(r.Context(), cmd)
	if err != nil {
		return err
	}
	if err := d.waitApplied(r.Context(), res.Index); err != nil {
		return err
	}
	d.log.Info("share added", "share", req.Name, "url", req.URL, "user", req.User, "password", req.Password != "", "by", callerOf(r).name)
	sh, err := d.st.Share(req.Name)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, shareView(sh))
	return nil
}

// checkShare connects to a share and writes and removes a probe file.
func (d *Daemon) checkShare(ctx context.Context, sh state.Share) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	t, err := d.dialShare(ctx, sh, "", false)
	if err != nil {
		return err
	}
	defer func() { _ = t.Close() }()
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := ".twinsnap-probe-" + hex.EncodeToString(b[:])
	f, err := t.OpenWriter(ctx, name)
	if err != nil {
		return fmt.Errorf("writing a probe file: %w", err)
	}
	_, werr := f.WriteAt([]byte("twinsnap"), 0)
	cerr := f.Close()
	rerr := t.Remove(ctx, name)
	return errors.Join(werr, cerr, rerr)
}

func (d *Daemon) deleteShare(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	res, err := d.propose(r.Context(), &command.ShareRemoved{Name: name, At: time.Now().UTC()})
	if err != nil {
		return err
	}
	if err := d.waitApplied(r.Context(), res.Index); err != nil {
		return err
	}
	d.log.Info("share removed", "share", name, "by", callerOf(r).name)
	w.WriteHeader(http.StatusNoContent)
	return nil
}
