package export

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// XML namespaces of an OVF 1.0 descriptor and of twinsnap's own section.
const (
	// NamespaceOVF is the DMTF OVF 1.x envelope namespace (prefix ovf, and
	// the default namespace of a descriptor).
	NamespaceOVF = "http://schemas.dmtf.org/ovf/envelope/1"
	// NamespaceRASD is the CIM resource allocation namespace of hardware
	// items (prefix rasd).
	NamespaceRASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
	// NamespaceVSSD is the CIM virtual system settings namespace (prefix
	// vssd).
	NamespaceVSSD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
	// NamespaceVMW is VMware's OVF extension namespace (prefix vmw), used
	// for the firmware setting that VMware tools and virt-v2v read.
	NamespaceVMW = "http://www.vmware.com/schema/ovf"
	// NamespaceTwinsnap is the namespace of twinsnap's own section and
	// attributes (prefix twinsnap).
	NamespaceTwinsnap = "https://twinsnap.dev/ovf/1"

	namespaceCIM = "http://schemas.dmtf.org/wbem/wscim/1/common"
	namespaceXSI = "http://www.w3.org/2001/XMLSchema-instance"
)

// Disk formats (Disk.Format) and the ovf:format URIs written for them.
const (
	// FormatQCOW2 is a qcow2 image, the format of packages meant for
	// twinsnap and other QEMU systems.
	FormatQCOW2 = "qcow2"
	// FormatVMDK is a streamOptimized VMDK, the only VMDK subformat, for
	// packages meant for other hypervisors.
	FormatVMDK = "vmdk"
	// FormatURIQCOW2 is the ovf:format written for qcow2 disks: QEMU's
	// qcow2 specification.
	FormatURIQCOW2 = "https://gitlab.com/qemu-project/qemu/-/blob/master/docs/interop/qcow2.txt"
	// FormatURIVMDK is the ovf:format of streamOptimized VMDK disks that
	// ovftool, VirtualBox and virt-v2v expect.
	FormatURIVMDK = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
)

// formatURIs maps every ovf:format URI the reader accepts to its format.
var formatURIs = map[string]string{
	FormatURIQCOW2: FormatQCOW2,
	"http://www.gnome.org/~markmc/qcow-image-format.html": FormatQCOW2,
	FormatURIVMDK: FormatVMDK,
	"http://www.vmware.com/specifications/vmdk.html#streamOptimized":             FormatVMDK,
	"https://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized": FormatVMDK,
}

// Disk controllers (Disk.Controller), with how each is written.
const (
	// ControllerVirtio is virtio-blk: ResourceType 20 ("other storage
	// device") with ResourceSubType "virtio"; importers that do not know
	// it fall back to their SATA/AHCI controller.
	ControllerVirtio = "virtio"
	// ControllerSCSI is ResourceType 6 without a ResourceSubType, so that
	// each importer picks its default SCSI model.
	ControllerSCSI = "scsi"
	// ControllerIDE is ResourceType 5 with ResourceSubType "PIIX4", two
	// disks per controller.
	ControllerIDE = "ide"
	// ControllerSATA is ResourceType 20 with ResourceSubType "AHCI".
	ControllerSATA = "sata"
	// ControllerNVMe is ResourceType 20 with ResourceSubType "NVMe".
	ControllerNVMe = "nvme"
)

// Firmware kinds (Descriptor.Firmware).
const (
	// FirmwareBIOS is legacy BIOS firmware, the default.
	FirmwareBIOS = "bios"
	// FirmwareEFI is UEFI firmware.
	FirmwareEFI = "efi"
)

// Descriptor is the content of an OVF 1.0 descriptor as twinsnap reads and
// writes it: one virtual system, its disks, NICs and firmware, and
// optionally twinsnap's own metadata. The field order of Disks is the order
// of References, DiskSection and the disk items.
type Descriptor struct {
	// Name is the VM's name (VirtualSystem ovf:id and Name).
	Name string
	// Description is free text (AnnotationSection); optional.
	Description string
	// OSType identifies the guest operating system (for example a
	// libosinfo short id such as "debian12"); optional. It is written as
	// the OperatingSystemSection's Description; on reading, a vmw:osType
	// attribute takes precedence over the Description.
	OSType string
	// SystemType is the vssd:VirtualSystemType, the virtual hardware
	// family (for example "qemu", or "vmx-14" for a package meant for
	// VMware); optional, omitted when empty.
	SystemType string
	// CPUs is the number of virtual CPUs, 1 to MaxCPUs.
	CPUs int
	// MemoryMiB is the memory size in MiB, MinMemoryMiB to MaxMemoryMiB.
	MemoryMiB int64
	// Disks are the VM's disks, one file each; exactly one has Boot set.
	Disks []Disk
	// NICs are the VM's network interfaces, at most MaxNICs.
	NICs []NIC
	// Firmware is FirmwareBIOS or FirmwareEFI (written as the vmw:Config
	// key "firmware" that VMware tools and virt-v2v read); empty means BIOS
	// when writing.
	Firmware string
	// Twinsnap is twinsnap's own metadata; nil in packages other tools
	// wrote.
	Twinsnap *Meta
}

// Disk is one virtual disk and its file in the package.
type Disk struct {
	// ID is the disk's ovf:diskId, "vol-<name>" in twinsnap packages:
	// 1 to 128 of A-Z a-z 0-9 . _ -.
	ID string
	// Name is the volume's name (the disk item's rasd:ElementName).
	Name string
	// File is the disk file's name inside the package (see CheckName).
	File string
	// Format is FormatQCOW2 or FormatVMDK.
	Format string
	// CapacityBytes is the virtual size the guest sees.
	CapacityBytes int64
	// PopulatedBytes is how much of the capacity holds data; 0 if unknown.
	PopulatedBytes int64
	// FileSize is the size of the disk file in bytes; 0 if unknown.
	FileSize int64
	// Controller is the bus the disk is attached to: ControllerVirtio,
	// ControllerSCSI, ControllerIDE, ControllerSATA or ControllerNVMe.
	Controller string
	// Boot marks the disk the VM boots from.
	Boot bool
	// Serial is the disk's serial number as the guest sees it; optional.
	Serial string
}

// NIC is one network interface.
type NIC struct {
	// Name is the interface's name (rasd:ElementName), for example "nic0".
	Name string
	// MAC is a unicast MAC address, or empty to let the importer choose.
	// It is written and read in lower case with colons.
	MAC string
	// Model is the device model (rasd:ResourceSubType), for example
	// "virtio", "e1000" or "VmxNet3".
	Model string
	// Network is the logical network's name (rasd:Connection and
	// NetworkSection); optional.
	Network string
}

// Meta is twinsnap's own metadata about the snapshot a package was
// exported from. It lives in a twinsnap:SnapshotSection with
// ovf:required="false", so other importers skip it.
type Meta struct {
	// SnapshotID and SnapshotName identify the snapshot.
	SnapshotID   string
	SnapshotName string
	// VMID and VMName identify the VM the snapshot was taken of.
	VMID   string
	VMName string
	// Consistency is "application" or "crash" (or empty).
	Consistency string
	// CapturedAt is when the snapshot was taken; written in UTC with
	// nanoseconds (RFC 3339).
	CapturedAt time.Time
	// SourceSystem identifies the twinsnap system the snapshot came from.
	SourceSystem string
	// Driver is "qemu" or "libvirt" (or empty): how the VM was run, and
	// so what Config holds.
	Driver string
	// Config is the VM's configuration: the libvirt domain XML or the QEMU
	// launch spec JSON; at most MaxConfigBytes, written in base64.
	Config string
	// UEFIVarsFile is the file holding the VM's UEFI variable store
	// (requires Firmware "efi"); optional. It is listed in References.
	UEFIVarsFile string
	// UEFIVarsSize is that file's size in bytes (its References ovf:size);
	// 0 if unknown.
	UEFIVarsSize int64
}

// WriteDescriptor writes d as an OVF 1.0 descriptor. It checks d with the
// same rules ParseDescriptor applies (with default Limits) and writes
// nothing if d breaks one. The output depends on d alone: the same
// descriptor always gives the same bytes.
func WriteDescriptor(w io.Writer, d *Descriptor) error {
	if d == nil {
		return fmt.Errorf("export: write descriptor: %w: nil descriptor", ErrMalformed)
	}
	if err := validate(d, Limits{}.withDefaults()); err != nil {
		return fmt.Errorf("export: write descriptor: %w", err)
	}
	var x xmlOut
	x.buf.WriteString(`<?xml version="1.0" encoding="UTF-8"?>` + "\n")
	x.open("Envelope",
		"xmlns", NamespaceOVF,
		"xmlns:cim", namespaceCIM,
		"xmlns:ovf", NamespaceOVF,
		"xmlns:rasd", NamespaceRASD,
		"xmlns:twinsnap", NamespaceTwinsnap,
		"xmlns:vmw", NamespaceVMW,
		"xmlns:vssd", NamespaceVSSD,
		"xmlns:xsi", namespaceXSI,
		"ovf:version", "1.0")
	writeReferences(&x, d)
	writeDiskSection(&x, d)
	if nets := networks(d); len(nets) > 0 {
		x.open("NetworkSection")
		x.leaf("Info", "The list of logical networks")
		for _, n := range nets {
			x.open("Network", "ovf:name", n)
			x.leaf("Description", "The "+n+" network")
			x.close("Network")
		}
		x.close("NetworkSection")
	}
	x.open("VirtualSystem", "ovf:id", d.Name)
	x.leaf("Info", "A virtual machine")
	x.leaf("Name", d.Name)
	if d.Description != "" {
		x.open("AnnotationSection")
		x.leaf("Info", "A human-readable annotation")
		x.leaf("Annotation", d.Description)
		x.close("AnnotationSection")
	}
	x.open("OperatingSystemSection", "ovf:id", strconv.Itoa(cimOSType(d.OSType)))
	x.leaf("Info", "The kind of installed guest operating system")
	if d.OSType != "" {
		x.leaf("Description", d.OSType)
	}
	x.close("OperatingSystemSection")
	writeHardware(&x, d)
	if d.Twinsnap != nil {
		writeMeta(&x, d.Twinsnap)
	}
	x.close("VirtualSystem")
	x.close("Envelope")
	if _, err := w.Write(x.buf.Bytes()); err != nil {
		return fmt.Errorf("export: write descriptor: %w", err)
	}
	return nil
}

func writeReferences(x *xmlOut, d *Descriptor) {
	x.open("References")
	for i, disk := range d.Disks {
		x.empty("File", fileAttrs(disk.File, fileID(i), disk.FileSize)...)
	}
	if m := d.Twinsnap; m != nil && m.UEFIVarsFile != "" {
		x.empty("File", fileAttrs(m.UEFIVarsFile, fileID(len(d.Disks)), m.UEFIVarsSize)...)
	}
	x.close("References")
}

func fileAttrs(href, id string, size int64) []string {
	a := []string{"ovf:href", href, "ovf:id", id}
	if size > 0 {
		a = append(a, "ovf:size", strconv.FormatInt(size, 10))
	}
	return a
}

// fileID is the ovf:id of the i-th file in References (from 0).
func fileID(i int) string { return "file" + strconv.Itoa(i+1) }

func writeDiskSection(x *xmlOut, d *Descriptor) {
	x.open("DiskSection")
	x.leaf("Info", "Virtual disk information")
	for i, disk := range d.Disks {
		uri := FormatURIQCOW2
		if disk.Format == FormatVMDK {
			uri = FormatURIVMDK
		}
		a := []string{
			"ovf:capacity", strconv.FormatInt(disk.CapacityBytes, 10),
			"ovf:capacityAllocationUnits", "byte",
			"ovf:diskId", disk.ID,
			"ovf:fileRef", fileID(i),
			"ovf:format", uri,
		}
		if disk.PopulatedBytes > 0 {
			a = append(a, "ovf:populatedSize", strconv.FormatInt(disk.PopulatedBytes, 10))
		}
		x.empty("Disk", a...)
	}
	x.close("DiskSection")
}

// networks returns the distinct network names of d's NICs in the order
// they first appear.
func networks(d *Descriptor) []string {
	var out []string
	seen := map[string]bool{}
	for _, n := range d.NICs {
		if n.Network != "" && !seen[n.Network] {
			seen[n.Network] = true
			out = append(out, n.Network)
		}
	}
	return out
}

// cimOSType maps an OS identifier to a CIM_OperatingSystem type code for
// OperatingSystemSection's ovf:id, which OVF requires: 0 (Unknown) when
// empty, 101 ("Linux 64-Bit") for common Linux distributions, 1 (Other)
// otherwise. Readers of twinsnap packages use the Description instead.
func cimOSType(osType string) int {
	if osType == "" {
		return 0
	}
	s := strings.ToLower(osType)
	for _, p := range []string{"linux", "debian", "ubuntu", "rhel", "centos", "fedora", "rocky", "alma", "sles", "opensuse", "alpine", "archlinux", "oraclelinux"} {
		if strings.HasPrefix(s, p) {
			return 101
		}
	}
	return 1
}

// controllerSpec says how a controller kind is written.
type controllerSpec struct {
	resourceType int
	subType      string
	description  string
	slots        []int // AddressOnParent values of one controller
}

// controllerSpecs: IDE has two units per controller; SCSI skips unit 7,
// which the controller itself uses on parallel SCSI.
var controllerSpecs = map[string]controllerSpec{
	ControllerVirtio: {20, "virtio", "VirtIO block devices", seq(0, 32, -1)},
	ControllerSCSI:   {6, "", "SCSI controller", seq(0, 16, 7)},
	ControllerIDE:    {5, "PIIX4", "IDE controller", seq(0, 2, -1)},
	ControllerSATA:   {20, "AHCI", "SATA controller", seq(0, 30, -1)},
	ControllerNVMe:   {20, "NVMe", "NVMe controller", seq(0, 32, -1)},
}

// controllerOrder fixes the order controllers are written in.
var controllerOrder = []string{ControllerVirtio, ControllerSCSI, ControllerSATA, ControllerNVMe, ControllerIDE}

func seq(from, to, skip int) []int {
	var s []int
	for i := from; i < to; i++ {
		if i != skip {
			s = append(s, i)
		}
	}
	return s
}

// item is one rasd Item; fields are written in the alphabetical order the
// CIM schema requires, and only when set.
type item struct {
	attrs           []string
	address         string
	addressOnParent string
	allocationUnits string
	automatic       string
	connection      string
	description     string
	elementName     string
	hostResource    string
	instanceID      int
	parent          int
	resourceSubType string
	resourceType    int
	virtualQuantity string
}

func (x *xmlOut) item(it item) {
	x.open("Item", it.attrs...)
	x.leafIf("rasd:Address", it.address)
	x.leafIf("rasd:AddressOnParent", it.addressOnParent)
	x.leafIf("rasd:AllocationUnits", it.allocationUnits)
	x.leafIf("rasd:AutomaticAllocation", it.automatic)
	x.leafIf("rasd:Connection", it.connection)
	x.leafIf("rasd:Description", it.description)
	x.leafIf("rasd:ElementName", it.elementName)
	x.leafIf("rasd:HostResource", it.hostResource)
	x.leaf("rasd:InstanceID", strconv.Itoa(it.instanceID))
	if it.parent > 0 {
		x.leaf("rasd:Parent", strconv.Itoa(it.parent))
	}
	x.leafIf("rasd:ResourceSubType", it.resourceSubType)
	x.leaf("rasd:ResourceType", strconv.Itoa(it.resourceType))
	x.leafIf("rasd:VirtualQuantity", it.virtualQuantity)
	x.close("Item")
}

func writeHardware(x *xmlOut, d *Descriptor) {
	x.open("VirtualHardwareSection")
	x.leaf("Info", "Virtual hardware requirements")
	x.open("System")
	x.leaf("vssd:ElementName", "Virtual Hardware Family")
	x.leaf("vssd:InstanceID", "0")
	x.leaf("vssd:VirtualSystemIdentifier", d.Name)
	x.leafIf("vssd:VirtualSystemType", d.SystemType)
	x.close("System")
	id := 0
	next := func() int { id++; return id }
	x.item(item{
		allocationUnits: "hertz * 10^6",
		description:     "Number of virtual CPUs",
		elementName:     strconv.Itoa(d.CPUs) + " virtual CPU(s)",
		instanceID:      next(),
		resourceType:    3,
		virtualQuantity: strconv.Itoa(d.CPUs),
	})
	x.item(item{
		allocationUnits: "byte * 2^20",
		description:     "Memory size",
		elementName:     strconv.FormatInt(d.MemoryMiB, 10) + " MB of memory",
		instanceID:      next(),
		resourceType:    4,
		virtualQuantity: strconv.FormatInt(d.MemoryMiB, 10),
	})

	// Controllers: as many of each kind as its disks need, each disk at
	// the next free slot, in disk order.
	type attach struct{ parent, slot int }
	attached := make([]attach, len(d.Disks))
	for _, kind := range controllerOrder {
		spec := controllerSpecs[kind]
		n, ctl, used := 0, 0, 0
		for i, disk := range d.Disks {
			if disk.Controller != kind {
				continue
			}
			if ctl == 0 || used == len(spec.slots) {
				ctl, used = next(), 0
				x.item(item{
					address:         strconv.Itoa(n),
					description:     spec.description,
					elementName:     kind + "Controller" + strconv.Itoa(n),
					instanceID:      ctl,
					resourceSubType: spec.subType,
					resourceType:    spec.resourceType,
				})
				n++
			}
			attached[i] = attach{ctl, spec.slots[used]}
			used++
		}
	}
	for i, disk := range d.Disks {
		var attrs []string
		if disk.Boot {
			attrs = append(attrs, "twinsnap:boot", "true")
		}
		if disk.Serial != "" {
			attrs = append(attrs, "twinsnap:serial", disk.Serial)
		}
		x.item(item{
			attrs:           attrs,
			addressOnParent: strconv.Itoa(attached[i].slot),
			elementName:     disk.Name,
			hostResource:    "ovf:/disk/" + disk.ID,
			instanceID:      next(),
			parent:          attached[i].parent,
			resourceType:    17,
		})
	}
	for i, nic := range d.NICs {
		name := nic.Name
		if name == "" {
			name = "nic" + strconv.Itoa(i)
		}
		x.item(item{
			address:         normalMAC(nic.MAC),
			automatic:       "true",
			connection:      nic.Network,
			elementName:     name,
			instanceID:      next(),
			resourceSubType: nic.Model,
			resourceType:    10,
		})
	}
	fw := d.Firmware
	if fw == "" {
		fw = FirmwareBIOS
	}
	x.empty("vmw:Config", "ovf:required", "false", "vmw:key", "firmware", "vmw:value", fw)
	x.close("VirtualHardwareSection")
}

func writeMeta(x *xmlOut, m *Meta) {
	x.open("twinsnap:SnapshotSection", "ovf:required", "false")
	x.leaf("Info", "The twinsnap snapshot this package was exported from")
	x.open("twinsnap:Snapshot")
	x.leafIf("twinsnap:SnapshotID", m.SnapshotID)
	x.leafIf("twinsnap:SnapshotName", m.SnapshotName)
	x.leafIf("twinsnap:VMID", m.VMID)
	x.leafIf("twinsnap:VMName", m.VMName)
	x.leafIf("twinsnap:Consistency", m.Consistency)
	x.leaf("twinsnap:CapturedAt", m.CapturedAt.UTC().Format(time.RFC3339Nano))
	x.leafIf("twinsnap:SourceSystem", m.SourceSystem)
	x.leafIf("twinsnap:Driver", m.Driver)
	x.leafIf("twinsnap:UEFIVarsFile", m.UEFIVarsFile)
	if m.Config != "" {
		x.leaf("twinsnap:Config", wrap76(base64.StdEncoding.EncodeToString([]byte(m.Config))), "encoding", "base64")
	}
	x.close("twinsnap:Snapshot")
	x.close("twinsnap:SnapshotSection")
}

// wrap76 breaks s into lines of 76 characters, each on its own line, for a
// readable base64 block.
func wrap76(s string) string {
	var b strings.Builder
	b.WriteByte('\n')
	for len(s) > 76 {
		b.WriteString(s[:76])
		b.WriteByte('\n')
		s = s[76:]
	}
	b.WriteString(s)
	b.WriteByte('\n')
	return b.String()
}

// xmlOut writes indented XML into a buffer. Attributes are name/value
// pairs written in the order given, so the output is deterministic.
type xmlOut struct {
	buf   bytes.Buffer
	depth int
}

func (x *xmlOut) indent() {
	for i := 0; i < x.depth; i++ {
		x.buf.WriteString("  ")
	}
}

func (x *xmlOut) tag(name string, attrs []string) {
	x.indent()
	x.buf.WriteByte('<')
	x.buf.WriteString(name)
	for i := 0; i+1 < len(attrs); i += 2 {
		x.buf.WriteByte(' ')
		x.buf.WriteString(attrs[i])
		x.buf.WriteString(`="`)
		escapeXML(&x.buf, attrs[i+1], true)
		x.buf.WriteByte('"')
	}
}

func (x *xmlOut) open(name string, attrs ...string) {
	x.tag(name, attrs)
	x.buf.WriteString(">\n")
	x.depth++
}

func (x *xmlOut) close(name string) {
	x.depth--
	x.indent()
	x.buf.WriteString("</" + name + ">\n")
}

func (x *xmlOut) empty(name string, attrs ...string) {
	x.tag(name, attrs)
	x.buf.WriteString("/>\n")
}

func (x *xmlOut) leaf(name, text string, attrs ...string) {
	x.tag(name, attrs)
	x.buf.WriteByte('>')
	escapeXML(&x.buf, text, false)
	x.buf.WriteString("</" + name + ">\n")
}

func (x *xmlOut) leafIf(name, text string) {
	if text != "" {
		x.leaf(name, text)
	}
}

// escapeXML writes s escaped for XML text or, with attr, for a
// double-quoted attribute value (where tabs and line breaks are written as
// character references so that they survive attribute normalisation). A
// carriage return is always a reference, since XML parsers turn a literal
// one into a line feed. Validation has already refused characters XML
// cannot carry.
func escapeXML(b *bytes.Buffer, s string, attr bool) {
	for _, r := range s {
		switch {
		case r == '&':
			b.WriteString("&amp;")
		case r == '<':
			b.WriteString("&lt;")
		case r == '>':
			b.WriteString("&gt;")
		case r == '"' && attr:
			b.WriteString("&quot;")
		case r == '\r':
			b.WriteString("&#xD;")
		case r == '\n' && attr:
			b.WriteString("&#xA;")
		case r == '\t' && attr:
			b.WriteString("&#x9;")
		default:
			b.WriteRune(r)
		}
	}
}
