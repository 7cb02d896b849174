package hypervisor_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qemu"
	"github.com/digitalocean/go-qemu/qmp"

	"github.com/twinsnap/twinsnap/internal/hypervisor"
	"github.com/twinsnap/twinsnap/internal/hypervisor/qmptest"
)

// TestMonitorCompatibility drives a QMPConn through go-qemu's qemu.Domain
// and qmp.Monitor methods.
func TestMonitorCompatibility(t *testing.T) {
	defer leakCheck(t)()
	s := &qmptest.Server{Commands: map[string]qmptest.Handler{
		"query-status": func(*qmptest.Call) qmptest.Reply {
			return qmptest.Reply{Return: map[string]any{"status": "paused", "running": false, "singlestep": false}}
		},
		"stop": func(*qmptest.Call) qmptest.Reply {
			return qmptest.Reply{Events: []qmptest.Event{{Name: "STOP"}}}
		},
		"fails": func(*qmptest.Call) qmptest.Reply {
			return qmptest.Reply{Error: &qmptest.Error{Class: "DeviceNotFound", Desc: "nope"}}
		},
	}}
	defer s.Close()
	c := connect(t, s)
	var m qmp.Monitor = c
	if err := m.Connect(); err != nil {
		t.Fatalf("Connect: %v", err)
	}

	d, err := qemu.NewDomain(m, "fake")
	if err != nil {
		t.Fatalf("qemu.NewDomain: %v", err)
	}
	st, err := d.Status()
	if err != nil || st != qemu.StatusPaused {
		t.Fatalf("Domain.Status = %v, %v; want paused", st, err)
	}
	events, done, err := d.Events()
	if err != nil {
		t.Fatalf("Domain.Events: %v", err)
	}
	if _, err := d.Run(qmp.Command{Execute: "stop"}); err != nil {
		t.Fatalf("Domain.Run(stop): %v", err)
	}
	select {
	case ev := <-events:
		if ev.Event != "STOP" || ev.Timestamp.Seconds == 0 {
			t.Fatalf("event = %+v, want STOP with a timestamp", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no STOP event through go-qemu")
	}
	done <- struct{}{}

	// Run keeps the caller's id and QEMU's error class.
	out, err := m.Run([]byte(`{"execute": "query-status", "id": 42}`))
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	var reply struct {
		Return struct{ Status string }
		ID     int
	}
	if err := json.Unmarshal(out, &reply); err != nil || reply.ID != 42 || reply.Return.Status != "paused" {
		t.Fatalf("Run reply = %s (%v)", out, err)
	}
	_, err = m.Run([]byte(`{"execute": "fails"}`))
	var qe *hypervisor.QMPError
	if !errors.As(err, &qe) || qe.Class != "DeviceNotFound" {
		t.Fatalf("Run(fails) = %v, want a DeviceNotFound *QMPError", err)
	}
	if _, err := m.Run([]byte(`not json`)); err == nil {
		t.Fatalf("Run(garbage) succeeded")
	}

	// Events ends with its context.
	ctx, cancel := context.WithCancel(context.Background())
	evs, err := m.Events(ctx)
	if err != nil {
		t.Fatalf("Events: %v", err)
	}
	cancel()
	for range evs {
	}
	if err := d.Close(); err != nil { // Disconnect
		t.Fatalf("Domain.Close: %v", err)
	}
	if err := m.Connect(); !errors.Is(err, hypervisor.ErrClosed) {
		t.Fatalf("Connect after Disconnect = %v, want ErrClosed", err)
	}
}
