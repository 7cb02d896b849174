// Package command defines the Raft command vocabulary of twinsnap: numbered,
// append-only command types, each an envelope of a type byte and a
// versioned payload, with an "ignore if unknown" bit so that older nodes can
// skip commands added by newer ones.
//
// # Envelope
//
//	byte 0     type: bits 0-6 the command number, bit 7 IgnoreUnknown
//	byte 1     payload version (1 for every command today)
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
//   - Ids and timestamps are filled in by the proposer, never by the state
//     machine. No secret ever goes into a command: share locations are URLs
//     without passwords.
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
//  5. A row in the command table of docs/architecture.md.
//
// The package imports no other project package and not hashicorp/raft;
// every package that proposes or applies commands depends on it.
package command
