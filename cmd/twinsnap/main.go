// Command twinsnap is the admin CLI of a twinsnap system. It talks to any
// node's HTTP API over mutually authenticated TLS 1.3 (internal/api) and
// maps every error to a documented exit code (see exit.go and
// docs/cli.md).
package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"syscall"

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

// cliEnv is what the CLI needs from its process: standard streams, the
// environment and whether stdin is a terminal. Tests supply their own.
type cliEnv struct {
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	// getenv reads an environment variable.
	getenv func(string) string
	// stdinIsTerminal reports whether an operator can answer a prompt.
	stdinIsTerminal func() bool
}

// osEnv returns the environment of the running process.
func osEnv() *cliEnv {
	return &cliEnv{
		stdin:           os.Stdin,
		stdout:          os.Stdout,
		stderr:          os.Stderr,
		getenv:          os.Getenv,
		stdinIsTerminal: func() bool { return term.IsTerminal(int(os.Stdin.Fd())) },
	}
}
