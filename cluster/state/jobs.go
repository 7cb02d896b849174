package state

import (
	"fmt"
	"slices"
	"time"

	"github.com/twinsnap/twinsnap/cluster/command"
)

// Job is an export or import job.
//
// The fields after UpdatedIndex came with payload version 2 of the job
// commands and checkpoint format version 2; they are empty in jobs created
// before.
type Job struct {
	// ID identifies the job.
	ID string `json:"id"`
	// Kind is export or import.
	Kind command.JobKind `json:"kind"`
	// State is where the job is; see command.JobState.
	State command.JobState `json:"state"`
	// Node runs the job.
	Node string `json:"node"`
	// SnapshotID is the snapshot an export reads.
	SnapshotID string `json:"snapshot_id,omitempty"`
	// Target is where an export writes its package: with Share, the
	// directory within the share ("" for its top); without, a URL.
	Target string `json:"target,omitempty"`
	// Format is an export's disk format.
	Format command.ExportFormat `json:"format,omitempty"`
	// Source is the package an import reads, as a URL (jobs without a share).
	Source string `json:"source,omitempty"`
	// VMName is the name of the VM an import creates.
	VMName string `json:"vm_name,omitempty"`
	// NewMACs asks an import for new MAC addresses.
	NewMACs bool `json:"new_macs,omitempty"`
	// Creator names who asked for the job.
	Creator string `json:"creator"`
	// CreatedAt is when the job was accepted.
	CreatedAt time.Time `json:"created_at"`
	// Offset is where a resumed transfer continues (last progress report).
	Offset int64 `json:"offset"`
	// Bytes is how many bytes were moved (last progress report).
	Bytes int64 `json:"bytes"`
	// TotalBytes is how many bytes the job moves in all; 0 when unknown.
	TotalBytes int64 `json:"total_bytes,omitempty"`
	// Error says why the job failed.
	Error string `json:"error,omitempty"`
	// UpdatedAt is the time of the last progress or state change.
	UpdatedAt time.Time `json:"updated_at"`
	// UpdatedIndex is the log index of the last change.
	UpdatedIndex uint64 `json:"updated_index"`

	// Share is the share an export writes to or an import reads from.
	Share string `json:"share,omitempty"`
	// Package is an export package's base name; empty for the exporter's
	// default.
	Package string `json:"package,omitempty"`
	// OVA writes an export package as one .ova archive.
	OVA bool `json:"ova,omitempty"`
	// Volumes are the snapshot volumes an export writes; empty for all.
	Volumes []string `json:"volumes,omitempty"`
	// Window bounds when an export moves data; nil for any time.
	Window *command.Window `json:"window,omitempty"`
	// BandwidthBytes limits an export, in bytes per second; 0 for none.
	BandwidthBytes int64 `json:"bandwidth_bytes,omitempty"`
	// Path is the package an import reads, within Share.
	Path string `json:"path,omitempty"`
	// Readdress is what an import runs in the guest after the first boot.
	Readdress *command.Readdress `json:"readdress,omitempty"`
	// Rate is the transfer rate of the last progress report, in bytes per
	// second, while the job runs; 0 in any other state.
	Rate int64 `json:"rate,omitempty"`
	// File is the package file the last progress report named.
	File string `json:"file,omitempty"`
	// Reason says why the job is paused (or what the last resume said).
	Reason string `json:"reason,omitempty"`
	// VMID is the VM a finished import created.
	VMID string `json:"vm_id,omitempty"`
	// AssignedFrom is the node the job ran on before its last job-assigned.
	AssignedFrom string `json:"assigned_from,omitempty"`
	// AssignedAt is when the job was last moved to another node.
	AssignedAt time.Time `json:"assigned_at,omitzero"`
}

func (j *Job) clone() Job {
	n := *j
	n.Volumes = slices.Clone(j.Volumes)
	if j.Window != nil {
		w := *j.Window
		n.Window = &w
	}
	if j.Readdress != nil {
		r := *j.Readdress
		r.Args = slices.Clone(j.Readdress.Args)
		n.Readdress = &r
	}
	return n
}

// newFields reports whether the job uses a field of checkpoint format
// version 2 (see Checkpoint).
func (j *Job) newFields() bool {
	return j.Share != "" || j.Package != "" || j.OVA || len(j.Volumes) > 0 || j.Window != nil ||
		j.BandwidthBytes != 0 || j.Path != "" || j.Readdress != nil || j.Rate != 0 || j.File != "" ||
		j.Reason != "" || j.VMID != "" || j.AssignedFrom != "" || !j.AssignedAt.IsZero()
}

// jobTransitions lists the states each state may move to.
var jobTransitions = map[command.JobState][]command.JobState{
	command.JobQueued:  {command.JobRunning, command.JobFailed, command.JobCancelled},
	command.JobRunning: {command.JobPaused, command.JobDone, command.JobFailed, command.JobCancelled},
	command.JobPaused:  {command.JobRunning, command.JobFailed, command.JobCancelled},
}

func init() {
	on(command.TypeExportJobCreated, applyExportJobCreated)
	on(command.TypeImportJobCreated, applyImportJobCreated)
	on(command.TypeJobProgress, applyJobProgress)
	on(command.TypeJobStateChanged, applyJobStateChanged)
	on(command.TypeJobAssigned, applyJobAssigned)
}

// exportable checks that node may export snapshot id: the snapshot is
// partial or complete and node holds a verified replica of it.
func (d *data) exportable(id, node string) (*Snapshot, error) {
	sn := d.snapshots.get(id)
	if sn == nil {
		return nil, fmt.Errorf("snapshot %q: %w", id, ErrNotFound)
	}
	if sn.State != Partial && sn.State != Complete {
		return nil, fmt.Errorf("%w: snapshot %q is %s; only partial and complete snapshots are exported", ErrInvalidTransition, sn.ID, sn.State)
	}
	if r, ok := sn.Replica(node); !ok || !r.Verified {
		return nil, fmt.Errorf("%w: node %q holds no verified replica of snapshot %q", ErrInvalid, node, sn.ID)
	}
	return sn, nil
}

// checkShare refuses a share name no share has; "" (no share) passes.
func (d *data) checkShare(name string) error {
	if name != "" && d.shares.get(name) == nil {
		return fmt.Errorf("share %q: %w", name, ErrNotFound)
	}
	return nil
}

func applyExportJobCreated(c *applyCtx, cmd *command.ExportJobCreated) error {
	d := c.d
	if d.jobs.get(cmd.ID) != nil {
		return fmt.Errorf("job %q: %w", cmd.ID, ErrExists)
	}
	if _, err := c.dataNode(cmd.Node); err != nil {
		return err
	}
	sn, err := d.exportable(cmd.SnapshotID, cmd.Node)
	if err != nil {
		return err
	}
	for _, v := range cmd.Volumes {
		if sn.volume(v) == nil {
			return fmt.Errorf("%w: volume %q is not in snapshot %q", ErrInvalid, v, sn.ID)
		}
	}
	if err := d.checkShare(cmd.Share); err != nil {
		return err
	}
	j := &Job{
		ID: cmd.ID, Kind: command.JobExport, State: command.JobQueued, Node: cmd.Node,
		SnapshotID: cmd.SnapshotID, Target: cmd.Target, Format: cmd.Format,
		Creator: cmd.Creator, CreatedAt: cmd.CreatedAt.UTC(), UpdatedAt: cmd.CreatedAt.UTC(),
		UpdatedIndex: c.index,
		Share:        cmd.Share, Package: cmd.Package, OVA: cmd.OVA,
		Volumes: slices.Clone(cmd.Volumes), BandwidthBytes: cmd.BandwidthBytes,
	}
	if len(j.Volumes) == 0 {
		j.Volumes = nil
	}
	if cmd.Window != nil {
		w := *cmd.Window
		j.Window = &w
	}
	d.jobs.put(cmd.ID, j)
	return nil
}

func applyImportJobCreated(c *applyCtx, cmd *command.ImportJobCreated) error {
	d := c.d
	if d.jobs.get(cmd.ID) != nil {
		return fmt.Errorf("job %q: %w", cmd.ID, ErrExists)
	}
	if _, err := c.dataNode(cmd.Node); err != nil {
		return err
	}
	for _, vm := range d.vms.sorted() {
		if vm.Name == cmd.VMName {
			return fmt.Errorf("VM name %q (VM %q): %w", cmd.VMName, vm.ID, ErrExists)
		}
	}
	if err := d.checkShare(cmd.Share); err != nil {
		return err
	}
	j := &Job{
		ID: cmd.ID, Kind: command.JobImport, State: command.JobQueued, Node: cmd.Node,
		Source: cmd.Source, VMName: cmd.VMName, NewMACs: cmd.NewMACs,
		Creator: cmd.Creator, CreatedAt: cmd.CreatedAt.UTC(), UpdatedAt: cmd.CreatedAt.UTC(),
		UpdatedIndex: c.index,
		Share:        cmd.Share, Path: cmd.Path, BandwidthBytes: cmd.BandwidthBytes,
	}
	if cmd.Window != nil {
		w := *cmd.Window
		j.Window = &w
	}
	if cmd.Readdress != nil {
		r := *cmd.Readdress
		r.Args = slices.Clone(cmd.Readdress.Args)
		if len(r.Args) == 0 {
			r.Args = nil
		}
		j.Readdress = &r
	}
	d.jobs.put(cmd.ID, j)
	return nil
}

func applyJobProgress(c *applyCtx, cmd *command.JobProgress) error {
	old := c.d.jobs.get(cmd.ID)
	if old == nil {
		return fmt.Errorf("job %q: %w", cmd.ID, ErrNotFound)
	}
	if old.State != command.JobRunning && old.State != command.JobPaused {
		return fmt.Errorf("%w: job %q is %s; progress is reported while running or paused", ErrInvalidTransition, cmd.ID, old.State)
	}
	n := old.clone()
	n.Offset, n.Bytes = cmd.Offset, cmd.Bytes
	if cmd.TotalBytes > 0 {
		n.TotalBytes = cmd.TotalBytes
	}
	n.Rate, n.File = cmd.Rate, cmd.File
	n.UpdatedAt = cmd.At.UTC()
	n.UpdatedIndex = c.index
	c.d.jobs.put(n.ID, &n)
	return nil
}

func applyJobStateChanged(c *applyCtx, cmd *command.JobStateChanged) error {
	old := c.d.jobs.get(cmd.ID)
	if old == nil {
		return fmt.Errorf("job %q: %w", cmd.ID, ErrNotFound)
	}
	allowed := false
	for _, s := range jobTransitions[old.State] {
		allowed = allowed || s == cmd.State
	}
	if !allowed {
		return fmt.Errorf("%w: job %q cannot go from %s to %s", ErrInvalidTransition, cmd.ID, old.State, cmd.State)
	}
	if cmd.VMID != "" && old.Kind != command.JobImport {
		return fmt.Errorf("%w: job %q is an %s; only an import creates a VM", ErrInvalid, cmd.ID, old.Kind)
	}
	n := old.clone()
	n.State = cmd.State
	n.Error = cmd.Error
	n.Reason = cmd.Reason
	n.VMID = cmd.VMID
	if cmd.State != command.JobRunning {
		n.Rate = 0
	}
	n.UpdatedAt = cmd.At.UTC()
	n.UpdatedIndex = c.index
	c.d.jobs.put(n.ID, &n)
	return nil
}

// applyJobAssigned moves a job that is not final to another data node; a
// running job is paused there with the command's reason, so that the new
// node resumes it from its last offset.
func applyJobAssigned(c *applyCtx, cmd *command.JobAssigned) error {
	d := c.d
	old := d.jobs.get(cmd.ID)
	if old == nil {
		return fmt.Errorf("job %q: %w", cmd.ID, ErrNotFound)
	}
	if old.State.Final() {
		return fmt.Errorf("%w: job %q is %s", ErrInvalidTransition, cmd.ID, old.State)
	}
	if _, err := c.dataNode(cmd.Node); err != nil {
		return err
	}
	if cmd.Node == old.Node {
		return fmt.Errorf("%w: job %q already runs on node %q", ErrInvalid, cmd.ID, cmd.Node)
	}
	if old.Kind == command.JobExport {
		if _, err := d.exportable(old.SnapshotID, cmd.Node); err != nil {
			return err
		}
	}
	n := old.clone()
	n.AssignedFrom, n.Node = old.Node, cmd.Node
	n.AssignedAt = cmd.At.UTC()
	if n.State == command.JobRunning {
		n.State = command.JobPaused
	}
	if n.State == command.JobPaused {
		n.Reason = cmd.Reason
	}
	n.Rate = 0
	n.UpdatedAt = cmd.At.UTC()
	n.UpdatedIndex = c.index
	d.jobs.put(n.ID, &n)
	return nil
}

// Job returns the job with id, or an error wrapping ErrNotFound.
func (s *State) Job(id string) (Job, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	j := s.d.jobs.get(id)
	if j == nil {
		return Job{}, fmt.Errorf("job %q: %w", id, ErrNotFound)
	}
	return j.clone(), nil
}

// JobFilter selects jobs; empty fields match everything.
type JobFilter struct {
	// Kind keeps export or import jobs.
	Kind command.JobKind
	// Node keeps the jobs one node runs.
	Node string
	// SnapshotID keeps the exports of one snapshot.
	SnapshotID string
	// Share keeps the jobs that use one share.
	Share string
	// Active keeps jobs not yet done, failed or cancelled.
	Active bool
}

// Jobs returns the jobs f selects, sorted by id.
func (s *State) Jobs(f JobFilter) []Job {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []Job
	for _, j := range s.d.jobs.sorted() {
		if (f.Kind == "" || j.Kind == f.Kind) && (f.Node == "" || j.Node == f.Node) &&
			(f.SnapshotID == "" || j.SnapshotID == f.SnapshotID) && (f.Share == "" || j.Share == f.Share) &&
			(!f.Active || !j.State.Final()) {
			out = append(out, j.clone())
		}
	}
	return out
}
