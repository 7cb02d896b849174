package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
)

// confirm asks the operator a yes/no question on stderr and reads the
// answer from stdin. It returns nil only for "y" or "yes"; a usage error
// when the answer is anything else, when ctx ends first (an interrupt), or
// when stdin is not a terminal (scripts must pass --yes).
func confirm(ctx context.Context, env *cliEnv, question string) error {
	if !env.stdinIsTerminal() {
		return withHint(usagef("stdin is not a terminal, so no one can confirm: refusing without --yes"),
			"pass --yes to confirm from a script")
	}
	if _, err := fmt.Fprintf(env.stderr, "%s [y/N] ", question); err != nil {
		return fmt.Errorf("asking for confirmation: %w", err)
	}
	type answer struct {
		line string
		err  error
	}
	// The read cannot be cancelled; on an interrupt the goroutine is left
	// to the process's exit.
	answers := make(chan answer, 1)
	go func() {
		line, err := bufio.NewReader(env.stdin).ReadString('\n')
		answers <- answer{line, err}
	}()
	var a answer
	select {
	case a = <-answers:
	case <-ctx.Done():
		return withHint(usagef("interrupted: aborted"), "nothing was changed")
	}
	if a.err != nil && (!errors.Is(a.err, io.EOF) || a.line == "") {
		return withHint(usagef("no confirmation given: aborted"), "nothing was changed")
	}
	switch strings.ToLower(strings.TrimSpace(a.line)) {
	case "y", "yes":
		return nil
	}
	return withHint(usagef("not confirmed: aborted"), "nothing was changed")
}
