package cluster

import (
	"bufio"
	"fmt"
	"io"

	"github.com/hashicorp/raft"

	"github.com/twinsnap/twinsnap/cluster/state"
)

// fsm adapts state.State to raft.FSM. It only dispatches: decoding,
// validation and business rules live in cluster/state.
type fsm struct {
	st *state.State
}

var _ raft.FSM = (*fsm)(nil)

// Apply hands a committed entry, with its index and term (for fencing), to
// the state machine. An entry the state machine cannot decode panics:
// skipping it would let this node diverge.
func (f *fsm) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	return f.st.Apply(l.Index, l.Term, l.Data)
}

// Snapshot takes a point-in-time view of the state (a state checkpoint).
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	return &checkpoint{cp: f.st.Checkpoint()}, nil
}

// Restore replaces the state with a checkpoint, streamed record by record.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	if err := f.st.Restore(bufio.NewReaderSize(rc, 64*1024)); err != nil {
		return fmt.Errorf("cluster: restoring state checkpoint: %w", err)
	}
	return nil
}

// checkpoint is a raft.FSMSnapshot over a state checkpoint.
type checkpoint struct {
	cp *state.Checkpoint
}

// Persist streams the checkpoint into the sink.
func (c *checkpoint) Persist(sink raft.SnapshotSink) error {
	w := bufio.NewWriterSize(sink, 64*1024)
	if _, err := c.cp.WriteTo(w); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("cluster: writing state checkpoint: %w", err)
	}
	if err := w.Flush(); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("cluster: writing state checkpoint: %w", err)
	}
	return sink.Close()
}

// Release implements raft.FSMSnapshot.
func (c *checkpoint) Release() {}
