package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"

	"github.com/twinsnap/twinsnap/cluster/command"
	"github.com/twinsnap/twinsnap/cluster/pki"
	"github.com/twinsnap/twinsnap/cluster/state"
)

// Errors of the cluster package.
var (
	// ErrNotLeader: the operation needs the leader and this node is not it
	// (and no leader was reachable to forward to).
	ErrNotLeader = errors.New("cluster: not the leader")
	// ErrNoLeader: no leader is known; the cluster may have lost quorum.
	ErrNoLeader = errors.New("cluster: no leader")
	// ErrUnknownOutcome: a forwarded write was sent but its answer was lost;
	// it may or may not have been committed.
	ErrUnknownOutcome = errors.New("cluster: outcome unknown")
	// ErrClosed: the node was shut down.
	ErrClosed = errors.New("cluster: node closed")
)

// Timing holds Raft's timeouts. Loopback and LAN clusters use
// DefaultTiming; slow links want larger values.
type Timing struct {
	Heartbeat   time.Duration
	Election    time.Duration
	LeaderLease time.Duration
	Commit      time.Duration
}

// DefaultTiming suits nodes on one LAN: a lost leader is replaced within
// about two seconds.
var DefaultTiming = Timing{
	Heartbeat:   500 * time.Millisecond,
	Election:    500 * time.Millisecond,
	LeaderLease: 250 * time.Millisecond,
	Commit:      20 * time.Millisecond,
}

// Config configures a Node.
type Config struct {
	// ID is the node id (also its Raft server id and the name in its
	// certificate).
	ID string
	// Role is data or witness.
	Role command.Role
	// Dir holds raft.db and the state checkpoints.
	Dir string
	// RaftAddr is the host:port to listen on for node-to-node traffic
	// (Raft and forwarding); Advertise is what peers dial, default RaftAddr.
	RaftAddr  string
	Advertise string
	// Bundle is the node's certificate bundle (role node).
	Bundle *pki.Bundle
	// State is the replicated state the node applies commands to.
	State *state.State
	// Logger receives the node's and Raft's logs.
	Logger *slog.Logger
	// Timing defaults to DefaultTiming.
	Timing Timing
	// ApplyTimeout bounds one proposal when its context has no deadline.
	ApplyTimeout time.Duration
	// Clock stamps leader-proposed commands; time.Now when nil.
	Clock func() time.Time
	// PeerAddresses overrides, per node id, the address this node dials to
	// reach that peer (Raft and forwarding), for peers reached through a
	// different path (NAT, a dedicated link) than the address they
	// advertise.
	PeerAddresses map[string]string
}

// Server is one member of the Raft configuration.
type Server struct {
	ID      string `json:"id"`
	Address string `json:"address"`
}

// Node is one twinsnap cluster member running Raft.
type Node struct {
	cfg    Config
	log    *slog.Logger
	raft   *raft.Raft
	store  *raftboltdb.BoltStore
	snaps  raft.SnapshotStore
	mux    *mux
	trans  *raft.NetworkTransport
	fwd    *forwarder
	obsCh  chan raft.Observation
	obs    *raft.Observer
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu          sync.Mutex
	leaderTerm  uint64             // term whose leadership tasks ran
	leaderStop  context.CancelFunc // ends the current leadership tasks
	failedPeers map[string]time.Time
	closed      bool
}

// Open starts the node: its stores, its TLS listener, Raft and the
// forwarding service. A new node has no Raft configuration until Bootstrap
// or until a leader adds it.
func Open(cfg Config) (*Node, error) {
	if cfg.ID == "" || cfg.Dir == "" || cfg.RaftAddr == "" || cfg.Bundle == nil || cfg.State == nil {
		return nil, errors.New("cluster: config needs ID, Dir, RaftAddr, Bundle and State")
	}
	if !cfg.Role.Valid() {
		return nil, fmt.Errorf("cluster: role %q is not data or witness", cfg.Role)
	}
	if cfg.Advertise == "" {
		cfg.Advertise = cfg.RaftAddr
	}
	if cfg.Timing == (Timing{}) {
		cfg.Timing = DefaultTiming
	}
	if cfg.ApplyTimeout == 0 {
		cfg.ApplyTimeout = 10 * time.Second
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	log := cfg.Logger.With("component", "cluster", "node", cfg.ID)
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("cluster: data dir: %w", err)
	}
	adv, err := net.ResolveTCPAddr("tcp", cfg.Advertise)
	if err != nil {
		return nil, fmt.Errorf("cluster: advertise address %q: %w", cfg.Advertise, err)
	}

	n := &Node{cfg: cfg, log: log, failedPeers: map[string]time.Time{}}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	ok := false
	defer func() {
		if !ok {
			_ = n.Close()
		}
	}()

	n.store, err = raftboltdb.New(raftboltdb.Options{
		Path:        filepath.Join(cfg.Dir, "raft.db"),
		BoltOptions: &bbolt.Options{Timeout: 2 * time.Second},
	})
	if err != nil {
		return nil, fmt.Errorf("cluster: opening %s (is another twinsnapd using this data dir?): %w", filepath.Join(cfg.Dir, "raft.db"), err)
	}
	hl := newHclog(cfg.Logger.With("component", "raft", "node", cfg.ID), hclog.Info)
	n.snaps, err = raft.NewFileSnapshotStoreWithLogger(filepath.Join(cfg.Dir, "checkpoints"), 2, hl)
	if err != nil {
		return nil, fmt.Errorf("cluster: checkpoint store: %w", err)
	}
	layer, err := ListenTLSStream(cfg.RaftAddr, cfg.Bundle, adv, WithStreamLogger(cfg.Logger.With("node", cfg.ID)))
	if err != nil {
		return nil, err
	}
	n.mux = newMux(layer, log)
	tc := &raft.NetworkTransportConfig{
		Stream:  raftLayer{n.mux},
		MaxPool: 3,
		Timeout: 10 * time.Second,
		Logger:  hl,
	}
	if len(cfg.PeerAddresses) > 0 {
		tc.ServerAddressProvider = addressProvider{n}
	}
	n.trans = raft.NewNetworkTransportWithConfig(tc)

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.ID)
	rc.HeartbeatTimeout = cfg.Timing.Heartbeat
	rc.ElectionTimeout = cfg.Timing.Election
	rc.LeaderLeaseTimeout = cfg.Timing.LeaderLease
	rc.CommitTimeout = cfg.Timing.Commit
	rc.Logger = hl
	n.raft, err = raft.NewRaft(rc, &fsm{st: cfg.State}, n.store, n.store, n.snaps, n.trans)
	if err != nil {
		return nil, fmt.Errorf("cluster: starting raft: %w", err)
	}

	n.obsCh = make(chan raft.Observation, 128)
	n.obs = raft.NewObserver(n.obsCh, false, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.LeaderObservation, raft.RaftState, raft.FailedHeartbeatObservation, raft.ResumedHeartbeatObservation:
			return true
		}
		return false
	})
	n.raft.RegisterObserver(n.obs)
	n.fwd = newForwarder(n)
	n.wg.Add(2)
	go n.observe()
	go n.fwd.serve(n.ctx)
	ok = true
	log.Info("node started", "raft_addr", layer.Addr().String(), "role", cfg.Role)
	return n, nil
}

// addressProvider resolves a peer's dial address from the configured
// overrides; it is installed only when there are overrides, and a peer
// without one is dialled at its address in the Raft configuration.
type addressProvider struct{ n *Node }

// ServerAddr implements raft.ServerAddressProvider.
func (p addressProvider) ServerAddr(id raft.ServerID) (raft.ServerAddress, error) {
	if a, ok := p.n.cfg.PeerAddresses[string(id)]; ok {
		return raft.ServerAddress(a), nil
	}
	// Raft then dials the address in its configuration.
	return "", fmt.Errorf("cluster: no address override for %s", id)
}

// dialAddr returns the address to dial for a peer known by id and address.
func (n *Node) dialAddr(id, addr string) string {
	if a, ok := n.cfg.PeerAddresses[id]; ok {
		return a
	}
	return addr
}

// ID returns the node id.
func (n *Node) ID() string { return n.cfg.ID }

// Role returns the node's role.
func (n *Node) Role() command.Role { return n.cfg.Role }

// Addr returns the address the node-to-node listener is bound to.
func (n *Node) Addr() net.Addr { return n.mux.layer.Addr() }

// HasState reports whether the node already has a Raft configuration or
// log (it was bootstrapped or joined before).
func (n *Node) HasState() (bool, error) {
	return raft.HasExistingState(n.store, n.store, n.snaps)
}

// Bootstrap writes the initial Raft configuration. Calling it on every
// founding member with the same servers is safe; a node that already has
// state ignores it.
func (n *Node) Bootstrap(servers []Server) error {
	has, err := n.HasState()
	if err != nil {
		return fmt.Errorf("cluster: bootstrap: %w", err)
	}
	if has {
		return nil
	}
	var conf raft.Configuration
	for _, s := range servers {
		conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(s.ID), Address: raft.ServerAddress(s.Address)})
	}
	if err := n.raft.BootstrapCluster(conf).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
		return fmt.Errorf("cluster: bootstrap: %w", err)
	}
	return nil
}

// IsLeader reports whether this node is the leader.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// Leader returns the current leader's id and Raft address, if known.
func (n *Node) Leader() (id, addr string) {
	a, i := n.raft.LeaderWithID()
	return string(i), string(a)
}

// WaitLeader waits until a leader is known.
func (n *Node) WaitLeader(ctx context.Context) (string, error) {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		if id, _ := n.Leader(); id != "" {
			return id, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("%w: %w", ErrNoLeader, ctx.Err())
		case <-t.C:
		}
	}
}

// Propose commits cmd through Raft: applied here when this node leads,
// forwarded to the leader otherwise. The result carries the state
// machine's business error, if any; the error reports a failure to commit.
func (n *Node) Propose(ctx context.Context, cmd command.Command) (state.Result, error) {
	if err := cmd.Validate(); err != nil {
		return state.Result{}, fmt.Errorf("cluster: %s: %w", cmd.Type(), err)
	}
	data, err := command.Encode(cmd)
	if err != nil {
		return state.Result{}, fmt.Errorf("cluster: %s: %w", cmd.Type(), err)
	}
	return n.proposeRaw(ctx, data)
}

// proposeRaw commits an encoded command, forwarding when not the leader
// and following leadership changes until ctx ends.
func (n *Node) proposeRaw(ctx context.Context, data []byte) (state.Result, error) {
	ctx, cancel := n.bound(ctx)
	defer cancel()
	for {
		if n.IsLeader() {
			res, err := n.applyLocal(ctx, data)
			if !errors.Is(err, raft.ErrNotLeader) {
				return res, err
			}
		} else if id, addr := n.Leader(); addr != "" {
			addr = n.dialAddr(id, addr)
			res, err := n.fwd.apply(ctx, addr, data)
			if !errors.Is(err, ErrNotLeader) && !errors.Is(err, errUnreachable) {
				return res, err
			}
			n.log.Debug("forwarding failed; retrying", "leader", addr, "err", err)
		}
		select {
		case <-ctx.Done():
			return state.Result{}, fmt.Errorf("%w: %w", ErrNoLeader, ctx.Err())
		case <-n.ctx.Done():
			return state.Result{}, ErrClosed
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// bound gives ctx the default apply timeout if it has no deadline.
func (n *Node) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, n.cfg.ApplyTimeout)
}

// applyLocal applies data on this node, which must be the leader.
func (n *Node) applyLocal(ctx context.Context, data []byte) (state.Result, error) {
	timeout := n.cfg.ApplyTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	if timeout <= 0 {
		return state.Result{}, fmt.Errorf("cluster: apply: %w", context.DeadlineExceeded)
	}
	f := n.raft.Apply(data, timeout)
	if err := f.Error(); err != nil {
		switch {
		case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipTransferInProgress):
			// Nothing was appended: safe to retry with the next leader.
			return state.Result{}, raft.ErrNotLeader
		case errors.Is(err, raft.ErrLeadershipLost):
			return state.Result{}, fmt.Errorf("%w: leadership lost while committing: %w", ErrUnknownOutcome, err)
		case errors.Is(err, raft.ErrEnqueueTimeout):
			return state.Result{}, fmt.Errorf("cluster: apply timed out: %w", err)
		case errors.Is(err, raft.ErrRaftShutdown):
			return state.Result{}, ErrClosed
		}
		return state.Result{}, fmt.Errorf("cluster: apply: %w", err)
	}
	res, ok := f.Response().(state.Result)
	if !ok {
		return state.Result{}, fmt.Errorf("cluster: apply returned %T", f.Response())
	}
	return res, nil
}

// AddVoter adds a node as a voter; on a follower it is forwarded.
func (n *Node) AddVoter(ctx context.Context, id, addr string) error {
	ctx, cancel := n.bound(ctx)
	defer cancel()
	if !n.IsLeader() {
		return n.forwardMembership(ctx, forwardRequest{Op: opAddVoter, ID: id, Address: addr})
	}
	return n.addVoterLocal(ctx, id, addr)
}

func (n *Node) addVoterLocal(ctx context.Context, id, addr string) error {
	if err := n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, until(ctx, n.cfg.ApplyTimeout)).Error(); err != nil {
		return fmt.Errorf("cluster: add voter %s: %w", id, err)
	}
	n.forgetHeartbeats(id)
	return nil
}

// RemoveServer removes a node from the Raft configuration; on a follower it
// is forwarded.
func (n *Node) RemoveServer(ctx context.Context, id string) error {
	ctx, cancel := n.bound(ctx)
	defer cancel()
	if !n.IsLeader() {
		return n.forwardMembership(ctx, forwardRequest{Op: opRemove, ID: id})
	}
	return n.removeLocal(ctx, id)
}

func (n *Node) removeLocal(ctx context.Context, id string) error {
	if err := n.raft.RemoveServer(raft.ServerID(id), 0, until(ctx, n.cfg.ApplyTimeout)).Error(); err != nil {
		return fmt.Errorf("cluster: remove %s: %w", id, err)
	}
	n.forgetHeartbeats(id)
	return nil
}

// forgetHeartbeats drops what the leader recorded of a peer's failing
// heartbeats when the peer leaves or (re)joins: replication to it starts
// afresh, and raft reports a resumed heartbeat only after a failure it
// observed itself.
func (n *Node) forgetHeartbeats(id string) {
	n.mu.Lock()
	delete(n.failedPeers, id)
	n.mu.Unlock()
}

func (n *Node) forwardMembership(ctx context.Context, req forwardRequest) error {
	for {
		id, addr := n.Leader()
		if addr != "" {
			_, err := n.fwd.call(ctx, n.dialAddr(id, addr), req)
			if !errors.Is(err, ErrNotLeader) && !errors.Is(err, errUnreachable) {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", ErrNoLeader, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// until converts a context deadline to a Raft timeout.
func until(ctx context.Context, def time.Duration) time.Duration {
	if dl, ok := ctx.Deadline(); ok {
		if d := time.Until(dl); d > 0 {
			return d
		}
		return time.Millisecond
	}
	return def
}

// Servers returns the current Raft configuration.
func (n *Node) Servers() ([]Server, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, fmt.Errorf("cluster: configuration: %w", err)
	}
	var out []Server
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			out = append(out, Server{ID: string(s.ID), Address: string(s.Address)})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Status describes this node's view of the cluster.
type Status struct {
	ID           string               `json:"id"`
	Role         command.Role         `json:"role"`
	RaftState    string               `json:"raft_state"`
	Term         uint64               `json:"term"`
	LastIndex    uint64               `json:"last_index"`
	CommitIndex  uint64               `json:"commit_index"`
	AppliedIndex uint64               `json:"applied_index"`
	LeaderID     string               `json:"leader_id"`
	LeaderAddr   string               `json:"leader_addr"`
	LastContact  time.Time            `json:"last_contact,omitzero"`
	Servers      []Server             `json:"servers"`
	FailedPeers  map[string]time.Time `json:"failed_peers,omitempty"`
}

// Status returns this node's view of the cluster. FailedPeers is known
// only on the leader: the peers whose heartbeats are failing, with their
// last contact.
func (n *Node) Status() Status {
	st := Status{
		ID:           n.cfg.ID,
		Role:         n.cfg.Role,
		RaftState:    n.raft.State().String(),
		Term:         n.raft.CurrentTerm(),
		LastIndex:    n.raft.LastIndex(),
		CommitIndex:  n.raft.CommitIndex(),
		AppliedIndex: n.raft.AppliedIndex(),
	}
	st.LeaderID, st.LeaderAddr = n.Leader()
	if st.RaftState != raft.Leader.String() {
		st.LastContact = n.raft.LastContact()
	}
	st.Servers, _ = n.Servers()
	n.mu.Lock()
	if n.raft.State() == raft.Leader && len(n.failedPeers) > 0 {
		st.FailedPeers = map[string]time.Time{}
		for k, v := range n.failedPeers {
			st.FailedPeers[k] = v
		}
	}
	n.mu.Unlock()
	return st
}

// Barrier waits until every committed entry is applied on this node.
func (n *Node) Barrier(ctx context.Context) error {
	if err := n.raft.Barrier(until(ctx, n.cfg.ApplyTimeout)).Error(); err != nil {
		return fmt.Errorf("cluster: barrier: %w", err)
	}
	return nil
}

// Close shuts the node down. It is safe to call more than once.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	if n.leaderStop != nil {
		n.leaderStop()
	}
	n.mu.Unlock()
	n.cancel()
	var errs []error
	if n.raft != nil {
		if n.obs != nil {
			n.raft.DeregisterObserver(n.obs)
		}
		errs = append(errs, n.raft.Shutdown().Error())
	}
	if n.trans != nil {
		errs = append(errs, n.trans.Close())
	}
	if n.mux != nil {
		errs = append(errs, n.mux.close())
	}
	n.wg.Wait()
	if n.store != nil {
		errs = append(errs, n.store.Close())
	}
	return errors.Join(errs...)
}
