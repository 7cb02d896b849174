package guestagent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"
)

// DefaultTimeout bounds a call whose context has no deadline.
const DefaultTimeout = 30 * time.Second

// Transport carries one agent command and returns the raw value of its
// "return" member, or an *Error for an error reply. Implementations are
// the agent's socket (Stream) and libvirt.
type Transport interface {
	Execute(ctx context.Context, command string, args any) (json.RawMessage, error)
	Close() error
}

// Client issues typed guest-agent calls over a Transport.
type Client struct {
	t Transport
}

// NewClient returns a client over t.
func NewClient(t Transport) *Client { return &Client{t: t} }

// Close closes the transport.
func (c *Client) Close() error { return c.t.Close() }

// call executes command and decodes its return value into out (if non-nil).
func (c *Client) call(ctx context.Context, command string, args, out any) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultTimeout)
		defer cancel()
	}
	raw, err := c.t.Execute(ctx, command, args)
	if err != nil {
		return err
	}
	if out == nil {
		return nil
	}
	// json.Unmarshal takes null for a zero value: a thaw would report
	// "0 thawed" for a reply that says nothing.
	if string(bytes.TrimSpace(raw)) == "null" {
		return fmt.Errorf("%w: %s: null reply", ErrProtocol, command)
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("%w: %s: decoding reply: %w", ErrProtocol, command, err)
	}
	return nil
}

// Ping checks that the agent answers.
func (c *Client) Ping(ctx context.Context) error {
	return c.call(ctx, "guest-ping", nil, nil)
}

// Info returns the agent's version and commands.
func (c *Client) Info(ctx context.Context) (*Info, error) {
	var info Info
	if err := c.call(ctx, "guest-info", nil, &info); err != nil {
		return nil, err
	}
	return &info, nil
}

// FSInfo returns the guest's mounted file systems and their disks.
func (c *Client) FSInfo(ctx context.Context) ([]FileSystem, error) {
	var fs []FileSystem
	if err := c.call(ctx, "guest-get-fsinfo", nil, &fs); err != nil {
		return nil, err
	}
	return fs, nil
}

// FreezeList freezes the file systems mounted at mountpoints and returns
// how many it froze. A nil or empty list would freeze every file system, so
// it is refused: use FreezeAll for that.
func (c *Client) FreezeList(ctx context.Context, mountpoints []string) (int, error) {
	if len(mountpoints) == 0 {
		return 0, fmt.Errorf("%w: freeze-list needs at least one mount point", ErrProtocol)
	}
	var n int
	err := c.call(ctx, "guest-fsfreeze-freeze-list", map[string]any{"mountpoints": mountpoints}, &n)
	return n, err
}

// FreezeAll freezes every guest file system and returns how many it froze.
func (c *Client) FreezeAll(ctx context.Context) (int, error) {
	var n int
	err := c.call(ctx, "guest-fsfreeze-freeze", nil, &n)
	return n, err
}

// Thaw thaws every frozen file system and returns how many it thawed.
func (c *Client) Thaw(ctx context.Context) (int, error) {
	var n int
	err := c.call(ctx, "guest-fsfreeze-thaw", nil, &n)
	return n, err
}

// FreezeStatus returns whether the guest's file systems are frozen.
func (c *Client) FreezeStatus(ctx context.Context) (FreezeStatus, error) {
	var s FreezeStatus
	if err := c.call(ctx, "guest-fsfreeze-status", nil, &s); err != nil {
		return "", err
	}
	if s != Frozen && s != Thawed {
		return "", fmt.Errorf("%w: guest-fsfreeze-status: unknown status %.64q", ErrProtocol, string(s))
	}
	return s, nil
}

// Exec starts a program in the guest and returns its pid; the agent keeps
// its output for ExecStatus when capture is true.
func (c *Client) Exec(ctx context.Context, path string, args []string, input []byte, capture bool) (int, error) {
	a := map[string]any{"path": path, "capture-output": capture}
	if len(args) > 0 {
		a["arg"] = args
	}
	if input != nil {
		a["input-data"] = input // []byte marshals as base64, as the agent expects
	}
	var r struct {
		PID int `json:"pid"`
	}
	if err := c.call(ctx, "guest-exec", a, &r); err != nil {
		return 0, err
	}
	return r.PID, nil
}

// ExecStatus returns the state of a program started with Exec.
func (c *Client) ExecStatus(ctx context.Context, pid int) (*ExecStatus, error) {
	var s ExecStatus
	if err := c.call(ctx, "guest-exec-status", map[string]any{"pid": pid}, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// Run starts a program in the guest, waits for it to exit (polling until
// ctx ends) and returns its status with captured output.
func (c *Client) Run(ctx context.Context, path string, args ...string) (*ExecStatus, error) {
	pid, err := c.Exec(ctx, path, args, nil, true)
	if err != nil {
		return nil, err
	}
	delay := 5 * time.Millisecond
	for {
		st, err := c.ExecStatus(ctx, pid)
		if err != nil {
			return nil, err
		}
		if st.Exited {
			return st, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %s still running: %w", ErrTimeout, path, ctx.Err())
		case <-time.After(delay):
		}
		if delay < 200*time.Millisecond {
			delay *= 2
		}
	}
}
