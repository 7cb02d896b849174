// Command benchrun runs twinsnap's benchmarks for `make bench`: it runs the
// Go benchmarks of every package once (each benchmark does its own
// repetitions and side-by-side reference runs), collects the metrics they
// record through testenv.RecordMetric, prints them as a table and writes
// bench/results.json as {"metrics": [...]}.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/twinsnap/twinsnap/internal/testenv"
)

func main() {
	out := flag.String("out", "bench/results.json", "where to write the results")
	pkgs := flag.String("pkgs", "./...", "packages whose benchmarks run")
	pattern := flag.String("bench", ".", "benchmark name pattern")
	timeout := flag.String("timeout", "60m", "go test timeout")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *out, *pkgs, *pattern, *timeout); err != nil {
		slog.Error("bench failed", "component", "benchrun", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out, pkgs, pattern, timeout string) error {
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return fmt.Errorf("results dir: %w", err)
	}
	raw, err := filepath.Abs(strings.TrimSuffix(out, ".json") + ".jsonl")
	if err != nil {
		return err
	}
	if err := os.Remove(raw); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("old metrics: %w", err)
	}
	args := []string{"test", "-run", "^$", "-bench", pattern, "-benchtime", "1x", "-count", "1", "-p", "1", "-timeout", timeout}
	args = append(args, strings.Fields(pkgs)...)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Env = append(os.Environ(), testenv.MetricsEnv+"="+raw)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	fmt.Fprintf(os.Stderr, "benchrun: go %s\n", strings.Join(args, " "))
	runErr := cmd.Run()

	metrics, err := readMetrics(raw)
	if err != nil {
		return err
	}
	if err := writeResults(out, metrics); err != nil {
		return err
	}
	if err := printTable(os.Stdout, metrics); err != nil {
		return err
	}
	fmt.Printf("\n%d metrics written to %s\n", len(metrics), out)
	if runErr != nil {
		return fmt.Errorf("benchmarks failed: %w", runErr)
	}
	if len(metrics) == 0 {
		return errors.New("no benchmark recorded a metric")
	}
	return nil
}

func readMetrics(path string) ([]testenv.Metric, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	defer f.Close()
	byName := map[string]testenv.Metric{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m testenv.Metric
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			return nil, fmt.Errorf("metrics line %q: %w", sc.Text(), err)
		}
		byName[m.Name] = m // a later run of the same metric wins
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	metrics := make([]testenv.Metric, 0, len(byName))
	for _, m := range byName {
		metrics = append(metrics, m)
	}
	sort.Slice(metrics, func(i, j int) bool { return metrics[i].Name < metrics[j].Name })
	return metrics, nil
}

func writeResults(path string, metrics []testenv.Metric) error {
	if metrics == nil {
		metrics = []testenv.Metric{}
	}
	b, err := json.MarshalIndent(struct {
		Metrics []testenv.Metric `json:"metrics"`
	}{metrics}, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("results: %w", err)
	}
	return os.Rename(tmp, path)
}

func printTable(w io.Writer, metrics []testenv.Metric) error {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	b.WriteString("\n")
	row := func(cols ...string) { _, _ = tw.Write([]byte(strings.Join(cols, "\t") + "\n")) }
	row("METRIC", "VALUE", "UNIT", "REFERENCE", "NOTE")
	for _, m := range metrics {
		row(m.Name, fmt.Sprintf("%.4g", m.Value), m.Unit, m.Reference, m.Note)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := io.WriteString(w, b.String())
	return err
}
