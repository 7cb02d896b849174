package systemtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/internal/api"
	"github.com/twinsnap/twinsnap/internal/testenv"
)

// TestFailoverAndRejoin writes through a follower, SIGKILLs the leader,
// sees a data node lead and accept writes, then restarts the killed
// process and sees it catch up.
func TestFailoverAndRejoin(t *testing.T) {
	c := testenv.StartCluster(t, testenv.ClusterOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	leader, err := c.WaitLeader(ctx, "data")
	if err != nil {
		t.Fatalf("%v", err)
	}
	follower := testenv.DataA
	if leader == testenv.DataA {
		follower = testenv.DataB
	}

	// A write through a follower is forwarded to the leader.
	cl := c.Client(follower)
	defer cl.Close()
	setValue(ctx, t, cl, "before-kill", "1")
	for _, id := range []string{testenv.DataA, testenv.DataB, testenv.Witness} {
		waitValue(ctx, t, c, id, "before-kill", "1")
	}

	c.Kill(leader)
	next, err := c.WaitLeader(ctx, "data")
	if err != nil {
		t.Fatalf("after SIGKILL of %s: %v", leader, err)
	}
	if next == leader {
		t.Fatalf("killed leader %s still reported as leader", leader)
	}
	survivors := c.Client(testenv.Witness)
	defer survivors.Close()
	setValue(ctx, t, survivors, "after-kill", "2")

	if err := c.Start(ctx, leader); err != nil {
		t.Fatalf("restart %s: %v", leader, err)
	}
	waitValue(ctx, t, c, leader, "after-kill", "2")
	waitValue(ctx, t, c, leader, "before-kill", "1")
}

// setValue writes one setting, retrying while the outcome is unknown or
// no leader is available (leadership may move on a loaded machine); the
// write is idempotent.
func setValue(ctx context.Context, t *testing.T, cl *api.Client, key, value string) {
	t.Helper()
	for {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := cl.SetValues(wctx, map[string]string{key: value})
		cancel()
		if err == nil {
			return
		}
		if !errors.Is(err, api.ErrUnknownResult) && !errors.Is(err, api.ErrUnavailable) || ctx.Err() != nil {
			t.Fatalf("writing %s=%s: %v", key, value, err)
		}
		t.Logf("writing %s=%s: %v; retrying", key, value, err)
	}
}

// waitValue waits until node's own state shows key=value.
func waitValue(ctx context.Context, t *testing.T, c *testenv.Cluster, node, key, value string) {
	t.Helper()
	cl := c.Client(node)
	defer cl.Close()
	var last string
	for {
		s, err := cl.Settings(ctx)
		if err == nil && s.Values[key] == value {
			return
		}
		last = fmt.Sprintf("%v %v", s, err)
		select {
		case <-ctx.Done():
			t.Fatalf("%s never showed %s=%s (last: %s)", node, key, value, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// TestDataLinkCutNoSplitBrain cuts the link between the two data nodes
// while both still reach the witness: at most one side accepts writes,
// and every acknowledged write survives the heal on every node.
func TestDataLinkCutNoSplitBrain(t *testing.T) {
	c := testenv.StartCluster(t, testenv.ClusterOptions{ProxyDataLink: true})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	if _, err := c.WaitLeader(ctx, "data"); err != nil {
		t.Fatalf("%v", err)
	}
	c.CutDataLink()
	acked := map[string]string{}
	accepted := map[string]int{}
	// Write through each data node in turn for a while; a write that fails
	// must fail, not hang past its bound.
	deadline := time.Now().Add(12 * time.Second)
	for i := 0; time.Now().Before(deadline) && i < 40; i++ {
		for _, id := range []string{testenv.DataA, testenv.DataB} {
			cl := c.Client(id)
			wctx, wcancel := context.WithTimeout(ctx, 3*time.Second)
			key := fmt.Sprintf("w%02d-%s", i, id)
			_, err := cl.SetValues(wctx, map[string]string{key: "x"})
			wcancel()
			cl.Close()
			if err == nil {
				acked[key] = "x"
				accepted[id]++
			} else if !errors.Is(err, api.ErrUnavailable) && !errors.Is(err, api.ErrUnknownResult) && !errors.Is(err, api.ErrConnect) {
				t.Fatalf("write through %s failed with an unexpected error: %v", id, err)
			}
		}
		if len(acked) >= 20 {
			break
		}
	}
	if len(acked) == 0 {
		t.Fatalf("no side accepted writes while the data link was cut")
	}
	// Now check strictly: a fresh round after the cluster has settled;
	// each side gets three tries, so that a slow machine does not hide an
	// accepting side.
	sides := map[string]bool{}
	for _, id := range []string{testenv.DataA, testenv.DataB} {
		cl := c.Client(id)
		for try := 0; try < 3 && !sides[id]; try++ {
			wctx, wcancel := context.WithTimeout(ctx, 3*time.Second)
			key := "final-" + id
			_, err := cl.SetValues(wctx, map[string]string{key: "y"})
			wcancel()
			if err == nil {
				sides[id] = true
				acked[key] = "y"
			}
		}
		cl.Close()
	}
	if len(sides) != 1 {
		t.Fatalf("with the data link cut, data nodes accepting writes: %v (want exactly one)", sides)
	}
	c.HealDataLink()
	for _, id := range []string{testenv.DataA, testenv.DataB, testenv.Witness} {
		for k, v := range acked {
			waitValue(ctx, t, c, id, k, v)
		}
	}
	st := clusterStatus(ctx, t, c)
	for _, p := range st.Peers {
		if !p.Healthy {
			b, _ := json.Marshal(st)
			t.Fatalf("after heal %s is not healthy: %s", p.ID, b)
		}
	}
	t.Logf("acknowledged %d writes during the cut, accepted per node %v", len(acked), accepted)
}

func clusterStatus(ctx context.Context, t *testing.T, c *testenv.Cluster) *api.ClusterStatus {
	t.Helper()
	cl := c.Client()
	defer cl.Close()
	var st *api.ClusterStatus
	var err error
	for i := 0; i < 50; i++ {
		st, err = cl.ClusterStatus(ctx)
		if err == nil {
			healthy := true
			for _, p := range st.Peers {
				healthy = healthy && p.Healthy
			}
			if healthy {
				return st
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("cluster status: %v", err)
	}
	return st
}
