package command

// ContainerCreated records the volume container set aside for one volume on
// one data node. Its capacity must hold at least the volume itself.
type ContainerCreated struct {
	// VolumeID is the volume the container holds.
	VolumeID string `json:"volume_id"`
	// Node is the data node the container lives on.
	Node string `json:"node"`
	// CapacityBytes is the space set aside for the volume and its snapshot data.
	CapacityBytes int64 `json:"capacity_bytes"`
}

// Type implements Command.
func (ContainerCreated) Type() Type { return TypeContainerCreated }

// Validate implements Command.
func (c ContainerCreated) Validate() error {
	return validateContainer(c.VolumeID, c.Node, c.CapacityBytes)
}

// ContainerExpanded grows a volume container. A container never shrinks.
type ContainerExpanded struct {
	// VolumeID is the volume the container holds.
	VolumeID string `json:"volume_id"`
	// Node is the data node the container lives on.
	Node string `json:"node"`
	// CapacityBytes is the new capacity, at least the current one.
	CapacityBytes int64 `json:"capacity_bytes"`
}

// Type implements Command.
func (ContainerExpanded) Type() Type { return TypeContainerExpanded }

// Validate implements Command.
func (c ContainerExpanded) Validate() error {
	return validateContainer(c.VolumeID, c.Node, c.CapacityBytes)
}

func validateContainer(volume, node string, capacity int64) error {
	if err := checkID("volume_id", volume); err != nil {
		return err
	}
	if err := checkID("node", node); err != nil {
		return err
	}
	return checkBytes("capacity_bytes", capacity, 1)
}

func init() {
	register[ContainerCreated](TypeContainerCreated, "volume-container-created")
	register[ContainerExpanded](TypeContainerExpanded, "volume-container-expanded")
}
