package daemon

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/twinsnap/twinsnap/cluster/command"
	"github.com/twinsnap/twinsnap/cluster/state"
	"github.com/twinsnap/twinsnap/export"
	"github.com/twinsnap/twinsnap/internal/api"
)

// newJobID returns a job id.
func newJobID(kind string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return kind + "-" + hex.EncodeToString(b[:])
}

// jobView converts a job for the API.
func (d *Daemon) jobView(j state.Job) api.Job {
	out := api.Job{
		ID: j.ID, Kind: string(j.Kind), State: string(j.State), Reason: j.Reason, Node: j.Node,
		SnapshotID: j.SnapshotID, Share: j.Share, Package: j.Package, Format: string(j.Format), OVA: j.OVA,
		VMName: j.VMName, VMID: j.VMID, BandwidthBytes: j.BandwidthBytes,
		Bytes: j.Bytes, Offset: j.Offset, TotalBytes: j.TotalBytes, Rate: j.Rate, File: j.File,
		Error: j.Error, Creator: j.Creator, CreatedAt: j.CreatedAt, UpdatedAt: j.UpdatedAt,
	}
	if j.Kind == command.JobExport {
		out.Dir = j.Target
	} else {
		out.Path = j.Path
	}
	if j.Window != nil {
		out.Window = j.Window.Spec
		if j.Window.Days != "" {
			out.Window += " " + j.Window.Days
		}
		if j.Window.Location != "" {
			out.Window += " " + j.Window.Location
		}
	}
	return out
}

func (d *Daemon) getJobs(w http.ResponseWriter, r *http.Request) error {
	f := state.JobFilter{}
	if k := r.URL.Query().Get("kind"); k != "" {
		f.Kind = command.JobKind(k)
	}
	want := command.JobState(r.URL.Query().Get("state"))
	out := api.JobList{Jobs: []api.Job{}}
	for _, j := range d.st.Jobs(f) {
		if want == "" || j.State == want {
			out.Jobs = append(out.Jobs, d.jobView(j))
		}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (d *Daemon) getJob(w http.ResponseWriter, r *http.Request) error {
	j, err := d.st.Job(r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, d.jobView(j))
	return nil
}

func (d *Daemon) postJobCancel(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	res, err := d.propose(r.Context(), &command.JobStateChanged{ID: id, State: command.JobCancelled, At: time.Now().UTC()})
	if err != nil {
		return err
	}
	if err := d.waitApplied(r.Context(), res.Index); err != nil {
		return err
	}
	d.log.Info("job cancelled", "job", id, "by", callerOf(r).name)
	return d.getJob(w, r)
}

// parseJobWindow checks a request's window and returns it for the command.
func parseJobWindow(spec, days, loc string) (*command.Window, error) {
	if spec == "" {
		if days != "" || loc != "" {
			return nil, apiError(api.CodeInvalid, "--days and --tz need --window")
		}
		return nil, nil
	}
	if _, err := jobWindow(&command.Window{Spec: spec, Days: days, Location: loc}); err != nil {
		return nil, apiError(api.CodeInvalid, err.Error())
	}
	return &command.Window{Spec: spec, Days: days, Location: loc}, nil
}

// jobWindow parses a job's window; nil means always open.
func jobWindow(w *command.Window) (*export.Window, error) {
	if w == nil {
		return nil, nil
	}
	loc := time.UTC
	if w.Location != "" {
		l, err := time.LoadLocation(w.Location)
		if err != nil {
			return nil, fmt.Errorf("time zone %q: %w", w.Location, err)
		}
		loc = l
	}
	win, err := export.ParseWindow(w.Spec, w.Days, loc)
	if err != nil {
		return nil, err
	}
	return &win, nil
}

// postExport starts an export job for a complete snapshot.
func (d *Daemon) postExport(w http.ResponseWriter, r *http.Request) error {
	var req api.ExportRequest
	if err := readJSON(r, &req); err != nil {
		return err
	}
	sn, err := d.findSnapshot(r.PathValue("id"))
	if err != nil {
		return err
	}
	if sn.State != state.Complete {
		return apiError(api.CodeConflict, fmt.Sprintf("snapshot %s is %s; only a complete snapshot is exported", sn.ID, sn.State))
	}
	if _, err := d.st.Share(req.Share); err != nil {
		return err
	}
	format := command.ExportFormat(orDefault(req.Format, string(command.ExportQCOW2)))
	if !format.Valid() {
		return apiError(api.CodeInvalid, fmt.Sprintf("format %q: qcow2 or vmdk", req.Format))
	}
	dir := strings.Trim(path.Clean("/"+req.Dir), "/")
	var vols []string
	for _, name := range req.Volumes {
		i := slices.IndexFunc(sn.Volumes, func(v state.SnapshotVolume) bool {
			vol, _ := findVolume(sn.Config, v.VolumeID)
			return vol.Name == name || v.VolumeID == name
		})
		if i < 0 {
			return apiError(api.CodeInvalid, fmt.Sprintf("snapshot %s holds no volume %q", sn.ID, name))
		}
		vols = append(vols, sn.Volumes[i].VolumeID)
	}
	if len(vols) > 0 {
		hasBoot := false
		for _, id := range vols {
			if v, ok := findVolume(sn.Config, id); ok && v.Boot {
				hasBoot = true
			}
		}
		if !hasBoot {
			return apiError(api.CodeInvalid, "an export holds the boot volume: add it to --volumes")
		}
	}
	pkg := req.Package
	if pkg == "" {
		pkg = fmt.Sprintf("%s-%s-%s", sn.Config.Name, sn.CapturedAt.UTC().Format("20060102-150405"), sn.ID[:6])
	}
	if err := export.CheckName(pkg); err != nil {
		return apiError(api.CodeInvalid, fmt.Sprintf("package name: %v", err))
	}
	win, err := parseJobWindow(req.Window, req.Days, req.Location)
	if err != nil {
		return err
	}
	node := req.Node
	if node == "" {
		node = sn.Coordinator
		if rep, ok := sn.Replica(node); !ok || !rep.Verified {
			for _, rep := range sn.Replicas {
				if rep.Verified {
					node = rep.Node
				}
			}
		}
	}
	cmd := &command.ExportJobCreated{
		ID: newJobID("export"), SnapshotID: sn.ID, Node: node, Share: req.Share, Target: dir, Package: pkg,
		Format: format, OVA: req.OVA, Volumes: vols, Window: win, BandwidthBytes: req.BandwidthBytes,
		Creator: callerOf(r).name, CreatedAt: time.Now().UTC(),
	}
	if err := cmd.Validate(); err != nil {
		return apiError(api.CodeInvalid, err.Error())
	}
	res, err := d.propose(r.Context(), cmd)
	if err != nil {
		return err
	}
	if err := d.waitApplied(r.Context(), res.Index); err != nil {
		return err
	}
	d.log.Info("export job created", "job", cmd.ID, "snapshot", sn.ID, "share", req.Share, "package", pkg, "node", node, "by", callerOf(r).name)
	j, err := d.st.Job(cmd.ID)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, d.jobView(j))
	return nil
}

// postImport starts an import job.
func (d *Daemon) postImport(w http.ResponseWriter, r *http.Request) error {
	var req api.ImportRequest
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if _, err := d.st.Share(req.Share); err != nil {
		return err
	}
	if _, err := d.findVM(req.Name); err == nil {
		return apiError(api.CodeConflict, fmt.Sprintf("a VM named %q is already registered", req.Name))
	}
	node := req.Node
	if node == "" {
		if d.cfg.Role != command.RoleData {
			return apiError(api.CodeInvalid, "name the data node to import to (--node) when asking the witness")
		}
		node = d.cfg.ID
	}
	win, err := parseJobWindow(req.Window, req.Days, req.Location)
	if err != nil {
		return err
	}
	cmd := &command.ImportJobCreated{
		ID: newJobID("import"), Node: node, Share: req.Share, Path: strings.TrimPrefix(path.Clean("/"+req.Path), "/"),
		VMName: req.Name, NewMACs: !req.KeepMACs, Window: win, BandwidthBytes: req.BandwidthBytes,
		Creator: callerOf(r).name, CreatedAt: time.Now().UTC(),
	}
	if req.Readdress != "" {
		cmd.Readdress = &command.Readdress{Path: req.Readdress, Args: req.ReaddressArgs}
	}
	if err := cmd.Validate(); err != nil {
		return apiError(api.CodeInvalid, err.Error())
	}
	res, err := d.propose(r.Context(), cmd)
	if err != nil {
		return err
	}
	if err := d.waitApplied(r.Context(), res.Index); err != nil {
		return err
	}
	d.log.Info("import job created", "job", cmd.ID, "share", req.Share, "path", cmd.Path, "vm", req.Name, "node", node, "by", callerOf(r).name)
	j, err := d.st.Job(cmd.ID)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, d.jobView(j))
	return nil
}
