package smb_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/export"
	"github.com/twinsnap/twinsnap/internal/testenv"
)

// TestBandwidthLimitOverSMB writes for about ten seconds through
// WithBandwidthLimit to an encrypted share, two files with four writers
// each, and checks the average rate over the whole transfer, flush
// included.
func TestBandwidthLimitOverSMB(t *testing.T) {
	if testing.Short() {
		t.Skip("ten seconds")
	}
	const rate = 16 << 20
	const seconds = 10
	s := testenv.StartSamba(t, testenv.SambaOptions{})
	tr := export.WithBandwidthLimit(dial(t, config(s, freshDir(t, s))), rate)
	defer func() { _ = tr.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	half := make([]byte, rate*seconds/2)
	if _, err := rand.Read(half); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	began := time.Now()
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = writeAll(ctx, tr, fmt.Sprintf("f%d", i), half, 4)
		}()
	}
	wg.Wait()
	took := time.Since(began)
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	avg := float64(2*len(half)) / took.Seconds()
	t.Logf("limit %d MiB/s over SMB (encrypted): %d MiB in %.3f s = %.3f MiB/s (%+.2f%%)",
		rate>>20, 2*len(half)>>20, took.Seconds(), avg/(1<<20), (avg/rate-1)*100)
	if avg > rate*1.10 || avg < rate*0.90 {
		t.Fatalf("average %.3f MiB/s is more than 10%% off the limit", avg/(1<<20))
	}
}

// writeAll writes data to a new file in 1 MiB chunks with the given
// number of parallel writers, flushes and closes it.
func writeAll(ctx context.Context, tr export.Transport, name string, data []byte, parallel int) error {
	w, err := tr.OpenWriter(ctx, name)
	if err != nil {
		return err
	}
	chunks := make(chan export.Chunk)
	go func() {
		defer close(chunks)
		for off := 0; off < len(data); off += 1 << 20 {
			select {
			case chunks <- export.Chunk{Off: int64(off), Data: data[off:min(off+1<<20, len(data))]}:
			case <-ctx.Done():
				return
			}
		}
	}()
	err = export.WriteChunks(ctx, w, chunks, parallel, nil)
	if err == nil {
		err = w.Sync()
	}
	return errors.Join(err, w.Close())
}
