// Package guestagent is a client for the QEMU guest agent protocol.
//
// It speaks the agent's JSON wire protocol, synchronises the stream with
// guest-sync-delimited (the 0xFF marker) and resynchronises after any
// timeout or stray bytes, and offers the calls twinsnap needs to quiesce
// guest file systems: guest-ping, guest-info, guest-get-fsinfo,
// guest-fsfreeze-freeze-list, guest-fsfreeze-thaw and
// guest-fsfreeze-status. Every call takes a context and is bounded.
// Errors returned by the agent keep their class (see Error).
package guestagent
