package snapshot

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"
)

// Dialer opens connections to the peer's [Receiver]; *tls.Dialer (with a
// mutual-TLS configuration) and *net.Dialer satisfy it.
type Dialer interface {
	// DialContext connects to address on the named network.
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

var (
	_ Dialer = (*tls.Dialer)(nil)
	_ Dialer = (*net.Dialer)(nil)
)

// Image names one image file to replicate.
type Image struct {
	// SnapshotID and VolumeID name the image on both nodes.
	SnapshotID, VolumeID string
	// Path is the local file (opaque bytes, e.g. a qcow2 image).
	Path string
	// Size is its expected length; the file must have exactly this size.
	Size int64
	// SHA256 is its expected digest, verified by the receiver.
	SHA256 [32]byte
}

// SendStats reports what one Send did, also when it failed.
type SendStats struct {
	// Size is the image size.
	Size int64
	// ResumedAt is the offset the receiver had already verified.
	ResumedAt int64
	// BytesSent counts data bytes handed to the connection (a chunk cut
	// mid-write counts whole).
	BytesSent int64
	// Chunks counts data messages.
	Chunks int
	// Duration is the wall time of the Send.
	Duration time.Duration
}

// Sender replicates images to a peer's [Receiver].
type Sender struct {
	// Dialer connects to Addr.
	Dialer Dialer
	// Addr is the receiver's host:port.
	Addr string
	// ChunkSize is the data bytes per message; default and upper bound
	// [DefaultChunkSize] and [MaxChunkSize].
	ChunkSize int
	// IOTimeout bounds each write and each wait for a reply. Default one
	// minute.
	IOTimeout time.Duration
	// Progress, if set, is called as the transfer moves: with the offset
	// below which the image has been read and sent (or skipped as a hole).
	Progress func(img Image, offset int64)
}

// NewSender returns a Sender that dials addr through d (for production a
// *tls.Dialer with a mutual-TLS client configuration).
func NewSender(d Dialer, addr string) *Sender {
	return &Sender{Dialer: d, Addr: addr, ChunkSize: DefaultChunkSize, IOTimeout: time.Minute}
}

func (s *Sender) timeout() time.Duration {
	if s.IOTimeout <= 0 {
		return time.Minute
	}
	return s.IOTimeout
}

// Send replicates img: it announces the image, skips what the receiver
// already holds, sends the allocated extents (holes are not sent) and
// waits for the receiver to verify the whole file. Calling Send again
// after a failure resumes the transfer. Errors the receiver reported wrap
// [ErrChecksum], [ErrRefused], [ErrBusy], [ErrProtocol] or [ErrReceiver].
func (s *Sender) Send(ctx context.Context, img Image) (SendStats, error) {
	start := time.Now()
	st := SendStats{Size: img.Size}
	err := s.send(ctx, img, &st)
	st.Duration = time.Since(start)
	if err != nil {
		return st, fmt.Errorf("snapshot: replicate %s/%s to %s: %w", img.SnapshotID, img.VolumeID, s.Addr, err)
	}
	return st, nil
}

func (s *Sender) send(ctx context.Context, img Image, st *SendStats) error {
	if !validID(img.SnapshotID) || !validID(img.VolumeID) {
		return fmt.Errorf("%w: invalid snapshot or volume id", ErrSource)
	}
	chunk := s.ChunkSize
	if chunk <= 0 || chunk > MaxChunkSize {
		chunk = min(max(chunk, DefaultChunkSize), MaxChunkSize)
	}
	f, err := os.Open(img.Path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() != img.Size {
		return fmt.Errorf("%w: %s has %d bytes, expected %d", ErrSource, img.Path, fi.Size(), img.Size)
	}

	dctx, cancel := context.WithTimeout(ctx, s.timeout())
	conn, err := s.Dialer.DialContext(dctx, "tcp", s.Addr)
	cancel()
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	wrap := func(err error) error {
		if ctx.Err() != nil {
			return fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return err
	}

	// Each write and read sets its own deadline, which would replace the
	// past one a cancellation set on conn: once ctx ended, they fail at
	// once instead of waiting out the I/O timeout.
	write := func(typ byte, parts ...[]byte) error {
		conn.SetWriteDeadline(time.Now().Add(s.timeout()))
		if err := ctx.Err(); err != nil {
			return err
		}
		return wrap(writeFrame(conn, typ, parts...))
	}
	var rbuf []byte
	read := func() (byte, []byte, error) {
		conn.SetReadDeadline(time.Now().Add(s.timeout()))
		if err := ctx.Err(); err != nil {
			return 0, nil, err
		}
		typ, p, err := readFrame(conn, rbuf)
		rbuf = p
		return typ, p, wrap(err)
	}

	if err := write(msgHello, encodeHello(hello{version: protocolVersion, snapshotID: img.SnapshotID, volumeID: img.VolumeID, size: img.Size, sum: img.SHA256})); err != nil {
		return err
	}
	typ, p, err := read()
	if err != nil {
		return err
	}
	switch typ {
	case msgResult:
		if err := decodeResult(p); err != nil {
			return err
		}
		st.ResumedAt = img.Size // already in place
		return nil
	case msgResume:
	default:
		return fmt.Errorf("%w: expected resume, got message type %d", ErrProtocol, typ)
	}
	from, err := decodeOffset(p, img.Size)
	if err != nil {
		return err
	}
	st.ResumedAt = from

	buf := make([]byte, chunk)
	err = dataExtents(f, from, img.Size, func(off, n int64) error {
		for n > 0 {
			m := int(min(n, int64(chunk)))
			if _, err := io.ReadFull(io.NewSectionReader(f, off, int64(m)), buf[:m]); err != nil {
				return fmt.Errorf("read %s: %w", img.Path, err)
			}
			if !allZero(buf[:m]) {
				st.Chunks++
				st.BytesSent += int64(m)
				if err := write(msgData, encodeOffset(off), buf[:m]); err != nil {
					return err
				}
			}
			off += int64(m)
			n -= int64(m)
			if s.Progress != nil {
				s.Progress(img, off)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := write(msgDone); err != nil {
		return err
	}
	for {
		typ, p, err := read()
		if err != nil {
			return err
		}
		switch typ {
		case msgHashing: // verification is progressing; the read deadline moves on
			if _, err := decodeOffset(p, img.Size); err != nil {
				return err
			}
		case msgResult:
			return decodeResult(p)
		default:
			return fmt.Errorf("%w: expected result, got message type %d", ErrProtocol, typ)
		}
	}
}

var zeroPage [64 << 10]byte

func allZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroPage))
		if !bytes.Equal(b[:n], zeroPage[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// lseek whence values of Linux (not in package syscall).
const (
	seekData = 3
	seekHole = 4
)

// dataExtents calls fn for each allocated extent of f within [from, size),
// found with lseek SEEK_DATA/SEEK_HOLE. Where the file system cannot tell,
// the whole range counts as data.
func dataExtents(f *os.File, from, size int64, fn func(off, n int64) error) error {
	off := from
	for off < size {
		d, err := f.Seek(off, seekData)
		if errors.Is(err, syscall.ENXIO) {
			return nil // only a hole remains
		}
		if err != nil {
			return fn(off, size-off)
		}
		if d >= size {
			return nil
		}
		h, err := f.Seek(d, seekHole)
		if err != nil || h > size {
			h = size
		}
		if err := fn(d, h-d); err != nil {
			return err
		}
		off = h
	}
	return nil
}
