// Package command defines the Raft command vocabulary of twinsnap: numbered,
// append-only command types, each an envelope of a type byte and a
// versioned payload, with an "ignore if unknown" bit so that older nodes can
// skip commands added by newer ones.
//
// The package imports no other project package; every other package that
// proposes or applies commands depends on it.
package command
