package daemon

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	"github.com/twinsnap/twinsnap/cluster/command"
	"github.com/twinsnap/twinsnap/cluster/state"
	"github.com/twinsnap/twinsnap/internal/api"
)

// defaultContainerPercent sizes a new volume container: three times the
// volume, leaving twice its size for snapshot data.
const defaultContainerPercent = 300

// createContainers sets aside a container for each of a VM's volumes on
// every data node. Containers that exist already are left as they are.
func (d *Daemon) createContainers(ctx context.Context, vm command.VM, percent int) error {
	if percent == 0 {
		percent = defaultContainerPercent
	}
	if percent < 100 || percent > 100000 {
		return apiError(api.CodeInvalid, fmt.Sprintf("container percent %d: at least 100 (the volume itself), at most 100000", percent))
	}
	var last uint64
	defer func() {
		if last > 0 {
			_ = d.waitApplied(ctx, last) // read-your-writes for the caller's next request
		}
	}()
	for _, n := range d.st.Nodes() {
		if n.Role != command.RoleData {
			continue
		}
		for _, v := range vm.Volumes {
			if _, err := d.st.Container(v.ID, n.ID); err == nil {
				continue
			}
			capacity := v.SizeBytes / 100 * int64(percent)
			if capacity < v.SizeBytes {
				capacity = v.SizeBytes
			}
			res, err := d.propose(ctx, &command.ContainerCreated{VolumeID: v.ID, Node: n.ID, CapacityBytes: capacity})
			if err != nil {
				return fmt.Errorf("container of volume %s on %s: %w", v.Name, n.ID, err)
			}
			last = res.Index
		}
	}
	return nil
}

// containerView converts a container for the API.
func (d *Daemon) containerView(ct state.Container) api.VolumeContainer {
	out := api.VolumeContainer{
		VolumeID: ct.VolumeID, VMID: ct.VMID, Node: ct.Node, CapacityBytes: ct.CapacityBytes,
		ReservedBytes: ct.ReservedBytes, UsedBytes: ct.UsedBytes, FreeBytes: ct.FreeBytes(),
	}
	if vm, err := d.st.VM(ct.VMID); err == nil {
		out.VM = vm.Name
		if v, ok := findVolume(vm.VM, ct.VolumeID); ok {
			out.Volume = v.Name
		}
	}
	return out
}

func (d *Daemon) getContainers(w http.ResponseWriter, r *http.Request) error {
	f := state.ContainerFilter{Node: r.URL.Query().Get("node")}
	if name := r.URL.Query().Get("vm"); name != "" {
		vm, err := d.findVM(name)
		if err != nil {
			return err
		}
		f.VMID = vm.ID
	}
	out := api.VolumeContainerList{Containers: []api.VolumeContainer{}}
	for _, ct := range d.st.Containers(f) {
		out.Containers = append(out.Containers, d.containerView(ct))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// findVolumeID resolves a volume by id, by "VM/volume", or by a name
// unique across VMs.
func (d *Daemon) findVolumeID(ref string) (string, error) {
	if vmName, volName, ok := strings.Cut(ref, "/"); ok {
		vm, err := d.findVM(vmName)
		if err != nil {
			return "", err
		}
		for _, v := range vm.Volumes {
			if v.Name == volName || v.ID == volName {
				return v.ID, nil
			}
		}
		return "", apiError(api.CodeNotFound, fmt.Sprintf("VM %s has no volume %q", vm.Name, volName))
	}
	var found []string
	for _, vm := range d.st.VMs() {
		for _, v := range vm.Volumes {
			if v.ID == ref {
				return v.ID, nil
			}
			if v.Name == ref {
				found = append(found, v.ID)
			}
		}
	}
	switch len(found) {
	case 0:
		return "", apiError(api.CodeNotFound, fmt.Sprintf("no volume %q (name it by id or as VM/volume)", ref))
	case 1:
		return found[0], nil
	}
	return "", apiError(api.CodeInvalid, fmt.Sprintf("%d VMs have a volume named %q: name it as VM/volume or by id", len(found), ref))
}

func (d *Daemon) postContainerExpand(w http.ResponseWriter, r *http.Request) error {
	var req api.ContainerExpandRequest
	if err := readJSON(r, &req); err != nil {
		return err
	}
	id, err := d.findVolumeID(r.PathValue("volume"))
	if err != nil {
		return err
	}
	cts := d.st.Containers(state.ContainerFilter{VolumeID: id, Node: req.Node})
	if len(cts) == 0 {
		return apiError(api.CodeNotFound, fmt.Sprintf("volume %s has no container%s", id, map[bool]string{true: " on " + req.Node}[req.Node != ""]))
	}
	var last uint64
	for _, ct := range cts {
		if ct.CapacityBytes == req.CapacityBytes {
			continue
		}
		res, err := d.propose(r.Context(), &command.ContainerExpanded{VolumeID: id, Node: ct.Node, CapacityBytes: req.CapacityBytes})
		if err != nil {
			return err
		}
		last = res.Index
	}
	ctx, cancel := context.WithTimeout(r.Context(), writeTimeout)
	defer cancel()
	if err := d.waitApplied(ctx, last); err != nil {
		return err
	}
	d.log.Info("volume container expanded", "volume", id, "capacity", req.CapacityBytes, "by", callerOf(r).name)
	out := api.VolumeContainerList{}
	for _, ct := range d.st.Containers(state.ContainerFilter{VolumeID: id}) {
		out.Containers = append(out.Containers, d.containerView(ct))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}
