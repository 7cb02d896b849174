package smb

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/hirochachacha/go-smb2"

	"github.com/twinsnap/twinsnap/export"
)

// interimWaitMax caps the wait between two tries of a call repeated after
// an unsigned interim response (see again).
const interimWaitMax = 250 * time.Millisecond

// again runs an idempotent call, repeating it while go-smb2 rejects the
// server's unsigned interim response (see unsignedInterim), with waits
// from 1 ms doubling up to interimWaitMax, for at most half the call
// timeout; then the call fails with export.ErrTransient. A repeated write
// carries the same bytes to the same offset as the one still completing
// at the server; a flush that succeeds after the writes returned covers
// them all (a large flush is answered late the first time, and at once
// when repeated after the first one finished).
func (t *Transport) again(ctx context.Context, op, name string, call func() error) error {
	began := time.Now()
	wait := time.Millisecond
	for {
		err := call()
		if !unsignedInterim(err) || time.Since(began)+wait > t.cfg.CallTimeout/2 {
			return err
		}
		if t.interims.Add(1) == 1 {
			t.log.Warn("server answered asynchronously without signing; go-smb2 cannot accept that, repeating the call (encryption avoids this)", "op", op, "name", name)
		}
		timer := time.NewTimer(wait)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return err
		}
		wait = min(2*wait, interimWaitMax)
	}
}

// writer is the FileWriter of a Transport. Its calls run under the context
// the file was opened with (go-smb2 binds a file to its share's context).
type writer struct {
	t    *Transport
	ctx  context.Context
	f    *smb2.File
	name string
}

var _ export.FileWriter = (*writer)(nil)

// WriteAt implements export.FileWriter. Concurrent calls overlap on the
// wire; each sends p in requests of at most 1 MiB.
func (w *writer) WriteAt(p []byte, off int64) (int, error) {
	defer w.t.watch("write", w.name)()
	var n int
	err := w.t.again(w.ctx, "write", w.name, func() error {
		var err error
		n, err = w.f.WriteAt(p, off)
		return err
	})
	if n < 0 {
		n = 0
	}
	if err != nil {
		return n, classify(fmt.Sprintf("write %d bytes at %d to", len(p), off), w.name, err)
	}
	if n < len(p) {
		return n, fmt.Errorf("smb: write to %q: %w", w.name, io.ErrShortWrite)
	}
	return n, nil
}

// Truncate implements export.FileWriter.
func (w *writer) Truncate(size int64) error {
	defer w.t.watch("truncate", w.name)()
	return classify("truncate", w.name, w.t.again(w.ctx, "truncate", w.name, func() error { return w.f.Truncate(size) }))
}

// Sync implements export.FileWriter with an SMB flush; the server makes
// the file durable (Samba: fsync, unless `strict sync = no`).
func (w *writer) Sync() error {
	defer w.t.watch("flush", w.name)()
	return classify("flush", w.name, w.t.again(w.ctx, "flush", w.name, w.f.Sync))
}

// Close implements export.FileWriter. Once the file's context has ended,
// the close request cannot be sent; the server then closes the file with
// the session. A close answered with an unsigned interim response (the
// server waits for an earlier flush) completes at the server and counts
// as done.
func (w *writer) Close() error {
	defer w.t.watch("close", w.name)()
	return closeFile(w.t, w.f, w.name)
}

func closeFile(t *Transport, f *smb2.File, name string) error {
	err := f.Close()
	if unsignedInterim(err) {
		t.log.Debug("close answered asynchronously without signing; the server completes it", "name", name)
		return nil
	}
	return classify("close", name, err)
}

// reader is the FileReader of a Transport.
type reader struct {
	t    *Transport
	ctx  context.Context
	f    *smb2.File
	name string
	size int64
}

var _ export.FileReader = (*reader)(nil)

// ReadAt implements export.FileReader: a short read ends with io.EOF (go-smb2
// returns short reads at the end of a file without it).
func (r *reader) ReadAt(p []byte, off int64) (int, error) {
	defer r.t.watch("read", r.name)()
	var n int
	err := r.t.again(r.ctx, "read", r.name, func() error {
		var err error
		n, err = r.f.ReadAt(p, off)
		return err
	})
	if n < 0 {
		n = 0
	}
	switch {
	case errors.Is(err, io.EOF):
		return n, io.EOF
	case err != nil:
		return n, classify("read", r.name, err)
	case n < len(p):
		return n, io.EOF
	}
	return n, nil
}

// Size implements export.FileReader.
func (r *reader) Size() int64 { return r.size }

// Close implements export.FileReader.
func (r *reader) Close() error {
	defer r.t.watch("close", r.name)()
	return closeFile(r.t, r.f, r.name)
}
