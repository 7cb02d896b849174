package state

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// The state checkpoint format (what Raft calls a snapshot):
//
//	header   8 bytes magic "TWSNCKPT", 2 bytes format version (big endian)
//	record   4 bytes body length n (big endian, 1 <= n <= MaxRecordSize)
//	         n bytes body: 1 byte kind, then the record as JSON
//	         4 bytes CRC-32C (Castagnoli) of the body
//	...      records in kind order (meta, settings, nodes, VMs, containers,
//	         snapshots, jobs, shares), each kind in ascending key order
//	trailer  a record of kind end whose JSON holds the record count
//
// The order makes the stream canonical: two states that are equal write the
// same bytes, so Digest is a SHA-256 over it. Restore reads it record by
// record through a small buffer, checks every rule above, and replaces the
// state only after the trailer.
//
// Format versions: version 2 added share records and the job fields of
// payload version 2 of the job commands (see Job). WriteTo writes the
// lowest version that holds the state, so a cluster that uses none of them
// keeps writing version 1, byte for byte as before, and an older node can
// still restore it; one that does writes version 2, which older nodes
// refuse with ErrCheckpointVersion. Restore reads both, and refuses share
// records and the newer job fields in a version 1 stream.
const (
	// CheckpointVersion is the newest format version: Restore reads it and
	// every older one, and WriteTo writes it when the state needs it.
	CheckpointVersion = 2
	// MaxRecordSize bounds one record's body; Restore refuses larger ones
	// before allocating for them.
	MaxRecordSize = 1 << 20

	checkpointMagic = "TWSNCKPT"
	headerSize      = len(checkpointMagic) + 2
	ioBufferSize    = 64 << 10 // bufio size on both sides
	readChunk       = 32 << 10 // largest single read from the bufio.Reader
)

// Record kinds, in stream order.
const (
	kindMeta      byte = 1
	kindSettings  byte = 2
	kindNode      byte = 3
	kindVM        byte = 4
	kindContainer byte = 5
	kindSnapshot  byte = 6
	kindJob       byte = 7
	kindShare     byte = 8 // format version 2
	kindEnd       byte = 0xff
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// checkpointMeta is the first record: where the log stood.
type checkpointMeta struct {
	Index     uint64 `json:"index"`
	Term      uint64 `json:"term"`
	FenceTerm uint64 `json:"fence_term"`
}

// checkpointEnd is the trailer.
type checkpointEnd struct {
	Records uint64 `json:"records"`
}

// Checkpoint is an immutable point-in-time view of a State. Taking one is
// cheap (a few slice copies under the lock); writing it does not block
// Apply, which copies a table shard before its first write after the
// checkpoint.
type Checkpoint struct {
	meta       checkpointMeta
	settings   *Settings
	nodes      *table[Node]
	vms        *table[VM]
	containers *table[Container]
	snapshots  *table[Snapshot]
	jobs       *table[Job]
	shares     *table[Share]
}

// Checkpoint returns a point-in-time view of the state.
func (s *State) Checkpoint() *Checkpoint {
	s.mu.Lock() // freeze starts new table generations
	defer s.mu.Unlock()
	d := s.d
	return &Checkpoint{
		meta:       checkpointMeta{Index: d.index, Term: d.term, FenceTerm: d.fenceTerm},
		settings:   d.settings,
		nodes:      d.nodes.freeze(),
		vms:        d.vms.freeze(),
		containers: d.containers.freeze(),
		snapshots:  d.snapshots.freeze(),
		jobs:       d.jobs.freeze(),
		shares:     d.shares.freeze(),
	}
}

// version returns the lowest format version that holds the checkpoint.
func (cp *Checkpoint) version() uint16 {
	if cp.shares.n > 0 {
		return 2
	}
	for _, j := range cp.jobs.sorted() {
		if j.newFields() {
			return 2
		}
	}
	return 1
}

// Index returns the log index the checkpoint was taken at.
func (cp *Checkpoint) Index() uint64 { return cp.meta.Index }

// Term returns the term of the last entry applied before the checkpoint.
func (cp *Checkpoint) Term() uint64 { return cp.meta.Term }

// countingWriter counts what reaches w.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// recordWriter writes framed records.
type recordWriter struct {
	bw    *bufio.Writer
	body  bytes.Buffer
	count uint64
}

func (rw *recordWriter) write(kind byte, v any) error {
	rw.body.Reset()
	rw.body.WriteByte(kind)
	enc := json.NewEncoder(&rw.body)
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("encode record of kind %d: %w", kind, err)
	}
	body := rw.body.Bytes()
	body = body[:len(body)-1] // Encode's newline
	if len(body) > MaxRecordSize {
		return fmt.Errorf("record of kind %d is %d bytes, more than %d", kind, len(body), MaxRecordSize)
	}
	var frame [4]byte
	binary.BigEndian.PutUint32(frame[:], uint32(len(body)))
	if _, err := rw.bw.Write(frame[:]); err != nil {
		return err
	}
	if _, err := rw.bw.Write(body); err != nil {
		return err
	}
	binary.BigEndian.PutUint32(frame[:], crc32.Checksum(body, crcTable))
	if _, err := rw.bw.Write(frame[:]); err != nil {
		return err
	}
	if kind != kindEnd {
		rw.count++
	}
	return nil
}

func writeTable[T any](rw *recordWriter, kind byte, t *table[T]) error {
	for _, v := range t.sorted() {
		if err := rw.write(kind, v); err != nil {
			return err
		}
	}
	return nil
}

// WriteTo streams the checkpoint to w: header, one record per object,
// trailer. It returns the bytes written.
func (cp *Checkpoint) WriteTo(w io.Writer) (int64, error) {
	cw := &countingWriter{w: w}
	rw := &recordWriter{bw: bufio.NewWriterSize(cw, ioBufferSize)}
	err := cp.write(rw)
	if err == nil {
		err = rw.bw.Flush()
	}
	if err != nil {
		return cw.n, fmt.Errorf("state: write checkpoint: %w", err)
	}
	return cw.n, nil
}

func (cp *Checkpoint) write(rw *recordWriter) error {
	var hdr [headerSize]byte
	copy(hdr[:], checkpointMagic)
	binary.BigEndian.PutUint16(hdr[len(checkpointMagic):], cp.version())
	if _, err := rw.bw.Write(hdr[:]); err != nil {
		return err
	}
	if err := rw.write(kindMeta, cp.meta); err != nil {
		return err
	}
	if err := rw.write(kindSettings, cp.settings); err != nil {
		return err
	}
	if err := writeTable(rw, kindNode, cp.nodes); err != nil {
		return err
	}
	if err := writeTable(rw, kindVM, cp.vms); err != nil {
		return err
	}
	if err := writeTable(rw, kindContainer, cp.containers); err != nil {
		return err
	}
	if err := writeTable(rw, kindSnapshot, cp.snapshots); err != nil {
		return err
	}
	if err := writeTable(rw, kindJob, cp.jobs); err != nil {
		return err
	}
	if err := writeTable(rw, kindShare, cp.shares); err != nil {
		return err
	}
	return rw.write(kindEnd, checkpointEnd{Records: rw.count})
}

// Digest returns the SHA-256 of the checkpoint's canonical encoding.
func (cp *Checkpoint) Digest() [sha256.Size]byte {
	h := sha256.New()
	if _, err := cp.WriteTo(h); err != nil {
		panic(err) // only an unencodable record can fail, and records are plain data
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}

// Digest returns the SHA-256 of the state's canonical encoding (a
// checkpoint's bytes): equal on two nodes that applied the same log.
func (s *State) Digest() [sha256.Size]byte {
	return s.Checkpoint().Digest()
}

// Restore replaces the state with the checkpoint read from r. The stream
// is read record by record through a bounded buffer; on any error (wrapping
// ErrCheckpointCorrupt, ErrCheckpointTruncated, ErrCheckpointVersion or the
// reader's own error) the state is left as it was.
func (s *State) Restore(r io.Reader) error {
	d, err := readCheckpoint(r)
	if err != nil {
		return fmt.Errorf("state: restore: %w", err)
	}
	s.mu.Lock()
	s.d = d
	s.mu.Unlock()
	return nil
}

// recordReader reads framed records.
type recordReader struct {
	br     *bufio.Reader
	buf    []byte
	offset int64 // bytes consumed, for error messages
	count  uint64
}

// readFull fills p in chunks of at most readChunk bytes, so that no read
// request, to the buffer or through it, exceeds the buffer size.
func (rr *recordReader) readFull(p []byte) error {
	for off := 0; off < len(p); {
		end := min(off+readChunk, len(p))
		n, err := io.ReadFull(rr.br, p[off:end])
		off += n
		rr.offset += int64(n)
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("%w: stream ends at byte %d", ErrCheckpointTruncated, rr.offset)
			}
			return fmt.Errorf("read at byte %d: %w", rr.offset, err)
		}
	}
	return nil
}

func (rr *recordReader) corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: record %d at byte %d: %s", ErrCheckpointCorrupt, rr.count+1, rr.offset, fmt.Sprintf(format, args...))
}

// next returns the next record's kind and JSON; the slice is reused.
func (rr *recordReader) next() (byte, []byte, error) {
	var frame [4]byte
	if err := rr.readFull(frame[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(frame[:])
	if n == 0 || n > MaxRecordSize {
		return 0, nil, rr.corrupt("length %d is outside 1..%d", n, MaxRecordSize)
	}
	if cap(rr.buf) < int(n) {
		rr.buf = make([]byte, n)
	}
	body := rr.buf[:n]
	if err := rr.readFull(body); err != nil {
		return 0, nil, err
	}
	if err := rr.readFull(frame[:]); err != nil {
		return 0, nil, err
	}
	if got, want := crc32.Checksum(body, crcTable), binary.BigEndian.Uint32(frame[:]); got != want {
		return 0, nil, rr.corrupt("CRC-32C %08x, want %08x", got, want)
	}
	return body[0], body[1:], nil
}

// decodeStrict parses one record's JSON; unknown fields and trailing data
// are corruption.
func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data")
	}
	return nil
}

// readInto decodes a record of a table kind and stores it under its key,
// which must be non-empty and greater than the previous key of the kind.
func readInto[T any](rr *recordReader, b []byte, t *table[T], lastKey *string, key func(*T) string) (*T, error) {
	v := new(T)
	if err := decodeStrict(b, v); err != nil {
		return nil, rr.corrupt("%v", err)
	}
	k := key(v)
	if k == "" {
		return nil, rr.corrupt("record has no id")
	}
	if k <= *lastKey {
		return nil, rr.corrupt("key %q is not after %q", k, *lastKey)
	}
	*lastKey = k
	t.put(k, v)
	return v, nil
}

func readCheckpoint(r io.Reader) (*data, error) {
	rr := &recordReader{br: bufio.NewReaderSize(r, ioBufferSize)}
	var hdr [headerSize]byte
	if err := rr.readFull(hdr[:]); err != nil {
		return nil, err
	}
	if string(hdr[:len(checkpointMagic)]) != checkpointMagic {
		return nil, fmt.Errorf("%w: bad magic %q", ErrCheckpointCorrupt, hdr[:len(checkpointMagic)])
	}
	version := binary.BigEndian.Uint16(hdr[len(checkpointMagic):])
	if version < 1 || version > CheckpointVersion {
		return nil, fmt.Errorf("%w: version %d, this node reads 1 to %d", ErrCheckpointVersion, version, CheckpointVersion)
	}

	d := newData()
	var lastKind byte
	var lastKey string
	for {
		kind, b, err := rr.next()
		if err != nil {
			return nil, err
		}
		if kind == kindEnd {
			var end checkpointEnd
			if err := decodeStrict(b, &end); err != nil {
				return nil, rr.corrupt("trailer: %v", err)
			}
			if end.Records != rr.count {
				return nil, rr.corrupt("trailer counts %d records, read %d", end.Records, rr.count)
			}
			if lastKind < kindSettings {
				return nil, rr.corrupt("no meta or settings record")
			}
			if _, err := rr.br.ReadByte(); err != io.EOF {
				return nil, rr.corrupt("data after the trailer")
			}
			return d, nil
		}
		switch {
		case rr.count == 0 && kind != kindMeta:
			return nil, rr.corrupt("first record has kind %d, want meta", kind)
		case rr.count == 1 && kind != kindSettings:
			return nil, rr.corrupt("second record has kind %d, want settings", kind)
		case kind < lastKind:
			return nil, rr.corrupt("kind %d after kind %d", kind, lastKind)
		case kind != lastKind:
			lastKey = ""
		}
		switch kind {
		case kindMeta:
			if rr.count != 0 {
				return nil, rr.corrupt("second meta record")
			}
			var m checkpointMeta
			if err := decodeStrict(b, &m); err != nil {
				return nil, rr.corrupt("%v", err)
			}
			d.index, d.term, d.fenceTerm = m.Index, m.Term, m.FenceTerm
		case kindSettings:
			if rr.count != 1 {
				return nil, rr.corrupt("second settings record")
			}
			st := new(Settings)
			if err := decodeStrict(b, st); err != nil {
				return nil, rr.corrupt("%v", err)
			}
			d.settings = st
		case kindNode:
			_, err = readInto(rr, b, d.nodes, &lastKey, func(n *Node) string { return n.ID })
		case kindVM:
			_, err = readInto(rr, b, d.vms, &lastKey, func(vm *VM) string { return vm.ID })
		case kindContainer:
			_, err = readInto(rr, b, d.containers, &lastKey, func(ct *Container) string {
				if ct.VolumeID == "" || ct.Node == "" {
					return ""
				}
				return containerKey(ct.VolumeID, ct.Node)
			})
		case kindSnapshot:
			var sn *Snapshot
			sn, err = readInto(rr, b, d.snapshots, &lastKey, func(sn *Snapshot) string { return sn.ID })
			if err == nil {
				if sn.VMID == "" {
					return nil, rr.corrupt("snapshot %q has no VM", sn.ID)
				}
				d.indexSnapshot(sn)
			}
		case kindJob:
			var j *Job
			j, err = readInto(rr, b, d.jobs, &lastKey, func(j *Job) string { return j.ID })
			if err == nil && version < 2 && j.newFields() {
				return nil, rr.corrupt("job %q has fields of format version 2 in a version %d stream", j.ID, version)
			}
		case kindShare:
			if version < 2 {
				return nil, rr.corrupt("share record in a version %d stream", version)
			}
			_, err = readInto(rr, b, d.shares, &lastKey, func(sh *Share) string { return sh.Name })
		default:
			return nil, rr.corrupt("unknown kind %d", kind)
		}
		if err != nil {
			return nil, err
		}
		lastKind = kind
		rr.count++
	}
}
