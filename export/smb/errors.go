package smb

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"

	"github.com/hirochachacha/go-smb2"

	"github.com/twinsnap/twinsnap/export"
)

// ErrNotEncrypted reports a session that is not encrypted although
// Config.RequireEncryption asks for it.
var ErrNotEncrypted = errors.New("smb: session is not encrypted")

// NTSTATUS codes that go-smb2 v1.1.0 passes through as *smb2.ResponseError
// (it maps OBJECT_NAME_NOT_FOUND, OBJECT_PATH_NOT_FOUND, OBJECT_NAME_COLLISION
// and ACCESS_DENIED to os errors itself). Its erref package is internal.
const (
	statusNoSuchFile             = 0xC000000F
	statusObjectNameInvalid      = 0xC0000033
	statusObjectPathSyntaxBad    = 0xC000003B
	statusNetworkNameDeleted     = 0xC00000C9
	statusFileClosed             = 0xC0000128
	statusUserSessionDeleted     = 0xC0000203
	statusInsuffServerResources  = 0xC0000205
	statusConnectionDisconnected = 0xC000020C
	statusConnectionReset        = 0xC000020D
	statusNetworkSessionExpired  = 0xC000035C
)

// classify wraps err from go-smb2 or the network with the export error
// class it belongs to: ErrNotExist, ErrExist, ErrInvalidName, or
// ErrTransient for a broken connection, a lost session or tree, a call
// cut off by the call timeout, and a refused or reset TCP connection. A
// context's own end stays what it is (not transient): the caller gave up.
func classify(op, name string, err error) error {
	if err == nil {
		return nil
	}
	wrap := func(class error) error {
		return fmt.Errorf("smb: %s %q: %w: %w", op, name, class, err)
	}
	var ctxErr *smb2.ContextError
	if errors.As(err, &ctxErr) {
		return fmt.Errorf("smb: %s %q: %w", op, name, ctxErr.Err)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("smb: %s %q: %w", op, name, err)
	}
	switch {
	case errors.Is(err, os.ErrNotExist):
		return wrap(export.ErrNotExist)
	case errors.Is(err, os.ErrExist):
		return wrap(export.ErrExist)
	}
	if unsignedInterim(err) {
		return wrap(export.ErrTransient)
	}
	var resp *smb2.ResponseError
	if errors.As(err, &resp) {
		switch resp.Code {
		case statusNoSuchFile:
			return wrap(export.ErrNotExist)
		case statusObjectNameInvalid, statusObjectPathSyntaxBad:
			return wrap(export.ErrInvalidName)
		case statusNetworkNameDeleted, statusFileClosed, statusUserSessionDeleted,
			statusInsuffServerResources, statusConnectionDisconnected,
			statusConnectionReset, statusNetworkSessionExpired:
			return wrap(export.ErrTransient)
		}
		return fmt.Errorf("smb: %s %q: %w", op, name, err)
	}
	if transientNet(err) {
		return wrap(export.ErrTransient)
	}
	return fmt.Errorf("smb: %s %q: %w", op, name, err)
}

// transientNet reports a failure of the connection itself.
func transientNet(err error) bool {
	var te *smb2.TransportError
	var ne net.Error
	switch {
	case errors.As(err, &te):
		return true
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, net.ErrClosed),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.ECONNABORTED), errors.Is(err, syscall.EPIPE),
		errors.Is(err, syscall.ETIMEDOUT), errors.Is(err, syscall.EHOSTUNREACH),
		errors.Is(err, syscall.ENETUNREACH):
		return true
	case errors.As(err, &ne):
		return true
	}
	return false
}

// unsignedInterim reports go-smb2 v1.1.0's "signing required" failure: on
// a connection whose server requires signing, go-smb2 checks the
// signature of an interim response (STATUS_PENDING, sent when the server
// answers asynchronously: Samba does so for flushes, and for reads and
// writes with its asynchronous I/O on) before looking at its status, and
// fails the request, although MS-SMB2 3.3.4.2 leaves interim responses
// unsigned. The request still completes at the server; go-smb2 drops the
// final response and gives back the request's credits. The library offers
// no error class for it, so the message text is matched.
func unsignedInterim(err error) bool {
	var ire *smb2.InvalidResponseError
	return errors.As(err, &ire) && ire.Message == "signing required"
}
