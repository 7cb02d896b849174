package guestagent

// Info is the reply of guest-info.
type Info struct {
	Version  string        `json:"version"`
	Commands []CommandInfo `json:"supported_commands"`
}

// CommandInfo describes one agent command.
type CommandInfo struct {
	Name            string `json:"name"`
	Enabled         bool   `json:"enabled"`
	SuccessResponse bool   `json:"success-response"`
}

// Supports reports whether the agent has the named command enabled.
func (i *Info) Supports(name string) bool {
	for _, c := range i.Commands {
		if c.Name == name {
			return c.Enabled
		}
	}
	return false
}

// FileSystem is one guest file system as guest-get-fsinfo reports it.
type FileSystem struct {
	Name       string `json:"name"`
	Mountpoint string `json:"mountpoint"`
	Type       string `json:"type"`
	UsedBytes  uint64 `json:"used-bytes,omitempty"`
	TotalBytes uint64 `json:"total-bytes,omitempty"`
	Disks      []Disk `json:"disk"`
}

// Disk is one disk backing a guest file system.
type Disk struct {
	PCIController PCIAddress `json:"pci-controller"`
	BusType       string     `json:"bus-type"`
	Bus           int        `json:"bus"`
	Target        int        `json:"target"`
	Unit          int        `json:"unit"`
	Serial        string     `json:"serial,omitempty"`
	Dev           string     `json:"dev,omitempty"`
}

// PCIAddress is a PCI address in the guest.
type PCIAddress struct {
	Domain   int `json:"domain"`
	Bus      int `json:"bus"`
	Slot     int `json:"slot"`
	Function int `json:"function"`
}

// FreezeStatus is the reply of guest-fsfreeze-status.
type FreezeStatus string

// Freeze states.
const (
	Thawed FreezeStatus = "thawed"
	Frozen FreezeStatus = "frozen"
)

// ExecStatus is the reply of guest-exec-status.
type ExecStatus struct {
	Exited   bool   `json:"exited"`
	ExitCode int    `json:"exitcode"`
	Signal   int    `json:"signal"`
	OutData  []byte `json:"out-data"`
	ErrData  []byte `json:"err-data"`
	// OutTruncated and ErrTruncated report output the agent cut short.
	OutTruncated bool `json:"out-truncated"`
	ErrTruncated bool `json:"err-truncated"`
}
