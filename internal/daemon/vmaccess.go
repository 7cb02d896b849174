package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/twinsnap/twinsnap/cluster/command"
	"github.com/twinsnap/twinsnap/guestagent"
	"github.com/twinsnap/twinsnap/internal/hypervisor"
	"github.com/twinsnap/twinsnap/snapshot"
)

// captureJobPrefix is the prefix of the QEMU job and block node ids of
// captures (hypervisor.Capture names them "ts-<id>-...").
const captureJobPrefix = "ts-"

// vmAccess is the snapshot engine's way to the VMs of this node.
type vmAccess struct{ d *Daemon }

var _ snapshot.Hypervisor = (*vmAccess)(nil)

// errStopped says a VM is not running.
var errStopped = errors.New("the VM is not running")

// open connects to a running VM; errStopped when it is not running.
func (a *vmAccess) open(ctx context.Context, vm command.VM) (hypervisor.Machine, error) {
	if vm.Driver == command.DriverLibvirt {
		sock, err := libvirtSocket(vm.Libvirt.URI)
		if err != nil {
			return nil, err
		}
		lctx, cancel := context.WithTimeout(ctx, openTimeout)
		defer cancel()
		l, err := hypervisor.DialLibvirt(lctx, sock)
		if err != nil {
			return nil, err
		}
		st, err := l.DomainState(lctx, vm.Libvirt.Domain)
		_ = l.Close()
		if err != nil {
			return nil, err
		}
		if st == hypervisor.DomainShutoff || st == hypervisor.DomainCrashed {
			return nil, fmt.Errorf("%w: domain %s is %s", errStopped, vm.Libvirt.Domain, st)
		}
	}
	m, err := openMachine(ctx, vm)
	if err != nil && vm.Driver == command.DriverQEMU && (errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT)) {
		return nil, fmt.Errorf("%w: %v", errStopped, err)
	}
	return m, err
}

// volumeDevice finds a volume among QEMU's block devices.
func volumeDevice(devs []hypervisor.BlockDevice, v command.Volume) (hypervisor.BlockDevice, bool) {
	for _, d := range devs {
		if (v.Serial != "" && d.Serial == v.Serial) || (v.Serial == "" && (d.DeviceID == v.Name || d.NodeName == v.Name)) {
			return d, true
		}
	}
	return hypervisor.BlockDevice{}, false
}

// captureName is how hypervisor.Capture finds a volume.
func captureName(v command.Volume) string {
	if v.Serial != "" {
		return v.Serial
	}
	return v.Name
}

// Inspect implements snapshot.Capturer.
func (a *vmAccess) Inspect(ctx context.Context, vm command.VM) (snapshot.Inspection, error) {
	m, err := a.open(ctx, vm)
	if errors.Is(err, errStopped) {
		return snapshot.Inspection{Running: false}, nil
	}
	if err != nil {
		return snapshot.Inspection{}, err
	}
	defer func() { _ = m.Close() }()
	ictx, cancel := context.WithTimeout(ctx, openTimeout)
	defer cancel()
	devs, err := hypervisor.BlockDevices(ictx, m.QMP())
	if err != nil {
		return snapshot.Inspection{}, err
	}
	insp := snapshot.Inspection{Running: true, Bitmaps: map[string][]snapshot.Bitmap{}}
	for _, v := range vm.Volumes {
		dev, ok := volumeDevice(devs, v)
		if !ok {
			return insp, fmt.Errorf("volume %s is not among the VM's disks any more", v.Name)
		}
		for _, b := range dev.Bitmaps {
			sid, ok := strings.CutPrefix(b.Name, "twinsnap-")
			if !ok {
				continue
			}
			insp.Bitmaps[v.ID] = append(insp.Bitmaps[v.ID], snapshot.Bitmap{
				SnapshotID: sid, DirtyBytes: b.Count, Usable: b.Persistent && !b.Busy && !b.Inconsistent,
			})
		}
	}
	return insp, nil
}

// Capture implements snapshot.Capturer.
func (a *vmAccess) Capture(ctx context.Context, req snapshot.CaptureRequest) (snapshot.CaptureResult, error) {
	m, err := a.open(ctx, req.VM)
	if errors.Is(err, errStopped) {
		return a.copyStopped(ctx, req)
	}
	if err != nil {
		return snapshot.CaptureResult{}, err
	}
	defer func() { _ = m.Close() }()
	vm := req.VM
	creq := hypervisor.CaptureRequest{
		ID: req.SnapshotID,
		Quiesce: hypervisor.QuiesceOptions{
			Desire: hypervisor.Consistency(req.Desired), Require: hypervisor.Consistency(req.Required),
			FreezeEnabled: vm.FreezeEnabled, Deadline: vm.FreezeTimeout, Logger: a.d.log.With("vm", vm.Name),
		},
	}
	for _, cv := range req.Volumes {
		v, ok := findVolume(vm, cv.VolumeID)
		if !ok {
			return snapshot.CaptureResult{}, fmt.Errorf("volume %s is not a volume of VM %s", cv.VolumeID, vm.Name)
		}
		hv := hypervisor.CaptureVolume{Volume: captureName(v), Target: cv.Target, Mode: hypervisor.CaptureFull}
		if v.Format == command.FormatQCOW2 {
			hv.NewBitmap = snapshot.BitmapName(req.SnapshotID)
		}
		if cv.ParentID != "" {
			hv.Mode, hv.Bitmap = hypervisor.CaptureIncremental, snapshot.BitmapName(cv.ParentID)
		}
		creq.Volumes = append(creq.Volumes, hv)
	}
	var fa hypervisor.FreezeAgent
	if vm.Driver == command.DriverLibvirt || vm.QEMU.AgentSocket != "" {
		fa = guestagent.NewClient(m.Agent())
	}
	// The configuration is read before the capture, so that a failure to
	// read it does not cost a freeze.
	cfg, vars := a.config(ctx, vm, m)
	start := time.Now()
	res, err := hypervisor.Capture(ctx, m, fa, creq)
	if err != nil {
		return snapshot.CaptureResult{}, err
	}
	return snapshot.CaptureResult{
		Achieved: command.Consistency(res.Quiesce.Achieved), StepDownReason: res.Quiesce.StepDown,
		CapturedAt: start.Add(res.Setup), Config: cfg, UEFIVars: vars,
	}, nil
}

// config reads a VM's own configuration and the path of its UEFI
// variables, best effort: a snapshot without it still holds the volumes.
func (a *vmAccess) config(ctx context.Context, vm command.VM, m hypervisor.Machine) (*command.CapturedConfig, string) {
	cctx, cancel := context.WithTimeout(ctx, openTimeout)
	defer cancel()
	switch vm.Driver {
	case command.DriverLibvirt:
		lm, ok := m.(*hypervisor.LibvirtMachine)
		if !ok {
			return nil, ""
		}
		xml, err := lm.Libvirt().DomainXML(cctx, vm.Libvirt.Domain, true)
		if err != nil || len(xml) > command.MaxConfigLen {
			a.d.log.Warn("cannot read the domain XML for the snapshot", "vm", vm.Name, "err", err)
			return nil, ""
		}
		return &command.CapturedConfig{Kind: command.ConfigLibvirtXML, Text: xml}, domainNVRAM(xml)
	case command.DriverQEMU:
		_, spec, err := hypervisor.InspectQEMU(cctx, vm.QEMU.QMPSocket)
		if err != nil {
			a.d.log.Warn("cannot read the QEMU launch spec for the snapshot", "vm", vm.Name, "err", err)
			return nil, ""
		}
		b, err := json.Marshal(spec)
		if err != nil || len(b) > command.MaxConfigLen {
			return nil, ""
		}
		vars, _ := spec.UEFIVars()
		return &command.CapturedConfig{Kind: command.ConfigQEMULaunch, Text: string(b)}, vars
	}
	return nil, ""
}

// copyStopped captures a stopped VM by copying its images with qemu-img
// (which locks them, so a VM started meanwhile makes the copy fail rather
// than go inconsistent).
func (a *vmAccess) copyStopped(ctx context.Context, req snapshot.CaptureRequest) (snapshot.CaptureResult, error) {
	vm := req.VM
	paths := map[string]string{} // volume id → image
	var cfg *command.CapturedConfig
	var vars string
	if vm.Driver == command.DriverLibvirt {
		sock, err := libvirtSocket(vm.Libvirt.URI)
		if err != nil {
			return snapshot.CaptureResult{}, err
		}
		l, err := hypervisor.DialLibvirt(ctx, sock)
		if err != nil {
			return snapshot.CaptureResult{}, err
		}
		xml, err := l.DomainXML(ctx, vm.Libvirt.Domain, true)
		_ = l.Close()
		if err != nil {
			return snapshot.CaptureResult{}, err
		}
		cfg = &command.CapturedConfig{Kind: command.ConfigLibvirtXML, Text: xml}
		vars = domainNVRAM(xml)
		for _, d := range domainDisks(xml) {
			for _, v := range vm.Volumes {
				if (v.Serial != "" && d.Serial == v.Serial) || d.Target == v.Name || d.DeviceID == v.Name {
					paths[v.ID] = d.Path
				}
			}
		}
	}
	for _, v := range vm.Volumes {
		if paths[v.ID] == "" && v.Path != "" {
			paths[v.ID] = v.Path
		}
	}
	for _, cv := range req.Volumes {
		src := paths[cv.VolumeID]
		if src == "" {
			return snapshot.CaptureResult{}, fmt.Errorf("%w; the image of volume %s is unknown", errStopped, cv.VolumeID)
		}
		out, err := exec.CommandContext(ctx, "qemu-img", "convert", "-n", "-O", "qcow2", src, cv.Target).CombinedOutput()
		if err != nil {
			return snapshot.CaptureResult{}, fmt.Errorf("copying the stopped VM's image %s: %w: %s", src, err, strings.TrimSpace(string(out)))
		}
	}
	if vars != "" {
		if _, err := os.Stat(vars); err != nil {
			vars = ""
		}
	}
	return snapshot.CaptureResult{
		Achieved: req.Desired, CapturedAt: time.Now().UTC(), Config: cfg, UEFIVars: vars,
	}, nil
}

// Cleanup implements snapshot.Tidier.
func (a *vmAccess) Cleanup(ctx context.Context, vm command.VM) error {
	m, err := a.open(ctx, vm)
	if errors.Is(err, errStopped) {
		return nil
	}
	if err != nil {
		return err
	}
	defer func() { _ = m.Close() }()
	rep, err := hypervisor.CleanupStale(ctx, m.QMP(), captureJobPrefix)
	if err == nil && (len(rep.Jobs) > 0 || len(rep.Nodes) > 0) {
		a.d.log.Warn("ended copy jobs left by an interrupted capture", "vm", vm.Name, "jobs", rep.Jobs, "nodes", rep.Nodes)
	}
	return err
}

// PruneBitmaps implements snapshot.Tidier.
func (a *vmAccess) PruneBitmaps(ctx context.Context, vm command.VM, keep func(volumeID, snapshotID string) bool) error {
	m, err := a.open(ctx, vm)
	if errors.Is(err, errStopped) {
		return nil
	}
	if err != nil {
		return err
	}
	defer func() { _ = m.Close() }()
	devs, err := hypervisor.BlockDevices(ctx, m.QMP())
	if err != nil {
		return err
	}
	var errs []error
	for _, v := range vm.Volumes {
		dev, ok := volumeDevice(devs, v)
		if !ok {
			continue
		}
		var drop []string
		for _, b := range dev.Bitmaps {
			if sid, ok := strings.CutPrefix(b.Name, "twinsnap-"); ok && !keep(v.ID, sid) {
				drop = append(drop, b.Name)
			}
		}
		if len(drop) > 0 {
			errs = append(errs, hypervisor.RemoveBitmaps(ctx, m.QMP(), dev.NodeName, drop))
		}
	}
	return errors.Join(errs...)
}

// findVolume returns a VM's volume by id.
func findVolume(vm command.VM, id string) (command.Volume, bool) {
	for _, v := range vm.Volumes {
		if v.ID == id {
			return v, true
		}
	}
	return command.Volume{}, false
}
