package state

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// forbiddenImports may not appear in the package's non-test files: the
// state machine reads no clock, draws no random numbers and does no I/O of
// its own. The list in doc.go and the depguard rule in .golangci.yml
// mirror it.
var forbiddenImports = map[string]string{
	"math/rand":                 "randomness",
	"math/rand/v2":              "randomness",
	"crypto/rand":               "randomness",
	"os":                        "I/O",
	"os/exec":                   "I/O",
	"os/signal":                 "I/O",
	"net":                       "I/O",
	"net/http":                  "I/O",
	"io/ioutil":                 "I/O",
	"io/fs":                     "I/O",
	"syscall":                   "I/O",
	"unsafe":                    "memory tricks",
	"github.com/hashicorp/raft": "the Raft library (the cluster package adapts to it)",
}

// allowedTimeNames are the only package-level names of time the state
// machine may use: types, never clocks or timers.
var allowedTimeNames = map[string]bool{"Time": true, "Duration": true}

// checkDeterministic returns the first forbidden import or use of package
// time in f: anything beyond the Time and Duration types, and project
// imports other than cluster/command.
func checkDeterministic(fset *token.FileSet, f *ast.File) error {
	timeName := ""
	for _, imp := range f.Imports {
		p, _ := strconv.Unquote(imp.Path.Value)
		pos := fset.Position(imp.Pos())
		if why, bad := forbiddenImports[p]; bad {
			return fmt.Errorf("%s imports %s (%s): the state machine must stay deterministic", pos, p, why)
		}
		if strings.HasPrefix(p, "github.com/hashicorp/raft") {
			return fmt.Errorf("%s imports %s: keep Raft out of cluster/state", pos, p)
		}
		if strings.HasPrefix(p, "github.com/twinsnap/twinsnap/") && p != "github.com/twinsnap/twinsnap/cluster/command" {
			return fmt.Errorf("%s imports %s: cluster/state imports only cluster/command", pos, p)
		}
		if p == "time" {
			timeName = "time"
			if imp.Name != nil {
				timeName = imp.Name.Name
			}
			if timeName == "." || timeName == "_" {
				return fmt.Errorf("%s: import time by name", pos)
			}
		}
	}
	if timeName == "" {
		return nil
	}
	var err error
	ast.Inspect(f, func(n ast.Node) bool {
		sel, ok := n.(*ast.SelectorExpr)
		if !ok || err != nil {
			return err == nil
		}
		if id, ok := sel.X.(*ast.Ident); ok && id.Name == timeName && !allowedTimeNames[sel.Sel.Name] {
			err = fmt.Errorf("%s uses time.%s: the state machine reads no clock and starts no timer; the proposer stamps times",
				fset.Position(sel.Pos()), sel.Sel.Name)
		}
		return err == nil
	})
	return err
}

// TestDeterministicImports parses the package's non-test files and fails
// on a forbidden import or a use of the clock.
func TestDeterministicImports(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	checked := 0
	for _, file := range files {
		if strings.HasSuffix(file, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, file, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := checkDeterministic(fset, f); err != nil {
			t.Fatal(err)
		}
		checked++
	}
	if checked < 5 {
		t.Fatalf("checked only %d files", checked)
	}
}

// TestDeterministicImportsCatches makes sure the check above bites.
func TestDeterministicImportsCatches(t *testing.T) {
	bad := map[string]string{
		"clock":       "package x\nimport \"time\"\nvar _ = time.Now()",
		"renamed":     "package x\nimport tm \"time\"\nfunc f() { tm.Sleep(1) }",
		"timer":       "package x\nimport \"time\"\nvar _ = time.NewTimer",
		"since":       "package x\nimport \"time\"\nvar t time.Time\nvar _ = time.Since(t)",
		"rand":        "package x\nimport \"math/rand/v2\"\nvar _ = rand.Int",
		"crypto rand": "package x\nimport \"crypto/rand\"\nvar _ = rand.Reader",
		"os":          "package x\nimport \"os\"\nvar _ = os.Getpid",
		"exec":        "package x\nimport \"os/exec\"\nvar _ = exec.Command",
		"net":         "package x\nimport \"net\"\nvar _ = net.Dial",
		"ioutil":      "package x\nimport \"io/ioutil\"\nvar _ = ioutil.ReadAll",
		"raft":        "package x\nimport \"github.com/hashicorp/raft\"\nvar _ raft.FSM",
		"project":     "package x\nimport \"github.com/twinsnap/twinsnap/volumes\"\nvar _ = volumes.X",
	}
	for name, src := range bad {
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, name+".go", src, 0)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if checkDeterministic(fset, f) == nil {
			t.Fatalf("%s: not caught", name)
		}
	}
	good := "package x\nimport \"time\"\nvar t time.Time\nvar d time.Duration\nvar _ = t.UTC().Add(d)"
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "good.go", good, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkDeterministic(fset, f); err != nil {
		t.Fatalf("types-only use of time refused: %v", err)
	}
}
