package systemtest

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/internal/api"
	"github.com/twinsnap/twinsnap/internal/testenv"
)

// TestCLIAgainstRealCluster drives the real twinsnap binary against the
// real daemons: list commands in table and JSON, a settings change through
// a follower, and the documented exit codes.
func TestCLIAgainstRealCluster(t *testing.T) {
	c := testenv.StartCluster(t, testenv.ClusterOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	leader, err := c.WaitLeader(ctx, "data")
	if err != nil {
		t.Fatalf("%v", err)
	}
	follower := testenv.DataA
	if leader == follower {
		follower = testenv.DataB
	}
	// Registration of all three nodes in the state may trail the election.
	var nodes api.NodeList
	for i := 0; ; i++ {
		r := c.CLI(ctx, follower, "node", "list", "-o", "json")
		if r.Exit != 0 {
			t.Fatalf("node list: exit %d: %s", r.Exit, r.Stderr)
		}
		if err := json.Unmarshal([]byte(r.Stdout), &nodes); err != nil {
			t.Fatalf("node list JSON: %v: %s", err, r.Stdout)
		}
		registered := 0
		for _, n := range nodes.Nodes {
			if n.Role != "" && n.Voter {
				registered++
			}
		}
		if registered == 3 {
			break
		}
		if i > 100 {
			t.Fatalf("node list never showed three registered voters: %s", r.Stdout)
		}
		time.Sleep(100 * time.Millisecond)
	}
	leaders := 0
	for _, n := range nodes.Nodes {
		if n.Leader {
			leaders++
			if n.ID != leader {
				t.Fatalf("node list names %s leader, health says %s", n.ID, leader)
			}
		}
	}
	if leaders != 1 {
		t.Fatalf("node list shows %d leaders", leaders)
	}

	table := c.CLI(ctx, follower, "node", "list")
	for _, want := range []string{"ID", "ROLE", testenv.DataA, testenv.DataB, testenv.Witness, "witness"} {
		if !strings.Contains(table.Stdout, want) {
			t.Fatalf("node list table lacks %q:\n%s", want, table.Stdout)
		}
	}

	var st api.ClusterStatus
	r := c.CLI(ctx, follower, "cluster", "status", "-o", "json")
	if r.Exit != 0 || json.Unmarshal([]byte(r.Stdout), &st) != nil {
		t.Fatalf("cluster status: exit %d: %s %s", r.Exit, r.Stdout, r.Stderr)
	}
	if st.LeaderID != leader || st.Term == 0 || st.LastIndex == 0 || len(st.Peers) != 3 {
		t.Fatalf("cluster status: %+v", st)
	}
	for _, p := range st.Peers {
		if !p.Reachable || p.Status == nil {
			t.Fatalf("peer %s unreachable in cluster status: %+v", p.ID, p)
		}
	}
	if r := c.CLI(ctx, follower, "cluster", "status"); r.Exit != 0 || !strings.Contains(r.Stdout, leader) {
		t.Fatalf("cluster status table: exit %d:\n%s", r.Exit, r.Stdout)
	}

	for _, tc := range []struct {
		verb string
		want bool
	}{{"enable", true}, {"disable", false}, {"enable", true}} {
		r := c.CLI(ctx, follower, "settings", "snapshots", tc.verb, "-o", "json")
		var s api.Settings
		if r.Exit != 0 || json.Unmarshal([]byte(r.Stdout), &s) != nil || s.SnapshotsEnabled != tc.want {
			t.Fatalf("settings snapshots %s: exit %d: %s %s", tc.verb, r.Exit, r.Stdout, r.Stderr)
		}
		// Every node sees it.
		for _, id := range []string{testenv.DataA, testenv.DataB, testenv.Witness} {
			for i := 0; ; i++ {
				r := c.CLI(ctx, id, "settings", "show", "-o", "json")
				var s api.Settings
				if r.Exit == 0 && json.Unmarshal([]byte(r.Stdout), &s) == nil && s.SnapshotsEnabled == tc.want {
					break
				}
				if i > 50 {
					t.Fatalf("%s does not show snapshots %s: %s", id, tc.verb, r.Stdout)
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	}

	if r := c.CLI(ctx, follower, "node", "remove", "no-such-node", "--yes"); r.Exit != 5 {
		t.Fatalf("removing an unknown node: exit %d, want 5 (not found): %s", r.Exit, r.Stderr)
	}
	if r := c.CLI(ctx, follower, "node", "frobnicate"); r.Exit != 2 {
		t.Fatalf("unknown subcommand: exit %d, want 2: %s", r.Exit, r.Stderr)
	}
	c.Kill(testenv.Witness)
	if r := c.CLI(ctx, testenv.Witness, "node", "list"); r.Exit != 3 {
		t.Fatalf("CLI against a dead node: exit %d, want 3: %s", r.Exit, r.Stderr)
	}
}
