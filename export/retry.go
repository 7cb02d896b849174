package export

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"
)

// RetryPolicy bounds the retries of WithRetry. Zero fields take the values
// of DefaultRetryPolicy.
type RetryPolicy struct {
	// Attempts is the number of tries per operation, the first included.
	Attempts int
	// Base is the wait after the first failure; it doubles with every
	// further failure, with up to a quarter taken off at random.
	Base time.Duration
	// Max caps the wait between two tries.
	Max time.Duration
}

// DefaultRetryPolicy rides out about half a minute without a destination:
// waits of 0.25, 0.5, 1, 2, 4, 8 and 15 s between eight tries.
var DefaultRetryPolicy = RetryPolicy{Attempts: 8, Base: 250 * time.Millisecond, Max: 15 * time.Second}

func (p RetryPolicy) withDefaults() RetryPolicy {
	if p.Attempts < 1 {
		p.Attempts = DefaultRetryPolicy.Attempts
	}
	if p.Base <= 0 {
		p.Base = DefaultRetryPolicy.Base
	}
	if p.Max <= 0 {
		p.Max = DefaultRetryPolicy.Max
	}
	if p.Max < p.Base {
		p.Max = p.Base
	}
	return p
}

// backoff is the wait after the given failed attempt (1 for the first).
func (p RetryPolicy) backoff(attempt int) time.Duration {
	d := p.Max
	if attempt < 32 {
		if b := p.Base << (attempt - 1); b > 0 && b < p.Max {
			d = b
		}
	}
	return d - time.Duration(rand.Int64N(int64(d)/4+1))
}

// errClosed reports a call on a transport after its Close.
var errClosed = errors.New("export: transport closed")

// WithRetry returns a Transport that retries the operations of t that fail
// with ErrTransient, waiting as policy says, and gives up with the last
// error (still ErrTransient) after policy.Attempts tries or when the
// operation's context ends. Other errors return at once.
//
// When redial is not nil, a transient failure means the connection is
// lost: the retry layer closes the underlying transport and the next try
// dials a new one with redial (t may be nil: the first call dials). Open
// writers and readers survive this: each reopens its file on the new
// transport before its next call, without truncating, so a parallel
// transfer resumes where it broke; only the writes in flight at the loss
// are sent again. A write that the server acknowledged before it lost its
// session stays written; one that a crashed server host acknowledged but
// never stored is not noticed here, which is why a package is verified
// against its manifest.
//
// A Rename or Remove whose reply was lost may have happened: retried, a
// Rename that finds its source gone and its target present, and a Remove
// that finds its file gone, report success.
func WithRetry(t Transport, policy RetryPolicy, redial func(ctx context.Context) (Transport, error)) Transport {
	return &retryTransport{
		policy: policy.withDefaults(),
		redial: redial,
		log:    slog.Default().With("component", "export.retry"),
		lock:   make(chan struct{}, 1),
		cur:    t,
	}
}

// retryTransport is the Transport of WithRetry.
type retryTransport struct {
	policy RetryPolicy
	redial func(ctx context.Context) (Transport, error)
	log    *slog.Logger

	// lock guards the fields below; it is a channel so that waiting for
	// it honours a context (a holder may be re-dialling).
	lock   chan struct{}
	cur    Transport // nil after a loss, until re-dialled
	gen    uint64    // counts losses; files reopen when it moves
	closed bool
}

var _ Transport = (*retryTransport)(nil)

func (r *retryTransport) acquire(ctx context.Context) error {
	select {
	case r.lock <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("export: waiting for the transport: %w", ctx.Err())
	}
}

func (r *retryTransport) release() { <-r.lock }

// current returns the live underlying transport and its generation,
// dialling a new one after a loss.
func (r *retryTransport) current(ctx context.Context) (Transport, uint64, error) {
	if err := r.acquire(ctx); err != nil {
		return nil, 0, err
	}
	defer r.release()
	if r.closed {
		return nil, r.gen, errClosed
	}
	if r.cur == nil {
		if r.redial == nil {
			return nil, r.gen, fmt.Errorf("export: no transport and no way to dial one: %w", errClosed)
		}
		t, err := r.redial(ctx)
		if err != nil {
			return nil, r.gen, fmt.Errorf("export: re-dial: %w", err)
		}
		r.cur = t
		if r.gen > 0 {
			r.log.Info("transport re-dialled", "generation", r.gen)
		}
	}
	return r.cur, r.gen, nil
}

// lost records that the transport of generation gen broke: it is closed,
// and the next call dials a new one. It does nothing without redial, or
// when another caller already handled this loss.
func (r *retryTransport) lost(ctx context.Context, gen uint64, cause error) {
	if r.redial == nil {
		return
	}
	if err := r.acquire(ctx); err != nil {
		return
	}
	if r.closed || r.cur == nil || r.gen != gen {
		r.release()
		return
	}
	old := r.cur
	r.cur = nil
	r.gen++
	r.release()
	r.log.Warn("connection lost; will re-dial", "generation", gen, "err", cause)
	if err := old.Close(); err != nil {
		r.log.Debug("closing the lost transport", "err", err)
	}
}

// retry runs try until it succeeds, fails permanently, runs out of
// attempts or ctx ends. try reports the generation it ran on.
func (r *retryTransport) retry(ctx context.Context, op string, try func() (uint64, error)) error {
	for attempt := 1; ; attempt++ {
		gen, err := try()
		if err == nil {
			return nil
		}
		if !errors.Is(err, ErrTransient) {
			return err
		}
		r.lost(ctx, gen, err)
		if attempt >= r.policy.Attempts {
			return fmt.Errorf("export: %s: giving up after %d attempts: %w", op, attempt, err)
		}
		wait := r.policy.backoff(attempt)
		level := slog.LevelDebug
		if attempt == 1 {
			level = slog.LevelWarn
		}
		r.log.Log(ctx, level, "transient failure; retrying", "op", op, "attempt", attempt, "wait", wait, "err", err)
		if werr := sleep(ctx, wait); werr != nil {
			return fmt.Errorf("export: %s: stopped retrying after %v: %w", op, err, werr)
		}
	}
}

// do runs fn on the current transport with retries.
func (r *retryTransport) do(ctx context.Context, op string, fn func(Transport) error) error {
	return r.retry(ctx, op, func() (uint64, error) {
		t, gen, err := r.current(ctx)
		if err != nil {
			return gen, err
		}
		return gen, fn(t)
	})
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// OpenWriter implements Transport.
func (r *retryTransport) OpenWriter(ctx context.Context, name string) (FileWriter, error) {
	w := &retryWriter{r: r, ctx: ctx, name: name}
	err := r.retry(ctx, "open "+name, func() (uint64, error) {
		_, gen, err := w.handle()
		return gen, err
	})
	if err != nil {
		return nil, err
	}
	return w, nil
}

// OpenReader implements Transport.
func (r *retryTransport) OpenReader(ctx context.Context, name string) (FileReader, error) {
	rd := &retryReader{r: r, ctx: ctx, name: name}
	err := r.retry(ctx, "open "+name, func() (uint64, error) {
		_, gen, err := rd.handle()
		return gen, err
	})
	if err != nil {
		return nil, err
	}
	return rd, nil
}

// Stat implements Transport.
func (r *retryTransport) Stat(ctx context.Context, name string) (FileInfo, error) {
	var fi FileInfo
	err := r.do(ctx, "stat "+name, func(t Transport) error {
		var err error
		fi, err = t.Stat(ctx, name)
		return err
	})
	return fi, err
}

// Rename implements Transport.
func (r *retryTransport) Rename(ctx context.Context, from, to string) error {
	failed := false
	return r.do(ctx, "rename "+from, func(t Transport) error {
		err := t.Rename(ctx, from, to)
		if failed && errors.Is(err, ErrNotExist) {
			// The failed attempt may have renamed before its reply was lost.
			_, ferr := t.Stat(ctx, from)
			_, terr := t.Stat(ctx, to)
			if errors.Is(ferr, ErrNotExist) && terr == nil {
				r.log.Info("rename happened before its reply was lost", "from", from, "to", to)
				return nil
			}
		}
		if errors.Is(err, ErrTransient) {
			failed = true
		}
		return err
	})
}

// Remove implements Transport.
func (r *retryTransport) Remove(ctx context.Context, name string) error {
	failed := false
	return r.do(ctx, "remove "+name, func(t Transport) error {
		err := t.Remove(ctx, name)
		if failed && errors.Is(err, ErrNotExist) {
			r.log.Info("remove happened before its reply was lost", "name", name)
			return nil
		}
		if errors.Is(err, ErrTransient) {
			failed = true
		}
		return err
	})
}

// MkdirAll implements Transport.
func (r *retryTransport) MkdirAll(ctx context.Context, dir string) error {
	return r.do(ctx, "mkdir "+dir, func(t Transport) error { return t.MkdirAll(ctx, dir) })
}

// List implements Transport.
func (r *retryTransport) List(ctx context.Context, dir string) ([]FileInfo, error) {
	var fis []FileInfo
	err := r.do(ctx, "list "+dir, func(t Transport) error {
		var err error
		fis, err = t.List(ctx, dir)
		return err
	})
	return fis, err
}

// Close implements Transport.
func (r *retryTransport) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.acquire(ctx); err != nil {
		return err
	}
	defer r.release()
	if r.closed {
		return nil
	}
	r.closed = true
	if r.cur == nil {
		return nil
	}
	err := r.cur.Close()
	r.cur = nil
	return err
}

// retryWriter is a FileWriter of WithRetry: it reopens its file on the
// current transport whenever the transport was re-dialled.
type retryWriter struct {
	r    *retryTransport
	ctx  context.Context
	name string

	mu     sync.Mutex // guards the fields below
	w      FileWriter
	gen    uint64
	closed bool
}

var _ FileWriter = (*retryWriter)(nil)

// handle returns the file on the current transport, reopening it there if
// needed.
func (w *retryWriter) handle() (FileWriter, uint64, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil, w.gen, fmt.Errorf("export: %s: %w", w.name, errClosed)
	}
	t, gen, err := w.r.current(w.ctx)
	if err != nil {
		return nil, gen, err
	}
	if w.w != nil && w.gen == gen {
		return w.w, gen, nil
	}
	if w.w != nil {
		// It belonged to a lost session; closing it can only fail.
		_ = w.w.Close()
		w.w = nil
		w.r.log.Info("reopening file on the new transport", "name", w.name, "generation", gen)
	}
	fw, err := t.OpenWriter(w.ctx, w.name)
	if err != nil {
		return nil, gen, err
	}
	w.w, w.gen = fw, gen
	return fw, gen, nil
}

func (w *retryWriter) call(op string, fn func(FileWriter) error) error {
	return w.r.retry(w.ctx, op+" "+w.name, func() (uint64, error) {
		fw, gen, err := w.handle()
		if err != nil {
			return gen, err
		}
		return gen, fn(fw)
	})
}

// WriteAt implements FileWriter. A write is retried whole.
func (w *retryWriter) WriteAt(p []byte, off int64) (int, error) {
	err := w.call("write", func(fw FileWriter) error {
		n, err := fw.WriteAt(p, off)
		if err == nil && n < len(p) {
			err = io.ErrShortWrite
		}
		return err
	})
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// Truncate implements FileWriter.
func (w *retryWriter) Truncate(size int64) error {
	return w.call("truncate", func(fw FileWriter) error { return fw.Truncate(size) })
}

// Sync implements FileWriter. After a re-dial it flushes the reopened file,
// which covers what the lost session wrote to the same server.
func (w *retryWriter) Sync() error {
	return w.call("sync", func(fw FileWriter) error { return fw.Sync() })
}

// Close implements FileWriter. A transient failure is not reported: the
// file of a lost session is closed by the server.
func (w *retryWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	if w.w == nil {
		return nil
	}
	err := w.w.Close()
	w.w = nil
	if errors.Is(err, ErrTransient) {
		w.r.log.Debug("closing a file of a lost session", "name", w.name, "err", err)
		return nil
	}
	return err
}

// retryReader is a FileReader of WithRetry; like retryWriter it reopens its
// file after a re-dial.
type retryReader struct {
	r    *retryTransport
	ctx  context.Context
	name string

	mu     sync.Mutex // guards the fields below
	rd     FileReader
	gen    uint64
	size   int64
	opened bool
	closed bool
}

var _ FileReader = (*retryReader)(nil)

func (rd *retryReader) handle() (FileReader, uint64, error) {
	rd.mu.Lock()
	defer rd.mu.Unlock()
	if rd.closed {
		return nil, rd.gen, fmt.Errorf("export: %s: %w", rd.name, errClosed)
	}
	t, gen, err := rd.r.current(rd.ctx)
	if err != nil {
		return nil, gen, err
	}
	if rd.rd != nil && rd.gen == gen {
		return rd.rd, gen, nil
	}
	if rd.rd != nil {
		_ = rd.rd.Close()
		rd.rd = nil
	}
	fr, err := t.OpenReader(rd.ctx, rd.name)
	if err != nil {
		return nil, gen, err
	}
	if !rd.opened {
		rd.size, rd.opened = fr.Size(), true
	}
	rd.rd, rd.gen = fr, gen
	return fr, gen, nil
}

// ReadAt implements FileReader.
func (rd *retryReader) ReadAt(p []byte, off int64) (int, error) {
	var n int
	var eof error
	err := rd.r.retry(rd.ctx, "read "+rd.name, func() (uint64, error) {
		fr, gen, err := rd.handle()
		if err != nil {
			return gen, err
		}
		n, err = fr.ReadAt(p, off)
		if errors.Is(err, io.EOF) {
			eof = io.EOF
			return gen, nil
		}
		return gen, err
	})
	if err != nil {
		return 0, err
	}
	return n, eof
}

// Size implements FileReader: the size when the file was first opened.
func (rd *retryReader) Size() int64 {
	rd.mu.Lock()
	defer rd.mu.Unlock()
	return rd.size
}

// Close implements FileReader.
func (rd *retryReader) Close() error {
	rd.mu.Lock()
	defer rd.mu.Unlock()
	if rd.closed {
		return nil
	}
	rd.closed = true
	if rd.rd == nil {
		return nil
	}
	err := rd.rd.Close()
	rd.rd = nil
	if errors.Is(err, ErrTransient) {
		return nil
	}
	return err
}
