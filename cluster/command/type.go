package command

import "fmt"

// Type identifies a command in the envelope's first byte. The low seven bits
// are the command number; the high bit is IgnoreUnknown. Numbers are
// append-only: a number, once released, is never reused or renumbered, even
// after the command it named is retired.
type Type uint8

// IgnoreUnknown is the high bit of a Type. A node that does not know a
// command whose type carries this bit skips it instead of stopping; set it
// only on commands whose absence cannot make replicated state diverge in a
// way that matters (progress reports, hints), never on commands that create,
// change or remove records other commands depend on.
const IgnoreUnknown Type = 0x80

// The command types. Append new ones at the end with the next free number;
// never renumber, never reuse a retired number.
const (
	// TypeNodeAdded adds a data node or witness (NodeAdded).
	TypeNodeAdded Type = 1
	// TypeNodeUpdated changes a node's addresses (NodeUpdated).
	TypeNodeUpdated Type = 2
	// TypeNodeRemoved removes a node (NodeRemoved).
	TypeNodeRemoved Type = 3
	// TypeSettingsSet changes cluster settings (SettingsSet).
	TypeSettingsSet Type = 4
	// TypeVMRegistered registers a VM (VMRegistered).
	TypeVMRegistered Type = 5
	// TypeVMUpdated replaces a VM's description (VMUpdated).
	TypeVMUpdated Type = 6
	// TypeVMRemoved forgets a VM (VMRemoved).
	TypeVMRemoved Type = 7
	// TypeContainerCreated records a new volume container (ContainerCreated).
	TypeContainerCreated Type = 8
	// TypeContainerExpanded grows a volume container (ContainerExpanded).
	TypeContainerExpanded Type = 9
	// TypeSnapshotCreated starts a snapshot (SnapshotCreated).
	TypeSnapshotCreated Type = 10
	// TypeSnapshotCaptured records the host's verified capture (SnapshotCaptured).
	TypeSnapshotCaptured Type = 11
	// TypeReplicaWritten records a replica written on a data node (ReplicaWritten).
	TypeReplicaWritten Type = 12
	// TypeSnapshotFailed abandons a snapshot with no verified replica (SnapshotFailed).
	TypeSnapshotFailed Type = 13
	// TypeDiscardIncomplete fences earlier terms and discards half-written
	// snapshots (DiscardIncomplete).
	TypeDiscardIncomplete Type = 14
	// TypeSnapshotDeleteRequested starts deleting a snapshot (SnapshotDeleteRequested).
	TypeSnapshotDeleteRequested Type = 15
	// TypeReplicaReclaimed records that a node freed a snapshot's space (ReplicaReclaimed).
	TypeReplicaReclaimed Type = 16
	// TypeExportJobCreated creates an export job (ExportJobCreated).
	TypeExportJobCreated Type = 17
	// TypeImportJobCreated creates an import job (ImportJobCreated).
	TypeImportJobCreated Type = 18
	// TypeJobProgress reports a job's progress (JobProgress).
	TypeJobProgress Type = 19
	// TypeJobStateChanged moves a job to another state (JobStateChanged).
	TypeJobStateChanged Type = 20
	// TypeShareAdded records a share exports and imports use (ShareAdded).
	TypeShareAdded Type = 21
	// TypeShareRemoved forgets a share (ShareRemoved).
	TypeShareRemoved Type = 22
	// TypeJobAssigned moves an unfinished job to another data node (JobAssigned).
	TypeJobAssigned Type = 23
)

// Number returns the command number: the type without the IgnoreUnknown bit.
func (t Type) Number() uint8 { return uint8(t &^ IgnoreUnknown) }

// Ignorable reports whether the IgnoreUnknown bit is set.
func (t Type) Ignorable() bool { return t&IgnoreUnknown != 0 }

// String returns the command's name, such as "snapshot-created", or
// "type(N)" for a type this node does not know.
func (t Type) String() string {
	if c, ok := registry[t]; ok {
		return c.name
	}
	if t.Ignorable() {
		return fmt.Sprintf("type(%d|ignore)", t.Number())
	}
	return fmt.Sprintf("type(%d)", t)
}

// Types returns every command type this node knows, in number order.
func Types() []Type {
	out := make([]Type, 0, len(registry))
	for t := Type(0); ; t++ {
		if _, ok := registry[t]; ok {
			out = append(out, t)
		}
		if t == 0xff {
			return out
		}
	}
}
