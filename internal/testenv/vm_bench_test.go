package testenv_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/internal/testenv"
)

// BenchmarkGuestBoot measures the time from QEMU start to the first answer
// of the guest agent, over three boots of a guest with one data volume.
func BenchmarkGuestBoot(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	img, err := testenv.BuildGuestImage(ctx)
	testenv.Need(b, "guest image", err)
	var secs []float64
	for i := 0; i < 3; i++ {
		start := time.Now()
		vm, err := testenv.LaunchVM(ctx, img, testenv.TempDir(b, "vm"), testenv.VMOptions{
			Name:      fmt.Sprintf("bench-boot-%d", i),
			DataDisks: []testenv.DiskSpec{{Serial: "data1", SizeMiB: 64}},
		})
		if err != nil {
			b.Fatalf("boot %d: %v", i, err)
		}
		secs = append(secs, time.Since(start).Seconds())
		if err := vm.Stop(); err != nil {
			b.Fatalf("stop: %v", err)
		}
	}
	testenv.RecordMetric(b, testenv.Metric{
		Name: "guest_boot_to_agent_s", Value: testenv.Percentile(secs, 50), Unit: "s",
		Note: fmt.Sprintf("median of %d TCG boots, QEMU start to guest-ping, disk creation included", len(secs)),
	})
}

// BenchmarkAgentFreezeThaw measures guest-fsfreeze-freeze-list of one
// mount point followed by guest-fsfreeze-thaw through the agent socket,
// with nothing in between: the floor under any application-consistent
// capture.
func BenchmarkAgentFreezeThaw(b *testing.B) {
	vm := testenv.StartVM(b, testenv.VMOptions{DataDisks: []testenv.DiskSpec{{Serial: "data1", SizeMiB: 64}}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ga, err := vm.Agent(ctx)
	if err != nil {
		b.Fatalf("agent: %v", err)
	}
	defer ga.Close()
	var freeze, thaw, total []float64
	for i := 0; i < 20; i++ {
		t0 := time.Now()
		if _, err := ga.FreezeList(ctx, []string{"/mnt/data1"}); err != nil {
			_, _ = ga.Thaw(context.Background())
			b.Fatalf("freeze: %v", err)
		}
		t1 := time.Now()
		if _, err := ga.Thaw(ctx); err != nil {
			b.Fatalf("thaw: %v", err)
		}
		t2 := time.Now()
		freeze = append(freeze, testenv.Millis(t1.Sub(t0)))
		thaw = append(thaw, testenv.Millis(t2.Sub(t1)))
		total = append(total, testenv.Millis(t2.Sub(t0)))
		time.Sleep(50 * time.Millisecond)
	}
	note := "20 runs, one mount point, TCG guest, agent socket"
	testenv.RecordMetric(b, testenv.Metric{Name: "agent_freeze_thaw_1vol_p50_ms", Value: testenv.Percentile(total, 50), Unit: "ms", Note: note})
	testenv.RecordMetric(b, testenv.Metric{Name: "agent_freeze_thaw_1vol_p99_ms", Value: testenv.Percentile(total, 99), Unit: "ms", Note: note})
	testenv.RecordMetric(b, testenv.Metric{Name: "agent_freeze_call_1vol_p50_ms", Value: testenv.Percentile(freeze, 50), Unit: "ms", Note: note})
	testenv.RecordMetric(b, testenv.Metric{Name: "agent_thaw_call_1vol_p50_ms", Value: testenv.Percentile(thaw, 50), Unit: "ms", Note: note})
}
