package daemon

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/twinsnap/twinsnap/cluster/command"
	"github.com/twinsnap/twinsnap/cluster/state"
	"github.com/twinsnap/twinsnap/internal/api"
	"github.com/twinsnap/twinsnap/snapshot"
)

// snapshotView converts a snapshot of the state for the API.
func (d *Daemon) snapshotView(sn state.Snapshot) api.Snapshot {
	out := api.Snapshot{
		ID: sn.ID, VMID: sn.VMID, VMName: sn.Config.Name, Name: sn.Name, Description: sn.Description, Creator: sn.Creator,
		State: string(sn.State), Desired: sn.Desired, Required: sn.Required, Achieved: sn.Achieved, StepDownReason: sn.StepDownReason,
		Coordinator: sn.Coordinator, Term: sn.Term, CreatedAt: sn.CreatedAt, CapturedAt: sn.CapturedAt, CompletedAt: sn.CompletedAt,
		Reclaim: sn.Reclaim,
	}
	if vm, err := d.st.VM(sn.VMID); err == nil {
		out.VMName = vm.Name
	}
	for _, v := range sn.Volumes {
		av := api.SnapshotVolume{
			VolumeID: v.VolumeID, ParentID: v.ParentID, FullReason: v.FullReason, EstimatedBytes: v.EstimatedBytes,
			SizeBytes: v.SizeBytes, StoredBytes: v.StoredBytes, SHA256: v.SHA256,
		}
		if vol, ok := findVolume(sn.Config, v.VolumeID); ok {
			av.Name, av.Boot = vol.Name, vol.Boot
		}
		out.StoredBytes += v.StoredBytes
		out.Volumes = append(out.Volumes, av)
	}
	for _, r := range sn.Replicas {
		out.Replicas = append(out.Replicas, api.SnapshotReplica{Node: r.Node, Verified: r.Verified, At: r.At, Volumes: r.Volumes, UEFIVars: r.UEFIVars})
	}
	if sn.Captured != nil {
		out.ConfigKind, out.UEFIVars = sn.Captured.Kind, sn.Captured.UEFIVars
	}
	if sn.Discard != nil {
		out.Discard = &api.SnapshotDiscard{By: sn.Discard.By, Reason: sn.Discard.Reason, At: sn.Discard.At}
	}
	return out
}

// findSnapshot returns a snapshot by id.
func (d *Daemon) findSnapshot(id string) (state.Snapshot, error) {
	return d.st.Snapshot(id)
}

func (d *Daemon) getSnapshots(w http.ResponseWriter, r *http.Request) error {
	f := state.SnapshotFilter{}
	if name := r.URL.Query().Get("vm"); name != "" {
		vm, err := d.findVM(name)
		if err != nil {
			return err
		}
		f.VMID = vm.ID
	}
	if s := r.URL.Query().Get("state"); s != "" {
		f.States = []state.SnapshotState{state.SnapshotState(s)}
	}
	out := api.SnapshotList{Snapshots: []api.Snapshot{}}
	for _, sn := range d.st.Snapshots(f) {
		out.Snapshots = append(out.Snapshots, d.snapshotView(sn))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (d *Daemon) getSnapshot(w http.ResponseWriter, r *http.Request) error {
	sn, err := d.findSnapshot(r.PathValue("id"))
	if err != nil {
		return err
	}
	out := d.snapshotView(sn)
	out.Progress = d.snapshotProgress(r.Context(), sn)
	writeJSON(w, http.StatusOK, out)
	return nil
}

// snapshotProgress asks the coordinator what it is doing for a snapshot
// (briefly: the answer is a courtesy, the state is the truth).
func (d *Daemon) snapshotProgress(ctx context.Context, sn state.Snapshot) *api.SnapshotProgress {
	if sn.Coordinator == d.cfg.ID {
		return d.localProgress(sn.ID)
	}
	c, err := d.hostClient(sn.Coordinator)
	if err != nil {
		return nil
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	p, err := c.SnapshotProgress(ctx, sn.ID)
	if err != nil {
		return nil
	}
	return p
}

func (d *Daemon) localProgress(id string) *api.SnapshotProgress {
	if d.engine == nil {
		return nil
	}
	p, ok := d.engine.Progress(id)
	if !ok {
		return nil
	}
	return &api.SnapshotProgress{Phase: p.Phase, Node: d.cfg.ID, BytesDone: p.BytesDone, BytesTotal: p.BytesTotal, Detail: p.Detail, UpdatedAt: p.UpdatedAt}
}

func (d *Daemon) getSnapshotProgress(w http.ResponseWriter, r *http.Request) error {
	p := d.localProgress(r.PathValue("id"))
	if p == nil {
		return apiError(api.CodeNotFound, "no progress for this snapshot on "+d.cfg.ID)
	}
	writeJSON(w, http.StatusOK, p)
	return nil
}

func (d *Daemon) getSnapshotConfig(w http.ResponseWriter, r *http.Request) error {
	sn, err := d.findSnapshot(r.PathValue("id"))
	if err != nil {
		return err
	}
	if sn.Captured == nil {
		return apiError(api.CodeNotFound, fmt.Sprintf("snapshot %s holds no VM configuration (state %s)", sn.ID, sn.State))
	}
	writeJSON(w, http.StatusOK, api.SnapshotConfig{Kind: sn.Captured.Kind, Text: sn.Captured.Text})
	return nil
}

// postSnapshot starts a snapshot. The VM's host plans it and proposes it;
// the engine then captures it in the background.
func (d *Daemon) postSnapshot(w http.ResponseWriter, r *http.Request) error {
	var req api.SnapshotCreateRequest
	if err := readJSON(r, &req); err != nil {
		return err
	}
	vm, err := d.findVM(req.VM)
	if err != nil {
		return err
	}
	if vm.HostNode != d.cfg.ID {
		c, err := d.hostClient(vm.HostNode)
		if err != nil {
			return err
		}
		defer c.Close()
		sn, err := c.CreateSnapshot(r.Context(), req)
		if err != nil {
			return err
		}
		if err := d.waitFor(r.Context(), func() bool { _, err := d.st.Snapshot(sn.ID); return err == nil }); err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, sn)
		return nil
	}
	if d.engine == nil {
		return apiError(api.CodeInvalid, errNoEngine.Error())
	}
	if !d.st.Settings().SnapshotsEnabled {
		return apiError(api.CodeDisabled, "snapshots are disabled cluster-wide (twinsnap settings snapshots enable)")
	}
	ids, err := selectedVolumeIDs(vm.VM, req.Volumes, req.NoData)
	if err != nil {
		return err
	}
	desire := command.Consistency(orDefault(req.Desire, string(command.ConsistencyApplication)))
	require := command.Consistency(orDefault(req.Require, string(command.ConsistencyCrash)))
	if !desire.Valid() || !require.Valid() || require.Rank() > desire.Rank() {
		return apiError(api.CodeInvalid, fmt.Sprintf("consistency: desire %q, require %q: each is application or crash, and require is not above desire", desire, require))
	}
	cmd, err := d.engine.Plan(r.Context(), snapshot.PlanRequest{
		VM: vm.VM, Name: req.Name, Description: req.Description, Creator: callerOf(r).name,
		VolumeIDs: ids, Desired: desire, Required: require, Full: req.Full, Term: d.node.Status().Term,
	})
	if err != nil {
		return apiError(api.CodeUnavailable, "planning the snapshot: "+err.Error())
	}
	res, err := d.propose(r.Context(), cmd)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.Context(), writeTimeout)
	defer cancel()
	if err := d.waitApplied(ctx, res.Index); err != nil {
		return err
	}
	d.engine.Nudge()
	sn, err := d.st.Snapshot(cmd.ID)
	if err != nil {
		return err
	}
	d.log.Info("snapshot started", "snapshot", sn.ID, "vm", vm.Name, "volumes", len(sn.Volumes), "by", callerOf(r).name)
	writeJSON(w, http.StatusOK, d.snapshotView(sn))
	return nil
}

// selectedVolumeIDs resolves a snapshot's volume selection: names or ids,
// all volumes when none are named, the boot volume alone with noData; the
// boot volume is always part of it.
func selectedVolumeIDs(vm command.VM, names []string, noData bool) ([]string, error) {
	if noData && len(names) > 0 {
		return nil, apiError(api.CodeInvalid, "--volumes and --no-data exclude each other")
	}
	var ids []string
	for _, v := range vm.Volumes {
		if v.Boot || (!noData && len(names) == 0) {
			ids = append(ids, v.ID)
		}
	}
	for _, n := range names {
		i := slices.IndexFunc(vm.Volumes, func(v command.Volume) bool { return v.Name == n || v.ID == n || (v.Serial != "" && v.Serial == n) })
		if i < 0 {
			return nil, apiError(api.CodeInvalid, fmt.Sprintf("VM %s has no volume %q", vm.Name, n))
		}
		if !slices.Contains(ids, vm.Volumes[i].ID) {
			ids = append(ids, vm.Volumes[i].ID)
		}
	}
	return ids, nil
}

func (d *Daemon) deleteSnapshot(w http.ResponseWriter, r *http.Request) error {
	sn, err := d.findSnapshot(r.PathValue("id"))
	if err != nil {
		return err
	}
	res, err := d.propose(r.Context(), &command.SnapshotDeleteRequested{
		ID: sn.ID, Term: max(d.node.Status().Term, sn.Term), Requester: callerOf(r).name, At: time.Now().UTC(),
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.Context(), writeTimeout)
	defer cancel()
	if err := d.waitApplied(ctx, res.Index); err != nil {
		return err
	}
	d.log.Info("snapshot deletion requested", "snapshot", sn.ID, "by", callerOf(r).name)
	out := d.snapshotView(sn)
	if now, err := d.st.Snapshot(sn.ID); err == nil {
		out = d.snapshotView(now)
	} else {
		out.State, out.Reclaim = string(state.Deleting), nil
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}
