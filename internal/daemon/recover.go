package daemon

import (
	"log/slog"

	"github.com/hashicorp/go-hclog"

	"github.com/twinsnap/twinsnap/cluster"
)

// Recover rewrites the Raft configuration of this stopped node to the
// voters in the peers file, for a cluster that lost quorum (see
// docs/operations.md).
func Recover(cfg *Config, peersFile string, log *slog.Logger) ([]cluster.Server, error) {
	servers, err := cluster.ReadPeersFile(peersFile)
	if err != nil {
		return nil, err
	}
	hl := hclog.New(&hclog.LoggerOptions{Name: "raft-recover", Level: hclog.Warn})
	if err := cluster.Recover(cfg.raftDir(), cfg.ID, servers, hl); err != nil {
		return nil, err
	}
	log.Info("recovered the Raft configuration", "component", "daemon", "node", cfg.ID, "voters", len(servers))
	return servers, nil
}
