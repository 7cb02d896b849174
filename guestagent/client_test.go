package guestagent_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/twinsnap/twinsnap/guestagent"
	"github.com/twinsnap/twinsnap/guestagent/agenttest"
)

// TestCalls runs every typed call against the fake agent, over a unix
// socket and over a net.Pipe.
func TestCalls(t *testing.T) {
	for _, transport := range []string{"unix", "pipe"} {
		t.Run(transport, func(t *testing.T) {
			a := agenttest.New()
			a.Exec = func(path string, args []string, input []byte) agenttest.ExecResult {
				return agenttest.ExecResult{Polls: 2, ExitCode: 3, Stdout: []byte(path + " ran"), Stderr: input}
			}
			var c *guestagent.Client
			if transport == "unix" {
				c, _ = start(t, a)
			} else {
				c = guestagent.NewClient(guestagent.NewStream(a.Pipe(t)))
				t.Cleanup(func() { _ = c.Close() })
			}
			ctx := fresh(t)

			if err := c.Ping(ctx); err != nil {
				t.Fatalf("ping: %v", err)
			}
			info, err := c.Info(ctx)
			if err != nil {
				t.Fatalf("info: %v", err)
			}
			if info.Version != "7.2.22" || !info.Supports("guest-fsfreeze-freeze-list") || info.Supports("guest-nosuch") {
				t.Fatalf("info = %+v", info)
			}

			fs, err := c.FSInfo(ctx)
			if err != nil {
				t.Fatalf("fsinfo: %v", err)
			}
			want := agenttest.DefaultFileSystems()
			if len(fs) != len(want) {
				t.Fatalf("fsinfo has %d file systems, want %d: %+v", len(fs), len(want), fs)
			}
			for i, w := range want {
				g := fs[i]
				wd, gd := w.Disks[0], g.Disks
				if g.Name != w.Name || g.Mountpoint != w.Mountpoint || g.Type != w.Type ||
					g.UsedBytes != *w.UsedBytes || g.TotalBytes != *w.TotalBytes || len(gd) != 1 ||
					gd[0].Serial != wd.Serial || gd[0].BusType != wd.BusType || gd[0].Dev != wd.Dev ||
					gd[0].PCIController.Slot != wd.PCIController.Slot {
					t.Fatalf("file system %d = %+v, want %+v", i, g, w)
				}
			}

			n, err := c.FreezeList(ctx, []string{"/mnt/data1", "/mnt/absent"})
			if err != nil || n != 1 {
				t.Fatalf("freeze-list = %d, %v; want 1", n, err)
			}
			if got := a.FrozenMounts(); !slices.Equal(got, []string{"/mnt/data1"}) {
				t.Fatalf("frozen mounts = %v", got)
			}
			if st, err := c.FreezeStatus(ctx); err != nil || st != guestagent.Frozen {
				t.Fatalf("status = %q, %v; want frozen", st, err)
			}
			_, err = c.Exec(ctx, "/bin/true", nil, nil, false)
			if !guestagent.IsClass(err, guestagent.ClassCommandNotFound) {
				t.Fatalf("exec while frozen = %v; want CommandNotFound", err)
			}
			if n, err := c.Thaw(ctx); err != nil || n != 1 {
				t.Fatalf("thaw = %d, %v; want 1", n, err)
			}
			if n, err := c.Thaw(ctx); err != nil || n != 0 {
				t.Fatalf("second thaw = %d, %v; want 0", n, err)
			}
			if n, err := c.FreezeList(ctx, []string{"/mnt/absent"}); err != nil || n != 0 || a.Frozen() {
				t.Fatalf("freeze-list of nothing = %d, %v, frozen %v; want 0, thawed", n, err, a.Frozen())
			}
			if n, err := c.FreezeAll(ctx); err != nil || n != 3 {
				t.Fatalf("freeze all = %d, %v; want 3", n, err)
			}
			if n, err := c.Thaw(ctx); err != nil || n != 3 {
				t.Fatalf("thaw all = %d, %v; want 3", n, err)
			}

			st, err := c.Run(ctx, "/bin/cat", "/proc/uptime")
			if err != nil {
				t.Fatalf("run: %v", err)
			}
			if !st.Exited || st.ExitCode != 3 || string(st.OutData) != "/bin/cat ran" {
				t.Fatalf("run = %+v", st)
			}
			if _, err := c.ExecStatus(ctx, 4242); !guestagent.IsClass(err, guestagent.ClassGenericError) {
				t.Fatalf("status of an unknown pid = %v; want GenericError", err)
			}
			if _, err := c.FreezeList(ctx, nil); err == nil {
				t.Fatalf("freeze-list with no mount points succeeded")
			}
			if got := a.Count("guest-sync-delimited"); got != 1 {
				t.Fatalf("client synced %d times without a fault; want once", got)
			}
		})
	}
}

// TestErrorClassesSurvive shows that the agent's error classes and
// descriptions reach the caller, match through errors.Is and IsClass, and
// leave the stream in sync.
func TestErrorClassesSurvive(t *testing.T) {
	a := agenttest.New()
	a.Fault = agenttest.Once("guest-fsfreeze-freeze-list", agenttest.Action{
		Error: &agenttest.ErrorReply{Class: "GenericError", Desc: "failed to freeze /mnt/data1: Device or resource busy"},
	})
	path := a.Start(t)
	ctx := fresh(t)
	s, err := guestagent.Dial(ctx, "unix", path)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer s.Close()
	c := guestagent.NewClient(s)

	_, err = s.Execute(ctx, "guest-nosuch", nil)
	var ge *guestagent.Error
	if !errors.As(err, &ge) || ge.Class != guestagent.ClassCommandNotFound || ge.Command != "guest-nosuch" ||
		ge.Desc != "The command guest-nosuch has not been found" {
		t.Fatalf("unknown command = %v; want CommandNotFound", err)
	}
	if !errors.Is(err, &guestagent.Error{Class: guestagent.ClassCommandNotFound}) {
		t.Fatalf("errors.Is does not match %v by class", err)
	}

	_, err = c.FreezeList(ctx, []string{"/mnt/data1"})
	if !guestagent.IsClass(err, guestagent.ClassGenericError) || !errors.As(err, &ge) ||
		ge.Desc != "failed to freeze /mnt/data1: Device or resource busy" {
		t.Fatalf("freeze = %v; want the agent's GenericError", err)
	}
	if errors.Is(err, &guestagent.Error{Class: guestagent.ClassCommandNotFound}) {
		t.Fatalf("errors.Is matches %v with the wrong class", err)
	}

	if _, err := s.Execute(ctx, "guest-ping", map[string]any{"bogus": 1}); !guestagent.IsClass(err, guestagent.ClassGenericError) {
		t.Fatalf("ping with a bogus argument = %v; want GenericError", err)
	}

	a.SetFrozen("/mnt/data2")
	_, err = c.FSInfo(ctx)
	if !errors.As(err, &ge) || ge.Class != guestagent.ClassCommandNotFound ||
		ge.Desc != "Command guest-get-fsinfo has been disabled: the agent is in frozen state" {
		t.Fatalf("fsinfo while frozen = %v; want the agent's frozen-state refusal", err)
	}
	if n, err := c.Thaw(ctx); err != nil || n != 1 || a.Frozen() {
		t.Fatalf("thaw = %d, %v, frozen %v; want 1, thawed", n, err, a.Frozen())
	}
	if got := a.Count("guest-sync-delimited"); got != 1 {
		t.Fatalf("error replies made the client resync (%d syncs); they should not", got)
	}
}

// TestCancelledContext shows that a call on a context that has already
// ended sends nothing and fails with ErrTimeout.
func TestCancelledContext(t *testing.T) {
	a := agenttest.New()
	c, _ := start(t, a)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := c.FreezeList(ctx, []string{"/mnt/data1"})
	if !errors.Is(err, guestagent.ErrTimeout) || !errors.Is(err, context.Canceled) {
		t.Fatalf("freeze on a cancelled context = %v; want ErrTimeout wrapping context.Canceled", err)
	}
	if got := names(a); len(got) != 0 {
		t.Fatalf("agent received %v on a cancelled context", got)
	}
	if err := c.Ping(fresh(t)); err != nil {
		t.Fatalf("ping after: %v", err)
	}
}
