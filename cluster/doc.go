// Package cluster runs the Raft node of a twinsnap system: bootstrap of a new
// cluster, joining and removing peers, the mutually authenticated TLS
// transport, forwarding of writes to the leader, leadership observation and
// offline recovery of a cluster that lost quorum.
//
// The replicated state itself lives in cluster/state and the command
// vocabulary in cluster/command; this package only moves commands through
// hashicorp/raft and reports the outcome.
package cluster
