package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/twinsnap/twinsnap/cluster/command"
	"github.com/twinsnap/twinsnap/cluster/state"
	"github.com/twinsnap/twinsnap/export"
	"github.com/twinsnap/twinsnap/guestagent"
	"github.com/twinsnap/twinsnap/internal/api"
	"github.com/twinsnap/twinsnap/internal/hypervisor"
)

// importsDir holds the working directories of import jobs.
func (c *Config) importsDir() string { return filepath.Join(c.DataDir, "imports") }

// ovmfCode is the UEFI firmware a VM of a foreign package with EFI
// firmware boots with.
const ovmfCode = "/usr/share/OVMF/OVMF_CODE.fd"

// runImport reads a package from a share, verifies it, and makes a
// running, registered VM of it. Nothing is left of a failed import: its
// working directory, the new VM's directory, a started VM, a defined
// domain and a registration are all undone.
func (d *Daemon) runImport(ctx context.Context, j state.Job) (string, error) {
	if d.engine == nil {
		return "", errNoEngine
	}
	if _, err := d.findVM(j.VMName); err == nil {
		return "", fmt.Errorf("a VM named %q is already registered", j.VMName)
	}
	sh, err := d.st.Share(j.Share)
	if err != nil {
		return "", err
	}
	work := filepath.Join(d.cfg.importsDir(), j.ID)
	if err := os.MkdirAll(work, 0o750); err != nil {
		return "", err
	}
	defer os.RemoveAll(work)
	// An import starts in its window and, once started, runs to its end.
	if win, err := jobWindow(j.Window); err != nil {
		return "", err
	} else if win != nil && !win.Open(time.Now()) {
		return "", &export.PausedError{Until: win.NextOpen(time.Now())}
	}
	t, err := d.dialShare(ctx, sh, "", false)
	if err != nil {
		return "", fmt.Errorf("share %s: %w", sh.Name, err)
	}
	defer func() { _ = t.Close() }()
	if j.BandwidthBytes > 0 {
		t = export.WithReadBandwidthLimit(t, j.BandwidthBytes)
	}
	imp, err := export.Import(ctx, t, j.Path, export.ImportOptions{Dir: work, OnProgress: d.progressReporter(ctx, j.ID), Logger: d.log.With("job", j.ID)})
	if err != nil {
		return "", err
	}
	dir, err := d.newVMDir(j.VMName)
	if err != nil {
		return "", err
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(dir)
		}
	}()
	// The imported images move into the VM's directory.
	src := command.VM{Name: imp.Descriptor.Name, Driver: command.DriverQEMU}
	images := map[string]string{}
	for i, disk := range imp.Disks {
		id := fmt.Sprintf("import-%d", i)
		dst := filepath.Join(dir, disk.Disk.Name+".qcow2")
		if err := os.Rename(disk.Path, dst); err != nil {
			return "", err
		}
		serial := disk.Disk.Serial
		if serial == "" {
			serial = serialOf(disk.Disk.Name, i)
		}
		src.Volumes = append(src.Volumes, command.Volume{ID: id, Name: disk.Disk.Name, Serial: serial, Boot: disk.Disk.Boot, SizeBytes: disk.Disk.CapacityBytes, Format: command.FormatQCOW2})
		images[id] = dst
	}
	vars := ""
	if imp.UEFIVars != "" {
		vars = filepath.Join(dir, "uefi-vars.fd")
		if err := os.Rename(imp.UEFIVars, vars); err != nil {
			return "", err
		}
	}
	cfg, err := d.importConfig(imp, src, images, vars, dir)
	if err != nil {
		return "", err
	}
	if meta := imp.Descriptor.Twinsnap; cfg.Kind == command.ConfigQEMULaunch && meta != nil && meta.Driver == string(command.DriverQEMU) {
		// The launch spec names disks by the source's paths: give the
		// source volumes their serials so the clone maps them.
		_ = meta
	}
	res, err := d.startCopy(ctx, vmCopy{
		Name: j.VMName, Dir: dir, Source: src, Config: cfg, Images: images, UEFIVars: vars,
		KeepMACs: !j.NewMACs, Start: true, Register: true, AgentOptional: imp.Foreign,
	})
	if err != nil {
		return "", err
	}
	if j.Readdress != nil {
		err := error(nil)
		if !res.AgentReady {
			err = waitAgent(ctx, api.VMRegisterRequest{Name: res.VM.Name, Driver: res.VM.Driver, QEMU: res.VM.QEMU, Libvirt: res.VM.Libvirt})
		}
		if err == nil {
			err = d.readdress(ctx, res.VM, j.Readdress)
		}
		if err != nil {
			d.unregisterQuietly(res.VM)
			if res.VM.QEMU != nil {
				d.quitQEMU(res.VM.QEMU.QMPSocket)
			}
			return "", err
		}
	}
	ok = true
	d.log.Info("imported a VM", "job", j.ID, "vm", j.VMName, "id", res.VM.ID, "disks", len(imp.Disks), "foreign", imp.Foreign, "macs", res.MACs)
	return res.VM.ID, nil
}

// importConfig returns the configuration an imported VM starts with: the
// package's own QEMU launch spec when a twinsnap system exported a bare
// QEMU VM, else a launch spec made from the descriptor (virtio disks and
// NICs, the package's CPUs, memory and firmware).
func (d *Daemon) importConfig(imp *export.Imported, src command.VM, images map[string]string, vars, dir string) (command.CapturedConfig, error) {
	if meta := imp.Descriptor.Twinsnap; meta != nil && meta.Driver == string(command.DriverQEMU) && meta.Config != "" {
		if spec, err := parseLaunchSpec(meta.Config); err == nil {
			// Give each source volume the path the spec knows it by,
			// and leave out the spec's disks the package does not hold
			// (volumes the snapshot or the export left out).
			info, err := spec.Info()
			if err == nil {
				var missing []hypervisor.LaunchDisk
				for _, ld := range info.Disks {
					if ld.Media == "cdrom" || ld.Backing || ld.ReadOnly {
						continue
					}
					found := false
					for i, v := range src.Volumes {
						if v.Serial != "" && v.Serial == ld.Serial || v.Serial == "" && v.Name == ld.Serial {
							src.Volumes[i].Path = ld.Path
							found = true
						}
					}
					if !found {
						missing = append(missing, ld)
					}
				}
				spec = withoutDisks(spec, missing)
				b, err := json.Marshal(spec)
				if err == nil {
					for _, ld := range missing {
						d.log.Info("an imported VM's configuration names a disk the package does not hold; it is left out", "disk", ld.Path, "serial", ld.Serial)
					}
					return command.CapturedConfig{Kind: command.ConfigQEMULaunch, Text: string(b)}, nil
				}
			}
		}
	}
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return command.CapturedConfig{}, fmt.Errorf("no QEMU to run the imported VM: %w", err)
	}
	desc := imp.Descriptor
	args := []string{
		"-name", desc.Name, "-machine", "pc,accel=kvm:tcg", "-m", fmt.Sprint(desc.MemoryMiB), "-smp", fmt.Sprint(desc.CPUs),
		"-nodefaults", "-display", "none",
		"-chardev", "socket,id=qmp,path=" + filepath.Join(dir, "qmp.sock") + ",server=on,wait=off", "-mon", "chardev=qmp,mode=control",
		"-chardev", "socket,id=qga,path=" + filepath.Join(dir, "qga.sock") + ",server=on,wait=off",
		"-device", "virtio-serial-pci,id=vser0", "-device", "virtserialport,chardev=qga,name=org.qemu.guest_agent.0",
		"-serial", "file:" + filepath.Join(dir, "serial.log"),
	}
	if desc.Firmware == export.FirmwareEFI {
		if vars == "" {
			return command.CapturedConfig{}, fmt.Errorf("the package boots with UEFI but carries no variable store")
		}
		args = append(args, "-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+ovmfCode, "-drive", "if=pflash,format=raw,unit=1,file="+vars)
	}
	for i, v := range src.Volumes {
		node := fmt.Sprintf("disk%d", i)
		dev := "virtio-blk-pci,drive=" + node + ",id=dev" + fmt.Sprint(i)
		if v.Serial != "" {
			dev += ",serial=" + v.Serial
		}
		if v.Boot {
			dev += ",bootindex=0"
		}
		args = append(args, "-blockdev", "driver=qcow2,node-name="+node+",file.driver=file,file.filename="+strings.ReplaceAll(images[v.ID], ",", ",,"), "-device", dev)
	}
	for i, n := range desc.NICs {
		dev := fmt.Sprintf("virtio-net-pci,netdev=net%d", i)
		if n.MAC != "" {
			dev += ",mac=" + n.MAC
		}
		args = append(args, "-netdev", fmt.Sprintf("user,id=net%d", i), "-device", dev)
	}
	b, err := json.Marshal(hypervisor.LaunchSpec{Binary: bin, Args: args})
	if err != nil {
		return command.CapturedConfig{}, err
	}
	for i := range src.Volumes {
		src.Volumes[i].Path = images[src.Volumes[i].ID]
	}
	return command.CapturedConfig{Kind: command.ConfigQEMULaunch, Text: string(b)}, nil
}

// readdress runs an imported guest's re-addressing program through the
// guest agent's guest-exec and requires it to succeed.
func (d *Daemon) readdress(ctx context.Context, vm command.VM, ra *command.Readdress) error {
	m, err := openMachine(ctx, vm)
	if err != nil {
		return fmt.Errorf("re-addressing: %w", err)
	}
	defer func() { _ = m.Close() }()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	st, err := guestagent.NewClient(m.Agent()).Run(ctx, ra.Path, ra.Args...)
	if err != nil {
		return fmt.Errorf("re-addressing with %s in the guest: %w", ra.Path, err)
	}
	if st.ExitCode != 0 {
		return fmt.Errorf("re-addressing with %s in the guest: exit %d: %s", ra.Path, st.ExitCode, strings.TrimSpace(string(st.ErrData)))
	}
	d.log.Info("re-addressed an imported guest", "vm", vm.Name, "program", ra.Path, "output", strings.TrimSpace(string(st.OutData)))
	return nil
}

// unregisterQuietly forgets a VM an import registered, best effort.
func (d *Daemon) unregisterQuietly(vm command.VM) {
	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
	defer cancel()
	if _, err := d.propose(ctx, &command.VMRemoved{ID: vm.ID}); err != nil {
		d.log.Warn("cannot unregister the VM of a failed import", "vm", vm.Name, "err", err)
	}
}

// withoutDisks removes disks from a launch spec: each -blockdev and -drive
// option that opens one of their files or defines one of their nodes, and
// each -device that attaches one of them.
func withoutDisks(spec hypervisor.LaunchSpec, disks []hypervisor.LaunchDisk) hypervisor.LaunchSpec {
	if len(disks) == 0 {
		return spec
	}
	refers := func(val string) bool {
		for _, d := range disks {
			for _, name := range []string{d.NodeName, d.DriveID} {
				if name == "" {
					continue
				}
				for _, form := range []string{"drive=" + name, `"node-name":"` + name + `"`, "node-name=" + name, "id=" + name} {
					if strings.Contains(val, form+",") || strings.HasSuffix(val, form) || strings.Contains(val, form+`"`) || strings.Contains(val, form+"}") {
						return true
					}
				}
			}
			if d.Path != "" && (strings.Contains(val, "filename="+d.Path) || strings.Contains(val, "file="+d.Path) || strings.Contains(val, `"filename":"`+d.Path+`"`)) {
				return true
			}
		}
		return false
	}
	out := spec
	out.Args = nil
	for i := 0; i < len(spec.Args); i++ {
		a := spec.Args[i]
		if (a == "-blockdev" || a == "-drive" || a == "-device") && i+1 < len(spec.Args) && refers(spec.Args[i+1]) {
			i++
			continue
		}
		out.Args = append(out.Args, a)
	}
	return out
}

// serialOf makes a disk serial from a disk's name (a package from another
// tool gives none): printable ASCII without spaces or commas, at most 20
// bytes, else "disk<i>".
func serialOf(name string, i int) string {
	var b strings.Builder
	for _, r := range name {
		if r > ' ' && r <= '~' && r != ',' && b.Len() < 20 {
			b.WriteRune(r)
		}
	}
	if b.Len() == 0 {
		return fmt.Sprintf("disk%d", i)
	}
	return b.String()
}
