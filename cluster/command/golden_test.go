package command

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.bin from the samples (a deliberate format change)")

func sortedNames(m map[string]Command) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// TestGolden fails when the encoding of any sample changes: the bytes in
// testdata/ are what older nodes have in their logs.
func TestGolden(t *testing.T) {
	s := samples()
	covered := map[Type]bool{}
	for _, name := range sortedNames(s) {
		c := s[name]
		path := filepath.Join("testdata", name+".bin")
		got, err := Encode(c)
		if err != nil {
			t.Fatalf("%s: Encode: %v", name, err)
		}
		if *update {
			if err := os.WriteFile(path, got, 0o644); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%s: %v (run go test -run Golden -update to create it)", name, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: encoding changed; a payload change needs a new payload version\n got %q\nwant %q", name, got, want)
		}
		dec, err := Decode(want)
		if err != nil {
			t.Fatalf("%s: Decode golden: %v", name, err)
		}
		if !reflect.DeepEqual(dec, c) {
			t.Fatalf("%s: Decode golden = %#v, want %#v", name, dec, c)
		}
		covered[c.Type()] = true
	}
	for _, typ := range Types() {
		if !covered[typ] {
			t.Fatalf("command %s has no golden sample in samples()", typ)
		}
	}
	files, err := filepath.Glob(filepath.Join("testdata", "*.bin"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if _, ok := s[strings.TrimSuffix(filepath.Base(f), ".bin")]; !ok {
			t.Fatalf("%s has no sample in samples(); a golden file is never dropped while its type can be decoded", f)
		}
	}
}
