package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/twinsnap/twinsnap/cluster/command"
	"github.com/twinsnap/twinsnap/cluster/state"
	"github.com/twinsnap/twinsnap/guestagent"
	"github.com/twinsnap/twinsnap/internal/api"
	"github.com/twinsnap/twinsnap/internal/hypervisor"
)

// Defaults for VMs.
const (
	defaultFreezeTimeout = 10 * time.Second
	// defaultLibvirtSocket is libvirtd's system socket.
	defaultLibvirtSocket = "/var/run/libvirt/libvirt-sock"
	// openTimeout bounds connecting to a VM's monitor and agent.
	openTimeout = 15 * time.Second
)

// openMachine connects to a VM's QEMU monitor and guest agent through its
// driver.
func openMachine(ctx context.Context, vm command.VM) (hypervisor.Machine, error) {
	ctx, cancel := context.WithTimeout(ctx, openTimeout)
	defer cancel()
	switch vm.Driver {
	case command.DriverQEMU:
		return hypervisor.OpenQEMU(ctx, vm.Name, vm.QEMU.QMPSocket, vm.QEMU.AgentSocket)
	case command.DriverLibvirt:
		sock, err := libvirtSocket(vm.Libvirt.URI)
		if err != nil {
			return nil, err
		}
		return hypervisor.OpenLibvirt(ctx, sock, vm.Libvirt.Domain)
	}
	return nil, fmt.Errorf("%w: driver %q", state.ErrInvalid, vm.Driver)
}

// libvirtSocket returns the Unix socket a qemu:///system URI names: its
// socket parameter, or libvirtd's default.
func libvirtSocket(uri string) (string, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return "", fmt.Errorf("%w: libvirt URI %q: %w", state.ErrInvalid, uri, err)
	}
	if u.Host != "" {
		return "", fmt.Errorf("%w: libvirt URI %q names a remote host; twinsnap reaches VMs on their own host node", state.ErrInvalid, uri)
	}
	if s := u.Query().Get("socket"); s != "" {
		return s, nil
	}
	return defaultLibvirtSocket, nil
}

// findVM returns a VM by id or name.
func (d *Daemon) findVM(idOrName string) (state.VM, error) {
	if vm, err := d.st.VM(idOrName); err == nil {
		return vm, nil
	}
	for _, vm := range d.st.VMs() {
		if vm.Name == idOrName {
			return vm, nil
		}
	}
	return state.VM{}, apiError(api.CodeNotFound, fmt.Sprintf("no VM %q (see twinsnap vm list)", idOrName))
}

func (d *Daemon) getVMs(w http.ResponseWriter, _ *http.Request) error {
	out := api.VMList{VMs: []api.VM{}}
	for _, vm := range d.st.VMs() {
		out.VMs = append(out.VMs, api.VM{VM: vm.VM})
	}
	sort.Slice(out.VMs, func(i, j int) bool { return out.VMs[i].Name < out.VMs[j].Name })
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (d *Daemon) getVM(w http.ResponseWriter, r *http.Request) error {
	vm, err := d.findVM(r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, api.VM{VM: vm.VM})
	return nil
}

func (d *Daemon) deleteVM(w http.ResponseWriter, r *http.Request) error {
	vm, err := d.findVM(r.PathValue("id"))
	if err != nil {
		return err
	}
	if _, err := d.propose(r.Context(), &command.VMRemoved{ID: vm.ID}); err != nil {
		return err
	}
	d.log.Info("unregistered a VM", "vm", vm.Name, "by", callerOf(r).name)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// hostClient returns an API client for a data node, to forward a
// host-local request to it.
func (d *Daemon) hostClient(node string) (*api.Client, error) {
	n, err := d.st.Node(node)
	if err != nil {
		return nil, apiError(api.CodeNotFound, fmt.Sprintf("host node %q is not a member", node))
	}
	if n.Role != command.RoleData {
		return nil, apiError(api.CodeInvalid, fmt.Sprintf("node %q is a %s, not a data node", node, n.Role))
	}
	return api.NewClientTLS([]string{n.APIAddress}, d.peerTLS), nil
}

// postVM registers a VM. The host node inspects the VM's disks through
// QMP, so a request arriving elsewhere is forwarded there.
func (d *Daemon) postVM(w http.ResponseWriter, r *http.Request) error {
	var req api.VMRegisterRequest
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if req.ContainerPercent != 0 && (req.ContainerPercent < 100 || req.ContainerPercent > 100000) {
		return apiError(api.CodeInvalid, fmt.Sprintf("container percent %d: at least 100 (the volume itself), at most 100000", req.ContainerPercent))
	}
	if req.HostNode == "" {
		if d.cfg.Role != command.RoleData {
			return apiError(api.CodeInvalid, "host_node is required when registering through the witness")
		}
		req.HostNode = d.cfg.ID
	}
	if req.HostNode != d.cfg.ID {
		c, err := d.hostClient(req.HostNode)
		if err != nil {
			return err
		}
		defer c.Close()
		vm, err := c.RegisterVM(r.Context(), req)
		if err != nil {
			return err
		}
		// Read-your-writes through this node: reply once it has the VM too.
		if err := d.waitFor(r.Context(), func() bool { _, err := d.st.VM(vm.ID); return err == nil }); err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, vm)
		return nil
	}
	vm, err := d.inspectVM(r.Context(), req)
	if err != nil {
		return err
	}
	res, err := d.propose(r.Context(), &command.VMRegistered{VM: vm})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.Context(), writeTimeout)
	defer cancel()
	if err := d.waitApplied(ctx, res.Index); err != nil {
		return err
	}
	if err := d.createContainers(ctx, vm, req.ContainerPercent); err != nil {
		return err
	}
	d.log.Info("registered a VM", "vm", vm.Name, "id", vm.ID, "volumes", len(vm.Volumes), "by", callerOf(r).name)
	writeJSON(w, http.StatusOK, api.VM{VM: vm})
	return nil
}

// inspectVM builds a VM record from what QEMU reports of its disks.
func (d *Daemon) inspectVM(ctx context.Context, req api.VMRegisterRequest) (command.VM, error) {
	vm := command.VM{
		Name:          req.Name,
		HostNode:      d.cfg.ID,
		Driver:        req.Driver,
		QEMU:          req.QEMU,
		Libvirt:       req.Libvirt,
		FreezeEnabled: req.FreezeEnabled == nil || *req.FreezeEnabled,
		FreezeTimeout: time.Duration(req.FreezeTimeoutMS) * time.Millisecond,
	}
	if vm.FreezeTimeout == 0 {
		vm.FreezeTimeout = defaultFreezeTimeout
	}
	if vm.Driver == command.DriverLibvirt && vm.Libvirt != nil && vm.Libvirt.URI == "" {
		vm.Libvirt.URI = "qemu:///system"
	}
	for _, existing := range d.st.VMs() {
		if existing.Name == req.Name {
			return vm, apiError(api.CodeConflict, fmt.Sprintf("a VM named %q is already registered", req.Name))
		}
	}
	m, err := openMachine(ctx, vm)
	if err != nil {
		return vm, apiError(api.CodeInvalid, "cannot reach the VM: "+err.Error())
	}
	defer func() { _ = m.Close() }()
	ictx, cancel := context.WithTimeout(ctx, openTimeout)
	defer cancel()
	devs, err := hypervisor.BlockDevices(ictx, m.QMP())
	if err != nil {
		return vm, fmt.Errorf("inspecting the VM's disks: %w", err)
	}
	var uuid struct {
		UUID string `json:"UUID"`
	}
	_ = m.QMP().Execute(ictx, "query-uuid", nil, &uuid)
	vm.ID = uuid.UUID
	if vm.ID == "" || strings.Trim(vm.ID, "0-") == "" {
		vm.ID = newUUID()
	}
	boot := -1
	for i, dev := range devs {
		if dev.ReadOnly || dev.NodeName == "" {
			continue // CD-ROMs and empty drives are not volumes
		}
		if strings.HasPrefix(dev.Drive, "pflash") || strings.Contains(dev.QOMPath, "system.flash") {
			continue // UEFI firmware and variables: captured with the VM's configuration
		}
		name := dev.Serial
		if name == "" {
			name = dev.DeviceID
		}
		if name == "" {
			name = fmt.Sprintf("disk%d", i)
		}
		format := command.VolumeFormat(dev.Format)
		if !format.Valid() {
			return vm, apiError(api.CodeInvalid, fmt.Sprintf("disk %s has format %q; twinsnap handles qcow2 and raw", name, dev.Format))
		}
		vol := command.Volume{ID: vm.ID[:8] + "-" + name, Name: name, Serial: dev.Serial, SizeBytes: dev.VirtualSize, Format: format}
		if strings.HasPrefix(dev.File, "/") {
			vol.Path = dev.File
		}
		if req.BootVolume != "" && (req.BootVolume == dev.Serial || req.BootVolume == dev.DeviceID || req.BootVolume == name) {
			boot = len(vm.Volumes)
		}
		vm.Volumes = append(vm.Volumes, vol)
	}
	if len(vm.Volumes) == 0 {
		return vm, apiError(api.CodeInvalid, "the VM has no writable disk")
	}
	if boot < 0 && req.BootVolume != "" {
		return vm, apiError(api.CodeInvalid, fmt.Sprintf("no disk with serial or device id %q", req.BootVolume))
	}
	if boot < 0 {
		boot = 0
		for i, v := range vm.Volumes {
			if v.Serial == "boot" {
				boot = i
			}
		}
	}
	vm.Volumes[boot].Boot = true
	if err := vm.Validate(); err != nil {
		return vm, apiError(api.CodeInvalid, err.Error())
	}
	return vm, nil
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// postQuiesceCheck freezes the VM's selected volumes on its host node as a
// capture would, holds, and thaws.
func (d *Daemon) postQuiesceCheck(w http.ResponseWriter, r *http.Request) error {
	var req api.QuiesceCheckRequest
	if err := readJSON(r, &req); err != nil {
		return err
	}
	vm, err := d.findVM(r.PathValue("id"))
	if err != nil {
		return err
	}
	if vm.HostNode != d.cfg.ID {
		c, err := d.hostClient(vm.HostNode)
		if err != nil {
			return err
		}
		defer c.Close()
		res, err := c.QuiesceCheck(r.Context(), vm.ID, req)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, res)
		return nil
	}
	hold := time.Duration(req.HoldMS) * time.Millisecond
	if hold < 0 || hold >= vm.FreezeTimeout {
		return apiError(api.CodeInvalid, fmt.Sprintf("hold %v must be below the VM's freeze timeout %v", hold, vm.FreezeTimeout))
	}
	selected, err := selectVolumes(vm.VM, req.Volumes)
	if err != nil {
		return err
	}
	m, err := openMachine(r.Context(), vm.VM)
	if err != nil {
		return apiError(api.CodeUnavailable, "cannot reach the VM: "+err.Error())
	}
	defer func() { _ = m.Close() }()
	agent := guestagent.NewClient(m.Agent())
	plan, err := d.freezePlan(r.Context(), m, agent, vm.VM, selected)
	if err != nil {
		return err
	}
	opts := hypervisor.QuiesceOptions{
		Desire: hypervisor.Consistency(orDefault(req.Desire, "application")), Require: hypervisor.Consistency(orDefault(req.Require, "crash")),
		FreezeEnabled: vm.FreezeEnabled, Deadline: vm.FreezeTimeout, Logger: d.log.With("vm", vm.Name),
	}
	var fa hypervisor.FreezeAgent = agent
	if vm.QEMU != nil && vm.QEMU.AgentSocket == "" {
		fa = nil
	}
	res, err := hypervisor.Quiesce(r.Context(), fa, plan, opts, func(ctx context.Context) error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(hold):
			return nil
		}
	})
	if errors.Is(err, hypervisor.ErrConsistency) {
		return apiError(api.CodeConflict, err.Error())
	}
	if err != nil {
		return err
	}
	d.log.Info("quiesce check", "vm", vm.Name, "achieved", res.Achieved, "frozen", res.Frozen, "window", res.Window, "step_down", res.StepDown)
	writeJSON(w, http.StatusOK, api.QuiesceCheckResult{
		VM: vm.Name, HostNode: d.cfg.ID, Achieved: string(res.Achieved), StepDown: res.StepDown,
		Frozen: res.Frozen, Reasons: res.Reasons, Spanning: plan.Spanning, Unmapped: plan.Unmapped,
		FreezeCallMS: ms(res.FreezeCall), ThawCallMS: ms(res.ThawCall), WindowMS: ms(res.Window),
	})
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// selectVolumes resolves volume names or serials; none means all.
func selectVolumes(vm command.VM, names []string) (map[string]bool, error) {
	sel := map[string]bool{}
	if len(names) == 0 {
		for _, v := range vm.Volumes {
			sel[v.Name] = true
		}
		return sel, nil
	}
	for _, n := range names {
		found := false
		for _, v := range vm.Volumes {
			if v.Name == n || (v.Serial != "" && v.Serial == n) {
				sel[v.Name], found = true, true
			}
		}
		if !found {
			return nil, apiError(api.CodeInvalid, fmt.Sprintf("VM %s has no volume %q", vm.Name, n))
		}
	}
	return sel, nil
}

// freezePlan maps the guest's file systems onto the VM's selected volumes
// through QMP's view of the disks. When the agent cannot tell its file
// systems the plan is empty, and Quiesce reports why it steps down.
func (d *Daemon) freezePlan(ctx context.Context, m hypervisor.Machine, agent *guestagent.Client, vm command.VM, selected map[string]bool) (hypervisor.FreezePlan, error) {
	ctx, cancel := context.WithTimeout(ctx, openTimeout)
	defer cancel()
	var names []string
	for _, v := range vm.Volumes {
		if selected[v.Name] {
			names = append(names, v.Name)
		}
	}
	sort.Strings(names)
	plan, err := hypervisor.PlanFor(ctx, m.QMP(), agent, names)
	switch {
	case err == nil:
		return plan, nil
	case errors.Is(err, hypervisor.ErrNotFound):
		return plan, apiError(api.CodeConflict, "the VM's disks changed since it was registered: "+err.Error())
	case errors.Is(err, guestagent.ErrTimeout), errors.Is(err, guestagent.ErrClosed), errors.Is(err, guestagent.ErrProtocol), guestagent.IsClass(err, guestagent.ClassCommandNotFound):
		d.log.Debug("no file system information from the guest agent", "vm", vm.Name, "err", err)
		return hypervisor.FreezePlan{}, nil
	}
	return plan, fmt.Errorf("planning the freeze: %w", err)
}

// thawLocalGuests runs once at start-up: no capture can be in progress on a
// daemon that just started, so any guest of this node found frozen was
// left so by a capture that died with the previous daemon. It retries
// guests whose agent does not answer for a while.
func (d *Daemon) thawLocalGuests(ctx context.Context) {
	if d.cfg.Role != command.RoleData {
		return
	}
	// Wait until the state is current enough to know this node's VMs.
	for {
		st := d.node.Status()
		if st.LeaderID != "" && st.AppliedIndex >= st.CommitIndex && st.CommitIndex > 0 {
			break
		}
		if !sleep(ctx, 200*time.Millisecond) {
			return
		}
	}
	pending := map[string]bool{}
	for _, vm := range d.st.VMs() {
		if vm.HostNode == d.cfg.ID {
			pending[vm.ID] = true
		}
	}
	for attempt := 0; attempt < 10 && len(pending) > 0; attempt++ {
		for id := range pending {
			vm, err := d.st.VM(id)
			if err != nil {
				delete(pending, id)
				continue
			}
			if d.thawGuest(ctx, vm.VM) {
				delete(pending, id)
			}
		}
		if len(pending) > 0 && !sleep(ctx, 3*time.Second) {
			return
		}
	}
	for id := range pending {
		d.log.Error("could not check whether a guest was left frozen", "vm", id)
	}
}

// thawGuest thaws one guest if it is frozen; it reports whether the
// guest's state is now known to be thawed (or it has no agent).
func (d *Daemon) thawGuest(ctx context.Context, vm command.VM) bool {
	if vm.Driver == command.DriverQEMU && vm.QEMU.AgentSocket == "" {
		return true
	}
	m, err := openMachine(ctx, vm)
	if err != nil {
		d.log.Warn("start-up check: cannot reach the VM", "vm", vm.Name, "err", err)
		return false
	}
	defer func() { _ = m.Close() }()
	agent := guestagent.NewClient(m.Agent())
	actx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	thawed, err := hypervisor.ThawIfFrozen(actx, agent)
	if err != nil {
		d.log.Warn("start-up check: guest agent", "vm", vm.Name, "err", err)
		return false
	}
	if thawed {
		d.log.Warn("thawed a guest left frozen by an interrupted capture", "vm", vm.Name)
	}
	return true
}
