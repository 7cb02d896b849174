package hypervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/twinsnap/twinsnap/guestagent"
)

// Errors of the hypervisor package.
var (
	// ErrTimeout: QEMU or libvirt did not answer within the bound.
	ErrTimeout = errors.New("hypervisor: timed out")
	// ErrClosed: the connection to QEMU or libvirt is closed or lost.
	ErrClosed = errors.New("hypervisor: connection closed")
	// ErrProtocol: a reply or event that is not valid QMP.
	ErrProtocol = errors.New("hypervisor: protocol error")
	// ErrNotFound: the VM, device or job does not exist.
	ErrNotFound = errors.New("hypervisor: not found")
	// ErrJobFailed: a block job ended with an error or was cancelled.
	ErrJobFailed = errors.New("hypervisor: job failed")
)

// QMPError is an error reply from QEMU; Class keeps QEMU's error class
// (GenericError, CommandNotFound, DeviceNotFound, ...).
type QMPError struct {
	Command string
	Class   string
	Desc    string
}

// Error implements error.
func (e *QMPError) Error() string {
	return fmt.Sprintf("hypervisor: qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// Event is a QMP event.
type Event struct {
	Name string          `json:"event"`
	Data json.RawMessage `json:"data,omitempty"`
	// Time is QEMU's timestamp of the event.
	Time time.Time `json:"-"`
}

// QMP is a connection to a VM's QEMU monitor. Every call is bounded by its
// context; events are delivered to subscribers without ever blocking the
// connection's reader.
type QMP interface {
	// Execute runs one command and decodes its "return" member into out
	// (which may be nil). QEMU's error replies come back as *QMPError.
	Execute(ctx context.Context, command string, args, out any) error
	// Subscribe delivers the events for which match returns true (all
	// events when match is nil) until cancel is called or the connection
	// closes, when the channel is closed. Subscribe before starting what
	// emits the events.
	Subscribe(match func(Event) bool) (events <-chan Event, cancel func())
	// Close closes the connection.
	Close() error
}

// Machine is one VM reached through a driver: its QEMU monitor and its
// guest agent.
type Machine interface {
	// Name is the VM's name (libvirt domain name, or the QEMU -name).
	Name() string
	// QMP returns the monitor connection.
	QMP() QMP
	// Agent returns the guest-agent transport (the agent socket for bare
	// QEMU, libvirt for libvirt domains).
	Agent() guestagent.Transport
	// Close releases the connections (the VM keeps running).
	Close() error
}
