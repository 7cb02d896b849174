package state

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/twinsnap/twinsnap/cluster/command"
)

// seedCheckpoints returns checkpoints to start fuzzing from: the golden
// checkpoint, and the state left by applying every golden command sample
// of cluster/command to a small cluster.
func seedCheckpoints(f *testing.F) [][]byte {
	var seeds [][]byte
	for _, v := range []string{"v1", "v2"} {
		if b, err := os.ReadFile(filepath.Join("testdata", "checkpoint-"+v+".bin")); err == nil {
			seeds = append(seeds, b)
		}
	}
	h := newHarness(f)
	h.cluster()
	files, err := filepath.Glob(filepath.Join("..", "command", "testdata", "*.bin"))
	if err != nil || len(files) == 0 {
		f.Fatalf("no command samples: %v", err)
	}
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		h.index++
		h.st.Apply(h.index, 9, b) // refusals are fine; decoding must not fail
	}
	seeds = append(seeds, checkpointBytes(f, h.st), checkpointBytes(f, New()))
	return seeds
}

// FuzzRestore feeds arbitrary streams to Restore. It must never panic; a
// refused stream leaves the state alone; an accepted one re-encodes to a
// checkpoint that restores to the same digest.
func FuzzRestore(f *testing.F) {
	for _, s := range seedCheckpoints(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		st := New()
		before := st.Digest()
		if err := st.Restore(bytes.NewReader(b)); err != nil {
			if !errors.Is(err, ErrCheckpointCorrupt) && !errors.Is(err, ErrCheckpointTruncated) && !errors.Is(err, ErrCheckpointVersion) {
				t.Fatalf("Restore error of unknown class: %v", err)
			}
			if st.Digest() != before {
				t.Fatalf("refused Restore changed the state")
			}
			return
		}
		d := st.Digest()
		again := New()
		if err := again.Restore(bytes.NewReader(checkpointBytes(t, st))); err != nil {
			t.Fatalf("re-encoded checkpoint refused: %v", err)
		}
		if again.Digest() != d {
			t.Fatalf("re-encoded checkpoint restores to another state")
		}
	})
}

// TestGoldenCommandsApply applies every golden command sample: none may
// panic, and the sample log replays to the same state.
func TestGoldenCommandsApply(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "command", "testdata", "*.bin"))
	if err != nil || len(files) < 20 {
		t.Fatalf("found %d command samples: %v", len(files), err)
	}
	run := func() [32]byte {
		h := newHarness(t)
		h.cluster()
		for _, file := range files {
			b, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			h.index++
			h.st.Apply(h.index, 9, b)
		}
		return h.st.Digest()
	}
	first, second := run(), run()
	if first != second {
		t.Fatalf("replaying the command samples is not deterministic")
	}
}

// FuzzApply feeds arbitrary log entries to a populated state. Apply may
// panic only with *ApplyError, and only for entries command.Decode
// rejects; everything else is applied or refused, the same way every time.
func FuzzApply(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("..", "command", "testdata", "*.bin"))
	if err != nil {
		f.Fatal(err)
	}
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	fixture := func(t testing.TB) *State {
		h := newHarness(t)
		h.cluster()
		h.completeSnapshot("snap-0", nil, "vol-1", "vol-2")
		h.ok(created("snap-1", "vm-1", 1, gib, "vol-1"))
		return h.st
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		apply := func() (digest [32]byte, res Result, panicked any) {
			st := fixture(t)
			func() {
				defer func() { panicked = recover() }()
				res = st.Apply(100, 9, b)
			}()
			return st.Digest(), res, panicked
		}
		d1, r1, p1 := apply()
		if p1 != nil {
			var ae *ApplyError
			if e, ok := p1.(error); !ok || !errors.As(e, &ae) {
				t.Fatalf("Apply panicked with %v", p1)
			}
			if _, err := command.Decode(b); err == nil {
				t.Fatalf("Apply panicked on a decodable entry: %v", p1)
			}
			return
		}
		d2, r2, _ := apply()
		if d1 != d2 || ErrorCode(r1.Err) != ErrorCode(r2.Err) {
			t.Fatalf("the same entry applied twice gave different results: %v / %v", r1.Err, r2.Err)
		}
	})
}
