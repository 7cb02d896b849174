package export

import (
	"bytes"
	"encoding/base64"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Bounds of the XML structure itself, checked before anything is decoded.
const (
	maxItems    = 1024   // rasd Items in a descriptor
	maxNetworks = 1024   // Network elements
	maxElements = 100000 // elements of any kind
	maxDepth    = 64     // element nesting
)

// ParseDescriptor reads an OVF 1.0 descriptor from untrusted input. It
// reads at most lim.MaxDescriptorBytes (plus one byte to detect more),
// refuses document type declarations and entities before decoding
// anything, bounds the counts of files, disks, items and elements while
// scanning, and then checks every reference, size and name; see the
// package's format documentation (docs/formats/export.md) for the full
// list. Each refusal wraps one of the package's sentinel errors and names
// the element and value at fault. Unknown sections and elements are
// ignored, so descriptors written by ovftool, VirtualBox or virt-v2v with
// streamOptimized VMDK disks are read as well as twinsnap's own.
func ParseDescriptor(r io.Reader, lim Limits) (*Descriptor, error) {
	lim = lim.withDefaults()
	data, err := io.ReadAll(io.LimitReader(r, lim.MaxDescriptorBytes+1))
	if err != nil {
		return nil, fmt.Errorf("export: read descriptor: %w", err)
	}
	if int64(len(data)) > lim.MaxDescriptorBytes {
		return nil, fmt.Errorf("export: descriptor: %w: larger than %d bytes", ErrTooLarge, lim.MaxDescriptorBytes)
	}
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf")) // a UTF-8 byte order mark
	if err := scanXML(data, lim); err != nil {
		return nil, fmt.Errorf("export: descriptor: %w", err)
	}
	var env xEnvelope
	if err := xml.NewDecoder(bytes.NewReader(data)).Decode(&env); err != nil {
		return nil, fmt.Errorf("export: descriptor: %w", xmlError(err))
	}
	d, err := env.descriptor(lim)
	if err != nil {
		return nil, fmt.Errorf("export: descriptor: %w", err)
	}
	return d, nil
}

// scanXML walks the token stream once, before any decoding into
// structures: it refuses directives (<!DOCTYPE, <!ENTITY) and references
// to undeclared entities with ErrEntity, and bounds nesting and the
// number of elements of each kind, so that decoding allocates little.
func scanXML(data []byte, lim Limits) error {
	dec := xml.NewDecoder(bytes.NewReader(data))
	depth, elements, roots := 0, 0, 0
	counts := map[string]int{}
	bounds := map[string]struct {
		limit int
		err   error
		what  string
	}{
		"File":                    {lim.MaxFiles, ErrTooLarge, "References/File"},
		"Disk":                    {lim.MaxDisks, ErrTooLarge, "DiskSection/Disk"},
		"Item":                    {maxItems, ErrTooLarge, "VirtualHardwareSection/Item"},
		"Network":                 {maxNetworks, ErrTooLarge, "NetworkSection/Network"},
		"VirtualSystem":           {1, ErrMalformed, "VirtualSystem (only one per package)"},
		"VirtualSystemCollection": {0, ErrMalformed, "VirtualSystemCollection (multi-VM packages)"},
	}
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return xmlError(err)
		}
		switch t := tok.(type) {
		case xml.Directive:
			kind := "directive"
			if f := strings.Fields(string(t)); len(f) > 0 {
				kind = f[0]
			}
			return fmt.Errorf("%w: <!%s …> at byte %d", ErrEntity, truncate(kind), dec.InputOffset())
		case xml.StartElement:
			depth++
			elements++
			if depth == 1 {
				roots++
				if roots > 1 {
					return fmt.Errorf("%w: more than one root element", ErrMalformed)
				}
			}
			if depth > maxDepth {
				return fmt.Errorf("%w: elements nested deeper than %d", ErrTooLarge, maxDepth)
			}
			if elements > maxElements {
				return fmt.Errorf("%w: more than %d elements", ErrTooLarge, maxElements)
			}
			if t.Name.Space == NamespaceOVF {
				if b, ok := bounds[t.Name.Local]; ok {
					counts[t.Name.Local]++
					if counts[t.Name.Local] > b.limit {
						return fmt.Errorf("%w: more than %d %s elements", b.err, b.limit, b.what)
					}
				}
			}
		case xml.EndElement:
			depth--
		}
	}
	if roots == 0 {
		return fmt.Errorf("%w: no root element", ErrMalformed)
	}
	return nil
}

// xmlError classifies a decoder error: a reference to an unknown entity
// is ErrEntity, anything else ErrMalformed.
func xmlError(err error) error {
	var se *xml.SyntaxError
	if errors.As(err, &se) {
		if strings.Contains(se.Msg, "entity") {
			return fmt.Errorf("%w: line %d: %s", ErrEntity, se.Line, se.Msg)
		}
		return fmt.Errorf("%w: XML syntax error on line %d: %s", ErrMalformed, se.Line, se.Msg)
	}
	return fmt.Errorf("%w: XML: %v", ErrMalformed, err)
}

// The shapes decoded from a descriptor. Values are kept as strings and
// parsed with messages that name the element.
type (
	xEnvelope struct {
		XMLName      xml.Name
		References   []xReferences  `xml:"http://schemas.dmtf.org/ovf/envelope/1 References"`
		DiskSections []xDiskSection `xml:"http://schemas.dmtf.org/ovf/envelope/1 DiskSection"`
		Options      []xOptions     `xml:"http://schemas.dmtf.org/ovf/envelope/1 DeploymentOptionSection"`
		Systems      []xSystem      `xml:"http://schemas.dmtf.org/ovf/envelope/1 VirtualSystem"`
	}
	xReferences struct {
		Files []xFile `xml:"http://schemas.dmtf.org/ovf/envelope/1 File"`
	}
	xFile struct {
		ID          string `xml:"http://schemas.dmtf.org/ovf/envelope/1 id,attr"`
		Href        string `xml:"http://schemas.dmtf.org/ovf/envelope/1 href,attr"`
		Size        string `xml:"http://schemas.dmtf.org/ovf/envelope/1 size,attr"`
		Compression string `xml:"http://schemas.dmtf.org/ovf/envelope/1 compression,attr"`
		ChunkSize   string `xml:"http://schemas.dmtf.org/ovf/envelope/1 chunkSize,attr"`
	}
	xDiskSection struct {
		Disks []xDisk `xml:"http://schemas.dmtf.org/ovf/envelope/1 Disk"`
	}
	xDisk struct {
		ID            string `xml:"http://schemas.dmtf.org/ovf/envelope/1 diskId,attr"`
		FileRef       string `xml:"http://schemas.dmtf.org/ovf/envelope/1 fileRef,attr"`
		Capacity      string `xml:"http://schemas.dmtf.org/ovf/envelope/1 capacity,attr"`
		CapacityUnits string `xml:"http://schemas.dmtf.org/ovf/envelope/1 capacityAllocationUnits,attr"`
		Format        string `xml:"http://schemas.dmtf.org/ovf/envelope/1 format,attr"`
		Populated     string `xml:"http://schemas.dmtf.org/ovf/envelope/1 populatedSize,attr"`
	}
	xOptions struct {
		Configurations []struct {
			ID      string `xml:"http://schemas.dmtf.org/ovf/envelope/1 id,attr"`
			Default string `xml:"http://schemas.dmtf.org/ovf/envelope/1 default,attr"`
		} `xml:"http://schemas.dmtf.org/ovf/envelope/1 Configuration"`
	}
	xSystem struct {
		ID          string          `xml:"http://schemas.dmtf.org/ovf/envelope/1 id,attr"`
		Name        []string        `xml:"http://schemas.dmtf.org/ovf/envelope/1 Name"`
		Annotations []xAnnotation   `xml:"http://schemas.dmtf.org/ovf/envelope/1 AnnotationSection"`
		OS          []xOS           `xml:"http://schemas.dmtf.org/ovf/envelope/1 OperatingSystemSection"`
		Hardware    []xHardware     `xml:"http://schemas.dmtf.org/ovf/envelope/1 VirtualHardwareSection"`
		Snapshots   []xSnapshotSect `xml:"https://twinsnap.dev/ovf/1 SnapshotSection"`
	}
	xAnnotation struct {
		Annotation []string `xml:"http://schemas.dmtf.org/ovf/envelope/1 Annotation"`
	}
	xOS struct {
		VMWOSType   string   `xml:"http://www.vmware.com/schema/ovf osType,attr"`
		Description []string `xml:"http://schemas.dmtf.org/ovf/envelope/1 Description"`
	}
	xHardware struct {
		System  []xVSSD      `xml:"http://schemas.dmtf.org/ovf/envelope/1 System"`
		Items   []xItem      `xml:"http://schemas.dmtf.org/ovf/envelope/1 Item"`
		Configs []xVMWConfig `xml:"http://www.vmware.com/schema/ovf Config"`
		Extra   []xVMWConfig `xml:"http://www.vmware.com/schema/ovf ExtraConfig"`
	}
	xVSSD struct {
		Type []string `xml:"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData VirtualSystemType"`
	}
	xVMWConfig struct {
		Key   string `xml:"http://www.vmware.com/schema/ovf key,attr"`
		Value string `xml:"http://www.vmware.com/schema/ovf value,attr"`
	}
	xItem struct {
		Configuration   string   `xml:"http://schemas.dmtf.org/ovf/envelope/1 configuration,attr"`
		Bound           string   `xml:"http://schemas.dmtf.org/ovf/envelope/1 bound,attr"`
		Boot            string   `xml:"https://twinsnap.dev/ovf/1 boot,attr"`
		Serial          string   `xml:"https://twinsnap.dev/ovf/1 serial,attr"`
		Address         string   `xml:"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData Address"`
		AllocationUnits string   `xml:"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData AllocationUnits"`
		Connection      []string `xml:"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData Connection"`
		ElementName     string   `xml:"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData ElementName"`
		HostResource    []string `xml:"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData HostResource"`
		InstanceID      string   `xml:"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData InstanceID"`
		Parent          string   `xml:"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData Parent"`
		ResourceSubType string   `xml:"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData ResourceSubType"`
		ResourceType    string   `xml:"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData ResourceType"`
		VirtualQuantity string   `xml:"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData VirtualQuantity"`
	}
	xSnapshotSect struct {
		Snapshots []xSnapshot `xml:"https://twinsnap.dev/ovf/1 Snapshot"`
	}
	xSnapshot struct {
		SnapshotID   string   `xml:"https://twinsnap.dev/ovf/1 SnapshotID"`
		SnapshotName string   `xml:"https://twinsnap.dev/ovf/1 SnapshotName"`
		VMID         string   `xml:"https://twinsnap.dev/ovf/1 VMID"`
		VMName       string   `xml:"https://twinsnap.dev/ovf/1 VMName"`
		Consistency  string   `xml:"https://twinsnap.dev/ovf/1 Consistency"`
		CapturedAt   string   `xml:"https://twinsnap.dev/ovf/1 CapturedAt"`
		SourceSystem string   `xml:"https://twinsnap.dev/ovf/1 SourceSystem"`
		Driver       string   `xml:"https://twinsnap.dev/ovf/1 Driver"`
		UEFIVarsFile string   `xml:"https://twinsnap.dev/ovf/1 UEFIVarsFile"`
		Config       []xBlock `xml:"https://twinsnap.dev/ovf/1 Config"`
	}
	xBlock struct {
		Encoding string `xml:"encoding,attr"`
		Text     string `xml:",chardata"`
	}
)

// refFile is a References/File entry while the descriptor is assembled.
type refFile struct {
	href string
	size int64
	used bool
}

// descriptor assembles and checks a Descriptor from the decoded shapes.
func (env *xEnvelope) descriptor(lim Limits) (*Descriptor, error) {
	if env.XMLName.Space != NamespaceOVF || env.XMLName.Local != "Envelope" {
		return nil, fmt.Errorf("%w: root element {%s}%s is not an OVF 1.0 Envelope (namespace %s)",
			ErrMalformed, truncate(env.XMLName.Space), truncate(env.XMLName.Local), NamespaceOVF)
	}
	if len(env.References) > 1 || len(env.DiskSections) > 1 {
		return nil, fmt.Errorf("%w: more than one References or DiskSection", ErrMalformed)
	}
	if len(env.Systems) != 1 {
		return nil, fmt.Errorf("%w: no VirtualSystem", ErrMalformed)
	}
	files, order, err := env.files()
	if err != nil {
		return nil, err
	}
	d := &Descriptor{}
	if len(env.DiskSections) == 1 {
		for _, xd := range env.DiskSections[0].Disks {
			disk, err := xd.disk(files, lim)
			if err != nil {
				return nil, err
			}
			d.Disks = append(d.Disks, disk)
		}
	}
	sys := &env.Systems[0]
	if err := sys.read(d, env.Options, files, lim); err != nil {
		return nil, err
	}
	for _, id := range order {
		if f := files[id]; !f.used {
			return nil, fmt.Errorf("%w: References/File %q (%s) is used by no disk", ErrMalformed, f.href, id)
		}
	}
	if err := validate(d, lim); err != nil {
		return nil, err
	}
	return d, nil
}

// files reads References: safe, distinct names and ids, sane sizes,
// neither compressed nor chunked.
func (env *xEnvelope) files() (map[string]*refFile, []string, error) {
	files := map[string]*refFile{}
	var order []string
	if len(env.References) == 0 {
		return files, nil, nil
	}
	names := nameSet{}
	for _, f := range env.References[0].Files {
		what := fmt.Sprintf("References/File %q", truncate(f.ID))
		if err := names.add(f.Href); err != nil {
			return nil, nil, fmt.Errorf("%s href: %w", what, err)
		}
		what = fmt.Sprintf("References/File %q", f.Href)
		if f.ID == "" {
			return nil, nil, fmt.Errorf("%w: %s: no ovf:id", ErrMalformed, what)
		}
		if _, dup := files[f.ID]; dup {
			return nil, nil, fmt.Errorf("%w: %s: duplicate ovf:id %q", ErrMalformed, what, truncate(f.ID))
		}
		if c := strings.TrimSpace(f.Compression); c != "" && c != "identity" {
			return nil, nil, fmt.Errorf("%w: %s: compression %q (compressed files are not supported)", ErrFormat, what, truncate(c))
		}
		if f.ChunkSize != "" {
			return nil, nil, fmt.Errorf("%w: %s: ovf:chunkSize (chunked files are not supported)", ErrFormat, what)
		}
		rf := &refFile{href: f.Href}
		if f.Size != "" {
			n, err := parseSize(what+" ovf:size", f.Size)
			if err != nil {
				return nil, nil, err
			}
			rf.size = n
		}
		files[f.ID] = rf
		order = append(order, f.ID)
	}
	return files, order, nil
}

// disk reads one DiskSection/Disk.
func (xd *xDisk) disk(files map[string]*refFile, lim Limits) (Disk, error) {
	if err := checkID("DiskSection/Disk", xd.ID); err != nil {
		return Disk{}, err
	}
	what := fmt.Sprintf("DiskSection/Disk %q", xd.ID)
	if xd.FileRef == "" {
		return Disk{}, fmt.Errorf("%w: %s: no ovf:fileRef (empty disks are not supported)", ErrMalformed, what)
	}
	f, ok := files[xd.FileRef]
	if !ok {
		return Disk{}, fmt.Errorf("%w: %s: ovf:fileRef %q names no References/File", ErrMalformed, what, truncate(xd.FileRef))
	}
	if f.used {
		return Disk{}, fmt.Errorf("%w: %s: file %q already belongs to another disk", ErrMalformed, what, f.href)
	}
	f.used = true
	format, ok := formatURIs[strings.TrimSpace(xd.Format)]
	if !ok {
		return Disk{}, fmt.Errorf("%w: %s: format %q (want qcow2 or streamOptimized VMDK)", ErrFormat, what, truncate(xd.Format))
	}
	n, err := parseSize(what+" ovf:capacity", xd.Capacity)
	if err != nil {
		return Disk{}, err
	}
	unit, err := parseUnits(what+" ovf:capacityAllocationUnits", xd.CapacityUnits, 1)
	if err != nil {
		return Disk{}, err
	}
	capacity, err := mulSize(what+" ovf:capacity", n, unit)
	if err != nil {
		return Disk{}, err
	}
	if capacity <= 0 || capacity > lim.MaxDiskBytes {
		return Disk{}, fmt.Errorf("%w: %s: capacity %d bytes, want 1 to %d", ErrTooLarge, what, capacity, lim.MaxDiskBytes)
	}
	var populated int64
	if xd.Populated != "" {
		if populated, err = parseSize(what+" ovf:populatedSize", xd.Populated); err != nil {
			return Disk{}, err
		}
	}
	return Disk{
		ID:             xd.ID,
		File:           f.href,
		Format:         format,
		CapacityBytes:  capacity,
		PopulatedBytes: populated,
		FileSize:       f.size,
	}, nil
}

// read fills d from the VirtualSystem: name, annotation, OS, hardware and
// the twinsnap section.
func (sys *xSystem) read(d *Descriptor, options []xOptions, files map[string]*refFile, lim Limits) error {
	d.Name = strings.TrimSpace(sys.ID)
	if len(sys.Name) > 0 && strings.TrimSpace(sys.Name[0]) != "" {
		d.Name = strings.TrimSpace(sys.Name[0])
	}
	if len(sys.Annotations) > 0 && len(sys.Annotations[0].Annotation) > 0 {
		d.Description = sys.Annotations[0].Annotation[0]
	}
	if len(sys.OS) > 0 {
		os := sys.OS[0]
		if t := strings.TrimSpace(os.VMWOSType); t != "" {
			d.OSType = t
		} else if len(os.Description) > 0 {
			d.OSType = strings.TrimSpace(os.Description[0])
		}
	}
	if len(sys.Hardware) != 1 {
		return fmt.Errorf("%w: %d VirtualHardwareSections, want 1", ErrMalformed, len(sys.Hardware))
	}
	if err := sys.Hardware[0].read(d, configuration(options), files); err != nil {
		return err
	}
	switch len(sys.Snapshots) {
	case 0:
		return nil
	case 1:
	default:
		return fmt.Errorf("%w: more than one twinsnap:SnapshotSection", ErrMalformed)
	}
	if n := len(sys.Snapshots[0].Snapshots); n != 1 {
		return fmt.Errorf("%w: twinsnap:SnapshotSection holds %d twinsnap:Snapshot elements, want 1", ErrMalformed, n)
	}
	m, err := sys.Snapshots[0].Snapshots[0].meta(files)
	if err != nil {
		return err
	}
	d.Twinsnap = m
	return nil
}

// configuration returns the deployment option whose items apply: the one
// marked default, else the first; "" when there are none.
func configuration(options []xOptions) string {
	if len(options) == 0 || len(options[0].Configurations) == 0 {
		return ""
	}
	for _, c := range options[0].Configurations {
		if strings.TrimSpace(c.Default) == "true" {
			return c.ID
		}
	}
	return options[0].Configurations[0].ID
}

func (xs *xSnapshot) meta(files map[string]*refFile) (*Meta, error) {
	t, err := parseTime(strings.TrimSpace(xs.CapturedAt))
	if err != nil {
		return nil, err
	}
	m := &Meta{
		SnapshotID:   strings.TrimSpace(xs.SnapshotID),
		SnapshotName: strings.TrimSpace(xs.SnapshotName),
		VMID:         strings.TrimSpace(xs.VMID),
		VMName:       strings.TrimSpace(xs.VMName),
		Consistency:  strings.TrimSpace(xs.Consistency),
		CapturedAt:   t,
		SourceSystem: strings.TrimSpace(xs.SourceSystem),
		Driver:       strings.TrimSpace(xs.Driver),
		UEFIVarsFile: strings.TrimSpace(xs.UEFIVarsFile),
	}
	if len(xs.Config) > 1 {
		return nil, fmt.Errorf("%w: more than one twinsnap:Config", ErrMalformed)
	}
	if len(xs.Config) == 1 {
		c := xs.Config[0]
		if c.Encoding != "base64" {
			return nil, fmt.Errorf("%w: twinsnap:Config encoding %q, want base64", ErrMalformed, truncate(c.Encoding))
		}
		b64 := strings.Join(strings.Fields(c.Text), "")
		if len(b64) > base64.StdEncoding.EncodedLen(MaxConfigBytes) {
			return nil, fmt.Errorf("%w: twinsnap:Config: more than %d bytes", ErrTooLarge, MaxConfigBytes)
		}
		raw, err := base64.StdEncoding.Strict().DecodeString(b64)
		if err != nil {
			return nil, fmt.Errorf("%w: twinsnap:Config: bad base64: %v", ErrMalformed, err)
		}
		m.Config = string(raw)
	}
	if m.UEFIVarsFile != "" {
		var found *refFile
		for _, f := range files {
			if f.href == m.UEFIVarsFile {
				found = f
			}
		}
		if found == nil {
			return nil, fmt.Errorf("%w: twinsnap:UEFIVarsFile %q is not in References", ErrMalformed, truncate(m.UEFIVarsFile))
		}
		if found.used {
			return nil, fmt.Errorf("%w: twinsnap:UEFIVarsFile %q is also a disk's file", ErrMalformed, m.UEFIVarsFile)
		}
		found.used = true
		m.UEFIVarsSize = found.size
	}
	return m, nil
}

// hwItem is an Item of the hardware section with its type parsed.
type hwItem struct {
	*xItem
	rtype int
}

// read fills d's CPUs, memory, disks' controllers and boot flags, NICs and
// firmware from the VirtualHardwareSection.
func (hw *xHardware) read(d *Descriptor, config string, files map[string]*refFile) error {
	if len(hw.System) > 0 && len(hw.System[0].Type) > 0 {
		d.SystemType = strings.TrimSpace(hw.System[0].Type[0])
	}
	byID := map[string]hwItem{}
	var items []hwItem
	for i := range hw.Items {
		it := &hw.Items[i]
		if !appliesTo(it, config) {
			continue
		}
		id := strings.TrimSpace(it.InstanceID)
		what := fmt.Sprintf("Item %q (%q)", truncate(id), truncate(strings.TrimSpace(it.ElementName)))
		if id == "" {
			return fmt.Errorf("%w: %s: no rasd:InstanceID", ErrMalformed, what)
		}
		if _, dup := byID[id]; dup {
			return fmt.Errorf("%w: %s: duplicate rasd:InstanceID", ErrMalformed, what)
		}
		rt, err := strconv.Atoi(strings.TrimSpace(it.ResourceType))
		if err != nil {
			return fmt.Errorf("%w: %s: rasd:ResourceType %q is not an integer", ErrMalformed, what, truncate(it.ResourceType))
		}
		h := hwItem{it, rt}
		byID[id] = h
		items = append(items, h)
	}
	diskIndex := map[string]int{}
	for i, k := range d.Disks {
		diskIndex[k.ID] = i
	}
	attached := make([]bool, len(d.Disks))
	cpus, mem, boots := 0, 0, 0
	for _, h := range items {
		what := fmt.Sprintf("Item %q (%q)", truncate(strings.TrimSpace(h.InstanceID)), truncate(strings.TrimSpace(h.ElementName)))
		switch h.rtype {
		case 3:
			if cpus++; cpus > 1 {
				return fmt.Errorf("%w: %s: more than one CPU item", ErrMalformed, what)
			}
			n, err := parseSize(what+" rasd:VirtualQuantity", h.VirtualQuantity)
			if err != nil {
				return err
			}
			if n < 1 || n > MaxCPUs {
				return fmt.Errorf("%w: %s: %d virtual CPUs, want 1 to %d", ErrTooLarge, what, n, MaxCPUs)
			}
			d.CPUs = int(n)
		case 4:
			if mem++; mem > 1 {
				return fmt.Errorf("%w: %s: more than one memory item", ErrMalformed, what)
			}
			mib, err := memoryMiB(what, h.xItem)
			if err != nil {
				return err
			}
			d.MemoryMiB = mib
		case 17:
			i, err := attachDisk(what, h, byID, diskIndex)
			if err != nil {
				return err
			}
			if attached[i] {
				return fmt.Errorf("%w: %s: disk %q attached twice", ErrMalformed, what, d.Disks[i].ID)
			}
			attached[i] = true
			k := &d.Disks[i]
			k.Controller = controllerKind(byID[strings.TrimSpace(h.Parent)])
			k.Name = strings.TrimSpace(h.ElementName)
			if k.Name == "" {
				k.Name = k.ID
			}
			k.Serial = strings.TrimSpace(h.Serial)
			switch strings.TrimSpace(h.Boot) {
			case "", "false":
			case "true":
				k.Boot = true
				boots++
			default:
				return fmt.Errorf("%w: %s: twinsnap:boot %q, want true or false", ErrMalformed, what, truncate(h.Boot))
			}
		case 10:
			if len(d.NICs) >= MaxNICs {
				return fmt.Errorf("%w: more than %d NICs", ErrTooLarge, MaxNICs)
			}
			nic := NIC{
				Name:  strings.TrimSpace(h.ElementName),
				Model: strings.TrimSpace(h.ResourceSubType),
			}
			if nic.Name == "" {
				nic.Name = "nic" + strconv.Itoa(len(d.NICs))
			}
			if len(h.Connection) > 0 {
				nic.Network = strings.TrimSpace(h.Connection[0])
			}
			if a := strings.TrimSpace(h.Address); a != "" {
				mac, err := parseMAC(a)
				if err != nil {
					return fmt.Errorf("%s rasd:Address: %w", what, err)
				}
				nic.MAC = mac
			}
			d.NICs = append(d.NICs, nic)
		}
	}
	if cpus == 0 || mem == 0 {
		return fmt.Errorf("%w: VirtualHardwareSection: no CPU (ResourceType 3) or memory (ResourceType 4) item", ErrMalformed)
	}
	for i, ok := range attached {
		if !ok {
			return fmt.Errorf("%w: DiskSection/Disk %q is attached by no disk item", ErrMalformed, d.Disks[i].ID)
		}
	}
	if boots == 0 && len(d.Disks) > 0 {
		d.Disks[0].Boot = true
	}
	d.Firmware = FirmwareBIOS
	for _, c := range hw.Configs {
		if strings.TrimSpace(c.Key) != "firmware" {
			continue
		}
		switch v := strings.ToLower(strings.TrimSpace(c.Value)); v {
		case FirmwareBIOS, FirmwareEFI:
			d.Firmware = v
		default:
			return fmt.Errorf("%w: vmw:Config firmware %q, want bios or efi", ErrMalformed, truncate(c.Value))
		}
	}
	// VMware's ovftool packages an EFI VM's NVRAM as a file referenced from
	// vmw:ExtraConfig; it is VMware's format, so it is accepted and ignored.
	for _, c := range hw.Extra {
		if strings.TrimSpace(c.Key) == "nvram" {
			if f, ok := files[strings.TrimPrefix(strings.TrimSpace(c.Value), "ovf:/file/")]; ok {
				f.used = true
			}
		}
	}
	return nil
}

// appliesTo reports whether an item belongs to the chosen deployment
// option and to the normal bound of ranged items.
func appliesTo(it *xItem, config string) bool {
	if b := strings.TrimSpace(it.Bound); b != "" && b != "normal" {
		return false
	}
	if it.Configuration == "" {
		return true
	}
	for _, c := range strings.Fields(it.Configuration) {
		if c == config {
			return true
		}
	}
	return false
}

// memoryMiB reads a memory item's size, rounded up to whole MiB.
func memoryMiB(what string, it *xItem) (int64, error) {
	n, err := parseSize(what+" rasd:VirtualQuantity", it.VirtualQuantity)
	if err != nil {
		return 0, err
	}
	unit, err := parseUnits(what+" rasd:AllocationUnits", it.AllocationUnits, 1<<20)
	if err != nil {
		return 0, err
	}
	b, err := mulSize(what+" memory", n, unit)
	if err != nil {
		return 0, err
	}
	mib := b >> 20
	if b&(1<<20-1) != 0 {
		mib++
	}
	if mib < MinMemoryMiB || mib > MaxMemoryMiB {
		return 0, fmt.Errorf("%w: %s: memory of %d bytes, want 1 MiB to 16 TiB", ErrTooLarge, what, b)
	}
	return mib, nil
}

// attachDisk resolves a disk item's HostResource and Parent and returns
// the index of its disk.
func attachDisk(what string, h hwItem, byID map[string]hwItem, diskIndex map[string]int) (int, error) {
	if len(h.HostResource) != 1 {
		return 0, fmt.Errorf("%w: %s: %d rasd:HostResource elements, want 1", ErrMalformed, what, len(h.HostResource))
	}
	ref := strings.TrimSpace(h.HostResource[0])
	id, ok := strings.CutPrefix(ref, "ovf:/disk/")
	if !ok {
		id, ok = strings.CutPrefix(ref, "/disk/")
	}
	if !ok {
		return 0, fmt.Errorf("%w: %s: rasd:HostResource %q, want ovf:/disk/<diskId>", ErrMalformed, what, truncate(ref))
	}
	i, ok := diskIndex[id]
	if !ok {
		return 0, fmt.Errorf("%w: %s: rasd:HostResource %q names no DiskSection/Disk", ErrMalformed, what, truncate(ref))
	}
	parent := strings.TrimSpace(h.Parent)
	p, ok := byID[parent]
	if !ok {
		return 0, fmt.Errorf("%w: %s: rasd:Parent %q names no item", ErrMalformed, what, truncate(parent))
	}
	if controllerKind(p) == "" {
		return 0, fmt.Errorf("%w: %s: rasd:Parent %q is not a disk controller (ResourceType %d)", ErrMalformed, what, truncate(parent), p.rtype)
	}
	return i, nil
}

// controllerKind maps a controller item to Disk.Controller, or "" when
// the item is not a disk controller.
func controllerKind(h hwItem) string {
	if h.xItem == nil {
		return ""
	}
	sub := strings.ToLower(strings.TrimSpace(h.ResourceSubType))
	switch h.rtype {
	case 5:
		return ControllerIDE
	case 6:
		return ControllerSCSI
	case 20:
		switch {
		case sub == "virtio":
			return ControllerVirtio
		case strings.Contains(sub, "nvme"):
			return ControllerNVMe
		default:
			return ControllerSATA
		}
	}
	return ""
}
