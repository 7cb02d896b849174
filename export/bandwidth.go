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
// writer was opened with. Reads and metadata calls are not limited.
// A bytesPerSec of zero or less returns t itself.
func WithBandwidthLimit(t Transport, bytesPerSec int64) Transport {
	if bytesPerSec <= 0 {
		return t
	}
	return &limitTransport{Transport: t, bucket: newBucket(bytesPerSec)}
}

// limitTransport is the Transport of WithBandwidthLimit.
type limitTransport struct {
	Transport
	bucket *bucket
}

var _ Transport = (*limitTransport)(nil)

// OpenWriter implements Transport.
func (l *limitTransport) OpenWriter(ctx context.Context, name string) (FileWriter, error) {
	w, err := l.Transport.OpenWriter(ctx, name)
	if err != nil {
		return nil, err
	}
	return &limitWriter{FileWriter: w, ctx: ctx, bucket: l.bucket}, nil
}

// limitWriter is a FileWriter of WithBandwidthLimit.
type limitWriter struct {
	FileWriter
	ctx    context.Context
	bucket *bucket
}

// WriteAt implements FileWriter: it writes p in pieces of at most the
// bucket's burst, each once the bucket holds enough tokens.
func (w *limitWriter) WriteAt(p []byte, off int64) (int, error) {
	written := 0
	for written < len(p) {
		piece := min(len(p)-written, w.bucket.burst)
		if err := w.bucket.take(w.ctx, piece); err != nil {
			return written, fmt.Errorf("export: waiting for bandwidth: %w", err)
		}
		n, err := w.FileWriter.WriteAt(p[written:written+piece], off+int64(written))
		written += max(n, 0)
		if err != nil {
			return written, err
		}
		if n < piece {
			return written, io.ErrShortWrite
		}
	}
	return written, nil
}

// bucket is a token bucket of bytes. Takers may drive it into debt: each
// takes its tokens at once and waits until the debt it leaves is paid off,
// so concurrent takers are served in the order they came, without polling.
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

// take takes n tokens (n at most the burst) and waits until they are paid
// for, or until ctx ends, when it gives them back.
func (b *bucket) take(ctx context.Context, n int) error {
	b.mu.Lock()
	now := time.Now()
	b.tokens = min(float64(b.burst), b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
	b.tokens -= float64(n)
	var wait time.Duration
	if b.tokens < 0 {
		wait = time.Duration(-b.tokens / b.rate * float64(time.Second))
	}
	b.mu.Unlock()
	if wait <= 0 {
		return ctx.Err()
	}
	if err := sleep(ctx, wait); err != nil {
		b.mu.Lock()
		b.tokens = min(float64(b.burst), b.tokens+float64(n))
		b.mu.Unlock()
		return err
	}
	return nil
}
