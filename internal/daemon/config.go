package daemon

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/twinsnap/twinsnap/cluster"
	"github.com/twinsnap/twinsnap/cluster/command"
)

// Config is twinsnapd's configuration file (TOML). See docs/daemon.md.
type Config struct {
	// ID is the node id; its certificate must name it.
	ID string `toml:"id"`
	// Role is "data" or "witness".
	Role command.Role `toml:"role"`
	// DataDir holds the Raft log, state checkpoints and (on data nodes)
	// snapshot data.
	DataDir string `toml:"data_dir"`
	// Storage is the storage path of the volume containers on a data
	// node; default <data_dir>/volumes.
	Storage string `toml:"storage"`

	Listen    Addresses `toml:"listen"`
	Advertise Addresses `toml:"advertise"`

	TLS     TLSConfig     `toml:"tls"`
	Cluster ClusterConfig `toml:"cluster"`
	Raft    RaftConfig    `toml:"raft"`
	Log     LogConfig     `toml:"log"`
}

// Addresses are the node's three endpoints.
type Addresses struct {
	// Raft carries Raft and write forwarding between nodes.
	Raft string `toml:"raft"`
	// API is the HTTPS API for admins and peers.
	API string `toml:"api"`
	// Data receives snapshot data from the peer data node (data nodes only).
	Data string `toml:"data"`
}

// TLSConfig names the node's certificate bundle: Dir holds ca.crt,
// <id>.crt and <id>.key (as written by `twinsnapd tls node`).
type TLSConfig struct {
	Dir string `toml:"dir"`
}

// ClusterConfig says how the node becomes a member.
type ClusterConfig struct {
	// Bootstrap lists the founding voters of a new cluster; every founding
	// member lists the same ones. Ignored once the node has Raft state.
	Bootstrap []Peer `toml:"bootstrap"`
	// Join lists API addresses of existing members to ask for admission
	// when the node has no Raft state and no Bootstrap list.
	Join []string `toml:"join"`
	// PeerAddresses overrides the address dialled to reach a peer, by id.
	PeerAddresses map[string]string `toml:"peer_addresses"`
}

// Peer is a founding voter.
type Peer struct {
	ID   string `toml:"id"`
	Raft string `toml:"raft"`
}

// RaftConfig tunes Raft's timeouts (Go durations such as "500ms").
type RaftConfig struct {
	Heartbeat   Duration `toml:"heartbeat"`
	Election    Duration `toml:"election"`
	LeaderLease Duration `toml:"leader_lease"`
}

// LogConfig sets the log level (debug, info, warn, error) and format
// (text, json).
type LogConfig struct {
	Level  string `toml:"level"`
	Format string `toml:"format"`
}

// Duration is a time.Duration written as a Go duration string.
type Duration time.Duration

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// ErrConfig wraps every configuration error.
var ErrConfig = errors.New("configuration error")

// LoadConfig reads and checks a configuration file.
func LoadConfig(path string) (*Config, error) {
	var cfg Config
	md, err := toml.DecodeFile(path, &cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrConfig, path, err)
	}
	if undec := md.Undecoded(); len(undec) > 0 {
		return nil, fmt.Errorf("%w: %s: unknown setting %q", ErrConfig, path, undec[0].String())
	}
	base := filepath.Dir(path)
	if cfg.DataDir != "" && !filepath.IsAbs(cfg.DataDir) {
		cfg.DataDir = filepath.Join(base, cfg.DataDir)
	}
	if cfg.TLS.Dir != "" && !filepath.IsAbs(cfg.TLS.Dir) {
		cfg.TLS.Dir = filepath.Join(base, cfg.TLS.Dir)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &cfg, nil
}

// Validate checks the configuration and fills in defaults.
func (c *Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrConfig}, args...)...)
	}
	if c.ID == "" {
		return bad("id is required")
	}
	if !c.Role.Valid() {
		return bad("role %q must be data or witness", c.Role)
	}
	if c.DataDir == "" {
		return bad("data_dir is required")
	}
	if c.TLS.Dir == "" {
		return bad("tls.dir is required")
	}
	check := func(name, addr string, required bool) error {
		if addr == "" {
			if required {
				return bad("%s is required", name)
			}
			return nil
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return bad("%s %q: %v", name, addr, err)
		}
		return nil
	}
	if err := check("listen.raft", c.Listen.Raft, true); err != nil {
		return err
	}
	if err := check("listen.api", c.Listen.API, true); err != nil {
		return err
	}
	if c.Role == command.RoleData {
		if err := check("listen.data", c.Listen.Data, true); err != nil {
			return err
		}
	} else if c.Listen.Data != "" {
		return bad("listen.data: a witness stores no data")
	}
	if c.Advertise.Raft == "" {
		c.Advertise.Raft = c.Listen.Raft
	}
	if c.Advertise.API == "" {
		c.Advertise.API = c.Listen.API
	}
	if c.Advertise.Data == "" {
		c.Advertise.Data = c.Listen.Data
	}
	for _, name := range []struct{ n, a string }{{"advertise.raft", c.Advertise.Raft}, {"advertise.api", c.Advertise.API}, {"advertise.data", c.Advertise.Data}} {
		if err := check(name.n, name.a, false); err != nil {
			return err
		}
	}
	if len(c.Cluster.Bootstrap) > 0 && len(c.Cluster.Join) > 0 {
		return bad("cluster.bootstrap and cluster.join exclude each other")
	}
	self := false
	for _, p := range c.Cluster.Bootstrap {
		if p.ID == "" {
			return bad("cluster.bootstrap: every peer needs an id")
		}
		if err := check("cluster.bootstrap raft of "+p.ID, p.Raft, true); err != nil {
			return err
		}
		self = self || p.ID == c.ID
	}
	if len(c.Cluster.Bootstrap) > 0 && !self {
		return bad("cluster.bootstrap must list this node (%s)", c.ID)
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "text"
	}
	return nil
}

// timing returns the Raft timing with defaults filled in.
func (c *Config) timing() cluster.Timing {
	t := cluster.DefaultTiming
	if c.Raft.Heartbeat > 0 {
		t.Heartbeat = time.Duration(c.Raft.Heartbeat)
	}
	if c.Raft.Election > 0 {
		t.Election = time.Duration(c.Raft.Election)
	}
	if c.Raft.LeaderLease > 0 {
		t.LeaderLease = time.Duration(c.Raft.LeaderLease)
	}
	return t
}

// raftDir is where the cluster package keeps its files.
func (c *Config) raftDir() string { return filepath.Join(c.DataDir, "raft") }

// ensureDataDir creates the data directory with private permissions.
func (c *Config) ensureDataDir() error {
	if err := os.MkdirAll(c.DataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	return nil
}
