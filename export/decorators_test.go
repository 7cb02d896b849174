package export_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/export"
	"github.com/twinsnap/twinsnap/export/exporttest"
)

func randomData(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// send feeds data to a channel in chunks of size, in the given order of
// chunk indexes, until ctx ends.
func send(ctx context.Context, data []byte, size int, order []int) <-chan export.Chunk {
	ch := make(chan export.Chunk)
	go func() {
		defer close(ch)
		for _, i := range order {
			lo := i * size
			hi := min(lo+size, len(data))
			select {
			case ch <- export.Chunk{Off: int64(lo), Data: data[lo:hi]}:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch
}

func inOrder(n int) []int {
	o := make([]int, n)
	for i := range o {
		o[i] = i
	}
	return o
}

// session is one connection to a Memory transport: cut, it fails every
// call, its open files' included, with ErrTransient, like an SMB session
// whose server died.
type session struct {
	*exporttest.Memory
	net  *network // set by network.dial
	dead atomic.Bool
}

func (s *session) check() error {
	if s.dead.Load() {
		return fmt.Errorf("session: connection reset: %w", export.ErrTransient)
	}
	return nil
}

func (s *session) OpenWriter(ctx context.Context, name string) (export.FileWriter, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	w, err := s.Memory.OpenWriter(ctx, name)
	if err != nil {
		return nil, err
	}
	return &sessionWriter{FileWriter: w, s: s}, nil
}

func (s *session) OpenReader(ctx context.Context, name string) (export.FileReader, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	r, err := s.Memory.OpenReader(ctx, name)
	if err != nil {
		return nil, err
	}
	return &sessionReader{FileReader: r, s: s}, nil
}

type sessionReader struct {
	export.FileReader
	s *session
}

func (r *sessionReader) ReadAt(p []byte, off int64) (int, error) {
	if err := r.s.check(); err != nil {
		return 0, err
	}
	return r.FileReader.ReadAt(p, off)
}

func (s *session) Stat(ctx context.Context, name string) (export.FileInfo, error) {
	if err := s.check(); err != nil {
		return export.FileInfo{}, err
	}
	return s.Memory.Stat(ctx, name)
}

func (s *session) Rename(ctx context.Context, from, to string) error {
	if err := s.check(); err != nil {
		return err
	}
	return s.Memory.Rename(ctx, from, to)
}

func (s *session) Remove(ctx context.Context, name string) error {
	if err := s.check(); err != nil {
		return err
	}
	return s.Memory.Remove(ctx, name)
}

func (s *session) MkdirAll(ctx context.Context, dir string) error {
	if err := s.check(); err != nil {
		return err
	}
	return s.Memory.MkdirAll(ctx, dir)
}

// Close cuts the session; the files stay in the Memory.
func (s *session) Close() error {
	s.dead.Store(true)
	return nil
}

type sessionWriter struct {
	export.FileWriter
	s *session
}

// WriteAt counts what it is given, takes a while on the wire, and fails if
// the session is cut before the reply.
func (w *sessionWriter) WriteAt(p []byte, off int64) (int, error) {
	if w.s.net != nil {
		w.s.net.sent.Add(int64(len(p)))
		if n := w.s.net.writes.Add(1); n == 20 || n == 90 {
			w.s.net.cut(3)
		}
	}
	if err := w.s.check(); err != nil {
		return 0, err
	}
	time.Sleep(200 * time.Microsecond)
	if err := w.s.check(); err != nil {
		return 0, err
	}
	return w.FileWriter.WriteAt(p, off)
}

func (w *sessionWriter) Sync() error {
	if err := w.s.check(); err != nil {
		return err
	}
	return w.FileWriter.Sync()
}

// network hands out sessions over one Memory and counts the dials.
type network struct {
	mem     *exporttest.Memory
	mu      sync.Mutex
	cur     *session
	dials   int
	refuse  int // the next dials to fail with ErrTransient
	dialErr error

	// cutting sessions: the 20th and the 90th write cut the session;
	// sent counts the bytes given to writes
	cutting bool
	writes  atomic.Int64
	sent    atomic.Int64
}

func (n *network) dial(context.Context) (export.Transport, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.dials++
	if n.dialErr != nil {
		return nil, n.dialErr
	}
	if n.refuse > 0 {
		n.refuse--
		return nil, fmt.Errorf("dial: connection refused: %w", export.ErrTransient)
	}
	n.cur = &session{Memory: n.mem}
	if n.cutting {
		n.cur.net = n
	}
	return n.cur, nil
}

// cut kills the current session and makes the next refuse dials fail.
func (n *network) cut(refuse int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.cur.dead.Store(true)
	n.refuse = refuse
}

var fastRetry = export.RetryPolicy{Attempts: 10, Base: time.Millisecond, Max: 10 * time.Millisecond}

func TestWriteChunksReportsInOrder(t *testing.T) {
	mem := exporttest.NewMemory()
	var inflight, most atomic.Int64
	mem.BeforeWrite = func(string, int64, int) error {
		n := inflight.Add(1)
		defer inflight.Add(-1)
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		time.Sleep(time.Duration(mrand.IntN(3000)) * time.Microsecond)
		return nil
	}
	ctx := context.Background()
	w, err := mem.OpenWriter(ctx, "f")
	if err != nil {
		t.Fatal(err)
	}
	data := randomData(t, 200*1000+7)
	var reported []int64
	err = export.WriteChunks(ctx, w, send(ctx, data, 1000, inOrder(201)), 6, func(off, n int64) {
		reported = append(reported, off)
	})
	if err != nil {
		t.Fatalf("WriteChunks: %v", err)
	}
	for i, off := range reported {
		if off != int64(i*1000) {
			t.Fatalf("report %d is offset %d, want %d: reports must follow the order sent", i, off, i*1000)
		}
	}
	if len(reported) != 201 {
		t.Fatalf("%d reports, want 201", len(reported))
	}
	if got, _ := mem.Bytes("f"); !bytes.Equal(got, data) {
		t.Fatalf("content differs")
	}
	if m := most.Load(); m > 6 || m < 2 {
		t.Fatalf("at most %d writes were in flight; want between 2 and the parallelism, 6", m)
	}
}

// TestWriteChunksWatermarkAfterFailure checks that after a failed write
// the reports stop before the failed chunk, so a resume from the last
// report rewrites it.
func TestWriteChunksWatermarkAfterFailure(t *testing.T) {
	mem := exporttest.NewMemory()
	failAt := int64(37 * 1000)
	mem.BeforeWrite = func(_ string, off int64, _ int) error {
		time.Sleep(time.Duration(mrand.IntN(500)) * time.Microsecond)
		if off == failAt {
			return errors.New("disk full")
		}
		return nil
	}
	ctx := context.Background()
	w, err := mem.OpenWriter(ctx, "f")
	if err != nil {
		t.Fatal(err)
	}
	data := randomData(t, 100*1000)
	var next int64
	err = export.WriteChunks(ctx, w, send(ctx, data, 1000, inOrder(100)), 4, func(off, n int64) {
		if off != next {
			t.Errorf("report of %d, want %d next", off, next)
		}
		next = off + n
	})
	if err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("WriteChunks = %v, want the write's error", err)
	}
	// Every chunk before the failed one was sent before it and written:
	// the watermark reaches the failed chunk and stops there.
	if next != failAt {
		t.Fatalf("watermark %d, want the failed chunk's offset %d", next, failAt)
	}
}

func TestWriteChunksStopsWithContext(t *testing.T) {
	mem := exporttest.NewMemory()
	ctx, cancel := context.WithCancel(context.Background())
	w, err := mem.OpenWriter(ctx, "f")
	if err != nil {
		t.Fatal(err)
	}
	chunks := make(chan export.Chunk) // nothing ever sent
	time.AfterFunc(50*time.Millisecond, cancel)
	done := make(chan error, 1)
	go func() { done <- export.WriteChunks(ctx, w, chunks, 4, nil) }()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("WriteChunks = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("WriteChunks did not return after its context ended")
	}
}

// TestRetryReopensAfterLoss cuts the session twice during a parallel
// write, each time refusing a few dials, and checks that the write
// completes and that only the writes in flight were sent again.
func TestRetryReopensAfterLoss(t *testing.T) {
	mem := exporttest.NewMemory()
	net := &network{mem: mem, cutting: true}
	tr := export.WithRetry(nil, fastRetry, net.dial)
	defer func() { _ = tr.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := tr.MkdirAll(ctx, "pkg"); err != nil {
		t.Fatal(err)
	}
	w, err := tr.OpenWriter(ctx, "pkg/disk")
	if err != nil {
		t.Fatal(err)
	}
	const chunk, n = 4096, 160
	data := randomData(t, chunk*n)
	order := mrand.Perm(n)
	var reported int
	err = export.WriteChunks(ctx, w, send(ctx, data, chunk, order), 4, func(int64, int64) { reported++ })
	if err != nil {
		t.Fatalf("WriteChunks through WithRetry: %v", err)
	}
	if err := w.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if got, _ := mem.Bytes("pkg/disk"); !bytes.Equal(got, data) {
		t.Fatalf("content differs after two lost sessions")
	}
	if reported != n {
		t.Fatalf("%d chunks reported, want %d", reported, n)
	}
	// One dial at first, and for each cut 3 refused and one that works.
	if net.dials != 9 {
		t.Fatalf("%d dials, want 9", net.dials)
	}
	again := net.sent.Load() - int64(len(data))
	t.Logf("sent %d bytes for %d: %d again", net.sent.Load(), len(data), again)
	if again == 0 || again > 2*4*chunk {
		t.Fatalf("%d bytes sent again; want some, and at most the writes in flight at the two cuts (%d)", again, 2*4*chunk)
	}
}

// TestRetryReopensReader cuts the session under an open reader.
func TestRetryReopensReader(t *testing.T) {
	mem := exporttest.NewMemory()
	net := &network{mem: mem}
	tr := export.WithRetry(nil, fastRetry, net.dial)
	defer func() { _ = tr.Close() }()
	ctx := context.Background()
	data := randomData(t, 10000)
	w, err := tr.OpenWriter(ctx, "f")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := tr.OpenReader(ctx, "f")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = r.Close() }()
	net.cut(2)
	buf := make([]byte, 20000)
	n, err := r.ReadAt(buf, 0)
	if n != len(data) || !errors.Is(err, io.EOF) || !bytes.Equal(buf[:n], data) {
		t.Fatalf("ReadAt across a lost session = %d, %v; want %d bytes and io.EOF", n, err, len(data))
	}
	if r.Size() != int64(len(data)) || net.dials != 4 {
		t.Fatalf("Size %d after %d dials; want %d after 4", r.Size(), net.dials, len(data))
	}
}

func TestRetryGivesUp(t *testing.T) {
	mem := exporttest.NewMemory()
	var calls atomic.Int64
	mem.BeforeOp = func(op, _ string) error {
		calls.Add(1)
		return fmt.Errorf("timeout: %w", export.ErrTransient)
	}
	tr := export.WithRetry(mem, export.RetryPolicy{Attempts: 4, Base: time.Millisecond, Max: 2 * time.Millisecond}, nil)
	_, err := tr.Stat(context.Background(), "f")
	if !errors.Is(err, export.ErrTransient) {
		t.Fatalf("Stat = %v, want the last transient error", err)
	}
	if calls.Load() != 4 {
		t.Fatalf("%d calls, want 4 attempts", calls.Load())
	}
}

func TestRetryLeavesPermanentErrors(t *testing.T) {
	mem := exporttest.NewMemory()
	var calls atomic.Int64
	mem.BeforeOp = func(string, string) error {
		calls.Add(1)
		return nil
	}
	tr := export.WithRetry(mem, fastRetry, nil)
	_, err := tr.Stat(context.Background(), "missing")
	if !errors.Is(err, export.ErrNotExist) || calls.Load() != 1 {
		t.Fatalf("Stat = %v after %d calls; want ErrNotExist after one", err, calls.Load())
	}
	net := &network{mem: mem, dialErr: errors.New("logon failure")}
	tr = export.WithRetry(nil, fastRetry, net.dial)
	if _, err := tr.Stat(context.Background(), "x"); err == nil || net.dials != 1 {
		t.Fatalf("Stat with a failing dial = %v after %d dials; want the dial's error after one", err, net.dials)
	}
}

// TestRetryLostReplies makes a Rename and a Remove happen but lose their
// replies, and checks that the retries report success.
func TestRetryLostReplies(t *testing.T) {
	mem := exporttest.NewMemory()
	net := &network{mem: mem}
	tr := export.WithRetry(nil, fastRetry, net.dial)
	ctx := context.Background()
	w, err := tr.OpenWriter(ctx, "a.part")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt([]byte("data"), 0); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	// The rename happens, but its reply is lost: the retry layer sees a
	// transient failure first, then the target present and the source
	// gone.
	if err := mem.Rename(ctx, "a.part", "a"); err != nil {
		t.Fatal(err)
	}
	var failedOnce atomic.Bool
	mem.BeforeOp = func(op, _ string) error {
		if op == "rename" && failedOnce.CompareAndSwap(false, true) {
			return fmt.Errorf("reply lost: %w", export.ErrTransient)
		}
		return nil
	}
	if err := tr.Rename(ctx, "a.part", "a"); err != nil {
		t.Fatalf("Rename retried after a lost reply: %v", err)
	}
	mem.BeforeOp = nil
	if err := mem.Remove(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	failedOnce.Store(false)
	mem.BeforeOp = func(op, _ string) error {
		if op == "remove" && failedOnce.CompareAndSwap(false, true) {
			return fmt.Errorf("reply lost: %w", export.ErrTransient)
		}
		return nil
	}
	if err := tr.Remove(ctx, "a"); err != nil {
		t.Fatalf("Remove retried after a lost reply: %v", err)
	}
	// Without an earlier failure, a missing file is still ErrNotExist.
	mem.BeforeOp = nil
	if err := tr.Remove(ctx, "a"); !errors.Is(err, export.ErrNotExist) {
		t.Fatalf("Remove of a missing file = %v, want ErrNotExist", err)
	}
	if err := tr.Rename(ctx, "a.part", "b"); !errors.Is(err, export.ErrNotExist) {
		t.Fatalf("Rename of a missing file = %v, want ErrNotExist", err)
	}
}

func TestRetryWaitHonoursContext(t *testing.T) {
	mem := exporttest.NewMemory()
	mem.BeforeOp = func(string, string) error { return fmt.Errorf("down: %w", export.ErrTransient) }
	tr := export.WithRetry(mem, export.RetryPolicy{Attempts: 100, Base: time.Hour, Max: time.Hour}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	began := time.Now()
	_, err := tr.Stat(ctx, "f")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Stat = %v, want context.DeadlineExceeded", err)
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Fatalf("Stat took %s after its context ended", took)
	}
}

func TestRetryConformance(t *testing.T) {
	exporttest.Run(t, func(t *testing.T) export.Transport {
		net := &network{mem: exporttest.NewMemory()}
		return export.WithRetry(nil, fastRetry, func(ctx context.Context) (export.Transport, error) {
			return net.dial(ctx)
		})
	})
}

// TestBandwidthLimitAccuracy writes for about ten seconds through the
// limiter with eight parallel writers on two files and checks the average
// rate over the whole transfer.
func TestBandwidthLimitAccuracy(t *testing.T) {
	if testing.Short() {
		t.Skip("ten seconds")
	}
	const rate = 8 << 20 // bytes per second
	const seconds = 10
	mem := exporttest.NewMemory()
	var mu sync.Mutex
	var perSecond []int64
	began := time.Now()
	mem.BeforeWrite = func(_ string, _ int64, n int) error {
		mu.Lock()
		defer mu.Unlock()
		s := int(time.Since(began) / time.Second)
		for len(perSecond) <= s {
			perSecond = append(perSecond, 0)
		}
		perSecond[s] += int64(n)
		return nil
	}
	tr := export.WithBandwidthLimit(mem, rate)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	total := rate * seconds
	data := randomData(t, total/2)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	began = time.Now()
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w, err := tr.OpenWriter(ctx, fmt.Sprintf("f%d", i))
			if err != nil {
				errs[i] = err
				return
			}
			errs[i] = errors.Join(export.WriteChunks(ctx, w, send(ctx, data, 1<<20, inOrder(len(data)>>20)), 4, nil), w.Close())
		}()
	}
	wg.Wait()
	took := time.Since(began)
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	avg := float64(total) / took.Seconds()
	t.Logf("limit %.2f MiB/s: %d MiB in %.3f s = %.3f MiB/s (%+.2f%%); per second (MiB): %v",
		float64(rate)/(1<<20), total>>20, took.Seconds(), avg/(1<<20), (avg/rate-1)*100, mibs(perSecond))
	if avg > rate*1.10 || avg < rate*0.90 {
		t.Fatalf("average %.3f MiB/s is more than 10%% off the limit %.3f MiB/s", avg/(1<<20), float64(rate)/(1<<20))
	}
}

func mibs(v []int64) []string {
	out := make([]string, len(v))
	for i, b := range v {
		out[i] = fmt.Sprintf("%.2f", float64(b)/(1<<20))
	}
	return out
}

func TestBandwidthLimitHonoursContext(t *testing.T) {
	mem := exporttest.NewMemory()
	tr := export.WithBandwidthLimit(mem, 1<<10)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	w, err := tr.OpenWriter(ctx, "f")
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	n, err := w.WriteAt(make([]byte, 1<<20), 0)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WriteAt = %d, %v; want context.DeadlineExceeded", n, err)
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Fatalf("WriteAt returned %s after starting, long after its context ended", took)
	}
	if n > 1<<10 {
		t.Fatalf("%d bytes written in 0.2 s at 1 KiB/s", n)
	}
}

func TestBandwidthLimitOff(t *testing.T) {
	mem := exporttest.NewMemory()
	if tr := export.WithBandwidthLimit(mem, 0); tr != export.Transport(mem) {
		t.Fatalf("a limit of 0 wraps the transport")
	}
}
