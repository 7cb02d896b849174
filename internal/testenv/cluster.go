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
	"sync"
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
	// Raft overrides the daemons' Raft timeouts; zero fields keep the
	// daemons' defaults.
	Raft RaftTiming
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

	// tb is the test of a cluster from StartCluster; nil for one from
	// LaunchCluster.
	tb        testing.TB
	peerAddrs map[string]map[string]string
	logLevel  string
	raft      RaftTiming
	closeOnce sync.Once
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
// elected (see LaunchCluster). Every process is killed when the test ends;
// if the test failed, the tails of the daemons' logs are logged.
func StartCluster(tb testing.TB, opts ClusterOptions) *Cluster {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := LaunchCluster(ctx, TempDir(tb, "cluster"), opts)
	if err != nil {
		tb.Fatalf("%v", err)
	}
	c.tb = tb
	tb.Cleanup(func() {
		c.Close()
		if tb.Failed() {
			for _, id := range []string{DataA, DataB, Witness} {
				b, _ := os.ReadFile(c.Nodes[id].LogPath)
				tb.Logf("log of %s:\n%s", id, tail(b, 6000))
			}
		}
	})
	return c
}

// tls runs a `twinsnapd tls` subcommand.
func (c *Cluster) tls(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, c.DaemonBin, append([]string{"tls"}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("testenv: twinsnapd tls %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return nil
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
	c.raft.write(&b)
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
	cl, err := c.NewClient(id)
	if err != nil {
		return err
	}
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
// are named), tried in order. It fails the test (or, for a cluster from
// LaunchCluster, panics) when the admin certificate cannot be loaded; see
// NewClient for a variant that returns the error.
func (c *Cluster) Client(ids ...string) *api.Client {
	cl, err := c.NewClient(ids...)
	if err != nil {
		if c.tb != nil {
			c.tb.Fatalf("%v", err)
		}
		panic(err)
	}
	return cl
}

// NewClient returns an admin API client for the given nodes (all when none
// are named), tried in order.
func (c *Cluster) NewClient(ids ...string) (*api.Client, error) {
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
		return nil, fmt.Errorf("testenv: admin client: %w", err)
	}
	return cl, nil
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
		cl, err := c.NewClient(id)
		if err != nil {
			return "", err
		}
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
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("testenv: free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
