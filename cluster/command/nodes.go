package command

// Role is what a node does in the cluster.
type Role string

// The node roles.
const (
	// RoleData is a data node: it runs VMs and stores snapshot data.
	RoleData Role = "data"
	// RoleWitness is a data-less Raft voter that breaks ties.
	RoleWitness Role = "witness"
)

// Valid reports whether r is a known role.
func (r Role) Valid() bool { return r == RoleData || r == RoleWitness }

// Node describes one cluster member as NodeAdded and NodeUpdated carry it.
type Node struct {
	// ID is the node's id, which is also its Raft server id.
	ID string `json:"id"`
	// Role is data or witness.
	Role Role `json:"role"`
	// RaftAddress is the host:port of the Raft transport.
	RaftAddress string `json:"raft_address"`
	// APIAddress is the host:port of the HTTP API.
	APIAddress string `json:"api_address"`
	// DataAddress is the host:port snapshot data streams to; data nodes only.
	DataAddress string `json:"data_address,omitempty"`
}

// Validate checks n on its own.
func (n Node) Validate() error {
	if err := checkID("id", n.ID); err != nil {
		return err
	}
	if !n.Role.Valid() {
		return invalid("role", "%q is not data or witness", n.Role)
	}
	if err := checkAddr("raft_address", n.RaftAddress); err != nil {
		return err
	}
	if err := checkAddr("api_address", n.APIAddress); err != nil {
		return err
	}
	switch n.Role {
	case RoleData:
		return checkAddr("data_address", n.DataAddress)
	default:
		if n.DataAddress != "" {
			return invalid("data_address", "a witness stores no data")
		}
	}
	return nil
}

// NodeAdded adds a node. Its id and Raft address must be new; a cluster has
// at most two data nodes.
type NodeAdded struct {
	Node
}

// Type implements Command.
func (NodeAdded) Type() Type { return TypeNodeAdded }

// Validate implements Command.
func (c NodeAdded) Validate() error { return c.Node.Validate() }

// NodeUpdated replaces the addresses of an existing node. A node's role
// never changes: remove it and add it again.
type NodeUpdated struct {
	Node
}

// Type implements Command.
func (NodeUpdated) Type() Type { return TypeNodeUpdated }

// Validate implements Command.
func (c NodeUpdated) Validate() error { return c.Node.Validate() }

// NodeRemoved removes a node. A data node that still hosts VMs or runs
// unfinished jobs cannot be removed.
type NodeRemoved struct {
	// ID is the node to remove.
	ID string `json:"id"`
}

// Type implements Command.
func (NodeRemoved) Type() Type { return TypeNodeRemoved }

// Validate implements Command.
func (c NodeRemoved) Validate() error { return checkID("id", c.ID) }

func init() {
	register[NodeAdded](TypeNodeAdded, "node-added")
	register[NodeUpdated](TypeNodeUpdated, "node-updated")
	register[NodeRemoved](TypeNodeRemoved, "node-removed")
}
