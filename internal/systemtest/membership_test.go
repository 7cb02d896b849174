package systemtest

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/internal/api"
	"github.com/twinsnap/twinsnap/internal/testenv"
)

// TestRemoveAndRejoinWitness removes the witness from the cluster, wipes
// it, and lets it join again through a data node's API.
func TestRemoveAndRejoinWitness(t *testing.T) {
	c := testenv.StartCluster(t, testenv.ClusterOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := c.WaitLeader(ctx, "data"); err != nil {
		t.Fatalf("%v", err)
	}
	if err := c.Stop(testenv.Witness); err != nil {
		t.Fatalf("stop witness: %v", err)
	}
	cl := c.Client(testenv.DataA, testenv.DataB)
	defer cl.Close()
	if err := cl.RemoveNode(ctx, testenv.Witness); err != nil {
		t.Fatalf("remove witness: %v", err)
	}
	nodes, err := cl.Nodes(ctx)
	if err != nil {
		t.Fatalf("node list: %v", err)
	}
	for _, n := range nodes.Nodes {
		if n.ID == testenv.Witness {
			t.Fatalf("witness still listed after removal: %+v", nodes)
		}
	}
	if err := cl.RemoveNode(ctx, testenv.Witness); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("removing it again: %v, want not found", err)
	}

	if err := c.Reset(testenv.Witness, testenv.DataA, testenv.DataB); err != nil {
		t.Fatalf("%v", err)
	}
	if err := c.Start(ctx, testenv.Witness); err != nil {
		t.Fatalf("start witness: %v", err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		nodes, err = cl.Nodes(ctx)
		if err == nil {
			for _, n := range nodes.Nodes {
				if n.ID == testenv.Witness && n.Voter && n.Role == "witness" {
					st := clusterStatus(ctx, t, c)
					for _, p := range st.Peers {
						if !p.Healthy {
							b, _ := json.Marshal(st)
							t.Fatalf("after the rejoin %s is unhealthy: %s", p.ID, b)
						}
					}
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("witness did not rejoin as a voter: %+v, %v", nodes, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestRecoverAfterQuorumLoss loses two of three nodes for good, recovers
// the survivor with `twinsnapd recover` and a peers file naming only
// itself, and finds its committed state intact and writable.
func TestRecoverAfterQuorumLoss(t *testing.T) {
	c := testenv.StartCluster(t, testenv.ClusterOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := c.WaitLeader(ctx, ""); err != nil {
		t.Fatalf("%v", err)
	}
	cl := c.Client(testenv.DataA)
	defer cl.Close()
	setValue(ctx, t, cl, "committed", "before-loss")
	c.Kill(testenv.DataB)
	c.Kill(testenv.Witness)
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	_, err := cl.SetValues(wctx, map[string]string{"lost": "x"})
	wcancel()
	if err == nil {
		t.Fatalf("a write succeeded without quorum")
	}
	if err := c.Stop(testenv.DataA); err != nil {
		t.Fatalf("stop data-a: %v", err)
	}

	peers := filepath.Join(c.Dir, "peers.json")
	b, _ := json.Marshal([]map[string]string{{"id": testenv.DataA, "address": c.Nodes[testenv.DataA].RaftAddr}})
	if err := os.WriteFile(peers, b, 0o644); err != nil {
		t.Fatalf("%v", err)
	}
	if out, err := c.DaemonCommand(ctx, testenv.DataA, "recover", "--peers", peers); err != nil {
		t.Fatalf("twinsnapd recover: %v: %s", err, out)
	}
	if err := c.Start(ctx, testenv.DataA); err != nil {
		t.Fatalf("restart data-a: %v", err)
	}
	if leader, err := c.WaitLeader(ctx, ""); err != nil || leader != testenv.DataA {
		t.Fatalf("after recovery leader = %q, %v; want data-a", leader, err)
	}
	s, err := cl.Settings(ctx)
	if err != nil {
		t.Fatalf("settings: %v", err)
	}
	if s.Values["committed"] != "before-loss" {
		t.Fatalf("committed value lost in recovery: %+v", s.Values)
	}
	setValue(ctx, t, cl, "after", "recovery")
	// A peers file that does not name the node is refused.
	if err := c.Stop(testenv.DataA); err != nil {
		t.Fatalf("stop: %v", err)
	}
	bad := filepath.Join(c.Dir, "bad-peers.json")
	b, _ = json.Marshal([]map[string]string{{"id": testenv.DataB, "address": c.Nodes[testenv.DataB].RaftAddr}})
	if err := os.WriteFile(bad, b, 0o644); err != nil {
		t.Fatalf("%v", err)
	}
	if out, err := c.DaemonCommand(ctx, testenv.DataA, "recover", "--peers", bad); err == nil {
		t.Fatalf("recover with a peers file not naming the node succeeded: %s", out)
	}
}
