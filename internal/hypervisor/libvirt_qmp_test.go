package hypervisor_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"
	"github.com/twinsnap/twinsnap/internal/hypervisor"
)

// fakeMonitor is a LibvirtMonitor without libvirtd: run answers each
// command, and events sent on events reach the subscription. Like
// go-libvirt, its event goroutine blocks on the send until the event is
// read, closes the channel when the subscription's context ends, and
// deregisters only after that (after deregisterDelay); like libvirt, it
// refuses a second registration while one is registered.
type fakeMonitor struct {
	run             func(cmd string) (string, error)
	events          chan libvirt.DomainEvent
	subErr          error
	deregisterDelay time.Duration

	mu         sync.Mutex
	cmds       []string
	registered bool
	registers  int // successful registrations
	refused    int // registrations refused as duplicates
}

func newFakeMonitor(run func(cmd string) (string, error)) *fakeMonitor {
	return &fakeMonitor{run: run, events: make(chan libvirt.DomainEvent)}
}

func (f *fakeMonitor) QEMUDomainMonitorCommand(_ libvirt.Domain, cmd string, _ uint32) (string, error) {
	f.mu.Lock()
	f.cmds = append(f.cmds, cmd)
	f.mu.Unlock()
	return f.run(cmd)
}

func (f *fakeMonitor) SubscribeQEMUEvents(ctx context.Context, _ string) (<-chan libvirt.DomainEvent, error) {
	if f.subErr != nil {
		return nil, f.subErr
	}
	f.mu.Lock()
	if f.registered {
		f.refused++
		f.mu.Unlock()
		return nil, libvirt.Error{Code: uint32(libvirt.ErrInvalidArg), Message: "invalid argument: event callback already tracked"}
	}
	f.registered = true
	f.registers++
	f.mu.Unlock()
	out := make(chan libvirt.DomainEvent)
	go func() {
		defer func() {
			close(out)
			time.Sleep(f.deregisterDelay)
			f.mu.Lock()
			f.registered = false
			f.mu.Unlock()
		}()
		for {
			select {
			case ev, ok := <-f.events:
				if !ok {
					return // the connection was lost
				}
				out <- ev
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

func (f *fakeMonitor) counts() (registers, refused int, registered bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.registers, f.refused, f.registered
}

func (f *fakeMonitor) sent() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.cmds...)
}

// openFake returns a LibvirtQMP over f; the caller closes it.
func openFake(t *testing.T, f *fakeMonitor, opts ...hypervisor.QMPOption) *hypervisor.LibvirtQMP {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	q, err := hypervisor.NewLibvirtQMP(ctx, f, libvirt.Domain{Name: "fake"}, append([]hypervisor.QMPOption{hypervisor.WithLogger(quiet)}, opts...)...)
	if err != nil {
		t.Fatalf("NewLibvirtQMP: %v", err)
	}
	return q
}

// TestLibvirtQMPFakeReplies checks what is sent (no id, the arguments) and
// how libvirt's verbatim QEMU replies are read.
func TestLibvirtQMPFakeReplies(t *testing.T) {
	defer leakCheck(t)()
	replies := map[string]string{
		"query-status": `{"return":{"status":"running","singlestep":false,"running":true},"id":"libvirt-412"}`,
		"bogus":        `{"id":"libvirt-413","error":{"class":"CommandNotFound","desc":"The command bogus has not been found"}}`,
		"qom-get":      `{"id":"libvirt-416","error":{"class":"DeviceNotFound","desc":"Device '/machine/peripheral/nope' not found"}}`,
		"garbage":      `{"return":{} trailing`,
		"an-event":     `{"event":"STOP","timestamp":{"seconds":1,"microseconds":2}}`,
		"both":         `{"return":{},"error":{"class":"GenericError","desc":"x"}}`,
		"big":          `{"return":"` + strings.Repeat("x", 2000) + `"}`,
		"number":       `{"return":42}`,
	}
	f := newFakeMonitor(func(cmd string) (string, error) {
		var c struct {
			Execute string `json:"execute"`
		}
		if err := json.Unmarshal([]byte(cmd), &c); err != nil {
			return "", err
		}
		return replies[c.Execute], nil
	})
	q := openFake(t, f, hypervisor.WithMaxMessageSize(1024))
	defer func() { _ = q.Close() }()
	ctx := within(t, 10*time.Second)

	var st struct {
		Status  string `json:"status"`
		Running bool   `json:"running"`
	}
	if err := q.Execute(ctx, "query-status", nil, &st); err != nil || st.Status != "running" || !st.Running {
		t.Fatalf("query-status = %+v, %v", st, err)
	}
	if err := q.Execute(ctx, "qom-get", map[string]any{"path": "/machine/peripheral/nope", "property": "serial"}, nil); err == nil {
		t.Fatalf("qom-get of a missing device succeeded")
	}
	sent := f.sent()
	if sent[0] != `{"execute":"query-status"}` || sent[1] != `{"execute":"qom-get","arguments":{"path":"/machine/peripheral/nope","property":"serial"}}` {
		t.Fatalf("sent %q, want commands without an id, with their arguments", sent)
	}

	for _, tc := range []struct{ cmd, class string }{{"bogus", "CommandNotFound"}, {"qom-get", "DeviceNotFound"}} {
		err := q.Execute(ctx, tc.cmd, nil, nil)
		var qe *hypervisor.QMPError
		if !errors.As(err, &qe) || qe.Class != tc.class || qe.Command != tc.cmd || qe.Desc == "" {
			t.Fatalf("%s: error %v (%#v), want a QMPError of class %s", tc.cmd, err, qe, tc.class)
		}
	}
	for _, cmd := range []string{"garbage", "an-event", "both", "big"} {
		if err := q.Execute(ctx, cmd, nil, nil); !errors.Is(err, hypervisor.ErrProtocol) {
			t.Fatalf("%s: error %v, want ErrProtocol", cmd, err)
		}
	}
	var s string
	if err := q.Execute(ctx, "number", nil, &s); !errors.Is(err, hypervisor.ErrProtocol) {
		t.Fatalf("decoding a number into a string: %v, want ErrProtocol", err)
	}
	if err := q.Execute(ctx, "query-status", []int{1}, nil); err == nil || errors.Is(err, hypervisor.ErrProtocol) {
		t.Fatalf("arguments that are not an object: %v, want an encoding error", err)
	}
	if n := len(f.sent()); n != 2+2+4+1 {
		t.Fatalf("%d commands sent, want 9 (bad arguments are not sent)", n)
	}
}

// TestLibvirtQMPFakeLibvirtErrors checks the mapping of libvirt's own
// errors.
func TestLibvirtQMPFakeLibvirtErrors(t *testing.T) {
	defer leakCheck(t)()
	var next error
	f := newFakeMonitor(func(string) (string, error) { return "", next })
	q := openFake(t, f)
	defer func() { _ = q.Close() }()
	ctx := within(t, 10*time.Second)
	for _, tc := range []struct {
		name string
		err  error
		want error
	}{
		{"not running", libvirt.Error{Code: uint32(libvirt.ErrOperationInvalid), Message: "Requested operation is not valid: domain is not running"}, hypervisor.ErrClosed},
		{"gone", libvirt.Error{Code: uint32(libvirt.ErrNoDomain), Message: "Domain not found"}, hypervisor.ErrClosed},
		{"job lock", libvirt.Error{Code: uint32(libvirt.ErrOperationTimeout), Message: "Timed out during operation: cannot acquire state change lock"}, hypervisor.ErrTimeout},
		{"id", libvirt.Error{Code: uint32(libvirt.ErrInternalError), Message: "internal error: Unable to append command 'id' string"}, hypervisor.ErrLibvirt},
		{"monitor EOF", libvirt.Error{Code: uint32(libvirt.ErrOperationFailed), Message: "operation failed: End of file from qemu monitor"}, hypervisor.ErrLibvirt},
		{"interrupted", libvirt.ErrInterrupted, hypervisor.ErrClosed},
		{"not connected", syscall.EINVAL, hypervisor.ErrClosed},
		{"unsupported", libvirt.ErrUnsupported, hypervisor.ErrLibvirt},
	} {
		next = tc.err
		err := q.Execute(ctx, "query-status", nil, nil)
		if !errors.Is(err, tc.want) || !errors.Is(err, tc.err) {
			t.Fatalf("%s: %v, want %v wrapping %v", tc.name, err, tc.want, tc.err)
		}
		var qe *hypervisor.QMPError
		if errors.As(err, &qe) {
			t.Fatalf("%s: a libvirt error became a QMPError: %v", tc.name, err)
		}
	}

	f = newFakeMonitor(nil)
	f.subErr = libvirt.Error{Code: uint32(libvirt.ErrNoDomain), Message: "Domain not found: no domain with matching name 'x'"}
	if _, err := hypervisor.NewLibvirtQMP(ctx, f, libvirt.Domain{Name: "x"}); !errors.Is(err, hypervisor.ErrClosed) {
		t.Fatalf("NewLibvirtQMP on a missing domain: %v, want ErrClosed", err)
	}
}

// TestLibvirtQMPFakeBounds checks that a call libvirt holds ends with its
// context (ErrTimeout) or with Close (ErrClosed), and that the abandoned
// RPC is counted until libvirt answers.
func TestLibvirtQMPFakeBounds(t *testing.T) {
	defer leakCheck(t)()
	release := make(chan struct{})
	entered := make(chan struct{}, 4)
	f := newFakeMonitor(func(string) (string, error) {
		entered <- struct{}{}
		<-release
		return `{"return":{}}`, nil
	})
	q := openFake(t, f)
	defer func() { _ = q.Close() }()

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := q.Execute(ctx, "query-status", nil, nil)
	took := time.Since(start)
	if !errors.Is(err, hypervisor.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("held call: %v, want ErrTimeout wrapping the deadline", err)
	}
	if took > time.Second {
		t.Fatalf("held call returned after %s, want about 200ms", took)
	}
	if n := q.Abandoned(); n != 1 {
		t.Fatalf("Abandoned() = %d, want 1", n)
	}

	// An ended context is refused without an RPC.
	if err := q.Execute(ctx, "query-status", nil, nil); !errors.Is(err, hypervisor.ErrTimeout) {
		t.Fatalf("ended context: %v, want ErrTimeout", err)
	}
	if n := len(f.sent()); n != 1 {
		t.Fatalf("%d RPCs, want 1", n)
	}

	// Close ends a call in progress with ErrClosed.
	errc := make(chan error, 1)
	go func() { errc <- q.Execute(context.Background(), "query-status", nil, nil) }()
	<-entered
	<-entered
	if err := q.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, hypervisor.ErrClosed) {
			t.Fatalf("call ended by Close: %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("Close did not end the call in progress")
	}
	if err := q.Execute(context.Background(), "query-status", nil, nil); !errors.Is(err, hypervisor.ErrClosed) {
		t.Fatalf("call after Close: %v, want ErrClosed", err)
	}
	if n := q.Abandoned(); n != 2 {
		t.Fatalf("Abandoned() = %d, want 2", n)
	}
	close(release) // libvirt answers at last
	if !waitFor(5*time.Second, func() bool { return q.Abandoned() == 0 }) {
		t.Fatalf("Abandoned() = %d after libvirt answered, want 0", q.Abandoned())
	}
	if st := q.Stats(); st.Discarded != 2 {
		t.Fatalf("Stats = %+v, want 2 discarded late replies", st)
	}
}

// TestLibvirtQMPFakeEvents checks the fan-out: conversion of libvirt's
// events, filters, a subscriber that does not read, cancel, and the end of
// the stream.
func TestLibvirtQMPFakeEvents(t *testing.T) {
	defer leakCheck(t)()
	f := newFakeMonitor(func(string) (string, error) { return `{"return":{}}`, nil })
	const limit = 8
	q := openFake(t, f, hypervisor.WithEventQueueLimit(limit))
	defer func() { _ = q.Close() }()
	ctx := within(t, 10*time.Second)

	all, cancelAll := q.Subscribe(nil)
	defer cancelAll()
	jobs, cancelJobs := q.Subscribe(func(ev hypervisor.Event) bool { return ev.Name == "JOB_STATUS_CHANGE" })
	defer cancelJobs()
	stalled, cancelStalled := q.Subscribe(nil) // not read until the end
	defer cancelStalled()

	send := func(name, details string) {
		t.Helper()
		ev := libvirt.DomainEvent{Event: name, Seconds: 1700000000, Microseconds: 250}
		if details != "" {
			ev.Details = []byte(details)
		}
		select {
		case f.events <- ev:
		case <-ctx.Done():
			t.Fatalf("the event reader does not read")
		}
	}
	recv := func(ch <-chan hypervisor.Event) hypervisor.Event {
		t.Helper()
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatalf("subscription closed early")
			}
			return ev
		case <-ctx.Done():
			t.Fatalf("no event")
		}
		return hypervisor.Event{}
	}

	const n = 3
	for i := range n {
		send("JOB_STATUS_CHANGE", `{"status":"running","id":"job-`+string(rune('a'+i))+`"}`)
		send("BLOCK_JOB_COMPLETED", `{"device":"job","len":1,"offset":1,"speed":0,"type":"backup"}`+"\x00")
	}
	send("WEIRD", `[1,2]`)
	for i := range n {
		ev := recv(jobs)
		var d struct{ Status, ID string }
		if ev.Name != "JOB_STATUS_CHANGE" || json.Unmarshal(ev.Data, &d) != nil || d.ID != "job-"+string(rune('a'+i)) {
			t.Fatalf("job event %d = %s %s", i, ev.Name, ev.Data)
		}
		if want := time.Unix(1700000000, 250000); !ev.Time.Equal(want) {
			t.Fatalf("event time %v, want %v", ev.Time, want)
		}
	}
	for i := range 2 * n {
		ev := recv(all)
		if i%2 == 1 && (ev.Name != "BLOCK_JOB_COMPLETED" || !json.Valid(ev.Data)) {
			t.Fatalf("event %d = %s %q, want BLOCK_JOB_COMPLETED with its data (NUL trimmed)", i, ev.Name, ev.Data)
		}
	}
	if ev := recv(all); ev.Name != "WEIRD" || ev.Data != nil {
		t.Fatalf("event with non-object data = %s %s, want it without data", ev.Name, ev.Data)
	}
	// More events than the stalled subscriber's queue holds; the others
	// read theirs.
	const more = 20
	for range more {
		send("X", `{}`)
		recv(all)
	}
	// The stalled subscriber kept limit events (one more when its
	// goroutine had taken the first before the queue filled), then a gap
	// marker.
	offered := 2*n + 1 + more
	kept := 0
	for recv(stalled).Name != hypervisor.EventsLost {
		kept++
	}
	if kept < limit || kept > limit+1 {
		t.Fatalf("stalled subscriber got %d events before the gap, want %d or %d", kept, limit, limit+1)
	}
	if st := q.Stats(); st.EventsDropped != uint64(offered-kept) {
		t.Fatalf("EventsDropped = %d, want %d", st.EventsDropped, offered-kept)
	}
	cancelStalled()
	cancelStalled() // idempotent
	if _, ok := <-stalled; ok {
		t.Fatalf("cancelled subscription still delivers")
	}

	// The stream ends (connection lost): subscriptions close, calls fail.
	close(f.events)
	select {
	case <-q.Done():
	case <-ctx.Done():
		t.Fatalf("Done not closed after the stream ended")
	}
	if _, ok := <-all; ok {
		t.Fatalf("subscription open after the stream ended")
	}
	if err := q.Execute(ctx, "query-status", nil, nil); !errors.Is(err, hypervisor.ErrClosed) {
		t.Fatalf("call after the stream ended: %v, want ErrClosed", err)
	}
	if err := q.Err(); !errors.Is(err, hypervisor.ErrClosed) {
		t.Fatalf("Err() = %v, want ErrClosed", err)
	}
	late, cancelLate := q.Subscribe(nil)
	defer cancelLate()
	if _, ok := <-late; ok {
		t.Fatalf("a subscription after the end delivers")
	}
}

// TestLibvirtQMPFakeClose checks that Close ends every subscription and
// the event goroutines.
func TestLibvirtQMPFakeClose(t *testing.T) {
	defer leakCheck(t)()
	f := newFakeMonitor(func(string) (string, error) { return `{"return":{}}`, nil })
	q := openFake(t, f)
	defer func() { _ = q.Close() }()
	a, _ := q.Subscribe(nil)
	b, _ := q.Subscribe(nil)
	if err := q.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for _, ch := range []<-chan hypervisor.Event{a, b} {
		if _, ok := <-ch; ok {
			t.Fatalf("subscription open after Close")
		}
	}
	if err := q.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	select {
	case <-q.Done():
	default:
		t.Fatalf("Done open after Close")
	}
	if err := q.Err(); !errors.Is(err, hypervisor.ErrClosed) {
		t.Fatalf("Err() after Close = %v, want ErrClosed", err)
	}
}

// TestLibvirtQMPFakeShared checks that the LibvirtQMPs of one domain on
// one connection share one registration (libvirt refuses a second), that
// each keeps its own subscribers, and that a LibvirtQMP opened right
// after the last one closed waits out the old registration.
func TestLibvirtQMPFakeShared(t *testing.T) {
	defer leakCheck(t)()
	f := newFakeMonitor(func(string) (string, error) { return `{"return":{}}`, nil })
	f.deregisterDelay = 300 * time.Millisecond
	ctx := within(t, 10*time.Second)
	a := openFake(t, f)
	defer func() { _ = a.Close() }()
	b := openFake(t, f)
	defer func() { _ = b.Close() }()
	if reg, refused, _ := f.counts(); reg != 1 || refused != 0 {
		t.Fatalf("%d registrations (%d refused), want 1", reg, refused)
	}
	evA, cancelA := a.Subscribe(nil)
	defer cancelA()
	evB, cancelB := b.Subscribe(nil)
	defer cancelB()
	send := func(name string) {
		t.Helper()
		select {
		case f.events <- libvirt.DomainEvent{Event: name, Details: []byte(`{}`)}:
		case <-ctx.Done():
			t.Fatalf("the event reader does not read")
		}
	}
	recv := func(ch <-chan hypervisor.Event, want string) {
		t.Helper()
		select {
		case ev, ok := <-ch:
			if !ok || ev.Name != want {
				t.Fatalf("got %q (open %v), want %s", ev.Name, ok, want)
			}
		case <-ctx.Done():
			t.Fatalf("no %s", want)
		}
	}
	send("ONE")
	recv(evA, "ONE")
	recv(evB, "ONE")

	// Closing a (twice) leaves b's stream running.
	for range 2 {
		if err := a.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
	}
	if _, ok := <-evA; ok {
		t.Fatalf("a's subscription open after Close")
	}
	send("TWO")
	recv(evB, "TWO")
	if err := b.Execute(ctx, "query-status", nil, nil); err != nil {
		t.Fatalf("b after a closed: %v", err)
	}

	// The last one out ends the registration; a new one registers anew,
	// retrying while the old registration lingers.
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, _, registered := f.counts(); !registered {
		t.Fatalf("the fake deregistered at once; the test needs a lingering registration")
	}
	c := openFake(t, f)
	defer func() { _ = c.Close() }()
	reg, refused, _ := f.counts()
	if reg != 2 || refused == 0 {
		t.Fatalf("%d registrations, %d refused; want 2 after at least one refusal", reg, refused)
	}
	evC, cancelC := c.Subscribe(nil)
	defer cancelC()
	send("THREE")
	recv(evC, "THREE")
	t.Logf("re-registration refused %d times while the old one lingered", refused)
}
