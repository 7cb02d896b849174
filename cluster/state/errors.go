package state

import "errors"

// Business errors. Apply reports them in Result.Err, wrapped with details
// (match them with errors.Is); they never panic and never change state.
var (
	// ErrNotFound: a record the command names does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists: a record with that id, name or address already exists.
	ErrExists = errors.New("already exists")
	// ErrFenced: the change comes from a deposed coordinator or an earlier
	// term, or targets a snapshot discarded by fencing.
	ErrFenced = errors.New("fenced: stale term or discarded snapshot")
	// ErrInvalidTransition: the record's state does not allow the change.
	ErrInvalidTransition = errors.New("invalid state transition")
	// ErrSnapshotsDisabled: taking snapshots is switched off in the settings.
	ErrSnapshotsDisabled = errors.New("snapshots are disabled")
	// ErrNoSpace: a volume container lacks room for the snapshot.
	ErrNoSpace = errors.New("not enough space in volume container")
	// ErrInvalid: the command is malformed (it fails Validate) or does not
	// fit the records it names (a volume of another VM, a witness where a
	// data node is needed, a consistency below the required one).
	ErrInvalid = errors.New("invalid command")
	// ErrInUse: the record is still needed by others (a node hosting VMs, a
	// VM with snapshots, a snapshot being exported, a share a job uses).
	ErrInUse = errors.New("in use")
	// ErrChecksumMismatch: a replica's sizes or SHA-256 differ from the capture's.
	ErrChecksumMismatch = errors.New("replica checksum mismatch")
	// ErrLimit: a cluster limit would be exceeded (two data nodes, settings).
	ErrLimit = errors.New("limit reached")
)

// Checkpoint errors. Restore wraps one of them; the state is unchanged.
var (
	// ErrCheckpointCorrupt: a checkpoint record fails its checksum, does not
	// parse, or breaks the format's order and uniqueness rules.
	ErrCheckpointCorrupt = errors.New("state checkpoint corrupt")
	// ErrCheckpointTruncated: the stream ended before the trailer.
	ErrCheckpointTruncated = errors.New("state checkpoint truncated")
	// ErrCheckpointVersion: the header names a format this node cannot read.
	ErrCheckpointVersion = errors.New("state checkpoint format not supported")
)

var errorCodes = []struct {
	err  error
	code string
}{
	{ErrNotFound, "not_found"},
	{ErrExists, "exists"},
	{ErrFenced, "fenced"},
	{ErrInvalidTransition, "invalid_transition"},
	{ErrSnapshotsDisabled, "snapshots_disabled"},
	{ErrNoSpace, "no_space"},
	{ErrInvalid, "invalid"},
	{ErrInUse, "in_use"},
	{ErrChecksumMismatch, "checksum_mismatch"},
	{ErrLimit, "limit"},
}

// ErrorCode returns a stable, lower-case code for the business error err
// wraps ("not_found", "fenced", ...), "" for nil and "internal" for anything
// else. Forwarded writes carry the code across nodes; ErrorForCode turns it
// back into the sentinel.
func ErrorCode(err error) string {
	if err == nil {
		return ""
	}
	for _, c := range errorCodes {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return "internal"
}

// ErrorForCode returns the sentinel for a code from ErrorCode, or nil.
func ErrorForCode(code string) error {
	for _, c := range errorCodes {
		if c.code == code {
			return c.err
		}
	}
	return nil
}
