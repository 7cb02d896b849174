package smb_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/export"
	"github.com/twinsnap/twinsnap/export/smb"
	"github.com/twinsnap/twinsnap/internal/testenv"
)

// benchSize is what one iteration writes: 256 MiB in 1 MiB chunks.
const benchSize = 256 << 20

// BenchmarkWrite writes 256 MiB per iteration to a fresh file through
// WriteChunks with 1, 4 and 8 parallel writers, against an encrypted and
// a signing-only share on loopback, and flushes it. Run with
// -benchtime=3x. MB/s counts the flush (the server's disk); write-MB/s is
// the transfer alone.
func BenchmarkWrite(b *testing.B) {
	data := make([]byte, benchSize)
	if _, err := rand.Read(data); err != nil {
		b.Fatal(err)
	}
	for _, variant := range []struct {
		name string
		opts testenv.SambaOptions
	}{
		{"encrypted", testenv.SambaOptions{}},
		{"signing", testenv.SambaOptions{SigningOnly: true}},
	} {
		b.Run(variant.name, func(b *testing.B) {
			s := testenv.StartSamba(b, variant.opts)
			for _, parallel := range []int{1, 4, 8} {
				b.Run(fmt.Sprintf("writers=%d", parallel), func(b *testing.B) {
					tr := dialB(b, s)
					defer func() { _ = tr.Close() }()
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
					defer cancel()
					b.SetBytes(benchSize)
					var writeTime, flushTime time.Duration
					n := 0
					for i := 0; b.Loop(); i++ {
						n++
						name := fmt.Sprintf("bench-%d-%d", parallel, i)
						w, err := tr.OpenWriter(ctx, name)
						if err != nil {
							b.Fatal(err)
						}
						chunks := make(chan export.Chunk)
						go func() {
							defer close(chunks)
							for off := 0; off < benchSize; off += 1 << 20 {
								select {
								case chunks <- export.Chunk{Off: int64(off), Data: data[off : off+1<<20]}:
								case <-ctx.Done():
									return
								}
							}
						}()
						began := time.Now()
						if err := export.WriteChunks(ctx, w, chunks, parallel, nil); err != nil {
							b.Fatal(err)
						}
						written := time.Since(began)
						if err := w.Sync(); err != nil {
							b.Fatal(err)
						}
						writeTime += written
						flushTime += time.Since(began) - written
						if err := w.Close(); err != nil {
							b.Fatal(err)
						}
						b.StopTimer()
						if err := tr.Remove(ctx, name); err != nil {
							b.Fatal(err)
						}
						b.StartTimer()
					}
					b.ReportMetric(float64(n*benchSize)/1e6/writeTime.Seconds(), "write-MB/s")
					b.ReportMetric(flushTime.Seconds()/float64(n), "flush-s/op")
				})
			}
		})
	}
}

func dialB(b *testing.B, s *testenv.Samba) export.Transport {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tr, err := smb.Dial(ctx, config(s, ""))
	if err != nil {
		b.Fatal(err)
	}
	return tr
}
