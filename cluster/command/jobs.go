package command

import "time"

// JobKind is what a job does.
type JobKind string

// The job kinds.
const (
	// JobExport writes a snapshot as an OVF package to a share.
	JobExport JobKind = "export"
	// JobImport reads an OVF package from a share and creates a VM.
	JobImport JobKind = "import"
)

// JobState is where a job is in its life.
type JobState string

// The job states. A job starts queued; done, failed and cancelled are final.
//
//	queued ──▶ running ◀──▶ paused
//	queued, running, paused ──▶ failed | cancelled
//	running ──▶ done
const (
	// JobQueued is a job waiting to start.
	JobQueued JobState = "queued"
	// JobRunning is a job moving data.
	JobRunning JobState = "running"
	// JobPaused is a job waiting for its next window or an operator.
	JobPaused JobState = "paused"
	// JobDone is a job that finished; its output is whole.
	JobDone JobState = "done"
	// JobFailed is a job that stopped on an error.
	JobFailed JobState = "failed"
	// JobCancelled is a job an operator stopped.
	JobCancelled JobState = "cancelled"
)

// Valid reports whether s is a known job state.
func (s JobState) Valid() bool {
	switch s {
	case JobQueued, JobRunning, JobPaused, JobDone, JobFailed, JobCancelled:
		return true
	}
	return false
}

// Final reports whether s is a state a job never leaves.
func (s JobState) Final() bool { return s == JobDone || s == JobFailed || s == JobCancelled }

// ExportFormat is the disk file format of an export package.
type ExportFormat string

// The export formats.
const (
	// ExportQCOW2 writes qcow2 disks, for twinsnap systems.
	ExportQCOW2 ExportFormat = "qcow2"
	// ExportVMDK writes streamOptimized VMDK disks, for other hypervisors.
	ExportVMDK ExportFormat = "vmdk"
)

// Valid reports whether f is a known export format.
func (f ExportFormat) Valid() bool { return f == ExportQCOW2 || f == ExportVMDK }

// shareSchemes are the package locations export and import accept.
var shareSchemes = []string{"smb", "file"}

// ExportJobCreated creates a queued export job for a snapshot with a
// verified replica on the node that will run the export.
type ExportJobCreated struct {
	// ID identifies the job.
	ID string `json:"id"`
	// SnapshotID is the snapshot to export.
	SnapshotID string `json:"snapshot_id"`
	// Node is the data node that runs the export.
	Node string `json:"node"`
	// Target is where the package goes: smb://host/share/dir or file:///dir.
	// It never carries a password; credentials live outside the log.
	Target string `json:"target"`
	// Format is the disk format.
	Format ExportFormat `json:"format"`
	// Creator names who asked for the export.
	Creator string `json:"creator"`
	// CreatedAt is when the request was accepted.
	CreatedAt time.Time `json:"created_at"`
}

// Type implements Command.
func (ExportJobCreated) Type() Type { return TypeExportJobCreated }

// Validate implements Command.
func (c ExportJobCreated) Validate() error {
	if err := checkID("id", c.ID); err != nil {
		return err
	}
	if err := checkID("snapshot_id", c.SnapshotID); err != nil {
		return err
	}
	if err := checkID("node", c.Node); err != nil {
		return err
	}
	if err := checkURL("target", c.Target, shareSchemes...); err != nil {
		return err
	}
	if !c.Format.Valid() {
		return invalid("format", "%q is not qcow2 or vmdk", c.Format)
	}
	if err := checkName("creator", c.Creator); err != nil {
		return err
	}
	return checkTime("created_at", c.CreatedAt)
}

// ImportJobCreated creates a queued import job that reads a package and
// creates a VM named VMName.
type ImportJobCreated struct {
	// ID identifies the job.
	ID string `json:"id"`
	// Node is the data node that runs the import and will host the VM.
	Node string `json:"node"`
	// Source is the package's .ovf: smb://host/share/dir/x.ovf or file:///...
	Source string `json:"source"`
	// VMName is the name of the VM to create.
	VMName string `json:"vm_name"`
	// NewMACs asks for new MAC addresses instead of the package's.
	NewMACs bool `json:"new_macs,omitempty"`
	// Creator names who asked for the import.
	Creator string `json:"creator"`
	// CreatedAt is when the request was accepted.
	CreatedAt time.Time `json:"created_at"`
}

// Type implements Command.
func (ImportJobCreated) Type() Type { return TypeImportJobCreated }

// Validate implements Command.
func (c ImportJobCreated) Validate() error {
	if err := checkID("id", c.ID); err != nil {
		return err
	}
	if err := checkID("node", c.Node); err != nil {
		return err
	}
	if err := checkURL("source", c.Source, shareSchemes...); err != nil {
		return err
	}
	if err := checkName("vm_name", c.VMName); err != nil {
		return err
	}
	if err := checkName("creator", c.Creator); err != nil {
		return err
	}
	return checkTime("created_at", c.CreatedAt)
}

// JobProgress reports how far a running or paused job got.
type JobProgress struct {
	// ID is the job.
	ID string `json:"id"`
	// Offset is where a resumed transfer continues, in the job's stream.
	Offset int64 `json:"offset"`
	// Bytes is how many bytes were moved so far.
	Bytes int64 `json:"bytes"`
	// TotalBytes is how many bytes the job moves in all; 0 when unknown.
	TotalBytes int64 `json:"total_bytes,omitempty"`
	// At is when the progress was measured.
	At time.Time `json:"at"`
}

// Type implements Command.
func (JobProgress) Type() Type { return TypeJobProgress }

// Validate implements Command.
func (c JobProgress) Validate() error {
	if err := checkID("id", c.ID); err != nil {
		return err
	}
	if err := checkBytes("offset", c.Offset, 0); err != nil {
		return err
	}
	if err := checkBytes("bytes", c.Bytes, 0); err != nil {
		return err
	}
	if err := checkBytes("total_bytes", c.TotalBytes, 0); err != nil {
		return err
	}
	if c.TotalBytes > 0 && (c.Offset > c.TotalBytes || c.Bytes > c.TotalBytes) {
		return invalid("total_bytes", "%d is below offset %d or bytes %d", c.TotalBytes, c.Offset, c.Bytes)
	}
	return checkTime("at", c.At)
}

// JobStateChanged moves a job to another state.
type JobStateChanged struct {
	// ID is the job.
	ID string `json:"id"`
	// State is the new state; never queued.
	State JobState `json:"state"`
	// Error says why a job failed; required for failed and only allowed there.
	Error string `json:"error,omitempty"`
	// At is when the change happened.
	At time.Time `json:"at"`
}

// Type implements Command.
func (JobStateChanged) Type() Type { return TypeJobStateChanged }

// Validate implements Command.
func (c JobStateChanged) Validate() error {
	if err := checkID("id", c.ID); err != nil {
		return err
	}
	if !c.State.Valid() || c.State == JobQueued {
		return invalid("state", "%q is not running, paused, done, failed or cancelled", c.State)
	}
	if (c.State == JobFailed) != (c.Error != "") {
		return invalid("error", "required for failed and only for failed")
	}
	if err := checkText("error", c.Error, MaxDescriptionLen); err != nil {
		return err
	}
	return checkTime("at", c.At)
}

func init() {
	register[ExportJobCreated](TypeExportJobCreated, "export-job-created")
	register[ImportJobCreated](TypeImportJobCreated, "import-job-created")
	register[JobProgress](TypeJobProgress, "job-progress")
	register[JobStateChanged](TypeJobStateChanged, "job-state-changed")
}
