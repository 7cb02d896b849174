package guestagent_test

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"
	"github.com/twinsnap/twinsnap/guestagent"
	"github.com/twinsnap/twinsnap/internal/testenv"
)

// fakeConn is a guestagent.LibvirtConn configured through function
// fields; it records every call. A nil field answers as a healthy agent
// with nothing frozen would.
type fakeConn struct {
	agent  func(cmd string, timeout int32) (libvirt.OptString, error)
	freeze func(mountpoints []string) (int32, error)
	thaw   func() (int32, error)

	mu       sync.Mutex
	calls    []string
	timeouts []int32
	frozen   [][]string
}

var _ guestagent.LibvirtConn = (*fakeConn)(nil)

func (f *fakeConn) record(call string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call)
}

// QEMUDomainAgentCommand implements guestagent.LibvirtConn.
func (f *fakeConn) QEMUDomainAgentCommand(_ libvirt.Domain, cmd string, timeout int32, flags uint32) (libvirt.OptString, error) {
	f.record("agent " + cmd)
	f.mu.Lock()
	f.timeouts = append(f.timeouts, timeout)
	f.mu.Unlock()
	if flags != 0 {
		return nil, libvirt.Error{Code: uint32(libvirt.ErrInvalidArg), Message: "flags"}
	}
	if f.agent == nil {
		return libvirt.OptString{`{"return":{}}`}, nil
	}
	return f.agent(cmd, timeout)
}

// DomainFsfreeze implements guestagent.LibvirtConn.
func (f *fakeConn) DomainFsfreeze(_ libvirt.Domain, mountpoints []string, flags uint32) (int32, error) {
	f.record("freeze")
	f.mu.Lock()
	f.frozen = append(f.frozen, mountpoints)
	f.mu.Unlock()
	if flags != 0 {
		return 0, libvirt.Error{Code: uint32(libvirt.ErrInvalidArg), Message: "flags"}
	}
	if f.freeze == nil {
		if mountpoints == nil {
			return 3, nil // every file system of the fake guest
		}
		return int32(len(mountpoints)), nil
	}
	return f.freeze(mountpoints)
}

// DomainFsthaw implements guestagent.LibvirtConn.
func (f *fakeConn) DomainFsthaw(_ libvirt.Domain, mountpoints []string, flags uint32) (int32, error) {
	f.record("thaw")
	if flags != 0 || mountpoints != nil {
		return 0, libvirt.Error{Code: uint32(libvirt.ErrInvalidArg), Message: "flags or mount points"}
	}
	if f.thaw == nil {
		return 0, nil
	}
	return f.thaw()
}

// Calls returns the calls so far.
func (f *fakeConn) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// Timeouts returns the timeouts passed to QEMUDomainAgentCommand.
func (f *fakeConn) Timeouts() []int32 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.timeouts)
}

// newFake returns a Libvirt transport over f and a client using it.
func newFake(t *testing.T, f *fakeConn) (*guestagent.Libvirt, *guestagent.Client) {
	t.Helper()
	tr := guestagent.NewLibvirt(f, libvirt.Domain{Name: "fake"})
	c := guestagent.NewClient(tr)
	t.Cleanup(func() { _ = c.Close() })
	return tr, c
}

// TestLibvirtTimeout shows the timeout given to libvirt for an agent
// command: the whole seconds left before the context's deadline, never
// less than 1 (libvirt reads -2, -1 and 0 as block, default and no wait),
// DefaultTimeout without a deadline, and no call for an ended context.
func TestLibvirtTimeout(t *testing.T) {
	far := time.Now().Add(200 * 365 * 24 * time.Hour)
	for _, tc := range []struct {
		name    string
		timeout time.Duration // 0: no deadline
		at      time.Time     // a deadline instead of a timeout
		lo, hi  int32         // the timeout libvirt gets, within [lo, hi]
	}{
		{name: "no deadline", lo: 29, hi: 30},
		{name: "10.5s", timeout: 10500 * time.Millisecond, lo: 10, hi: 10},
		{name: "1.9s", timeout: 1900 * time.Millisecond, lo: 1, hi: 1},
		{name: "300ms", timeout: 300 * time.Millisecond, lo: 1, hi: 1},
		{name: "1ms", timeout: time.Millisecond, lo: 1, hi: 1},
		{name: "100h", timeout: 100 * time.Hour, lo: 100*3600 - 1, hi: 100 * 3600},
		{name: "200 years", at: far, lo: math.MaxInt32, hi: math.MaxInt32},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeConn{}
			tr, _ := newFake(t, f)
			ctx := context.Background()
			var cancel context.CancelFunc = func() {}
			switch {
			case tc.timeout > 0:
				ctx, cancel = context.WithTimeout(ctx, tc.timeout)
			case !tc.at.IsZero():
				ctx, cancel = context.WithDeadline(ctx, tc.at)
			}
			defer cancel()
			if _, err := tr.Execute(ctx, "guest-ping", nil); err != nil {
				t.Fatalf("guest-ping: %v", err)
			}
			got := f.Timeouts()
			if len(got) != 1 || got[0] < tc.lo || got[0] > tc.hi {
				t.Fatalf("timeouts = %v; want one in [%d, %d]", got, tc.lo, tc.hi)
			}
			if calls := f.Calls(); !slices.Equal(calls, []string{`agent {"execute":"guest-ping"}`}) {
				t.Fatalf("calls = %q", calls)
			}
		})
	}

	f := &fakeConn{}
	tr, _ := newFake(t, f)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := tr.Execute(ctx, "guest-ping", nil)
	if !errors.Is(err, guestagent.ErrTimeout) || !errors.Is(err, context.Canceled) {
		t.Fatalf("ended context: %v; want ErrTimeout wrapping context.Canceled", err)
	}
	if _, err := tr.Thaw(ctx); !errors.Is(err, guestagent.ErrTimeout) {
		t.Fatalf("thaw with ended context: %v; want ErrTimeout", err)
	}
	if calls := f.Calls(); len(calls) != 0 {
		t.Fatalf("an ended context reached libvirt: %q", calls)
	}
}

// TestLibvirtErrors maps go-libvirt's errors, from the agent command and
// from the freeze API, to the package's errors. The messages are libvirt
// 9.0's, as TestLibvirtDomain sees them.
func TestLibvirtErrors(t *testing.T) {
	agentErr := func(code libvirt.ErrorNumber, msg string) error {
		return libvirt.Error{Code: uint32(code), Message: msg}
	}
	const cmd = "guest-ping"
	for _, tc := range []struct {
		name     string
		err      error
		sentinel error  // wrapped sentinel; nil for an *Error
		class    string // for an *Error
		desc     string
	}{
		{name: "not found", err: agentErr(libvirt.ErrInternalError, "internal error: unable to execute QEMU agent command 'guest-ping': The command guest-ping has not been found"),
			class: guestagent.ClassCommandNotFound, desc: "The command guest-ping has not been found"},
		{name: "disabled", err: agentErr(libvirt.ErrInternalError, "internal error: unable to execute QEMU agent command 'guest-ping': Command guest-ping has been disabled: the agent is in frozen state"),
			class: guestagent.ClassCommandNotFound, desc: "Command guest-ping has been disabled: the agent is in frozen state"},
		{name: "generic", err: agentErr(libvirt.ErrInternalError, "internal error: unable to execute QEMU agent command 'guest-ping': Parameter 'x' is unexpected"),
			class: guestagent.ClassGenericError, desc: "Parameter 'x' is unexpected"},
		{name: "quoted desc", err: agentErr(libvirt.ErrInternalError, "internal error: unable to execute QEMU agent command 'guest-ping': Guest agent command failed, error was 'Failed to execute child process “/x” (No such file or directory)'"),
			class: guestagent.ClassGenericError, desc: "Guest agent command failed, error was 'Failed to execute child process “/x” (No such file or directory)'"},
		{name: "other command's not found is generic", err: agentErr(libvirt.ErrInternalError, "internal error: unable to execute QEMU agent command 'guest-ping': The command guest-other has not been found"),
			class: guestagent.ClassGenericError, desc: "The command guest-other has not been found"},
		{name: "no desc", err: agentErr(libvirt.ErrInternalError, "internal error: unable to execute QEMU agent command 'guest-ping'"),
			class: guestagent.ClassGenericError, desc: ""},
		{name: "class only, not found", err: agentErr(libvirt.ErrInternalError, "internal error: unable to execute QEMU agent command 'guest-ping': The command has not been found"),
			class: guestagent.ClassCommandNotFound, desc: "The command has not been found"},
		{name: "class only, disabled", err: agentErr(libvirt.ErrInternalError, "internal error: unable to execute QEMU agent command 'guest-ping': The command has been disabled for this instance"),
			class: guestagent.ClassCommandNotFound, desc: "The command has been disabled for this instance"},
		{name: "command failed", err: agentErr(libvirt.ErrAgentCommandFailed, "guest agent command failed: unable to execute QEMU agent command 'guest-ping': The command guest-ping has not been found"),
			class: guestagent.ClassCommandNotFound, desc: "The command guest-ping has not been found"},
		{name: "command failed, other text", err: agentErr(libvirt.ErrAgentCommandFailed, "guest agent command failed: oops"),
			class: guestagent.ClassGenericError, desc: "guest agent command failed: oops"},
		{name: "libvirt internal", err: agentErr(libvirt.ErrInternalError, "internal error: cannot parse json"), sentinel: guestagent.ErrLibvirt},
		{name: "unresponsive", err: agentErr(libvirt.ErrAgentUnresponsive, "Guest agent is not responding: Guest agent not available for now"), sentinel: guestagent.ErrTimeout},
		{name: "not connected", err: agentErr(libvirt.ErrAgentUnresponsive, "Guest agent is not responding: QEMU guest agent is not connected"), sentinel: guestagent.ErrTimeout},
		{name: "command timeout", err: agentErr(libvirt.ErrAgentCommandTimeout, "guest agent command timed out"), sentinel: guestagent.ErrTimeout},
		{name: "job lock", err: agentErr(libvirt.ErrOperationTimeout, "Timeout while waiting for agent job: cannot acquire state change lock"), sentinel: guestagent.ErrTimeout},
		{name: "not running", err: agentErr(libvirt.ErrOperationInvalid, "Requested operation is not valid: domain is not running"), sentinel: guestagent.ErrClosed},
		{name: "no domain", err: agentErr(libvirt.ErrNoDomain, "Domain not found"), sentinel: guestagent.ErrClosed},
		{name: "no channel", err: agentErr(libvirt.ErrArgumentUnsupported, "argument unsupported: QEMU guest agent is not configured"), sentinel: guestagent.ErrClosed},
		{name: "unsynced", err: agentErr(libvirt.ErrAgentUnsynced, "guest agent returned ID: 1 instead of 2"), sentinel: guestagent.ErrProtocol},
		{name: "invalid arg", err: agentErr(libvirt.ErrInvalidArg, "invalid argument"), sentinel: guestagent.ErrLibvirt},
		{name: "interrupted", err: libvirt.ErrInterrupted, sentinel: guestagent.ErrClosed},
		{name: "disconnected", err: syscall.EINVAL, sentinel: guestagent.ErrClosed},
		{name: "unknown procedure", err: libvirt.ErrUnsupported, sentinel: guestagent.ErrLibvirt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeConn{
				agent: func(string, int32) (libvirt.OptString, error) { return nil, tc.err },
				thaw:  func() (int32, error) { return 0, tc.err },
			}
			tr, _ := newFake(t, f)
			check := func(what string, err error) {
				t.Helper()
				if tc.sentinel != nil {
					if !errors.Is(err, tc.sentinel) || !errors.Is(err, tc.err) {
						t.Fatalf("%s: %v; want %v wrapping %v", what, err, tc.sentinel, tc.err)
					}
					if guestagent.IsClass(err, guestagent.ClassGenericError) || guestagent.IsClass(err, guestagent.ClassCommandNotFound) {
						t.Fatalf("%s: %v is an agent error", what, err)
					}
					return
				}
				var e *guestagent.Error
				if !errors.As(err, &e) || e.Class != tc.class || e.Desc != tc.desc {
					t.Fatalf("%s: %#v; want class %s desc %q", what, err, tc.class, tc.desc)
				}
				if errors.Is(err, guestagent.ErrTimeout) || errors.Is(err, guestagent.ErrClosed) || errors.Is(err, guestagent.ErrProtocol) {
					t.Fatalf("%s: agent error %v wraps a sentinel", what, err)
				}
			}
			_, err := tr.Execute(fresh(t), cmd, nil)
			check("agent command", err)
			if tc.sentinel != nil {
				_, err = tr.Thaw(fresh(t))
				check("thaw", err)
			}
		})
	}
}

// TestLibvirtReplies parses what libvirt returns for an agent command as
// strictly as Stream parses the agent's replies.
func TestLibvirtReplies(t *testing.T) {
	for _, tc := range []struct {
		name  string
		reply libvirt.OptString
		class string // an *Error of this class; "" for ErrProtocol
	}{
		{name: "trailing bytes", reply: libvirt.OptString{`{"return":{}} x`}},
		{name: "two objects", reply: libvirt.OptString{`{"return":{}}{"return":{}}`}},
		{name: "member twice", reply: libvirt.OptString{`{"return":{},"return":{}}`}},
		{name: "wrong case", reply: libvirt.OptString{`{"Return":{}}`}},
		{name: "neither", reply: libvirt.OptString{`{"id":1}`}},
		{name: "not an object", reply: libvirt.OptString{`[]`}},
		{name: "no reply", reply: libvirt.OptString{}},
		{name: "two replies", reply: libvirt.OptString{`{"return":{}}`, `{"return":{}}`}},
		{name: "too large", reply: libvirt.OptString{`{"return":"` + strings.Repeat("x", guestagent.MaxReplySize) + `"}`}},
		{name: "error reply", reply: libvirt.OptString{`{"error":{"class":"DeviceNotFound","desc":"no such device"}}`}, class: guestagent.ClassDeviceNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeConn{agent: func(string, int32) (libvirt.OptString, error) { return tc.reply, nil }}
			_, c := newFake(t, f)
			err := c.Ping(fresh(t))
			if tc.class != "" {
				if !guestagent.IsClass(err, tc.class) {
					t.Fatalf("ping = %v; want class %s", err, tc.class)
				}
				return
			}
			if !errors.Is(err, guestagent.ErrProtocol) {
				t.Fatalf("ping = %v; want ErrProtocol", err)
			}
		})
	}

	// A good reply, and the request libvirt gets for a command with
	// arguments.
	f := &fakeConn{agent: func(cmd string, _ int32) (libvirt.OptString, error) {
		return libvirt.OptString{"\n{\"return\": {\"pid\": 42}}\n"}, nil
	}}
	_, c := newFake(t, f)
	pid, err := c.Exec(fresh(t), "/bin/echo", []string{"a b"}, []byte("in"), true)
	if err != nil || pid != 42 {
		t.Fatalf("exec = %d, %v; want 42", pid, err)
	}
	calls := f.Calls()
	if len(calls) != 1 {
		t.Fatalf("calls = %q", calls)
	}
	var req struct {
		Execute   string         `json:"execute"`
		Arguments map[string]any `json:"arguments"`
		ID        *string        `json:"id"`
	}
	if err := json.Unmarshal([]byte(strings.TrimPrefix(calls[0], "agent ")), &req); err != nil {
		t.Fatalf("request %q: %v", calls[0], err)
	}
	if req.Execute != "guest-exec" || req.Arguments["path"] != "/bin/echo" || req.Arguments["input-data"] != "aW4=" ||
		req.Arguments["capture-output"] != true || req.ID != nil {
		t.Fatalf("request = %q", calls[0])
	}
}

// TestLibvirtFreezeRouting shows that freeze and thaw, from a Client or
// given to Execute, go through libvirt's freeze API and come back as the
// agent's return values, that guest-fsfreeze-status goes through the agent
// command, and that requests the agent would refuse, or that libvirt would
// widen to every file system, never reach libvirt.
func TestLibvirtFreezeRouting(t *testing.T) {
	f := &fakeConn{
		agent: func(string, int32) (libvirt.OptString, error) { return libvirt.OptString{`{"return":"frozen"}`}, nil },
		thaw:  func() (int32, error) { return 2, nil },
	}
	tr, c := newFake(t, f)
	ctx := fresh(t)

	if n, err := c.FreezeList(ctx, []string{"/mnt/a", "/mnt/b"}); err != nil || n != 2 {
		t.Fatalf("freeze-list = %d, %v; want 2", n, err)
	}
	if st, err := c.FreezeStatus(ctx); err != nil || st != guestagent.Frozen {
		t.Fatalf("status = %q, %v; want frozen", st, err)
	}
	if n, err := c.Thaw(ctx); err != nil || n != 2 {
		t.Fatalf("thaw = %d, %v; want 2", n, err)
	}
	if n, err := c.FreezeAll(ctx); err != nil || n != 3 {
		t.Fatalf("freeze all = %d, %v; want 3", n, err)
	}
	if n, err := tr.FreezeList(ctx, []string{"/mnt/c"}); err != nil || n != 1 {
		t.Fatalf("direct freeze-list = %d, %v", n, err)
	}
	if n, err := tr.Thaw(ctx); err != nil || n != 2 {
		t.Fatalf("direct thaw = %d, %v", n, err)
	}
	raw, err := tr.Execute(ctx, "guest-fsfreeze-freeze-list", nil)
	if err != nil || string(raw) != "3" {
		t.Fatalf("freeze-list without a list = %s, %v; want 3 (the agent freezes all)", raw, err)
	}
	want := []string{"freeze", `agent {"execute":"guest-fsfreeze-status"}`, "thaw", "freeze", "freeze", "thaw", "freeze"}
	if calls := f.Calls(); !slices.Equal(calls, want) {
		t.Fatalf("calls = %q; want %q", calls, want)
	}
	f.mu.Lock()
	frozen := f.frozen
	f.mu.Unlock()
	if len(frozen) != 4 || !slices.Equal(frozen[0], []string{"/mnt/a", "/mnt/b"}) || frozen[1] != nil ||
		!slices.Equal(frozen[2], []string{"/mnt/c"}) || frozen[3] != nil {
		t.Fatalf("freeze mount points = %q", frozen)
	}

	// Refused before libvirt.
	before := len(f.Calls())
	if _, err := tr.FreezeList(ctx, nil); !errors.Is(err, guestagent.ErrProtocol) {
		t.Fatalf("direct freeze-list of nothing = %v; want ErrProtocol", err)
	}
	if _, err := tr.Execute(ctx, "guest-fsfreeze-freeze-list", map[string]any{"mountpoints": []string{}}); !errors.Is(err, guestagent.ErrProtocol) {
		t.Fatalf("freeze-list of an empty list = %v; want ErrProtocol", err)
	}
	for _, bad := range []struct {
		command string
		args    any
	}{
		{"guest-fsfreeze-freeze-list", map[string]any{"mountpoints": "/mnt/a"}},
		{"guest-fsfreeze-freeze-list", map[string]any{"mountpoints": nil}},
		{"guest-fsfreeze-freeze-list", map[string]any{"mountpoints": []string{"/"}, "x": 1}},
		{"guest-fsfreeze-freeze", map[string]any{"mountpoints": []string{"/"}}},
		{"guest-fsfreeze-thaw", map[string]any{"x": 1}},
		{"guest-fsfreeze-thaw", []int{1}},
	} {
		_, err := tr.Execute(ctx, bad.command, bad.args)
		if !guestagent.IsClass(err, guestagent.ClassGenericError) {
			t.Fatalf("%s %v = %v; want GenericError", bad.command, bad.args, err)
		}
	}
	if after := len(f.Calls()); after != before {
		t.Fatalf("refused requests reached libvirt: %q", f.Calls()[before:])
	}
}

// TestLibvirtBounded shows that a call returns when its context ends or
// the transport is closed, although go-libvirt's call has not returned,
// and that Abandoned counts such calls until libvirt answers.
func TestLibvirtBounded(t *testing.T) {
	release := make(chan struct{})
	f := &fakeConn{
		agent: func(string, int32) (libvirt.OptString, error) {
			<-release
			return libvirt.OptString{`{"return":{}}`}, nil
		},
		freeze: func([]string) (int32, error) {
			<-release
			return 1, nil
		},
	}
	tr, c := newFake(t, f)

	err := bounded(t, c.Ping)
	if !errors.Is(err, guestagent.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ping = %v; want ErrTimeout wrapping the context's deadline", err)
	}
	_, err = bounded2(t, func(ctx context.Context) (int, error) { return c.FreezeList(ctx, []string{"/mnt/a"}) })
	if !errors.Is(err, guestagent.ErrTimeout) {
		t.Fatalf("freeze-list = %v; want ErrTimeout", err)
	}
	if n := tr.Abandoned(); n != 2 {
		t.Fatalf("abandoned = %d; want 2", n)
	}

	// Close ends a call in progress at once.
	errc := make(chan error, 1)
	go func() { errc <- c.Ping(fresh(t)) }()
	for wait := time.Now().Add(limit); len(f.Calls()) < 3; time.Sleep(time.Millisecond) {
		if time.Now().After(wait) {
			t.Fatalf("the ping never reached libvirt: %q", f.Calls())
		}
	}
	begin := time.Now()
	if err := c.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, guestagent.ErrClosed) {
			t.Fatalf("ping during close = %v; want ErrClosed", err)
		}
	case <-time.After(limit):
		t.Fatalf("ping still pending %v after close", time.Since(begin))
	}
	if err := c.Ping(fresh(t)); !errors.Is(err, guestagent.ErrClosed) {
		t.Fatalf("ping after close = %v; want ErrClosed", err)
	}
	if _, err := tr.Thaw(fresh(t)); !errors.Is(err, guestagent.ErrClosed) {
		t.Fatalf("thaw after close = %v; want ErrClosed", err)
	}
	if calls := f.Calls(); len(calls) != 3 {
		t.Fatalf("calls after close reached libvirt: %q", calls)
	}
	if n := tr.Abandoned(); n != 3 {
		t.Fatalf("abandoned = %d; want 3", n)
	}

	// libvirt answers at last: nothing is pending any more.
	close(release)
	deadline := time.Now().Add(limit)
	for tr.Abandoned() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("abandoned = %d after libvirt answered", tr.Abandoned())
		}
		time.Sleep(time.Millisecond)
	}
}

// TestLibvirtFreezeOrder shows that freeze, thaw and freeze status reach
// libvirt in the order they were called, even after their callers gave up:
// a thaw waits until the freeze before it has returned from libvirt, and a
// freeze given up on before its turn is never issued.
func TestLibvirtFreezeOrder(t *testing.T) {
	release := make(chan struct{})
	f := &fakeConn{
		freeze: func(mountpoints []string) (int32, error) {
			<-release
			return int32(len(mountpoints)), nil
		},
		agent: func(string, int32) (libvirt.OptString, error) { return libvirt.OptString{`{"return":"thawed"}`}, nil },
		thaw:  func() (int32, error) { return 1, nil },
	}
	tr, c := newFake(t, f)

	// The first freeze reaches libvirt, which does not answer; the second
	// waits for its turn; both callers give up.
	if _, err := bounded2(t, func(ctx context.Context) (int, error) { return c.FreezeList(ctx, []string{"/mnt/a"}) }); !errors.Is(err, guestagent.ErrTimeout) {
		t.Fatalf("first freeze = %v; want ErrTimeout", err)
	}
	if _, err := bounded2(t, func(ctx context.Context) (int, error) { return c.FreezeList(ctx, []string{"/mnt/b"}) }); !errors.Is(err, guestagent.ErrTimeout) {
		t.Fatalf("second freeze = %v; want ErrTimeout", err)
	}
	// Other commands are not held up.
	if err := c.Ping(fresh(t)); err != nil {
		t.Fatalf("ping: %v", err)
	}
	type result struct {
		n   int
		err error
	}
	thawed := make(chan result, 1)
	go func() {
		n, err := c.Thaw(fresh(t))
		thawed <- result{n, err}
	}()
	status := make(chan error, 1)
	go func() {
		_, err := c.FreezeStatus(fresh(t))
		status <- err
	}()
	time.Sleep(200 * time.Millisecond)
	if calls := f.Calls(); !slices.Equal(calls, []string{"freeze", `agent {"execute":"guest-ping"}`}) {
		t.Fatalf("calls while the first freeze is pending = %q; want the freeze and the ping", calls)
	}
	close(release)
	select {
	case r := <-thawed:
		if r.err != nil || r.n != 1 {
			t.Fatalf("thaw = %d, %v; want 1", r.n, r.err)
		}
	case <-time.After(limit):
		t.Fatalf("thaw still pending after the freeze returned")
	}
	if err := <-status; err != nil {
		t.Fatalf("status: %v", err)
	}
	// The thaw and the status call were held back until the freeze
	// returned (their order among themselves is their callers').
	calls := f.Calls()
	if len(calls) != 4 || !slices.Equal(calls[:2], []string{"freeze", `agent {"execute":"guest-ping"}`}) ||
		!slices.Contains(calls[2:], "thaw") || !slices.Contains(calls[2:], `agent {"execute":"guest-fsfreeze-status"}`) {
		t.Fatalf("calls = %q; want the freeze, the ping, then the thaw and the status", calls)
	}
	f.mu.Lock()
	frozen := f.frozen
	f.mu.Unlock()
	if len(frozen) != 1 || !slices.Equal(frozen[0], []string{"/mnt/a"}) {
		t.Fatalf("freezes issued = %q; want only the first", frozen)
	}
	deadline := time.Now().Add(limit)
	for tr.Abandoned() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("abandoned = %d after libvirt answered", tr.Abandoned())
		}
		time.Sleep(time.Millisecond)
	}
}

// TestLibvirtDomain runs the client over the Libvirt transport against the
// real qemu-ga of a libvirt-managed guest with two data volumes.
func TestLibvirtDomain(t *testing.T) {
	lv := testenv.StartLibvirtd(t)
	d := testenv.StartDomain(t, lv, testenv.VMOptions{DataDisks: []testenv.DiskSpec{
		{Serial: "data1", SizeMiB: 32},
		{Serial: "data2", SizeMiB: 32},
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	conn, err := lv.Connect(ctx)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { _ = conn.Disconnect() })
	tr := guestagent.NewLibvirt(conn, d.Dom)
	c := guestagent.NewClient(tr)
	t.Cleanup(func() { _ = c.Close() })
	// call bounds a call that should succeed.
	call := func() context.Context {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		t.Cleanup(cancel)
		return ctx
	}
	step := time.Now()
	took := func(what string) {
		t.Logf("%s: %v", what, time.Since(step).Round(100*time.Microsecond))
		step = time.Now()
	}

	t.Run("ping and info", func(t *testing.T) {
		step = time.Now()
		if err := c.Ping(call()); err != nil {
			t.Fatalf("ping: %v", err)
		}
		took("ping")
		info, err := c.Info(call())
		if err != nil {
			t.Fatalf("info: %v", err)
		}
		took("info")
		if info.Version == "" || !info.Supports("guest-fsfreeze-freeze-list") || !info.Supports("guest-exec") {
			t.Fatalf("info = %+v", info)
		}
	})

	t.Run("fsinfo", func(t *testing.T) {
		step = time.Now()
		fs, err := c.FSInfo(call())
		if err != nil {
			t.Fatalf("fsinfo: %v", err)
		}
		took("fsinfo")
		// The guest has no udev, so qemu-ga reports no serials: map each
		// data volume's serial to its PCI slot through the live domain
		// XML, as twinsnap maps volumes, and find it at /mnt/<serial>.
		live, err := conn.DomainGetXMLDesc(d.Dom, 0)
		if err != nil {
			t.Fatalf("live XML: %v", err)
		}
		var x struct {
			Disks []struct {
				Serial  string `xml:"serial"`
				Address struct {
					Slot string `xml:"slot,attr"`
				} `xml:"address"`
			} `xml:"devices>disk"`
		}
		if err := xml.Unmarshal([]byte(live), &x); err != nil {
			t.Fatalf("live XML: %v", err)
		}
		slots := map[string]int{}
		for _, disk := range x.Disks {
			slot, err := strconv.ParseInt(disk.Address.Slot, 0, 32)
			if err != nil {
				t.Fatalf("disk %s: slot %q: %v", disk.Serial, disk.Address.Slot, err)
			}
			slots[disk.Serial] = int(slot)
		}
		mounted := map[string]int{}
		for _, f := range fs {
			if len(f.Disks) == 1 && f.Type == "ext4" && f.Disks[0].BusType == "virtio" {
				mounted[f.Mountpoint] = f.Disks[0].PCIController.Slot
			}
		}
		for _, serial := range []string{"data1", "data2"} {
			got, ok := mounted["/mnt/"+serial]
			if want, known := slots[serial]; !ok || !known || got != want {
				t.Fatalf("/mnt/%s on PCI slot %d (%v); libvirt put disk %s on slot %d (%v); fsinfo %+v", serial, got, ok, serial, want, known, fs)
			}
		}
		if slots["data1"] == slots["data2"] {
			t.Fatalf("both data volumes on PCI slot %d", slots["data1"])
		}
		t.Logf("data volumes: %v mounted as %v", slots, mounted)
	})

	t.Run("freeze and thaw", func(t *testing.T) {
		step = time.Now()
		n, err := c.FreezeList(call(), []string{"/mnt/data1"})
		if err != nil || n != 1 {
			t.Fatalf("freeze-list = %d, %v; want 1", n, err)
		}
		took("freeze-list (virDomainFSFreeze)")
		thawed := false
		defer func() {
			if !thawed {
				_, _ = c.Thaw(call())
			}
		}()
		if st, err := c.FreezeStatus(call()); err != nil || st != guestagent.Frozen {
			t.Fatalf("status = %q, %v; want frozen", st, err)
		}
		took("status")
		// The agent's error class survives libvirt.
		_, err = c.Exec(call(), "/bin/true", nil, nil, false)
		if !guestagent.IsClass(err, guestagent.ClassCommandNotFound) || !strings.Contains(err.Error(), "frozen") {
			t.Fatalf("exec while frozen = %v; want CommandNotFound (disabled while frozen)", err)
		}
		_, err = c.FreezeList(call(), []string{"/mnt/data2"})
		if !guestagent.IsClass(err, guestagent.ClassCommandNotFound) {
			t.Fatalf("second freeze = %v; want CommandNotFound (disabled while frozen)", err)
		}
		step = time.Now()
		n, err = c.Thaw(call())
		if err != nil || n != 1 {
			t.Fatalf("thaw = %d, %v; want 1", n, err)
		}
		thawed = true
		took("thaw (virDomainFSThaw)")
		if st, err := c.FreezeStatus(call()); err != nil || st != guestagent.Thawed {
			t.Fatalf("status = %q, %v; want thawed", st, err)
		}
		if n, err := c.Thaw(call()); err != nil || n != 0 {
			t.Fatalf("second thaw = %d, %v; want 0", n, err)
		}
	})

	t.Run("exec", func(t *testing.T) {
		step = time.Now()
		st, err := c.Run(call(), "/bin/sh", "-c", "echo out; echo err >&2; exit 3")
		if err != nil {
			t.Fatalf("run: %v", err)
		}
		took("exec until exited")
		if !st.Exited || st.ExitCode != 3 || string(st.OutData) != "out\n" || string(st.ErrData) != "err\n" {
			t.Fatalf("run = %+v", st)
		}
	})

	t.Run("agent errors", func(t *testing.T) {
		_, err := tr.Execute(call(), "guest-nosuch", nil)
		var e *guestagent.Error
		if !errors.As(err, &e) || e.Class != guestagent.ClassCommandNotFound || e.Command != "guest-nosuch" ||
			e.Desc != "The command guest-nosuch has not been found" {
			t.Fatalf("guest-nosuch = %#v; want CommandNotFound", err)
		}
		_, err = c.Exec(call(), "/nonexistent", nil, nil, false)
		if !guestagent.IsClass(err, guestagent.ClassGenericError) || !strings.Contains(err.Error(), "/nonexistent") {
			t.Fatalf("exec of a missing program = %v; want GenericError", err)
		}
		_, err = tr.Execute(call(), "guest-fsfreeze-status", map[string]int{"x": 1})
		if !guestagent.IsClass(err, guestagent.ClassGenericError) {
			t.Fatalf("status with an unknown parameter = %v; want GenericError", err)
		}
	})

	t.Run("bounded", func(t *testing.T) {
		// The guest's qemu-ga stops itself a second after guest-exec
		// answers, and a child continues it six seconds later.
		const script = "sleep 1; kill -STOP $PPID; sleep 6; kill -CONT $PPID"
		if _, err := c.Exec(call(), "/bin/sh", []string{"-c", script}, nil, false); err != nil {
			t.Fatalf("exec: %v", err)
		}
		stopped := time.Now()
		// Libvirt gets a timeout of one second, the minimum, which is
		// longer than the context: the call returns when the context
		// ends, before libvirt answers.
		for {
			begin := time.Now()
			err := bounded(t, c.Ping)
			if err == nil {
				if time.Since(stopped) > 10*time.Second {
					t.Fatalf("the agent never stopped")
				}
				time.Sleep(100 * time.Millisecond)
				continue
			}
			if !errors.Is(err, guestagent.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("ping to a stopped agent = %v; want ErrTimeout at the context's deadline", err)
			}
			t.Logf("ping to the stopped agent, bounded by %v: %v after %v", bound, err, time.Since(begin).Round(time.Millisecond))
			break
		}
		if n := tr.Abandoned(); n != 1 {
			t.Fatalf("abandoned = %d after the bounded ping; want 1", n)
		}
		// virDomainFSFreeze has no timeout in libvirt: only the context
		// bounds it. A freeze given up on may still happen later.
		begin := time.Now()
		_, err := bounded2(t, func(ctx context.Context) (int, error) { return c.FreezeList(ctx, []string{"/mnt/data1"}) })
		if !errors.Is(err, guestagent.ErrTimeout) {
			t.Fatalf("freeze with a stopped agent = %v; want ErrTimeout", err)
		}
		t.Logf("freeze with the stopped agent, bounded by %v: %v after %v", bound, err, time.Since(begin).Round(time.Millisecond))
		if n := tr.Abandoned(); n < 1 {
			t.Fatalf("abandoned = %d after the bounded freeze; want at least 1", n)
		}

		// The thaw on a fresh context, as the capture step does it, is
		// issued only once the freeze has returned from libvirt (after the
		// agent runs again), and leaves the guest thawed. (Issued at once,
		// libvirt 9.0 ran it before the late freeze.)
		begin = time.Now()
		tctx, tcancel := context.WithTimeout(ctx, time.Minute)
		defer tcancel()
		n, err := c.Thaw(tctx)
		if err != nil || n != 1 {
			t.Fatalf("thaw after the abandoned freeze = %d, %v; want 1 (what the late freeze froze)", n, err)
		}
		t.Logf("thaw after the abandoned freeze: %d thawed after %v, %v after the agent stopped", n, time.Since(begin).Round(time.Millisecond), time.Since(stopped).Round(time.Millisecond))
		if st, err := c.FreezeStatus(call()); err != nil || st != guestagent.Thawed {
			t.Fatalf("status = %q, %v; want thawed", st, err)
		}
		deadline := time.Now().Add(time.Minute)
		for tr.Abandoned() != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%d calls still abandoned", tr.Abandoned())
			}
			time.Sleep(100 * time.Millisecond)
		}
	})

	t.Run("closed", func(t *testing.T) {
		if err := d.Destroy(ctx); err != nil {
			t.Fatalf("destroy: %v", err)
		}
		if err := c.Ping(call()); !errors.Is(err, guestagent.ErrClosed) {
			t.Fatalf("ping after destroy = %v; want ErrClosed", err)
		}
		if _, err := c.Thaw(call()); !errors.Is(err, guestagent.ErrClosed) {
			t.Fatalf("thaw after destroy = %v; want ErrClosed", err)
		}
		if err := conn.Disconnect(); err != nil {
			t.Fatalf("disconnect: %v", err)
		}
		if err := c.Ping(call()); !errors.Is(err, guestagent.ErrClosed) {
			t.Fatalf("ping after disconnect = %v; want ErrClosed", err)
		}
	})
}
