package command

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImports keeps the vocabulary a leaf: no project package (DESIGN.md)
// and no Raft library, so that every layer can depend on it.
func TestImports(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, file := range files {
		if strings.HasSuffix(file, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, file, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if strings.HasPrefix(p, "github.com/twinsnap/") || strings.HasPrefix(p, "github.com/hashicorp/raft") {
				t.Fatalf("%s imports %s; cluster/command imports no project package and not Raft", fset.Position(imp.Pos()), p)
			}
		}
	}
}
