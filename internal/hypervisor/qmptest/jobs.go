package qmptest

import (
	"fmt"
	"sync"
)

// Job is the state of one simulated job.
type Job struct {
	ID, Type     string
	Status       string
	AutoFinalize bool
	AutoDismiss  bool
	// Error is the job's error once it failed or was cancelled.
	Error string
	// Current and Total are the job's progress.
	Current, Total int64
	// Speed is the rate limit set by block-job-set-speed.
	Speed int64
}

// Jobs simulates QEMU 7.2's job state machine on a Server: the statuses
// a job goes through, the JOB_STATUS_CHANGE and BLOCK_JOB_* events QEMU
// emits (in QEMU's order), and query-jobs, job-finalize, job-dismiss,
// job-cancel, block-job-cancel and block-job-set-speed. Tests start jobs from their own
// handlers (a transaction, say) and end them with Complete or Fail.
type Jobs struct {
	s    *Server
	mu   sync.Mutex // also orders the events of concurrent transitions
	jobs map[string]*Job
	ids  []string
}

// NewJobs installs the job commands on s (creating s.Commands if needed);
// call it before the first connection.
func NewJobs(s *Server) *Jobs {
	j := &Jobs{s: s, jobs: map[string]*Job{}}
	if s.Commands == nil {
		s.Commands = map[string]Handler{}
	}
	s.Commands["query-jobs"] = j.queryJobs
	s.Commands["job-finalize"] = j.verb("finalize", "pending", func(job *Job) { j.finalize(job) })
	s.Commands["job-dismiss"] = j.verb("dismiss", "concluded", func(job *Job) { j.dismiss(job) })
	s.Commands["job-cancel"] = j.verb("cancel", "", func(job *Job) { j.abort(job, "Operation canceled", true) })
	s.Commands["block-job-set-speed"] = j.setSpeed
	s.Commands["block-job-cancel"] = j.blockJobCancel
	return j
}

// Start creates a running backup job and emits its created and running
// events. It fails as QEMU does when the id is in use.
func (j *Jobs) Start(id string, total int64, autoFinalize, autoDismiss bool) *Error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if _, ok := j.jobs[id]; ok {
		return &Error{Class: "GenericError", Desc: fmt.Sprintf("Job ID '%s' already in use", id)}
	}
	job := &Job{ID: id, Type: "backup", AutoFinalize: autoFinalize, AutoDismiss: autoDismiss, Total: total}
	j.jobs[id] = job
	j.ids = append(j.ids, id)
	j.set(job, "created")
	j.set(job, "running")
	return nil
}

// Complete ends a running job successfully: waiting, pending, and then,
// as its auto settings say, finalized and dismissed.
func (j *Jobs) Complete(id string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	job, ok := j.jobs[id]
	if !ok || job.Status != "running" {
		return
	}
	job.Current = job.Total
	j.set(job, "waiting")
	j.set(job, "pending")
	if job.AutoFinalize {
		j.finalize(job)
	}
}

// Fail ends a running job with an error, as an I/O error would.
func (j *Jobs) Fail(id, msg string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if job, ok := j.jobs[id]; ok && job.Status == "running" {
		j.abort(job, msg, false)
	}
}

// Get returns a copy of a job's state.
func (j *Jobs) Get(id string) (Job, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	job, ok := j.jobs[id]
	if !ok {
		return Job{}, false
	}
	return *job, true
}

// set changes a job's status and emits JOB_STATUS_CHANGE.
func (j *Jobs) set(job *Job, status string) {
	job.Status = status
	j.s.Emit("JOB_STATUS_CHANGE", map[string]any{"id": job.ID, "status": status})
}

// finalize emits the completion event and concludes the job.
func (j *Jobs) finalize(job *Job) {
	data := map[string]any{"device": job.ID, "len": job.Total, "offset": job.Current, "speed": job.Speed, "type": job.Type}
	if job.Error != "" {
		data["error"] = job.Error
	}
	j.s.Emit("BLOCK_JOB_COMPLETED", data)
	j.conclude(job)
}

// abort fails or cancels a job: aborting, the completion or cancellation
// event, concluded.
func (j *Jobs) abort(job *Job, msg string, cancelled bool) {
	job.Error = msg
	j.set(job, "aborting")
	if cancelled {
		j.s.Emit("BLOCK_JOB_CANCELLED", map[string]any{"device": job.ID, "len": job.Total, "offset": job.Current, "speed": job.Speed, "type": job.Type})
		j.conclude(job)
		return
	}
	j.finalize(job)
}

func (j *Jobs) conclude(job *Job) {
	j.set(job, "concluded")
	if job.AutoDismiss {
		j.dismiss(job)
	}
}

func (j *Jobs) dismiss(job *Job) {
	j.set(job, "null")
	delete(j.jobs, job.ID)
	for i, id := range j.ids {
		if id == job.ID {
			j.ids = append(j.ids[:i], j.ids[i+1:]...)
			break
		}
	}
}

func (j *Jobs) queryJobs(*Call) Reply {
	j.mu.Lock()
	defer j.mu.Unlock()
	out := []map[string]any{}
	for _, id := range j.ids {
		job := j.jobs[id]
		info := map[string]any{"id": job.ID, "type": job.Type, "status": job.Status, "current-progress": job.Current, "total-progress": job.Total}
		if job.Error != "" && job.Status == "concluded" {
			info["error"] = job.Error
		}
		out = append(out, info)
	}
	return Reply{Return: out}
}

// verb returns the handler of a job-* command that needs the job in state
// want ("" for any state before concluded).
func (j *Jobs) verb(name, want string, do func(*Job)) Handler {
	return func(c *Call) Reply {
		var args struct {
			ID string `json:"id"`
		}
		if err := c.Decode(&args); err != nil {
			return Reply{Error: &Error{Class: "GenericError", Desc: err.Error()}}
		}
		j.mu.Lock()
		defer j.mu.Unlock()
		job, ok := j.jobs[args.ID]
		if !ok {
			return Reply{Error: &Error{Class: "GenericError", Desc: "Job not found"}}
		}
		okState := job.Status == want
		if want == "" {
			okState = job.Status != "concluded" && job.Status != "aborting" && job.Status != "null"
		}
		if !okState {
			return Reply{Error: &Error{Class: "GenericError", Desc: fmt.Sprintf("Job '%s' in state '%s' cannot accept command verb '%s'", job.ID, job.Status, name)}}
		}
		do(job)
		return Reply{}
	}
}

func (j *Jobs) setSpeed(c *Call) Reply {
	var args struct {
		Device string `json:"device"`
		Speed  int64  `json:"speed"`
	}
	if err := c.Decode(&args); err != nil {
		return Reply{Error: &Error{Class: "GenericError", Desc: err.Error()}}
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	job, ok := j.jobs[args.Device]
	if !ok {
		return Reply{Error: &Error{Class: "DeviceNotActive", Desc: fmt.Sprintf("Block job '%s' not found", args.Device)}}
	}
	if args.Speed < 0 {
		return Reply{Error: &Error{Class: "GenericError", Desc: "Parameter 'speed' expects a non-negative value"}}
	}
	job.Speed = args.Speed
	return Reply{}
}

func (j *Jobs) blockJobCancel(c *Call) Reply {
	var args struct {
		Device string `json:"device"`
	}
	if err := c.Decode(&args); err != nil {
		return Reply{Error: &Error{Class: "GenericError", Desc: err.Error()}}
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	job, ok := j.jobs[args.Device]
	if !ok {
		return Reply{Error: &Error{Class: "DeviceNotActive", Desc: fmt.Sprintf("Block job '%s' not found", args.Device)}}
	}
	if job.Status == "concluded" || job.Status == "aborting" {
		return Reply{Error: &Error{Class: "GenericError", Desc: fmt.Sprintf("Job '%s' in state '%s' cannot accept command verb 'cancel'", job.ID, job.Status)}}
	}
	j.abort(job, "Operation canceled", true)
	return Reply{}
}
