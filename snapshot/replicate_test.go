package snapshot

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/cluster/pki"
)

// dirDest places images at <dir>/<snapshot>/<volume>.qcow2.
type dirDest string

func (d dirDest) Path(snapshotID, volumeID string) (string, error) {
	if filepath.Base(snapshotID) != snapshotID || filepath.Base(volumeID) != volumeID {
		return "", errors.New("bad id")
	}
	return filepath.Join(string(d), snapshotID, volumeID+".qcow2"), nil
}

// sparseImage writes a file of size bytes with random data extents of
// extentLen bytes at the given offsets and returns its path and digest.
func sparseImage(t *testing.T, size int64, extentLen int, offsets ...int64) (string, [32]byte, int64) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "src.qcow2")
	f, err := os.Create(p)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatalf("truncate: %v", err)
	}
	buf := make([]byte, extentLen)
	for _, off := range offsets {
		_, _ = rand.Read(buf)
		if _, err := f.WriteAt(buf, off); err != nil {
			t.Fatalf("write: %v", err)
		}
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatalf("seek: %v", err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatalf("hash: %v", err)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return p, sum, int64(extentLen * len(offsets))
}

func fileSum(t *testing.T, p string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	return sha256.Sum256(b)
}

// startReceiver serves r on a loopback listener (wrapped in TLS when cfg
// is set) until the test ends.
func startReceiver(t *testing.T, r *Receiver, cfg *tls.Config) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	if cfg != nil {
		ln = tls.NewListener(ln, cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = r.Serve(ctx, ln)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return ln.Addr().String()
}

func TestReplicateSparseOverMutualTLS(t *testing.T) {
	const size = 256 << 20
	src, sum, dataLen := sparseImage(t, size, 1<<20, 0, 10<<20, 77<<20+4096, 150<<20, size-(1<<20))

	ca, err := pki.NewCA("test", time.Hour)
	if err != nil {
		t.Fatalf("ca: %v", err)
	}
	n1, err := ca.IssueNode("n1", time.Hour, "127.0.0.1")
	if err != nil {
		t.Fatalf("issue: %v", err)
	}
	n2, err := ca.IssueNode("n2", time.Hour, "127.0.0.1")
	if err != nil {
		t.Fatalf("issue: %v", err)
	}
	dir := t.TempDir()
	var got atomic.Pointer[ReceivedImage]
	r := NewReceiver(dirDest(dir))
	r.Received = func(ri ReceivedImage) { got.Store(&ri) }
	addr := startReceiver(t, r, pki.ServerConfig(n2, pki.RoleNode))

	s := NewSender(&tls.Dialer{Config: pki.ClientConfig(n1, pki.RoleNode, "n2")}, addr)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := s.Send(ctx, Image{SnapshotID: "s1", VolumeID: "v1", Path: src, Size: size, SHA256: sum})
	if err != nil {
		t.Fatalf("send: %v", err)
	}
	final := filepath.Join(dir, "s1", "v1.qcow2")
	if fileSum(t, final) != sum {
		t.Fatalf("received file differs")
	}
	var sys syscall.Stat_t
	if err := syscall.Stat(final, &sys); err != nil {
		t.Fatalf("stat: %v", err)
	}
	if alloc := sys.Blocks * 512; alloc > 2*dataLen {
		t.Fatalf("received file not sparse: %d bytes allocated for %d of data", alloc, dataLen)
	}
	if st.BytesSent < dataLen || st.BytesSent > dataLen+dataLen/4 {
		t.Fatalf("sent %d bytes for %d of data", st.BytesSent, dataLen)
	}
	if ri := got.Load(); ri == nil || ri.Path != final || ri.SHA256 != sum {
		t.Fatalf("Received callback: %+v", ri)
	}
	if _, err := os.Stat(final + partSuffix); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("part file left behind: %v", err)
	}
	t.Logf("size %d MiB, data %d KiB, sent %d KiB in %d chunks, %v (%.0f MiB/s of data, %.0f MiB/s of image)",
		size>>20, dataLen>>10, st.BytesSent>>10, st.Chunks, st.Duration,
		float64(st.BytesSent)/(1<<20)/st.Duration.Seconds(), float64(size)/(1<<20)/st.Duration.Seconds())

	// A repeated Send finds the image in place and sends nothing.
	st, err = s.Send(ctx, Image{SnapshotID: "s1", VolumeID: "v1", Path: src, Size: size, SHA256: sum})
	if err != nil || st.BytesSent != 0 {
		t.Fatalf("repeat send: %+v, %v", st, err)
	}
}

// cutDialer dials TCP and cuts the first connection after limit bytes
// written.
type cutDialer struct {
	limit int64
	used  atomic.Bool
}

func (d *cutDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var nd net.Dialer
	c, err := nd.DialContext(ctx, network, addr)
	if err != nil || d.used.Swap(true) {
		return c, err
	}
	return &cutConn{Conn: c, left: d.limit}, nil
}

type cutConn struct {
	net.Conn
	left int64
}

func (c *cutConn) Write(p []byte) (int, error) {
	if int64(len(p)) <= c.left {
		c.left -= int64(len(p))
		return c.Conn.Write(p)
	}
	n, _ := c.Conn.Write(p[:c.left])
	c.left = 0
	_ = c.Close()
	return n, errors.New("connection cut")
}

func TestReplicateResumesAfterCut(t *testing.T) {
	const size = 64 << 20
	const chunk = 1 << 20
	src, sum, dataLen := sparseImage(t, size, 4<<20, 0, 20<<20, 40<<20)
	dir := t.TempDir()
	r := NewReceiver(dirDest(dir))
	r.SyncEvery = chunk // the resume offset moves with every chunk
	addr := startReceiver(t, r, nil)
	img := Image{SnapshotID: "s1", VolumeID: "v1", Path: src, Size: size, SHA256: sum}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	s := NewSender(&cutDialer{limit: 6*chunk + chunk/2}, addr)
	s.ChunkSize = chunk
	st1, err := s.Send(ctx, img)
	if err == nil {
		t.Fatalf("cut send succeeded")
	}
	final := filepath.Join(dir, "s1", "v1.qcow2")
	if _, err := os.Stat(final); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("final file after a cut: %v", err)
	}
	// Let the receiver take in what reached it before the cut: a new
	// connection for the same image supersedes the old transfer at once,
	// which on a loaded machine may not have read its buffered chunks yet
	// (the product's bound is what was made durable; this test checks the
	// one-chunk bound of an undisturbed receiver).
	for deadline := time.Now().Add(10 * time.Second); ; {
		r.mu.Lock()
		busy := len(r.active)
		r.mu.Unlock()
		if busy == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	st2, err := s.Send(ctx, img)
	if err != nil {
		t.Fatalf("resumed send: %v", err)
	}
	if st2.ResumedAt == 0 {
		t.Fatalf("did not resume: %+v", st2)
	}
	if total := st1.BytesSent + st2.BytesSent; total > dataLen+chunk {
		t.Fatalf("sent %d+%d bytes for %d of data: more than one chunk again", st1.BytesSent, st2.BytesSent, dataLen)
	}
	if fileSum(t, final) != sum {
		t.Fatalf("received file differs")
	}
	t.Logf("first attempt %d bytes, resumed at %d, second attempt %d bytes", st1.BytesSent, st2.ResumedAt, st2.BytesSent)
}

func TestReplicateWrongChecksumRefused(t *testing.T) {
	src, sum, _ := sparseImage(t, 8<<20, 1<<20, 1<<20)
	sum[0] ^= 1
	dir := t.TempDir()
	addr := startReceiver(t, NewReceiver(dirDest(dir)), nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := NewSender(&net.Dialer{}, addr).Send(ctx, Image{SnapshotID: "s1", VolumeID: "v1", Path: src, Size: 8 << 20, SHA256: sum})
	if !errors.Is(err, ErrChecksum) {
		t.Fatalf("want ErrChecksum, got %v", err)
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "s1"))
	if len(entries) != 0 {
		t.Fatalf("files left behind: %v", entries)
	}
}

func TestReplicateRefusals(t *testing.T) {
	src, sum, _ := sparseImage(t, 1<<20, 4096, 0)
	r := NewReceiver(dirDest(t.TempDir()))
	r.MaxImageSize = 1 << 10
	addr := startReceiver(t, r, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := NewSender(&net.Dialer{}, addr)
	if _, err := s.Send(ctx, Image{SnapshotID: "s1", VolumeID: "v1", Path: src, Size: 1 << 20, SHA256: sum}); !errors.Is(err, ErrRefused) {
		t.Fatalf("oversized: want ErrRefused, got %v", err)
	}
	if _, err := s.Send(ctx, Image{SnapshotID: "../x", VolumeID: "v1", Path: src, Size: 1 << 20, SHA256: sum}); !errors.Is(err, ErrRefused) {
		t.Fatalf("bad destination: want ErrRefused, got %v", err)
	}
	if _, err := s.Send(ctx, Image{SnapshotID: "s1", VolumeID: "v1", Path: src, Size: 5, SHA256: sum}); !errors.Is(err, ErrSource) {
		t.Fatalf("wrong size: want ErrSource, got %v", err)
	}
}

// TestReceiverGarbage: a peer that does not speak the protocol gets a
// result naming the problem.
func TestReceiverGarbage(t *testing.T) {
	addr := startReceiver(t, NewReceiver(dirDest(t.TempDir())), nil)
	for name, input := range map[string][]byte{
		"http":        []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		"huge data":   {msgData, 0xff, 0xff, 0xff, 0xff},
		"bad version": append([]byte{msgHello, 0, 0, 0, 1}, 9),
	} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(input); err != nil {
			t.Fatalf("%s: write: %v", name, err)
		}
		typ, p, err := readFrame(c, nil)
		c.Close()
		if err != nil || typ != msgResult {
			t.Fatalf("%s: reply %d, %v", name, typ, err)
		}
		if err := decodeResult(p); !errors.Is(err, ErrProtocol) {
			t.Fatalf("%s: want ErrProtocol, got %v", name, err)
		}
	}
}

// TestSenderGarbage: a sender talking to something that is not a receiver
// fails with ErrProtocol.
func TestSenderGarbage(t *testing.T) {
	src, sum, _ := sparseImage(t, 1<<20, 4096, 0)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = c.Write([]byte("SSH-2.0-OpenSSH_9.6\r\n"))
		_, _ = io.Copy(io.Discard, c)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = NewSender(&net.Dialer{}, ln.Addr().String()).Send(ctx, Image{SnapshotID: "s1", VolumeID: "v1", Path: src, Size: 1 << 20, SHA256: sum})
	if !errors.Is(err, ErrProtocol) {
		t.Fatalf("want ErrProtocol, got %v", err)
	}
}

// pipeConn feeds a fixed input to ServeConn and discards its replies.
type pipeConn struct {
	net.Conn
	r io.Reader
}

func (c pipeConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c pipeConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c pipeConn) SetDeadline(time.Time) error      { return nil }
func (c pipeConn) SetReadDeadline(time.Time) error  { return nil }
func (c pipeConn) SetWriteDeadline(time.Time) error { return nil }
func (c pipeConn) Close() error                     { return nil }
func (c pipeConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }

func frame(typ byte, parts ...[]byte) []byte {
	var b bytes.Buffer
	_ = writeFrame(&b, typ, parts...)
	return b.Bytes()
}

func FuzzReceiver(f *testing.F) {
	h := encodeHello(hello{version: protocolVersion, snapshotID: "s1", volumeID: "v1", size: 4096})
	f.Add(frame(msgHello, h))
	f.Add(append(frame(msgHello, h), frame(msgData, encodeOffset(0), []byte("abc"))...))
	f.Add(append(append(frame(msgHello, h), frame(msgData, encodeOffset(4000), make([]byte, 200))...), frame(msgDone)...))
	f.Add(append(frame(msgHello, h), frame(msgDone)...))
	f.Add(frame(msgResult, encodeResult(codeOK, "")))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		dir := t.TempDir()
		r := NewReceiver(dirDest(dir))
		r.MaxImageSize = 1 << 20
		err := r.ServeConn(context.Background(), pipeConn{r: bytes.NewReader(in)})
		if err != nil && !errors.Is(err, ErrProtocol) && !errors.Is(err, errConnection) &&
			!errors.Is(err, ErrRefused) && !errors.Is(err, ErrChecksum) {
			t.Fatalf("unclassified error: %v", err)
		}
		// Decoders on their own must not panic either.
		_, _ = decodeHello(in)
		_ = decodeResult(in)
		_, _, _ = decodeData(in, 0, 1<<20)
		_, _ = decodeOffset(in, 1<<20)
	})
}

// BenchmarkReplicateDense measures loopback throughput over mutual TLS for
// a fully allocated 64 MiB image (including the receiver's fsyncs and its
// final hash).
func BenchmarkReplicateDense(b *testing.B) {
	const size = 64 << 20
	dir := b.TempDir()
	src := filepath.Join(dir, "src")
	data := make([]byte, size)
	_, _ = rand.Read(data)
	if err := os.WriteFile(src, data, 0o600); err != nil {
		b.Fatalf("write: %v", err)
	}
	sum := sha256.Sum256(data)
	ca, _ := pki.NewCA("bench", time.Hour)
	n1, _ := ca.IssueNode("n1", time.Hour, "127.0.0.1")
	n2, _ := ca.IssueNode("n2", time.Hour, "127.0.0.1")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatalf("listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		_ = NewReceiver(dirDest(filepath.Join(dir, "dst"))).Serve(ctx, tls.NewListener(ln, pki.ServerConfig(n2, pki.RoleNode)))
	}()
	s := NewSender(&tls.Dialer{Config: pki.ClientConfig(n1, pki.RoleNode, "")}, ln.Addr().String())
	b.SetBytes(size)
	for i := 0; b.Loop(); i++ {
		vol := "v" + string(rune('a'+i%26)) + time.Now().Format("150405.000000000")
		if _, err := s.Send(ctx, Image{SnapshotID: "s", VolumeID: vol, Path: src, Size: size, SHA256: sum}); err != nil {
			b.Fatalf("send: %v", err)
		}
	}
}
