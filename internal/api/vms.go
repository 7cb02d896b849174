package api

import (
	"context"
	"net/http"
	"net/url"

	"github.com/twinsnap/twinsnap/cluster/command"
)

// VM is a registered VM as the API shows it.
type VM struct {
	command.VM
}

// VMList is the reply of GET /v1/vms.
type VMList struct {
	VMs []VM `json:"vms"`
}

// VMRegisterRequest is the body of POST /v1/vms. The VM's host node
// inspects it (QMP's view of its disks) and registers it with its volumes.
type VMRegisterRequest struct {
	// Name is the VM's name in twinsnap (unique in the cluster).
	Name string `json:"name"`
	// HostNode is the data node the VM runs on; default: the node that
	// receives the request, if it is a data node.
	HostNode string `json:"host_node,omitempty"`
	// Driver is "qemu" (QEMU with its QMP and agent sockets) or
	// "libvirt" (a libvirt domain on the host node's libvirtd).
	Driver command.Driver `json:"driver"`
	// QEMU and Libvirt carry the driver's connection details.
	QEMU    *command.QEMUConnection    `json:"qemu,omitempty"`
	Libvirt *command.LibvirtConnection `json:"libvirt,omitempty"`
	// BootVolume names the boot volume by serial or device id; default: the
	// disk with serial "boot", else the first disk.
	BootVolume string `json:"boot_volume,omitempty"`
	// FreezeEnabled defaults to true: application-consistent snapshots
	// freeze the selected volumes' file systems through the guest agent.
	FreezeEnabled *bool `json:"freeze_enabled,omitempty"`
	// FreezeTimeoutMS bounds freeze, capture and thaw together; default
	// 10000.
	FreezeTimeoutMS int64 `json:"freeze_timeout_ms,omitempty"`
	// ContainerPercent sizes each volume's container on every data node
	// as a percentage of the volume's virtual size: 100 holds the volume
	// alone, the default 300 leaves twice its size for snapshot data.
	ContainerPercent int `json:"container_percent,omitempty"`
}

// QuiesceCheckRequest is the body of POST /v1/vms/{id}/quiesce-check: freeze
// the file systems on the selected volumes, hold them frozen for HoldMS
// (at most the VM's freeze timeout), and thaw, exactly as a snapshot's
// capture would, without capturing anything.
type QuiesceCheckRequest struct {
	// Volumes are volume names (or serials); empty means all volumes.
	Volumes []string `json:"volumes,omitempty"`
	// HoldMS is how long to keep the file systems frozen; default 0.
	HoldMS int64 `json:"hold_ms,omitempty"`
	// Desire and Require are consistency levels ("application", "crash");
	// defaults application and crash.
	Desire  string `json:"desire,omitempty"`
	Require string `json:"require,omitempty"`
}

// QuiesceCheckResult reports what a quiesce check did.
type QuiesceCheckResult struct {
	VM       string `json:"vm"`
	HostNode string `json:"host_node"`
	// Achieved is the consistency the check reached; StepDown says why it
	// is below the desired level.
	Achieved string `json:"achieved"`
	StepDown string `json:"step_down,omitempty"`
	// Frozen are the guest mount points frozen, with the reason for each.
	Frozen  []string          `json:"frozen,omitempty"`
	Reasons map[string]string `json:"reasons,omitempty"`
	// Spanning are frozen mount points that also span unselected volumes;
	// Unmapped are selected volumes with no guest file system found.
	Spanning []string `json:"spanning,omitempty"`
	Unmapped []string `json:"unmapped,omitempty"`
	// Times in milliseconds: the freeze call, the thaw call, and the
	// window from the freeze call to the confirmed thaw.
	FreezeCallMS float64 `json:"freeze_call_ms"`
	ThawCallMS   float64 `json:"thaw_call_ms"`
	WindowMS     float64 `json:"window_ms"`
}

// VMs lists the registered VMs.
func (c *Client) VMs(ctx context.Context) (*VMList, error) {
	var out VMList
	return &out, c.do(ctx, http.MethodGet, "/vms", nil, &out)
}

// VM returns one VM by id or name.
func (c *Client) VM(ctx context.Context, idOrName string) (*VM, error) {
	var out VM
	return &out, c.do(ctx, http.MethodGet, "/vms/"+url.PathEscape(idOrName), nil, &out)
}

// RegisterVM registers a VM; its host node inspects its disks.
func (c *Client) RegisterVM(ctx context.Context, req VMRegisterRequest) (*VM, error) {
	var out VM
	return &out, c.do(ctx, http.MethodPost, "/vms", req, &out)
}

// UnregisterVM removes a VM from twinsnap (the VM itself is untouched).
func (c *Client) UnregisterVM(ctx context.Context, idOrName string) error {
	return c.do(ctx, http.MethodDelete, "/vms/"+url.PathEscape(idOrName), nil, nil)
}

// QuiesceCheck freezes and thaws a VM's selected volumes as a capture
// would, and reports the plan and the timings.
func (c *Client) QuiesceCheck(ctx context.Context, idOrName string, req QuiesceCheckRequest) (*QuiesceCheckResult, error) {
	var out QuiesceCheckResult
	return &out, c.do(ctx, http.MethodPost, "/vms/"+url.PathEscape(idOrName)+"/quiesce-check", req, &out)
}
