package snapshot

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Errors of the replication transport. Errors returned by [Sender.Send]
// for a failure the receiver reported wrap the same sentinel.
var (
	// ErrProtocol means a peer sent a message that is not valid here: an
	// unknown type, an oversized frame, a malformed payload or data outside
	// the announced image.
	ErrProtocol = errors.New("snapshot: replication protocol error")
	// ErrChecksum means the received image did not hash to the announced
	// SHA-256; the receiver discarded it.
	ErrChecksum = errors.New("snapshot: replicated image does not match its SHA-256")
	// ErrRefused means the receiver declined a valid request (image too
	// large, no destination for it).
	ErrRefused = errors.New("snapshot: replication refused")
	// ErrBusy means another transfer of the same image is still running on
	// the receiver.
	ErrBusy = errors.New("snapshot: replication of this image already in progress")
	// ErrReceiver means the receiver failed locally (an I/O error).
	ErrReceiver = errors.New("snapshot: receiver failed")
	// ErrSource means the local image does not match what the sender was
	// asked to announce (its size).
	ErrSource = errors.New("snapshot: source image does not match")
)

// Destination chooses where the receiver stores an image. The receiver
// writes to the returned path plus ".part" and renames into place only once
// the whole file verified. Path should reject ids it does not know.
type Destination interface {
	// Path returns the final path of the image of volumeID in snapshotID.
	Path(snapshotID, volumeID string) (string, error)
}

// ReceivedImage describes an image a Receiver has verified and renamed into
// place.
type ReceivedImage struct {
	// SnapshotID and VolumeID name the image.
	SnapshotID, VolumeID string
	// Path is its final path.
	Path string
	// Size is its length in bytes.
	Size int64
	// SHA256 is its verified digest.
	SHA256 [32]byte
}

// Receiver accepts images from a peer's [Sender]. Its zero value is not
// usable; build one with [NewReceiver] and adjust fields before Serve.
type Receiver struct {
	// Dest chooses final paths.
	Dest Destination
	// MaxImageSize refuses larger images (ErrRefused). Default 16 TiB.
	MaxImageSize int64
	// IdleTimeout bounds each wait for the sender's next message. Default
	// one minute.
	IdleTimeout time.Duration
	// SyncEvery is how much received data may be outstanding before the
	// part file is fsynced and the resume offset recorded (also at least
	// once a second): a resumed transfer sends at most this much again.
	// Default DefaultSyncEvery; an fsync per chunk halves the throughput
	// on ordinary disks.
	SyncEvery int64
	// Received, if set, is called after an image verified and was renamed
	// into place (e.g. to propose the replica).
	Received func(ReceivedImage)
	// Logger receives transfer events; nil discards them.
	Logger *slog.Logger

	mu     sync.Mutex
	active map[string]*transfer
}

// transfer is one running receive, registered under its final path so that
// a newer connection for the same image can supersede a dead one.
type transfer struct {
	conn   net.Conn
	cancel context.CancelFunc
	done   chan struct{}
}

// NewReceiver returns a Receiver storing images where dest says.
func NewReceiver(dest Destination) *Receiver {
	return &Receiver{Dest: dest, MaxImageSize: 16 << 40, IdleTimeout: time.Minute, SyncEvery: DefaultSyncEvery}
}

func (r *Receiver) log() *slog.Logger {
	if r.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Logger.With("component", "snapshot-receiver")
}

// Serve accepts connections on ln (for production a listener wrapped by
// tls.NewListener with a mutual-TLS configuration) and receives one image
// per connection, concurrently, until ctx ends or ln fails. It closes ln
// and waits for running transfers before returning; their partial files
// stay to be resumed.
func (r *Receiver) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("snapshot: accept: %w", err)
		}
		wg.Go(func() {
			defer conn.Close()
			if err := r.ServeConn(ctx, conn); err != nil {
				r.log().Warn("replication failed", "remote", conn.RemoteAddr().String(), "err", err)
			}
		})
	}
}

// ServeConn receives one image over conn and reports the outcome to the
// sender. It returns nil when the image verified (or was already in
// place), otherwise the error the sender was told. It does not close conn.
func (r *Receiver) ServeConn(ctx context.Context, conn net.Conn) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	err := r.receive(ctx, conn)
	if errors.Is(err, errConnection) {
		return err // nobody left to tell
	}
	conn.SetWriteDeadline(time.Now().Add(r.idle()))
	if werr := writeFrame(conn, msgResult, encodeResult(resultCode(err), errText(err))); werr != nil && err == nil {
		// The image is in place; the sender will learn so on its retry.
		return nil
	}
	return err
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// errConnection marks failures of the connection itself.
var errConnection = errors.New("connection failed")

func (r *Receiver) idle() time.Duration {
	if r.IdleTimeout <= 0 {
		return time.Minute
	}
	return r.IdleTimeout
}

// read reads one frame with the idle deadline. Once ctx ended it fails
// at once: the deadline it sets would otherwise replace the past one the
// cancellation set on conn, and the read would wait out the idle timeout.
func (r *Receiver) read(ctx context.Context, conn net.Conn, buf []byte) (byte, []byte, error) {
	conn.SetReadDeadline(time.Now().Add(r.idle()))
	if err := ctx.Err(); err != nil {
		return 0, nil, fmt.Errorf("snapshot: receive: %w: %w", errConnection, err)
	}
	typ, p, err := readFrame(conn, buf)
	if err != nil && !errors.Is(err, ErrProtocol) {
		return 0, nil, fmt.Errorf("snapshot: receive: %w: %w", errConnection, err)
	}
	return typ, p, err
}

// write writes one frame with the idle deadline; like read, it fails at
// once when ctx ended.
func (r *Receiver) write(ctx context.Context, conn net.Conn, typ byte, p []byte) error {
	conn.SetWriteDeadline(time.Now().Add(r.idle()))
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("snapshot: receive: %w: %w", errConnection, err)
	}
	if err := writeFrame(conn, typ, p); err != nil {
		return fmt.Errorf("snapshot: receive: %w: %w", errConnection, err)
	}
	return nil
}

func (r *Receiver) receive(ctx context.Context, conn net.Conn) error {
	typ, p, err := r.read(ctx, conn, nil)
	if err != nil {
		return err
	}
	if typ != msgHello {
		return fmt.Errorf("%w: expected hello, got message type %d", ErrProtocol, typ)
	}
	h, err := decodeHello(p)
	if err != nil {
		return err
	}
	max := r.MaxImageSize
	if max <= 0 {
		max = 16 << 40
	}
	if h.size > max {
		return fmt.Errorf("%w: image of %d bytes exceeds the limit of %d", ErrRefused, h.size, max)
	}
	final, err := r.Dest.Path(h.snapshotID, h.volumeID)
	if err != nil {
		return fmt.Errorf("%w: no destination for %s/%s: %w", ErrRefused, h.snapshotID, h.volumeID, err)
	}
	ctx, release, err := r.claim(ctx, final, conn)
	if err != nil {
		return err
	}
	defer release()
	log := r.log().With("snapshot", h.snapshotID, "volume", h.volumeID, "path", final)

	if ok, err := alreadyThere(ctx, final, h); err != nil {
		return err
	} else if ok {
		log.Info("image already in place")
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(final), 0o750); err != nil {
		return fmt.Errorf("%w: %w", ErrReceiver, err)
	}
	part, prog, offset, err := openPart(final, h)
	if err != nil {
		return err
	}
	defer part.Close()
	defer prog.Close()
	if err := r.write(ctx, conn, msgResume, encodeOffset(offset)); err != nil {
		return err
	}
	log.Info("receiving image", "size", h.size, "resume_offset", offset)

	next := offset                       // all data below next is written
	saved, savedAt := offset, time.Now() // all data below saved is fsynced and recorded
	syncEvery := r.SyncEvery
	if syncEvery <= 0 {
		syncEvery = DefaultSyncEvery
	}
	buf := make([]byte, 0, 8+DefaultChunkSize)
	for {
		typ, p, err := r.read(ctx, conn, buf)
		if err != nil {
			return err
		}
		if cap(p) > cap(buf) {
			buf = p[:0]
		}
		switch typ {
		case msgData:
			off, data, err := decodeData(p, next, h.size)
			if err != nil {
				return err
			}
			if _, err := part.WriteAt(data, off); err != nil {
				return fmt.Errorf("%w: %w", ErrReceiver, err)
			}
			next = off + int64(len(data))
			if next-saved >= syncEvery || time.Since(savedAt) >= time.Second {
				if err := saveProgress(part, prog, h, next); err != nil {
					return err
				}
				saved, savedAt = next, time.Now()
			}
		case msgDone:
			if err := saveProgress(part, prog, h, h.size); err != nil {
				return err
			}
			return r.finish(ctx, conn, part, prog, final, h, log)
		default:
			return fmt.Errorf("%w: unexpected message type %d during transfer", ErrProtocol, typ)
		}
	}
}

// claim registers the transfer of final. A transfer still registered for
// the same image belongs to a connection the sender has given up on (it
// only retries after a failure), so it is cancelled and awaited, bounded by
// the idle timeout.
func (r *Receiver) claim(ctx context.Context, final string, conn net.Conn) (context.Context, func(), error) {
	deadline := time.NewTimer(r.idle())
	defer deadline.Stop()
	for {
		r.mu.Lock()
		if r.active == nil {
			r.active = make(map[string]*transfer)
		}
		old := r.active[final]
		if old == nil {
			ctx, cancel := context.WithCancel(ctx)
			t := &transfer{conn: conn, cancel: cancel, done: make(chan struct{})}
			r.active[final] = t
			r.mu.Unlock()
			return ctx, func() {
				cancel()
				r.mu.Lock()
				delete(r.active, final)
				r.mu.Unlock()
				close(t.done)
			}, nil
		}
		r.mu.Unlock()
		old.cancel()
		old.conn.SetDeadline(time.Unix(1, 0))
		select {
		case <-old.done:
		case <-deadline.C:
			return nil, nil, fmt.Errorf("%w: %s", ErrBusy, final)
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("%w: %w", ErrReceiver, ctx.Err())
		}
	}
}

// finish verifies the whole part file and renames it into place, or
// removes it when it does not match.
func (r *Receiver) finish(ctx context.Context, conn net.Conn, part, prog *os.File, final string, h hello, log *slog.Logger) error {
	start := time.Now()
	sum, err := hashFile(ctx, part, h.size, func(done int64) error {
		return r.write(ctx, conn, msgHashing, encodeOffset(done))
	})
	if err != nil {
		return err
	}
	partPath, progPath := final+partSuffix, final+progressSuffix
	if sum != h.sum {
		part.Close()
		prog.Close()
		os.Remove(partPath)
		os.Remove(progPath)
		log.Warn("image does not verify; discarded", "want", hex.EncodeToString(h.sum[:]), "got", hex.EncodeToString(sum[:]))
		return fmt.Errorf("%w: %s/%s: got %x, announced %x", ErrChecksum, h.snapshotID, h.volumeID, sum, h.sum)
	}
	if err := part.Close(); err != nil {
		return fmt.Errorf("%w: %w", ErrReceiver, err)
	}
	if err := os.Rename(partPath, final); err != nil {
		return fmt.Errorf("%w: %w", ErrReceiver, err)
	}
	if err := syncDir(filepath.Dir(final)); err != nil {
		return fmt.Errorf("%w: %w", ErrReceiver, err)
	}
	prog.Close()
	os.Remove(progPath)
	recordVerified(final, h)
	log.Info("image verified and in place", "size", h.size, "hash_seconds", time.Since(start).Seconds())
	if r.Received != nil {
		r.Received(ReceivedImage{SnapshotID: h.snapshotID, VolumeID: h.volumeID, Path: final, Size: h.size, SHA256: h.sum})
	}
	return nil
}

const (
	partSuffix     = ".part"
	progressSuffix = ".part.progress"
	progressMagic  = "TSREPL01"
	progressLen    = 8 + 8 + 32 + 8 + 4
	hashReportStep = 1 << 30
)

// alreadyThere reports whether final exists with the announced size and
// digest (a retry after the result was lost).
func alreadyThere(ctx context.Context, final string, h hello) (bool, error) {
	if verifiedRecord(final, h) {
		return true, nil // verified when it arrived and unchanged since
	}
	f, err := os.Open(final)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("%w: %w", ErrReceiver, err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || fi.Size() != h.size {
		return false, fmt.Errorf("%w: %s exists with different content", ErrRefused, final)
	}
	sum, err := hashFile(ctx, f, h.size, nil)
	if err != nil {
		return false, err
	}
	if sum != h.sum {
		return false, fmt.Errorf("%w: %s exists with different content", ErrRefused, final)
	}
	return true, nil
}

// openPart opens (or creates) the part file and its progress record and
// returns the offset below which the part file holds verified-written data
// of this very image. Everything past that offset is punched back to a hole
// so that bytes of an interrupted write cannot survive.
func openPart(final string, h hello) (part, prog *os.File, offset int64, err error) {
	part, err = os.OpenFile(final+partSuffix, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("%w: %w", ErrReceiver, err)
	}
	prog, err = os.OpenFile(final+progressSuffix, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		part.Close()
		return nil, nil, 0, fmt.Errorf("%w: %w", ErrReceiver, err)
	}
	offset = loadProgress(prog, h)
	// Clear what lies past the verified offset back to a hole, then give
	// the part file its full size.
	err = part.Truncate(offset)
	if err == nil {
		err = part.Truncate(h.size)
	}
	if err == nil {
		err = saveProgress(part, prog, h, offset)
	}
	if err != nil {
		part.Close()
		prog.Close()
		return nil, nil, 0, fmt.Errorf("%w: %w", ErrReceiver, err)
	}
	return part, prog, offset, nil
}

// loadProgress returns the recorded offset if the record is intact and for
// the same size and digest, else 0.
func loadProgress(prog *os.File, h hello) int64 {
	var b [progressLen]byte
	if _, err := prog.ReadAt(b[:], 0); err != nil {
		return 0
	}
	if crc32.ChecksumIEEE(b[:progressLen-4]) != binary.BigEndian.Uint32(b[progressLen-4:]) ||
		!bytes.Equal(b[:8], []byte(progressMagic)) ||
		binary.BigEndian.Uint64(b[8:]) != uint64(h.size) ||
		!bytes.Equal(b[16:48], h.sum[:]) {
		return 0
	}
	off := binary.BigEndian.Uint64(b[48:])
	if off > uint64(h.size) {
		return 0
	}
	return int64(off)
}

// saveProgress makes the part file durable, then records offset.
func saveProgress(part, prog *os.File, h hello, offset int64) error {
	if err := part.Sync(); err != nil {
		return fmt.Errorf("%w: %w", ErrReceiver, err)
	}
	b := make([]byte, 0, progressLen)
	b = append(b, progressMagic...)
	b = binary.BigEndian.AppendUint64(b, uint64(h.size))
	b = append(b, h.sum[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(offset))
	b = binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(b))
	if _, err := prog.WriteAt(b, 0); err != nil {
		return fmt.Errorf("%w: %w", ErrReceiver, err)
	}
	if err := prog.Sync(); err != nil {
		return fmt.Errorf("%w: %w", ErrReceiver, err)
	}
	return nil
}

// hashFile streams the first size bytes of f through SHA-256, calling
// report (if not nil) every hashReportStep bytes.
func hashFile(ctx context.Context, f *os.File, size int64, report func(done int64) error) ([32]byte, error) {
	h := sha256.New()
	buf := make([]byte, 1<<20)
	var done int64
	next := int64(hashReportStep)
	for done < size {
		if err := ctx.Err(); err != nil {
			return [32]byte{}, fmt.Errorf("%w: hashing: %w", ErrReceiver, err)
		}
		n := int(min(int64(len(buf)), size-done))
		m, err := f.ReadAt(buf[:n], done)
		h.Write(buf[:m])
		done += int64(m)
		if err != nil && (!errors.Is(err, io.EOF) || done != size) {
			return [32]byte{}, fmt.Errorf("%w: hashing: %w", ErrReceiver, err)
		}
		if report != nil && done >= next {
			next += hashReportStep
			if err := report(done); err != nil {
				return [32]byte{}, err
			}
		}
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// verifiedSuffix names the record of an image the receiver verified: its
// SHA-256, size and modification time, so that a sender asking again
// (after a lost reply, or before the peer recorded its replica) is told
// at once instead of after hashing the whole image again, which for a
// large image outlasts the sender's I/O timeout.
const verifiedSuffix = ".verified"

// recordVerified writes the record of a verified image, best effort: a
// missing record only costs a hash.
func recordVerified(final string, h hello) {
	fi, err := os.Stat(final)
	if err != nil {
		return
	}
	rec := fmt.Sprintf("%x %d %d\n", h.sum, h.size, fi.ModTime().UnixNano())
	_ = os.WriteFile(final+verifiedSuffix, []byte(rec), 0o640)
}

// verifiedRecord reports whether final is an image verified as h
// announces it and not modified since.
func verifiedRecord(final string, h hello) bool {
	b, err := os.ReadFile(final + verifiedSuffix)
	if err != nil {
		return false
	}
	fi, err := os.Stat(final)
	if err != nil {
		return false
	}
	want := fmt.Sprintf("%x %d %d\n", h.sum, h.size, fi.ModTime().UnixNano())
	return string(b) == want && fi.Size() == h.size
}
