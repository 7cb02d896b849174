package export

import (
	"context"
	"fmt"
	"io"
)

// Chunk is a run of bytes to write at an offset of a file. Unallocated
// space of a disk image simply has no chunk.
type Chunk struct {
	// Off is the offset in the file.
	Off int64
	// Data is written at Off; WriteChunks does not keep it after the
	// chunk is reported done.
	Data []byte
}

// WriteChunks writes the chunks it receives to w with up to parallelism
// WriteAt calls in flight (at least one), until chunks is closed. Remote
// transports pipeline only concurrent WriteAt calls (go-smb2 sends one
// request at a time per call), so parallelism is what makes them fast.
//
// done, if not nil, is called once per written chunk from the calling
// goroutine, in the order the chunks were received, and only once every
// earlier chunk is written too. A producer that sends chunks in ascending
// offset order can therefore take off+n of the last call as a resume
// watermark: everything to be written below it is written.
//
// WriteChunks stops receiving at the first failed write or when ctx ends,
// waits for the writes in flight (they are bounded by the writer's own
// context), reports those that completed in order, and returns the first
// error. The producer must stop sending when ctx ends or when WriteChunks
// has returned. A short write without an error is io.ErrShortWrite.
func WriteChunks(ctx context.Context, w FileWriter, chunks <-chan Chunk, parallelism int, done func(off, n int64)) error {
	if parallelism < 1 {
		parallelism = 1
	}
	type result struct {
		seq uint64
		c   Chunk
		err error
	}
	// Every write in flight has a buffer slot, so no writer goroutine can
	// block on a receiver that already returned.
	results := make(chan result, parallelism)
	finished := make(map[uint64]Chunk, parallelism)
	var (
		inflight       int
		next, reported uint64
		firstErr       error
	)
	in := chunks
	ctxDone := ctx.Done()
	for {
		var recv <-chan Chunk
		if firstErr == nil && in != nil && inflight < parallelism {
			recv = in
		}
		if inflight == 0 && (in == nil || firstErr != nil) {
			return firstErr
		}
		select {
		case c, ok := <-recv:
			if !ok {
				in = nil
				continue
			}
			seq := next
			next++
			inflight++
			go func() {
				n, err := w.WriteAt(c.Data, c.Off)
				if err == nil && n < len(c.Data) {
					err = io.ErrShortWrite
				}
				results <- result{seq: seq, c: c, err: err}
			}()
		case r := <-results:
			inflight--
			if r.err != nil {
				if firstErr == nil {
					firstErr = fmt.Errorf("export: write of %d bytes at %d: %w", len(r.c.Data), r.c.Off, r.err)
				}
				continue
			}
			finished[r.seq] = r.c
			for {
				c, ok := finished[reported]
				if !ok {
					break
				}
				delete(finished, reported)
				reported++
				if done != nil {
					done(c.Off, int64(len(c.Data)))
				}
			}
		case <-ctxDone:
			ctxDone = nil
			if firstErr == nil {
				firstErr = fmt.Errorf("export: writing chunks: %w", ctx.Err())
			}
		}
	}
}
