package state

import (
	"fmt"
	"time"

	"github.com/twinsnap/twinsnap/cluster/command"
)

// Job is an export or import job.
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
	// Target is where an export writes its package.
	Target string `json:"target,omitempty"`
	// Format is an export's disk format.
	Format command.ExportFormat `json:"format,omitempty"`
	// Source is the package an import reads.
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
}

func (j *Job) clone() Job { return *j }

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
}

func applyExportJobCreated(c *applyCtx, cmd *command.ExportJobCreated) error {
	d := c.d
	if d.jobs.get(cmd.ID) != nil {
		return fmt.Errorf("job %q: %w", cmd.ID, ErrExists)
	}
	if _, err := c.dataNode(cmd.Node); err != nil {
		return err
	}
	sn := d.snapshots.get(cmd.SnapshotID)
	if sn == nil {
		return fmt.Errorf("snapshot %q: %w", cmd.SnapshotID, ErrNotFound)
	}
	if sn.State != Partial && sn.State != Complete {
		return fmt.Errorf("%w: snapshot %q is %s; only partial and complete snapshots are exported", ErrInvalidTransition, sn.ID, sn.State)
	}
	if r, ok := sn.Replica(cmd.Node); !ok || !r.Verified {
		return fmt.Errorf("%w: node %q holds no verified replica of snapshot %q", ErrInvalid, cmd.Node, sn.ID)
	}
	d.jobs.put(cmd.ID, &Job{
		ID: cmd.ID, Kind: command.JobExport, State: command.JobQueued, Node: cmd.Node,
		SnapshotID: cmd.SnapshotID, Target: cmd.Target, Format: cmd.Format,
		Creator: cmd.Creator, CreatedAt: cmd.CreatedAt.UTC(), UpdatedAt: cmd.CreatedAt.UTC(),
		UpdatedIndex: c.index,
	})
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
	d.jobs.put(cmd.ID, &Job{
		ID: cmd.ID, Kind: command.JobImport, State: command.JobQueued, Node: cmd.Node,
		Source: cmd.Source, VMName: cmd.VMName, NewMACs: cmd.NewMACs,
		Creator: cmd.Creator, CreatedAt: cmd.CreatedAt.UTC(), UpdatedAt: cmd.CreatedAt.UTC(),
		UpdatedIndex: c.index,
	})
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
	n := old.clone()
	n.State = cmd.State
	n.Error = cmd.Error
	n.UpdatedAt = cmd.At.UTC()
	n.UpdatedIndex = c.index
	c.d.jobs.put(n.ID, &n)
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
			(f.SnapshotID == "" || j.SnapshotID == f.SnapshotID) && (!f.Active || !j.State.Final()) {
			out = append(out, j.clone())
		}
	}
	return out
}
