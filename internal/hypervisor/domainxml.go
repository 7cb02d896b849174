package hypervisor

import (
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
)

// maxDomainXML bounds the size of a domain XML read from a snapshot.
const maxDomainXML = 4 << 20

// DomainCloneOptions say how a clone of a libvirt domain differs from the
// domain: its identity, its own copies of the images and the UEFI
// variables, and its own host files.
type DomainCloneOptions struct {
	// Name is the clone's domain name (required).
	Name string
	// UUID is the clone's UUID; a new random one when empty.
	UUID string
	// MAC returns the clone's MAC address for each <interface> <mac
	// address>; nil gives every interface a RandomMAC. Interfaces without
	// one get theirs from libvirt.
	MAC func(old string) string
	// Disks maps every image of the domain's disks and LUNs (DomainDisks:
	// <source file> or <source dev>, backing and data files included) to
	// the clone's copy. A CD-ROM or floppy image that is not mapped stays
	// shared; a mapped path that the XML does not use is an error.
	Disks map[string]string
	// NVRAM is the clone's copy of the UEFI variable store; required when
	// the domain has one (DomainNVRAM).
	NVRAM string
	// Paths maps the host paths of serial, console, parallel and channel
	// devices (<source path>, <log file>) to the clone's. Every one must be
	// mapped, except a channel socket libvirt made for the old domain
	// (under its channel directory, or naming the old domain), which is
	// dropped so that libvirt makes one for the clone.
	Paths map[string]string
}

// CloneDomainXML returns the XML of a new domain made from a domain's
// XML (its inactive definition is the one to keep; the live XML works
// too): a new <name> and <uuid> (added when missing; an SMBIOS system
// uuid entry follows), a new <mac address> for every interface, the
// clone's copy of every disk image and of the <os><nvram> UEFI variable
// store (added after a pflash <loader> when the XML has none, so that the
// clone keeps the variables instead of starting from the template), its
// own serial and channel files, and an empty <genid/> for libvirt to
// regenerate. Everything else is kept byte for byte: the rewrite splices
// the changed elements into the original text.
//
// The XML is untrusted: a DOCTYPE (and so any entity definition) is
// refused, and so are disks on network storage, block devices and pools
// that are not mapped (a clone would share them). Every problem is
// reported at once, wrapped in ErrBadConfig. Per-domain state that
// libvirt keys by name or UUID (a TPM's state, managed-save images,
// snapshot metadata) is not carried over; host resources the XML names
// (a tap device, a VNC port, shared directories) pass through untouched.
func CloneDomainXML(domainXML string, o DomainCloneOptions) (string, error) {
	root, err := parseDomainXML(domainXML)
	if err != nil {
		return "", err
	}
	c := &domainCloner{src: domainXML, root: root}
	if o.Name == "" || strings.ContainsAny(o.Name, "/\x00\n") {
		c.fail("invalid domain name %q", o.Name)
	}
	uuid := o.UUID
	if uuid == "" {
		uuid = NewUUID()
	} else if !validUUID(uuid) {
		c.fail("invalid UUID %q", uuid)
	}
	oldName := strings.TrimSpace(textOf(root.child("name")))
	c.identity(o.Name, uuid)
	c.disks(o.Disks)
	c.nvram(o.NVRAM)
	c.macs(o.MAC)
	c.chardevs(oldName, o.Paths)
	if err := errors.Join(c.errs...); err != nil {
		return "", fmt.Errorf("%w: clone domain %s as %s: %w", ErrBadConfig, oldName, o.Name, err)
	}
	return c.apply()
}

// DomainDisks returns the images of a domain's disks, in order: each
// <disk>'s <source file> (or <source dev> of a block disk), then its
// backing chain (<backingStore>, Backing set). Disks on network storage
// and empty CD-ROM drives are left out. NodeName is libvirt's format node
// (libvirt-N-format) when the XML is a running domain's.
func DomainDisks(domainXML string) ([]LaunchDisk, error) {
	root, err := parseDomainXML(domainXML)
	if err != nil {
		return nil, err
	}
	var out []LaunchDisk
	for _, disk := range root.child("devices").children("disk") {
		d := LaunchDisk{}
		d.Format, _ = disk.child("driver").attr("type")
		d.Serial = strings.TrimSpace(textOf(disk.child("serial")))
		d.Target, _ = disk.child("target").attr("dev")
		d.DeviceID, _ = disk.child("alias").attr("name")
		if dev, _ := disk.attr("device"); dev == "cdrom" {
			d.Media = "cdrom"
		}
		d.ReadOnly = disk.child("readonly") != nil || d.Media == "cdrom"
		for n, src := range diskSources(disk) {
			path := sourcePath(src.source)
			if path == "" {
				continue
			}
			ld := d
			if n > 0 {
				ld = LaunchDisk{Backing: true, ReadOnly: true}
				ld.Format, _ = src.layer.child("format").attr("type")
			}
			ld.Path = path
			if idx, ok := src.source.attr("index"); ok {
				ld.NodeName = "libvirt-" + idx + "-format"
			}
			out = append(out, ld)
		}
	}
	return out, nil
}

// DomainNVRAM returns the domain's UEFI variable store (<os><nvram>), or
// "" when it has none.
func DomainNVRAM(domainXML string) (string, error) {
	root, err := parseDomainXML(domainXML)
	if err != nil {
		return "", err
	}
	return nvramPath(root.child("os").child("nvram")), nil
}

// DomainMACs returns the MAC addresses of the domain's interfaces, in
// order; interfaces without one are left out.
func DomainMACs(domainXML string) ([]string, error) {
	root, err := parseDomainXML(domainXML)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, iface := range root.child("devices").children("interface") {
		if a, ok := iface.child("mac").attr("address"); ok {
			out = append(out, a)
		}
	}
	return out, nil
}

// xnode is an element of a parsed XML document with the byte offsets of
// its tags, so that a rewrite can splice into the original text.
type xnode struct {
	name  string // as written, prefix included ("qemu:commandline")
	attrs []xml.Attr
	// start and end delimit the element; startEnd ends its start tag and
	// endStart starts its end tag (both equal end for an empty-element
	// tag).
	start, startEnd, endStart, end int
	selfClosing                    bool
	text                           strings.Builder // character data directly inside
	kids                           []*xnode
}

// attr returns an unqualified attribute's value.
func (n *xnode) attr(name string) (string, bool) {
	if n == nil {
		return "", false
	}
	for _, a := range n.attrs {
		if a.Name.Space == "" && a.Name.Local == name {
			return a.Value, true
		}
	}
	return "", false
}

// child returns the first child element called name, or nil.
func (n *xnode) child(name string) *xnode {
	if n == nil {
		return nil
	}
	for _, k := range n.kids {
		if k.name == name {
			return k
		}
	}
	return nil
}

// children returns the child elements called name.
func (n *xnode) children(name string) []*xnode {
	if n == nil {
		return nil
	}
	var out []*xnode
	for _, k := range n.kids {
		if k.name == name {
			out = append(out, k)
		}
	}
	return out
}

// textOf returns the character data directly inside n.
func textOf(n *xnode) string {
	if n == nil {
		return ""
	}
	return n.text.String()
}

// parseDomainXML parses a domain XML into elements with offsets.
func parseDomainXML(s string) (*xnode, error) {
	if len(s) > maxDomainXML {
		return nil, fmt.Errorf("%w: domain XML of %d bytes (at most %d)", ErrBadConfig, len(s), maxDomainXML)
	}
	d := xml.NewDecoder(strings.NewReader(s))
	var root *xnode
	var stack []*xnode
	for {
		off0 := int(d.InputOffset())
		tok, err := d.RawToken()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%w: domain XML: %w", ErrBadConfig, err)
		}
		off1 := int(d.InputOffset())
		switch t := tok.(type) {
		case xml.StartElement:
			n := &xnode{name: qname(t.Name), attrs: t.Attr, start: off0, startEnd: off1,
				selfClosing: strings.HasSuffix(s[off0:off1], "/>")}
			switch {
			case len(stack) > 0:
				p := stack[len(stack)-1]
				p.kids = append(p.kids, n)
			case root != nil:
				return nil, fmt.Errorf("%w: domain XML: more than one root element", ErrBadConfig)
			default:
				root = n
			}
			stack = append(stack, n)
		case xml.EndElement:
			if len(stack) == 0 {
				return nil, fmt.Errorf("%w: domain XML: unbalanced end tag", ErrBadConfig)
			}
			n := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			if qname(t.Name) != n.name {
				// RawToken leaves matching the tags to us.
				return nil, fmt.Errorf("%w: domain XML: <%s> closed by </%s>", ErrBadConfig, n.name, qname(t.Name))
			}
			n.endStart, n.end = off0, off1
			if n.selfClosing {
				n.endStart = off1
			}
		case xml.CharData:
			if len(stack) > 0 {
				stack[len(stack)-1].text.Write(t)
			}
		case xml.Directive:
			return nil, fmt.Errorf("%w: domain XML: a <!%s> is refused (no DTDs or entities)", ErrBadConfig, firstWord(string(t)))
		}
	}
	if root == nil || root.name != "domain" {
		return nil, fmt.Errorf("%w: not a libvirt domain XML", ErrBadConfig)
	}
	if len(stack) > 0 {
		return nil, fmt.Errorf("%w: domain XML: unclosed <%s>", ErrBadConfig, stack[len(stack)-1].name)
	}
	return root, nil
}

// qname renders a raw name as written.
func qname(n xml.Name) string {
	if n.Space != "" {
		return n.Space + ":" + n.Local
	}
	return n.Local
}

// firstWord returns the first word of s.
func firstWord(s string) string {
	if f := strings.Fields(s); len(f) > 0 {
		return f[0]
	}
	return s
}

// diskLayer is one <source> of a disk with the element it belongs to (the
// <disk>, a <backingStore> or a <dataStore>).
type diskLayer struct {
	layer, source *xnode
}

// diskSources returns a disk's sources: its own, then those of its data
// store and backing chain, depth first.
func diskSources(disk *xnode) []diskLayer {
	var out []diskLayer
	var walk func(layer *xnode, depth int)
	walk = func(layer *xnode, depth int) {
		if layer == nil || depth > 64 {
			return
		}
		src := layer.child("source")
		if src != nil {
			out = append(out, diskLayer{layer: layer, source: src})
			walk(src.child("dataStore"), depth+1)
		}
		walk(layer.child("backingStore"), depth+1)
	}
	walk(disk, 0)
	return out
}

// sourcePath returns the host path of a disk <source>: file= or dev=.
func sourcePath(src *xnode) string {
	if f, ok := src.attr("file"); ok {
		return f
	}
	d, _ := src.attr("dev")
	return d
}

// nvramPath returns the file of an <nvram>: its text, or its <source
// file> (libvirt 8.5's form).
func nvramPath(nv *xnode) string {
	if nv == nil {
		return ""
	}
	if f, ok := nv.child("source").attr("file"); ok {
		return f
	}
	return strings.TrimSpace(textOf(nv))
}

// xedit replaces src[start:end] with text.
type xedit struct {
	start, end int
	text       string
}

// domainCloner collects the edits and problems of one CloneDomainXML.
type domainCloner struct {
	src   string
	root  *xnode
	edits []xedit
	errs  []error
}

// fail records a problem.
func (c *domainCloner) fail(format string, a ...any) {
	c.errs = append(c.errs, fmt.Errorf(format, a...))
}

// setText replaces an element's content with text.
func (c *domainCloner) setText(n *xnode, text string) {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(text)) // a strings.Builder does not fail
	if n.selfClosing {
		c.edits = append(c.edits, xedit{n.start, n.end, c.startTag(n, nil, false) + b.String() + "</" + n.name + ">"})
		return
	}
	c.edits = append(c.edits, xedit{n.startEnd, n.endStart, b.String()})
}

// setAttr rewrites an element's start tag with attribute name set to
// value.
func (c *domainCloner) setAttr(n *xnode, name, value string) {
	c.edits = append(c.edits, xedit{n.start, n.startEnd, c.startTag(n, map[string]string{name: value}, n.selfClosing)})
}

// indent returns the whitespace between the start of n's line and n, and
// where the line starts (after its newline), or "" and -1 when something
// else precedes n on its line (looking back no further than 256 bytes).
func (c *domainCloner) indent(n *xnode) (string, int) {
	lo := max(n.start-256, 0)
	line := strings.LastIndexByte(c.src[lo:n.start], '\n')
	if line < 0 {
		return "", -1
	}
	ws := c.src[lo+line+1 : n.start]
	if strings.TrimLeft(ws, " \t") != "" {
		return "", -1
	}
	return ws, lo + line + 1
}

// remove deletes an element, with its line's indentation and newline.
func (c *domainCloner) remove(n *xnode) {
	start := n.start
	if _, line := c.indent(n); line > 0 {
		start = line - 1
	}
	c.edits = append(c.edits, xedit{start, n.end, ""})
}

// insertAfter adds an element after n, on a line of its own with n's
// indentation.
func (c *domainCloner) insertAfter(n *xnode, name, text string) {
	indent, _ := c.indent(n)
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(text)) // a strings.Builder does not fail
	c.edits = append(c.edits, xedit{n.end, n.end, "\n" + indent + "<" + name + ">" + b.String() + "</" + name + ">"})
}

// startTag renders n's start tag with some attributes replaced.
func (c *domainCloner) startTag(n *xnode, set map[string]string, selfClosing bool) string {
	// Keep the tag's quotes (libvirt writes single ones); EscapeText
	// escapes both kinds.
	q := `"`
	if strings.Contains(c.src[n.start:n.startEnd], "='") {
		q = "'"
	}
	var b strings.Builder
	b.WriteString("<" + n.name)
	for _, a := range n.attrs {
		v := a.Value
		if nv, ok := set[a.Name.Local]; ok && a.Name.Space == "" {
			v = nv
		}
		b.WriteString(" " + qname(a.Name) + "=" + q)
		_ = xml.EscapeText(&b, []byte(v)) // a strings.Builder does not fail
		b.WriteString(q)
	}
	if selfClosing {
		b.WriteString("/>")
	} else {
		b.WriteString(">")
	}
	return b.String()
}

// apply splices the edits into the source.
func (c *domainCloner) apply() (string, error) {
	sort.SliceStable(c.edits, func(i, j int) bool { return c.edits[i].start < c.edits[j].start })
	var b strings.Builder
	pos := 0
	for _, e := range c.edits {
		if e.start < pos {
			return "", fmt.Errorf("hypervisor: clone domain: overlapping edits at byte %d", e.start)
		}
		b.WriteString(c.src[pos:e.start])
		b.WriteString(e.text)
		pos = e.end
	}
	b.WriteString(c.src[pos:])
	return b.String(), nil
}

// identity sets the name and UUID, the SMBIOS system UUID, and empties
// the VM generation id.
func (c *domainCloner) identity(name, uuid string) {
	r := c.root
	nameEl := r.child("name")
	if nameEl == nil {
		c.fail("the domain has no <name>")
		return
	}
	c.setText(nameEl, name)
	if u := r.child("uuid"); u != nil {
		c.setText(u, uuid)
	} else {
		c.insertAfter(nameEl, "uuid", uuid)
	}
	for _, si := range r.children("sysinfo") {
		for _, e := range si.child("system").children("entry") {
			if n, _ := e.attr("name"); n == "uuid" {
				c.setText(e, uuid)
			}
		}
	}
	if g := r.child("genid"); g != nil && strings.TrimSpace(textOf(g)) != "" {
		c.edits = append(c.edits, xedit{g.start, g.end, "<genid/>"})
	}
}

// disks points the disks at the clone's copies.
func (c *domainCloner) disks(mapping map[string]string) {
	used := map[string]bool{}
	var unmapped []string
	for _, disk := range c.root.child("devices").children("disk") {
		typ, _ := disk.attr("type")
		device, _ := disk.attr("device")
		if device == "" {
			device = "disk"
		}
		removable := device == "cdrom" || device == "floppy"
		target, _ := disk.child("target").attr("dev")
		for _, src := range diskSources(disk) {
			ltype, _ := src.layer.attr("type")
			if src.layer == disk {
				ltype = typ
			}
			switch ltype {
			case "file", "block", "":
			default:
				if !removable {
					c.fail("disk %s: a %s disk cannot be cloned (a clone would share it)", target, ltype)
				}
				continue
			}
			path := sourcePath(src.source)
			if path == "" {
				continue
			}
			np, ok := mapping[path]
			if !ok {
				if !removable {
					unmapped = append(unmapped, path)
				}
				continue
			}
			used[path] = true
			key := "file"
			if _, isFile := src.source.attr("file"); !isFile {
				key = "dev"
			}
			c.setAttr(src.source, key, np)
		}
	}
	if len(unmapped) > 0 {
		c.fail("disks not mapped to a copy: %s", strings.Join(unmapped, ", "))
	}
	for _, old := range sortedKeys(mapping) {
		if !used[old] {
			c.fail("disk %s is not in the domain", old)
		}
	}
}

// nvram points the UEFI variable store at the clone's copy.
func (c *domainCloner) nvram(path string) {
	osEl := c.root.child("os")
	nv := osEl.child("nvram")
	loader := osEl.child("loader")
	switch {
	case nv != nil && path == "":
		c.fail("the UEFI variable store %s is not mapped", nvramPath(nv))
	case nv != nil:
		if t, _ := nv.attr("type"); t != "" && t != "file" {
			c.fail("a UEFI variable store of type %s cannot be cloned", t)
			return
		}
		if src := nv.child("source"); src != nil {
			c.setAttr(src, "file", path)
			return
		}
		c.setText(nv, path)
	case path == "":
	case loader != nil:
		c.insertAfter(loader, "nvram", path)
	default:
		if fw, _ := osEl.attr("firmware"); fw == "efi" && osEl != nil {
			c.fail("the domain selects its firmware (firmware='efi') and names no <loader> to put the variable store after")
			return
		}
		c.fail("a UEFI variable store is given but the domain has none")
	}
}

// macs gives every interface a new MAC address.
func (c *domainCloner) macs(newMAC func(string) string) {
	seen := map[string]bool{}
	if newMAC == nil {
		newMAC = func(string) string { return uniqueMAC(seen) }
	}
	for _, iface := range c.root.child("devices").children("interface") {
		mac := iface.child("mac")
		old, ok := mac.attr("address")
		if !ok {
			continue
		}
		nm := newMAC(old)
		switch {
		case !validMAC(nm):
			c.fail("invalid MAC address %q for the interface with %s", nm, old)
		case seen[strings.ToLower(nm)]:
			c.fail("MAC address %s given to two interfaces", nm)
		default:
			seen[strings.ToLower(nm)] = true
			c.setAttr(mac, "address", nm)
		}
	}
}

// chardevs gives the clone its own serial, console, parallel and channel
// files.
func (c *domainCloner) chardevs(oldName string, paths map[string]string) {
	used := map[string]bool{}
	devices := c.root.child("devices")
	if devices == nil {
		return
	}
	for _, dev := range devices.kids {
		switch dev.name {
		case "serial", "console", "parallel", "channel":
		default:
			continue
		}
		typ, _ := dev.attr("type")
		what := dev.name
		if n, ok := dev.child("target").attr("name"); ok {
			what += " " + n
		}
		for _, src := range dev.children("source") {
			p, ok := src.attr("path")
			if !ok {
				continue
			}
			switch typ {
			case "file", "unix", "pipe":
			default:
				continue // a host device (dev, pty): not the VM's own file
			}
			if np, ok := paths[p]; ok {
				used[p] = true
				c.setAttr(src, "path", np)
				continue
			}
			mode, _ := src.attr("mode")
			if typ == "unix" && mode != "connect" && (strings.Contains(p, "/channel/target/") || oldName != "" && strings.Contains(p, oldName)) {
				// libvirt made it for the old domain; without a path it
				// makes one for the clone.
				c.remove(src)
				continue
			}
			c.fail("%s: host path %s is not mapped (the clone would share it)", what, p)
		}
		if lg := dev.child("log"); lg != nil {
			if f, ok := lg.attr("file"); ok {
				if np, ok := paths[f]; ok {
					used[f] = true
					c.setAttr(lg, "file", np)
				} else {
					c.fail("%s: log file %s is not mapped", what, f)
				}
			}
		}
	}
	for _, old := range sortedKeys(paths) {
		if !used[old] {
			c.fail("path %s is not in the domain", old)
		}
	}
}
