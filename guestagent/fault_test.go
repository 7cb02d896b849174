package guestagent_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/guestagent"
	"github.com/twinsnap/twinsnap/guestagent/agenttest"
)

// freeze1 freezes /mnt/data1, the call every fault test aims at.
func freeze1(c *guestagent.Client) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		_, err := c.FreezeList(ctx, []string{"/mnt/data1"})
		return err
	}
}

// mustThaw thaws on a fresh context and checks that the agent thawed
// want file systems and is left thawed.
func mustThaw(t *testing.T, c *guestagent.Client, a *agenttest.Agent, want int) {
	t.Helper()
	n, err := c.Thaw(fresh(t))
	if err != nil || n != want {
		t.Fatalf("thaw = %d, %v; want %d", n, err, want)
	}
	if a.Frozen() || len(a.FrozenMounts()) != 0 {
		t.Fatalf("agent still frozen after thaw: %v", a.FrozenMounts())
	}
}

// TestFreezeHangs: the agent never answers the freeze (until released).
// The freeze fails with ErrTimeout within its bound; once the agent
// recovers and sends its late reply, the next call skips that reply
// through the resync and gets its own answer.
func TestFreezeHangs(t *testing.T) {
	release := make(chan struct{})
	a := agenttest.New()
	a.Fault = agenttest.Once("guest-fsfreeze-freeze-list", agenttest.Action{Wait: release})
	c, _ := start(t, a)

	err := bounded(t, freeze1(c))
	if !errors.Is(err, guestagent.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hung freeze = %v; want ErrTimeout", err)
	}
	// Still hung: a status call is bounded too, sync included.
	if err := bounded(t, func(ctx context.Context) error { _, err := c.FreezeStatus(ctx); return err }); !errors.Is(err, guestagent.ErrTimeout) {
		t.Fatalf("status while the agent hangs = %v; want ErrTimeout", err)
	}

	close(release) // the freeze completes and its reply (1) goes out late
	st, err := c.FreezeStatus(fresh(t))
	if err != nil || st != guestagent.Frozen {
		t.Fatalf("status after the hang = %q, %v; want its own reply, frozen", st, err)
	}
	mustThaw(t, c, a, 1)
}

// TestFreezeHangsForGood: the agent never recovers. Every call, including
// the thaw on a fresh context, ends within its bound, and Close ends a call
// in progress at once.
func TestFreezeHangsForGood(t *testing.T) {
	a := agenttest.New()
	a.Fault = agenttest.On("guest-fsfreeze-freeze-list", agenttest.Action{Wait: make(chan struct{})})
	c, _ := start(t, a)

	if err := bounded(t, freeze1(c)); !errors.Is(err, guestagent.ErrTimeout) {
		t.Fatalf("hung freeze = %v; want ErrTimeout", err)
	}
	if err := bounded(t, func(ctx context.Context) error { _, err := c.Thaw(ctx); return err }); !errors.Is(err, guestagent.ErrTimeout) {
		t.Fatalf("thaw while the agent hangs = %v; want ErrTimeout", err)
	}

	// A call with a long bound ends as soon as the client is closed.
	done := make(chan error, 1)
	begin := time.Now()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, err := c.FreezeStatus(ctx)
		done <- err
	}()
	time.Sleep(100 * time.Millisecond)
	closed := make(chan struct{})
	go func() { _ = c.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(limit):
		t.Fatalf("Close blocked behind a call in progress")
	}
	select {
	case err := <-done:
		if !errors.Is(err, guestagent.ErrClosed) {
			t.Fatalf("call ended by Close = %v; want ErrClosed", err)
		}
		if d := time.Since(begin); d > limit {
			t.Fatalf("call ended %v after it began; Close should end it at once", d)
		}
	case <-time.After(limit):
		t.Fatalf("call in progress did not end when the client was closed")
	}
	if err := c.Ping(fresh(t)); !errors.Is(err, guestagent.ErrClosed) {
		t.Fatalf("ping on a closed client = %v; want ErrClosed", err)
	}
}

// TestCancelEndsHungCall: cancelling the context (not a deadline) ends a
// hung call at once, with ErrTimeout wrapping context.Canceled.
func TestCancelEndsHungCall(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	a := agenttest.New()
	a.Fault = agenttest.Once("guest-fsfreeze-freeze-list", agenttest.Action{Wait: release})
	c, _ := start(t, a)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	begin := time.Now()
	err := freeze1(c)(ctx)
	if !errors.Is(err, guestagent.ErrTimeout) || !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled freeze = %v; want ErrTimeout wrapping context.Canceled", err)
	}
	if d := time.Since(begin); d > limit {
		t.Fatalf("cancelled call returned after %v", d)
	}
}

// TestDropMidReply: the agent writes half its reply and the connection
// goes. The call fails with ErrClosed within its bound, the stream fails
// fast from then on, and a re-dialled client finds the guest frozen (the
// freeze did happen) and thaws it.
func TestDropMidReply(t *testing.T) {
	for _, command := range []string{"guest-fsfreeze-freeze-list", "guest-sync-delimited"} {
		t.Run(command, func(t *testing.T) {
			a := agenttest.New()
			a.Fault = agenttest.Once(command, agenttest.Action{Drop: true})
			c, path := start(t, a)

			err := bounded(t, freeze1(c))
			if !errors.Is(err, guestagent.ErrClosed) {
				t.Fatalf("freeze with a dropped reply = %v; want ErrClosed", err)
			}
			if err := bounded(t, func(ctx context.Context) error { return c.Ping(ctx) }); !errors.Is(err, guestagent.ErrClosed) {
				t.Fatalf("ping on the lost stream = %v; want ErrClosed", err)
			}

			c2 := dial(t, path)
			want, wantN := guestagent.Thawed, 0
			if command == "guest-fsfreeze-freeze-list" {
				want, wantN = guestagent.Frozen, 1
			}
			if st, err := c2.FreezeStatus(fresh(t)); err != nil || st != want {
				t.Fatalf("status on a new connection = %q, %v; want %q", st, err, want)
			}
			mustThaw(t, c2, a, wantN)
		})
	}
}

// TestGarbageReply: the agent answers with bytes that are not a valid
// reply. The call fails with ErrProtocol within its bound and the next
// call on the same stream resyncs and gets its own reply.
func TestGarbageReply(t *testing.T) {
	for _, tc := range []struct {
		name  string
		reply string
	}{
		{"binary", "\x00\x01\x02garbage\n"},
		{"text", "Error: unknown\n"},
		{"array", `["return", 1]` + "\n"},
		{"unbalanced", `{"return": 1]}` + "\n"},
		{"not json", `{"return" 1}` + "\n"},
		{"no return", `{"frozen": 1}` + "\n"},
		{"case", `{"Return": 1}` + "\n"},
		{"duplicate", `{"return": 1, "return": 2}` + "\n"},
		{"both", `{"return": 1, "error": {"class": "GenericError", "desc": "x"}}` + "\n"},
		{"error without class", `{"error": {"desc": "x"}}` + "\n"},
		{"marker inside", "{\"return\": \"\xff\"}\n"},
		{"event", `{"event": "SHUTDOWN", "timestamp": {"seconds": 1, "microseconds": 2}}` + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := agenttest.New()
			a.Fault = agenttest.Once("guest-fsfreeze-freeze-list", agenttest.Action{Reply: []byte(tc.reply)})
			c, _ := start(t, a)

			err := bounded(t, freeze1(c))
			if !errors.Is(err, guestagent.ErrProtocol) {
				t.Fatalf("freeze answered with %q = %v; want ErrProtocol", tc.reply, err)
			}
			if st, err := c.FreezeStatus(fresh(t)); err != nil || st != guestagent.Frozen {
				t.Fatalf("status after garbage = %q, %v; want frozen", st, err)
			}
			mustThaw(t, c, a, 1)
			if got := a.Count("guest-sync-delimited"); got != 2 {
				t.Fatalf("client synced %d times; want twice (start, after the garbage)", got)
			}
		})
	}
}

// TestOversizedReply: a reply larger than MaxReplySize fails with
// ErrProtocol and the stream recovers.
func TestOversizedReply(t *testing.T) {
	a := agenttest.New()
	a.Fault = agenttest.Once("guest-get-fsinfo", agenttest.Action{Return: agenttest.Oversized(guestagent.MaxReplySize + 1)})
	c, _ := start(t, a)
	// 16 MiB through the fake and the race detector on a busy machine:
	// this checks the error, not the time.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := c.FSInfo(ctx); !errors.Is(err, guestagent.ErrProtocol) {
		t.Fatalf("oversized fsinfo = %v; want ErrProtocol", err)
	}
	if fs, err := c.FSInfo(fresh(t)); err != nil || len(fs) != 3 {
		t.Fatalf("fsinfo after = %d file systems, %v; want 3", len(fs), err)
	}
}

// TestStaleSyncID: the agent answers the sync with a stale id (and the
// parse error for the 0xFF byte, and garbage) before the right one. The
// client skips them and the call gets its own reply.
func TestStaleSyncID(t *testing.T) {
	a := agenttest.New()
	before := slices.Concat(agenttest.StaleSync(42), []byte("junk\xff\xff"), agenttest.StaleSync(43),
		agenttest.LateReply("frozen", "twinsnap-0-1"))
	a.Fault = agenttest.Once("guest-sync-delimited", agenttest.Action{Before: before})
	c, _ := start(t, a)
	st, err := bounded2(t, func(ctx context.Context) (guestagent.FreezeStatus, error) { return c.FreezeStatus(ctx) })
	if err != nil || st != guestagent.Thawed {
		t.Fatalf("status = %q, %v; want thawed", st, err)
	}
}

// TestSyncNeverMatches: the agent answers every sync with a stale id. The
// call cannot sync and ends with ErrTimeout within its bound.
func TestSyncNeverMatches(t *testing.T) {
	a := agenttest.New()
	a.Fault = agenttest.On("guest-sync-delimited", agenttest.Action{Reply: agenttest.StaleSync(42)})
	c, _ := start(t, a)
	if err := bounded(t, freeze1(c)); !errors.Is(err, guestagent.ErrTimeout) {
		t.Fatalf("freeze without a sync = %v; want ErrTimeout", err)
	}
	if a.Count("guest-fsfreeze-freeze-list") != 0 {
		t.Fatalf("client sent the freeze on an unsynchronised stream")
	}
}

// TestLateReply: the agent answers the freeze after the caller's deadline.
// The freeze fails with ErrTimeout within its bound; the next call skips
// the late reply and gets its own; a thaw on a fresh context reaches the
// agent and leaves it thawed.
func TestLateReply(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault agenttest.Action
	}{
		// The real agent's late reply, echoing the abandoned command's id.
		{"with id", agenttest.Action{Delay: time.Second}},
		// A late reply without an id (an agent that does not echo ids),
		// whose value the next call could take for its own: only the
		// resync can tell them apart.
		{"without id", agenttest.Action{Delay: time.Second, Reply: []byte(`{"return": "thawed"}` + "\n")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := agenttest.New()
			a.Fault = agenttest.Once("guest-fsfreeze-freeze-list", tc.fault)
			c, _ := start(t, a)

			err := bounded(t, freeze1(c))
			if !errors.Is(err, guestagent.ErrTimeout) {
				t.Fatalf("late freeze = %v; want ErrTimeout", err)
			}
			st, err := c.FreezeStatus(fresh(t))
			if err != nil || st != guestagent.Frozen {
				t.Fatalf("status after the late reply = %q, %v; want its own reply, frozen", st, err)
			}
			mustThaw(t, c, a, 1)
			want := []string{"guest-sync-delimited", "guest-fsfreeze-freeze-list", "guest-sync-delimited",
				"guest-fsfreeze-status", "guest-fsfreeze-thaw"}
			if got := names(a); !slices.Equal(got, want) {
				t.Fatalf("agent received %v; want %v", got, want)
			}
		})
	}
}

// TestThawAfterFreezeTimeout: the snapshot engine's sequence. The freeze
// times out while the agent is still freezing; the thaw, issued at once on
// a fresh context, waits for the agent, reaches it after the freeze and
// leaves the guest thawed.
func TestThawAfterFreezeTimeout(t *testing.T) {
	release := make(chan struct{})
	a := agenttest.New()
	a.Fault = agenttest.Once("guest-fsfreeze-freeze-list", agenttest.Action{Wait: release})
	c, _ := start(t, a)
	if err := bounded(t, freeze1(c)); !errors.Is(err, guestagent.ErrTimeout) {
		t.Fatalf("freeze = %v; want ErrTimeout", err)
	}
	time.AfterFunc(200*time.Millisecond, func() { close(release) })
	mustThaw(t, c, a, 1)
	cmds := names(a)
	if i, j := slices.Index(cmds, "guest-fsfreeze-freeze-list"), slices.Index(cmds, "guest-fsfreeze-thaw"); i < 0 || j < i {
		t.Fatalf("agent received %v; want the thaw after the freeze", cmds)
	}
}

// TestStaleReplyWhileSynced: with the stream in sync, the agent sends the
// reply to an earlier command again (and a stranger's late reply) before
// the answer. The client skips replies whose id is not its command's.
func TestStaleReplyWhileSynced(t *testing.T) {
	a := agenttest.New()
	a.Fault = agenttest.Once("guest-fsfreeze-status", agenttest.Action{
		ReplayPrevious: true,
		Before:         agenttest.LateReply("frozen", "someone-else-7"),
	})
	c, _ := start(t, a)
	ctx := fresh(t)
	if n, err := c.Thaw(ctx); err != nil || n != 0 {
		t.Fatalf("thaw = %d, %v", n, err)
	}
	st, err := c.FreezeStatus(ctx)
	if err != nil || st != guestagent.Thawed {
		t.Fatalf("status = %q, %v; want its own reply, thawed", st, err)
	}
	if n, err := c.Thaw(ctx); err != nil || n != 0 {
		t.Fatalf("thaw after = %d, %v", n, err)
	}
}

// bounded2 is bounded for calls that return a value.
func bounded2[T any](t *testing.T, f func(ctx context.Context) (T, error)) (T, error) {
	t.Helper()
	var v T
	err := bounded(t, func(ctx context.Context) error {
		var err error
		v, err = f(ctx)
		return err
	})
	return v, err
}

// TestWrongShapeReply: well-formed replies whose value does not fit the
// call fail with ErrProtocol instead of decoding to a zero value, and the
// stream stays in sync (the framing was right).
func TestWrongShapeReply(t *testing.T) {
	a := agenttest.New()
	a.Fault = agenttest.Chain(
		agenttest.Once("guest-fsfreeze-thaw", agenttest.Action{Return: []byte("null")}),
		agenttest.Once("guest-fsfreeze-status", agenttest.Action{Return: []byte(`"melting"`)}),
		agenttest.Once("guest-fsfreeze-freeze-list", agenttest.Action{Return: []byte(`"1"`)}),
	)
	c, _ := start(t, a)
	ctx := fresh(t)
	if n, err := c.Thaw(ctx); !errors.Is(err, guestagent.ErrProtocol) {
		t.Fatalf("thaw answered null = %d, %v; want ErrProtocol", n, err)
	}
	if st, err := c.FreezeStatus(ctx); !errors.Is(err, guestagent.ErrProtocol) {
		t.Fatalf("status answered \"melting\" = %q, %v; want ErrProtocol", st, err)
	}
	if n, err := c.FreezeList(ctx, []string{"/mnt/data1"}); !errors.Is(err, guestagent.ErrProtocol) {
		t.Fatalf("freeze answered \"1\" = %d, %v; want ErrProtocol", n, err)
	}
	if st, err := c.FreezeStatus(ctx); err != nil || st != guestagent.Frozen {
		t.Fatalf("status after = %q, %v; want frozen", st, err)
	}
	mustThaw(t, c, a, 1)
	if got := a.Count("guest-sync-delimited"); got != 1 {
		t.Fatalf("client resynced (%d syncs) after well-framed replies", got)
	}
}
