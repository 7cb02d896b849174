package hypervisor_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/internal/hypervisor"
	"github.com/twinsnap/twinsnap/internal/hypervisor/qmptest"
)

// idPlaceholder in a FuzzQMPConn input is replaced by the JSON id of the
// command the client sent, so that the fuzzer can answer it.
const idPlaceholder = "@ID@"

// FuzzQMPConn runs a client against a server that, after the greeting
// and the capabilities negotiation, answers the client's command with
// arbitrary bytes and closes. The client must never panic or hang; the
// command succeeds only if the bytes held a reply with its id; errors keep
// a class; Close leaves no goroutine behind (Close waits for the reader,
// and cancel for the subscription's).
func FuzzQMPConn(f *testing.F) {
	for _, s := range []string{
		`{"return": {"status": "running"}, "id": @ID@}`,
		`{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}{"return": 1, "id": @ID@}`,
		`{"error": {"class": "DeviceNotFound", "desc": "no"}, "id": @ID@}`,
		`{"return": {}, "id": "twinsnap-00000000-1"}{"return": {}}`,
		`{"return": {}, "id": @ID@}{"return": {}, "id": @ID@}`,
		`{"event": "JOB_STATUS_CHANGE", "data": {"id": "j", "status": "running"}}` + "\r\n" + `{"event": "BLOCK_JOB_COMPLETED", "data": {"device": "j"}}`,
		`garbage`,
		`{"return": "unterminated`,
		`{"QMP": {}}`,
		"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		client, server := net.Pipe()
		served := make(chan struct{})
		go func() {
			defer close(served)
			defer server.Close()
			if _, err := server.Write(append(qmptest.DefaultGreeting, '\n')); err != nil {
				return
			}
			dec := json.NewDecoder(server)
			var cmd struct {
				ID json.RawMessage `json:"id"`
			}
			if dec.Decode(&cmd) != nil {
				return
			}
			if _, err := server.Write([]byte(`{"return": {}, "id": ` + string(cmd.ID) + "}\n")); err != nil {
				return
			}
			if dec.Decode(&cmd) != nil {
				return
			}
			_, _ = server.Write(bytes.ReplaceAll(data, []byte(idPlaceholder), cmd.ID))
		}()

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := hypervisor.NewQMPConn(ctx, client, hypervisor.WithLogger(quiet),
			hypervisor.WithMaxMessageSize(1<<16), hypervisor.WithEventQueueLimit(4))
		if err != nil {
			t.Fatalf("handshake: %v", err)
		}
		events, stop := c.Subscribe(nil)
		var out json.RawMessage
		err = c.Execute(ctx, "query-status", nil, &out)
		var qe *hypervisor.QMPError
		switch {
		case err == nil && !bytes.Contains(data, []byte(idPlaceholder)):
			t.Fatalf("the command succeeded with %s, but no reply carried its id", out)
		case errors.Is(err, hypervisor.ErrTimeout):
			t.Fatalf("the command hung: %v", err)
		case err != nil && !errors.As(err, &qe) && !errors.Is(err, hypervisor.ErrClosed) && !errors.Is(err, hypervisor.ErrProtocol):
			t.Fatalf("error without a class: %v", err)
		}
		if err := c.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			t.Logf("Close: %v", err)
		}
		stop()
		if ev, ok := <-events; ok {
			t.Fatalf("event %s delivered after cancel returned", ev.Name)
		}
		select {
		case <-served:
		case <-time.After(10 * time.Second):
			t.Fatalf("the server goroutine did not end")
		}
	})
}
