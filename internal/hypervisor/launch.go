package hypervisor

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrBadConfig: a VM configuration (a QEMU command line or a libvirt
// domain XML) that cannot be read or cloned as asked.
var ErrBadConfig = errors.New("hypervisor: bad VM configuration")

// LaunchSpec is how a bare QEMU process was started: what a snapshot
// records of the VM's configuration, and what StartQEMU starts. Its JSON
// field names are stable.
type LaunchSpec struct {
	// Binary is the QEMU executable.
	Binary string `json:"binary"`
	// Args are the command-line arguments after the program name.
	Args []string `json:"args"`
	// Dir is the working directory, against which relative paths in Args
	// resolve; empty means the caller's.
	Dir string `json:"dir,omitempty"`
}

// LaunchDisk is one image file a VM's configuration uses.
type LaunchDisk struct {
	// Path is the image file on the host, as the configuration names it.
	Path string `json:"path"`
	// Format is the format driver above the file ("qcow2", "raw"); empty
	// when the configuration does not say (QEMU then probes).
	Format string `json:"format,omitempty"`
	// NodeName is the block node of the format layer (-blockdev
	// node-name; libvirt's libvirt-N-format).
	NodeName string `json:"node_name,omitempty"`
	// DriveID is the -drive id.
	DriveID string `json:"drive_id,omitempty"`
	// DeviceID is the id of the guest device that uses the disk (libvirt:
	// its alias).
	DeviceID string `json:"device_id,omitempty"`
	// Serial is the guest-visible serial number.
	Serial string `json:"serial,omitempty"`
	// Target is libvirt's target device name (vda); empty for QEMU.
	Target string `json:"target,omitempty"`
	// Media is "cdrom" for CD-ROM images, else empty.
	Media string `json:"media,omitempty"`
	// ReadOnly reports a disk opened read-only.
	ReadOnly bool `json:"read_only,omitempty"`
	// Backing reports a file that is a backing image of another disk in
	// the configuration rather than the top of a guest device.
	Backing bool `json:"backing,omitempty"`
}

// LaunchInfo is what a LaunchSpec says about the VM.
type LaunchInfo struct {
	// Name is the -name guest name; empty when not set.
	Name string
	// UUID is the -uuid value; empty when not set.
	UUID string
	// Disks are the image files, pflash firmware left out, in order.
	Disks []LaunchDisk
	// UEFICode is the firmware code image (pflash unit 0, or -bios).
	UEFICode string
	// UEFIVars is the writable UEFI variable store (pflash unit 1).
	UEFIVars string
	// MACs are the NICs' MAC addresses, in order.
	MACs []string
	// QMPSocket is the unix socket of the first QMP monitor.
	QMPSocket string
	// AgentSocket is the unix socket of the guest agent's channel.
	AgentSocket string
	// SerialLog is the file that receives the first serial port.
	SerialLog string
	// Daemonize reports -daemonize.
	Daemonize bool
}

// Info reads the command line.
func (s LaunchSpec) Info() (LaunchInfo, error) {
	m, err := parseLaunch(s.Args)
	if err != nil {
		return LaunchInfo{}, err
	}
	return m.info(), nil
}

// Disks returns the image files the VM uses: every file of a -blockdev
// (key=value and JSON forms, nested file.filename included) or a -drive
// (file=), -hda and friends, and -cdrom; the UEFI pflash images are left
// out (see UEFICode and UEFIVars).
func (s LaunchSpec) Disks() ([]LaunchDisk, error) {
	i, err := s.Info()
	return i.Disks, err
}

// UEFIVars returns the writable UEFI variable store: pflash unit 1 of
// -drive if=pflash (or the second -pflash), or the file under the node
// -machine pflash1= names. It is empty for a VM without one.
func (s LaunchSpec) UEFIVars() (string, error) {
	i, err := s.Info()
	return i.UEFIVars, err
}

// UEFICode returns the firmware image: pflash unit 0 (or the node
// -machine pflash0= names), else the -bios file; empty when QEMU uses its
// default firmware.
func (s LaunchSpec) UEFICode() (string, error) {
	i, err := s.Info()
	return i.UEFICode, err
}

// MACs returns the MAC addresses of the NICs (mac= of -device and -nic,
// macaddr= of -net nic), in order.
func (s LaunchSpec) MACs() ([]string, error) {
	i, err := s.Info()
	return i.MACs, err
}

// InspectQEMU finds the QEMU process serving the QMP socket at
// qmpSocketPath and returns its pid and how it was started.
//
// It connects to the socket and reads the peer's credentials
// (SO_PEERCRED, which the kernel records when the server listens, so the
// answer does not depend on QEMU serving the connection), then closes the
// connection without sending anything: a client that holds the monitor is
// not disturbed (QEMU serves one client at a time; ours waits in the
// listen queue and is gone before it would be served). The command line
// comes from /proc/PID/cmdline, the binary from /proc/PID/exe (with a
// " (deleted)" suffix of a replaced binary removed), the working directory
// from /proc/PID/cwd.
func InspectQEMU(ctx context.Context, qmpSocketPath string) (pid int, spec LaunchSpec, err error) {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", qmpSocketPath)
	if err != nil {
		if ctx.Err() != nil {
			return 0, LaunchSpec{}, fmt.Errorf("%w: inspect QEMU at %s: %w", ErrTimeout, qmpSocketPath, err)
		}
		return 0, LaunchSpec{}, fmt.Errorf("%w: inspect QEMU at %s: %w", ErrNotFound, qmpSocketPath, err)
	}
	pid, err = peerPid(conn)
	_ = conn.Close()
	if err != nil {
		return 0, LaunchSpec{}, fmt.Errorf("hypervisor: inspect QEMU at %s: %w", qmpSocketPath, err)
	}
	spec, err = readProcess(pid)
	if err != nil {
		return 0, LaunchSpec{}, fmt.Errorf("hypervisor: inspect QEMU at %s: %w", qmpSocketPath, err)
	}
	return pid, spec, nil
}

// peerPid returns the pid of the process at the other end of a unix
// socket connection.
func peerPid(conn net.Conn) (int, error) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return 0, fmt.Errorf("not a unix socket connection (%T)", conn)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, fmt.Errorf("peer credentials: %w", err)
	}
	if cerr != nil {
		return 0, fmt.Errorf("peer credentials: %w", cerr)
	}
	if cred.Pid <= 0 {
		// The peer is in a PID namespace we cannot see into.
		return 0, fmt.Errorf("%w: the socket's owner is not visible from here (pid %d)", ErrNotFound, cred.Pid)
	}
	return int(cred.Pid), nil
}

// readProcess reads a process's command line, executable and working
// directory from /proc.
func readProcess(pid int) (LaunchSpec, error) {
	dir := "/proc/" + strconv.Itoa(pid)
	b, err := os.ReadFile(dir + "/cmdline")
	if err != nil {
		return LaunchSpec{}, fmt.Errorf("%w: process %d: %w", ErrNotFound, pid, err)
	}
	argv := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
	if len(b) == 0 || len(argv) == 0 {
		return LaunchSpec{}, fmt.Errorf("%w: process %d has no command line (exited?)", ErrNotFound, pid)
	}
	exe, err := os.Readlink(dir + "/exe")
	if err != nil {
		return LaunchSpec{}, fmt.Errorf("%w: executable of process %d: %w", ErrNotFound, pid, err)
	}
	cwd, err := os.Readlink(dir + "/cwd")
	if err != nil {
		return LaunchSpec{}, fmt.Errorf("%w: working directory of process %d: %w", ErrNotFound, pid, err)
	}
	return LaunchSpec{
		Binary: strings.TrimSuffix(exe, " (deleted)"),
		Args:   argv[1:],
		Dir:    cwd,
	}, nil
}

// RandomMAC returns a random MAC address under 52:54:00, the prefix QEMU
// and libvirt give their NICs: its first octet 0x52 has the locally
// administered bit set and the multicast bit clear, so the address is a
// unicast one no vendor owns. The three random octets come from
// crypto/rand.
func RandomMAC() string {
	var b [3]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read does not fail
	return fmt.Sprintf("52:54:00:%02x:%02x:%02x", b[0], b[1], b[2])
}

// NewUUID returns a random (version 4) UUID in canonical text form.
func NewUUID() string {
	var u [16]byte
	_, _ = rand.Read(u[:]) // crypto/rand.Read does not fail
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// validUUID reports whether s is a UUID in canonical text form.
func validUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, c := range s {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !strings.ContainsRune("0123456789abcdefABCDEF", c) {
				return false
			}
		}
	}
	return true
}

// validMAC reports whether s is a unicast MAC address (six octets).
func validMAC(s string) bool {
	hw, err := net.ParseMAC(s)
	return err == nil && len(hw) == 6 && hw[0]&1 == 0
}

// agentChannel is the virtserialport name of the QEMU guest agent.
const agentChannel = "org.qemu.guest_agent.0"

// Roles of a character device with a host path.
const (
	roleQMP    = "QMP monitor"
	roleAgent  = "guest agent"
	roleSerial = "serial port"
)

// networkBlockDrivers reach storage over the network; a clone would share
// it.
var networkBlockDrivers = map[string]bool{
	"nbd": true, "iscsi": true, "rbd": true, "gluster": true, "ssh": true,
	"nfs": true, "nvme": true, "vhost-user-blk": true, "libblkio": true,
}

// launchModel is a parsed QEMU command line and what it refers to.
type launchModel struct {
	args []qarg
	vals []optValue // the structured value of each option; nil when unused

	name, uuid int   // the -name and -uuid options, -1 when absent
	smbiosUUID []int // -smbios type=1 options with a uuid=
	daemonize  bool
	drops      []int // -daemonize, -pidfile, -incoming, -loadvm

	disks   []diskRef
	network []string // network block drivers, for errors
	macs    []ref
	paths   []pathRef
	jsonErr []error
}

// ref is a member of an option's value.
type ref struct {
	arg int
	key string
	val string
}

// diskRef is an image file in the command line.
type diskRef struct {
	ref
	disk   LaunchDisk
	pflash int // pflash unit, -1 for a disk
	// nodes are the block nodes the file is under, bottom up.
	nodes []string
}

// pathRef is a host path of a character device (a chardev, or the
// shorthand of -serial and friends).
type pathRef struct {
	ref
	what string // for errors: "chardev qmp", "-serial"
	role string // roleQMP, roleAgent, roleSerial or ""
	// fd marks a descriptor QEMU inherited instead of a path: a socket
	// passed as fd=, or a /dev/fdset/N path (-add-fd), as libvirt does.
	fd bool
}

// fdsetPrefix starts the paths of descriptors passed with -add-fd.
const fdsetPrefix = "/dev/fdset/"

// Bounds of a command line read from a snapshot: Linux limits one
// argument to 128 KiB and all of them to a quarter of the stack limit.
const (
	maxLaunchArg  = 128 << 10
	maxLaunchArgs = 8 << 20
)

// parseLaunch parses a command line. Only JSON that does not parse and a
// command line larger than Linux allows are errors: the rest of what QEMU
// would refuse is left to QEMU.
func parseLaunch(args []string) (*launchModel, error) {
	total := 0
	for _, a := range args {
		total += len(a) + 1
		if len(a) > maxLaunchArg || total > maxLaunchArgs {
			return nil, fmt.Errorf("%w: command line larger than Linux allows", ErrBadConfig)
		}
	}
	m := &launchModel{args: splitArgs(args), name: -1, uuid: -1}
	m.vals = make([]optValue, len(m.args))
	var (
		chardevs    = map[string]int{}
		qmpIDs      []string
		agentIDs    []string
		serialIDs   []string
		blockdevs   []int
		drives      []int
		devByDrive  = map[string]ref{} // drive= of a -device -> the device's arg
		pflashNodes = map[string]int{} // -machine pflashN= node -> N
		pflashNext  = 0                // the unit of the next pflash drive without one
	)
	for i, a := range m.args {
		if !a.hasVal && a.opt != "-daemonize" {
			continue
		}
		switch a.opt {
		case "":
			m.vals[i] = &plainValue{a.val}
			m.addDisk(i, "", a.val, LaunchDisk{})
		case "-name":
			m.vals[i] = parseKV(a.val, "guest")
			m.name = i
		case "-uuid":
			m.vals[i] = &plainValue{a.val}
			m.uuid = i
		case "-smbios":
			kv := parseKV(a.val, "")
			m.vals[i] = kv
			if t, _ := kv.get("type"); t == "1" {
				if _, ok := kv.get("uuid"); ok {
					m.smbiosUUID = append(m.smbiosUUID, i)
				}
			}
		case "-daemonize":
			m.daemonize = true
			m.drops = append(m.drops, i)
		case "-pidfile", "-incoming", "-loadvm", "-add-fd":
			m.drops = append(m.drops, i)
		case "-chardev":
			kv := parseKV(a.val, "backend")
			m.vals[i] = kv
			if id, ok := kv.get("id"); ok {
				chardevs[id] = i
			}
		case "-mon":
			kv := parseKV(a.val, "chardev")
			m.vals[i] = kv
			if mode, _ := kv.get("mode"); mode == "control" {
				id, _ := kv.get("chardev")
				qmpIDs = append(qmpIDs, id)
			}
		case "-qmp", "-qmp-pretty", "-serial", "-monitor", "-parallel", "-debugcon":
			cs := parseChardevSpec(a.val)
			m.vals[i] = cs
			role := ""
			switch a.opt {
			case "-qmp", "-qmp-pretty":
				role = roleQMP
			case "-serial":
				role = roleSerial
			}
			if cs.prefix == "chardev:" {
				id, _ := cs.get("id")
				switch role {
				case roleQMP:
					qmpIDs = append(qmpIDs, id)
				case roleSerial:
					serialIDs = append(serialIDs, id)
				}
				continue
			}
			if p, ok := cs.get("path"); ok {
				if role == roleSerial && cs.prefix != "file:" {
					role = "" // only a file is a serial log
				}
				if role == roleQMP && cs.prefix != "unix:" {
					role = ""
				}
				m.paths = append(m.paths, pathRef{ref: ref{arg: i, key: "path", val: p}, what: a.opt + " " + a.val, role: role})
			}
		case "-device", "-nic", "-net":
			implied := map[string]string{"-device": "driver", "-nic": "type", "-net": "type"}[a.opt]
			v, err := m.structured(i, implied, a.opt == "-device")
			if err != nil {
				continue
			}
			driver, _ := v.get(implied)
			macKey := "mac"
			if a.opt == "-net" {
				if driver != "nic" {
					continue
				}
				macKey = "macaddr"
			}
			if mac, ok := v.get(macKey); ok {
				m.macs = append(m.macs, ref{arg: i, key: macKey, val: mac})
			}
			if a.opt != "-device" {
				continue
			}
			chardev, _ := v.get("chardev")
			switch name, _ := v.get("name"); {
			case (driver == "virtserialport" || driver == "virtconsole") && name == agentChannel:
				agentIDs = append(agentIDs, chardev)
			case driver == "isa-serial" || driver == "pci-serial":
				serialIDs = append(serialIDs, chardev)
			}
			if drive, ok := v.get("drive"); ok {
				devByDrive[drive] = ref{arg: i}
			}
		case "-drive":
			m.vals[i] = parseKV(a.val, "")
			drives = append(drives, i)
		case "-blockdev":
			if _, err := m.structured(i, "", true); err == nil {
				blockdevs = append(blockdevs, i)
			}
		case "-machine", "-M":
			kv := parseKV(a.val, "type")
			m.vals[i] = kv
			for n := range 2 {
				if node, ok := kv.get("pflash" + strconv.Itoa(n)); ok {
					pflashNodes[node] = n
				}
			}
		case "-hda", "-hdb", "-hdc", "-hdd", "-fda", "-fdb", "-mtdblock", "-sd":
			m.vals[i] = &plainValue{a.val}
			m.addDisk(i, "", a.val, LaunchDisk{})
		case "-cdrom":
			m.vals[i] = &plainValue{a.val}
			m.addDisk(i, "", a.val, LaunchDisk{Media: "cdrom", ReadOnly: true})
		case "-pflash":
			// "-pflash FILE" is "-drive if=pflash,format=raw,file=FILE".
			m.vals[i] = &plainValue{a.val}
			drives = append(drives, i)
		case "-bios":
			m.vals[i] = &plainValue{a.val}
		}
	}
	if err := errors.Join(m.jsonErr...); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadConfig, err)
	}

	for _, i := range drives {
		if m.args[i].opt == "-pflash" {
			m.disks = append(m.disks, diskRef{ref: ref{arg: i, val: m.args[i].val}, disk: LaunchDisk{Path: m.args[i].val, Format: "raw"}, pflash: pflashNext})
			pflashNext++
			continue
		}
		kv := m.vals[i]
		iface, _ := kv.get("if")
		d := LaunchDisk{}
		d.Format, _ = kv.get("format")
		if d.Format == "" {
			d.Format, _ = kv.get("driver")
		}
		d.NodeName, _ = kv.get("node-name")
		d.DriveID, _ = kv.get("id")
		d.Serial, _ = kv.get("serial")
		if media, _ := kv.get("media"); media == "cdrom" {
			d.Media = "cdrom"
		}
		ro, _ := kv.get("readonly")
		d.ReadOnly = isOn(ro) || d.Media == "cdrom"
		if dev, ok := devByDrive[d.DriveID]; ok && d.DriveID != "" {
			d.DeviceID, _ = m.vals[dev.arg].get("id")
			if s, ok := m.vals[dev.arg].get("serial"); ok {
				d.Serial = s
			}
		}
		unit := -1
		if iface == "pflash" {
			unit = pflashNext
			if u, err := strconv.Atoi(valueOr(kv, "unit", "")); err == nil {
				unit = u
			}
			pflashNext = unit + 1
		}
		kv.each(func(key, val string) {
			if key != "file" && key != "filename" && !strings.HasSuffix(key, ".filename") {
				return
			}
			if unit >= 0 {
				m.disks = append(m.disks, diskRef{ref: ref{arg: i, key: key, val: val}, disk: LaunchDisk{Path: val, Format: d.Format, ReadOnly: d.ReadOnly}, pflash: unit})
				return
			}
			dd := d
			dd.Path = val
			m.disks = append(m.disks, diskRef{ref: ref{arg: i, key: key, val: val}, disk: dd, pflash: -1})
		})
		if drv, _ := kv.get("file.driver"); networkBlockDrivers[drv] {
			m.network = append(m.network, drv)
		}
	}

	m.blockdevDisks(blockdevs, devByDrive, pflashNodes)
	m.chardevPaths(chardevs, qmpIDs, agentIDs, serialIDs)
	sort.SliceStable(m.disks, func(a, b int) bool { return m.disks[a].arg < m.disks[b].arg })
	return m, nil
}

// structured parses the value of option i as a key=value list, or as JSON
// when it may be JSON and starts with "{".
func (m *launchModel) structured(i int, implied string, mayJSON bool) (optValue, error) {
	a := m.args[i]
	if mayJSON && strings.HasPrefix(strings.TrimSpace(a.val), "{") {
		v, err := parseJSONValue(a.val)
		if err != nil {
			err = fmt.Errorf("%s %s: %w", a.opt, a.val, err)
			m.jsonErr = append(m.jsonErr, err)
			return nil, err
		}
		m.vals[i] = v
		return v, nil
	}
	kv := parseKV(a.val, implied)
	m.vals[i] = kv
	return kv, nil
}

// addDisk records a plain disk image (-hda, -cdrom, a positional image).
func (m *launchModel) addDisk(i int, key, path string, d LaunchDisk) {
	d.Path = path
	m.disks = append(m.disks, diskRef{ref: ref{arg: i, key: key, val: path}, disk: d, pflash: -1})
}

// valueOr returns the value of key, or def.
func valueOr(v optValue, key, def string) string {
	if s, ok := v.get(key); ok {
		return s
	}
	return def
}

// blockdevDisks records the files of the -blockdev options. A file is in
// a protocol node ("filename"), either a node of its own that a format
// node names in its "file" member (libvirt's style), or nested in the
// format node ("file.filename"). Devices attach to the format node or to
// a filter above it.
func (m *launchModel) blockdevDisks(blockdevs []int, devByDrive map[string]ref, pflashNodes map[string]int) {
	parent := map[string]string{} // node -> the node whose "file" (or "data-file") names it
	backing := map[string]bool{}  // nodes that another node names as "backing"
	byNode := map[string]optValue{}
	for _, i := range blockdevs {
		v := m.vals[i]
		node, _ := v.get("node-name")
		byNode[node] = v
		v.each(func(key, val string) {
			switch key {
			case "file", "data-file":
				parent[val] = node
			case "backing":
				backing[val] = true
			}
			if (key == "driver" || strings.HasSuffix(key, ".driver")) && networkBlockDrivers[val] {
				m.network = append(m.network, val+" (node "+node+")")
			}
		})
	}
	for _, i := range blockdevs {
		v := m.vals[i]
		v.each(func(key, val string) {
			if key != "filename" && !strings.HasSuffix(key, ".filename") {
				return
			}
			prefix := strings.TrimSuffix(key, "filename") // "", "file.", "backing.file.", ...
			d := LaunchDisk{Path: val}
			var nodes []string
			ro, _ := v.get("read-only")
			if prefix == "" {
				own, _ := v.get("node-name")
				nodes = append(nodes, own)
				if p, ok := parent[own]; ok {
					// The format node above: its driver and its
					// read-only (libvirt sets it there).
					d.Format, _ = byNode[p].get("driver")
					d.NodeName = p
					if pro, ok := byNode[p].get("read-only"); ok {
						ro = pro
					}
					nodes = append(nodes, p)
				} else {
					d.NodeName = own
				}
			} else {
				fp := strings.TrimSuffix(prefix, "file.")
				if n, ok := v.get(prefix + "node-name"); ok {
					nodes = append(nodes, n)
				}
				d.Format, _ = v.get(fp + "driver")
				d.NodeName, _ = v.get(fp + "node-name")
				if d.NodeName == "" && fp == "" {
					d.NodeName, _ = v.get("node-name")
				}
				nodes = append(nodes, d.NodeName)
				d.Backing = strings.Contains(prefix, "backing.")
			}
			d.ReadOnly = isOn(ro)
			// Filters above the format node, and the device.
			top := d.NodeName
			for range 8 {
				p, ok := parent[top]
				if !ok {
					break
				}
				top = p
				nodes = append(nodes, p)
			}
			if backing[d.NodeName] {
				d.Backing = true
			}
			if dev, ok := devByDrive[top]; ok && !d.Backing {
				d.DeviceID, _ = m.vals[dev.arg].get("id")
				d.Serial, _ = m.vals[dev.arg].get("serial")
			}
			unit := -1
			for _, n := range nodes {
				if u, ok := pflashNodes[n]; ok && n != "" {
					unit = u
				}
			}
			m.disks = append(m.disks, diskRef{ref: ref{arg: i, key: key, val: val}, disk: d, pflash: unit, nodes: nodes})
		})
	}
}

// chardevPaths records the host paths of the -chardev options and their
// roles: the QMP monitor's socket, the guest agent's socket and the serial
// port's log file.
func (m *launchModel) chardevPaths(chardevs map[string]int, qmpIDs, agentIDs, serialIDs []string) {
	roles := map[string]string{}
	for _, id := range serialIDs {
		roles[id] = roleSerial
	}
	for _, id := range agentIDs {
		roles[id] = roleAgent
	}
	for _, id := range qmpIDs {
		roles[id] = roleQMP
	}
	for id, i := range chardevs {
		v := m.vals[i]
		backend, _ := v.get("backend")
		role := roles[id]
		what := "chardev " + id
		switch backend {
		case "socket":
			if role == roleSerial {
				role = ""
			}
			if p, ok := v.get("path"); ok {
				m.paths = append(m.paths, pathRef{ref: ref{arg: i, key: "path", val: p}, what: what, role: role, fd: strings.HasPrefix(p, fdsetPrefix)})
			} else if fd, ok := v.get("fd"); ok {
				m.paths = append(m.paths, pathRef{ref: ref{arg: i, key: "fd", val: fd}, what: what, role: role, fd: true})
			}
		case "file", "pipe":
			if role != roleSerial || backend != "file" {
				role = ""
			}
			if p, ok := v.get("path"); ok {
				m.paths = append(m.paths, pathRef{ref: ref{arg: i, key: "path", val: p}, what: what, role: role, fd: strings.HasPrefix(p, fdsetPrefix)})
			}
		}
		if p, ok := v.get("logfile"); ok {
			m.paths = append(m.paths, pathRef{ref: ref{arg: i, key: "logfile", val: p}, what: what + " log"})
		}
	}
	// Chardevs come from a map: keep the command line's order.
	sort.SliceStable(m.paths, func(i, j int) bool {
		a, b := m.paths[i], m.paths[j]
		return a.arg < b.arg || a.arg == b.arg && a.key < b.key
	})
}

// info summarises the model.
func (m *launchModel) info() LaunchInfo {
	var in LaunchInfo
	if m.name >= 0 {
		in.Name, _ = m.vals[m.name].get("guest")
	}
	if m.uuid >= 0 {
		in.UUID = m.args[m.uuid].val
	}
	for _, d := range m.disks {
		switch d.pflash {
		case -1:
			in.Disks = append(in.Disks, d.disk)
		case 0:
			in.UEFICode = d.disk.Path
		case 1:
			in.UEFIVars = d.disk.Path
		}
	}
	if in.UEFICode == "" {
		for i, a := range m.args {
			if a.opt == "-bios" && a.hasVal {
				in.UEFICode = m.args[i].val
			}
		}
	}
	for _, r := range m.macs {
		in.MACs = append(in.MACs, r.val)
	}
	for _, p := range m.paths {
		if p.fd {
			continue
		}
		switch {
		case p.role == roleQMP && in.QMPSocket == "":
			in.QMPSocket = p.val
		case p.role == roleAgent && in.AgentSocket == "":
			in.AgentSocket = p.val
		case p.role == roleSerial && in.SerialLog == "":
			in.SerialLog = p.val
		}
	}
	in.Daemonize = m.daemonize
	return in
}

// resolve returns path made absolute against dir.
func resolve(dir, path string) string {
	if path == "" || filepath.IsAbs(path) || dir == "" {
		return path
	}
	return filepath.Join(dir, path)
}
