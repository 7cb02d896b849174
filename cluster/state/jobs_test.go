package state

import (
	"testing"

	"github.com/twinsnap/twinsnap/cluster/command"
)

func exportJob(id, snap, node string) *command.ExportJobCreated {
	return &command.ExportJobCreated{
		ID: id, SnapshotID: snap, Node: node, Target: "smb://nas/exports/" + id,
		Format: command.ExportVMDK, Creator: "admin", CreatedAt: t0,
	}
}

func progress(id string, off int64) *command.JobProgress {
	return &command.JobProgress{ID: id, Offset: off, Bytes: off, TotalBytes: 10 * gib, At: t0}
}

func jobState(id string, s command.JobState, msg string) *command.JobStateChanged {
	return &command.JobStateChanged{ID: id, State: s, Error: msg, At: t0}
}

func TestExportJob(t *testing.T) {
	h := newHarness(t)
	h.cluster()
	h.ok(created("s1", "vm-1", 1, gib, "vol-1"))
	h.refused(exportJob("j1", "s1", "node-a"), ErrInvalidTransition) // creating
	h.ok(captured("s1", 1, gib, "vol-1"))
	h.refused(exportJob("j1", "s1", "node-b"), ErrInvalid) // no verified replica there
	h.refused(exportJob("j1", "s9", "node-a"), ErrNotFound)
	h.refused(exportJob("j1", "s1", "w"), ErrInvalid)
	bad := exportJob("j1", "s1", "node-a")
	bad.Target = "smb://user:secret@nas/exports"
	h.refused(bad, ErrInvalid)

	h.ok(exportJob("j1", "s1", "node-a")) // partial, from the node holding it
	h.refused(exportJob("j1", "s1", "node-a"), ErrExists)
	j, err := h.st.Job("j1")
	if err != nil || j.Kind != command.JobExport || j.State != command.JobQueued || j.SnapshotID != "s1" || j.Format != command.ExportVMDK {
		t.Fatalf("Job(j1) = %+v, %v", j, err)
	}
	h.refused(progress("j1", gib), ErrInvalidTransition) // queued
	h.refused(jobState("j1", command.JobDone, ""), ErrInvalidTransition)
	h.ok(jobState("j1", command.JobRunning, ""))
	h.ok(progress("j1", gib))
	h.ok(jobState("j1", command.JobPaused, "")) // maintenance window over
	h.ok(progress("j1", 2*gib))                 // the last flush before pausing
	h.ok(jobState("j1", command.JobRunning, ""))
	h.ok(progress("j1", 10*gib))
	h.ok(jobState("j1", command.JobDone, ""))
	j, _ = h.st.Job("j1")
	if j.State != command.JobDone || j.Offset != 10*gib || j.Bytes != 10*gib || j.TotalBytes != 10*gib {
		t.Fatalf("finished job = %+v", j)
	}
	h.refused(jobState("j1", command.JobRunning, ""), ErrInvalidTransition) // final
	h.refused(progress("j1", gib), ErrInvalidTransition)
	h.refused(progress("j9", gib), ErrNotFound)
	h.refused(jobState("j9", command.JobRunning, ""), ErrNotFound)
	h.refused(jobState("j1", command.JobFailed, ""), ErrInvalid) // failed needs an error
	h.refused(&command.JobProgress{ID: "j1", Offset: -1, At: t0}, ErrInvalid)
}

func TestImportJob(t *testing.T) {
	h := newHarness(t)
	h.cluster()
	imp := &command.ImportJobCreated{
		ID: "j2", Node: "node-b", Source: "smb://nas/imports/web/web.ovf", VMName: "web copy",
		NewMACs: true, Creator: "admin", CreatedAt: t0,
	}
	h.ok(imp)
	j, err := h.st.Job("j2")
	if err != nil || j.Kind != command.JobImport || j.VMName != "web copy" || !j.NewMACs || j.Node != "node-b" {
		t.Fatalf("Job(j2) = %+v, %v", j, err)
	}
	taken := *imp
	taken.ID, taken.VMName = "j3", "vm vm-1"
	h.refused(&taken, ErrExists)
	noNode := *imp
	noNode.ID, noNode.Node = "j3", "node-x"
	h.refused(&noNode, ErrNotFound)
	h.refused(imp, ErrExists)
	h.ok(jobState("j2", command.JobRunning, ""))
	h.ok(jobState("j2", command.JobFailed, "manifest: SHA256 mismatch for disk1.vmdk"))
	j, _ = h.st.Job("j2")
	if j.State != command.JobFailed || j.Error == "" {
		t.Fatalf("failed job = %+v", j)
	}

	h.ok(&command.ImportJobCreated{ID: "j4", Node: "node-a", Source: "file:///srv/x.ovf", VMName: "x", Creator: "admin", CreatedAt: t0})
	h.ok(jobState("j4", command.JobCancelled, ""))
	if got := ids(h.st.Jobs(JobFilter{Kind: command.JobImport}), func(j Job) string { return j.ID }); got != "[j2 j4]" {
		t.Fatalf("import jobs = %s", got)
	}
	if got := h.st.Jobs(JobFilter{Active: true}); len(got) != 0 {
		t.Fatalf("active jobs = %+v", got)
	}
	if got := h.st.Jobs(JobFilter{Node: "node-a"}); len(got) != 1 || got[0].ID != "j4" {
		t.Fatalf("node-a's jobs = %+v", got)
	}
	if _, err := h.st.Job("nope"); !errorsIs(err, ErrNotFound) {
		t.Fatalf("Job(nope) err = %v", err)
	}
}

func TestNodeRemovedRefusedWithActiveJob(t *testing.T) {
	h := newHarness(t)
	h.cluster()
	h.ok(&command.ImportJobCreated{ID: "j1", Node: "node-b", Source: "file:///srv/x.ovf", VMName: "x", Creator: "admin", CreatedAt: t0})
	h.refused(&command.NodeRemoved{ID: "node-b"}, ErrInUse)
	h.ok(jobState("j1", command.JobCancelled, ""))
	h.ok(&command.NodeRemoved{ID: "node-b"})
}
