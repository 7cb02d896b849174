package snapshot

import (
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// blockingDest holds Path until release is closed.
type blockingDest struct {
	dir     string
	entered chan struct{}
	release chan struct{}
}

func (d *blockingDest) Path(snapshotID, volumeID string) (string, error) {
	close(d.entered)
	<-d.release
	return filepath.Join(d.dir, snapshotID, volumeID+".img"), nil
}

// TestReceiverCancelledBetweenReads: a transfer whose context ends while
// the receiver is busy between two reads (here: choosing the destination)
// ends at once, not after the idle timeout, as its next read or write
// would otherwise set a fresh deadline over the cancellation's.
func TestReceiverCancelledBetweenReads(t *testing.T) {
	dest := &blockingDest{dir: t.TempDir(), entered: make(chan struct{}), release: make(chan struct{})}
	r := NewReceiver(dest)
	r.IdleTimeout = 20 * time.Second
	client, server := net.Pipe()
	defer client.Close()
	defer server.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.ServeConn(ctx, server) }()
	client.SetDeadline(time.Now().Add(waitLimit))
	if err := writeFrame(client, msgHello, encodeHello(hello{version: protocolVersion, snapshotID: "s1", volumeID: "v1", size: 1 << 20})); err != nil {
		t.Fatalf("hello: %v", err)
	}
	<-dest.entered
	cancel()
	time.Sleep(100 * time.Millisecond) // the cancellation's deadline lands on the connection
	close(dest.release)
	go func() { _, _ = io.Copy(io.Discard, client) }()
	start := time.Now()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("ServeConn after the cancellation: err = %v, want context.Canceled", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("ServeConn returned %v after the cancellation, want at once", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("ServeConn still serving 10 s after its context ended (idle timeout %v)", r.IdleTimeout)
	}
}

// pipeDialer hands out one end of a pipe.
type pipeDialer struct{ conn net.Conn }

func (d pipeDialer) DialContext(context.Context, string, string) (net.Conn, error) {
	return d.conn, nil
}

// TestSenderCancelledBetweenWrites: a Send whose context ends between two
// chunks returns at once, not after the I/O timeout, although the peer
// has stopped reading.
func TestSenderCancelledBetweenWrites(t *testing.T) {
	const size = 4 << 20
	src, sum, _ := sparseImage(t, size, size, 0)
	client, server := net.Pipe()
	defer client.Close()
	defer server.Close()
	// The peer: takes the hello, resumes at 0, reads one chunk, then
	// reads nothing more.
	peer := make(chan error, 1)
	go func() {
		server.SetDeadline(time.Now().Add(waitLimit))
		if _, _, err := readFrame(server, nil); err != nil {
			peer <- err
			return
		}
		if err := writeFrame(server, msgResume, encodeOffset(0)); err != nil {
			peer <- err
			return
		}
		_, _, err := readFrame(server, nil)
		peer <- err
	}()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := &Sender{Dialer: pipeDialer{client}, Addr: "peer", ChunkSize: 1 << 20, IOTimeout: 20 * time.Second}
	var once sync.Once
	s.Progress = func(Image, int64) {
		once.Do(func() {
			cancel()
			time.Sleep(100 * time.Millisecond) // the cancellation's deadline lands on the connection
		})
	}
	start := time.Now()
	_, err := s.Send(ctx, Image{SnapshotID: "s1", VolumeID: "v1", Path: src, Size: size, SHA256: sum})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Send after the cancellation: err = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Send returned %v after the cancellation, want at once (I/O timeout %v)", d, s.IOTimeout)
	}
	if err := <-peer; err != nil {
		t.Fatalf("peer: %v", err)
	}
}
