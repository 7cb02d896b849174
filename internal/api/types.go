package api

import (
	"time"

	"github.com/twinsnap/twinsnap/cluster/command"
)

// Version is the API path prefix.
const Version = "/v1"

// Node is a cluster member as the API shows it.
type Node struct {
	command.Node
	// Voter reports whether the node is a voter in the Raft configuration.
	Voter bool `json:"voter"`
	// Leader reports whether the node leads.
	Leader bool `json:"leader"`
}

// NodeList is the reply of GET /v1/nodes.
type NodeList struct {
	Nodes []Node `json:"nodes"`
}

// NodeStatus is one node's own view, the reply of GET /v1/health.
type NodeStatus struct {
	ID           string       `json:"id"`
	Role         command.Role `json:"role"`
	RaftState    string       `json:"raft_state"`
	Term         uint64       `json:"term"`
	LastIndex    uint64       `json:"last_index"`
	CommitIndex  uint64       `json:"commit_index"`
	AppliedIndex uint64       `json:"applied_index"`
	LeaderID     string       `json:"leader_id"`
	LastContact  *time.Time   `json:"last_contact,omitempty"`
	Version      string       `json:"version"`
}

// PeerStatus is one member's health as seen by the node answering GET
// /v1/cluster/status: its own status when it could be reached, the error
// otherwise.
type PeerStatus struct {
	ID          string       `json:"id"`
	Role        command.Role `json:"role"`
	RaftAddress string       `json:"raft_address"`
	APIAddress  string       `json:"api_address"`
	Voter       bool         `json:"voter"`
	Reachable   bool         `json:"reachable"`
	// Healthy: reachable, in the configuration, and (on the leader's view)
	// answering heartbeats.
	Healthy   bool        `json:"healthy"`
	Status    *NodeStatus `json:"status,omitempty"`
	Error     string      `json:"error,omitempty"`
	RTTMillis float64     `json:"rtt_ms,omitempty"`
}

// ClusterStatus is the reply of GET /v1/cluster/status.
type ClusterStatus struct {
	// AnsweredBy is the node that produced this view.
	AnsweredBy string `json:"answered_by"`
	LeaderID   string `json:"leader_id"`
	Term       uint64 `json:"term"`
	LastIndex  uint64 `json:"last_index"`
	// CommitIndex is the answering node's commit index.
	CommitIndex uint64       `json:"commit_index"`
	Peers       []PeerStatus `json:"peers"`
}

// Settings is the reply of GET /v1/settings and of settings changes.
type Settings struct {
	SnapshotsEnabled bool              `json:"snapshots_enabled"`
	Values           map[string]string `json:"values,omitempty"`
}

// SnapshotsSetting is the body of PUT /v1/settings/snapshots.
type SnapshotsSetting struct {
	Enabled bool `json:"enabled"`
}

// JoinRequest is the body of POST /v1/nodes: a node asks to be added as a
// voter. The node must present a node certificate whose id matches.
type JoinRequest struct {
	command.Node
}

// ErrorBody is the body of every error reply.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail describes an error: a stable code (see the Code constants)
// and a human-readable message.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	// Leader names the leader when the error is about leadership.
	Leader string `json:"leader,omitempty"`
}

// SettingValues is the body of PUT /v1/settings/values: small free-form
// settings to set; an empty value deletes the key.
type SettingValues struct {
	Values map[string]string `json:"values"`
}
