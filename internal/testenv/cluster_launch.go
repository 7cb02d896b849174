package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// LaunchCluster builds twinsnapd and twinsnap into dir/bin, creates the
// cluster CA, the node and admin certificates and the configurations under
// dir, starts the three daemons (two data nodes and a witness) and waits,
// within ctx, until a leader is elected. It is StartCluster without a
// test, for the demo and other programs. On error nothing is left running
// and the error holds the tails of the daemons' logs. Call Close to stop
// it; dir is left for the caller to remove.
func LaunchCluster(ctx context.Context, dir string, opts ClusterOptions) (*Cluster, error) {
	if opts.LogLevel == "" {
		opts.LogLevel = "info"
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("testenv: cluster dir: %w", err)
	}
	c := &Cluster{Dir: dir, Nodes: map[string]*ClusterNode{}, Proxies: map[string]*Proxy{}, logLevel: opts.LogLevel, raft: opts.Raft}
	ok := false
	defer func() {
		if !ok {
			c.Close()
		}
	}()
	c.DaemonBin, c.CLIBin, err = BuildTwinsnap(ctx, filepath.Join(dir, "bin"))
	if err != nil {
		return nil, err
	}
	c.CADir, c.AdminDir = filepath.Join(dir, "ca"), filepath.Join(dir, "admin")
	if err := c.tls(ctx, "ca", "--dir", c.CADir, "--name", "test cluster CA"); err != nil {
		return nil, err
	}
	if err := c.tls(ctx, "admin", "--ca-dir", c.CADir, "--name", "admin", "--out", c.AdminDir); err != nil {
		return nil, err
	}

	for _, spec := range []struct{ id, role string }{{DataA, "data"}, {DataB, "data"}, {Witness, "witness"}} {
		n := &ClusterNode{ID: spec.id, Role: spec.role, Dir: filepath.Join(dir, spec.id)}
		if n.RaftAddr, err = freePort(); err != nil {
			return nil, err
		}
		if n.APIAddr, err = freePort(); err != nil {
			return nil, err
		}
		if spec.role == "data" {
			if n.DataAddr, err = freePort(); err != nil {
				return nil, err
			}
		}
		n.Config = filepath.Join(n.Dir, Marker+"-"+spec.id+".toml")
		n.LogPath = filepath.Join(n.Dir, "twinsnapd.log")
		c.Nodes[spec.id] = n
		if err := c.tls(ctx, "node", "--ca-dir", c.CADir, "--id", spec.id, "--host", "127.0.0.1", "--out", filepath.Join(n.Dir, "tls")); err != nil {
			return nil, err
		}
	}
	peerAddrs := map[string]map[string]string{}
	if opts.ProxyDataLink {
		ab, err := NewProxy(c.Nodes[DataB].RaftAddr)
		if err != nil {
			return nil, fmt.Errorf("testenv: proxy: %w", err)
		}
		c.Proxies[DataA+"->"+DataB] = ab
		ba, err := NewProxy(c.Nodes[DataA].RaftAddr)
		if err != nil {
			return nil, fmt.Errorf("testenv: proxy: %w", err)
		}
		c.Proxies[DataB+"->"+DataA] = ba
		peerAddrs[DataA] = map[string]string{DataB: ab.Addr()}
		peerAddrs[DataB] = map[string]string{DataA: ba.Addr()}
	}
	c.peerAddrs = peerAddrs
	for _, n := range c.Nodes {
		if err := os.WriteFile(n.Config, []byte(c.config(n, peerAddrs[n.ID], nil)), 0o644); err != nil {
			return nil, fmt.Errorf("testenv: writing config: %w", err)
		}
	}
	for _, id := range []string{DataA, DataB, Witness} {
		if err := c.Start(ctx, id); err != nil {
			return nil, err
		}
	}
	if _, err := c.WaitLeader(ctx, ""); err != nil {
		return nil, fmt.Errorf("%w\n%s", err, c.LogTails(3000))
	}
	ok = true
	return c, nil
}

// RaftTiming overrides Raft's timeouts in the daemons' configuration
// ([raft]). The daemons' defaults suit an idle loopback cluster; on a host
// loaded by other work their heartbeats are missed and leadership changes
// hands, and every leader change discards the snapshots still being
// captured (DESIGN.md), so benchmarks and the demo raise them.
type RaftTiming struct {
	Heartbeat, Election, LeaderLease time.Duration
}

// write renders the [raft] table, if any field is set.
func (t RaftTiming) write(b *strings.Builder) {
	if t == (RaftTiming{}) {
		return
	}
	b.WriteString("\n[raft]\n")
	for _, kv := range []struct {
		key string
		d   time.Duration
	}{{"heartbeat", t.Heartbeat}, {"election", t.Election}, {"leader_lease", t.LeaderLease}} {
		if kv.d > 0 {
			fmt.Fprintf(b, "%s = %q\n", kv.key, kv.d.String())
		}
	}
}

// Close kills every daemon of the cluster, closes the data-link proxies,
// and kills the processes the daemons left behind: those whose command
// line names a path under the cluster's directory, such as the QEMU of a
// VM created from a snapshot (twinsnapd starts it in a session of its own,
// so it outlives the daemon). It is idempotent and does not remove Dir.
func (c *Cluster) Close() {
	c.closeOnce.Do(func() {
		for _, n := range c.Nodes {
			if n.proc != nil {
				n.proc.Kill()
			}
		}
		for _, p := range c.Proxies {
			p.Close()
		}
		c.killLeftovers()
	})
}

// killLeftovers kills the processes whose command line names a path under
// the cluster's directory, and waits up to 10 seconds for them to go.
func (c *Cluster) killLeftovers() {
	if c.Dir == "" {
		return
	}
	pids := processesMentioning(c.Dir)
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	for deadline := time.Now().Add(10 * time.Second); len(pids) > 0 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		pids = processesMentioning(c.Dir)
	}
}

// LogTails returns the last n bytes of each node's log, headed by the
// node's id.
func (c *Cluster) LogTails(n int) string {
	var b strings.Builder
	for _, id := range []string{DataA, DataB, Witness} {
		node, ok := c.Nodes[id]
		if !ok {
			continue
		}
		log, err := os.ReadFile(node.LogPath)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		fmt.Fprintf(&b, "--- log of %s (%s):\n%s\n", id, node.LogPath, tail(log, n))
	}
	return b.String()
}
