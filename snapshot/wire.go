package snapshot

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"
)

// The replication wire protocol. Every message is a frame: one type byte,
// a 4-byte big-endian payload length, then the payload. A transfer runs:
//
//	sender → receiver  hello   {version, snapshot id, volume id, size, sha256}
//	receiver → sender  resume  {offset}          (or result, when refused or already complete)
//	sender → receiver  data    {offset, bytes}   ... ascending, each at or past offset
//	sender → receiver  done    {}
//	receiver → sender  hashing {bytes hashed}    ... while verifying (keeps the sender's wait bounded)
//	receiver → sender  result  {code, message}
//
// Message types are numbered constants and append-only. Any frame of an
// unknown type, of an oversized length or with a malformed payload is a
// protocol error ([ErrProtocol]) that ends the connection and loses nothing
// already verified.

// Message types of the replication protocol (append-only).
const (
	msgHello   byte = 1
	msgResume  byte = 2
	msgData    byte = 3
	msgDone    byte = 4
	msgResult  byte = 5
	msgHashing byte = 6
)

// protocolVersion is the version a sender announces in its hello.
const protocolVersion byte = 1

const (
	frameHeaderLen = 5
	// MaxChunkSize bounds the payload bytes of one data message; a receiver
	// refuses larger frames before reading them.
	MaxChunkSize = 16 << 20
	// DefaultChunkSize is the data bytes a Sender puts in one message.
	DefaultChunkSize = 4 << 20
	// DefaultSyncEvery is the receiver's default Receiver.SyncEvery.
	DefaultSyncEvery = 32 << 20
	// maxIDLen bounds snapshot and volume ids on the wire.
	maxIDLen = 128
	// maxMessageLen bounds the text of a result message.
	maxMessageLen = 1024
	// maxControlLen bounds every frame but data frames.
	maxControlLen = 2 + 2*(1+maxIDLen) + 8 + 32 + maxMessageLen
)

// Result codes carried in a result message.
const (
	codeOK       byte = 0
	codeProtocol byte = 1 // the receiver could not understand the sender
	codeChecksum byte = 2 // the received file did not verify
	codeRefused  byte = 3 // the request is valid but not accepted (size, destination)
	codeBusy     byte = 4 // another transfer of the same image is still running
	codeInternal byte = 5 // an I/O error on the receiver
)

// hello opens a transfer.
type hello struct {
	version    byte
	snapshotID string
	volumeID   string
	size       int64
	sum        [32]byte
}

// writeFrame writes one frame with the given type and payload parts.
func writeFrame(w io.Writer, typ byte, parts ...[]byte) error {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	var hdr [frameHeaderLen]byte
	hdr[0] = typ
	binary.BigEndian.PutUint32(hdr[1:], uint32(n))
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	for _, p := range parts {
		if _, err := w.Write(p); err != nil {
			return err
		}
	}
	return nil
}

// maxPayload returns the largest payload a frame of type typ may carry, or
// -1 when typ is unknown.
func maxPayload(typ byte) int {
	switch typ {
	case msgData:
		return 8 + MaxChunkSize
	case msgHello, msgResume, msgDone, msgResult, msgHashing:
		return maxControlLen
	default:
		return -1
	}
}

// readFrame reads one frame into buf (grown as needed) and returns its type
// and payload. The length is checked against the type's bound before any
// payload byte is read.
func readFrame(r io.Reader, buf []byte) (byte, []byte, error) {
	var hdr [frameHeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	typ := hdr[0]
	n := binary.BigEndian.Uint32(hdr[1:])
	limit := maxPayload(typ)
	if limit < 0 {
		return 0, nil, fmt.Errorf("%w: unknown message type %#x", ErrProtocol, typ)
	}
	if uint64(n) > uint64(limit) {
		return 0, nil, fmt.Errorf("%w: message type %d of %d bytes exceeds the limit of %d", ErrProtocol, typ, n, limit)
	}
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return typ, buf, nil
}

func encodeHello(h hello) []byte {
	b := make([]byte, 0, 1+2+len(h.snapshotID)+len(h.volumeID)+8+32)
	b = append(b, h.version)
	b = append(b, byte(len(h.snapshotID)))
	b = append(b, h.snapshotID...)
	b = append(b, byte(len(h.volumeID)))
	b = append(b, h.volumeID...)
	b = binary.BigEndian.AppendUint64(b, uint64(h.size))
	return append(b, h.sum[:]...)
}

// validID reports whether s may name a snapshot or volume on the wire:
// 1 to maxIDLen bytes of UTF-8 without control characters (the
// Destination applies its own, stricter rules).
func validID(s string) bool {
	if s == "" || len(s) > maxIDLen || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

func decodeHello(p []byte) (hello, error) {
	var h hello
	bad := func(what string) (hello, error) {
		return hello{}, fmt.Errorf("%w: malformed hello: %s", ErrProtocol, what)
	}
	if len(p) < 1 {
		return bad("empty")
	}
	h.version, p = p[0], p[1:]
	if h.version != protocolVersion {
		return hello{}, fmt.Errorf("%w: protocol version %d not supported (want %d)", ErrProtocol, h.version, protocolVersion)
	}
	readStr := func() (string, bool) {
		if len(p) < 1 || len(p) < 1+int(p[0]) {
			return "", false
		}
		s := string(p[1 : 1+int(p[0])])
		p = p[1+int(p[0]):]
		return s, validID(s)
	}
	var ok bool
	if h.snapshotID, ok = readStr(); !ok {
		return bad("snapshot id")
	}
	if h.volumeID, ok = readStr(); !ok {
		return bad("volume id")
	}
	if len(p) != 8+32 {
		return bad("length")
	}
	size := binary.BigEndian.Uint64(p)
	if size > 1<<62 {
		return hello{}, fmt.Errorf("%w: absurd image size %d", ErrProtocol, size)
	}
	h.size = int64(size)
	copy(h.sum[:], p[8:])
	return h, nil
}

func encodeOffset(off int64) []byte {
	return binary.BigEndian.AppendUint64(nil, uint64(off))
}

// decodeOffset decodes a resume or hashing payload: one offset no larger
// than size.
func decodeOffset(p []byte, size int64) (int64, error) {
	if len(p) != 8 {
		return 0, fmt.Errorf("%w: offset message of %d bytes", ErrProtocol, len(p))
	}
	off := binary.BigEndian.Uint64(p)
	if off > uint64(size) {
		return 0, fmt.Errorf("%w: offset %d beyond the image size %d", ErrProtocol, off, size)
	}
	return int64(off), nil
}

// decodeData splits a data payload into its offset and bytes and checks
// that they lie within [from, size).
func decodeData(p []byte, from, size int64) (int64, []byte, error) {
	if len(p) < 8 {
		return 0, nil, fmt.Errorf("%w: data message of %d bytes", ErrProtocol, len(p))
	}
	off := binary.BigEndian.Uint64(p)
	data := p[8:]
	if len(data) == 0 {
		return 0, nil, fmt.Errorf("%w: empty data message", ErrProtocol)
	}
	if off < uint64(from) || off > uint64(size) || uint64(len(data)) > uint64(size)-off {
		return 0, nil, fmt.Errorf("%w: data [%d, +%d) outside the expected range [%d, %d)", ErrProtocol, off, len(data), from, size)
	}
	return int64(off), data, nil
}

func encodeResult(code byte, msg string) []byte {
	if len(msg) > maxMessageLen {
		msg = msg[:maxMessageLen]
	}
	return append([]byte{code}, msg...)
}

// decodeResult turns a result payload into nil (success) or an error
// wrapping the sentinel of its code.
func decodeResult(p []byte) error {
	if len(p) < 1 {
		return fmt.Errorf("%w: empty result", ErrProtocol)
	}
	msg := string(p[1:])
	if !utf8.ValidString(msg) {
		msg = fmt.Sprintf("%q", msg)
	}
	var sentinel error
	switch p[0] {
	case codeOK:
		return nil
	case codeProtocol:
		sentinel = ErrProtocol
	case codeChecksum:
		sentinel = ErrChecksum
	case codeRefused:
		sentinel = ErrRefused
	case codeBusy:
		sentinel = ErrBusy
	case codeInternal:
		sentinel = ErrReceiver
	default:
		return fmt.Errorf("%w: unknown result code %d: %s", ErrProtocol, p[0], msg)
	}
	return fmt.Errorf("peer: %w: %s", sentinel, msg)
}

// resultCode maps a receiver-side error to the code sent to the sender.
func resultCode(err error) byte {
	switch {
	case err == nil:
		return codeOK
	case errors.Is(err, ErrProtocol):
		return codeProtocol
	case errors.Is(err, ErrChecksum):
		return codeChecksum
	case errors.Is(err, ErrBusy):
		return codeBusy
	case errors.Is(err, ErrRefused):
		return codeRefused
	default:
		return codeInternal
	}
}
