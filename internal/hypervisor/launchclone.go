package hypervisor

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// CloneOptions say how a clone of a VM differs from the VM: its identity,
// its own copies of the images and UEFI variables, and its own sockets and
// log files. Paths are matched as the configuration writes them (see
// LaunchSpec.Info).
type CloneOptions struct {
	// Name is the clone's name (required).
	Name string
	// UUID is the clone's UUID; a new random one when empty.
	UUID string
	// MAC returns the clone's MAC address for each of the original's NIC
	// addresses; nil gives every NIC a RandomMAC.
	MAC func(old string) string
	// Disks maps every image file of the original (LaunchInfo.Disks, by
	// Path) to the clone's copy. A CD-ROM image that is not mapped stays
	// shared; a mapped path that the configuration does not use is an
	// error.
	Disks map[string]string
	// QMPSocket is the unix socket of the clone's QMP monitor; required
	// when the original has one. When the original has none, the clone
	// gets a QMP monitor on this socket.
	QMPSocket string
	// AgentSocket is the unix socket of the clone's guest-agent channel;
	// required when the original has one.
	AgentSocket string
	// SerialLog is the file that receives the clone's serial port; required
	// when the original logs its serial port to a file.
	SerialLog string
	// PIDFile, when set, is written by QEMU with its pid. The original's
	// -pidfile is dropped in any case.
	PIDFile string
	// UEFIVars is the clone's copy of the UEFI variable store; required
	// when the original has one (LaunchInfo.UEFIVars).
	UEFIVars string
	// Paths maps any other host path of a character device (unix sockets,
	// files, pipes, chardev log files) to the clone's. Every such path
	// must be mapped: two QEMUs on one socket or file break each other.
	Paths map[string]string
}

// qmpChardevID is the id of the QMP monitor Clone adds to a clone whose
// original has none.
const qmpChardevID = "twinsnap-qmp"

// Clone returns the launch spec of a new VM made from this one: a new
// -name (its process= suboption too, when it ends with the old name) and
// -uuid (added when missing; -smbios type=1 uuid= follows), a new mac= for
// every -device NIC and -nic (macaddr= of -net nic), the clone's copy of
// every disk (-blockdev filename, nested file.filename included, -drive
// file=, -hda and friends) and of the UEFI variable store, and its own
// QMP, guest-agent and serial-log paths (chardev path=; a socket passed as
// fd= or a /dev/fdset path, as libvirt passes them, becomes the new path).
// -daemonize, -pidfile, -incoming, -loadvm and -add-fd (descriptors are not
// inherited by a clone) are dropped; PIDFile adds a -pidfile. Values keep QEMU's quoting (",," in
// key=value lists) and JSON values their member order. Options Clone does
// not know pass through untouched; mind those that name per-VM host
// resources (a tap ifname, a VNC display, -object files).
//
// Every problem is reported at once, wrapped in ErrBadConfig: an unmapped
// disk, an unmapped socket or file, a disk on network storage (a clone
// would share it), a json: pseudo-filename, an invalid name, UUID or MAC.
func (s LaunchSpec) Clone(o CloneOptions) (LaunchSpec, error) {
	m, err := parseLaunch(s.Args)
	if err != nil {
		return LaunchSpec{}, fmt.Errorf("hypervisor: clone: %w", err)
	}
	c := &cloner{m: m, changed: map[int]bool{}, dropped: map[int]bool{}}
	if o.Name == "" || strings.ContainsAny(o.Name, "\x00\n") {
		c.fail("invalid name %q", o.Name)
	}
	uuid := o.UUID
	if uuid == "" {
		uuid = NewUUID()
	} else if !validUUID(uuid) {
		c.fail("invalid UUID %q", uuid)
	}
	c.identity(o.Name, uuid)
	c.disks(o.Disks, o.UEFIVars)
	c.macs(o.MAC)
	addQMP := c.chardevs(o)
	for _, i := range m.drops {
		c.dropped[i] = true
	}
	if err := errors.Join(c.errs...); err != nil {
		return LaunchSpec{}, fmt.Errorf("%w: clone as %s: %w", ErrBadConfig, o.Name, err)
	}

	var out []string
	if m.name < 0 {
		out = append(out, "-name", (&kvList{parts: []kvPart{{key: "guest", val: o.Name, form: kvImplied}}}).String(), "-uuid", uuid)
	}
	for i, a := range m.args {
		if c.dropped[i] {
			continue
		}
		val := a.val
		if c.changed[i] {
			val = m.vals[i].String()
		}
		if a.opt != "" {
			out = append(out, a.spelled)
		}
		if a.hasVal {
			out = append(out, val)
		}
		if i == m.name && m.uuid < 0 {
			out = append(out, "-uuid", uuid)
		}
	}
	if addQMP {
		out = append(out,
			"-chardev", "socket,id="+qmpChardevID+",path="+kvEscape(o.QMPSocket)+",server=on,wait=off",
			"-mon", "chardev="+qmpChardevID+",mode=control")
	}
	if o.PIDFile != "" {
		out = append(out, "-pidfile", o.PIDFile)
	}
	return LaunchSpec{Binary: s.Binary, Args: out, Dir: s.Dir}, nil
}

// cloner collects the edits and the problems of one Clone.
type cloner struct {
	m       *launchModel
	changed map[int]bool
	dropped map[int]bool
	errs    []error
}

// fail records a problem.
func (c *cloner) fail(format string, a ...any) {
	c.errs = append(c.errs, fmt.Errorf(format, a...))
}

// set changes a member of an option.
func (c *cloner) set(r ref, val string) {
	if !c.m.vals[r.arg].set(r.key, val) {
		c.fail("cannot rewrite %s of %s %s", r.key, c.m.args[r.arg].opt, c.m.args[r.arg].val)
		return
	}
	c.changed[r.arg] = true
}

// identity rewrites -name, -uuid and the SMBIOS system UUID.
func (c *cloner) identity(name, uuid string) {
	m := c.m
	if m.name >= 0 {
		kv := m.vals[m.name].(*kvList)
		old, _ := kv.get("guest")
		if !kv.set("guest", name) {
			kv.parts = append([]kvPart{{key: "guest", val: name, form: kvPair}}, kv.parts...)
		}
		if p, ok := kv.get("process"); ok && old != "" && strings.HasSuffix(p, old) {
			kv.set("process", strings.TrimSuffix(p, old)+name)
		}
		c.changed[m.name] = true
	}
	if m.uuid >= 0 {
		c.set(ref{arg: m.uuid}, uuid)
	}
	for _, i := range m.smbiosUUID {
		c.set(ref{arg: i, key: "uuid"}, uuid)
	}
}

// disks points every disk and the UEFI variable store at the clone's
// copies.
func (c *cloner) disks(mapping map[string]string, vars string) {
	used := map[string]bool{}
	var unmapped []string
	hasVars := false
	for _, d := range c.m.disks {
		switch {
		case d.pflash == 1:
			hasVars = true
			if vars == "" {
				c.fail("the UEFI variable store %s is not mapped", d.val)
				continue
			}
			c.set(d.ref, vars)
			continue
		case d.pflash >= 0:
			continue // firmware code: read-only, shared
		case strings.HasPrefix(d.val, "json:"):
			c.fail("disk %s: a json: pseudo-filename cannot be cloned", d.val)
			continue
		}
		np, ok := mapping[d.val]
		if !ok {
			if d.disk.Media != "cdrom" {
				unmapped = append(unmapped, d.val)
			}
			continue
		}
		used[d.val] = true
		c.set(d.ref, np)
	}
	if len(unmapped) > 0 {
		c.fail("disks not mapped to a copy: %s", strings.Join(unmapped, ", "))
	}
	for _, old := range sortedKeys(mapping) {
		if !used[old] {
			c.fail("disk %s is not in the configuration", old)
		}
	}
	if vars != "" && !hasVars {
		c.fail("a UEFI variable store is given but the VM has none")
	}
	if len(c.m.network) > 0 {
		c.fail("disks on network storage (%s): a clone would share them", strings.Join(c.m.network, ", "))
	}
}

// macs gives every NIC a new address.
func (c *cloner) macs(newMAC func(string) string) {
	seen := map[string]bool{}
	if newMAC == nil {
		newMAC = func(string) string { return uniqueMAC(seen) }
	}
	for _, r := range c.m.macs {
		mac := newMAC(r.val)
		if !validMAC(mac) {
			c.fail("invalid MAC address %q for the NIC with %s", mac, r.val)
			continue
		}
		if seen[strings.ToLower(mac)] {
			c.fail("MAC address %s given to two NICs", mac)
			continue
		}
		seen[strings.ToLower(mac)] = true
		c.set(r, mac)
	}
}

// chardevs gives the clone its own sockets and files; it reports whether
// a QMP monitor must be added.
func (c *cloner) chardevs(o CloneOptions) (addQMP bool) {
	byRole := map[string]string{roleQMP: o.QMPSocket, roleAgent: o.AgentSocket, roleSerial: o.SerialLog}
	usedRole := map[string]bool{}
	usedPath := map[string]bool{}
	for _, p := range c.m.paths {
		np, ok := "", false
		if !p.fd {
			np, ok = o.Paths[p.val]
			usedPath[p.val] = usedPath[p.val] || ok
		}
		if !ok && p.role != "" && !usedRole[p.role] && byRole[p.role] != "" {
			np, ok = byRole[p.role], true
			usedRole[p.role] = true
		}
		switch {
		case !ok && p.fd:
			c.fail("%s: an inherited descriptor (%s=%s) cannot be cloned without a path for it", p.what, p.key, p.val)
		case !ok && p.role != "":
			c.fail("%s: the %s at %s is not mapped (the clone would take it over)", p.what, p.role, p.val)
		case !ok:
			c.fail("%s: host path %s is not mapped (the clone would share it)", p.what, p.val)
		case p.key == "fd":
			kv := c.m.vals[p.arg].(*kvList)
			kv.del("fd")
			kv.add("path", np)
			c.changed[p.arg] = true
		default:
			c.set(p.ref, np)
		}
	}
	for _, old := range sortedKeys(o.Paths) {
		if !usedPath[old] {
			c.fail("path %s is not in the configuration", old)
		}
	}
	if o.QMPSocket != "" && !usedRole[roleQMP] {
		addQMP = true
		for _, p := range c.m.paths {
			if p.role == roleQMP {
				addQMP = false // mapped through Paths
			}
		}
	}
	if o.AgentSocket != "" && !usedRole[roleAgent] {
		c.fail("an agent socket is given but the VM has no guest-agent channel on a unix socket")
	}
	if o.SerialLog != "" && !usedRole[roleSerial] {
		c.fail("a serial log is given but the VM logs no serial port to a file")
	}
	return addQMP
}

// uniqueMAC returns a RandomMAC that is not in seen.
func uniqueMAC(seen map[string]bool) string {
	for {
		if m := RandomMAC(); !seen[m] {
			return m
		}
	}
}

// sortedKeys returns m's keys in order.
func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
