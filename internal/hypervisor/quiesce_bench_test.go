package hypervisor_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/guestagent"
	"github.com/twinsnap/twinsnap/internal/hypervisor"
	"github.com/twinsnap/twinsnap/internal/testenv"
)

// benchRuns is the number of captures each benchmark series takes.
const benchRuns = 20

// benchDiskMiB is the size of the benchmarks' data volumes.
const benchDiskMiB = 64

// captureSeries takes application-consistent captures of the given
// volumes, the first full, the later ones incremental through the bitmap
// the one before added, each into new standalone targets that are deleted
// afterwards. Once a capture succeeded, the bitmap it started from is
// removed, as a daemon does once the newer snapshot is kept.
type captureSeries struct {
	m      *hypervisor.QEMUMachine
	ga     *guestagent.Client
	dir    string
	vols   []string
	bitmap string
	n      int
}

// capture takes the series' next capture.
func (s *captureSeries) capture(ctx context.Context, tb testing.TB) hypervisor.CaptureResult {
	tb.Helper()
	mode, parent := hypervisor.CaptureIncremental, fmt.Sprintf("%s-%d", s.bitmap, s.n-1)
	if s.n == 0 {
		mode, parent = hypervisor.CaptureFull, ""
	}
	req := hypervisor.CaptureRequest{
		ID: fmt.Sprintf("%s-%d", s.bitmap, s.n),
		Quiesce: hypervisor.QuiesceOptions{
			Desire: hypervisor.Application, Require: hypervisor.Application, FreezeEnabled: true, Logger: quiet,
		},
	}
	var targets []string
	for _, v := range s.vols {
		path := filepath.Join(s.dir, fmt.Sprintf("%s-%s-%d.qcow2", v, s.bitmap, s.n))
		if out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", path, fmt.Sprintf("%dM", benchDiskMiB)).CombinedOutput(); err != nil {
			tb.Fatalf("qemu-img create: %v: %s", err, out)
		}
		targets = append(targets, path)
		req.Volumes = append(req.Volumes, hypervisor.CaptureVolume{
			Volume: v, Target: path, Mode: mode, Bitmap: parent, NewBitmap: fmt.Sprintf("%s-%d", s.bitmap, s.n),
		})
	}
	defer func() {
		for _, p := range targets {
			_ = os.Remove(p)
		}
	}()
	res, err := hypervisor.Capture(ctx, s.m, s.ga, req)
	if err != nil {
		tb.Fatalf("capture %d of %v: %v", s.n, s.vols, err)
	}
	if res.Quiesce.Achieved != hypervisor.Application {
		tb.Fatalf("capture %d of %v: %s (%s)", s.n, s.vols, res.Quiesce.Achieved, res.Quiesce.StepDown)
	}
	if parent != "" {
		for _, v := range res.Volumes {
			if err := hypervisor.RemoveBitmaps(ctx, s.m.QMP(), v.Node, []string{parent}); err != nil {
				tb.Fatalf("removing bitmap %s of %s: %v", parent, v.Volume, err)
			}
		}
	}
	s.n++
	return res
}

func ms(d time.Duration) float64 { return testenv.Millis(d) }

// BenchmarkFreezeWindow measures the freeze window of Capture
// (QuiesceResult.Window: from the freeze call to the confirmed thaw, the
// one transaction with its throttled jobs in between) for one volume and
// for three volumes of an idle TCG guest, 20 captures each, the first of
// each series full and the others incremental.
func BenchmarkFreezeWindow(b *testing.B) {
	vm := testenv.StartVM(b, testenv.VMOptions{DataDisks: []testenv.DiskSpec{
		{Serial: "data1", SizeMiB: benchDiskMiB}, {Serial: "data2", SizeMiB: benchDiskMiB}, {Serial: "data3", SizeMiB: benchDiskMiB},
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	m, err := hypervisor.OpenQEMU(ctx, "", vm.QMPSocket, vm.AgentSocket, hypervisor.WithLogger(quiet))
	if err != nil {
		b.Fatalf("OpenQEMU: %v", err)
	}
	defer closeQuietly(m)
	ga := guestagent.NewClient(m.Agent())
	dir := testenv.TempDir(b, "targets")

	for _, c := range []struct {
		name string
		vols []string
	}{
		{"1vol", []string{"data1"}},
		{"3vol", []string{"data1", "data2", "data3"}},
	} {
		s := &captureSeries{m: m, ga: ga, dir: dir, vols: c.vols, bitmap: "b" + c.name}
		var window, freeze, thaw []float64
		for range benchRuns {
			res := s.capture(ctx, b)
			window = append(window, ms(res.Quiesce.Window))
			freeze = append(freeze, ms(res.Quiesce.FreezeCall))
			thaw = append(thaw, ms(res.Quiesce.ThawCall))
			time.Sleep(100 * time.Millisecond)
		}
		b.Logf("%s: freeze call p50 %.1f ms, thaw call p50 %.1f ms, p99 %.1f ms", c.name,
			testenv.Percentile(freeze, 50), testenv.Percentile(thaw, 50), testenv.Percentile(thaw, 99))
		note := fmt.Sprintf("%d Captures of %d × %d MiB volumes (first full, then incremental), idle TCG guest: freeze call to confirmed thaw",
			benchRuns, len(c.vols), benchDiskMiB)
		testenv.RecordMetric(b, testenv.Metric{Name: "freeze_window_" + c.name + "_p50_ms", Value: testenv.Percentile(window, 50), Unit: "ms", Note: note})
		testenv.RecordMetric(b, testenv.Metric{Name: "freeze_window_" + c.name + "_p99_ms", Value: testenv.Percentile(window, 99), Unit: "ms", Note: note})
	}
}

// BenchmarkGuestStall measures the longest write stall the guest sees (its
// stall meter writing and fsyncing on the frozen volume) during each
// application-consistent Capture of that volume, window by window, and in
// the same run, interleaved, during a plain agent freeze and thaw of the
// same mount point with nothing in between: the floor any quiesced
// capture pays. A capture's window lasts until its copy has finished, so
// it holds the copy's competition with the guest's I/O too.
func BenchmarkGuestStall(b *testing.B) {
	vm := testenv.StartVM(b, testenv.VMOptions{DataDisks: []testenv.DiskSpec{{Serial: "data1", SizeMiB: benchDiskMiB}}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	m, err := hypervisor.OpenQEMU(ctx, "", vm.QMPSocket, vm.AgentSocket, hypervisor.WithLogger(quiet))
	if err != nil {
		b.Fatalf("OpenQEMU: %v", err)
	}
	defer closeQuietly(m)
	ga := guestagent.NewClient(m.Agent())
	// Half the volume holds data, so that the first, full capture has
	// something to copy (block-copy skips what reads as zeros).
	fill := fmt.Sprintf("dd if=/dev/urandom of=/mnt/data1/fill bs=1M count=%d 2>/dev/null && sync", benchDiskMiB/2)
	if st, err := ga.Run(ctx, "/bin/sh", "-c", fill); err != nil || st.ExitCode != 0 {
		b.Fatalf("filling data1: %+v, %v", st, err)
	}
	meter, err := testenv.StartStallMeter(ctx, vm, "data1", testenv.StallMeterOptions{Agent: ga, Report: -1})
	if err != nil {
		b.Fatalf("StartStallMeter: %v", err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if r, err := meter.Stop(sctx); err != nil {
			b.Errorf("stopping the stall meter: %v", err)
		} else {
			b.Logf("stall meter over the whole run: %d iterations, longest gap %v", r.TotalIterations, r.TotalMaxGap)
		}
	}()
	s := &captureSeries{m: m, ga: ga, dir: testenv.TempDir(b, "targets"), vols: []string{"data1"}, bitmap: "bstall"}

	captureOnce := func() (time.Duration, error) {
		var thaw time.Duration
		r, err := meter.Window(ctx, func() error {
			res := s.capture(ctx, b)
			thaw = res.Quiesce.ThawCall
			return nil
		})
		if err != nil {
			return 0, err
		}
		if r.Errors != 0 {
			return 0, fmt.Errorf("stall meter reported %d write errors", r.Errors)
		}
		b.Logf("capture %2d: longest gap %v (write %v, fsync %v), thaw call %v", s.n-1, r.MaxGap, r.MaxWrite, r.MaxFsync, thaw.Round(time.Millisecond))
		return r.MaxGap, nil
	}
	freezeOnce := func() (time.Duration, error) {
		r, err := meter.Window(ctx, func() error {
			if _, err := ga.FreezeList(ctx, []string{"/mnt/data1"}); err != nil {
				tctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				_, _ = ga.Thaw(tctx)
				return err
			}
			_, err := ga.Thaw(ctx)
			return err
		})
		if err != nil {
			return 0, err
		}
		return r.MaxGap, nil
	}

	var capt, ref []float64
	for i := range benchRuns {
		// Alternate the order, so that neither kind always follows the
		// other.
		steps := []func() (time.Duration, error){captureOnce, freezeOnce}
		if i%2 == 1 {
			steps[0], steps[1] = steps[1], steps[0]
		}
		for j, step := range steps {
			gap, err := step()
			if err != nil {
				b.Fatalf("round %d: %v", i, err)
			}
			if (j == 0) == (i%2 == 0) {
				capt = append(capt, ms(gap))
			} else {
				ref = append(ref, ms(gap))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	note := fmt.Sprintf("%d windows each, interleaved; longest write+fsync gap of the guest's stall meter on the frozen %d MiB volume, half of it data (TCG)", benchRuns, benchDiskMiB)
	captP50, refP50 := testenv.Percentile(capt, 50), testenv.Percentile(ref, 50)
	testenv.RecordMetric(b, testenv.Metric{Name: "guest_stall_1vol_p50_ms", Value: captP50, Unit: "ms", Note: "Capture (first full, then incremental): " + note})
	testenv.RecordMetric(b, testenv.Metric{Name: "guest_stall_1vol_p99_ms", Value: testenv.Percentile(capt, 99), Unit: "ms", Note: "Capture (first full, then incremental): " + note})
	testenv.RecordMetric(b, testenv.Metric{Name: "guest_stall_freeze_only_p50_ms", Value: refP50, Unit: "ms", Note: "agent freeze-list + thaw, nothing in between: " + note})
	testenv.RecordMetric(b, testenv.Metric{Name: "guest_stall_freeze_only_p99_ms", Value: testenv.Percentile(ref, 99), Unit: "ms", Note: "agent freeze-list + thaw, nothing in between: " + note})
	testenv.RecordMetric(b, testenv.Metric{
		Name: "guest_stall_capture_over_freeze_only", Value: captP50 / refP50, Unit: "ratio",
		Reference: "guest_stall_freeze_only_p50_ms", Note: "guest_stall_1vol_p50_ms over guest_stall_freeze_only_p50_ms, same run",
	})
}
