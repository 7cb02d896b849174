package hypervisor_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/guestagent"
	"github.com/twinsnap/twinsnap/internal/hypervisor"
	"github.com/twinsnap/twinsnap/internal/hypervisor/qmptest"
)

// TestQEMUMachineFake opens a machine on a fake monitor: the name comes
// from query-name, Powerdown waits for SHUTDOWN, Quit for the monitor to
// close, and an agent socket that does not exist is ErrClosed.
func TestQEMUMachineFake(t *testing.T) {
	defer leakCheck(t)()
	s := &qmptest.Server{Commands: map[string]qmptest.Handler{
		"query-name": func(*qmptest.Call) qmptest.Reply {
			return qmptest.Reply{Return: map[string]string{"name": "fakevm"}}
		},
		"system_powerdown": func(c *qmptest.Call) qmptest.Reply {
			go func() {
				time.Sleep(50 * time.Millisecond)
				_ = c.Conn.Emit("SHUTDOWN", map[string]any{"guest": true, "reason": "guest-shutdown"})
			}()
			return qmptest.Reply{Events: []qmptest.Event{{Name: "POWERDOWN"}}}
		},
		"quit": func(*qmptest.Call) qmptest.Reply { return qmptest.Reply{CloseAfter: true} },
	}}
	defer s.Close()
	dir := t.TempDir()
	sock, err := s.ListenUnix(dir)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	ctx := within(t, 10*time.Second)
	m, err := hypervisor.OpenQEMU(ctx, "", sock, filepath.Join(dir, "no-agent.sock"), hypervisor.WithLogger(quiet))
	if err != nil {
		t.Fatalf("OpenQEMU: %v", err)
	}
	defer closeQuietly(m)
	if m.Name() != "fakevm" {
		t.Fatalf("Name = %q, want fakevm", m.Name())
	}
	if _, err := m.Agent().Execute(ctx, "guest-ping", nil); !errors.Is(err, guestagent.ErrClosed) {
		t.Fatalf("agent on a missing socket: %v, want guestagent.ErrClosed", err)
	}
	if err := m.Powerdown(ctx); err != nil {
		t.Fatalf("Powerdown: %v", err)
	}
	if err := m.Quit(ctx); err != nil {
		t.Fatalf("Quit: %v", err)
	}
	select {
	case <-m.Conn().Done():
	default:
		t.Fatalf("Quit returned with the monitor still open")
	}
	if _, err := m.Agent().Execute(ctx, "guest-ping", nil); !errors.Is(err, guestagent.ErrClosed) {
		t.Fatalf("agent after Quit: %v, want guestagent.ErrClosed", err)
	}
}

// TestQEMUMachineQuitTimeout: a QEMU that answers quit but does not close
// the monitor leaves Quit to end with its context.
func TestQEMUMachineQuitTimeout(t *testing.T) {
	defer leakCheck(t)()
	s := &qmptest.Server{Commands: map[string]qmptest.Handler{
		"quit":             func(*qmptest.Call) qmptest.Reply { return qmptest.Reply{} },
		"system_powerdown": func(*qmptest.Call) qmptest.Reply { return qmptest.Reply{} },
	}}
	defer s.Close()
	sock, err := s.ListenUnix(t.TempDir())
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	m, err := hypervisor.OpenQEMU(within(t, 5*time.Second), "vm", sock, "", hypervisor.WithLogger(quiet))
	if err != nil {
		t.Fatalf("OpenQEMU: %v", err)
	}
	defer closeQuietly(m)
	for name, stop := range map[string]func(context.Context) error{"Quit": m.Quit, "Powerdown": m.Powerdown} {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		err := stop(ctx)
		cancel()
		if !errors.Is(err, hypervisor.ErrTimeout) {
			t.Fatalf("%s on a QEMU that stays: %v, want ErrTimeout", name, err)
		}
	}
}
