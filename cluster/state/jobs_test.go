package state

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/cluster/command"
)

func exportJob(id, snap, node string) *command.ExportJobCreated {
	return &command.ExportJobCreated{
		ID: id, SnapshotID: snap, Node: node, Target: "smb://nas/exports/" + id,
		Format: command.ExportVMDK, Creator: "admin", CreatedAt: t0,
	}
}

func shareAdded(name string) *command.ShareAdded {
	return &command.ShareAdded{
		Name: name, URL: "smb://files.example/" + name, User: "backup", Domain: "EXAMPLE",
		Password: command.Sealed(strings.Repeat("s", 40)), KeyID: "a584ae36", CreatedAt: t0,
	}
}

// exportShareJob is an export to a share with every field of payload
// version 2 set.
func exportShareJob(id, snap, node, share string) *command.ExportJobCreated {
	return &command.ExportJobCreated{
		ID: id, SnapshotID: snap, Node: node, Share: share, Target: "exports/" + id,
		Format: command.ExportQCOW2, Package: "web-" + id, OVA: true, Volumes: []string{"vol-1"},
		Window:         &command.Window{Spec: "22:00-04:00", Days: "mon-fri", Location: "Europe/Berlin"},
		BandwidthBytes: 50 * mib, Creator: "admin", CreatedAt: t0,
	}
}

func importShareJob(id, node, share, vmName string) *command.ImportJobCreated {
	return &command.ImportJobCreated{
		ID: id, Node: node, Share: share, Path: "imports/web/web.ova", VMName: vmName,
		Readdress: &command.Readdress{Path: "/usr/local/sbin/readdress", Args: []string{"--ip", "10.0.0.50/24"}},
		Creator:   "admin", CreatedAt: t0,
	}
}

func progressRate(id string, off, rate int64, file string) *command.JobProgress {
	p := progress(id, off)
	p.Rate, p.File = rate, file
	return p
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

func TestExportJobToShare(t *testing.T) {
	h := newHarness(t)
	h.cluster()
	h.ok(shareAdded("nas"))
	h.completeSnapshot("s1", nil, "vol-1", "vol-2")

	h.refused(exportShareJob("j1", "s1", "node-a", "nope"), ErrNotFound)
	other := exportShareJob("j1", "s1", "node-a", "nas")
	other.Volumes = []string{"vol-1", "vol-9"}
	h.refused(other, ErrInvalid) // not a volume of the snapshot
	bad := exportShareJob("j1", "s1", "node-a", "nas")
	bad.Target = "../up"
	h.refused(bad, ErrInvalid)
	h.refused(exportShareJob("j1", "s1", "w", "nas"), ErrInvalid)
	h.refused(exportShareJob("j1", "s9", "node-a", "nas"), ErrNotFound)

	cmd := exportShareJob("j1", "s1", "node-a", "nas")
	res := h.ok(cmd)
	j, err := h.st.Job("j1")
	if err != nil {
		t.Fatal(err)
	}
	want := Job{
		ID: "j1", Kind: command.JobExport, State: command.JobQueued, Node: "node-a",
		SnapshotID: "s1", Target: "exports/j1", Format: command.ExportQCOW2,
		Creator: "admin", CreatedAt: t0, UpdatedAt: t0, UpdatedIndex: res.Index,
		Share: "nas", Package: "web-j1", OVA: true, Volumes: []string{"vol-1"},
		Window:         &command.Window{Spec: "22:00-04:00", Days: "mon-fri", Location: "Europe/Berlin"},
		BandwidthBytes: 50 * mib,
	}
	if !reflect.DeepEqual(j, want) {
		t.Fatalf("Job(j1) = %+v\nwant %+v", j, want)
	}
	// Queries return copies.
	j.Volumes[0], j.Window.Spec = "x", "x"
	if again, _ := h.st.Job("j1"); again.Volumes[0] != "vol-1" || again.Window.Spec != "22:00-04:00" {
		t.Fatalf("Job returned the state's own slices: %+v", again)
	}
	cmd.Volumes[0], cmd.Window.Location = "y", "y" // nor does the state keep the command's
	if again, _ := h.st.Job("j1"); again.Volumes[0] != "vol-1" || again.Window.Location != "Europe/Berlin" {
		t.Fatalf("state shares memory with the command: %+v", again)
	}

	// A job without a share still takes a URL target (payload version 1).
	h.ok(exportJob("j2", "s1", "node-b"))
	if j, _ := h.st.Job("j2"); j.Share != "" || j.Target != "smb://nas/exports/j2" || j.Volumes != nil {
		t.Fatalf("Job(j2) = %+v", j)
	}
	// A share job may write to the share's top.
	top := exportShareJob("j3", "s1", "node-b", "nas")
	top.Target, top.Volumes, top.Window, top.Package = "", nil, nil, ""
	h.ok(top)
	// An exported snapshot is not deleted.
	h.refused(&command.SnapshotDeleteRequested{ID: "s1", Term: 1, Requester: "admin", At: t0}, ErrInUse)
}

func TestImportJobFromShare(t *testing.T) {
	h := newHarness(t)
	h.cluster()
	h.ok(shareAdded("nas"))
	h.refused(importShareJob("j1", "node-b", "nope", "web copy"), ErrNotFound)
	withSource := importShareJob("j1", "node-b", "nas", "web copy")
	withSource.Source = "file:///srv/x.ovf"
	h.refused(withSource, ErrInvalid)
	taken := importShareJob("j1", "node-b", "nas", "vm vm-1")
	h.refused(taken, ErrExists)

	cmd := importShareJob("j1", "node-b", "nas", "web copy")
	h.ok(cmd)
	j, _ := h.st.Job("j1")
	if j.Kind != command.JobImport || j.Share != "nas" || j.Path != "imports/web/web.ova" || j.Source != "" ||
		!reflect.DeepEqual(j.Readdress, &command.Readdress{Path: "/usr/local/sbin/readdress", Args: []string{"--ip", "10.0.0.50/24"}}) {
		t.Fatalf("Job(j1) = %+v", j)
	}
	cmd.Readdress.Args[0] = "changed"
	j.Readdress.Args[1] = "changed"
	if again, _ := h.st.Job("j1"); again.Readdress.Args[0] != "--ip" || again.Readdress.Args[1] != "10.0.0.50/24" {
		t.Fatalf("readdress arguments shared: %+v", again.Readdress)
	}
	h.ok(jobState("j1", command.JobRunning, ""))
	h.ok(progressRate("j1", gib, 80*mib, "web.ova"))
	j, _ = h.st.Job("j1")
	if j.Rate != 80*mib || j.File != "web.ova" || j.Offset != gib {
		t.Fatalf("after progress: %+v", j)
	}
	h.ok(progress("j1", 2*gib)) // a report of payload version 1 clears rate and file
	if j, _ = h.st.Job("j1"); j.Rate != 0 || j.File != "" || j.Offset != 2*gib {
		t.Fatalf("after a version 1 progress report: %+v", j)
	}
	h.ok(progressRate("j1", 3*gib, 80*mib, "web.ova"))
	h.ok(&command.JobStateChanged{ID: "j1", State: command.JobDone, VMID: "vm-9", At: t0.Add(time.Hour)})
	j, _ = h.st.Job("j1")
	if j.State != command.JobDone || j.VMID != "vm-9" || j.Rate != 0 || j.File != "web.ova" {
		t.Fatalf("finished import = %+v", j)
	}
}

func TestJobStateReasonAndVM(t *testing.T) {
	h := newHarness(t)
	h.cluster()
	h.completeSnapshot("s1", nil, "vol-1")
	h.ok(exportJob("j1", "s1", "node-a"))
	h.ok(jobState("j1", command.JobRunning, ""))
	h.ok(progressRate("j1", gib, 10*mib, "a.ova"))
	reason := "window closed, reopens at 2026-11-23T22:00:00+01:00"
	h.ok(&command.JobStateChanged{ID: "j1", State: command.JobPaused, Reason: reason, At: t0})
	j, _ := h.st.Job("j1")
	if j.State != command.JobPaused || j.Reason != reason || j.Rate != 0 {
		t.Fatalf("paused job = %+v", j)
	}
	h.ok(&command.JobStateChanged{ID: "j1", State: command.JobRunning, Reason: "window open", At: t0})
	if j, _ = h.st.Job("j1"); j.Reason != "window open" {
		t.Fatalf("resumed job = %+v", j)
	}
	h.refused(&command.JobStateChanged{ID: "j1", State: command.JobCancelled, Reason: "no", At: t0}, ErrInvalid)
	h.refused(&command.JobStateChanged{ID: "j1", State: command.JobRunning, VMID: "vm-1", At: t0}, ErrInvalid)
	// Only an import creates a VM.
	h.refused(&command.JobStateChanged{ID: "j1", State: command.JobDone, VMID: "vm-1", At: t0}, ErrInvalid)
	h.ok(jobState("j1", command.JobDone, ""))
	if j, _ = h.st.Job("j1"); j.Reason != "" || j.State != command.JobDone {
		t.Fatalf("done job = %+v", j)
	}
}

func TestJobAssigned(t *testing.T) {
	h := newHarness(t)
	h.cluster()
	h.completeSnapshot("s1", nil, "vol-1")
	h.ok(created("s2", "vm-1", 1, gib, "vol-1"))
	h.ok(captured("s2", 1, gib, "vol-1")) // partial: only node-a holds it
	h.ok(shareAdded("nas"))
	h.ok(exportShareJob("j1", "s1", "node-a", "nas"))
	h.ok(jobState("j1", command.JobRunning, ""))
	h.ok(progressRate("j1", 3*gib, 60*mib, "web-j1.ova"))
	assign := func(id, node string) *command.JobAssigned {
		return &command.JobAssigned{ID: id, Node: node, Reason: "node node-a lost", At: t0.Add(time.Hour)}
	}

	// Refusals.
	h.refused(assign("j9", "node-b"), ErrNotFound)
	h.refused(assign("j1", "node-x"), ErrNotFound)
	h.refused(assign("j1", "w"), ErrInvalid) // a witness runs no jobs
	h.refused(assign("j1", "node-a"), ErrInvalid)
	h.refused(&command.JobAssigned{ID: "j1", Node: "node-b", At: t0}, ErrInvalid) // no reason
	h.ok(exportJob("j2", "s2", "node-a"))
	h.refused(assign("j2", "node-b"), ErrInvalid) // node-b holds no replica of s2

	// A running job is paused on the new node, keeping its offset.
	res := h.ok(assign("j1", "node-b"))
	j, _ := h.st.Job("j1")
	if j.Node != "node-b" || j.State != command.JobPaused || j.Reason != "node node-a lost" ||
		j.Offset != 3*gib || j.Rate != 0 || j.AssignedFrom != "node-a" || !j.AssignedAt.Equal(t0.Add(time.Hour)) ||
		j.UpdatedIndex != res.Index || j.File != "web-j1.ova" {
		t.Fatalf("assigned job = %+v", j)
	}
	if got := h.st.Jobs(JobFilter{Node: "node-a", Active: true}); len(got) != 1 || got[0].ID != "j2" {
		t.Fatalf("node-a's active jobs = %+v", got)
	}
	h.ok(jobState("j1", command.JobRunning, "")) // the new node resumes it
	h.ok(progress("j1", 4*gib))

	// A queued job stays queued; an import moves anywhere.
	h.ok(importShareJob("j3", "node-a", "nas", "imported"))
	h.ok(assign("j3", "node-b"))
	if j, _ := h.st.Job("j3"); j.State != command.JobQueued || j.Node != "node-b" || j.Reason != "" {
		t.Fatalf("assigned queued job = %+v", j)
	}
	// A paused job stays paused, with the new reason.
	h.ok(jobState("j3", command.JobRunning, ""))
	h.ok(&command.JobStateChanged{ID: "j3", State: command.JobPaused, Reason: "operator", At: t0})
	h.ok(assign("j3", "node-a"))
	if j, _ := h.st.Job("j3"); j.State != command.JobPaused || j.Node != "node-a" || j.Reason != "node node-a lost" || j.AssignedFrom != "node-b" {
		t.Fatalf("assigned paused job = %+v", j)
	}

	// A final job does not move.
	h.ok(jobState("j1", command.JobDone, ""))
	h.refused(assign("j1", "node-a"), ErrInvalidTransition)

	// With its jobs moved away, a lost node can be removed.
	h.ok(jobState("j2", command.JobCancelled, ""))
	h.ok(jobState("j3", command.JobCancelled, ""))
	h.ok(&command.VMUpdated{VM: vmSpec("vm-1", "node-b", "vol-1", "vol-2")})
	h.ok(&command.NodeRemoved{ID: "node-a"})
}

// TestJobsOfPayloadVersion1 applies job commands as older nodes wrote them:
// the raw bytes of version 1, which must keep meaning what they meant.
func TestJobsOfPayloadVersion1(t *testing.T) {
	h := newHarness(t)
	h.cluster()
	h.completeSnapshot("s1", nil, "vol-1")
	for _, c := range []command.Command{exportJob("j1", "s1", "node-a"), jobState("j1", command.JobRunning, ""), progress("j1", gib)} {
		b := raw(t, c)
		if b[1] != 1 {
			t.Fatalf("%s written at version %d", c.Type(), b[1])
		}
		h.index++
		if res := h.st.Apply(h.index, h.term, b); res.Err != nil {
			t.Fatal(res.Err)
		}
	}
	j, _ := h.st.Job("j1")
	if j.Share != "" || j.Target != "smb://nas/exports/j1" || j.State != command.JobRunning || j.Offset != gib {
		t.Fatalf("Job(j1) = %+v", j)
	}
	// A version 1 header over version 2 fields is a decoding failure: the
	// state machine stops rather than guess.
	b := raw(t, exportShareJob("j2", "s1", "node-a", "nas"))
	b[1] = 1
	defer func() {
		if _, ok := recover().(*ApplyError); !ok {
			t.Fatal("no *ApplyError panic for version 2 fields under a version 1 header")
		}
	}()
	h.st.Apply(h.index+1, h.term, b)
}
