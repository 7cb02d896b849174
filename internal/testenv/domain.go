package testenv

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"
)

// MaxAgentWait bounds Domain.WaitAgent.
const MaxAgentWait = 3 * time.Minute

// agentPing is the guest agent's ping command.
const agentPing = `{"execute":"guest-ping"}`

// Domain is a libvirt-managed test guest under TCG: the test guest image
// booted directly from its kernel and initramfs, with the real qemu-ga on a
// virtio-serial channel that belongs to libvirt.
type Domain struct {
	// Name is the libvirt domain name.
	Name string
	// UUID is the domain's UUID in its canonical text form.
	UUID string
	// XML is the domain XML it was defined with.
	XML string
	// Dir holds the domain's volumes and serial console log.
	Dir string
	// SerialLog is the file that receives the guest's serial console.
	SerialLog string
	// QEMULog is libvirt's log of the domain's QEMU process (its command
	// line and its standard error).
	QEMULog string
	// MAC is the MAC address of the virtio NIC.
	MAC string
	// UEFIVars is the domain's UEFI variable store (<os><nvram>) when it
	// boots with OVMF (VMOptions.UEFI), else empty. libvirt creates it
	// from OVMFVars when the domain first starts.
	UEFIVars string
	// Disks are the volumes, the boot volume first. DeviceID is the
	// virtio-blk device's QOM id (libvirt alias "ua-disk-<serial>");
	// NodeName is the qcow2 node libvirt gave it (libvirt-<n>-format).
	Disks []Disk
	// Image is the guest image the domain boots.
	Image *GuestImage
	// Dom is the go-libvirt handle, for calls on a connection from
	// Libvirtd.Connect; its ID is that of the domain's running instance
	// at start.
	Dom libvirt.Domain

	lv *Libvirtd
}

var domainNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// StartDomain builds the guest image if needed, defines and starts a
// domain in a fresh directory, waits until its agent answers guest-ping
// through libvirt (opts.ReadyTimeout, default and at most MaxAgentWait),
// and destroys and undefines it when the test ends. A missing component
// skips the test outside CI.
func StartDomain(tb testing.TB, lv *Libvirtd, opts VMOptions) *Domain {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	img, err := BuildGuestImage(ctx)
	Need(tb, "test guest image", err)
	if opts.Name == "" {
		opts.Name = strings.Trim(strings.ToLower(regexp.MustCompile(`[^A-Za-z0-9]+`).ReplaceAllString(tb.Name(), "-")), "-")
		if len(opts.Name) > 40 {
			opts.Name = opts.Name[:40]
		}
	}
	d, err := DefineDomain(ctx, lv, img, TempDir(tb, "dom"), opts)
	Need(tb, "libvirt domain", err)
	tb.Cleanup(func() {
		// A closed daemon took its domains and their definitions with it.
		if lv.Running() {
			cctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			if err := d.Destroy(cctx); err != nil {
				tb.Errorf("destroying domain %s: %v", d.Name, err)
			}
			if err := d.Undefine(cctx); err != nil {
				tb.Errorf("undefining domain %s: %v", d.Name, err)
			}
		}
		if tb.Failed() {
			tb.Logf("serial console of domain %s:\n%s", d.Name, d.SerialTail(4096))
		}
	})
	wait := opts.ReadyTimeout
	if wait <= 0 || wait > MaxAgentWait {
		wait = MaxAgentWait
	}
	wctx, wcancel := context.WithTimeout(ctx, wait)
	defer wcancel()
	start := time.Now()
	if err := d.WaitAgent(wctx); err != nil {
		tb.Logf("serial console of domain %s:\n%s", d.Name, d.SerialTail(4096))
		tb.Fatalf("domain %s: %v", d.Name, err)
	}
	tb.Logf("domain %s: guest agent ready %s after start", d.Name, time.Since(start).Round(time.Millisecond))
	return d
}

// DefineDomain creates the domain's volumes in dir (a copy of the image's
// boot-volume template with serial "boot", unless opts.BootPath is set, and
// one ext4 qcow2 per data disk), defines a TCG domain for them on lv, and
// starts it. It does not wait for the guest agent (see WaitAgent). Of
// VMOptions it uses Name (required to be unique on lv; a random one when
// empty), DataDisks, BootPath, MemoryMiB, CPUs, MAC, UEFI and ExtraArgs
// (passed to QEMU through libvirt's qemu:commandline). On error no domain
// is left defined.
func DefineDomain(ctx context.Context, lv *Libvirtd, img *GuestImage, dir string, opts VMOptions) (*Domain, error) {
	qemu, err := LookBinary("qemu-system-x86_64")
	if err != nil {
		return nil, err
	}
	if opts.Name == "" {
		opts.Name = "tsn-" + strings.ReplaceAll(RandomMAC()[9:], ":", "")
	}
	if !domainNameRE.MatchString(opts.Name) {
		return nil, fmt.Errorf("testenv: bad domain name %q", opts.Name)
	}
	if opts.MemoryMiB == 0 {
		opts.MemoryMiB = 256
	}
	if opts.CPUs == 0 {
		opts.CPUs = 1
	}
	if opts.MAC == "" {
		opts.MAC = RandomMAC()
	}
	if opts.UEFI {
		if err := lookOVMF(); err != nil {
			return nil, err
		}
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("testenv: domain dir: %w", err)
	}
	d := &Domain{
		Name:      opts.Name,
		Dir:       dir,
		SerialLog: filepath.Join(dir, "serial.log"),
		QEMULog:   filepath.Join(lv.Dir, "var", "log", "libvirt", "qemu", opts.Name+".log"),
		MAC:       opts.MAC,
		Image:     img,
		lv:        lv,
	}
	if opts.UEFI {
		d.UEFIVars = filepath.Join(dir, "OVMF_VARS.fd")
	}

	d.Disks, err = prepareDisks(ctx, img, dir, opts)
	if err != nil {
		return nil, err
	}
	for i := range d.Disks {
		d.Disks[i].DeviceID = "ua-disk-" + d.Disks[i].Serial
	}

	x, err := domainXMLFor(lv, img, qemu, d, opts)
	if err != nil {
		return nil, err
	}
	d.XML = x
	if err := os.WriteFile(filepath.Join(dir, "domain.xml"), []byte(x), 0o644); err != nil {
		return nil, fmt.Errorf("testenv: domain XML: %w", err)
	}

	err = lv.withConn(ctx, func(l *libvirt.Libvirt) error {
		dom, err := l.DomainDefineXML(x)
		if err != nil {
			return fmt.Errorf("testenv: defining domain %s: %w", d.Name, err)
		}
		d.Dom = dom
		started, err := l.DomainCreateWithFlags(dom, 0)
		if err != nil {
			return fmt.Errorf("testenv: starting domain %s: %w\nqemu log: %s", d.Name, err, d.QEMULogTail(2048))
		}
		d.Dom = started
		live, err := l.DomainGetXMLDesc(d.Dom, 0)
		if err != nil {
			return fmt.Errorf("testenv: live XML of domain %s: %w", d.Name, err)
		}
		return d.readLiveXML(live)
	})
	if err != nil {
		if d.Dom.Name != "" {
			cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			_ = d.Destroy(cctx)
			_ = d.Undefine(cctx)
			cancel()
		}
		return nil, err
	}
	d.UUID = formatUUID(d.Dom.UUID)
	return d, nil
}

// domainXMLFor renders the domain XML.
func domainXMLFor(lv *Libvirtd, img *GuestImage, qemu string, d *Domain, opts VMOptions) (string, error) {
	x := domainXML{
		Type:   "qemu",
		Name:   d.Name,
		Memory: sizeXML{Unit: "MiB", Value: opts.MemoryMiB},
		VCPU:   opts.CPUs,
		// The fw_cfg entry puts Marker and the daemon's directory in
		// QEMU's command line, so that its processes can be found.
		Sysinfo: sysinfoXML{Type: "fwcfg", Entries: []entryXML{{Name: "opt/org.twinsnap/testenv", Value: Marker + ":" + lv.Dir}}},
		OS: osXML{
			Type:    osTypeXML{Arch: "x86_64", Machine: "pc", Value: "hvm"},
			Kernel:  img.Kernel,
			Initrd:  img.Initrd,
			Cmdline: img.Cmdline(BootSerial),
		},
		// ACPI gives the guest a calibrated TSC clock.
		Features:   featuresXML{ACPI: &struct{}{}},
		Clock:      clockXML{Offset: "utc"},
		OnPoweroff: "destroy",
		OnReboot:   "destroy", // the guest reboots on panic; like -no-reboot
		OnCrash:    "destroy",
	}
	if d.UEFIVars != "" {
		// OVMF boots the kernel from fw_cfg, as with QEMU's -kernel.
		x.OS.Loader = &loaderXML{ReadOnly: "yes", Type: "pflash", Path: OVMFCode}
		x.OS.NVRAM = &nvramXML{Template: OVMFVars, Path: d.UEFIVars}
	}
	dev := &x.Devices
	dev.Emulator = qemu
	for i, disk := range d.Disks {
		dev.Disks = append(dev.Disks, diskXML{
			Type:   "file",
			Device: "disk",
			Driver: diskDriverXML{Name: "qemu", Type: "qcow2", Discard: "unmap"},
			Source: diskSourceXML{File: disk.Path},
			Target: diskTargetXML{Dev: "vd" + string(rune('a'+i)), Bus: "virtio"},
			Serial: disk.Serial,
			Alias:  &aliasXML{Name: disk.DeviceID},
		})
	}
	if len(d.Disks) > 26 {
		return "", fmt.Errorf("testenv: domain %s: too many disks (%d)", d.Name, len(d.Disks))
	}
	dev.Controllers = []controllerXML{{Type: "usb", Model: "none"}, {Type: "virtio-serial", Index: "0"}}
	dev.Channels = []channelXML{{Type: "unix", Target: channelTargetXML{Type: "virtio", Name: "org.qemu.guest_agent.0"}}}
	dev.Interfaces = []interfaceXML{{Type: "user", MAC: macXML{Address: d.MAC}, Model: modelXML{Type: "virtio"}}}
	dev.Serials = []serialXML{{Type: "file", Source: serialSourceXML{Path: d.SerialLog}, Target: serialTargetXML{Port: "0"}}}
	dev.Memballoon = modelXML{Model: "none"}
	if len(opts.ExtraArgs) > 0 {
		cl := &qemuCommandlineXML{}
		for _, a := range opts.ExtraArgs {
			cl.Args = append(cl.Args, qemuArgXML{Value: a})
		}
		x.QEMUCommandline = cl
	}
	b, err := xml.MarshalIndent(x, "", "  ")
	if err != nil {
		return "", fmt.Errorf("testenv: domain XML: %w", err)
	}
	return string(b) + "\n", nil
}

// readLiveXML fills the disks' node names from the running domain's XML.
func (d *Domain) readLiveXML(live string) error {
	var x struct {
		Devices struct {
			Disks []struct {
				Serial string `xml:"serial"`
				Source struct {
					Index string `xml:"index,attr"`
				} `xml:"source"`
			} `xml:"disk"`
		} `xml:"devices"`
	}
	if err := xml.Unmarshal([]byte(live), &x); err != nil {
		return fmt.Errorf("testenv: live XML of domain %s: %w", d.Name, err)
	}
	for _, ld := range x.Devices.Disks {
		for i := range d.Disks {
			if d.Disks[i].Serial == ld.Serial && ld.Source.Index != "" {
				d.Disks[i].NodeName = "libvirt-" + ld.Source.Index + "-format"
			}
		}
	}
	return nil
}

// AgentCommand sends one guest-agent command (a JSON object such as
// {"execute":"guest-get-fsinfo"}) through libvirt and returns the agent's
// JSON reply. The agent's timeout is the time left before ctx's deadline
// (at least a second); without a deadline the call is bounded to a minute.
// Agent errors come back as libvirt errors (code ErrAgentUnresponsive when
// the agent is not connected yet).
func (d *Domain) AgentCommand(ctx context.Context, cmd string) (string, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Minute)
		defer cancel()
	}
	dl, _ := ctx.Deadline()
	secs := int32(time.Until(dl) / time.Second)
	if secs < 1 {
		secs = 1
	}
	var reply string
	err := d.lv.withConn(ctx, func(l *libvirt.Libvirt) error {
		out, err := l.QEMUDomainAgentCommand(d.Dom, cmd, secs, 0)
		if err != nil {
			return err
		}
		if len(out) == 0 {
			return errors.New("empty reply")
		}
		reply = out[0]
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("testenv: agent command %s on domain %s: %w", commandName(cmd), d.Name, err)
	}
	return reply, nil
}

// AgentPing sends guest-ping through libvirt.
func (d *Domain) AgentPing(ctx context.Context) error {
	reply, err := d.AgentCommand(ctx, agentPing)
	if err != nil {
		return err
	}
	var r struct {
		Return *json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal([]byte(reply), &r); err != nil || r.Return == nil {
		return fmt.Errorf("testenv: guest-ping on domain %s: unexpected reply %q", d.Name, reply)
	}
	return nil
}

// WaitAgent polls guest-ping until the agent answers, the domain stops
// running, ctx ends, or MaxAgentWait has passed.
func (d *Domain) WaitAgent(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, MaxAgentWait)
	defer cancel()
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		attempt, cancelAttempt := context.WithTimeout(ctx, 10*time.Second)
		perr := d.AgentPing(attempt)
		if perr == nil {
			cancelAttempt()
			return nil
		}
		running, serr := d.Running(attempt)
		cancelAttempt()
		if serr == nil && !running {
			return fmt.Errorf("testenv: domain %s stopped before its guest agent answered: %w\nqemu log: %s", d.Name, perr, d.QEMULogTail(1024))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("testenv: waiting for the guest agent of domain %s: %w (last: %w)\nqemu log: %s", d.Name, ctx.Err(), perr, d.QEMULogTail(1024))
		case <-t.C:
		}
	}
}

// Running reports whether the domain is running.
func (d *Domain) Running(ctx context.Context) (bool, error) {
	var state int32
	err := d.lv.withConn(ctx, func(l *libvirt.Libvirt) error {
		var err error
		state, _, err = l.DomainGetState(d.Dom, 0)
		return err
	})
	if err != nil {
		return false, fmt.Errorf("testenv: state of domain %s: %w", d.Name, err)
	}
	return libvirt.DomainState(state) == libvirt.DomainRunning, nil
}

// Destroy stops the domain (SIGTERM to QEMU, then SIGKILL). Destroying a
// domain that is not running is not an error.
func (d *Domain) Destroy(ctx context.Context) error {
	err := d.lv.withConn(ctx, func(l *libvirt.Libvirt) error { return l.DomainDestroy(d.Dom) })
	if err != nil && !isLibvirtError(err, libvirt.ErrOperationInvalid) && !libvirt.IsNotFound(err) {
		return fmt.Errorf("testenv: destroying domain %s: %w", d.Name, err)
	}
	return nil
}

// Undefine removes the domain's definition; its files stay in Dir (the
// UEFI variable store too: libvirt refuses to undefine a domain with one
// unless told what to do with it). Undefining a domain that is gone is
// not an error.
func (d *Domain) Undefine(ctx context.Context) error {
	var flags libvirt.DomainUndefineFlagsValues
	if d.UEFIVars != "" {
		flags = libvirt.DomainUndefineKeepNvram
	}
	err := d.lv.withConn(ctx, func(l *libvirt.Libvirt) error { return l.DomainUndefineFlags(d.Dom, flags) })
	if err != nil && !libvirt.IsNotFound(err) {
		return fmt.Errorf("testenv: undefining domain %s: %w", d.Name, err)
	}
	return nil
}

// Disk returns the disk with the given serial.
func (d *Domain) Disk(serial string) (Disk, bool) {
	for _, disk := range d.Disks {
		if disk.Serial == serial {
			return disk, true
		}
	}
	return Disk{}, false
}

// SerialTail returns the last n bytes of the guest's serial console.
func (d *Domain) SerialTail(n int) string {
	b, err := os.ReadFile(d.SerialLog)
	if err != nil {
		return fmt.Sprintf("(no serial log: %v)", err)
	}
	return tail(b, n)
}

// QEMULogTail returns the last n bytes of libvirt's log of the domain's
// QEMU process.
func (d *Domain) QEMULogTail(n int) string {
	b, err := os.ReadFile(d.QEMULog)
	if err != nil {
		return fmt.Sprintf("(no qemu log: %v)", err)
	}
	return tail(b, n)
}

// commandName returns the "execute" member of an agent command, for
// error messages.
func commandName(cmd string) string {
	var c struct {
		Execute string `json:"execute"`
	}
	if json.Unmarshal([]byte(cmd), &c) != nil || c.Execute == "" {
		return strconv.Quote(cmd)
	}
	return c.Execute
}

// formatUUID renders a UUID in its canonical text form.
func formatUUID(u libvirt.UUID) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// The domain XML subset the test environment writes.
type (
	domainXML struct {
		XMLName         xml.Name            `xml:"domain"`
		Type            string              `xml:"type,attr"`
		Name            string              `xml:"name"`
		Memory          sizeXML             `xml:"memory"`
		VCPU            int                 `xml:"vcpu"`
		Sysinfo         sysinfoXML          `xml:"sysinfo"`
		OS              osXML               `xml:"os"`
		Features        featuresXML         `xml:"features"`
		Clock           clockXML            `xml:"clock"`
		OnPoweroff      string              `xml:"on_poweroff"`
		OnReboot        string              `xml:"on_reboot"`
		OnCrash         string              `xml:"on_crash"`
		Devices         devicesXML          `xml:"devices"`
		QEMUCommandline *qemuCommandlineXML `xml:"http://libvirt.org/schemas/domain/qemu/1.0 commandline,omitempty"`
	}
	sizeXML struct {
		Unit  string `xml:"unit,attr"`
		Value int    `xml:",chardata"`
	}
	sysinfoXML struct {
		Type    string     `xml:"type,attr"`
		Entries []entryXML `xml:"entry"`
	}
	entryXML struct {
		Name  string `xml:"name,attr"`
		Value string `xml:",chardata"`
	}
	osXML struct {
		Type    osTypeXML  `xml:"type"`
		Loader  *loaderXML `xml:"loader"`
		NVRAM   *nvramXML  `xml:"nvram"`
		Kernel  string     `xml:"kernel"`
		Initrd  string     `xml:"initrd"`
		Cmdline string     `xml:"cmdline"`
	}
	loaderXML struct {
		ReadOnly string `xml:"readonly,attr"`
		Type     string `xml:"type,attr"`
		Path     string `xml:",chardata"`
	}
	nvramXML struct {
		Template string `xml:"template,attr"`
		Path     string `xml:",chardata"`
	}
	osTypeXML struct {
		Arch    string `xml:"arch,attr"`
		Machine string `xml:"machine,attr"`
		Value   string `xml:",chardata"`
	}
	featuresXML struct {
		ACPI *struct{} `xml:"acpi"`
	}
	clockXML struct {
		Offset string `xml:"offset,attr"`
	}
	devicesXML struct {
		Emulator    string          `xml:"emulator"`
		Disks       []diskXML       `xml:"disk"`
		Controllers []controllerXML `xml:"controller"`
		Channels    []channelXML    `xml:"channel"`
		Interfaces  []interfaceXML  `xml:"interface"`
		Serials     []serialXML     `xml:"serial"`
		Memballoon  modelXML        `xml:"memballoon"`
	}
	diskXML struct {
		Type   string        `xml:"type,attr"`
		Device string        `xml:"device,attr"`
		Driver diskDriverXML `xml:"driver"`
		Source diskSourceXML `xml:"source"`
		Target diskTargetXML `xml:"target"`
		Serial string        `xml:"serial"`
		Alias  *aliasXML     `xml:"alias"`
	}
	diskDriverXML struct {
		Name    string `xml:"name,attr"`
		Type    string `xml:"type,attr"`
		Discard string `xml:"discard,attr,omitempty"`
	}
	diskSourceXML struct {
		File string `xml:"file,attr"`
	}
	diskTargetXML struct {
		Dev string `xml:"dev,attr"`
		Bus string `xml:"bus,attr"`
	}
	aliasXML struct {
		Name string `xml:"name,attr"`
	}
	controllerXML struct {
		Type  string `xml:"type,attr"`
		Index string `xml:"index,attr,omitempty"`
		Model string `xml:"model,attr,omitempty"`
	}
	channelXML struct {
		Type   string           `xml:"type,attr"`
		Target channelTargetXML `xml:"target"`
	}
	channelTargetXML struct {
		Type string `xml:"type,attr"`
		Name string `xml:"name,attr"`
	}
	interfaceXML struct {
		Type  string   `xml:"type,attr"`
		MAC   macXML   `xml:"mac"`
		Model modelXML `xml:"model"`
	}
	macXML struct {
		Address string `xml:"address,attr"`
	}
	modelXML struct {
		Type  string `xml:"type,attr,omitempty"`
		Model string `xml:"model,attr,omitempty"`
	}
	serialXML struct {
		Type   string          `xml:"type,attr"`
		Source serialSourceXML `xml:"source"`
		Target serialTargetXML `xml:"target"`
	}
	serialSourceXML struct {
		Path string `xml:"path,attr"`
	}
	serialTargetXML struct {
		Port string `xml:"port,attr"`
	}
	qemuCommandlineXML struct {
		Args []qemuArgXML `xml:"http://libvirt.org/schemas/domain/qemu/1.0 arg"`
	}
	qemuArgXML struct {
		Value string `xml:"value,attr"`
	}
)
