// Package guestagent is a client for the QEMU guest agent protocol.
//
// It offers the calls twinsnap needs to quiesce guest file systems and to
// run programs in test guests: guest-ping, guest-info, guest-get-fsinfo,
// guest-fsfreeze-freeze(-list), guest-fsfreeze-thaw, guest-fsfreeze-status,
// guest-exec and guest-exec-status.
//
// Stream speaks the wire protocol over the agent's socket. Its guarantees,
// which the quiesce step depends on:
//
//   - Every call is bounded by its context (DefaultTimeout when the
//     context has none): the connection's deadline follows the context,
//     cancelling ends a call at once, and Close ends a call in progress.
//   - A late reply to an abandoned command is never taken for the answer
//     to a new one. After any timeout, stray bytes or malformed reply the
//     stream resynchronises: it sends 0xFF (which resets the agent's
//     parser) and guest-sync-delimited with a random id, and discards
//     everything up to the agent's 0xFF marker and the reply with that id.
//     Every command also carries a unique "id" that the agent echoes, and
//     a reply carrying another id is skipped.
//   - Replies are framed by a small scanner, bounded to MaxReplySize, and
//     parsed strictly: exact member names, no member twice, exactly one of
//     "return" and "error".
//
// Errors wrap ErrTimeout (the bound passed, or the context was cancelled;
// the context's error is wrapped too), ErrClosed (the connection was
// closed or lost: dial again) or ErrProtocol (garbage, oversized or
// ill-shaped replies), or are an *Error that keeps the agent's error class
// (GenericError, CommandNotFound, ...); see IsClass.
//
// Package agenttest holds a fake agent that speaks the same protocol, for
// tests of this package and of its users.
package guestagent
