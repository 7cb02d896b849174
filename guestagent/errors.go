package guestagent

import (
	"errors"
	"fmt"
)

// Sentinel errors. Errors returned by this package wrap one of them, or are
// an *Error carrying the agent's own error class.
var (
	// ErrTimeout reports that the agent did not answer within the bound.
	ErrTimeout = errors.New("guestagent: timed out")
	// ErrProtocol reports a reply that is not valid agent protocol:
	// garbage, a reply too large, or a reply of the wrong shape.
	ErrProtocol = errors.New("guestagent: protocol error")
	// ErrClosed reports a transport that was closed or lost.
	ErrClosed = errors.New("guestagent: connection closed")
)

// Error classes the agent returns (QEMU's QapiErrorClass).
const (
	ClassGenericError    = "GenericError"
	ClassCommandNotFound = "CommandNotFound"
	ClassDeviceNotActive = "DeviceNotActive"
	ClassDeviceNotFound  = "DeviceNotFound"
)

// Error is an error reply from the agent. Its Class is the agent's error
// class, e.g. GenericError or CommandNotFound.
type Error struct {
	// Command is the command the agent refused, e.g. guest-exec.
	Command string
	// Class is the agent's error class, e.g. ClassCommandNotFound.
	Class string
	// Desc is the agent's description, e.g. "Command guest-exec has
	// been disabled: the agent is in frozen state".
	Desc string
}

// Error implements error.
func (e *Error) Error() string {
	return fmt.Sprintf("guestagent: %s: %s: %s", e.Command, e.Class, e.Desc)
}

// Is reports whether target is an *Error of the same class, so that
// errors.Is(err, &Error{Class: ClassCommandNotFound}) matches by class.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Class == e.Class && (t.Command == "" || t.Command == e.Command) && t.Desc == ""
}

// IsClass reports whether err is an agent error of the given class.
func IsClass(err error, class string) bool {
	var e *Error
	return errors.As(err, &e) && e.Class == class
}
