package smb_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/export"
	"github.com/twinsnap/twinsnap/export/exporttest"
	"github.com/twinsnap/twinsnap/export/smb"
	"github.com/twinsnap/twinsnap/internal/testenv"
)

// counting counts the bytes handed to WriteAt on every transport it wraps,
// and those of the calls that failed.
type counting struct {
	export.Transport
	sent, failed *atomic.Int64
}

func (c counting) OpenWriter(ctx context.Context, name string) (export.FileWriter, error) {
	w, err := c.Transport.OpenWriter(ctx, name)
	if err != nil {
		return nil, err
	}
	return countingWriter{FileWriter: w, c: c}, nil
}

type countingWriter struct {
	export.FileWriter
	c counting
}

func (w countingWriter) WriteAt(p []byte, off int64) (int, error) {
	w.c.sent.Add(int64(len(p)))
	n, err := w.FileWriter.WriteAt(p, off)
	if err != nil {
		w.c.failed.Add(int64(len(p)))
	}
	return n, err
}

// TestWriteSurvivesServerKill writes 64 MiB with eight parallel writers
// through WithRetry, kills smbd with SIGKILL once a quarter is written,
// starts it again on the same port a second later, and checks that the
// write completes, that the file on the server is whole, and how much was
// sent twice; against an encrypted and a signing-only server.
func TestWriteSurvivesServerKill(t *testing.T) {
	t.Run("encrypted", func(t *testing.T) { writeAcrossKill(t, testenv.SambaOptions{}) })
	t.Run("signing", func(t *testing.T) { writeAcrossKill(t, testenv.SambaOptions{SigningOnly: true}) })
}

func writeAcrossKill(t *testing.T, opts testenv.SambaOptions) {
	const (
		size     = 64 << 20
		chunk    = 1 << 20
		parallel = 8
		killAt   = size / 4
		downtime = time.Second
	)
	s := testenv.StartSamba(t, opts)
	dir := freshDir(t, s)
	cfg := config(s, dir)
	var sent, failed atomic.Int64
	var dials atomic.Int64
	redial := func(ctx context.Context) (export.Transport, error) {
		dials.Add(1)
		tr, err := smb.Dial(ctx, cfg)
		if err != nil {
			return nil, err
		}
		return counting{Transport: tr, sent: &sent, failed: &failed}, nil
	}
	tr := export.WithRetry(nil, export.RetryPolicy{Attempts: 30, Base: 50 * time.Millisecond, Max: time.Second}, redial)
	defer func() { _ = tr.Close() }()

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	data := make([]byte, size)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	w, err := tr.OpenWriter(ctx, "disk.part")
	if err != nil {
		t.Fatalf("OpenWriter: %v", err)
	}
	chunks := make(chan export.Chunk)
	go func() {
		defer close(chunks)
		for off := 0; off < size; off += chunk {
			select {
			case chunks <- export.Chunk{Off: int64(off), Data: data[off : off+chunk]}:
			case <-ctx.Done():
				return
			}
		}
	}()

	var (
		killed    bool
		killedAt  time.Time
		restarted = make(chan error, 1)
		watermark int64
		wg        sync.WaitGroup
	)
	began := time.Now()
	err = export.WriteChunks(ctx, w, chunks, parallel, func(off, n int64) {
		watermark = off + n
		if !killed && watermark >= killAt {
			killed = true
			s.Kill()
			killedAt = time.Now()
			t.Logf("smbd killed at watermark %d MiB, %s after the start", watermark>>20, killedAt.Sub(began).Round(time.Millisecond))
			wg.Add(1)
			go func() {
				defer wg.Done()
				time.Sleep(downtime)
				restarted <- s.Restart(ctx)
			}()
		}
	})
	wg.Wait()
	if !killed {
		t.Fatalf("the write finished before the kill")
	}
	if rerr := <-restarted; rerr != nil {
		t.Fatalf("restart smbd: %v", rerr)
	}
	if err != nil {
		t.Fatalf("WriteChunks through WithRetry across the server kill: %v", err)
	}
	if err := w.Sync(); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	took := time.Since(began)
	if watermark != size {
		t.Fatalf("watermark %d, want %d", watermark, size)
	}

	local, err := os.ReadFile(filepath.Join(s.Dir, dir, "disk.part"))
	if err != nil {
		t.Fatalf("file on the server: %v", err)
	}
	if !bytes.Equal(local, data) {
		t.Fatalf("file on the server differs: %d bytes, sha256 %x; want %d bytes, sha256 %x",
			len(local), sha256.Sum256(local), size, sha256.Sum256(data))
	}
	back, err := exporttest.ReadAll(ctx, tr, "disk.part")
	if err != nil || !bytes.Equal(back, data) {
		t.Fatalf("read back through the transport: %d bytes, %v", len(back), err)
	}
	if err := tr.Rename(ctx, "disk.part", "disk.qcow2"); err != nil {
		t.Fatalf("Rename after the restart: %v", err)
	}

	again := sent.Load() - size
	t.Logf("64 MiB with %d writers in %s incl. %s downtime; %d dials; sent %d bytes: %d bytes (%.1f MiB) twice; %d bytes in failed calls",
		parallel, took.Round(time.Millisecond), downtime, dials.Load(), sent.Load(), again, float64(again)/(1<<20), failed.Load())
	if dials.Load() < 2 {
		t.Fatalf("%d dials: the transport was never re-dialled", dials.Load())
	}
	if again < 0 || again > parallel*chunk {
		t.Fatalf("%d bytes sent twice; want at most the writes in flight at the kill (%d)", again, parallel*chunk)
	}
	if again != failed.Load() {
		t.Fatalf("%d bytes sent twice but %d bytes in failed calls: every failed write, and only those, is sent again", again, failed.Load())
	}
}

// TestDialRefusedWhileServerDown checks the error class a re-dial meets
// while smbd is down, and that Restart brings the same address back.
func TestDialRefusedWhileServerDown(t *testing.T) {
	s := testenv.StartSamba(t, testenv.SambaOptions{})
	s.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := smb.Dial(ctx, config(s, "")); !errors.Is(err, export.ErrTransient) {
		t.Fatalf("Dial while smbd is down: %v, want ErrTransient", err)
	}
	if err := s.Restart(ctx); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	tr := dial(t, config(s, ""))
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
}
