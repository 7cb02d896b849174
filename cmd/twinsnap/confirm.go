package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"
)

// confirm asks the operator a yes/no question on stderr and reads the
// answer from stdin. It returns nil only for "y" or "yes"; a usage error
// when the answer is anything else or stdin is not a terminal (scripts
// must pass --yes).
func confirm(env *cliEnv, question string) error {
	if !env.stdinIsTerminal() {
		return withHint(usagef("stdin is not a terminal, so no one can confirm: refusing without --yes"),
			"pass --yes to confirm from a script")
	}
	if _, err := fmt.Fprintf(env.stderr, "%s [y/N] ", question); err != nil {
		return fmt.Errorf("asking for confirmation: %w", err)
	}
	line, err := bufio.NewReader(env.stdin).ReadString('\n')
	if err != nil && (!errors.Is(err, io.EOF) || line == "") {
		return withHint(usagef("no confirmation given: aborted"), "nothing was changed")
	}
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return nil
	}
	return withHint(usagef("not confirmed: aborted"), "nothing was changed")
}
