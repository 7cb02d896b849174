package command

import (
	"strconv"
	"strings"
	"time"
)

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

// shareSchemes are the package locations export and import accept in a
// URL of their own (jobs without a share).
var shareSchemes = []string{"smb", "file"}

// Window bounds when an export moves data: a daily span of wall-clock time
// on some days of the week in one time zone. Validate checks its form only
// (lengths and characters); the export package parses it.
type Window struct {
	// Spec is the span, "HH:MM-HH:MM" (or with seconds); an end not after
	// the start ends on the next day: "22:00-04:00".
	Spec string `json:"spec"`
	// Days are the days a span opens on: "" for every day, or names and
	// ranges such as "mon-fri" or "sat,sun".
	Days string `json:"days,omitempty"`
	// Location is an IANA time zone such as "Europe/Berlin"; "" is UTC.
	Location string `json:"location,omitempty"`
}

// validate checks the window's form.
func (w *Window) validate(field string) error {
	if w.Spec == "" {
		return invalid(field+".spec", "required")
	}
	if err := checkChars(field+".spec", w.Spec, MaxWindowSpecLen, "0123456789:-,"); err != nil {
		return err
	}
	if err := checkChars(field+".days", w.Days, MaxWindowDaysLen, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ,- "); err != nil {
		return err
	}
	if err := checkChars(field+".location", w.Location, MaxLocationLen, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/_+-"); err != nil {
		return err
	}
	if strings.HasPrefix(w.Location, "/") || strings.HasSuffix(w.Location, "/") || strings.Contains(w.Location, "//") {
		return invalid(field+".location", "%q is not a time zone name such as Europe/Berlin", w.Location)
	}
	return nil
}

// ExportJobCreated creates a queued export job for a snapshot with a
// verified replica on the node that will run the export.
//
// A job writes to a share (Share names a ShareAdded record, and Target is
// the directory within it), or, without a share, to the URL in Target.
type ExportJobCreated struct {
	// ID identifies the job.
	ID string `json:"id"`
	// SnapshotID is the snapshot to export.
	SnapshotID string `json:"snapshot_id"`
	// Node is the data node that runs the export.
	Node string `json:"node"`
	// Target is, with Share, the directory within the share the package
	// goes to (relative; "" is the share's top). Without Share it is a URL,
	// smb://host/share/dir or file:///dir, which never carries a password.
	Target string `json:"target"`
	// Format is the disk format.
	Format ExportFormat `json:"format"`
	// Creator names who asked for the export.
	Creator string `json:"creator"`
	// CreatedAt is when the request was accepted.
	CreatedAt time.Time `json:"created_at"`

	// Fields of payload version 2.

	// Share names the share the package goes to (ShareAdded.Name).
	Share string `json:"share,omitempty"`
	// Package is the package's base name (a safe file name without
	// extension); the proposer fills in a default, jobs of payload version
	// 1 have none.
	Package string `json:"package,omitempty"`
	// OVA writes the package as one .ova archive instead of a directory
	// of files.
	OVA bool `json:"ova,omitempty"`
	// Volumes are the ids of the snapshot's volumes to export, all of them
	// when empty.
	Volumes []string `json:"volumes,omitempty"`
	// Window bounds when the export moves data; nil for any time.
	Window *Window `json:"window,omitempty"`
	// BandwidthBytes limits the export to this many bytes per second; 0 for
	// no limit.
	BandwidthBytes int64 `json:"bandwidth_bytes,omitempty"`
}

// Type implements Command.
func (ExportJobCreated) Type() Type { return TypeExportJobCreated }

func (c ExportJobCreated) payloadVersion() uint8 {
	if c.Share != "" || c.Package != "" || c.OVA || len(c.Volumes) > 0 || c.Window != nil || c.BandwidthBytes != 0 {
		return 2
	}
	return 1
}

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
	if c.Share == "" {
		if err := checkURL("target", c.Target, shareSchemes...); err != nil {
			return err
		}
	} else {
		if err := checkID("share", c.Share); err != nil {
			return err
		}
		if err := checkRelPath("target", c.Target, true); err != nil {
			return err
		}
	}
	if !c.Format.Valid() {
		return invalid("format", "%q is not qcow2 or vmdk", c.Format)
	}
	if c.Package != "" {
		if err := checkFileName("package", c.Package, MaxPackageNameLen); err != nil {
			return err
		}
	}
	if len(c.Volumes) > MaxVolumes {
		return invalid("volumes", "%d volumes, at most %d", len(c.Volumes), MaxVolumes)
	}
	seen := map[string]bool{}
	for i, v := range c.Volumes {
		field := "volumes[" + strconv.Itoa(i) + "]"
		if err := checkID(field, v); err != nil {
			return err
		}
		if seen[v] {
			return invalid(field, "%q selected twice", v)
		}
		seen[v] = true
	}
	if c.Window != nil {
		if err := c.Window.validate("window"); err != nil {
			return err
		}
	}
	if err := checkBytes("bandwidth_bytes", c.BandwidthBytes, 0); err != nil {
		return err
	}
	if err := checkName("creator", c.Creator); err != nil {
		return err
	}
	return checkTime("created_at", c.CreatedAt)
}

// Readdress is a program an import runs in the new VM's guest, through the
// guest agent's guest-exec, after its first boot: typically a script that
// sets new IP addresses.
type Readdress struct {
	// Path is the program's absolute path in the guest: /usr/local/sbin/x
	// or C:\x.exe.
	Path string `json:"path"`
	// Args are its arguments.
	Args []string `json:"args,omitempty"`
}

// validate checks the program's path and arguments.
func (r *Readdress) validate(field string) error {
	if r.Path == "" {
		return invalid(field+".path", "required")
	}
	if err := checkLine(field+".path", r.Path, MaxGuestPathLen); err != nil {
		return err
	}
	windows := len(r.Path) >= 3 && isLetter(r.Path[0]) && r.Path[1] == ':' && (r.Path[2] == '\\' || r.Path[2] == '/')
	if !strings.HasPrefix(r.Path, "/") && !windows {
		return invalid(field+".path", "%q is not an absolute path (/... or C:\\...)", r.Path)
	}
	if len(r.Args) > MaxGuestArgs {
		return invalid(field+".args", "%d arguments, at most %d", len(r.Args), MaxGuestArgs)
	}
	for i, a := range r.Args {
		if err := checkText(field+".args["+strconv.Itoa(i)+"]", a, MaxGuestArgLen); err != nil {
			return err
		}
	}
	return nil
}

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

// ImportJobCreated creates a queued import job that reads a package and
// creates a VM named VMName.
//
// A job reads from a share (Share names a ShareAdded record, and Path is
// the package within it), or, without a share, from the URL in Source.
type ImportJobCreated struct {
	// ID identifies the job.
	ID string `json:"id"`
	// Node is the data node that runs the import and will host the VM.
	Node string `json:"node"`
	// Source is, without Share, the package's .ovf: smb://host/share/dir/x.ovf
	// or file:///...; empty with Share.
	Source string `json:"source,omitempty"`
	// VMName is the name of the VM to create.
	VMName string `json:"vm_name"`
	// NewMACs asks for new MAC addresses instead of the package's.
	NewMACs bool `json:"new_macs,omitempty"`
	// Creator names who asked for the import.
	Creator string `json:"creator"`
	// CreatedAt is when the request was accepted.
	CreatedAt time.Time `json:"created_at"`

	// Fields of payload version 2.

	// Share names the share the package is read from (ShareAdded.Name).
	Share string `json:"share,omitempty"`
	// Path is, with Share, the package's .ovf or .ova within the share
	// (relative, without "..").
	Path string `json:"path,omitempty"`
	// Readdress is run in the guest after the VM's first boot; nil for
	// nothing.
	Readdress *Readdress `json:"readdress,omitempty"`
	// Window is when the import may start (it runs to its end once
	// started); nil for any time.
	Window *Window `json:"window,omitempty"`
	// BandwidthBytes limits the read from the share, in bytes per second;
	// 0 for no limit.
	BandwidthBytes int64 `json:"bandwidth_bytes,omitempty"`
}

// Type implements Command.
func (ImportJobCreated) Type() Type { return TypeImportJobCreated }

func (c ImportJobCreated) payloadVersion() uint8 {
	if c.Share != "" || c.Path != "" || c.Readdress != nil || c.Window != nil || c.BandwidthBytes != 0 {
		return 2
	}
	return 1
}

// Validate implements Command.
func (c ImportJobCreated) Validate() error {
	if err := checkID("id", c.ID); err != nil {
		return err
	}
	if err := checkID("node", c.Node); err != nil {
		return err
	}
	if c.Share == "" {
		if err := checkURL("source", c.Source, shareSchemes...); err != nil {
			return err
		}
		if c.Path != "" {
			return invalid("path", "only with a share")
		}
	} else {
		if err := checkID("share", c.Share); err != nil {
			return err
		}
		if c.Source != "" {
			return invalid("source", "not with a share: path names the package within it")
		}
		if err := checkRelPath("path", c.Path, false); err != nil {
			return err
		}
		if ext := strings.ToLower(c.Path[max(0, len(c.Path)-4):]); ext != ".ovf" && ext != ".ova" {
			return invalid("path", "%q is not an .ovf or .ova file", c.Path)
		}
	}
	if err := checkName("vm_name", c.VMName); err != nil {
		return err
	}
	if c.Readdress != nil {
		if err := c.Readdress.validate("readdress"); err != nil {
			return err
		}
	}
	if c.Window != nil {
		if err := c.Window.validate("window"); err != nil {
			return err
		}
	}
	if err := checkBytes("bandwidth_bytes", c.BandwidthBytes, 0); err != nil {
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

	// Fields of payload version 2.

	// Rate is the transfer rate over the last interval, in bytes per second.
	Rate int64 `json:"rate,omitempty"`
	// File is the package file being written or read, relative to the
	// job's directory; optional.
	File string `json:"file,omitempty"`
}

// Type implements Command.
func (JobProgress) Type() Type { return TypeJobProgress }

func (c JobProgress) payloadVersion() uint8 {
	if c.Rate != 0 || c.File != "" {
		return 2
	}
	return 1
}

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
	if err := checkBytes("rate", c.Rate, 0); err != nil {
		return err
	}
	if err := checkRelPath("file", c.File, true); err != nil {
		return err
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

	// Fields of payload version 2.

	// Reason says why a job paused ("window closed, reopens at ...") or
	// resumed; optional, only for paused and running.
	Reason string `json:"reason,omitempty"`
	// VMID is the VM an import created; optional, only for done.
	VMID string `json:"vm_id,omitempty"`
}

// Type implements Command.
func (JobStateChanged) Type() Type { return TypeJobStateChanged }

func (c JobStateChanged) payloadVersion() uint8 {
	if c.Reason != "" || c.VMID != "" {
		return 2
	}
	return 1
}

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
	if c.Reason != "" && c.State != JobPaused && c.State != JobRunning {
		return invalid("reason", "only for paused and running")
	}
	if err := checkText("reason", c.Reason, MaxDescriptionLen); err != nil {
		return err
	}
	if c.VMID != "" && c.State != JobDone {
		return invalid("vm_id", "only for done")
	}
	if err := checkOptionalID("vm_id", c.VMID); err != nil {
		return err
	}
	return checkTime("at", c.At)
}

// JobAssigned moves a job that is not final to another data node: the
// leader proposes it when the job's node is lost. A running job becomes
// paused with Reason, so that the new node resumes it from its last
// reported offset; a queued or paused job keeps its state. An export
// moves only to a node with a verified replica of its snapshot.
type JobAssigned struct {
	// ID is the job.
	ID string `json:"id"`
	// Node is the data node that runs the job from now on.
	Node string `json:"node"`
	// Reason says why ("node data-a lost").
	Reason string `json:"reason"`
	// At is when the job was moved.
	At time.Time `json:"at"`
}

// Type implements Command.
func (JobAssigned) Type() Type { return TypeJobAssigned }

// Validate implements Command.
func (c JobAssigned) Validate() error {
	if err := checkID("id", c.ID); err != nil {
		return err
	}
	if err := checkID("node", c.Node); err != nil {
		return err
	}
	if c.Reason == "" {
		return invalid("reason", "required")
	}
	if err := checkText("reason", c.Reason, MaxDescriptionLen); err != nil {
		return err
	}
	return checkTime("at", c.At)
}

func init() {
	register[ExportJobCreated](TypeExportJobCreated, "export-job-created")
	addVersion[ExportJobCreated](TypeExportJobCreated, 2)
	register[ImportJobCreated](TypeImportJobCreated, "import-job-created")
	addVersion[ImportJobCreated](TypeImportJobCreated, 2)
	register[JobProgress](TypeJobProgress, "job-progress")
	addVersion[JobProgress](TypeJobProgress, 2)
	register[JobStateChanged](TypeJobStateChanged, "job-state-changed")
	addVersion[JobStateChanged](TypeJobStateChanged, 2)
	register[JobAssigned](TypeJobAssigned, "job-assigned")
}
