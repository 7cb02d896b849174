package main

import (
	"os"
	"strings"
	"testing"
)

// TestNewCommandsHelpAndDocs checks the help of the snapshot,
// volume-container, vm create-from-snapshot, share, export, import and
// job commands for the exit codes, and docs/cli.md for a section per
// command.
func TestNewCommandsHelpAndDocs(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../../docs/cli.md")
	if err != nil {
		t.Fatalf("reading docs/cli.md: %v", err)
	}
	for _, path := range []string{
		"snapshot create", "snapshot list", "snapshot show", "snapshot delete",
		"vm create-from-snapshot", "volume-container list", "volume-container expand",
		"share add", "share list", "share remove", "snapshot export", "import",
		"job list", "job show", "job cancel", "job wait",
	} {
		r := runCLI(t, append(strings.Fields(path), "--help")...)
		if r.code != 0 || !strings.Contains(r.stdout, exitCodesHelp) {
			t.Fatalf("%s --help: exit %d, no exit codes in:\n%s", path, r.code, r.stdout)
		}
		if !strings.Contains(string(doc), "\n### "+path) {
			t.Fatalf("docs/cli.md has no section for %s", path)
		}
	}
}
