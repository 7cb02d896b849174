package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/twinsnap/twinsnap/internal/api"
)

// The exit codes of twinsnap. They are stable: scripts rely on them, and
// docs/cli.md lists them.
const (
	exitOK            = 0
	exitInternal      = 1
	exitUsage         = 2
	exitConnect       = 3
	exitUnauthorized  = 4
	exitNotFound      = 5
	exitConflict      = 6
	exitUnavailable   = 7
	exitUnknownResult = 8
	exitNoSpace       = 9
	exitInvalid       = 10
)

// errUsage marks bad flags or arguments, including cobra's own parse
// errors and a confirmation that is missing or declined.
var errUsage = errors.New("usage error")

// errTLSSetup marks local TLS configuration problems: certificate or key
// files missing, unreadable or not matching. They exit like a failed TLS
// handshake.
var errTLSSetup = errors.New("TLS files")

// errFailed marks an operation that the cluster ran and that failed: a
// snapshot discarded, or an export or import job failed or cancelled,
// while the CLI waited for it. It exits 1.
var errFailed = errors.New("operation failed")

// errWaitEnded marks a wait that ended before the operation finished
// (--timeout, or an interrupt); the operation goes on. It exits 8, as an
// unknown outcome does.
var errWaitEnded = errors.New("stopped waiting")

// markedError gives an error a second identity: it matches mark (and
// still matches whatever it wraps) and keeps err's message.
type markedError struct{ mark, err error }

// Error returns the wrapped error's message.
func (e *markedError) Error() string { return e.err.Error() }

// Unwrap returns the mark and the wrapped error.
func (e *markedError) Unwrap() []error { return []error{e.mark, e.err} }

// markf returns an error with a formatted message that matches mark.
func markf(mark error, format string, args ...any) error {
	return &markedError{mark: mark, err: fmt.Errorf(format, args...)}
}

// usageError wraps an error so that it matches errUsage (and still matches
// whatever it wraps).
type usageError struct{ err error }

// Error returns the wrapped error's message.
func (e *usageError) Error() string { return e.err.Error() }

// Unwrap returns errUsage and the wrapped error.
func (e *usageError) Unwrap() []error { return []error{errUsage, e.err} }

// usagef returns a usage error with a formatted message.
func usagef(format string, args ...any) error {
	return &usageError{err: fmt.Errorf(format, args...)}
}

// hintError attaches an operator hint to an error.
type hintError struct {
	err  error
	hint string
}

// Error returns the wrapped error's message (the hint is printed apart).
func (e *hintError) Error() string { return e.err.Error() }

// Unwrap returns the wrapped error.
func (e *hintError) Unwrap() error { return e.err }

// withHint returns err carrying hint, which printError shows after the
// message.
func withHint(err error, hint string) error { return &hintError{err: err, hint: hint} }

// exitRule maps errors to an exit code.
type exitRule struct {
	code    int
	errs    []error
	meaning string
}

// exitRules are checked in order; the first rule with an error that
// errors.Is matches decides the exit code. Order matters where an error
// matches several rules: an unknown write outcome also wraps the
// connection error that caused it.
var exitRules = []exitRule{
	{exitUsage, []error{errUsage}, "usage error: bad flags or arguments, or a confirmation missing (--yes) or declined"},
	{exitUnknownResult, []error{api.ErrUnknownResult, errWaitEnded}, "outcome unknown: a change was sent but its result is not known, or waiting for it ended first (--timeout, interrupt); check before retrying"},
	{exitConnect, []error{api.ErrConnect, errTLSSetup}, "cannot reach any server, or TLS failure (certificate files missing or unusable, handshake refused)"},
	{exitUnauthorized, []error{api.ErrUnauthorized}, "unauthorized: the certificate's role may not do this"},
	{exitNotFound, []error{api.ErrNotFound}, "not found"},
	{exitConflict, []error{api.ErrConflict, api.ErrDisabled}, "conflict (exists, in use, invalid transition, fenced) or snapshots disabled"},
	{exitUnavailable, []error{api.ErrUnavailable}, "unavailable: no leader, quorum lost, or the node is shutting down"},
	{exitNoSpace, []error{api.ErrNoSpace}, "no space in a volume container"},
	{exitInvalid, []error{api.ErrInvalid}, "invalid request, refused by the server's validation"},
	{exitInternal, []error{api.ErrInternal, errFailed}, "failure: the operation failed on the cluster (a snapshot discarded, or an export or import job failed or cancelled, while waiting), or an internal or unexpected error"},
}

// exitCode returns the exit code for err: 0 for nil, the first matching
// rule's code, 1 for anything else.
func exitCode(err error) int {
	if err == nil {
		return exitOK
	}
	for _, r := range exitRules {
		for _, target := range r.errs {
			if errors.Is(err, target) {
				return r.code
			}
		}
	}
	return exitInternal
}

// exitCodesHelp is the "Exit codes:" block every command's help ends with.
var exitCodesHelp = func() string {
	rules := append([]exitRule{{exitOK, nil, "success"}}, exitRules...)
	sort.Slice(rules, func(i, j int) bool { return rules[i].code < rules[j].code })
	var b strings.Builder
	b.WriteString("Exit codes:\n")
	for _, r := range rules {
		fmt.Fprintf(&b, "  %2d  %s\n", r.code, r.meaning)
	}
	return b.String()
}()

// printError writes err to w as "twinsnap: <message>" lines, then any
// hint as "hint: ..." lines. cmd is the command that failed, if known.
func printError(w io.Writer, g *globalOptions, cmd *cobra.Command, err error) {
	var b strings.Builder
	for _, line := range strings.Split(strings.TrimRight(err.Error(), "\n"), "\n") {
		b.WriteString("twinsnap: " + line + "\n")
	}
	for _, h := range hints(g, cmd, err) {
		b.WriteString("hint: " + h + "\n")
	}
	_, _ = io.WriteString(w, b.String())
}

// hints returns what an operator may do about err.
func hints(g *globalOptions, cmd *cobra.Command, err error) []string {
	var out []string
	var h *hintError
	if errors.As(err, &h) {
		out = append(out, h.hint)
	}
	switch {
	case errors.Is(err, errUsage):
		if cmd != nil && len(out) == 0 {
			out = append(out, fmt.Sprintf("run '%s --help' for usage", cmd.CommandPath()))
		}
	case errors.Is(err, api.ErrUnknownResult):
		if len(out) == 0 {
			out = append(out, "the change may or may not have been applied: check (twinsnap node list, twinsnap settings show) before retrying")
		}
	case errors.Is(err, api.ErrConnect):
		out = append(out, connectHints(g, err)...)
	case errors.Is(err, api.ErrUnauthorized):
		out = append(out, "the server refused this certificate for this request: use an admin certificate issued by the cluster's CA (twinsnapd tls admin)")
	case errors.Is(err, api.ErrUnavailable):
		out = append(out, "the cluster may have no leader or have lost quorum: see 'twinsnap cluster status'")
	case errors.Is(err, api.ErrDisabled):
		out = append(out, "snapshots are disabled: turn them on with 'twinsnap settings snapshots enable'")
	}
	return out
}

// connectHints explains a failure to reach any server: which servers were
// tried, what a TLS error means and where the TLS files came from, or
// that the answer took longer than --timeout.
func connectHints(g *globalOptions, err error) []string {
	var out []string
	var verr *tls.CertificateVerificationError
	var herr x509.HostnameError
	var operr *net.OpError
	tlsErr := true
	switch {
	case errors.As(err, &herr):
		out = append(out, "the server's certificate does not name the address it was reached at: use the node's API address as its certificate lists it")
	case errors.As(err, &verr):
		out = append(out, "the server's certificate is not signed by the CA in the CA file: check --ca / --tls-dir")
	case errors.As(err, &operr) && operr.Op == "remote error":
		out = append(out, "the server refused the TLS handshake: use an admin certificate issued by this cluster's CA (twinsnapd tls admin)")
	default:
		tlsErr = false
	}
	if errors.Is(err, context.DeadlineExceeded) && g != nil {
		out = append(out, fmt.Sprintf("no answer within --timeout %s", g.timeout))
	}
	if g != nil && len(g.resolvedServers) > 0 {
		out = append(out, fmt.Sprintf("tried %s (set with --server or TWINSNAP_SERVER); check that twinsnapd runs there and serves its API on that address",
			strings.Join(g.resolvedServers, ", ")))
	}
	if tlsErr && g != nil && g.files.ca != "" {
		out = append(out, fmt.Sprintf("TLS files: %s, %s, %s (set with --tls-dir or TWINSNAP_TLS_DIR; --ca, --cert, --key override each)",
			g.files.ca, g.files.cert, g.files.key))
	}
	return out
}
