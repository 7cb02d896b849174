package state

import (
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/twinsnap/twinsnap/cluster/command"
)

// Shard counts of the record tables: enough that the first write after a
// checkpoint copies a few hundred records at most.
const (
	smallTableShards    = 4
	snapshotTableShards = 256
	jobTableShards      = 16
)

// State is the replicated state of one node. Apply, Restore and the queries
// may be called concurrently; Apply calls are serialized by the caller (the
// Raft FSM) in log order.
type State struct {
	mu sync.RWMutex
	d  *data
}

// data is everything replicated, plus indexes derived from it.
type data struct {
	index     uint64 // last applied log index
	term      uint64 // term of the last applied entry
	fenceTerm uint64 // snapshots started before it are fenced

	settings   *Settings
	nodes      *table[Node]
	vms        *table[VM]
	containers *table[Container]
	snapshots  *table[Snapshot]
	jobs       *table[Job]
	shares     *table[Share]

	// Derived, rebuilt by Restore, never written to checkpoints.
	snapsByVM map[string]map[string]struct{} // VM id -> snapshot ids
	snapNames map[string]map[string]string   // VM id -> name -> id, live snapshots only
}

func newData() *data {
	return &data{
		settings:   &Settings{},
		nodes:      newTable[Node](smallTableShards),
		vms:        newTable[VM](smallTableShards),
		containers: newTable[Container](smallTableShards),
		snapshots:  newTable[Snapshot](snapshotTableShards),
		jobs:       newTable[Job](jobTableShards),
		shares:     newTable[Share](smallTableShards),
		snapsByVM:  map[string]map[string]struct{}{},
		snapNames:  map[string]map[string]string{},
	}
}

// New returns an empty state: no nodes, snapshots disabled.
func New() *State {
	return &State{d: newData()}
}

// Result is what Apply returns for one log entry. The Raft FSM hands it back
// to the proposer as the entry's response.
type Result struct {
	// Index is the log entry's index.
	Index uint64
	// Term is the Raft term the entry was appended in.
	Term uint64
	// Type is the entry's command type.
	Type command.Type
	// Ignored is true for an unknown command flagged IgnoreUnknown: the entry
	// was skipped and nothing changed.
	Ignored bool
	// Err is the business error that refused the command (wrapping one of
	// ErrNotFound, ErrExists, ErrFenced, ...); nil when it was applied. A
	// refused command changes nothing.
	Err error
	// Affected lists, sorted, the ids of records a command changed beyond the
	// one it names: snapshots discarded by DiscardIncomplete, snapshots gone
	// after a reclaim or a node removal.
	Affected []string
}

// ApplyError is the value Apply panics with when a log entry cannot be
// decoded: skipping it would let this node diverge from its peers, so the
// node must stop (and be upgraded, for an entry written by a newer release).
type ApplyError struct {
	// Index is the log entry's index.
	Index uint64
	// Term is the Raft term the entry was appended in.
	Term uint64
	// Err is the decoding error.
	Err error
}

// Error implements error.
func (e *ApplyError) Error() string {
	return fmt.Sprintf("state: cannot apply log entry %d (term %d): %v", e.Index, e.Term, e.Err)
}

// Unwrap returns the decoding error.
func (e *ApplyError) Unwrap() error { return e.Err }

// handler applies one decoded, validated command. It must check everything
// before changing anything, so that a refused command changes nothing.
type handler func(c *applyCtx, cmd command.Command) error

// handlers is the registration table, filled by init functions in the
// resource files and read-only afterwards.
var handlers = map[command.Type]handler{}

// on registers fn for command type t.
func on[C command.Command](t command.Type, fn func(*applyCtx, C) error) {
	if _, dup := handlers[t]; dup {
		panic(fmt.Sprintf("state: two handlers for %s", t))
	}
	handlers[t] = func(c *applyCtx, cmd command.Command) error {
		v, ok := cmd.(C)
		if !ok {
			panic(fmt.Sprintf("state: handler for %s got %T", t, cmd))
		}
		return fn(c, v)
	}
}

// applyCtx carries one Apply call.
type applyCtx struct {
	d        *data
	index    uint64
	term     uint64
	affected []string
}

// Apply applies one log entry: its index, the Raft term it was appended in
// and its data (a command envelope). Business errors come back in
// Result.Err; an entry that cannot be decoded panics with *ApplyError.
func (s *State) Apply(index, term uint64, data []byte) Result {
	res := Result{Index: index, Term: term}
	if len(data) > 0 {
		res.Type = command.Type(data[0])
	}
	cmd, err := command.Decode(data)
	if err != nil && !errors.Is(err, command.ErrIgnorable) {
		panic(&ApplyError{Index: index, Term: term, Err: err})
	}
	var h handler
	if cmd != nil {
		if h = handlers[cmd.Type()]; h == nil {
			panic(&ApplyError{Index: index, Term: term, Err: fmt.Errorf("no handler for %s", cmd.Type())})
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	s.d.index, s.d.term = index, term
	if cmd == nil {
		res.Ignored = true
		return res
	}
	if err := cmd.Validate(); err != nil {
		res.Err = fmt.Errorf("%s: %w: %w", cmd.Type(), ErrInvalid, err)
		return res
	}
	c := &applyCtx{d: s.d, index: index, term: term}
	if err := h(c, cmd); err != nil {
		res.Err = fmt.Errorf("%s: %w", cmd.Type(), err)
		return res
	}
	if len(c.affected) > 0 {
		slices.Sort(c.affected)
		res.Affected = slices.Compact(c.affected)
	}
	return res
}

// AppliedIndex returns the index and term of the last applied log entry
// (or of the restored checkpoint).
func (s *State) AppliedIndex() (index, term uint64) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.d.index, s.d.term
}

// FenceTerm returns the fencing term: snapshots started in an earlier term
// that were not yet partial were discarded, and changes to them are refused.
func (s *State) FenceTerm() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.d.fenceTerm
}

// checkTerm refuses a proposer term the log entry cannot have come from:
// nobody knows a term later than the one the entry was appended in.
func (c *applyCtx) checkTerm(term uint64) error {
	if term > c.term {
		return fmt.Errorf("%w: term %d is later than the log entry's term %d", ErrInvalid, term, c.term)
	}
	return nil
}

// dataNode returns the member data node id, or an error naming why not.
func (c *applyCtx) dataNode(id string) (*Node, error) {
	n := c.d.nodes.get(id)
	if n == nil {
		return nil, fmt.Errorf("node %q: %w", id, ErrNotFound)
	}
	if n.Role != command.RoleData {
		return nil, fmt.Errorf("%w: node %q is a %s, not a data node", ErrInvalid, id, n.Role)
	}
	return n, nil
}

// dataNodes returns the ids of the member data nodes, sorted.
func (d *data) dataNodes() []string {
	var out []string
	for _, n := range d.nodes.sorted() {
		if n.Role == command.RoleData {
			out = append(out, n.ID)
		}
	}
	return out
}

func (d *data) isDataNode(id string) bool {
	n := d.nodes.get(id)
	return n != nil && n.Role == command.RoleData
}

// sortedSet returns the members of set, sorted.
func sortedSet(set map[string]struct{}) []string {
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
