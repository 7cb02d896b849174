package export

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"
)

// MaxBurst is the most that WithBandwidthLimit lets through at once, in
// bytes: writes larger than the burst go out in pieces of at most this
// size, each after its share of time.
const MaxBurst = 256 << 10

// WithBandwidthLimit returns a Transport whose writers together send at
// most bytesPerSec bytes per second on average: one token bucket, refilled
// at that rate and holding at most a burst of min(MaxBurst, a tenth of a
// second's worth, at least 1 KiB) bytes, is shared by every writer of the
// returned transport. A write waits for its tokens with the context its
// writer was opened with. Reads and metadata calls are not limited (see
// WithReadBandwidthLimit).
// A bytesPerSec of zero or less returns t itself.
func WithBandwidthLimit(t Transport, bytesPerSec int64) Transport {
	if bytesPerSec <= 0 {
		return t
	}
	return &limitTransport{Transport: t, bucket: newBucket(bytesPerSec)}
}

// WithReadBandwidthLimit returns t with its reads limited to bytesPerSec
// (for imports); writes and metadata calls are not limited. A
// bytesPerSec of zero or less returns t itself.
func WithReadBandwidthLimit(t Transport, bytesPerSec int64) Transport {
	if bytesPerSec <= 0 {
		return t
	}
	return &limitTransport{Transport: t, bucket: newBucket(bytesPerSec), reads: true}
}

// limitTransport is the Transport of WithBandwidthLimit.
type limitTransport struct {
	Transport
	bucket *bucket
	// reads limits reads instead of writes (WithReadBandwidthLimit).
	reads bool
}

var _ Transport = (*limitTransport)(nil)

// OpenWriter implements Transport.
func (l *limitTransport) OpenWriter(ctx context.Context, name string) (FileWriter, error) {
	w, err := l.Transport.OpenWriter(ctx, name)
	if err != nil || l.reads {
		return w, err
	}
	return &limitWriter{FileWriter: w, ctx: ctx, bucket: l.bucket}, nil
}

// limitWriter is a FileWriter of WithBandwidthLimit.
type limitWriter struct {
	FileWriter
	ctx    context.Context
	bucket *bucket
}

// WriteAt implements FileWriter. It reserves len(p) tokens at once and
// writes p in pieces of at most the bucket's burst, each at the moment the
// bucket has paid for it, without waiting for the pieces before it to
// return: the time a write spends on the wire and the scheduling delays of
// a busy host then do not eat into the rate, while no more than a burst
// goes out unpaid. On an error it returns the length of the prefix of p
// that was written; the tokens of pieces never sent are given back.
func (w *limitWriter) WriteAt(p []byte, off int64) (int, error) {
	burst := w.bucket.burst
	paid := w.bucket.reserve(len(p))
	pieces := (len(p) + burst - 1) / burst
	errs := make([]error, pieces)
	var wg sync.WaitGroup
	for i := range pieces {
		lo := i * burst
		hi := min(lo+burst, len(p))
		// The reservation is paid off in order: the bytes after this
		// piece are paid last.
		at := paid.Add(-w.bucket.duration(len(p) - hi))
		if err := sleepUntil(w.ctx, at); err != nil {
			w.bucket.refund(len(p) - lo)
			for j := i; j < pieces; j++ {
				errs[j] = fmt.Errorf("export: waiting for bandwidth: %w", err)
			}
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := w.FileWriter.WriteAt(p[lo:hi], off+int64(lo))
			if err == nil && n < hi-lo {
				err = io.ErrShortWrite
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return i * burst, err
		}
	}
	return len(p), nil
}

// OpenReader implements Transport: with WithReadBandwidthLimit, reads pay
// for their bytes.
func (l *limitTransport) OpenReader(ctx context.Context, name string) (FileReader, error) {
	r, err := l.Transport.OpenReader(ctx, name)
	if err != nil || !l.reads {
		return r, err
	}
	return &limitReader{FileReader: r, ctx: ctx, bucket: l.bucket}, nil
}

// limitReader is a FileReader of WithBandwidthLimit.
type limitReader struct {
	FileReader
	ctx    context.Context
	bucket *bucket
}

// ReadAt implements FileReader: it waits until the bucket has paid for
// len(p) bytes, then reads.
func (r *limitReader) ReadAt(p []byte, off int64) (int, error) {
	if err := sleepUntil(r.ctx, r.bucket.reserve(len(p))); err != nil {
		r.bucket.refund(len(p))
		return 0, fmt.Errorf("export: waiting for bandwidth: %w", err)
	}
	return r.FileReader.ReadAt(p, off)
}

// sleepUntil waits until t or until ctx ends.
func sleepUntil(ctx context.Context, t time.Time) error {
	if d := time.Until(t); d > 0 {
		return sleep(ctx, d)
	}
	return ctx.Err()
}

// bucket is a token bucket of bytes that takers drive into debt: each
// reserves its tokens at once and learns when the debt it leaves is paid
// off, so concurrent takers are served in the order they came, without
// polling, and a taker may reserve more than the burst.
type bucket struct {
	rate  float64 // tokens (bytes) per second
	burst int     // the most tokens the bucket holds

	mu     sync.Mutex // guards the fields below
	tokens float64    // negative while in debt
	last   time.Time  // when tokens was last brought up to date
}

func newBucket(bytesPerSec int64) *bucket {
	burst := min(int64(MaxBurst), max(bytesPerSec/10, 1<<10))
	return &bucket{rate: float64(bytesPerSec), burst: int(burst), tokens: float64(burst), last: time.Now()}
}

// refill brings tokens up to date; the caller holds b.mu.
func (b *bucket) refill(now time.Time) {
	b.tokens = min(float64(b.burst), b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
}

// reserve takes n tokens and returns the instant the debt they leave is
// paid off (now, if there is none).
func (b *bucket) reserve(n int) time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	b.refill(now)
	b.tokens -= float64(n)
	if b.tokens >= 0 {
		return now
	}
	return now.Add(b.duration(int(-b.tokens)))
}

// refund gives back n tokens that were reserved but not used.
func (b *bucket) refund(n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill(time.Now())
	b.tokens = min(float64(b.burst), b.tokens+float64(n))
}

// duration is how long the bucket takes to earn n tokens.
func (b *bucket) duration(n int) time.Duration {
	return time.Duration(float64(n) / b.rate * float64(time.Second))
}
