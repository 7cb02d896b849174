package state

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// seedCheckpoints returns checkpoints to start fuzzing from: the golden
// checkpoint, and the state left by applying every golden command sample
// of cluster/command to a small cluster.
func seedCheckpoints(f *testing.F) [][]byte {
	var seeds [][]byte
	if b, err := os.ReadFile(filepath.Join("testdata", "checkpoint-v1.bin")); err == nil {
		seeds = append(seeds, b)
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
