package hypervisor_test

import (
	"context"
	"io"
	"log/slog"
	"runtime"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/internal/hypervisor"
	"github.com/twinsnap/twinsnap/internal/hypervisor/qmptest"
)

// quiet is a logger that discards everything; the connection logs lost
// connections and dropped events at warning level, which tests provoke.
var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// leakCheck records the number of goroutines and returns a func that
// fails the test if, after a short settle, more are running. Defer it
// first, so that it runs after the test's other deferred cleanups.
func leakCheck(t *testing.T) func() {
	t.Helper()
	before := runtime.NumGoroutine()
	return func() {
		t.Helper()
		deadline := time.Now().Add(3 * time.Second)
		for {
			n := runtime.NumGoroutine()
			if n <= before {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Fatalf("goroutine leak: %d before, %d after:\n%s", before, n, buf)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// connect starts a QMP client on an in-memory connection to s.
func connect(t *testing.T, s *qmptest.Server, opts ...hypervisor.QMPOption) *hypervisor.QMPConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := hypervisor.NewQMPConn(ctx, s.Pipe(), append([]hypervisor.QMPOption{hypervisor.WithLogger(quiet)}, opts...)...)
	if err != nil {
		t.Fatalf("NewQMPConn: %v", err)
	}
	return c
}

// closeQuietly closes c on the way out of a test; tests that care about
// Close's result call it themselves.
func closeQuietly(c io.Closer) { _ = c.Close() }

// within returns a context that ends after d.
func within(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls cond every 10 ms until it holds or d passes.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}
