// Command twinsnap is the admin CLI of a twinsnap system. It talks to any
// node's HTTP API over mutually authenticated TLS 1.3 (internal/api) and
// maps every error to a documented exit code (see exit.go and
// docs/cli.md).
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/term"
)

// main runs the CLI; the first interrupt cancels the command's context,
// a second one ends the process.
func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // restore the default: a second interrupt kills
	}()
	code := run(ctx, os.Args[1:], osEnv())
	stop()
	os.Exit(code)
}

// defaultPollInterval is how often a waiting command asks for news.
const defaultPollInterval = 500 * time.Millisecond

// cliEnv is what the CLI needs from its process: standard streams, the
// environment, whether stdin and stdout are terminals, the time zone and
// how often to poll. Tests supply their own; the fields after
// stdinIsTerminal may be left zero.
type cliEnv struct {
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	// getenv reads an environment variable.
	getenv func(string) string
	// stdinIsTerminal reports whether an operator can answer a prompt.
	stdinIsTerminal func() bool
	// readPassword reads one line from the terminal on stdin without
	// echoing it, and restores the terminal when ctx ends first; nil
	// when there is no terminal to read from.
	readPassword func(ctx context.Context) ([]byte, error)
	// stdoutTerminal reports whether stdout is a terminal (progress is
	// redrawn in place there) and its width in columns, 0 when unknown.
	stdoutTerminal func() (width int, ok bool)
	// location is the time zone times are shown in; nil means time.Local.
	location *time.Location
	// pollInterval is how often a waiting command asks the API; 0 means
	// defaultPollInterval.
	pollInterval time.Duration
}

// terminalWidth reports whether stdout is a terminal, and its width.
func (e *cliEnv) terminalWidth() (int, bool) {
	if e.stdoutTerminal == nil {
		return 0, false
	}
	return e.stdoutTerminal()
}

// zone returns the time zone times are shown in.
func (e *cliEnv) zone() *time.Location {
	if e.location == nil {
		return time.Local
	}
	return e.location
}

// interval returns how often a waiting command polls.
func (e *cliEnv) interval() time.Duration {
	if e.pollInterval <= 0 {
		return defaultPollInterval
	}
	return e.pollInterval
}

// osEnv returns the environment of the running process.
func osEnv() *cliEnv {
	return &cliEnv{
		stdin:           os.Stdin,
		stdout:          os.Stdout,
		stderr:          os.Stderr,
		getenv:          os.Getenv,
		stdinIsTerminal: func() bool { return term.IsTerminal(int(os.Stdin.Fd())) },
		readPassword: func(ctx context.Context) ([]byte, error) {
			return readPasswordNoEcho(ctx, int(os.Stdin.Fd()))
		},
		stdoutTerminal: func() (int, bool) {
			fd := int(os.Stdout.Fd())
			if !term.IsTerminal(fd) {
				return 0, false
			}
			w, _, err := term.GetSize(fd)
			if err != nil {
				w = 0
			}
			return w, true
		},
	}
}

// readPasswordNoEcho reads a line from the terminal fd with echo turned
// off. term.ReadPassword cannot be cancelled: when ctx ends first (Ctrl-C)
// the terminal's state is restored here, so that the shell does not get
// it back without echo, and the read is left to the process's exit.
func readPasswordNoEcho(ctx context.Context, fd int) ([]byte, error) {
	state, err := term.GetState(fd)
	if err != nil {
		return nil, fmt.Errorf("reading the terminal's state: %w", err)
	}
	type answer struct {
		line []byte
		err  error
	}
	answers := make(chan answer, 1)
	go func() {
		line, err := term.ReadPassword(fd)
		answers <- answer{line, err}
	}()
	select {
	case a := <-answers:
		return a.line, a.err
	case <-ctx.Done():
		_ = term.Restore(fd, state)
		return nil, ctx.Err()
	}
}
