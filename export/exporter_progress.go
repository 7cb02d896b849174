package export

import (
	"context"
	"sync"
	"time"
)

// rateSpan is how far back Progress.Rate looks.
const rateSpan = 5 * time.Second

// progress tracks a transfer's watermark, counts and rate, and calls the
// caller's callback at least every progressEvery and at the end of each
// file, never concurrently.
type progress struct {
	fn  func(Progress) error
	now func() time.Time

	mu         sync.Mutex // guards the fields below
	cur        Progress
	totalKnown bool
	samples    []rateSample
	firstErr   error
	cancel     context.CancelFunc

	callMu sync.Mutex // serialises the callback
}

type rateSample struct {
	at    time.Time
	bytes int64
}

// newProgress returns a tracker whose watermark starts at offset.
func newProgress(fn func(Progress) error, now func() time.Time, offset int64) *progress {
	return &progress{fn: fn, now: now, cur: Progress{Offset: offset}}
}

// start reports every progressEvery until the returned stop is called;
// the first error of the callback cancels the transfer through cancel.
func (p *progress) start(ctx context.Context, cancel context.CancelFunc) (stop func()) {
	p.mu.Lock()
	p.cancel = cancel
	p.mu.Unlock()
	if p.fn == nil {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(progressEvery)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				p.report()
			case <-done:
				return
			case <-ctx.Done():
				return
			}
		}
	})
	return func() {
		close(done)
		wg.Wait()
	}
}

// setTotal sets the stream's length (an estimate unless known).
func (p *progress) setTotal(total int64, known bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cur.Total, p.totalKnown = total, known
}

// setFile names the file being transferred.
func (p *progress) setFile(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cur.File = name
}

// wrote counts n bytes transferred and moves the watermark up to mark.
func (p *progress) wrote(n, mark int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cur.Bytes += n
	p.cur.Offset = max(p.cur.Offset, mark)
}

// advance moves the watermark up to mark.
func (p *progress) advance(mark int64) {
	p.wrote(0, mark)
}

// watermark returns the current watermark.
func (p *progress) watermark() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cur.Offset
}

// written returns the bytes transferred.
func (p *progress) written() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cur.Bytes
}

// snapshot returns the current Progress with its rate.
func (p *progress) snapshot() Progress {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	p.samples = append(p.samples, rateSample{now, p.cur.Bytes})
	for len(p.samples) > 2 && now.Sub(p.samples[1].at) >= rateSpan {
		p.samples = p.samples[1:]
	}
	cur := p.cur
	if first := p.samples[0]; now.Sub(first.at) > 0 {
		cur.Rate = int64(float64(cur.Bytes-first.bytes) / now.Sub(first.at).Seconds())
	}
	if !p.totalKnown {
		cur.Total = max(cur.Total, cur.Offset)
	}
	return cur
}

// report calls the callback with the current progress.
func (p *progress) report() {
	if p.fn == nil {
		return
	}
	p.callMu.Lock()
	defer p.callMu.Unlock()
	if err := p.fn(p.snapshot()); err != nil {
		p.mu.Lock()
		if p.firstErr == nil {
			p.firstErr = err
			if p.cancel != nil {
				p.cancel()
			}
		}
		p.mu.Unlock()
	}
}

// final reports once more and returns the callback's first error.
func (p *progress) final() error {
	p.report()
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.firstErr
}
