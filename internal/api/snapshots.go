package api

import (
	"context"
	"net/http"
	"net/url"
	"time"

	"github.com/twinsnap/twinsnap/cluster/command"
)

// Snapshot states as the API shows them (DESIGN.md).
const (
	StateCreating  = "creating"
	StatePartial   = "partial"
	StateComplete  = "complete"
	StateDiscarded = "discarded"
	StateDeleting  = "deleting"
)

// SnapshotCreateRequest is the body of POST /v1/snapshots. The VM's host
// node plans the snapshot (full or incremental per volume, space), the
// leader accepts it in state creating, and the host captures it.
type SnapshotCreateRequest struct {
	// VM is the VM's id or name.
	VM string `json:"vm"`
	// Name defaults to the VM's name; it need not be unique.
	Name string `json:"name,omitempty"`
	// Description is optional free text.
	Description string `json:"description,omitempty"`
	// Volumes are volume names (or ids); empty means every volume. The
	// boot volume is always captured, selected or not.
	Volumes []string `json:"volumes,omitempty"`
	// NoData captures the boot volume alone.
	NoData bool `json:"no_data,omitempty"`
	// Desire and Require are consistency levels ("application", "crash");
	// defaults application and crash.
	Desire  string `json:"desire,omitempty"`
	Require string `json:"require,omitempty"`
	// Full forces a full capture of every selected volume.
	Full bool `json:"full,omitempty"`
}

// SnapshotVolume is one captured volume of a snapshot.
type SnapshotVolume struct {
	// VolumeID and Name identify the volume; Boot marks the boot volume.
	VolumeID string `json:"volume_id"`
	Name     string `json:"name"`
	Boot     bool   `json:"boot,omitempty"`
	// ParentID is the snapshot this volume's image is incremental to;
	// empty for a full image, whose reason FullReason gives.
	ParentID   string `json:"parent_id,omitempty"`
	FullReason string `json:"full_reason,omitempty"`
	// EstimatedBytes is the space reserved before the capture; SizeBytes
	// the volume's virtual size; StoredBytes the image's size on disk.
	EstimatedBytes int64 `json:"estimated_bytes"`
	SizeBytes      int64 `json:"size_bytes,omitempty"`
	StoredBytes    int64 `json:"stored_bytes,omitempty"`
	// SHA256 is the image file's checksum, equal on every replica.
	SHA256 string `json:"sha256,omitempty"`
}

// SnapshotReplica is one data node's copy of a snapshot.
type SnapshotReplica struct {
	Node     string    `json:"node"`
	Verified bool      `json:"verified"`
	At       time.Time `json:"at"`
	// Volumes are the node's image checksums and sizes.
	Volumes []command.VolumeData `json:"volumes"`
	// UEFIVars describes the node's copy of the UEFI variables.
	UEFIVars *command.FileData `json:"uefi_vars,omitempty"`
}

// SnapshotProgress is what the snapshot's coordinator is doing now. It is
// not replicated: it comes from the coordinator and is absent when the
// coordinator cannot be reached or has nothing running.
type SnapshotProgress struct {
	// Phase is plan, capture, verify, replicate, complete, discard or
	// delete.
	Phase string `json:"phase"`
	// Node reports it.
	Node string `json:"node"`
	// BytesDone and BytesTotal count the phase's data (copy or transfer).
	BytesDone  int64 `json:"bytes_done"`
	BytesTotal int64 `json:"bytes_total"`
	// Detail says more (an error being retried, the volume at hand).
	Detail string `json:"detail,omitempty"`
	// UpdatedAt is when the coordinator last changed it.
	UpdatedAt time.Time `json:"updated_at"`
}

// SnapshotDiscard says why a snapshot was discarded.
type SnapshotDiscard struct {
	By     string    `json:"by"`
	Reason string    `json:"reason,omitempty"`
	At     time.Time `json:"at"`
}

// Snapshot is a snapshot as the API shows it.
type Snapshot struct {
	ID          string `json:"id"`
	VMID        string `json:"vm_id"`
	VMName      string `json:"vm_name"`
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	Creator     string `json:"creator"`
	// State is creating, partial, complete, discarded or deleting.
	State string `json:"state"`
	// Desired, Required and Achieved are consistency levels.
	Desired        command.Consistency `json:"desired"`
	Required       command.Consistency `json:"required"`
	Achieved       command.Consistency `json:"achieved,omitempty"`
	StepDownReason string              `json:"step_down_reason,omitempty"`
	// Coordinator is the node that captured it; Term its fencing term.
	Coordinator string            `json:"coordinator"`
	Term        uint64            `json:"term"`
	Volumes     []SnapshotVolume  `json:"volumes"`
	Replicas    []SnapshotReplica `json:"replicas,omitempty"`
	// ConfigKind is the kind of the captured VM configuration
	// (command.ConfigLibvirtXML or command.ConfigQEMULaunch); UEFIVars
	// is set when the VM's UEFI variables were captured.
	ConfigKind string            `json:"config_kind,omitempty"`
	UEFIVars   *command.FileData `json:"uefi_vars,omitempty"`
	// StoredBytes sums the volumes' stored bytes (one replica).
	StoredBytes int64     `json:"stored_bytes"`
	CreatedAt   time.Time `json:"created_at"`
	CapturedAt  time.Time `json:"captured_at,omitzero"`
	CompletedAt time.Time `json:"completed_at,omitzero"`
	// Discard is set for a discarded snapshot.
	Discard *SnapshotDiscard `json:"discard,omitempty"`
	// Reclaim lists nodes yet to free the snapshot's space.
	Reclaim []string `json:"reclaim,omitempty"`
	// Progress is the coordinator's live progress, when asked for.
	Progress *SnapshotProgress `json:"progress,omitempty"`
}

// SnapshotList is the reply of GET /v1/snapshots.
type SnapshotList struct {
	Snapshots []Snapshot `json:"snapshots"`
}

// SnapshotConfig is the reply of GET /v1/snapshots/{id}/config: the VM's
// configuration the snapshot captured.
type SnapshotConfig struct {
	Kind string `json:"kind"`
	Text string `json:"text"`
}

// CreateVMRequest is the body of POST /v1/snapshots/{id}/create-vm: make a
// new VM from a complete snapshot, on the same system.
type CreateVMRequest struct {
	// Name is the new VM's name (required, unique).
	Name string `json:"name"`
	// HostNode is the data node to create it on; default the snapshot's
	// coordinator when it holds a verified replica, else any node that
	// does.
	HostNode string `json:"host_node,omitempty"`
	// Start boots the new VM (default true) and waits for its agent.
	Start *bool `json:"start,omitempty"`
	// Register registers the new VM with twinsnap (default true).
	Register *bool `json:"register,omitempty"`
}

// CreateVMResult reports the new VM.
type CreateVMResult struct {
	// VM is the new VM's record (registered when asked).
	VM command.VM `json:"vm"`
	// Snapshot is the snapshot it was made from.
	Snapshot string `json:"snapshot"`
	// UUID and MACs are the new VM's identities; Images its disk files.
	UUID   string            `json:"uuid"`
	MACs   []string          `json:"macs,omitempty"`
	Images map[string]string `json:"images"`
	// Started says the VM was started; AgentReady that its guest agent
	// answered.
	Started    bool `json:"started"`
	AgentReady bool `json:"agent_ready"`
	// Seconds is the time from the request to the answer.
	Seconds float64 `json:"seconds"`
}

// VolumeContainer is one volume's container on one data node.
type VolumeContainer struct {
	VolumeID string `json:"volume_id"`
	Volume   string `json:"volume"`
	VMID     string `json:"vm_id"`
	VM       string `json:"vm"`
	Node     string `json:"node"`
	// CapacityBytes is the space set aside; ReservedBytes what the volume
	// itself takes (its virtual size); UsedBytes what snapshots take;
	// FreeBytes the room left for new snapshot data.
	CapacityBytes int64 `json:"capacity_bytes"`
	ReservedBytes int64 `json:"reserved_bytes"`
	UsedBytes     int64 `json:"used_bytes"`
	FreeBytes     int64 `json:"free_bytes"`
}

// VolumeContainerList is the reply of GET /v1/volume-containers.
type VolumeContainerList struct {
	Containers []VolumeContainer `json:"containers"`
}

// ContainerExpandRequest is the body of POST
// /v1/volume-containers/{volume}/expand.
type ContainerExpandRequest struct {
	// CapacityBytes is the new capacity; it must not be below the current
	// one (a container never shrinks).
	CapacityBytes int64 `json:"capacity_bytes"`
	// Node limits the change to one data node; default every data node.
	Node string `json:"node,omitempty"`
}

// SnapshotFilter selects snapshots for Snapshots.
type SnapshotFilter struct {
	// VM is a VM id or name; State one state.
	VM    string
	State string
}

// CreateSnapshot starts a snapshot and returns it in state creating.
func (c *Client) CreateSnapshot(ctx context.Context, req SnapshotCreateRequest) (*Snapshot, error) {
	var out Snapshot
	return &out, c.do(ctx, http.MethodPost, "/snapshots", req, &out)
}

// Snapshots lists snapshots, oldest first.
func (c *Client) Snapshots(ctx context.Context, f SnapshotFilter) (*SnapshotList, error) {
	q := url.Values{}
	if f.VM != "" {
		q.Set("vm", f.VM)
	}
	if f.State != "" {
		q.Set("state", f.State)
	}
	path := "/snapshots"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var out SnapshotList
	return &out, c.do(ctx, http.MethodGet, path, nil, &out)
}

// Snapshot returns one snapshot with its coordinator's live progress.
func (c *Client) Snapshot(ctx context.Context, id string) (*Snapshot, error) {
	var out Snapshot
	return &out, c.do(ctx, http.MethodGet, "/snapshots/"+url.PathEscape(id), nil, &out)
}

// SnapshotConfig returns the VM configuration a snapshot captured.
func (c *Client) SnapshotConfig(ctx context.Context, id string) (*SnapshotConfig, error) {
	var out SnapshotConfig
	return &out, c.do(ctx, http.MethodGet, "/snapshots/"+url.PathEscape(id)+"/config", nil, &out)
}

// DeleteSnapshot starts deleting a complete snapshot and returns it in
// state deleting.
func (c *Client) DeleteSnapshot(ctx context.Context, id string) (*Snapshot, error) {
	var out Snapshot
	return &out, c.do(ctx, http.MethodDelete, "/snapshots/"+url.PathEscape(id), nil, &out)
}

// CreateVMFromSnapshot makes a new VM from a complete snapshot.
func (c *Client) CreateVMFromSnapshot(ctx context.Context, snapshot string, req CreateVMRequest) (*CreateVMResult, error) {
	var out CreateVMResult
	return &out, c.do(ctx, http.MethodPost, "/snapshots/"+url.PathEscape(snapshot)+"/create-vm", req, &out)
}

// VolumeContainers lists volume containers; vm and node filter (empty: all).
func (c *Client) VolumeContainers(ctx context.Context, vm, node string) (*VolumeContainerList, error) {
	q := url.Values{}
	if vm != "" {
		q.Set("vm", vm)
	}
	if node != "" {
		q.Set("node", node)
	}
	path := "/volume-containers"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var out VolumeContainerList
	return &out, c.do(ctx, http.MethodGet, path, nil, &out)
}

// ExpandVolumeContainer grows a volume's container (on every data node, or
// on req.Node) and returns the containers after the change.
func (c *Client) ExpandVolumeContainer(ctx context.Context, volume string, req ContainerExpandRequest) (*VolumeContainerList, error) {
	var out VolumeContainerList
	return &out, c.do(ctx, http.MethodPost, "/volume-containers/"+url.PathEscape(volume)+"/expand", req, &out)
}

// SnapshotProgress returns what a node's snapshot engine is doing for a
// snapshot (ask the snapshot's coordinator).
func (c *Client) SnapshotProgress(ctx context.Context, id string) (*SnapshotProgress, error) {
	var out SnapshotProgress
	return &out, c.do(ctx, http.MethodGet, "/snapshots/"+url.PathEscape(id)+"/progress", nil, &out)
}
