package agenttest

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync/atomic"
	"time"
)

// Command is one command the agent received.
type Command struct {
	// Name is the "execute" member, e.g. guest-fsfreeze-freeze-list.
	Name string
	// Args is the "arguments" member, nil if absent.
	Args json.RawMessage
	// ID is the "id" member, nil if absent; the reply echoes it.
	ID json.RawMessage
}

// ErrorReply is an error reply: the agent's error class and description.
type ErrorReply struct {
	// Class is the error class, e.g. "GenericError", "CommandNotFound".
	Class string
	// Desc is the description.
	Desc string
}

// Action is how the agent treats one command. The zero Action runs the
// command and replies normally. The steps run in field order; the agent
// handles no other command until they are done.
type Action struct {
	// Wait, if non-nil, holds the command (and the agent) until the
	// channel is closed or the agent is closed: a hang. A command still
	// held when its connection is gone is not run.
	Wait <-chan struct{}
	// Delay holds the command (and the agent) this long before it runs.
	Delay time.Duration
	// Before is written first, verbatim: garbage, a stale sync reply
	// (StaleSync), a late reply (LateReply).
	Before []byte
	// ReplayPrevious writes the reply to the previous command (on any
	// connection) again first, as if it arrived late.
	ReplayPrevious bool
	// Error answers with this error instead of running the command.
	Error *ErrorReply
	// Return answers with this value as the "return" member (echoing the
	// request's id) after running the command.
	Return json.RawMessage
	// Reply is written instead of the reply, verbatim, after running the
	// command.
	Reply []byte
	// NoReply runs the command and sends nothing.
	NoReply bool
	// Drop writes the first half of the reply and closes the connection.
	Drop bool
	// Close closes the connection after the steps above.
	Close bool
}

// Fault picks the Action for each command.
type Fault func(c Command) Action

// On returns a Fault that applies a to every command named name.
func On(name string, a Action) Fault {
	return func(c Command) Action {
		if c.Name == name {
			return a
		}
		return Action{}
	}
}

// Once returns a Fault that applies a to the first command named name
// only.
func Once(name string, a Action) Fault {
	var done atomic.Bool
	return func(c Command) Action {
		if c.Name == name && done.CompareAndSwap(false, true) {
			return a
		}
		return Action{}
	}
}

// Chain returns a Fault that asks each fault in turn and applies the first
// non-zero Action.
func Chain(faults ...Fault) Fault {
	return func(c Command) Action {
		for _, f := range faults {
			if a := f(c); !a.isZero() {
				return a
			}
		}
		return Action{}
	}
}

// isZero reports whether a is the zero Action.
func (a Action) isZero() bool {
	return a.Wait == nil && a.Delay == 0 && a.Before == nil && !a.ReplayPrevious &&
		a.Error == nil && a.Return == nil && a.Reply == nil && !a.NoReply && !a.Drop && !a.Close
}

// StaleSync returns the bytes of a reply to guest-sync-delimited with the
// given id (0xFF, then {"return": id}), as the agent sends it for a sync
// the client has given up on.
func StaleSync(id int64) []byte {
	return fmt.Appendf(nil, "\xff{\"return\": %d}\n", id)
}

// LateReply returns the bytes of a reply with the given return value and
// id, as the agent sends it for a command the client has given up on.
func LateReply(ret any, id string) []byte {
	return encodeReply(map[string]any{"return": ret, "id": id})
}

// Oversized returns a string value of about n bytes, for Action.Return.
func Oversized(n int) json.RawMessage {
	return json.RawMessage(`"` + strings.Repeat("x", n) + `"`)
}
