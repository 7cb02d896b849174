// Package state holds the deterministic replicated state of a twinsnap
// cluster: nodes, VMs, volumes, volume containers, snapshots, replicas,
// export and import jobs and settings. It applies commands from
// cluster/command, answers queries, and writes and restores state
// checkpoints (Raft FSM snapshots) record by record.
//
// Nothing in this package reads a clock, performs I/O on its own behalf or
// draws random numbers: every node must reach the same state from the same
// log.
package state
