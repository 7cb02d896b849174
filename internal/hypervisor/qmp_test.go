package hypervisor_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/internal/hypervisor"
	"github.com/twinsnap/twinsnap/internal/hypervisor/qmptest"
)

// TestExecuteMatchesRepliesByID runs many commands at once against a
// server that answers them in random order: each call gets its own reply.
func TestExecuteMatchesRepliesByID(t *testing.T) {
	defer leakCheck(t)()
	s := &qmptest.Server{Commands: map[string]qmptest.Handler{
		"echo": func(c *qmptest.Call) qmptest.Reply {
			var args struct{ N int }
			if err := c.Decode(&args); err != nil {
				return qmptest.Reply{Error: &qmptest.Error{Class: "GenericError", Desc: err.Error()}}
			}
			return qmptest.Reply{Return: map[string]int{"n": args.N}, Delay: time.Duration(rand.IntN(20)) * time.Millisecond}
		},
	}}
	defer s.Close()
	c := connect(t, s)
	defer closeQuietly(c)
	if v := c.Greeting().Version; v.String() != "7.2.0" {
		t.Fatalf("greeting version = %s, want 7.2.0", v)
	}

	ctx := within(t, 10*time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 100 {
		wg.Go(func() {
			var out struct{ N int }
			if err := c.Execute(ctx, "echo", map[string]int{"N": i}, &out); err != nil {
				errs <- fmt.Errorf("call %d: %w", i, err)
				return
			}
			if out.N != i {
				errs <- fmt.Errorf("call %d got the reply of call %d", i, out.N)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("%v", err)
	}
	if st := c.Stats(); st.Discarded != 0 {
		t.Fatalf("discarded %d replies, want 0", st.Discarded)
	}
}

// TestHungCommandBoundedByContext: a command QEMU answers late ends with
// ErrTimeout when its context does; the late reply is discarded and does
// not answer the next command.
func TestHungCommandBoundedByContext(t *testing.T) {
	defer leakCheck(t)()
	s := &qmptest.Server{Commands: map[string]qmptest.Handler{
		"slow": func(*qmptest.Call) qmptest.Reply {
			return qmptest.Reply{Return: "late", Delay: 300 * time.Millisecond}
		},
		"hang": func(*qmptest.Call) qmptest.Reply { return qmptest.Reply{Hang: true} },
		"fast": func(*qmptest.Call) qmptest.Reply { return qmptest.Reply{Return: "fast"} },
	}}
	defer s.Close()
	c := connect(t, s)
	defer closeQuietly(c)

	for _, cmd := range []string{"slow", "hang"} {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		start := time.Now()
		var out string
		err := c.Execute(ctx, cmd, nil, &out)
		cancel()
		if !errors.Is(err, hypervisor.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%s: err = %v, want ErrTimeout wrapping DeadlineExceeded", cmd, err)
		}
		if d := time.Since(start); d > 250*time.Millisecond {
			t.Fatalf("%s: returned after %v, want about 50 ms", cmd, d)
		}
	}
	// The slow command's reply arrives while (or before) fast runs.
	time.Sleep(300 * time.Millisecond)
	var out string
	if err := c.Execute(within(t, 5*time.Second), "fast", nil, &out); err != nil || out != "fast" {
		t.Fatalf("fast after a timed-out command = %q, %v; want fast", out, err)
	}
	if !waitFor(2*time.Second, func() bool { return c.Stats().Discarded == 1 }) {
		t.Fatalf("discarded = %d, want 1 (the late reply of slow)", c.Stats().Discarded)
	}
	// A context that has already ended sends nothing.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	calls := len(s.Calls())
	if err := c.Execute(ctx, "fast", nil, nil); !errors.Is(err, hypervisor.ErrTimeout) || !errors.Is(err, context.Canceled) {
		t.Fatalf("Execute with an ended context = %v, want ErrTimeout wrapping Canceled", err)
	}
	if n := len(s.Calls()); n != calls {
		t.Fatalf("a command was sent for an ended context")
	}
}

// TestErrorsKeepTheQMPClass: QEMU's error replies come back as *QMPError
// with their class and the command's name.
func TestErrorsKeepTheQMPClass(t *testing.T) {
	defer leakCheck(t)()
	s := &qmptest.Server{Commands: map[string]qmptest.Handler{
		"fails": func(*qmptest.Call) qmptest.Reply {
			return qmptest.Reply{Error: &qmptest.Error{Class: "DeviceNotFound", Desc: "Device 'x' not found"}}
		},
		"string": func(*qmptest.Call) qmptest.Reply { return qmptest.Reply{Return: "a string"} },
	}}
	defer s.Close()
	c := connect(t, s)
	defer closeQuietly(c)
	ctx := within(t, 5*time.Second)
	for cmd, class := range map[string]string{"fails": "DeviceNotFound", "no-such-command": "CommandNotFound"} {
		err := c.Execute(ctx, cmd, nil, nil)
		var qe *hypervisor.QMPError
		if !errors.As(err, &qe) || qe.Class != class || qe.Command != cmd {
			t.Fatalf("%s: err = %#v, want a *QMPError of class %s", cmd, err, class)
		}
	}
	// Arguments that are not an object are refused before sending.
	if err := c.Execute(ctx, "fails", []int{1}, nil); err == nil {
		t.Fatalf("Execute with array arguments succeeded")
	}
	// A reply that does not fit out is a protocol error, not a lost
	// connection.
	var n int
	if err := c.Execute(ctx, "string", nil, &n); !errors.Is(err, hypervisor.ErrProtocol) {
		t.Fatalf("decoding a string into an int: err = %v, want ErrProtocol", err)
	}
	if err := c.Execute(ctx, "string", nil, nil); err != nil {
		t.Fatalf("the connection did not survive a decoding error: %v", err)
	}
}

// TestGarbageIsProtocolError: anything that is not QMP ends the
// connection; the call waiting gets ErrProtocol (and ErrClosed), later
// calls ErrClosed, and subscriptions are closed.
func TestGarbageIsProtocolError(t *testing.T) {
	cases := map[string][]byte{
		"text":              []byte("this is not JSON\r\n"),
		"array":             []byte("[1, 2]\r\n"),
		"malformed":         []byte(`{"return": }` + "\r\n"),
		"unbalanced":        []byte(`{"return": {]}` + "\r\n"),
		"neither":           []byte(`{"hello": 1}` + "\r\n"),
		"both":              []byte(`{"return": {}, "error": {"class": "GenericError", "desc": "x"}}` + "\r\n"),
		"duplicate member":  []byte(`{"return": {}, "return": {}}` + "\r\n"),
		"error no class":    []byte(`{"error": {"desc": "x"}}` + "\r\n"),
		"event bad data":    []byte(`{"event": "STOP", "data": [1]}` + "\r\n"),
		"event bad name":    []byte(`{"event": 7}` + "\r\n"),
		"event bad time":    []byte(`{"event": "STOP", "timestamp": {"seconds": "x"}}` + "\r\n"),
		"second greeting":   qmptest.DefaultGreeting,
		"oversized":         qmptest.Oversized(2<<20, nil),
		"oversized unended": append([]byte(`{"return": "`), make([]byte, 2<<20)...),
	}
	for name, raw := range cases {
		t.Run(name, func(t *testing.T) {
			defer leakCheck(t)()
			s := &qmptest.Server{Commands: map[string]qmptest.Handler{
				"garbage": func(*qmptest.Call) qmptest.Reply { return qmptest.Reply{Raw: raw} },
			}}
			defer s.Close()
			c := connect(t, s, hypervisor.WithMaxMessageSize(1<<20))
			defer closeQuietly(c)
			events, cancel := c.Subscribe(nil)
			defer cancel()

			err := c.Execute(within(t, 5*time.Second), "garbage", nil, nil)
			if !errors.Is(err, hypervisor.ErrProtocol) || !errors.Is(err, hypervisor.ErrClosed) {
				t.Fatalf("err = %v, want ErrProtocol and ErrClosed", err)
			}
			if err := c.Execute(within(t, 5*time.Second), "garbage", nil, nil); !errors.Is(err, hypervisor.ErrClosed) {
				t.Fatalf("later call: err = %v, want ErrClosed", err)
			}
			select {
			case ev, ok := <-events:
				if ok {
					t.Fatalf("subscription delivered %v after garbage, want it closed", ev)
				}
			case <-time.After(2 * time.Second):
				t.Fatalf("subscription not closed after garbage")
			}
			if c.Err() == nil || !errors.Is(c.Err(), hypervisor.ErrProtocol) {
				t.Fatalf("Err() = %v, want the protocol error", c.Err())
			}
		})
	}
}

// TestLostConnection: when QEMU goes away, every pending call fails with
// ErrClosed, subscriptions are closed and Done is closed.
func TestLostConnection(t *testing.T) {
	defer leakCheck(t)()
	s := &qmptest.Server{Commands: map[string]qmptest.Handler{
		"hang": func(*qmptest.Call) qmptest.Reply { return qmptest.Reply{Hang: true} },
		"drop": func(*qmptest.Call) qmptest.Reply { return qmptest.Reply{Drop: true, Delay: 100 * time.Millisecond} },
	}}
	defer s.Close()
	c := connect(t, s)
	defer closeQuietly(c)
	events, cancel := c.Subscribe(nil)
	defer cancel()

	ctx := within(t, 10*time.Second)
	errs := make(chan error, 5)
	for range 4 {
		go func() { errs <- c.Execute(ctx, "hang", nil, nil) }()
	}
	go func() { errs <- c.Execute(ctx, "drop", nil, nil) }()
	for range 5 {
		if err := <-errs; !errors.Is(err, hypervisor.ErrClosed) {
			t.Fatalf("pending call: err = %v, want ErrClosed", err)
		}
	}
	select {
	case <-c.Done():
	case <-time.After(2 * time.Second):
		t.Fatalf("Done not closed")
	}
	if _, ok := <-events; ok {
		t.Fatalf("subscription still open after the connection was lost")
	}
	if err := c.Execute(ctx, "hang", nil, nil); !errors.Is(err, hypervisor.ErrClosed) {
		t.Fatalf("call after the loss: err = %v, want ErrClosed", err)
	}
	// Subscribing to a lost connection gives a closed channel.
	late, lateCancel := c.Subscribe(nil)
	defer lateCancel()
	if _, ok := <-late; ok {
		t.Fatalf("subscription on a lost connection delivered an event")
	}
}

// TestCloseEndsPendingCalls: Close fails pending calls with ErrClosed and
// cancels subscriptions whose consumers do not read.
func TestCloseEndsPendingCalls(t *testing.T) {
	defer leakCheck(t)()
	s := &qmptest.Server{Commands: map[string]qmptest.Handler{
		"hang":  func(*qmptest.Call) qmptest.Reply { return qmptest.Reply{Hang: true} },
		"burst": burst(10),
	}}
	defer s.Close()
	c := connect(t, s)
	_, cancel := c.Subscribe(nil) // never read
	defer cancel()
	if err := c.Execute(within(t, 5*time.Second), "burst", nil, nil); err != nil {
		t.Fatalf("burst: %v", err)
	}
	errc := make(chan error, 1)
	go func() { errc <- c.Execute(within(t, 10*time.Second), "hang", nil, nil) }()
	time.Sleep(50 * time.Millisecond)
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := <-errc; !errors.Is(err, hypervisor.ErrClosed) {
		t.Fatalf("pending call after Close: %v, want ErrClosed", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// burst returns a handler that emits n events numbered 0..n-1 before its
// reply.
func burst(n int) qmptest.Handler {
	return func(*qmptest.Call) qmptest.Reply {
		evs := make([]qmptest.Event, n)
		for i := range evs {
			evs[i] = qmptest.Event{Name: "TICK", Data: map[string]int{"n": i}}
		}
		return qmptest.Reply{Events: evs}
	}
}

// pacedBurst returns a handler that emits n events numbered 0..n-1 before
// its reply, pausing a millisecond after every 8, so that a subscriber
// that reads keeps up with a small queue.
func pacedBurst(n int) qmptest.Handler {
	return func(c *qmptest.Call) qmptest.Reply {
		for i := range n {
			if err := c.Conn.Emit("TICK", map[string]int{"n": i}); err != nil {
				return qmptest.Reply{Drop: true}
			}
			if i%8 == 7 {
				time.Sleep(time.Millisecond)
			}
		}
		return qmptest.Reply{}
	}
}

// TestSlowSubscriberNeverBlocksExecute: a subscriber that does not read
// holds up neither commands nor other subscribers; its queue stops at the
// limit and an EventsLost event marks the gap.
func TestSlowSubscriberNeverBlocksExecute(t *testing.T) {
	defer leakCheck(t)()
	s := &qmptest.Server{Commands: map[string]qmptest.Handler{"burst": pacedBurst(1000)}}
	defer s.Close()
	c := connect(t, s, hypervisor.WithEventQueueLimit(16))
	defer closeQuietly(c)

	slow, cancelSlow := c.Subscribe(nil)
	defer cancelSlow()
	fast, cancelFast := c.Subscribe(func(ev hypervisor.Event) bool { return ev.Name == "TICK" })
	defer cancelFast()
	got := make(chan []int, 1)
	go func() {
		var ns []int
		for ev := range fast {
			var d struct{ N int }
			_ = json.Unmarshal(ev.Data, &d)
			ns = append(ns, d.N)
			if len(ns) == 1000 {
				break
			}
		}
		got <- ns
	}()

	start := time.Now()
	if err := c.Execute(within(t, 5*time.Second), "burst", nil, nil); err != nil {
		t.Fatalf("burst: %v", err)
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Fatalf("Execute took %v with a subscriber that does not read", d)
	}
	select {
	case ns := <-got:
		for i, n := range ns {
			if n != i {
				t.Fatalf("reading subscriber: event %d is number %d", i, n)
			}
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("the reading subscriber did not get its 1000 events")
	}

	// The slow subscriber has the first 16 events (17: its goroutine
	// holds one more, ready to hand over), then the gap marker, which
	// accounts for the rest.
	kept := readUntilGap(t, slow)
	if kept < 16 || kept > 17 {
		t.Fatalf("the slow subscriber kept %d events, want 16 or 17", kept)
	}
	if st := c.Stats(); st.EventsDropped != uint64(1000-kept) {
		t.Fatalf("Stats().EventsDropped = %d, want %d", st.EventsDropped, 1000-kept)
	}
	// Once drained, the subscription delivers again, in order.
	if err := c.Execute(within(t, 5*time.Second), "burst", nil, nil); err != nil {
		t.Fatalf("second burst: %v", err)
	}
	if kept := readUntilGap(t, slow); kept < 16 || kept > 17 {
		t.Fatalf("second burst: the slow subscriber kept %d events, want 16 or 17", kept)
	}
}

// readUntilGap reads TICK events numbered from 0 up to an EventsLost
// marker, checks that the marker accounts for the rest of 1000, and
// returns how many were kept.
func readUntilGap(t *testing.T, events <-chan hypervisor.Event) int {
	t.Helper()
	for i := 0; ; i++ {
		var ev hypervisor.Event
		select {
		case ev = <-events:
		case <-time.After(5 * time.Second):
			t.Fatalf("no event %d", i)
		}
		if ev.Name == hypervisor.EventsLost {
			var lost hypervisor.EventsLostData
			if err := json.Unmarshal(ev.Data, &lost); err != nil || lost.Dropped != uint64(1000-i) {
				t.Fatalf("gap after %d events: %s, want %d dropped", i, ev.Data, 1000-i)
			}
			return i
		}
		var d struct{ N int }
		if err := json.Unmarshal(ev.Data, &d); err != nil || ev.Name != "TICK" || d.N != i {
			t.Fatalf("event %d = %s %s", i, ev.Name, ev.Data)
		}
		if ev.Time.IsZero() {
			t.Fatalf("event without a time")
		}
	}
}

// TestHandshake: a QEMU that does not greet times out with the context; a
// refused qmp_capabilities keeps its class.
func TestHandshake(t *testing.T) {
	defer leakCheck(t)()
	client, server := net.Pipe()
	defer server.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := hypervisor.NewQMPConn(ctx, client, hypervisor.WithLogger(quiet)); !errors.Is(err, hypervisor.ErrTimeout) {
		t.Fatalf("no greeting: err = %v, want ErrTimeout", err)
	}

	s := &qmptest.Server{Commands: map[string]qmptest.Handler{
		"qmp_capabilities": func(*qmptest.Call) qmptest.Reply {
			return qmptest.Reply{Error: &qmptest.Error{Class: "GenericError", Desc: "no"}}
		},
	}}
	defer s.Close()
	_, err := hypervisor.NewQMPConn(within(t, 5*time.Second), s.Pipe(), hypervisor.WithLogger(quiet))
	var qe *hypervisor.QMPError
	if !errors.As(err, &qe) || qe.Class != "GenericError" || qe.Command != "qmp_capabilities" {
		t.Fatalf("refused negotiation: err = %v, want a GenericError of qmp_capabilities", err)
	}

	bad := &qmptest.Server{Greeting: []byte(`{"return": {}}`)}
	defer bad.Close()
	if _, err := hypervisor.NewQMPConn(within(t, 5*time.Second), bad.Pipe(), hypervisor.WithLogger(quiet)); !errors.Is(err, hypervisor.ErrProtocol) {
		t.Fatalf("a reply instead of a greeting: err = %v, want ErrProtocol", err)
	}
}

// TestDialUnixSocket dials a fake on a unix socket, and a socket that does
// not exist.
func TestDialUnixSocket(t *testing.T) {
	defer leakCheck(t)()
	dir := t.TempDir()
	s := &qmptest.Server{Commands: map[string]qmptest.Handler{
		"query-status": func(*qmptest.Call) qmptest.Reply {
			return qmptest.Reply{Return: map[string]any{"status": "running", "running": true}}
		},
	}}
	defer s.Close()
	path, err := s.ListenUnix(dir)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	c, err := hypervisor.DialQMP(within(t, 5*time.Second), "unix", path, hypervisor.WithLogger(quiet))
	if err != nil {
		t.Fatalf("DialQMP: %v", err)
	}
	defer closeQuietly(c)
	var st struct{ Status string }
	if err := c.Execute(within(t, 5*time.Second), "query-status", nil, &st); err != nil || st.Status != "running" {
		t.Fatalf("query-status = %+v, %v", st, err)
	}
	if _, err := hypervisor.DialQMP(within(t, 5*time.Second), "unix", dir+"/nothing.sock"); !errors.Is(err, hypervisor.ErrClosed) {
		t.Fatalf("dialling a missing socket: err = %v, want ErrClosed", err)
	}
}
