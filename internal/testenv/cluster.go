package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/internal/api"
)

// Node ids of a test cluster.
const (
	DataA   = "data-a"
	DataB   = "data-b"
	Witness = "witness"
)

// ClusterOptions configure a test cluster.
type ClusterOptions struct {
	// ProxyDataLink routes Raft and forwarding between the two data nodes
	// through fault-injecting proxies, so that the test can cut that link
	// alone (CutDataLink) while both still reach the witness.
	ProxyDataLink bool
	// LogLevel of the daemons; default "info".
	LogLevel string
}

// ClusterNode is one twinsnapd process of a test cluster.
type ClusterNode struct {
	ID       string
	Role     string
	Dir      string
	Config   string
	LogPath  string
	RaftAddr string
	APIAddr  string
	DataAddr string

	proc *Process
}

// Cluster is a twinsnap cluster of separate twinsnapd processes on
// loopback: two data nodes and a witness, with a cluster CA, node
// certificates and an admin certificate made by `twinsnapd tls`.
type Cluster struct {
	Dir       string
	DaemonBin string
	CLIBin    string
	CADir     string
	// AdminDir holds ca.crt, admin.crt and admin.key for the CLI.
	AdminDir string
	Nodes    map[string]*ClusterNode
	// Proxies are the data-link proxies, keyed "from->to", when
	// ProxyDataLink is set.
	Proxies map[string]*Proxy

	tb        testing.TB
	peerAddrs map[string]map[string]string
	logLevel  string
}

// BuildTwinsnap builds twinsnapd and twinsnap into dir.
func BuildTwinsnap(ctx context.Context, dir string) (daemonBin, cliBin string, err error) {
	root, err := RepoRoot()
	if err != nil {
		return "", "", err
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-o", dir+string(os.PathSeparator), "./cmd/twinsnapd", "./cmd/twinsnap")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("testenv: building twinsnap: %w: %s", err, out)
	}
	return filepath.Join(dir, "twinsnapd"), filepath.Join(dir, "twinsnap"), nil
}

// StartCluster builds the binaries, creates the certificates and
// configurations, starts the three daemons and waits until a leader is
// elected. Every process is killed when the test ends.
func StartCluster(tb testing.TB, opts ClusterOptions) *Cluster {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if opts.LogLevel == "" {
		opts.LogLevel = "info"
	}
	dir := TempDir(tb, "cluster")
	c := &Cluster{Dir: dir, Nodes: map[string]*ClusterNode{}, Proxies: map[string]*Proxy{}, tb: tb, logLevel: opts.LogLevel}
	var err error
	c.DaemonBin, c.CLIBin, err = BuildTwinsnap(ctx, filepath.Join(dir, "bin"))
	if err != nil {
		tb.Fatalf("%v", err)
	}
	c.CADir, c.AdminDir = filepath.Join(dir, "ca"), filepath.Join(dir, "admin")
	c.tls(ctx, "ca", "--dir", c.CADir, "--name", "test cluster CA")
	c.tls(ctx, "admin", "--ca-dir", c.CADir, "--name", "admin", "--out", c.AdminDir)

	for _, spec := range []struct{ id, role string }{{DataA, "data"}, {DataB, "data"}, {Witness, "witness"}} {
		n := &ClusterNode{ID: spec.id, Role: spec.role, Dir: filepath.Join(dir, spec.id)}
		n.RaftAddr, n.APIAddr = freePort(tb), freePort(tb)
		if spec.role == "data" {
			n.DataAddr = freePort(tb)
		}
		n.Config = filepath.Join(n.Dir, Marker+"-"+spec.id+".toml")
		n.LogPath = filepath.Join(n.Dir, "twinsnapd.log")
		c.Nodes[spec.id] = n
		c.tls(ctx, "node", "--ca-dir", c.CADir, "--id", spec.id, "--host", "127.0.0.1", "--out", filepath.Join(n.Dir, "tls"))
	}
	peerAddrs := map[string]map[string]string{}
	if opts.ProxyDataLink {
		ab := StartProxy(tb, c.Nodes[DataB].RaftAddr)
		ba := StartProxy(tb, c.Nodes[DataA].RaftAddr)
		c.Proxies[DataA+"->"+DataB], c.Proxies[DataB+"->"+DataA] = ab, ba
		peerAddrs[DataA] = map[string]string{DataB: ab.Addr()}
		peerAddrs[DataB] = map[string]string{DataA: ba.Addr()}
	}
	c.peerAddrs = peerAddrs
	for _, n := range c.Nodes {
		if err := os.WriteFile(n.Config, []byte(c.config(n, peerAddrs[n.ID], nil)), 0o644); err != nil {
			tb.Fatalf("writing config: %v", err)
		}
	}
	tb.Cleanup(func() {
		for _, n := range c.Nodes {
			if n.proc != nil {
				n.proc.Kill()
			}
		}
		if tb.Failed() {
			for _, id := range []string{DataA, DataB, Witness} {
				b, _ := os.ReadFile(c.Nodes[id].LogPath)
				tb.Logf("log of %s:\n%s", id, tail(b, 6000))
			}
		}
	})
	for _, id := range []string{DataA, DataB, Witness} {
		if err := c.Start(ctx, id); err != nil {
			tb.Fatalf("%v", err)
		}
	}
	if _, err := c.WaitLeader(ctx, ""); err != nil {
		tb.Fatalf("%v", err)
	}
	return c
}

func (c *Cluster) tls(ctx context.Context, args ...string) {
	c.tb.Helper()
	out, err := exec.CommandContext(ctx, c.DaemonBin, append([]string{"tls"}, args...)...).CombinedOutput()
	if err != nil {
		c.tb.Fatalf("twinsnapd tls %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// config renders a node's configuration: founding member of the
// three-node cluster, or, with join set, a new node joining through those
// API addresses.
func (c *Cluster) config(n *ClusterNode, peerAddrs map[string]string, join []string) string {
	level := c.logLevel
	var b strings.Builder
	fmt.Fprintf(&b, "id = %q\nrole = %q\ndata_dir = %q\n\n", n.ID, n.Role, filepath.Join(n.Dir, "data"))
	fmt.Fprintf(&b, "[listen]\nraft = %q\napi = %q\n", n.RaftAddr, n.APIAddr)
	if n.DataAddr != "" {
		fmt.Fprintf(&b, "data = %q\n", n.DataAddr)
	}
	fmt.Fprintf(&b, "\n[tls]\ndir = %q\n\n[log]\nlevel = %q\n\n[cluster]\n", filepath.Join(n.Dir, "tls"), level)
	if len(join) > 0 {
		fmt.Fprintf(&b, "join = [")
		for i, a := range join {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%q", a)
		}
		b.WriteString("]\n")
	} else {
		for _, id := range []string{DataA, DataB, Witness} {
			fmt.Fprintf(&b, "[[cluster.bootstrap]]\nid = %q\nraft = %q\n", id, c.Nodes[id].RaftAddr)
		}
	}
	if len(peerAddrs) > 0 {
		b.WriteString("\n[cluster.peer_addresses]\n")
		for id, a := range peerAddrs {
			fmt.Fprintf(&b, "%q = %q\n", id, a)
		}
	}
	return b.String()
}

// Start starts (or restarts) a node's daemon and waits until its API
// answers.
func (c *Cluster) Start(ctx context.Context, id string) error {
	n := c.Nodes[id]
	if n.proc != nil {
		if exited, _ := n.proc.Exited(); !exited {
			return fmt.Errorf("testenv: %s is running", id)
		}
	}
	logf, err := os.OpenFile(n.LogPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(c.DaemonBin, "run", "--config", n.Config)
	cmd.Stdout, cmd.Stderr = logf, logf
	n.proc, err = StartProcess("twinsnapd "+id, cmd)
	if err != nil {
		return err
	}
	cl := c.Client(id)
	defer cl.Close()
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := WaitFor(wctx, n.proc, 100*time.Millisecond, func(ctx context.Context) error {
		_, err := cl.Health(ctx)
		return err
	}); err != nil {
		b, _ := os.ReadFile(n.LogPath)
		return fmt.Errorf("testenv: %s did not come up: %w\n%s", id, err, tail(b, 3000))
	}
	return nil
}

// Reset makes a stopped node new: its data directory is wiped and its
// configuration asks to join the cluster through the given nodes' APIs.
func (c *Cluster) Reset(id string, joinVia ...string) error {
	if c.Running(id) {
		return fmt.Errorf("testenv: %s is running", id)
	}
	n := c.Nodes[id]
	if err := os.RemoveAll(filepath.Join(n.Dir, "data")); err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	var join []string
	for _, v := range joinVia {
		join = append(join, c.Nodes[v].APIAddr)
	}
	if err := os.WriteFile(n.Config, []byte(c.config(n, c.peerAddrs[id], join)), 0o644); err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	return nil
}

// DaemonCommand runs a twinsnapd subcommand (such as recover) for a node,
// with its configuration, and returns its combined output.
func (c *Cluster) DaemonCommand(ctx context.Context, id string, args ...string) (string, error) {
	full := append(append([]string{}, args...), "--config", c.Nodes[id].Config)
	out, err := exec.CommandContext(ctx, c.DaemonBin, full...).CombinedOutput()
	return string(out), err
}

// Kill sends SIGKILL to a node's daemon and waits for it to die.
func (c *Cluster) Kill(id string) {
	if p := c.Nodes[id].proc; p != nil {
		p.Kill()
	}
}

// Stop asks a node's daemon to shut down with SIGTERM.
func (c *Cluster) Stop(id string) error {
	if p := c.Nodes[id].proc; p != nil {
		return p.Stop(20 * time.Second)
	}
	return nil
}

// Running reports whether a node's daemon runs.
func (c *Cluster) Running(id string) bool {
	p := c.Nodes[id].proc
	if p == nil {
		return false
	}
	exited, _ := p.Exited()
	return !exited
}

// Signal sends a signal to a node's daemon.
func (c *Cluster) Signal(id string, sig syscall.Signal) error {
	return c.Nodes[id].proc.Signal(sig)
}

// Client returns an admin API client for the given nodes (all when none
// are named), tried in order.
func (c *Cluster) Client(ids ...string) *api.Client {
	if len(ids) == 0 {
		ids = []string{DataA, DataB, Witness}
	}
	var servers []string
	for _, id := range ids {
		servers = append(servers, c.Nodes[id].APIAddr)
	}
	cl, err := api.NewClient(api.ClientConfig{
		Servers:  servers,
		CAFile:   filepath.Join(c.AdminDir, "ca.crt"),
		CertFile: filepath.Join(c.AdminDir, "admin.crt"),
		KeyFile:  filepath.Join(c.AdminDir, "admin.key"),
		Timeout:  30 * time.Second,
	})
	if err != nil {
		c.tb.Fatalf("admin client: %v", err)
	}
	return cl
}

// CLIResult is the outcome of one twinsnap CLI run.
type CLIResult struct {
	Stdout, Stderr string
	Exit           int
}

// CLI runs the twinsnap admin CLI against the given node's API with the
// admin certificate.
func (c *Cluster) CLI(ctx context.Context, node string, args ...string) CLIResult {
	full := append([]string{"--server", c.Nodes[node].APIAddr, "--tls-dir", c.AdminDir}, args...)
	cmd := exec.CommandContext(ctx, c.CLIBin, full...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := CLIResult{Stdout: stdout.String(), Stderr: stderr.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		res.Exit = ee.ExitCode()
	} else if err != nil {
		res.Exit = -1
		res.Stderr += err.Error()
	}
	return res
}

// WaitLeader waits until a running node reports itself leader and every
// other running node agrees, and returns its id. With role set, the
// leader must have that role.
func (c *Cluster) WaitLeader(ctx context.Context, role string) (string, error) {
	var last string
	for {
		leader, err := c.leader(ctx)
		if err == nil && (role == "" || c.Nodes[leader].Role == role) {
			return leader, nil
		}
		if err != nil {
			last = err.Error()
		} else {
			last = "leader " + leader + " is not a " + role + " node"
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("testenv: no agreed leader: %s: %w", last, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *Cluster) leader(ctx context.Context) (string, error) {
	leader := ""
	for _, id := range []string{DataA, DataB, Witness} {
		if !c.Running(id) {
			continue
		}
		cl := c.Client(id)
		hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := cl.Health(hctx)
		cancel()
		cl.Close()
		if err != nil {
			return "", fmt.Errorf("%s: %w", id, err)
		}
		if st.LeaderID == "" {
			return "", fmt.Errorf("%s knows no leader", id)
		}
		if leader != "" && st.LeaderID != leader {
			return "", fmt.Errorf("%s follows %s, another node follows %s", id, st.LeaderID, leader)
		}
		leader = st.LeaderID
	}
	if leader == "" {
		return "", errors.New("no node running")
	}
	if !c.Running(leader) {
		return "", fmt.Errorf("the nodes still follow %s, which is not running", leader)
	}
	return leader, nil
}

// CutDataLink cuts the link between the two data nodes (both directions).
func (c *Cluster) CutDataLink() {
	for _, p := range c.Proxies {
		p.Cut()
	}
}

// HealDataLink restores the link between the two data nodes.
func (c *Cluster) HealDataLink() {
	for _, p := range c.Proxies {
		p.Heal()
	}
}

// freePort returns a loopback address whose port was free a moment ago.
func freePort(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
