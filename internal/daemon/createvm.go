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
	dir := filepath.Join(d.cfg.vmsDir(), req.Name)
	if err := os.MkdirAll(d.cfg.vmsDir(), 0o750); err != nil {
		return nil, err
	}
	if err := os.Mkdir(dir, 0o750); err != nil {
		return nil, apiError(api.CodeConflict, fmt.Sprintf("the new VM's directory: %v", err))
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(dir)
		}
	}()
	// The images: a standalone copy of each captured volume; a blank
	// volume of the same size for a volume the snapshot left out.
	res := &api.CreateVMResult{Snapshot: sn.ID, Images: map[string]string{}}
	newPath := map[string]string{} // volume id → new image
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
		newPath[v.ID] = dst
		res.Images[v.Name] = dst
	}
	vars := ""
	if sn.Captured.UEFIVars != nil {
		vars = filepath.Join(dir, "uefi-vars.fd")
		if _, err := copyFileTo(d.engine.UEFIVarsPath(sn.ID), vars); err != nil {
			return nil, fmt.Errorf("the UEFI variables: %w", err)
		}
	}
	res.UUID = hypervisor.NewUUID()
	start2 := req.Start == nil || *req.Start
	var reg api.VMRegisterRequest
	switch sn.Captured.Kind {
	case command.ConfigQEMULaunch:
		var spec hypervisor.LaunchSpec
		if err := json.Unmarshal([]byte(sn.Captured.Text), &spec); err != nil {
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
			for _, v := range sn.Config.Volumes {
				if (v.Serial != "" && ld.Serial == v.Serial) || (v.Path != "" && ld.Path == v.Path) {
					disks[ld.Path] = newPath[v.ID]
				}
			}
		}
		sock := socketDir(dir, res.UUID)
		if err := os.MkdirAll(sock, 0o750); err != nil {
			return nil, err
		}
		var macs []string
		clone, err := spec.Clone(hypervisor.CloneOptions{
			Name: req.Name, UUID: res.UUID, Disks: disks,
			MAC:       func(string) string { m := hypervisor.RandomMAC(); macs = append(macs, m); return m },
			QMPSocket: filepath.Join(sock, "qmp.sock"), AgentSocket: filepath.Join(sock, "qga.sock"),
			SerialLog: filepath.Join(dir, "serial.log"), PIDFile: filepath.Join(dir, "qemu.pid"), UEFIVars: vars,
		})
		if err != nil {
			return nil, apiError(api.CodeConflict, "cannot make the new VM's launch spec: "+err.Error())
		}
		res.MACs = macs
		b, _ := json.MarshalIndent(clone, "", "  ")
		if err := os.WriteFile(filepath.Join(dir, "launch.json"), b, 0o640); err != nil {
			return nil, err
		}
		reg = api.VMRegisterRequest{Name: req.Name, Driver: command.DriverQEMU, QEMU: &command.QEMUConnection{
			QMPSocket: filepath.Join(sock, "qmp.sock"), AgentSocket: filepath.Join(sock, "qga.sock"),
		}}
		if start2 {
			sctx, cancel := context.WithTimeout(ctx, time.Minute)
			_, err := hypervisor.StartQEMU(sctx, clone, filepath.Join(dir, "qemu.log"))
			cancel()
			if err != nil {
				return nil, fmt.Errorf("starting the new VM: %w", err)
			}
			res.Started = true
		}
	case command.ConfigLibvirtXML:
		src := sn.Config.Libvirt
		if src == nil {
			return nil, apiError(api.CodeConflict, "the snapshot's VM was not a libvirt domain")
		}
		disks := map[string]string{}
		for _, ld := range domainDisks(sn.Captured.Text) {
			for _, v := range sn.Config.Volumes {
				if (v.Serial != "" && ld.Serial == v.Serial) || (v.Path != "" && ld.Path == v.Path) || ld.Target == v.Name {
					disks[ld.Path] = newPath[v.ID]
				}
			}
		}
		// Serial and channel files: the clone's own, in its directory.
		paths := map[string]string{}
		chars, err := hypervisor.DomainCharPaths(sn.Captured.Text)
		if err != nil {
			return nil, apiError(api.CodeConflict, "the captured domain XML: "+err.Error())
		}
		for i, p := range chars {
			paths[p] = filepath.Join(dir, fmt.Sprintf("char%d-%s", i, filepath.Base(p)))
		}
		var macs []string
		xml, err := hypervisor.CloneDomainXML(sn.Captured.Text, hypervisor.DomainCloneOptions{
			Name: req.Name, UUID: res.UUID, Disks: disks, NVRAM: vars, Paths: paths,
			MAC: func(string) string { m := hypervisor.RandomMAC(); macs = append(macs, m); return m },
		})
		if err != nil {
			return nil, apiError(api.CodeConflict, "cannot make the new VM's domain XML: "+err.Error())
		}
		res.MACs = macs
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
		if start2 {
			if err := l.StartDomain(ctx, req.Name); err != nil {
				return nil, fmt.Errorf("starting the new domain: %w", err)
			}
			res.Started = true
		}
		reg = api.VMRegisterRequest{Name: req.Name, Driver: command.DriverLibvirt, Libvirt: &command.LibvirtConnection{URI: src.URI, Domain: req.Name}}
	default:
		return nil, apiError(api.CodeConflict, fmt.Sprintf("unknown configuration kind %q", sn.Captured.Kind))
	}
	if res.Started {
		if err := waitAgent(ctx, reg); err != nil {
			return nil, fmt.Errorf("the new VM started, but %w", err)
		}
		res.AgentReady = true
	}
	if (req.Register == nil || *req.Register) && res.Started {
		reg.BootVolume = bootName(sn.Config)
		reg.FreezeTimeoutMS = sn.Config.FreezeTimeout.Milliseconds()
		vm, err := d.inspectVM(ctx, reg)
		if err != nil {
			return nil, fmt.Errorf("registering the new VM: %w", err)
		}
		vm.ID = res.UUID
		for i := range vm.Volumes {
			vm.Volumes[i].ID = vm.ID[:8] + "-" + vm.Volumes[i].Name
		}
		if _, err := d.propose(ctx, &command.VMRegistered{VM: vm}); err != nil {
			return nil, fmt.Errorf("registering the new VM: %w", err)
		}
		if err := d.createContainers(ctx, vm, 0); err != nil {
			return nil, err
		}
		res.VM = vm
	}
	ok = true
	res.Seconds = time.Since(start).Seconds()
	return res, nil
}

// bootName returns the name of a VM's boot volume.
func bootName(vm command.VM) string {
	for _, v := range vm.Volumes {
		if v.Boot {
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
