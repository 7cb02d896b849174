package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/cluster/command"
	"github.com/twinsnap/twinsnap/cluster/pki"
	"github.com/twinsnap/twinsnap/cluster/state"
)

type testNode struct {
	*Node
	st   *state.State
	cfg  Config
	addr string
}

// freeAddr returns a loopback address with a free port.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startCluster starts two data nodes and a witness in this process,
// bootstrapped together and registered in the state.
func startCluster(t *testing.T) []*testNode {
	t.Helper()
	ca, err := pki.NewCA("test", time.Hour)
	if err != nil {
		t.Fatalf("ca: %v", err)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	specs := []struct {
		id   string
		role command.Role
	}{{"data-a", command.RoleData}, {"data-b", command.RoleData}, {"witness", command.RoleWitness}}
	var nodes []*testNode
	var servers []Server
	for _, s := range specs {
		b, err := ca.IssueNode(s.id, time.Hour, "127.0.0.1")
		if err != nil {
			t.Fatalf("issue: %v", err)
		}
		addr := freeAddr(t)
		st := state.New()
		cfg := Config{ID: s.id, Role: s.role, Dir: t.TempDir(), RaftAddr: addr, Bundle: b, State: st, Logger: logger}
		n, err := Open(cfg)
		if err != nil {
			t.Fatalf("open %s: %v", s.id, err)
		}
		tn := &testNode{Node: n, st: st, cfg: cfg, addr: addr}
		t.Cleanup(func() { _ = tn.Close() })
		nodes = append(nodes, tn)
		servers = append(servers, Server{ID: s.id, Address: addr})
	}
	for _, n := range nodes {
		if err := n.Bootstrap(servers); err != nil {
			t.Fatalf("bootstrap: %v", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i, n := range nodes {
		node := command.Node{ID: n.ID(), Role: n.Role(), RaftAddress: n.addr, APIAddress: fmt.Sprintf("127.0.0.1:%d", 9100+i)}
		if n.Role() == command.RoleData {
			node.DataAddress = fmt.Sprintf("127.0.0.1:%d", 9200+i)
		}
		// Leadership may move while the cluster settles (the witness hands
		// it over); a write whose outcome is unknown is retried, and then
		// finds the node registered.
		for {
			res, err := n.Propose(ctx, &command.NodeAdded{Node: node})
			if err == nil && (res.Err == nil || errors.Is(res.Err, state.ErrExists)) {
				break
			}
			if !errors.Is(err, ErrUnknownOutcome) {
				t.Fatalf("register %s: %v / %v", n.ID(), err, res.Err)
			}
		}
	}
	return nodes
}

func leaderOf(t *testing.T, nodes []*testNode, except string) *testNode {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for _, n := range nodes {
			if n.ID() != except && n.IsLeader() {
				return n
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no leader among the nodes")
	return nil
}

func TestForwardedWriteReachesEveryNode(t *testing.T) {
	nodes := startCluster(t)
	leader := leaderOf(t, nodes, "")
	var follower *testNode
	for _, n := range nodes {
		if n != leader {
			follower = n
			break
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	on := true
	res, err := follower.Propose(ctx, &command.SettingsSet{SnapshotsEnabled: &on})
	if err != nil || res.Err != nil {
		t.Fatalf("forwarded write: %v / %v", err, res.Err)
	}
	// A business error travels back from the leader with its class.
	res, err = follower.Propose(ctx, &command.NodeRemoved{ID: "no-such-node"})
	if err != nil {
		t.Fatalf("forwarded remove: %v", err)
	}
	if !errors.Is(res.Err, state.ErrNotFound) {
		t.Fatalf("forwarded business error = %v, want ErrNotFound", res.Err)
	}
	for _, n := range nodes {
		waitApplied(t, n, res.Index)
		if !n.st.Settings().SnapshotsEnabled {
			t.Fatalf("%s does not see snapshots enabled", n.ID())
		}
	}
	want := nodes[0].st.Digest()
	for _, n := range nodes[1:] {
		if n.st.Digest() != want {
			t.Fatalf("%s state differs from %s", n.ID(), nodes[0].ID())
		}
	}
}

func waitApplied(t *testing.T, n *testNode, index uint64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if i, _ := n.st.AppliedIndex(); i >= index {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	i, _ := n.st.AppliedIndex()
	t.Fatalf("%s applied only up to %d, want %d", n.ID(), i, index)
}

// TestFailoverLeadsToDataNodeAndFences stops the leader; a data node must
// lead afterwards (the witness hands leadership over if it wins), and the
// new leader's discard-incomplete raises the fencing term to its term.
func TestFailoverLeadsToDataNodeAndFences(t *testing.T) {
	nodes := startCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Make a data node the leader first (the witness may have won).
	first := leaderOf(t, nodes, "")
	for first.Role() != command.RoleData {
		time.Sleep(100 * time.Millisecond)
		first = leaderOf(t, nodes, "")
	}
	oldTerm := first.Status().Term
	if err := first.Close(); err != nil {
		t.Logf("closing leader: %v", err)
	}
	var next *testNode
	deadline := time.Now().Add(40 * time.Second)
	for time.Now().Before(deadline) {
		next = leaderOf(t, nodes, first.ID())
		if next.Role() == command.RoleData {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if next == nil || next.Role() != command.RoleData {
		t.Fatalf("after the data leader stopped, no data node leads (leader %v)", next)
	}
	term := next.Status().Term
	if term <= oldTerm {
		t.Fatalf("new term %d not after old term %d", term, oldTerm)
	}
	for time.Now().Before(deadline) && next.st.FenceTerm() < term {
		time.Sleep(50 * time.Millisecond)
	}
	if ft := next.st.FenceTerm(); ft != term {
		t.Fatalf("fence term %d, want the new leader's term %d", ft, term)
	}
	// The remaining two nodes keep the cluster writable.
	on := true
	for _, n := range nodes {
		if n == first {
			continue
		}
		res, err := n.Propose(ctx, &command.SettingsSet{SnapshotsEnabled: &on})
		for errors.Is(err, ErrUnknownOutcome) { // idempotent: retry
			res, err = n.Propose(ctx, &command.SettingsSet{SnapshotsEnabled: &on})
		}
		if err != nil || res.Err != nil {
			t.Fatalf("write through %s after failover: %v / %v", n.ID(), err, res.Err)
		}
	}
}
