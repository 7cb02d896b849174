package systemtest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/internal/testenv"
)

// BenchmarkClusterCommit measures the latency of a small command (one
// setting) committed through the leader's API on a three-process loopback
// cluster, against an fsync'd 4 KiB write on the same disk in the same run
// (every commit needs at least two such writes: leader and one follower).
func BenchmarkClusterCommit(b *testing.B) {
	c := testenv.StartCluster(b, testenv.ClusterOptions{LogLevel: "warn"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	leader, err := c.WaitLeader(ctx, "data")
	if err != nil {
		b.Fatalf("%v", err)
	}
	cl := c.Client(leader)
	defer cl.Close()
	const n = 300
	var ms []float64
	for i := 0; i < n+20; i++ {
		start := time.Now()
		if _, err := cl.SetValues(ctx, map[string]string{"bench": fmt.Sprint(i)}); err != nil {
			b.Fatalf("write %d: %v", i, err)
		}
		if i >= 20 { // warm-up: connections, first checkpoint
			ms = append(ms, testenv.Millis(time.Since(start)))
		}
	}
	fsync := fsyncLatencies(b, filepath.Join(c.Dir, "fsync-probe"), 100)
	p50 := testenv.Percentile(ms, 50)
	note := fmt.Sprintf("%d sequential one-key settings writes through the leader's HTTPS API, 3 processes on loopback", n)
	testenv.RecordMetric(b, testenv.Metric{Name: "cluster_commit_p50_ms", Value: p50, Unit: "ms", Note: note})
	testenv.RecordMetric(b, testenv.Metric{Name: "cluster_commit_p99_ms", Value: testenv.Percentile(ms, 99), Unit: "ms", Note: note})
	testenv.RecordMetric(b, testenv.Metric{Name: "disk_fsync_4k_p50_ms", Value: testenv.Percentile(fsync, 50), Unit: "ms", Note: "write+fsync of 4 KiB on the cluster's disk, same run"})
	testenv.RecordMetric(b, testenv.Metric{Name: "cluster_commit_p50_over_fsync", Value: p50 / testenv.Percentile(fsync, 50), Unit: "ratio",
		Reference: "disk_fsync_4k_p50_ms", Note: "a commit needs at least two fsyncs (leader, one follower) plus TLS round trips"})
}

func fsyncLatencies(b *testing.B, path string, n int) []float64 {
	b.Helper()
	f, err := os.Create(path)
	if err != nil {
		b.Fatalf("%v", err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	var ms []float64
	for i := 0; i < n; i++ {
		start := time.Now()
		if _, err := f.WriteAt(buf, int64(i)*4096); err != nil {
			b.Fatalf("%v", err)
		}
		if err := f.Sync(); err != nil {
			b.Fatalf("%v", err)
		}
		ms = append(ms, testenv.Millis(time.Since(start)))
	}
	return ms
}

// BenchmarkClusterFailover measures the time from SIGKILL of the leader to
// the next write accepted through a surviving node, three times.
func BenchmarkClusterFailover(b *testing.B) {
	c := testenv.StartCluster(b, testenv.ClusterOptions{LogLevel: "warn"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var secs []float64
	for round := 0; round < 3; round++ {
		leader, err := c.WaitLeader(ctx, "data")
		if err != nil {
			b.Fatalf("%v", err)
		}
		var survivors []string
		for _, id := range []string{testenv.DataA, testenv.DataB, testenv.Witness} {
			if id != leader {
				survivors = append(survivors, id)
			}
		}
		cl := c.Client(survivors...)
		killed := time.Now()
		c.Kill(leader)
		for {
			wctx, wcancel := context.WithTimeout(ctx, time.Second)
			_, err := cl.SetValues(wctx, map[string]string{"failover": fmt.Sprint(round)})
			wcancel()
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				b.Fatalf("no write accepted after killing %s: %v", leader, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		secs = append(secs, time.Since(killed).Seconds())
		cl.Close()
		if err := c.Start(ctx, leader); err != nil {
			b.Fatalf("restart: %v", err)
		}
	}
	testenv.RecordMetric(b, testenv.Metric{Name: "cluster_failover_s", Value: testenv.Percentile(secs, 50), Unit: "s",
		Note: fmt.Sprintf("median of %d: SIGKILL of the leader to the next accepted write (heartbeat 500 ms, election 500 ms); runs %v", len(secs), roundAll(secs))})
}

func roundAll(v []float64) []string {
	var out []string
	for _, x := range v {
		out = append(out, fmt.Sprintf("%.2f", x))
	}
	return out
}
