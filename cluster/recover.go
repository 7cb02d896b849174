package cluster

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"

	"github.com/twinsnap/twinsnap/cluster/state"
)

// ReadPeersFile reads a recovery peers file: a JSON array of
// {"id": ..., "address": ...} objects naming the voters the cluster is to
// continue with.
func ReadPeersFile(path string) ([]Server, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cluster: peers file: %w", err)
	}
	var servers []Server
	if err := json.Unmarshal(b, &servers); err != nil {
		return nil, fmt.Errorf("cluster: peers file %s: %w", path, err)
	}
	if len(servers) == 0 {
		return nil, fmt.Errorf("cluster: peers file %s names no servers", path)
	}
	seen := map[string]bool{}
	for _, s := range servers {
		if s.ID == "" || s.Address == "" {
			return nil, fmt.Errorf("cluster: peers file %s: every entry needs id and address", path)
		}
		if seen[s.ID] {
			return nil, fmt.Errorf("cluster: peers file %s: %s listed twice", path, s.ID)
		}
		seen[s.ID] = true
	}
	return servers, nil
}

// Recover rewrites the Raft configuration of a stopped node whose cluster
// lost quorum, so that it restarts as a member of the given servers only.
// Run it, with the same peers, on every surviving node while its daemon is
// stopped; then start them. Committed state is kept; entries that never
// reached a majority may be lost (this is the operator's explicit choice).
func Recover(dir, id string, servers []Server, log hclog.Logger) error {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	found := false
	var conf raft.Configuration
	for _, s := range servers {
		found = found || s.ID == id
		conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(s.ID), Address: raft.ServerAddress(s.Address)})
	}
	if !found {
		return fmt.Errorf("cluster: recover: this node (%s) is not among the peers", id)
	}
	dbPath := filepath.Join(dir, "raft.db")
	if _, err := os.Stat(dbPath); err != nil {
		return fmt.Errorf("cluster: recover: no Raft data at %s: %w", dbPath, err)
	}
	store, err := raftboltdb.New(raftboltdb.Options{Path: dbPath, BoltOptions: &bbolt.Options{Timeout: 2 * time.Second}})
	if err != nil {
		return fmt.Errorf("cluster: recover: opening %s (is twinsnapd still running?): %w", dbPath, err)
	}
	defer func() { _ = store.Close() }()
	snaps, err := raft.NewFileSnapshotStoreWithLogger(filepath.Join(dir, "checkpoints"), 2, log)
	if err != nil {
		return fmt.Errorf("cluster: recover: %w", err)
	}
	_, trans := raft.NewInmemTransport("")
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(id)
	rc.Logger = log
	if err := raft.RecoverCluster(rc, &fsm{st: state.New()}, store, store, snaps, trans, conf); err != nil {
		return fmt.Errorf("cluster: recover: %w", err)
	}
	return nil
}
