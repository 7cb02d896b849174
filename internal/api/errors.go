package api

import (
	"errors"
	"fmt"
	"net/http"
)

// Error codes carried in ErrorDetail.Code. They are stable: clients and
// scripts match on them.
const (
	CodeInvalid       = "invalid"        // 400: the request is malformed or refused by validation
	CodeUnauthorized  = "unauthorized"   // 401/403: no or wrong certificate role
	CodeNotFound      = "not_found"      // 404
	CodeConflict      = "conflict"       // 409: exists, in use, invalid transition, fenced
	CodeDisabled      = "disabled"       // 409: snapshots are disabled
	CodeNoSpace       = "no_space"       // 507: a volume container lacks room
	CodeUnavailable   = "unavailable"    // 503: no leader, quorum lost, node shutting down
	CodeUnknownResult = "unknown_result" // 504: a write was sent but its outcome is unknown
	CodeInternal      = "internal"       // 500
)

// Sentinel errors the client returns, wrapped in *Error; match them with
// errors.Is.
var (
	ErrInvalid       = errors.New("invalid request")
	ErrUnauthorized  = errors.New("unauthorized")
	ErrNotFound      = errors.New("not found")
	ErrConflict      = errors.New("conflict")
	ErrDisabled      = errors.New("disabled")
	ErrNoSpace       = errors.New("no space")
	ErrUnavailable   = errors.New("unavailable")
	ErrUnknownResult = errors.New("outcome unknown")
	ErrInternal      = errors.New("internal error")
	// ErrConnect: the server could not be reached or the TLS handshake
	// failed.
	ErrConnect = errors.New("cannot reach the server")
)

var codes = map[string]struct {
	err    error
	status int
}{
	CodeInvalid:       {ErrInvalid, http.StatusBadRequest},
	CodeUnauthorized:  {ErrUnauthorized, http.StatusForbidden},
	CodeNotFound:      {ErrNotFound, http.StatusNotFound},
	CodeConflict:      {ErrConflict, http.StatusConflict},
	CodeDisabled:      {ErrDisabled, http.StatusConflict},
	CodeNoSpace:       {ErrNoSpace, http.StatusInsufficientStorage},
	CodeUnavailable:   {ErrUnavailable, http.StatusServiceUnavailable},
	CodeUnknownResult: {ErrUnknownResult, http.StatusGatewayTimeout},
	CodeInternal:      {ErrInternal, http.StatusInternalServerError},
}

// StatusFor returns the HTTP status of an error code.
func StatusFor(code string) int {
	if c, ok := codes[code]; ok {
		return c.status
	}
	return http.StatusInternalServerError
}

// Error is an error reply from the API.
type Error struct {
	Status int
	Detail ErrorDetail
}

// Error implements error.
func (e *Error) Error() string {
	if e.Detail.Leader != "" {
		return fmt.Sprintf("%s (leader: %s)", e.Detail.Message, e.Detail.Leader)
	}
	return e.Detail.Message
}

// Unwrap returns the sentinel of the error's code.
func (e *Error) Unwrap() error {
	if c, ok := codes[e.Detail.Code]; ok {
		return c.err
	}
	return ErrInternal
}
