// Package command defines the Raft command vocabulary of twinsnap: numbered,
// append-only command types, each an envelope of a type byte and a
// versioned payload, with an "ignore if unknown" bit so that older nodes can
// skip commands added by newer ones.
//
// # Envelope
//
//	byte 0     type: bits 0-6 the command number, bit 7 IgnoreUnknown
//	byte 1     payload version (see PayloadVersion)
//	bytes 2..  payload: one JSON object
//
// Encode validates and writes an envelope; Decode reads one and reports an
// unknown type with the IgnoreUnknown bit as ErrIgnorable (the state machine
// skips it), an unknown type without the bit as *UnknownTypeError, an
// unreadable payload version as *UnknownVersionError and malformed input as
// *DecodeError (the state machine stops on all three: applying past an entry
// it cannot read would let this node's state diverge from its peers').
//
// # Why JSON
//
// Commands are small (hundreds of bytes) and rare (a few per snapshot), so
// encoding speed and size do not matter; being able to read a log entry with
// `tail -c +3 | jq` while debugging a cluster does. encoding/json is in the
// standard library (no new module, no code generation), deterministic for
// structs and maps (map keys are sorted), and decoded strictly here: unknown
// fields and trailing data are errors, so a payload a node does not fully
// understand is never half-applied. The golden files under testdata/ pin
// the exact bytes of every command; a change to them is a format change.
//
// # Compatibility rules
//
//   - Type numbers are append-only and never reused, even after a command is
//     retired. Set IgnoreUnknown only on commands older nodes may safely
//     miss; none of the commands defined so far carries it.
//   - Any change to a payload (a field added, renamed or re-typed, a
//     validation rule tightened) takes a new payload version; Decode keeps a
//     decoder for every old version, converting to the current struct.
//     Validation rules belong to the format because the state machine
//     re-validates every entry: a rule that refuses what an older node
//     accepted would make two nodes disagree about the same log.
//   - A field added to a payload is optional (omitempty, its zero value
//     meaning the old behaviour), and the command's payloadVersion reports
//     when it is set. Encode writes the lowest version that carries the
//     fields set (PayloadVersion), so a command that uses none of the new
//     fields keeps its old bytes and stays readable by older nodes, and one
//     that does is refused by them as an unknown version rather than
//     misread. The decoder of an old version refuses the newer fields.
//   - Ids and timestamps are filled in by the proposer, never by the state
//     machine. No secret goes into a command in clear text: share locations
//     are URLs without credentials, and a share's password travels only as
//     Sealed bytes, sealed with the cluster key (cluster/pki) before the
//     command is proposed. ShareAdded and Sealed never print those bytes.
//
// # Commands
//
//	 #  name                        struct                   payload versions
//	 1  node-added                  NodeAdded                1
//	 2  node-updated                NodeUpdated              1
//	 3  node-removed                NodeRemoved              1
//	 4  settings-set                SettingsSet              1
//	 5  vm-registered               VMRegistered             1
//	 6  vm-updated                  VMUpdated                1
//	 7  vm-removed                  VMRemoved                1
//	 8  volume-container-created    ContainerCreated         1
//	 9  volume-container-expanded   ContainerExpanded        1
//	10  snapshot-created            SnapshotCreated          1
//	11  snapshot-captured           SnapshotCaptured         1
//	12  replica-written             ReplicaWritten           1
//	13  snapshot-failed             SnapshotFailed           1
//	14  discard-incomplete          DiscardIncomplete        1
//	15  snapshot-delete-requested   SnapshotDeleteRequested  1
//	16  replica-reclaimed           ReplicaReclaimed         1
//	17  export-job-created          ExportJobCreated         1, 2 (share, package, ova, volumes, window, bandwidth_bytes)
//	18  import-job-created          ImportJobCreated         1, 2 (share, path, readdress)
//	19  job-progress                JobProgress              1, 2 (rate, file)
//	20  job-state-changed           JobStateChanged          1, 2 (reason, vm_id)
//	21  share-added                 ShareAdded               1
//	22  share-removed               ShareRemoved             1
//	23  job-assigned                JobAssigned              1
//
// None carries IgnoreUnknown. TestTypeNumbering pins the numbers and
// TestGolden the bytes of a sample of each command and payload version.
//
// # Adding a command
//
//  1. A struct with Type and Validate in the file of its resource, and the
//     next free Type constant in type.go.
//  2. register it in that file's init function.
//  3. A sample in samples_test.go; run `go test -run Golden -update` and
//     commit the new testdata file.
//  4. An apply handler, state record changes, checkpoint record if new, and
//     tests in cluster/state.
//  5. A row in the command table above.
//
// Adding a field to a command: an omitempty field, a payloadVersion case,
// addVersion in the init function (once per release that adds fields), a
// sample that sets it (the old samples keep their bytes), and the version
// column above.
//
// The package imports no other project package and not hashicorp/raft;
// every package that proposes or applies commands depends on it.
package command
