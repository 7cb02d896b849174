package daemon

import (
	"context"
	"sync/atomic"

	"github.com/twinsnap/twinsnap/export"
)

// countingTransport counts the bytes a transport's writers hand to the
// connection. Placed under the retry decorator it sees every write that
// goes out, resent ones included, so a job can report how much a broken
// connection made it send twice.
type countingTransport struct {
	export.Transport
	n *atomic.Int64
}

// OpenWriter implements export.Transport.
func (t countingTransport) OpenWriter(ctx context.Context, name string) (export.FileWriter, error) {
	w, err := t.Transport.OpenWriter(ctx, name)
	if err != nil {
		return nil, err
	}
	return countingWriter{FileWriter: w, n: t.n}, nil
}

type countingWriter struct {
	export.FileWriter
	n *atomic.Int64
}

// WriteAt implements export.FileWriter. It counts the bytes offered to
// the connection, also when the write fails: a write cut by a broken
// connection may have reached the server, and its retry sends it again.
func (w countingWriter) WriteAt(p []byte, off int64) (int, error) {
	w.n.Add(int64(len(p)))
	return w.FileWriter.WriteAt(p, off)
}
