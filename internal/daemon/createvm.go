package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/twinsnap/twinsnap/cluster/command"
	"github.com/twinsnap/twinsnap/cluster/state"
	"github.com/twinsnap/twinsnap/guestagent"
	"github.com/twinsnap/twinsnap/internal/api"
	"github.com/twinsnap/twinsnap/internal/hypervisor"
)

// agentReadyTimeout bounds the wait for a new VM's guest agent.
const agentReadyTimeout = 3 * time.Minute

// postCreateVM makes a new VM from a complete snapshot on a node that
// holds a verified replica: its own copies of the images, the captured
// configuration with a new name, UUID and MAC addresses, started and
// registered.
func (d *Daemon) postCreateVM(w http.ResponseWriter, r *http.Request) error {
	var req api.CreateVMRequest
	if err := readJSON(r, &req); err != nil {
		return err
	}
	sn, err := d.findSnapshot(r.PathValue("id"))
	if err != nil {
		return err
	}
	if sn.State != state.Complete {
		return apiError(api.CodeConflict, fmt.Sprintf("snapshot %s is %s; a VM is made from a complete snapshot", sn.ID, sn.State))
	}
	if err := command.VM(command.VM{Name: req.Name}).Validate(); err != nil && strings.Contains(err.Error(), "name") {
		return apiError(api.CodeInvalid, "new VM name: "+err.Error())
	}
	if _, err := d.findVM(req.Name); err == nil {
		return apiError(api.CodeConflict, fmt.Sprintf("a VM named %q is already registered", req.Name))
	}
	host := req.HostNode
	if host == "" {
		host = sn.Coordinator
		if r, ok := sn.Replica(host); !ok || !r.Verified {
			for _, rep := range sn.Replicas {
				if rep.Verified {
					host = rep.Node
				}
			}
		}
	}
	if rep, ok := sn.Replica(host); !ok || !rep.Verified {
		return apiError(api.CodeInvalid, fmt.Sprintf("node %s holds no verified replica of snapshot %s", host, sn.ID))
	}
	if host != d.cfg.ID {
		c, err := d.hostClient(host)
		if err != nil {
			return err
		}
		defer c.Close()
		// Copying the images and booting take a while: longer than a
		// peer call's default bound.
		ctx, cancel := context.WithTimeout(r.Context(), agentReadyTimeout+time.Minute)
		defer cancel()
		res, err := c.CreateVMFromSnapshot(ctx, sn.ID, req)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, res)
		return nil
	}
	if d.engine == nil {
		return apiError(api.CodeInvalid, errNoEngine.Error())
	}
	res, err := d.createVM(r.Context(), sn, req)
	if err != nil {
		return err
	}
	d.log.Info("created a VM from a snapshot", "vm", req.Name, "snapshot", sn.ID, "started", res.Started, "by", callerOf(r).name)
	writeJSON(w, http.StatusOK, res)
	return nil
}

// createVM does postCreateVM's work on this node.
func (d *Daemon) createVM(ctx context.Context, sn state.Snapshot, req api.CreateVMRequest) (*api.CreateVMResult, error) {
	start := time.Now()
	if sn.Captured == nil {
		return nil, apiError(api.CodeConflict, fmt.Sprintf("snapshot %s holds no VM configuration to start a VM from", sn.ID))
	}
	dir, err := d.newVMDir(req.Name)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(dir)
		}
	}()
	// The images: a standalone copy of each captured volume; a blank
	// volume of the same size for a volume the snapshot left out.
	images := map[string]string{} // volume id → new image
	for _, v := range sn.Config.Volumes {
		dst := filepath.Join(dir, v.Name+".qcow2")
		var args []string
		if slices.ContainsFunc(sn.Volumes, func(sv state.SnapshotVolume) bool { return sv.VolumeID == v.ID }) {
			args = []string{"convert", "-O", "qcow2", d.engine.ImagePath(sn.ID, v.ID), dst}
		} else {
			args = []string{"create", "-q", "-f", "qcow2", dst, fmt.Sprint(v.SizeBytes)}
		}
		if out, err := exec.CommandContext(ctx, "qemu-img", args...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("the image of volume %s: %w: %s", v.Name, err, strings.TrimSpace(string(out)))
		}
		images[v.ID] = dst
	}
	vars := ""
	if sn.Captured.UEFIVars != nil {
		vars = filepath.Join(dir, "uefi-vars.fd")
		if _, err := copyFileTo(d.engine.UEFIVarsPath(sn.ID), vars); err != nil {
			return nil, fmt.Errorf("the UEFI variables: %w", err)
		}
	}
	res, err := d.startCopy(ctx, vmCopy{
		Name: req.Name, Dir: dir, Source: sn.Config, Config: *sn.Captured, Images: images, UEFIVars: vars,
		Start: req.Start == nil || *req.Start, Register: req.Register == nil || *req.Register,
	})
	if err != nil {
		return nil, err
	}
	ok = true
	res.Snapshot = sn.ID
	res.Seconds = time.Since(start).Seconds()
	return res, nil
}

// newVMDir makes the directory of a new VM's files.
func (d *Daemon) newVMDir(name string) (string, error) {
	dir := filepath.Join(d.cfg.vmsDir(), name)
	if err := os.MkdirAll(d.cfg.vmsDir(), 0o750); err != nil {
		return "", err
	}
	if err := os.Mkdir(dir, 0o750); err != nil {
		return "", apiError(api.CodeConflict, fmt.Sprintf("the new VM's directory: %v", err))
	}
	return dir, nil
}

// vmCopy is a new VM made from a captured configuration: a snapshot's, or
// an imported package's.
type vmCopy struct {
	// Name is the new VM's name; Dir holds its files.
	Name, Dir string
	// Source is the VM the configuration belongs to (its volumes, driver
	// and libvirt connection).
	Source command.VM
	// Config is the captured configuration.
	Config command.CapturedConfig
	// Images maps Source's volume ids to the new VM's images.
	Images map[string]string
	// UEFIVars is the new VM's copy of the UEFI variables, or "".
	UEFIVars string
	// KeepMACs keeps the configuration's MAC addresses.
	KeepMACs bool
	// Start and Register: boot it (and wait for its agent), register it.
	Start, Register bool
	// AgentOptional does not wait for a guest agent (a VM from another
	// tool's package may have none); the VM is registered once QEMU runs.
	AgentOptional bool
}

// startCopy writes the new VM's configuration (new name, UUID and MACs,
// its own images, UEFI variables, sockets and logs), starts it, waits for
// its agent, and registers it with containers of its own.
func (d *Daemon) startCopy(ctx context.Context, vc vmCopy) (*api.CreateVMResult, error) {
	res := &api.CreateVMResult{Images: map[string]string{}, UUID: hypervisor.NewUUID()}
	for _, v := range vc.Source.Volumes {
		if p, ok := vc.Images[v.ID]; ok {
			res.Images[v.Name] = p
		}
	}
	mac := func(old string) string {
		m := old
		if !vc.KeepMACs {
			m = hypervisor.RandomMAC()
		}
		res.MACs = append(res.MACs, m)
		return m
	}
	var reg api.VMRegisterRequest
	var undo func()
	switch vc.Config.Kind {
	case command.ConfigQEMULaunch:
		spec, err := parseLaunchSpec(vc.Config.Text)
		if err != nil {
			return nil, fmt.Errorf("the captured launch spec: %w", err)
		}
		info, err := spec.Info()
		if err != nil {
			return nil, fmt.Errorf("the captured launch spec: %w", err)
		}
		disks := map[string]string{}
		for _, ld := range info.Disks {
			if ld.Media == "cdrom" || ld.Backing {
				continue
			}
			for _, v := range vc.Source.Volumes {
				if (v.Serial != "" && ld.Serial == v.Serial) || (v.Path != "" && ld.Path == v.Path) {
					if p, ok := vc.Images[v.ID]; ok {
						disks[ld.Path] = p
					}
				}
			}
		}
		sock := socketDir(vc.Dir, res.UUID)
		if err := os.MkdirAll(sock, 0o750); err != nil {
			return nil, err
		}
		clone, err := spec.Clone(hypervisor.CloneOptions{
			Name: vc.Name, UUID: res.UUID, Disks: disks, MAC: mac,
			QMPSocket: filepath.Join(sock, "qmp.sock"), AgentSocket: filepath.Join(sock, "qga.sock"),
			SerialLog: filepath.Join(vc.Dir, "serial.log"), PIDFile: filepath.Join(vc.Dir, "qemu.pid"), UEFIVars: vc.UEFIVars,
		})
		if err != nil {
			return nil, apiError(api.CodeConflict, "cannot make the new VM's launch spec: "+err.Error())
		}
		b, _ := json.MarshalIndent(clone, "", "  ")
		if err := os.WriteFile(filepath.Join(vc.Dir, "launch.json"), b, 0o640); err != nil {
			return nil, err
		}
		reg = api.VMRegisterRequest{Name: vc.Name, Driver: command.DriverQEMU, QEMU: &command.QEMUConnection{
			QMPSocket: filepath.Join(sock, "qmp.sock"), AgentSocket: filepath.Join(sock, "qga.sock"),
		}}
		if vc.Start {
			sctx, cancel := context.WithTimeout(ctx, time.Minute)
			_, err := hypervisor.StartQEMU(sctx, clone, filepath.Join(vc.Dir, "qemu.log"))
			cancel()
			if err != nil {
				return nil, fmt.Errorf("starting the new VM: %w", err)
			}
			res.Started = true
			undo = func() { d.quitQEMU(reg.QEMU.QMPSocket) }
		}
	case command.ConfigLibvirtXML:
		src := vc.Source.Libvirt
		if src == nil {
			return nil, apiError(api.CodeConflict, "the VM was not a libvirt domain")
		}
		disks := map[string]string{}
		for _, ld := range domainDisks(vc.Config.Text) {
			for _, v := range vc.Source.Volumes {
				if (v.Serial != "" && ld.Serial == v.Serial) || (v.Path != "" && ld.Path == v.Path) || ld.Target == v.Name {
					if p, ok := vc.Images[v.ID]; ok {
						disks[ld.Path] = p
					}
				}
			}
		}
		// Serial and channel files: the clone's own, in its directory.
		paths := map[string]string{}
		chars, err := hypervisor.DomainCharPaths(vc.Config.Text)
		if err != nil {
			return nil, apiError(api.CodeConflict, "the captured domain XML: "+err.Error())
		}
		for i, p := range chars {
			paths[p] = filepath.Join(vc.Dir, fmt.Sprintf("char%d-%s", i, filepath.Base(p)))
		}
		xml, err := hypervisor.CloneDomainXML(vc.Config.Text, hypervisor.DomainCloneOptions{
			Name: vc.Name, UUID: res.UUID, Disks: disks, NVRAM: vc.UEFIVars, Paths: paths, MAC: mac,
		})
		if err != nil {
			return nil, apiError(api.CodeConflict, "cannot make the new VM's domain XML: "+err.Error())
		}
		sock, err := libvirtSocket(src.URI)
		if err != nil {
			return nil, err
		}
		l, err := hypervisor.DialLibvirt(ctx, sock)
		if err != nil {
			return nil, err
		}
		defer func() { _ = l.Close() }()
		if _, _, err := l.DefineDomain(ctx, xml); err != nil {
			return nil, fmt.Errorf("defining the new domain: %w", err)
		}
		undo = func() {
			uctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_ = l.DestroyDomain(uctx, vc.Name)
			_ = l.UndefineDomain(uctx, vc.Name, true)
		}
		if vc.Start {
			if err := l.StartDomain(ctx, vc.Name); err != nil {
				undo()
				return nil, fmt.Errorf("starting the new domain: %w", err)
			}
			res.Started = true
		}
		reg = api.VMRegisterRequest{Name: vc.Name, Driver: command.DriverLibvirt, Libvirt: &command.LibvirtConnection{URI: src.URI, Domain: vc.Name}}
	default:
		return nil, apiError(api.CodeConflict, fmt.Sprintf("unknown configuration kind %q", vc.Config.Kind))
	}
	fail := func(err error) (*api.CreateVMResult, error) {
		if undo != nil {
			undo()
		}
		return nil, err
	}
	if res.Started && !vc.AgentOptional {
		if err := waitAgent(ctx, reg); err != nil {
			return fail(fmt.Errorf("the new VM started, but %w", err))
		}
		res.AgentReady = true
	}
	if vc.Register && res.Started {
		reg.BootVolume = bootName(vc.Source)
		reg.FreezeTimeoutMS = vc.Source.FreezeTimeout.Milliseconds()
		vm, err := d.inspectVM(ctx, reg)
		if err != nil {
			return fail(fmt.Errorf("registering the new VM: %w", err))
		}
		vm.ID = res.UUID
		for i := range vm.Volumes {
			vm.Volumes[i].ID = vm.ID[:8] + "-" + vm.Volumes[i].Name
		}
		if _, err := d.propose(ctx, &command.VMRegistered{VM: vm}); err != nil {
			return fail(fmt.Errorf("registering the new VM: %w", err))
		}
		if err := d.createContainers(ctx, vm, 0); err != nil {
			return nil, err
		}
		res.VM = vm
	}
	return res, nil
}

// quitQEMU stops a bare QEMU VM through its QMP socket, best effort.
func (d *Daemon) quitQEMU(qmpSocket string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := hypervisor.OpenQEMU(ctx, "", qmpSocket, "")
	if err != nil {
		return
	}
	defer func() { _ = m.Close() }()
	_ = m.Quit(ctx)
}

// bootName returns how registration finds a VM's boot volume: its
// serial, else its name.
func bootName(vm command.VM) string {
	for _, v := range vm.Volumes {
		if v.Boot {
			if v.Serial != "" {
				return v.Serial
			}
			return v.Name
		}
	}
	return ""
}

// socketDir returns a directory for a new VM's sockets whose paths fit a
// Unix socket address.
func socketDir(dir, uuid string) string {
	if len(filepath.Join(dir, "qmp.sock")) < 100 {
		return dir
	}
	return filepath.Join(os.TempDir(), "twinsnap-"+uuid[:8])
}

// waitAgent waits until a new VM's guest agent answers.
func waitAgent(ctx context.Context, reg api.VMRegisterRequest) error {
	ctx, cancel := context.WithTimeout(ctx, agentReadyTimeout)
	defer cancel()
	vm := command.VM{Name: reg.Name, Driver: reg.Driver, QEMU: reg.QEMU, Libvirt: reg.Libvirt}
	var last error
	for {
		m, err := openMachine(ctx, vm)
		if err == nil {
			pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
			err = guestagent.NewClient(m.Agent()).Ping(pctx)
			pcancel()
			_ = m.Close()
			if err == nil {
				return nil
			}
		}
		last = err
		if !sleep(ctx, time.Second) {
			return fmt.Errorf("its guest agent did not answer within %v: %w", agentReadyTimeout, errors.Join(ctx.Err(), last))
		}
	}
}

// copyFileTo copies a small file.
func copyFileTo(src, dst string) (int64, error) {
	b, err := os.ReadFile(src)
	if err != nil {
		return 0, err
	}
	return int64(len(b)), os.WriteFile(dst, b, 0o640)
}
