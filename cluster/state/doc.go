// Package state holds the deterministic replicated state of a twinsnap
// cluster: nodes, VMs, volumes, volume containers, snapshots, replicas,
// export and import jobs, the shares they use, and settings. It applies commands from
// cluster/command, answers queries, and writes and restores state
// checkpoints (Raft FSM snapshots) record by record.
//
// # What the Raft FSM adapter calls
//
//	st := state.New()
//	res := st.Apply(log.Index, log.Term, log.Data) // Result; panics with *ApplyError on an undecodable entry
//	cp := st.Checkpoint()                          // cheap, immutable; cp.WriteTo(sink) streams it
//	err := st.Restore(rc)                          // replaces the state only if the whole stream is good
//
// Business errors (ErrNotFound, ErrExists, ErrFenced, ErrInvalidTransition,
// ErrSnapshotsDisabled, ErrNoSpace, ErrInvalid, ErrInUse,
// ErrChecksumMismatch, ErrLimit) come back in Result.Err and change
// nothing; ErrorCode and ErrorForCode carry them across forwarded writes.
// Queries (Node, Nodes, VM, VMs, Container, Containers, Snapshot,
// Snapshots, Job, Jobs, Share, Shares, Settings, AppliedIndex, FenceTerm)
// return copies.
//
// # Jobs and shares
//
// A share (share-added) holds its password only as sealed bytes
// (command.Sealed, sealed with the cluster key by the proposer); the state
// machine stores and replicates them and never opens them. share-added
// refuses a name in use (ErrExists); share-removed refuses an unknown
// share (ErrNotFound) and one an unfinished job uses (ErrInUse). An export
// needs a partial or complete snapshot, a verified replica of it on the
// job's data node, known volumes and a known share; an import a VM name
// not in use and a known share. Jobs move queued → running ⇄ paused →
// done, failed or cancelled; job-assigned moves an unfinished job to
// another data node (for an export, one with a verified replica), pausing
// a running one so that the new node resumes it from its last offset.
//
// # Determinism
//
// Nothing in this package reads a clock, performs I/O on its own behalf or
// draws random numbers: every node must reach the same state from the same
// log. Ids and times come in the commands. Nothing observable depends on
// map iteration order: lists, checkpoints and digests are sorted. A test
// (imports_test.go) parses the non-test files and refuses these imports,
// which the depguard rule for cluster/state mirrors:
//
//	math/rand, math/rand/v2, crypto/rand, os, os/exec, os/signal, net,
//	net/http, io/ioutil, io/fs, syscall, unsafe, github.com/hashicorp/raft,
//	and any project package but cluster/command
//
// and allows package time only for the time.Time and time.Duration types
// (no time.Now, Since, Until, After, AfterFunc, Sleep, Tick, NewTimer or
// NewTicker). Apply re-validates every command; validation rules are
// therefore part of the command format (see cluster/command).
//
// # Snapshots and fencing
//
// States follow DESIGN.md exactly: creating → partial → complete;
// creating or partial → discarded (only when no verified replica survives
// on a live data node); complete → deleting → gone once every node has
// reclaimed; a discarded snapshot is also gone once every node has
// reclaimed its space (replica-reclaimed is the one command a discarded
// snapshot accepts). Every snapshot records the term it was started in.
// discard-incomplete with term T raises the fencing term to T and discards
// snapshots still creating from earlier terms (or coordinated by a node
// declared lost) and partial ones without a surviving verified replica.
// Afterwards a change to a fenced or discarded snapshot is refused with
// ErrFenced, as is any change carrying a term older than the snapshot's,
// a snapshot-created from an earlier term, or a capture from a node other
// than the coordinator.
//
// # Space
//
// A volume container's free space is its capacity less the volume's size
// less what snapshots charge it. snapshot-created is refused with
// ErrNoSpace unless every selected volume's container on every data node
// has room for the estimate in the command; the estimate is charged on all
// of them, replaced by the stored size at capture, and released as each
// node reclaims.
//
// # State checkpoints
//
// Checkpoint freezes copy-on-write tables (sharded maps of immutable
// records) in O(shards); WriteTo streams a header, one length-prefixed,
// CRC-32C-checked JSON record per object in canonical order and a trailer;
// Digest is the SHA-256 of that stream. Restore reads through a 64 KiB
// buffer with records capped at MaxRecordSize, checks framing, order,
// uniqueness and the trailer, and swaps the state in only at the end.
// WriteTo writes the lowest format version that holds the state (version
// 2 added shares and the newer job fields); Restore reads versions 1 and
// 2. The golden files testdata/checkpoint-v1.bin and checkpoint-v2.bin pin
// both.
//
// # Adding a command
//
// After adding it to cluster/command: a handler registered with on() in
// the file of its resource (check everything, then change; never fail half
// way), any new record kind in checkpoint.go (appended, with a format
// version bump if old streams change meaning), a case in the resource's
// tests, in scenario() (apply_test.go) and an updated golden checkpoint.
package state
