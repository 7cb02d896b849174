package hypervisor

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/digitalocean/go-qemu/qmp"
)

// QMPConn also implements go-qemu's qmp.Monitor, so that go-qemu's
// helpers (qemu.NewDomain, raw.NewMonitor) can run over it. Unlike
// go-qemu's SocketMonitor it reads replies of any size, does not block
// when events are not drained, and reports QEMU's errors as *QMPError
// with their class.
var _ qmp.Monitor = (*QMPConn)(nil)

// Connect implements qmp.Monitor. The connection is established by
// DialQMP, so Connect only reports whether it is still up.
func (c *QMPConn) Connect() error {
	return c.Err()
}

// Disconnect implements qmp.Monitor: it is Close.
func (c *QMPConn) Disconnect() error {
	return c.Close()
}

// Run implements qmp.Monitor: it runs one command given as JSON
// ({"execute": ..., "arguments": ..., "id": ...}), bounded by
// DefaultTimeout, and returns the reply object ({"return": ..., "id":
// ...}, with the caller's id if it gave one). QEMU's error replies come
// back as *QMPError.
func (c *QMPConn) Run(cmd []byte) ([]byte, error) {
	var in struct {
		Execute   string          `json:"execute"`
		Arguments json.RawMessage `json:"arguments,omitempty"`
		ID        json.RawMessage `json:"id,omitempty"`
	}
	if err := json.Unmarshal(cmd, &in); err != nil || in.Execute == "" {
		return nil, fmt.Errorf("hypervisor: qmp Run: not a QMP command: %.200q", cmd)
	}
	ctx, cancel := context.WithTimeout(context.Background(), DefaultTimeout)
	defer cancel()
	var args any
	if len(in.Arguments) > 0 {
		args = in.Arguments
	}
	ret, err := c.execute(ctx, in.Execute, args)
	if err != nil {
		return nil, err
	}
	out := struct {
		Return json.RawMessage `json:"return"`
		ID     json.RawMessage `json:"id,omitempty"`
	}{Return: ret, ID: in.ID}
	b, err := json.Marshal(out)
	if err != nil {
		return nil, fmt.Errorf("hypervisor: qmp Run %s: encoding the reply: %w", in.Execute, err)
	}
	return b, nil
}

// Events implements qmp.Monitor: every event, converted to go-qemu's
// type, until ctx ends or the connection closes, when the channel is
// closed. The channel is unbuffered, but a consumer that does not read
// only delays its own events (see Subscribe); a consumer that stops
// reading must end ctx.
func (c *QMPConn) Events(ctx context.Context) (<-chan qmp.Event, error) {
	if err := c.Err(); err != nil {
		return nil, err
	}
	in, cancel := c.Subscribe(nil)
	out := make(chan qmp.Event)
	go func() {
		defer close(out)
		defer cancel()
		for {
			select {
			case ev, ok := <-in:
				if !ok {
					return
				}
				select {
				case out <- toGoQEMU(ev):
				case <-ctx.Done():
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

// toGoQEMU converts an event to go-qemu's representation.
func toGoQEMU(ev Event) qmp.Event {
	e := qmp.Event{Event: ev.Name}
	if len(ev.Data) > 0 {
		_ = json.Unmarshal(ev.Data, &e.Data) // checked to be an object when read
	}
	if !ev.Time.IsZero() {
		e.Timestamp.Seconds = ev.Time.Unix()
		e.Timestamp.Microseconds = int64(ev.Time.Nanosecond() / 1000)
	}
	return e
}
