package export_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/export"
	"github.com/twinsnap/twinsnap/export/smb"
	"github.com/twinsnap/twinsnap/internal/testenv"
)

// faultTransport records every write that succeeds and, once armed, lets
// cutAfter more bytes through and then fails every call with
// export.ErrTransient, as a lost connection does, until disarmed. onCut,
// if set, runs once when the cut happens.
type faultTransport struct {
	export.Transport
	spans spans

	mu       sync.Mutex
	left     int64 // bytes until the cut; -1 when not armed
	cut      bool
	onCut    func()
	failures atomic.Int64
	delay    time.Duration // before each write, so that writes overlap
}

func newFaultTransport(t export.Transport) *faultTransport {
	return &faultTransport{Transport: t, left: -1}
}

// arm cuts the transport after n more bytes.
func (f *faultTransport) arm(n int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.left, f.cut = n, false
}

// disarm ends the cut.
func (f *faultTransport) disarm() { f.arm(-1) }

func (f *faultTransport) broken() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cut {
		f.failures.Add(1)
		return fmt.Errorf("fault: connection lost: %w", export.ErrTransient)
	}
	return nil
}

// wrote counts n written bytes towards the cut.
func (f *faultTransport) wrote(n int64) {
	f.mu.Lock()
	var hook func()
	if f.left >= 0 && !f.cut {
		f.left -= n
		if f.left <= 0 {
			f.cut, hook = true, f.onCut
		}
	}
	f.mu.Unlock()
	if hook != nil {
		hook()
	}
}

func (f *faultTransport) OpenWriter(ctx context.Context, name string) (export.FileWriter, error) {
	if err := f.broken(); err != nil {
		return nil, err
	}
	w, err := f.Transport.OpenWriter(ctx, name)
	if err != nil {
		return nil, err
	}
	return &faultWriter{FileWriter: w, f: f, name: name}, nil
}

func (f *faultTransport) OpenReader(ctx context.Context, name string) (export.FileReader, error) {
	if err := f.broken(); err != nil {
		return nil, err
	}
	return f.Transport.OpenReader(ctx, name)
}

func (f *faultTransport) Stat(ctx context.Context, name string) (export.FileInfo, error) {
	if err := f.broken(); err != nil {
		return export.FileInfo{}, err
	}
	return f.Transport.Stat(ctx, name)
}

func (f *faultTransport) Rename(ctx context.Context, from, to string) error {
	if err := f.broken(); err != nil {
		return err
	}
	return f.Transport.Rename(ctx, from, to)
}

type faultWriter struct {
	export.FileWriter
	f    *faultTransport
	name string
}

func (w *faultWriter) WriteAt(p []byte, off int64) (int, error) {
	if err := w.f.broken(); err != nil {
		return 0, err
	}
	time.Sleep(w.f.delay)
	n, err := w.FileWriter.WriteAt(p, off)
	if err == nil {
		w.f.spans.add(w.name, off, int64(n))
		w.f.wrote(int64(n))
	}
	return n, err
}

func (w *faultWriter) Sync() error {
	if err := w.f.broken(); err != nil {
		return err
	}
	return w.FileWriter.Sync()
}

func (w *faultWriter) Truncate(n int64) error {
	if err := w.f.broken(); err != nil {
		return err
	}
	return w.FileWriter.Truncate(n)
}

// spans records the writes of each file and measures how many bytes were
// written more than once.
type spans struct {
	mu sync.Mutex
	m  map[string][][2]int64
}

func (s *spans) add(name string, off, n int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string][][2]int64{}
	}
	s.m[name] = append(s.m[name], [2]int64{off, off + n})
}

// twice returns the bytes covered by more than one write.
func (s *spans) twice() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var total int64
	for _, list := range s.m {
		type ev struct {
			at int64
			d  int
		}
		var evs []ev
		for _, sp := range list {
			evs = append(evs, ev{sp[0], 1}, ev{sp[1], -1})
		}
		sort.Slice(evs, func(i, j int) bool {
			if evs[i].at != evs[j].at {
				return evs[i].at < evs[j].at
			}
			return evs[i].d < evs[j].d
		})
		depth, last := 0, int64(0)
		for _, e := range evs {
			if depth > 1 {
				total += e.at - last
			}
			depth += e.d
			last = e.at
		}
	}
	return total
}

// exportUntilDone exports spec, cutting the transport after each of cuts
// bytes in turn (the first must come before the end) and resuming from
// the last progress offset, and returns the final result and the resume
// offsets used.
func exportUntilDone(t *testing.T, ft *faultTransport, spec export.ExportSpec, opts export.ExportOptions, cuts []int64) (export.ExportResult, []int64) {
	t.Helper()
	ctx := testCtx(t, 3*time.Minute)
	var last export.Progress
	opts.OnProgress = func(p export.Progress) error { last = p; return nil }
	var resumes []int64
	// Each call's Rewritten bounds the bytes it wrote over earlier calls'.
	checkRewritten := func(before int64, res export.ExportResult) {
		t.Helper()
		if got := ft.spans.twice() - before; got > res.Rewritten {
			t.Errorf("a call resumed at %d wrote %d bytes again, but reports Rewritten %d", opts.Resume, got, res.Rewritten)
		}
	}
	for i, cut := range cuts {
		ft.arm(cut)
		before := ft.spans.twice()
		res, err := export.Export(ctx, ft, spec, opts)
		if err == nil && i > 0 {
			// Less than cut was left to write: done.
			checkRewritten(before, res)
			return res, resumes
		}
		if !errors.Is(err, export.ErrTransient) {
			t.Fatalf("export cut after %d bytes: %v, want ErrTransient", cut, err)
		}
		checkRewritten(before, res)
		if last.Offset < opts.Resume {
			t.Fatalf("watermark went back from %d to %d", opts.Resume, last.Offset)
		}
		opts.Resume = last.Offset
		resumes = append(resumes, last.Offset)
	}
	ft.disarm()
	before := ft.spans.twice()
	res, err := export.Export(ctx, ft, spec, opts)
	if err != nil {
		t.Fatalf("resumed export from %d: %v", opts.Resume, err)
	}
	checkRewritten(before, res)
	if last.Offset != last.Total {
		t.Errorf("final progress %+v", last)
	}
	return res, resumes
}

func TestExportResumesAfterCut(t *testing.T) {
	needQemu(t)
	vm := newVM(t, true)
	const chunk = 1 << 20
	opts := export.ExportOptions{Parallelism: 4, ChunkWindow: 6}
	for _, tc := range []struct {
		format string
		ova    bool
		cuts   []int64
	}{
		// Bytes written before each cut: cuts inside the first disk,
		// the second, and near the end (about 12 MiB in all).
		{export.FormatQCOW2, false, []int64{4 << 20, 3 << 20, 2 << 20}},
		{export.FormatVMDK, false, []int64{3 << 20, 4 << 20}},
		{export.FormatVMDK, true, []int64{2 << 20, 5 << 20}},
		{export.FormatQCOW2, true, []int64{9 << 20}},
	} {
		t.Run(fmt.Sprintf("%s-ova=%v", tc.format, tc.ova), func(t *testing.T) {
			tr, root := newLocal(t)
			ft := newFaultTransport(tr)
			ft.delay = 3 * time.Millisecond
			spec := vm.spec("cut", tc.format, tc.ova)
			res, resumes := exportUntilDone(t, ft, spec, opts, tc.cuts)
			twice := ft.spans.twice()
			window := int64(len(tc.cuts) * opts.ChunkWindow * chunk)
			t.Logf("resumed at %v; %d bytes written twice (the last call counted %d), bound %d", resumes, twice, res.Rewritten, window)
			if twice > window {
				t.Errorf("%d bytes written twice, more than %d (one window of %d chunks per cut)", twice, window, opts.ChunkWindow)
			}
			if res.Rewritten > int64(opts.ChunkWindow*chunk) {
				t.Errorf("Rewritten %d, more than one window", res.Rewritten)
			}
			imp, err := export.Import(testCtx(t, time.Minute), tr, export.PackagePath("", "cut", tc.ova), export.ImportOptions{Dir: t.TempDir()})
			if err != nil {
				t.Fatalf("Import: %v", err)
			}
			vm.checkImported(t, imp)
			checkDiskFiles(t, root, spec)
			// The package is byte for byte what an uninterrupted export
			// writes (checked for qcow2: VMDK compression is slow under
			// the race detector).
			if tc.format != export.FormatQCOW2 {
				return
			}
			tr2, _ := newLocal(t)
			ref, err := export.Export(testCtx(t, time.Minute), tr2, spec, export.ExportOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(ref.Files) != fmt.Sprint(res.Files) {
				t.Errorf("resumed package %v differs from an uninterrupted one %v", res.Files, ref.Files)
			}
		})
	}
}

// TestExportRestartsWhenPartIsGone resumes an export whose temporary
// package was removed meanwhile: it starts again from the beginning.
func TestExportRestartsWhenPartIsGone(t *testing.T) {
	needQemu(t)
	vm := newVM(t, false)
	tr, root := newLocal(t)
	ft := newFaultTransport(tr)
	spec := vm.spec("gone", export.FormatQCOW2, false)
	var last export.Progress
	opts := export.ExportOptions{OnProgress: func(p export.Progress) error { last = p; return nil }}
	ft.arm(6 << 20)
	if _, err := export.Export(testCtx(t, time.Minute), ft, spec, opts); !errors.Is(err, export.ErrTransient) {
		t.Fatalf("cut export: %v", err)
	}
	ft.disarm()
	if err := os.RemoveAll(filepath.Join(root, "gone.part")); err != nil {
		t.Fatal(err)
	}
	opts.Resume = last.Offset
	res, err := export.Export(testCtx(t, time.Minute), ft, spec, opts)
	if err != nil {
		t.Fatalf("resume without the temporary package: %v", err)
	}
	if res.Written < res.Size-(1<<20) {
		t.Errorf("wrote %d bytes of %d: did not start again", res.Written, res.Size)
	}
	imp, err := export.Import(testCtx(t, time.Minute), tr, export.PackagePath("", "gone", false), export.ImportOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	vm.checkImported(t, imp)

	// An export cut after its rename, resumed with its last offset, finds
	// the package whole and writes nothing.
	again, err := export.Export(testCtx(t, time.Minute), tr, spec, export.ExportOptions{Resume: last.Offset})
	if err != nil || again.Written != 0 || fmt.Sprint(again.Files) != fmt.Sprint(res.Files) {
		t.Errorf("resume after the rename: %v, wrote %d, files %v", err, again.Written, again.Files)
	}
}

func TestExportProgressCallbackStops(t *testing.T) {
	needQemu(t)
	vm := newVM(t, false)
	tr, _ := newLocal(t)
	stop := errors.New("operator cancelled")
	var last export.Progress
	slow := export.WithBandwidthLimit(tr, 8<<20)
	calls := 0
	opts := export.ExportOptions{OnProgress: func(p export.Progress) error {
		last = p
		if calls++; calls == 1 {
			return stop
		}
		return nil
	}}
	spec := vm.spec("cb", export.FormatQCOW2, false)
	_, err := export.Export(testCtx(t, time.Minute), slow, spec, opts)
	if !errors.Is(err, stop) {
		t.Fatalf("export whose callback fails: %v, want %v", err, stop)
	}
	opts.Resume = last.Offset
	if _, err := export.Export(testCtx(t, time.Minute), tr, spec, opts); err != nil {
		t.Fatalf("resume: %v", err)
	}
}

// TestExportWindowPauses exports at 4 MiB/s in a window that closes about
// a second and a half in: the export pauses with ErrPaused and the next
// call finishes it.
func TestExportWindowPauses(t *testing.T) {
	needQemu(t)
	vm := newVM(t, false)
	tr, _ := newLocal(t)
	slow := export.WithBandwidthLimit(tr, 4<<20)
	spec := vm.spec("night", export.FormatQCOW2, false)

	now := time.Now().UTC()
	end := now.Add(2 * time.Second).Truncate(time.Second)
	win, err := export.ParseWindow(now.Add(-time.Hour).Format("15:04:05")+"-"+end.Format("15:04:05"), "", time.UTC)
	if err != nil {
		t.Fatal(err)
	}
	var last export.Progress
	opts := export.ExportOptions{Window: &win, OnProgress: func(p export.Progress) error { last = p; return nil }}
	began := time.Now()
	_, err = export.Export(testCtx(t, time.Minute), slow, spec, opts)
	var paused *export.PausedError
	if !errors.Is(err, export.ErrPaused) || !errors.As(err, &paused) {
		t.Fatalf("export through the window's end: %v, want ErrPaused", err)
	}
	took := time.Since(began)
	t.Logf("paused after %v at offset %d of %d; opens again at %v", took.Round(time.Millisecond), last.Offset, last.Total, paused.Until)
	if took > end.Sub(began)+2*time.Second || last.Offset <= 0 || last.Offset >= last.Total {
		t.Errorf("paused after %v at %d of %d", took, last.Offset, last.Total)
	}
	if !paused.Until.Equal(win.NextOpen(time.Now())) || !paused.Until.After(time.Now()) {
		t.Errorf("Until %v, want the next opening %v", paused.Until, win.NextOpen(time.Now()))
	}
	// Still closed: the next call pauses at once, writing nothing.
	res, err := export.Export(testCtx(t, time.Minute), slow, spec, export.ExportOptions{Window: &win, Resume: last.Offset})
	if !errors.Is(err, export.ErrPaused) || res.Written != 0 {
		t.Errorf("export while closed: %v, wrote %d", err, res.Written)
	}
	// The next window (here: none) finishes it.
	opts = export.ExportOptions{Resume: last.Offset}
	res, err = export.Export(testCtx(t, time.Minute), slow, spec, opts)
	if err != nil {
		t.Fatalf("export in the next window: %v", err)
	}
	imp, err := export.Import(testCtx(t, time.Minute), tr, export.PackagePath("", "night", false), export.ImportOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	vm.checkImported(t, imp)
	if res.Written >= res.Size {
		t.Errorf("the resumed call wrote %d of %d bytes: it did not continue", res.Written, res.Size)
	}
}

// TestExportResumesAfterSambaKill kills smbd in the middle of an export
// over SMB. Without retries the export fails; once the server is back, a
// call with the last progress offset finishes it. With WithRetry, one call
// rides the crash out.
func TestExportResumesAfterSambaKill(t *testing.T) {
	needQemu(t)
	s, _ := startSamba(t, testenv.SambaOptions{})
	vm := newVM(t, false)
	dial := func(ctx context.Context, dir string) (export.Transport, error) {
		tr, err := smb.Dial(ctx, smbConfig(s, dir))
		if err != nil {
			return nil, err
		}
		return tr, nil
	}
	newDir := func(t *testing.T) string {
		d, err := os.MkdirTemp(s.Dir, "t-")
		if err != nil {
			t.Fatal(err)
		}
		return filepath.Base(d)
	}
	restart := func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := s.Restart(ctx); err != nil {
			t.Errorf("restart smbd: %v", err)
		}
	}

	t.Run("resume", func(t *testing.T) {
		dir := newDir(t)
		tr, err := dial(testCtx(t, 30*time.Second), dir)
		if err != nil {
			t.Fatal(err)
		}
		ft := newFaultTransport(tr)
		ft.onCut = s.Kill
		spec := vm.spec("crash", export.FormatVMDK, true)
		var last export.Progress
		opts := export.ExportOptions{OnProgress: func(p export.Progress) error { last = p; return nil }}
		ft.arm(5 << 20)
		_, err = export.Export(testCtx(t, time.Minute), ft, spec, opts)
		_ = tr.Close()
		if !errors.Is(err, export.ErrTransient) {
			t.Fatalf("export across a server crash: %v, want ErrTransient", err)
		}
		restart(t)
		tr, err = dial(testCtx(t, 30*time.Second), dir)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = tr.Close() }()
		opts.Resume = last.Offset
		res, err := export.Export(testCtx(t, time.Minute), tr, spec, opts)
		if err != nil {
			t.Fatalf("resume from %d: %v", opts.Resume, err)
		}
		t.Logf("resumed at %d of %d, rewrote at most %d bytes", opts.Resume, res.Size, res.Rewritten)
		if opts.Resume <= 0 || opts.Resume >= res.Size || res.Written >= res.Size {
			t.Errorf("resumed at %d of %d and wrote %d: not a resume", opts.Resume, res.Size, res.Written)
		}
		imp, err := export.Import(testCtx(t, time.Minute), tr, export.PackagePath("", "crash", true), export.ImportOptions{Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		vm.checkImported(t, imp)
	})

	t.Run("retry", func(t *testing.T) {
		dir := newDir(t)
		var killed atomic.Bool
		var restarted sync.WaitGroup
		var writers []*faultTransport
		var mu sync.Mutex
		redial := func(ctx context.Context) (export.Transport, error) {
			tr, err := dial(ctx, dir)
			if err != nil {
				return nil, err
			}
			ft := newFaultTransport(tr)
			if killed.CompareAndSwap(false, true) {
				ft.onCut = func() {
					s.Kill()
					restarted.Go(func() { time.Sleep(500 * time.Millisecond); restart(t) })
				}
				ft.arm(6 << 20)
			}
			mu.Lock()
			writers = append(writers, ft)
			mu.Unlock()
			return ft, nil
		}
		tr := export.WithRetry(nil, export.RetryPolicy{Base: 100 * time.Millisecond}, redial)
		defer func() { _ = tr.Close() }()
		spec := vm.spec("retry", export.FormatQCOW2, false)
		res, err := export.Export(testCtx(t, 2*time.Minute), tr, spec, export.ExportOptions{})
		restarted.Wait()
		if err != nil {
			t.Fatalf("export through WithRetry across a server crash: %v", err)
		}
		mu.Lock()
		if len(writers) < 2 {
			t.Errorf("%d connections: the server was not killed mid-export", len(writers))
		}
		mu.Unlock()
		imp, err := export.Import(testCtx(t, time.Minute), tr, export.PackagePath("", "retry", false), export.ImportOptions{Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		vm.checkImported(t, imp)
		t.Logf("%d bytes written, %d connections", res.Written, len(writers))
	})
}
