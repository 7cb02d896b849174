package export

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// sample returns a twinsnap descriptor with three disks (qcow2 and VMDK,
// on three kinds of controller), two NICs and, with meta, the twinsnap
// section and a UEFI variable store.
func sample(meta bool) *Descriptor {
	d := &Descriptor{
		Name:        "web01",
		Description: "Front-end web server.\nOwner: ops <ops@example.com> & \"friends\"",
		OSType:      "debian12",
		SystemType:  "qemu",
		CPUs:        4,
		MemoryMiB:   8192,
		Disks: []Disk{
			{ID: "vol-root", Name: "root", File: "web01-root.qcow2", Format: FormatQCOW2,
				CapacityBytes: 20 << 30, PopulatedBytes: 3 << 30, FileSize: 3<<30 + 4096,
				Controller: ControllerVirtio, Boot: true, Serial: "ts-root-0001"},
			{ID: "vol-data", Name: "data", File: "web01-data.vmdk", Format: FormatVMDK,
				CapacityBytes: 100 << 30, FileSize: 1 << 20, Controller: ControllerSCSI},
			{ID: "vol-logs", Name: "logs", File: "web01-logs.qcow2", Format: FormatQCOW2,
				CapacityBytes: 512 << 20, Controller: ControllerSATA, Serial: "logs"},
		},
		NICs: []NIC{
			{Name: "nic0", MAC: "52:54:00:12:34:56", Model: "virtio", Network: "frontend"},
			{Name: "nic1", Model: "e1000", Network: "backend"},
		},
		Firmware: FirmwareBIOS,
	}
	if meta {
		d.Firmware = FirmwareEFI
		d.Twinsnap = &Meta{
			SnapshotID:   "snap-0193a1b2",
			SnapshotName: "before upgrade",
			VMID:         "vm-7f3e",
			VMName:       "web01",
			Consistency:  "application",
			CapturedAt:   time.Date(2026, 11, 21, 9, 30, 15, 123456789, time.UTC),
			SourceSystem: "sys-a1b2c3",
			Driver:       "libvirt",
			Config:       "<domain type='kvm'>\n  <name>web01</name>\n  <memory unit='MiB'>8192</memory>\n</domain>\n",
			UEFIVarsFile: "web01-uefi-vars.fd",
			UEFIVarsSize: 540672,
		}
	}
	return d
}

func writeDescriptor(t testing.TB, d *Descriptor) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := WriteDescriptor(&b, d); err != nil {
		t.Fatalf("WriteDescriptor: %v", err)
	}
	return b.Bytes()
}

func parseDescriptor(t testing.TB, data []byte) *Descriptor {
	t.Helper()
	d, err := ParseDescriptor(bytes.NewReader(data), Limits{})
	if err != nil {
		t.Fatalf("ParseDescriptor: %v\n%s", err, data)
	}
	return d
}

func TestDescriptorRoundTrip(t *testing.T) {
	for _, meta := range []bool{false, true} {
		want := sample(meta)
		data := writeDescriptor(t, want)
		got := parseDescriptor(t, data)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("meta=%v: round trip differs:\n got %+v\nwant %+v", meta, got, want)
			if got.Twinsnap != nil && want.Twinsnap != nil {
				t.Errorf("meta: got %+v\nwant %+v", *got.Twinsnap, *want.Twinsnap)
			}
		}
	}
}

func TestDescriptorDeterministic(t *testing.T) {
	for _, meta := range []bool{false, true} {
		a := writeDescriptor(t, sample(meta))
		b := writeDescriptor(t, sample(meta))
		if !bytes.Equal(a, b) {
			t.Fatalf("meta=%v: two writes differ", meta)
		}
		// Reading and writing again gives the same bytes: a package can be
		// exported again unchanged.
		c := writeDescriptor(t, parseDescriptor(t, a))
		if !bytes.Equal(a, c) {
			t.Fatalf("meta=%v: write(parse(write(d))) differs from write(d):\n%s\n---\n%s", meta, a, c)
		}
	}
}

// TestDescriptorGolden pins the exact bytes twinsnap writes; a change here
// changes every package's checksum. Run with -update to accept one.
func TestDescriptorGolden(t *testing.T) {
	got := writeDescriptor(t, sample(true))
	path := filepath.Join("testdata", "twinsnap-web01.ovf")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file (run with -update to create it): %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("descriptor differs from %s (run with -update if the change is intended):\n%s", path, got)
	}
}

func TestDescriptorContent(t *testing.T) {
	s := string(writeDescriptor(t, sample(true)))
	for _, want := range []string{
		`xmlns="http://schemas.dmtf.org/ovf/envelope/1"`,
		`<File ovf:href="web01-root.qcow2" ovf:id="file1" ovf:size="3221229568"/>`,
		`<File ovf:href="web01-uefi-vars.fd" ovf:id="file4" ovf:size="540672"/>`,
		`ovf:capacity="21474836480" ovf:capacityAllocationUnits="byte" ovf:diskId="vol-root" ovf:fileRef="file1" ovf:format="` + FormatURIQCOW2 + `" ovf:populatedSize="3221225472"`,
		`ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"`,
		`<rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>`,
		`<rasd:VirtualQuantity>8192</rasd:VirtualQuantity>`,
		`<rasd:HostResource>ovf:/disk/vol-root</rasd:HostResource>`,
		`<rasd:Address>52:54:00:12:34:56</rasd:Address>`,
		`<vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>`,
		`<twinsnap:SnapshotSection ovf:required="false">`,
		`<twinsnap:CapturedAt>2026-11-21T09:30:15.123456789Z</twinsnap:CapturedAt>`,
		`<Annotation>Front-end web server.` + "\n" + `Owner: ops &lt;ops@example.com&gt; &amp; "friends"</Annotation>`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("descriptor lacks %s", want)
		}
	}
	// InstanceID and Parent are integers.
	for _, line := range strings.Split(s, "\n") {
		for _, tag := range []string{"rasd:InstanceID", "rasd:Parent"} {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "<"+tag+">"); ok {
				v = strings.TrimSuffix(v, "</"+tag+">")
				if strings.Trim(v, "0123456789") != "" {
					t.Errorf("%s %q is not an integer", tag, v)
				}
			}
		}
	}
}

func TestWriteDescriptorRefuses(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(d *Descriptor)
		want   error
		msg    string
	}{
		{"unsafe file", func(d *Descriptor) { d.Disks[1].File = "../x.vmdk" }, ErrUnsafeName, "path traversal"},
		{"duplicate file", func(d *Descriptor) { d.Disks[1].File = "WEB01-ROOT.qcow2" }, ErrUnsafeName, "case-insensitive"},
		{"raw format", func(d *Descriptor) { d.Disks[0].Format = "raw" }, ErrFormat, `"raw"`},
		{"two boot disks", func(d *Descriptor) { d.Disks[2].Boot = true }, ErrMalformed, "2 disks marked as boot"},
		{"no boot disk", func(d *Descriptor) { d.Disks[0].Boot = false }, ErrMalformed, "0 disks marked as boot"},
		{"bad controller", func(d *Descriptor) { d.Disks[0].Controller = "floppy" }, ErrMalformed, `"floppy"`},
		{"zero CPUs", func(d *Descriptor) { d.CPUs = 0 }, ErrTooLarge, "0 virtual CPUs"},
		{"multicast MAC", func(d *Descriptor) { d.NICs[0].MAC = "01:00:5e:00:00:01" }, ErrMalformed, "multicast"},
		{"vars without EFI", func(d *Descriptor) { d.Twinsnap.UEFIVarsFile = "v.fd"; d.Firmware = FirmwareBIOS }, ErrMalformed, "want efi"},
		{"huge config", func(d *Descriptor) { d.Twinsnap.Config = strings.Repeat("x", MaxConfigBytes+1) }, ErrTooLarge, "twinsnap:Config"},
		{"control char in name", func(d *Descriptor) { d.Name = "web\x0101" }, ErrMalformed, "non-printing"},
		{"bad disk id", func(d *Descriptor) { d.Disks[0].ID = "vol root" }, ErrMalformed, "not allowed"},
		{"duplicate disk id", func(d *Descriptor) { d.Disks[1].ID = "vol-root" }, ErrMalformed, "duplicate disk id"},
	} {
		d := sample(true)
		tc.change(d)
		var b bytes.Buffer
		err := WriteDescriptor(&b, d)
		if !errors.Is(err, tc.want) || !strings.Contains(fmtErr(err), tc.msg) {
			t.Errorf("%s: got %v, want %v containing %q", tc.name, err, tc.want, tc.msg)
		}
		if b.Len() != 0 {
			t.Errorf("%s: wrote %d bytes despite the error", tc.name, b.Len())
		}
	}
}

func fmtErr(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func TestParseForeignOVFTool(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "foreign-ovftool.ovf"))
	if err != nil {
		t.Fatal(err)
	}
	d := parseDescriptor(t, data)
	want := &Descriptor{
		Name:        "legacy-app01",
		Description: "Legacy application server, exported from vSphere.",
		OSType:      "rhel8_64Guest",
		SystemType:  "vmx-14",
		CPUs:        2,
		MemoryMiB:   6144,
		Disks: []Disk{
			{ID: "vmdisk1", Name: "Hard disk 1", File: "legacy-app01-disk1.vmdk", Format: FormatVMDK,
				CapacityBytes: 40 << 30, PopulatedBytes: 7_751_073_792, FileSize: 2_919_458_304,
				Controller: ControllerSCSI, Boot: true},
			{ID: "vmdisk2", Name: "Hard disk 2", File: "legacy-app01-disk2.vmdk", Format: FormatVMDK,
				CapacityBytes: 200 << 30, PopulatedBytes: 0, FileSize: 68_608,
				Controller: ControllerSATA},
		},
		NICs: []NIC{
			{Name: "Network adapter 1", Model: "VmxNet3", Network: "VM Network"},
			{Name: "Network adapter 2", MAC: "00:50:56:9a:1b:2c", Model: "E1000", Network: "Backup Network"},
		},
		Firmware: FirmwareEFI,
	}
	if !reflect.DeepEqual(d, want) {
		t.Fatalf("foreign descriptor:\n got %+v\nwant %+v", d, want)
	}
	// It writes and reads back unchanged, as twinsnap's own do.
	if again := parseDescriptor(t, writeDescriptor(t, d)); !reflect.DeepEqual(again, d) {
		t.Fatalf("re-written foreign descriptor differs:\n got %+v\nwant %+v", again, d)
	}
}

// TestParseVirtualBoxStyle reads the dialect VirtualBox writes: memory in
// "MegaBytes", MACs as 12 hex digits, AHCI and PIIX4 controllers, no file
// sizes, integer ids.
func TestParseVirtualBoxStyle(t *testing.T) {
	const vbox = `<?xml version="1.0"?>
<Envelope ovf:version="1.0" xml:lang="en-US" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:vbox="http://www.virtualbox.org/ovf/machine">
  <References>
    <File ovf:id="file1" ovf:href="alpine-disk001.vmdk"/>
  </References>
  <DiskSection>
    <Info>List of the virtual disks used in the package</Info>
    <Disk ovf:capacity="8589934592" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" vbox:uuid="0b4f1c8e-0000-4000-8000-000000000001"/>
  </DiskSection>
  <NetworkSection>
    <Info>Logical networks used in the package</Info>
    <Network ovf:name="NAT"><Description>Logical network used by this appliance.</Description></Network>
  </NetworkSection>
  <VirtualSystem ovf:id="alpine">
    <Info>A virtual machine</Info>
    <OperatingSystemSection ovf:id="101">
      <Info>The kind of installed guest operating system</Info>
      <Description>Linux26_64</Description>
      <vbox:OSType ovf:required="false">Linux26_64</vbox:OSType>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements for a virtual machine</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>alpine</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>virtualbox-2.2</vssd:VirtualSystemType>
      </System>
      <Item><rasd:Caption>1 virtual CPU</rasd:Caption><rasd:Description>Number of virtual CPUs</rasd:Description><rasd:ElementName>1 virtual CPU</rasd:ElementName><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>1</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits><rasd:Caption>1024 MB of memory</rasd:Caption><rasd:ElementName>1024 MB of memory</rasd:ElementName><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>1024</rasd:VirtualQuantity></Item>
      <Item><rasd:Address>0</rasd:Address><rasd:Caption>ideController0</rasd:Caption><rasd:ElementName>ideController0</rasd:ElementName><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceSubType>PIIX4</rasd:ResourceSubType><rasd:ResourceType>5</rasd:ResourceType></Item>
      <Item><rasd:Address>0</rasd:Address><rasd:Caption>sataController0</rasd:Caption><rasd:ElementName>sataController0</rasd:ElementName><rasd:InstanceID>4</rasd:InstanceID><rasd:ResourceSubType>AHCI</rasd:ResourceSubType><rasd:ResourceType>20</rasd:ResourceType></Item>
      <Item><rasd:AutomaticAllocation>true</rasd:AutomaticAllocation><rasd:Caption>Ethernet adapter on 'NAT'</rasd:Caption><rasd:Connection>NAT</rasd:Connection><rasd:ElementName>Ethernet adapter on 'NAT'</rasd:ElementName><rasd:InstanceID>5</rasd:InstanceID><rasd:ResourceSubType>E1000</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:Caption>disk1</rasd:Caption><rasd:ElementName>disk1</rasd:ElementName><rasd:HostResource>/disk/vmdisk1</rasd:HostResource><rasd:InstanceID>6</rasd:InstanceID><rasd:Parent>4</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:AutomaticAllocation>false</rasd:AutomaticAllocation><rasd:Caption>cdrom1</rasd:Caption><rasd:ElementName>cdrom1</rasd:ElementName><rasd:InstanceID>7</rasd:InstanceID><rasd:Parent>3</rasd:Parent><rasd:ResourceType>15</rasd:ResourceType></Item>
    </VirtualHardwareSection>
    <vbox:Machine ovf:required="false" version="1.16-linux" uuid="{6e0c8a48-0000-4000-8000-000000000002}" name="alpine"><ovf:Info>Complete VirtualBox machine configuration in VirtualBox format</ovf:Info><Hardware><Network><Adapter slot="0" MACAddress="080027A1B2C3"/></Network></Hardware></vbox:Machine>
  </VirtualSystem>
</Envelope>`
	d := parseDescriptor(t, []byte(vbox))
	want := &Descriptor{
		Name: "alpine", OSType: "Linux26_64", SystemType: "virtualbox-2.2", CPUs: 1, MemoryMiB: 1024,
		Disks: []Disk{{ID: "vmdisk1", Name: "disk1", File: "alpine-disk001.vmdk", Format: FormatVMDK,
			CapacityBytes: 8 << 30, Controller: ControllerSATA, Boot: true}},
		NICs:     []NIC{{Name: "Ethernet adapter on 'NAT'", Model: "E1000", Network: "NAT"}},
		Firmware: FirmwareBIOS,
	}
	if !reflect.DeepEqual(d, want) {
		t.Fatalf("VirtualBox descriptor:\n got %+v\nwant %+v", d, want)
	}
	// A MAC written as 12 hex digits reads in the canonical form.
	withMAC := strings.Replace(vbox, "<rasd:Connection>NAT</rasd:Connection>",
		"<rasd:Address>080027A1B2C3</rasd:Address><rasd:Connection>NAT</rasd:Connection>", 1)
	if d := parseDescriptor(t, []byte(withMAC)); d.NICs[0].MAC != "08:00:27:a1:b2:c3" {
		t.Fatalf("MAC = %q, want 08:00:27:a1:b2:c3", d.NICs[0].MAC)
	}
}

// TestParseOptionsAndOddities reads a descriptor with deployment options,
// ranged items, a byte order mark and HostResource in the old form, and
// refuses OVF 2.0.
func TestParseOptionsAndOddities(t *testing.T) {
	base, err := os.ReadFile(filepath.Join("testdata", "minimal.ovf"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(base)
	s = strings.Replace(s, "<VirtualSystem ", `<DeploymentOptionSection><Info>Sizes</Info>`+
		`<Configuration ovf:id="small"><Label>Small</Label><Description>1 CPU</Description></Configuration>`+
		`<Configuration ovf:id="large" ovf:default="true"><Label>Large</Label><Description>8 CPUs</Description></Configuration>`+
		`</DeploymentOptionSection>`+"\n  <VirtualSystem ", 1)
	cpu := "<Item>\n        <rasd:ElementName>CPUs</rasd:ElementName>\n        <rasd:InstanceID>1</rasd:InstanceID>\n        <rasd:ResourceType>3</rasd:ResourceType>\n        <rasd:VirtualQuantity>1</rasd:VirtualQuantity>\n      </Item>"
	if !strings.Contains(s, cpu) {
		t.Fatal("minimal.ovf changed; update this test")
	}
	s = strings.Replace(s, cpu,
		`<Item ovf:configuration="small"><rasd:ElementName>c</rasd:ElementName><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>1</rasd:VirtualQuantity></Item>`+
			`<Item ovf:configuration="medium large"><rasd:ElementName>c</rasd:ElementName><rasd:InstanceID>10</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>8</rasd:VirtualQuantity></Item>`+
			`<Item ovf:bound="max"><rasd:ElementName>c</rasd:ElementName><rasd:InstanceID>11</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>64</rasd:VirtualQuantity></Item>`, 1)
	s = strings.Replace(s, "ovf:/disk/vol-root", "/disk/vol-root", 1)
	d := parseDescriptor(t, append([]byte("\xef\xbb\xbf"), s...))
	if d.CPUs != 8 {
		t.Fatalf("CPUs = %d, want the default configuration's 8", d.CPUs)
	}
	v2 := strings.ReplaceAll(string(base), "http://schemas.dmtf.org/ovf/envelope/1", "http://schemas.dmtf.org/ovf/envelope/2")
	if _, err := ParseDescriptor(strings.NewReader(v2), Limits{}); !errors.Is(err, ErrMalformed) || !strings.Contains(fmtErr(err), "not an OVF 1.0 Envelope") {
		t.Fatalf("OVF 2.0: %v", err)
	}
}
