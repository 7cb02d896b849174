// Package agenttest is a fake QEMU guest agent for tests.
//
// An Agent speaks the agent's real wire protocol over a unix socket (Start)
// or one end of a net.Pipe (Pipe): it resets its parser on a 0xFF byte and
// answers it with the JSON parse error the real agent sends, answers
// guest-sync-delimited with 0xFF followed by {"return": id}, echoes a
// request's "id" member, and answers guest-ping, guest-info,
// guest-get-fsinfo, guest-fsfreeze-freeze(-list), guest-fsfreeze-thaw,
// guest-fsfreeze-status, guest-exec and guest-exec-status with replies
// shaped like QEMU 7.2's (qga/qapi-schema.json). It tracks the freeze
// state like the real agent: while frozen, every command outside the
// agent's allow-list fails with CommandNotFound, "Command guest-exec has
// been disabled: the agent is in frozen state".
//
// Like QEMU's character device, an Agent serves one connection at a time;
// the guest's state (frozen file systems, running programs) outlives a
// connection. Like the real agent it handles one command at a time: a
// command that hangs or is delayed holds up every later one.
//
// Faults are injected through the Fault function field, which picks an
// Action for each command: hang until released, delay the reply, drop the
// connection half-way through the reply, send garbage, send a stale sync
// reply or the previous command's reply first, answer with an error of a
// given class, or answer with an arbitrary (e.g. oversized) value.
package agenttest
