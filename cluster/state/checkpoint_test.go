package state

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/cluster/command"
)

var update = flag.Bool("update", false, "rewrite testdata/checkpoint-v*.bin (a deliberate format change)")

func checkpointBytes(t testing.TB, st *State) []byte {
	t.Helper()
	var buf bytes.Buffer
	n, err := st.Checkpoint().WriteTo(&buf)
	if err != nil {
		t.Fatalf("WriteTo: %v", err)
	}
	if n != int64(buf.Len()) {
		t.Fatalf("WriteTo reported %d bytes, wrote %d", n, buf.Len())
	}
	return buf.Bytes()
}

func restored(t testing.TB, b []byte) *State {
	t.Helper()
	st := New()
	if err := st.Restore(bytes.NewReader(b)); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	return st
}

// TestCheckpointRoundTripPerRecordType restores a checkpoint holding every
// record kind, and every snapshot state, and compares each kind's records.
func TestCheckpointRoundTripPerRecordType(t *testing.T) {
	h := newHarness(t)
	scenario(h)
	// One snapshot in each remaining state.
	h.ok(created("s5", "vm-1", 3, gib, "vol-1")) // creating
	st := restored(t, checkpointBytes(t, h.st))

	states := map[SnapshotState]bool{}
	for _, s := range h.st.Snapshots(SnapshotFilter{}) {
		states[s.State] = true
	}
	for _, want := range []SnapshotState{Creating, Partial, Complete, Discarded, Deleting} {
		if !states[want] {
			t.Fatalf("fixture has no %s snapshot", want)
		}
	}
	if len(h.st.Settings().Values) == 0 || h.st.FenceTerm() == 0 || len(h.st.Jobs(JobFilter{})) < 2 || len(h.st.Shares()) < 2 {
		t.Fatalf("fixture lacks settings values, a fence term, jobs or shares")
	}
	// Every job field of format version 2 is set in some job of the fixture.
	jobs := h.st.Jobs(JobFilter{})
	jt := reflect.TypeFor[Job]()
	first, _ := jt.FieldByName("Share")
	for i := first.Index[0]; i < jt.NumField(); i++ {
		set := false
		for _, j := range jobs {
			set = set || !reflect.ValueOf(j).Field(i).IsZero()
		}
		if !set {
			t.Fatalf("no job of the fixture sets Job.%s", jt.Field(i).Name)
		}
	}

	kinds := map[string]func(*State) any{
		"meta": func(s *State) any {
			i, term := s.AppliedIndex()
			return [3]uint64{i, term, s.FenceTerm()}
		},
		"settings":   func(s *State) any { return s.Settings() },
		"nodes":      func(s *State) any { return s.Nodes() },
		"vms":        func(s *State) any { return s.VMs() },
		"containers": func(s *State) any { return s.Containers(ContainerFilter{}) },
		"snapshots":  func(s *State) any { return s.Snapshots(SnapshotFilter{}) },
		"jobs":       func(s *State) any { return s.Jobs(JobFilter{}) },
		"shares":     func(s *State) any { return s.Shares() },
		"snapshots of vm-1": func(s *State) any {
			return s.Snapshots(SnapshotFilter{VMID: "vm-1", States: []SnapshotState{Partial, Complete, Deleting}})
		},
	}
	for name, query := range kinds {
		t.Run(name, func(t *testing.T) {
			got, want := query(st), query(h.st)
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("after restore:\n got %+v\nwant %+v", got, want)
			}
		})
	}
	if st.Digest() != h.st.Digest() {
		t.Fatalf("digest differs after restore")
	}
	// The derived indexes are rebuilt: captures stay busy.
	h2 := &harness{t: t, st: st, index: h.index, term: h.term}
	c := created("s6", "vm-1", 3, gib, "vol-1")
	c.Name = "fresh"
	h2.refused(c, ErrInUse)
}

// TestCheckpointGolden pins each format version: the state of scenarioV1,
// which uses nothing of version 2, is written as version 1 with the bytes
// of testdata/checkpoint-v1.bin (what nodes of earlier releases wrote and
// read), and the state of scenario as version 2.
func TestCheckpointGolden(t *testing.T) {
	for version, build := range map[uint16]func(*harness){1: scenarioV1, 2: scenario} {
		h := newHarness(t)
		build(h)
		got := checkpointBytes(t, h.st)
		if v := binary.BigEndian.Uint16(got[len(checkpointMagic):]); v != version {
			t.Fatalf("scenario for version %d wrote version %d", version, v)
		}
		path := filepath.Join("testdata", fmt.Sprintf("checkpoint-v%d.bin", version))
		if *update {
			if err := os.MkdirAll("testdata", 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, got, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run go test -run CheckpointGolden -update)", err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("version %d: checkpoint encoding changed; bump CheckpointVersion and keep reading version %d (%d vs %d bytes)", version, version, len(got), len(want))
		}
		st := restored(t, want)
		if st.Digest() != h.st.Digest() {
			t.Fatalf("golden checkpoint version %d restores to another state", version)
		}
		if !bytes.Equal(checkpointBytes(t, st), want) {
			t.Fatalf("golden checkpoint version %d does not write back the same bytes", version)
		}
	}
}

// TestCheckpointIsImmutable: a checkpoint keeps its content while Apply
// changes every kind of record after it was taken.
func TestCheckpointIsImmutable(t *testing.T) {
	h := newHarness(t)
	h.cluster()
	h.completeSnapshot("s1", nil, "vol-1")
	cp := h.st.Checkpoint()
	var before bytes.Buffer
	if _, err := cp.WriteTo(&before); err != nil {
		t.Fatal(err)
	}
	digest := cp.Digest()
	h.ok(&command.SettingsSet{Values: map[string]string{"k": "v"}})
	h.ok(&command.NodeUpdated{Node: witness("w").Node})
	h.ok(&command.ContainerExpanded{VolumeID: "vol-1", Node: "node-a", CapacityBytes: 99 * gib})
	h.ok(&command.VMUpdated{VM: vmSpec("vm-1", "node-b", "vol-1", "vol-2")})
	h.ok(&command.SnapshotDeleteRequested{ID: "s1", Term: 1, Requester: "admin", At: t0})
	h.ok(&command.ImportJobCreated{ID: "j", Node: "node-a", Source: "file:///x.ovf", VMName: "x", Creator: "a", CreatedAt: t0})
	var after bytes.Buffer
	if _, err := cp.WriteTo(&after); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before.Bytes(), after.Bytes()) || cp.Digest() != digest {
		t.Fatalf("checkpoint changed after later applies")
	}
	if h.st.Digest() == digest {
		t.Fatalf("state did not move on")
	}
	if cp.Index() != 0 && cp.Index() >= h.index {
		t.Fatalf("checkpoint index %d, state index %d", cp.Index(), h.index)
	}
}

// frame builds one checkpoint record with a valid CRC.
func frame(kind byte, payload string) []byte {
	body := append([]byte{kind}, payload...)
	out := binary.BigEndian.AppendUint32(nil, uint32(len(body)))
	out = append(out, body...)
	return binary.BigEndian.AppendUint32(out, crc32.Checksum(body, crcTable))
}

func header(version uint16) []byte {
	return binary.BigEndian.AppendUint16([]byte(checkpointMagic), version)
}

func stream(version uint16, records ...[]byte) []byte {
	out := header(version)
	for _, r := range records {
		out = append(out, r...)
	}
	return out
}

// populated returns a state with content, to check that failed restores
// leave it alone.
func populated(t *testing.T) (*State, [32]byte) {
	h := newHarness(t)
	h.cluster()
	h.completeSnapshot("s1", nil, "vol-1")
	return h.st, h.st.Digest()
}

func TestCheckpointBadStructureRefused(t *testing.T) {
	meta := frame(kindMeta, `{"index":3,"term":1,"fence_term":0}`)
	settings := frame(kindSettings, `{"snapshots_enabled":true,"updated_index":1}`)
	node := func(id string) []byte {
		return frame(kindNode, `{"id":"`+id+`","role":"data","raft_address":"a:1","api_address":"a:2","data_address":"a:3","updated_index":1}`)
	}
	end := func(n int) []byte { return frame(kindEnd, fmt.Sprintf(`{"records":%d}`, n)) }
	share := func(name string) []byte {
		return frame(kindShare, `{"name":"`+name+`","url":"file:///srv/`+name+`","created_at":"2026-01-01T00:00:00Z","created_index":1}`)
	}
	good := stream(1, meta, settings, node("a"), node("b"), end(4))
	if st := restored(t, good); len(st.Nodes()) != 2 {
		t.Fatalf("hand-built checkpoint restored %d nodes", len(st.Nodes()))
	}
	good2 := stream(2, meta, settings, node("a"), share("a"), share("b"), end(5))
	if st := restored(t, good2); len(st.Shares()) != 2 || len(st.Nodes()) != 1 {
		t.Fatalf("hand-built version 2 checkpoint restored %d shares", len(st.Shares()))
	}
	cases := map[string]struct {
		b    []byte
		want error
	}{
		"bad magic":        {append([]byte("XXXXXXXX"), good[8:]...), ErrCheckpointCorrupt},
		"version 3":        {stream(3, meta, settings, end(2)), ErrCheckpointVersion},
		"version 0":        {stream(0, meta, settings, end(2)), ErrCheckpointVersion},
		"share in v1":      {stream(1, meta, settings, share("a"), end(3)), ErrCheckpointCorrupt},
		"v2 job in v1":     {stream(1, meta, settings, frame(kindJob, `{"id":"j","kind":"export","state":"queued","node":"a","creator":"x","created_at":"2026-01-01T00:00:00Z","offset":0,"bytes":0,"updated_at":"2026-01-01T00:00:00Z","updated_index":1,"share":"s"}`), end(3)), ErrCheckpointCorrupt},
		"shares unsorted":  {stream(2, meta, settings, share("b"), share("a"), end(4)), ErrCheckpointCorrupt},
		"share, no name":   {stream(2, meta, settings, frame(kindShare, `{"url":"file:///x"}`), end(3)), ErrCheckpointCorrupt},
		"share before job": {stream(2, meta, settings, share("a"), frame(kindJob, `{"id":"j","kind":"export","state":"queued","node":"a","creator":"x","created_at":"2026-01-01T00:00:00Z","offset":0,"bytes":0,"updated_at":"2026-01-01T00:00:00Z","updated_index":1}`), end(4)), ErrCheckpointCorrupt},
		"empty":            {nil, ErrCheckpointTruncated},
		"header only":      {header(1), ErrCheckpointTruncated},
		"no trailer":       {stream(1, meta, settings, node("a")), ErrCheckpointTruncated},
		"no meta":          {stream(1, settings, end(1)), ErrCheckpointCorrupt},
		"no settings":      {stream(1, meta, node("a"), end(2)), ErrCheckpointCorrupt},
		"only meta":        {stream(1, meta, end(1)), ErrCheckpointCorrupt},
		"two meta":         {stream(1, meta, settings, meta, end(3)), ErrCheckpointCorrupt},
		"duplicate key":    {stream(1, meta, settings, node("a"), node("a"), end(4)), ErrCheckpointCorrupt},
		"keys unsorted":    {stream(1, meta, settings, node("b"), node("a"), end(4)), ErrCheckpointCorrupt},
		"kinds unsorted":   {stream(1, meta, settings, frame(kindJob, `{"id":"j","kind":"export","state":"queued","node":"a","creator":"x","created_at":"2026-01-01T00:00:00Z","offset":0,"bytes":0,"updated_at":"2026-01-01T00:00:00Z","updated_index":1}`), node("a"), end(4)), ErrCheckpointCorrupt},
		"unknown kind":     {stream(1, meta, settings, frame(42, `{}`), end(3)), ErrCheckpointCorrupt},
		"unknown field":    {stream(1, meta, settings, frame(kindNode, `{"id":"a","surprise":1}`), end(3)), ErrCheckpointCorrupt},
		"no id":            {stream(1, meta, settings, frame(kindNode, `{"role":"data"}`), end(3)), ErrCheckpointCorrupt},
		"bad json":         {stream(1, meta, settings, frame(kindNode, `{"id":`), end(3)), ErrCheckpointCorrupt},
		"trailing json":    {stream(1, meta, settings, frame(kindNode, `{"id":"a"} {}`), end(3)), ErrCheckpointCorrupt},
		"wrong count":      {stream(1, meta, settings, node("a"), end(2)), ErrCheckpointCorrupt},
		"after trailer":    {append(bytes.Clone(good), 0), ErrCheckpointCorrupt},
		"zero length":      {append(stream(1, meta, settings), 0, 0, 0, 0), ErrCheckpointCorrupt},
		"snapshot, no VM":  {stream(1, meta, settings, frame(kindSnapshot, `{"id":"s"}`), end(3)), ErrCheckpointCorrupt},
		"container, no id": {stream(1, meta, settings, frame(kindContainer, `{"node":"a"}`), end(3)), ErrCheckpointCorrupt},
		"huge length":      {append(stream(1, meta, settings), 0xff, 0xff, 0xff, 0xff), ErrCheckpointCorrupt},
	}
	for name, c := range cases {
		st, digest := populated(t)
		err := st.Restore(bytes.NewReader(c.b))
		if !errors.Is(err, c.want) {
			t.Fatalf("%s: Restore err = %v, want %v", name, err, c.want)
		}
		if st.Digest() != digest {
			t.Fatalf("%s: a failed Restore changed the state", name)
		}
	}
}

// TestCheckpointTruncatedRefused cuts a real checkpoint short at many
// points, record boundaries included.
func TestCheckpointTruncatedRefused(t *testing.T) {
	h := newHarness(t)
	scenario(h)
	full := checkpointBytes(t, h.st)
	st, digest := populated(t)
	cuts := map[int]bool{}
	for i := 0; i < 300; i++ {
		cuts[i] = true
	}
	for i := 300; i < len(full); i += 61 {
		cuts[i] = true
	}
	for off := headerSize; off < len(full); { // every record boundary
		cuts[off] = true
		off += 8 + int(binary.BigEndian.Uint32(full[off:]))
	}
	cuts[len(full)-1] = true
	for cut := range cuts {
		err := st.Restore(bytes.NewReader(full[:cut]))
		if !errors.Is(err, ErrCheckpointTruncated) {
			t.Fatalf("cut at %d of %d: err = %v, want ErrCheckpointTruncated", cut, len(full), err)
		}
	}
	if st.Digest() != digest {
		t.Fatalf("truncated restores changed the state")
	}
}

// TestCheckpointCorruptRefused flips bytes all over a real checkpoint.
func TestCheckpointCorruptRefused(t *testing.T) {
	h := newHarness(t)
	scenario(h)
	full := checkpointBytes(t, h.st)
	st, digest := populated(t)
	for i := 0; i < len(full); i += 17 {
		for _, flip := range []byte{0x01, 0x80} {
			b := bytes.Clone(full)
			b[i] ^= flip
			err := st.Restore(bytes.NewReader(b))
			if !errors.Is(err, ErrCheckpointCorrupt) && !errors.Is(err, ErrCheckpointTruncated) && !errors.Is(err, ErrCheckpointVersion) {
				t.Fatalf("byte %d ^ %#x: Restore err = %v, want a checkpoint error", i, flip, err)
			}
		}
	}
	if st.Digest() != digest {
		t.Fatalf("corrupt restores changed the state")
	}
}

// failingReader returns err after n bytes.
type failingReader struct {
	r   io.Reader
	n   int
	err error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, f.err
	}
	if len(p) > f.n {
		p = p[:f.n]
	}
	n, err := f.r.Read(p)
	f.n -= n
	return n, err
}

func TestCheckpointReaderErrorKept(t *testing.T) {
	h := newHarness(t)
	scenario(h)
	full := checkpointBytes(t, h.st)
	boom := errors.New("connection reset")
	st, digest := populated(t)
	err := st.Restore(&failingReader{r: bytes.NewReader(full), n: len(full) / 2, err: boom})
	if !errors.Is(err, boom) {
		t.Fatalf("Restore err = %v, want the reader's error", err)
	}
	if st.Digest() != digest {
		t.Fatalf("failed restore changed the state")
	}
}

// meteredReader records the largest read request and the bytes handed out.
type meteredReader struct {
	r       io.Reader
	maxRead int
	total   int64
	reads   int
}

func (m *meteredReader) Read(p []byte) (int, error) {
	m.reads++
	m.maxRead = max(m.maxRead, len(p))
	n, err := m.r.Read(p)
	m.total += int64(n)
	return n, err
}

// bigState builds a state with n snapshot records (all states, two volumes,
// two replicas) without going through Apply, which would dominate the time.
func bigState(t testing.TB, n int) *State {
	h := newHarness(t)
	h.cluster()
	h.completeSnapshot("tmpl", nil, "vol-1", "vol-2")
	tmpl := h.snapshot("tmpl")
	d := h.st.d
	states := []SnapshotState{Creating, Partial, Complete, Complete, Discarded, Deleting}
	for i := 0; i < n; i++ {
		s := tmpl.clone()
		s.ID = fmt.Sprintf("snap-%07d", i)
		s.Name = fmt.Sprintf("nightly %d", i)
		s.State = states[i%len(states)]
		s.CreatedAt = t0.Add(time.Duration(i) * time.Minute)
		s.CreatedIndex = uint64(1000 + i)
		if s.State == Discarded {
			s.Discard = &Discard{By: "discard-incomplete", Fenced: true, Term: 2, At: t0}
		}
		d.snapshots.put(s.ID, &s)
		d.indexSnapshot(&s)
	}
	return h.st
}

// TestCheckpointLarge round-trips 100,000 snapshot records (about 190 MiB)
// and checks that Restore streams: no read request beyond the buffer size,
// and a corrupt record stops the restore right there instead of after
// reading the rest. The race detector slows encoding/json about tenfold,
// so under it the test uses 10,000 records: the code paths are the same
// and the plain `go test` run keeps the full size.
func TestCheckpointLarge(t *testing.T) {
	n := 100_000
	if raceEnabled || testing.Short() {
		n = 10_000
	}
	st := bigState(t, n)
	elapsed := stopwatch()
	var buf bytes.Buffer
	if _, err := st.Checkpoint().WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	full := buf.Bytes()
	writeTime := elapsed()
	want := sha256.Sum256(full) // what Digest computes

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	elapsed = stopwatch()
	r := &meteredReader{r: bytes.NewReader(full)}
	st2 := New()
	if err := st2.Restore(r); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	restoreTime := elapsed()
	runtime.GC()
	runtime.ReadMemStats(&after)
	if got := st2.Digest(); got != want {
		t.Fatalf("digest after restoring %d snapshots differs", n)
	}
	complete := SnapshotFilter{VMID: "vm-1", States: []SnapshotState{Complete}}
	if len(st2.Snapshots(complete)) != len(st.Snapshots(complete)) {
		t.Fatalf("restored state lost snapshots")
	}
	if r.maxRead > ioBufferSize {
		t.Fatalf("largest read request %d bytes, want at most %d", r.maxRead, ioBufferSize)
	}
	if r.total != int64(len(full)) {
		t.Fatalf("Restore read %d of %d bytes", r.total, len(full))
	}
	t.Logf("%d snapshots: checkpoint %.1f MiB, write %v, restore %v (%d reads, largest %d bytes), live heap after restore %+.1f MiB",
		n, float64(len(full))/float64(mib), writeTime, restoreTime, r.reads, r.maxRead,
		(float64(after.HeapAlloc)-float64(before.HeapAlloc))/float64(mib))

	// Corrupt a record a tenth of the way in: Restore must stop within one
	// buffer of it.
	at := len(full) / 10
	bad := bytes.Clone(full)
	bad[at] ^= 0xff
	r = &meteredReader{r: bytes.NewReader(bad)}
	if err := New().Restore(r); !errors.Is(err, ErrCheckpointCorrupt) && !errors.Is(err, ErrCheckpointTruncated) {
		t.Fatalf("Restore of corrupt stream: %v", err)
	}
	if limit := int64(at + MaxRecordSize + 2*ioBufferSize); r.total > limit {
		t.Fatalf("Restore read %d bytes before noticing corruption at byte %d (limit %d): it does not stream", r.total, at, limit)
	}
}

// TestCheckpointWhileApplying writes a large checkpoint while Apply keeps
// changing the snapshots it holds.
func TestCheckpointWhileApplying(t *testing.T) {
	st := bigState(t, 5_000)
	cp := st.Checkpoint()
	want := cp.Digest()
	done := make(chan [32]byte)
	go func() { done <- cp.Digest() }()
	h := &harness{t: t, st: st, index: 1_000_000, term: 1}
	for i := 0; i < 200; i++ {
		h.ok(&command.SnapshotDeleteRequested{ID: fmt.Sprintf("snap-%07d", i*6+2), Term: 1, Requester: "a", At: t0})
	}
	if got := <-done; got != want {
		t.Fatalf("checkpoint digest changed while applying")
	}
}
