package guestagent_test

import (
	"context"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/guestagent"
	"github.com/twinsnap/twinsnap/guestagent/agenttest"
)

// bound is the context bound of a call under a fault; limit is how long
// such a call may take at most. The gap is slack for a loaded machine and
// the race detector: this checks that calls are bounded, not how fast
// they are.
const (
	bound = 300 * time.Millisecond
	limit = 2 * time.Second
)

// start serves a on a unix socket and returns a client connected to it.
func start(t *testing.T, a *agenttest.Agent) (*guestagent.Client, string) {
	t.Helper()
	path := a.Start(t)
	return dial(t, path), path
}

// dial connects a client to the agent socket at path.
func dial(t *testing.T, path string) *guestagent.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := guestagent.Dial(ctx, "unix", path)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	c := guestagent.NewClient(s)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// bounded runs f with a context bounded by bound and fails the test if f
// takes longer than limit.
func bounded(t *testing.T, f func(ctx context.Context) error) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	begin := time.Now()
	err := f(ctx)
	if d := time.Since(begin); d > limit {
		t.Fatalf("call bounded by %v returned after %v (err %v)", bound, d, err)
	}
	return err
}

// fresh returns a context for a call that should succeed.
func fresh(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// names returns the names of the commands a received.
func names(a *agenttest.Agent) []string {
	var out []string
	for _, c := range a.Commands() {
		out = append(out, c.Name)
	}
	return out
}
