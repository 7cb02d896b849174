package testenv

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"sort"
	"sync"
	"testing"
	"time"
)

// MetricsEnv names the environment variable holding the file that
// benchmarks append their metrics to, one JSON object per line. `make
// bench` sets it and assembles bench/results.json from the file.
const MetricsEnv = "TWINSNAP_BENCH_OUT"

// Metric is one figure reported by `make bench`. Names are stable so that
// runs can be compared.
type Metric struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
	// Reference names what a ratio was measured against in the same run;
	// empty for absolute figures.
	Reference string `json:"reference"`
	Note      string `json:"note"`
}

var metricsMu sync.Mutex

// RecordMetric logs m and appends it to the metrics file, if one is set.
func RecordMetric(tb testing.TB, m Metric) {
	tb.Helper()
	tb.Logf("metric %s = %.4g %s (reference: %s) %s", m.Name, m.Value, m.Unit, m.Reference, m.Note)
	if err := AppendMetric(m); err != nil {
		tb.Fatalf("recording metric %s: %v", m.Name, err)
	}
}

// AppendMetric appends m to the file named by TWINSNAP_BENCH_OUT; it does
// nothing when the variable is unset.
func AppendMetric(m Metric) error {
	path := os.Getenv(MetricsEnv)
	if path == "" {
		return nil
	}
	if m.Name == "" || math.IsNaN(m.Value) || math.IsInf(m.Value, 0) {
		return fmt.Errorf("testenv: metric %q has no name or a non-finite value %v", m.Name, m.Value)
	}
	line, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("testenv: metric: %w", err)
	}
	metricsMu.Lock()
	defer metricsMu.Unlock()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("testenv: metrics file: %w", err)
	}
	if _, err := f.Write(append(line, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("testenv: metrics file: %w", err)
	}
	return f.Close()
}

// Percentile returns the p-th percentile (0..100) of samples by the
// nearest-rank method; samples need not be sorted.
func Percentile(samples []float64, p float64) float64 {
	if len(samples) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), samples...)
	sort.Float64s(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	if rank < 1 {
		rank = 1
	}
	if rank > len(s) {
		rank = len(s)
	}
	return s[rank-1]
}

// Millis converts a duration to fractional milliseconds.
func Millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
