package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/twinsnap/twinsnap/cluster"
	"github.com/twinsnap/twinsnap/cluster/command"
	"github.com/twinsnap/twinsnap/cluster/pki"
	"github.com/twinsnap/twinsnap/cluster/state"
	"github.com/twinsnap/twinsnap/internal/api"
	"github.com/twinsnap/twinsnap/snapshot"
	"github.com/twinsnap/twinsnap/volumes"
)

// Version is the twinsnap release, set at build time with -ldflags.
var Version = "dev"

// Daemon is one running twinsnapd: the cluster node and its API.
type Daemon struct {
	cfg    *Config
	log    *slog.Logger
	bundle *pki.Bundle
	st     *state.State
	node   *cluster.Node
	apiLn  net.Listener
	srv    *http.Server
	// peerTLS is the client configuration for calls to peers' APIs.
	peerTLS *tls.Config
	// store, engine and dataLn exist on data nodes only.
	store  *volumes.Store
	engine *snapshot.Engine
	dataLn net.Listener
	// clusterKey seals share passwords; nil when this node's TLS
	// directory has none (share operations are then refused).
	clusterKey *pki.ClusterKey
	jobs       *jobRunner

	done      chan struct{} // closed by Close
	closeOnce sync.Once
	wg        sync.WaitGroup
}

// NewLogger returns the slog logger the configuration asks for.
func NewLogger(w io.Writer, cfg LogConfig) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.Level)); err != nil {
		return nil, fmt.Errorf("%w: log.level %q: %w", ErrConfig, cfg.Level, err)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch cfg.Format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text", "":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("%w: log.format %q must be text or json", ErrConfig, cfg.Format)
}

// Start opens the node and serves the API. Stop it with Close.
func Start(cfg *Config, log *slog.Logger) (*Daemon, error) {
	if err := cfg.ensureDataDir(); err != nil {
		return nil, err
	}
	bundle, err := pki.LoadBundle(cfg.TLS.Dir, cfg.ID)
	if err != nil {
		return nil, fmt.Errorf("loading the node certificate (create it with `twinsnapd tls node`): %w", err)
	}
	if err := bundle.Verify(time.Now()); err != nil {
		return nil, fmt.Errorf("node certificate: %w", err)
	}
	role, name, err := bundle.Identity()
	if err != nil {
		return nil, fmt.Errorf("node certificate: %w", err)
	}
	if role != pki.RoleNode || name != cfg.ID {
		return nil, fmt.Errorf("%w: the certificate in %s names %s %q, not node %q", ErrConfig, cfg.TLS.Dir, role, name, cfg.ID)
	}
	d := &Daemon{cfg: cfg, log: log.With("component", "daemon", "node", cfg.ID), bundle: bundle, st: state.New(), done: make(chan struct{})}
	ok := false
	defer func() {
		if !ok {
			_ = d.Close()
		}
	}()
	d.peerTLS = peerClientTLS(bundle)

	d.node, err = cluster.Open(cluster.Config{
		ID:            cfg.ID,
		Role:          cfg.Role,
		Dir:           cfg.raftDir(),
		RaftAddr:      cfg.Listen.Raft,
		Advertise:     cfg.Advertise.Raft,
		Bundle:        bundle,
		State:         d.st,
		Logger:        log,
		Timing:        cfg.timing(),
		PeerAddresses: cfg.Cluster.PeerAddresses,
	})
	if err != nil {
		return nil, err
	}
	has, err := d.node.HasState()
	if err != nil {
		return nil, err
	}
	if !has && len(cfg.Cluster.Bootstrap) > 0 {
		var servers []cluster.Server
		for _, p := range cfg.Cluster.Bootstrap {
			servers = append(servers, cluster.Server{ID: p.ID, Address: p.Raft})
		}
		if err := d.node.Bootstrap(servers); err != nil {
			return nil, err
		}
		d.log.Info("bootstrapped a new cluster", "voters", len(servers))
	}

	d.apiLn, err = net.Listen("tcp", cfg.Listen.API)
	if err != nil {
		return nil, fmt.Errorf("API listener: %w", err)
	}
	d.srv = &http.Server{
		Handler:           d.routes(),
		TLSConfig:         pki.ServerConfig(bundle, pki.RoleAdmin, pki.RoleNode),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		WriteTimeout:      5 * time.Minute,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.With("component", "api").Handler(), slog.LevelDebug),
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		if err := d.srv.ServeTLS(d.apiLn, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("API server stopped", "err", err)
		}
	}()

	ctx, cancel := context.WithCancel(context.Background())
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		<-d.done
		cancel()
	}()
	if key, err := pki.LoadClusterKey(cfg.TLS.Dir); err == nil {
		d.clusterKey = &key
	} else {
		d.log.Warn("no cluster key: shares with passwords cannot be added or used on this node", "err", err)
	}
	if err := d.startSnapshots(ctx); err != nil {
		return nil, err
	}
	if cfg.Role == command.RoleData {
		d.jobs = &jobRunner{d: d, running: map[string]context.CancelFunc{}}
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			if d.waitCaughtUp(ctx) {
				d.jobs.run(ctx)
			}
		}()
	}
	d.wg.Add(2)
	go func() {
		defer d.wg.Done()
		d.membership(ctx, !has)
	}()
	go func() {
		defer d.wg.Done()
		d.thawLocalGuests(ctx)
	}()
	ok = true
	d.log.Info("twinsnapd started", "version", Version, "role", cfg.Role, "api", d.apiLn.Addr().String(), "raft", d.node.Addr().String())
	return d, nil
}

// APIAddr returns the address the API listens on.
func (d *Daemon) APIAddr() net.Addr { return d.apiLn.Addr() }

// Node returns the cluster node.
func (d *Daemon) Node() *cluster.Node { return d.node }

// membership makes this node a registered member: it joins through a
// member's API when it is new and has a join list, then records its role
// and addresses in the replicated state (retrying until a leader takes it).
func (d *Daemon) membership(ctx context.Context, fresh bool) {
	self := command.Node{
		ID:          d.cfg.ID,
		Role:        d.cfg.Role,
		RaftAddress: d.cfg.Advertise.Raft,
		APIAddress:  d.cfg.Advertise.API,
		DataAddress: d.cfg.Advertise.Data,
	}
	if fresh && len(d.cfg.Cluster.Join) > 0 {
		c := api.NewClientTLS(d.cfg.Cluster.Join, d.peerTLS)
		defer c.Close()
		for {
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err := c.Join(cctx, api.JoinRequest{Node: self})
			cancel()
			if err == nil {
				d.log.Info("joined the cluster", "via", strings.Join(d.cfg.Cluster.Join, ","))
				return // the member that admitted us registered us too
			}
			d.log.Warn("joining failed; retrying", "err", err)
			if !sleep(ctx, 2*time.Second) {
				return
			}
		}
	}
	for {
		if err := d.register(ctx, self); err == nil {
			return
		} else if ctx.Err() == nil {
			d.log.Debug("registering this node failed; retrying", "err", err)
		}
		if !sleep(ctx, time.Second) {
			return
		}
	}
}

// register records self in the replicated state unless it is there already.
func (d *Daemon) register(ctx context.Context, self command.Node) error {
	if _, err := d.node.WaitLeader(ctx); err != nil {
		return err
	}
	cur, err := d.st.Node(self.ID)
	var cmd command.Command
	switch {
	case err == nil && cur.Node == self:
		return nil
	case err == nil:
		cmd = &command.NodeUpdated{Node: self}
	default:
		cmd = &command.NodeAdded{Node: self}
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	res, err := d.node.Propose(cctx, cmd)
	if err != nil {
		return err
	}
	if res.Err != nil && !errors.Is(res.Err, state.ErrExists) {
		return res.Err
	}
	d.log.Info("registered this node in the cluster state", "role", self.Role)
	return nil
}

// Close stops the API and the node. It is safe to call more than once.
func (d *Daemon) Close() error {
	var err error
	d.closeOnce.Do(func() { err = d.close() })
	return err
}

func (d *Daemon) close() error {
	close(d.done)
	var errs []error
	if d.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		errs = append(errs, d.srv.Shutdown(ctx))
		cancel()
	} else if d.apiLn != nil {
		errs = append(errs, d.apiLn.Close())
	}
	if d.dataLn != nil {
		d.dataLn.Close()
	}
	d.wg.Wait()
	if d.node != nil {
		errs = append(errs, d.node.Close())
	}
	return errors.Join(errs...)
}

// peerClientTLS is the TLS configuration for calling peers' APIs with this
// node's certificate; peers are verified as nodes of this cluster.
func peerClientTLS(b *pki.Bundle) *tls.Config {
	return pki.ClientConfig(b, pki.RoleNode, "")
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
