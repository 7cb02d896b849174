package hypervisor_test

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/twinsnap/twinsnap/internal/hypervisor"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files of the domain XML tests")

// readTestdata returns a file of testdata.
func readTestdata(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The fixtures: libvirt 9.0's inactive and live XML of a testenv domain
// booting with OVMF, and a hand-written domain.
var domainFixtures = []struct {
	file string
	opts hypervisor.DomainCloneOptions
	// disks, nvram and macs are what the original says.
	disks []hypervisor.LaunchDisk
	nvram string
	macs  []string
}{{
	file: "domainxml-uefi-inactive.xml",
	opts: hypervisor.DomainCloneOptions{
		Name: "web2", UUID: "0b5d3c8e-6d7f-4e21-8a3b-5c6d7e8f9a0b",
		Disks: map[string]string{"/srv/vms/web1/boot.qcow2": "/srv/vms/web2/boot.qcow2", "/srv/vms/web1/data1.qcow2": "/srv/vms/web2/data1.qcow2"},
		NVRAM: "/srv/vms/web2/OVMF_VARS.fd",
		Paths: map[string]string{"/srv/vms/web1/serial.log": "/srv/vms/web2/serial.log"},
	},
	disks: []hypervisor.LaunchDisk{
		{Path: "/srv/vms/web1/boot.qcow2", Format: "qcow2", Serial: "boot", Target: "vda", DeviceID: "ua-disk-boot"},
		{Path: "/srv/vms/web1/data1.qcow2", Format: "qcow2", Serial: "data1", Target: "vdb", DeviceID: "ua-disk-data1"},
	},
	nvram: "/srv/vms/web1/OVMF_VARS.fd",
	macs:  []string{"52:54:00:4c:7f:76"},
}, {
	file: "domainxml-uefi-live.xml",
	opts: hypervisor.DomainCloneOptions{
		Name: "web2", UUID: "0b5d3c8e-6d7f-4e21-8a3b-5c6d7e8f9a0b",
		Disks: map[string]string{"/srv/vms/web1/boot.qcow2": "/srv/vms/web2/boot.qcow2", "/srv/vms/web1/data1.qcow2": "/srv/vms/web2/data1.qcow2"},
		NVRAM: "/srv/vms/web2/OVMF_VARS.fd",
		Paths: map[string]string{"/srv/vms/web1/serial.log": "/srv/vms/web2/serial.log"},
	},
	disks: []hypervisor.LaunchDisk{
		{Path: "/srv/vms/web1/boot.qcow2", Format: "qcow2", NodeName: "libvirt-2-format", Serial: "boot", Target: "vda", DeviceID: "ua-disk-boot"},
		{Path: "/srv/vms/web1/data1.qcow2", Format: "qcow2", NodeName: "libvirt-1-format", Serial: "data1", Target: "vdb", DeviceID: "ua-disk-data1"},
	},
	nvram: "/srv/vms/web1/OVMF_VARS.fd",
	macs:  []string{"52:54:00:4c:7f:76"},
}, {
	file: "domainxml-chain.xml",
	opts: hypervisor.DomainCloneOptions{
		Name: "db2 & co", UUID: "0b5d3c8e-6d7f-4e21-8a3b-5c6d7e8f9a0b",
		Disks: map[string]string{
			"/var/lib/libvirt/images/db1.qcow2":       "/var/lib/libvirt/images/db2.qcow2",
			"/var/lib/libvirt/images/base & co.qcow2": "/var/lib/libvirt/images/base-copy.qcow2",
			"/dev/mapper/db1-data":                    "/dev/mapper/db2-data",
		},
		NVRAM: "/var/lib/libvirt/qemu/nvram/db2_VARS.fd",
	},
	disks: []hypervisor.LaunchDisk{
		{Path: "/var/lib/libvirt/images/db1.qcow2", Format: "qcow2", Serial: "root", Target: "vda"},
		{Path: "/var/lib/libvirt/images/base & co.qcow2", Format: "qcow2", ReadOnly: true, Backing: true},
		{Path: "/dev/mapper/db1-data", Target: "sda"},
		{Path: "/iso/tools.iso", Target: "sdb", Media: "cdrom", ReadOnly: true},
	},
	nvram: "/var/lib/libvirt/qemu/nvram/db1_VARS.fd",
	macs:  []string{"52:54:00:01:02:03"},
}}

func TestDomainXMLInfo(t *testing.T) {
	for _, f := range domainFixtures {
		t.Run(f.file, func(t *testing.T) {
			x := readTestdata(t, f.file)
			disks, err := hypervisor.DomainDisks(x)
			if err != nil || !reflect.DeepEqual(disks, f.disks) {
				t.Fatalf("DomainDisks = %+v, %v\nwant %+v", disks, err, f.disks)
			}
			nv, err := hypervisor.DomainNVRAM(x)
			if err != nil || nv != f.nvram {
				t.Fatalf("DomainNVRAM = %q, %v; want %q", nv, err, f.nvram)
			}
			macs, err := hypervisor.DomainMACs(x)
			if err != nil || !reflect.DeepEqual(macs, f.macs) {
				t.Fatalf("DomainMACs = %q, %v; want %q", macs, err, f.macs)
			}
		})
	}
}

// TestCloneDomainXML clones each fixture and compares with a golden file
// (go test -run TestCloneDomainXML -update rewrites them; review the
// diff), then reads the clone back.
func TestCloneDomainXML(t *testing.T) {
	for _, f := range domainFixtures {
		t.Run(f.file, func(t *testing.T) {
			x := readTestdata(t, f.file)
			opts := f.opts
			newMAC := "52:54:00:aa:00:01"
			opts.MAC = func(old string) string {
				if old != f.macs[0] {
					t.Errorf("MAC for %s", old)
				}
				return newMAC
			}
			got, err := hypervisor.CloneDomainXML(x, opts)
			if err != nil {
				t.Fatalf("CloneDomainXML: %v", err)
			}
			golden := filepath.Join("testdata", strings.TrimSuffix(f.file, ".xml")+".clone.xml")
			if *updateGolden {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want := readTestdata(t, filepath.Base(golden))
			if got != want {
				t.Fatalf("CloneDomainXML differs from %s:\n%s", golden, lineDiff(got, want))
			}

			// The clone reads back with the new identity and files.
			disks, err := hypervisor.DomainDisks(got)
			if err != nil {
				t.Fatalf("DomainDisks of the clone: %v", err)
			}
			for _, d := range disks {
				if _, old := opts.Disks[d.Path]; old {
					t.Fatalf("the clone still uses %s", d.Path)
				}
			}
			nv, _ := hypervisor.DomainNVRAM(got)
			macs, _ := hypervisor.DomainMACs(got)
			if nv != opts.NVRAM || !reflect.DeepEqual(macs, []string{newMAC}) {
				t.Fatalf("clone: nvram %q, MACs %q", nv, macs)
			}
			// Only the lines that name what changed differ.
			for _, line := range strings.Split(got, "\n") {
				if strings.Contains(line, f.macs[0]) || strings.Contains(line, "domain-1-") {
					t.Fatalf("the clone keeps %q", line)
				}
			}
		})
	}
}

// lineDiff shows the lines of got and want that differ.
func lineDiff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	var b strings.Builder
	for i := 0; i < max(len(g), len(w)); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			b.WriteString("  got  " + gl + "\n  want " + wl + "\n")
		}
	}
	return b.String()
}

func TestCloneDomainXMLRefuses(t *testing.T) {
	inactive := readTestdata(t, "domainxml-uefi-inactive.xml")
	chain := readTestdata(t, "domainxml-chain.xml")
	good := domainFixtures[0].opts
	with := func(f func(o *hypervisor.DomainCloneOptions)) hypervisor.DomainCloneOptions {
		o := good
		o.Disks = map[string]string{}
		for k, v := range good.Disks {
			o.Disks[k] = v
		}
		f(&o)
		return o
	}
	for _, tc := range []struct {
		name, xml string
		opts      hypervisor.DomainCloneOptions
		want      string
	}{
		{"DOCTYPE", `<?xml version="1.0"?><!DOCTYPE domain [<!ENTITY x "/etc/passwd">]><domain><name>&x;</name></domain>`, good, "a <!DOCTYPE> is refused"},
		{"undefined entity", `<domain><name>&x;</name></domain>`, good, "invalid character entity &x;"},
		{"not a domain", `<network><name>n</name></network>`, good, "not a libvirt domain XML"},
		{"garbage", `<domain><name>x</domain>`, good, "domain XML"},
		{"unmapped disk", inactive, with(func(o *hypervisor.DomainCloneOptions) { delete(o.Disks, "/srv/vms/web1/boot.qcow2") }), "disks not mapped to a copy: /srv/vms/web1/boot.qcow2"},
		{"unknown disk", inactive, with(func(o *hypervisor.DomainCloneOptions) { o.Disks["/x"] = "/y" }), "disk /x is not in the domain"},
		{"NVRAM not mapped", inactive, with(func(o *hypervisor.DomainCloneOptions) { o.NVRAM = "" }), "the UEFI variable store /srv/vms/web1/OVMF_VARS.fd is not mapped"},
		{"serial log not mapped", inactive, with(func(o *hypervisor.DomainCloneOptions) { o.Paths = nil }), "serial: host path /srv/vms/web1/serial.log is not mapped"},
		{"unknown path", inactive, with(func(o *hypervisor.DomainCloneOptions) {
			o.Paths = map[string]string{"/srv/vms/web1/serial.log": "/a", "/b": "/c"}
		}), "path /b is not in the domain"},
		{"bad MAC", inactive, with(func(o *hypervisor.DomainCloneOptions) { o.MAC = func(string) string { return "nope" } }), `invalid MAC address "nope"`},
		{"bad name", inactive, with(func(o *hypervisor.DomainCloneOptions) { o.Name = "a/b" }), "invalid domain name"},
		{"bad UUID", inactive, with(func(o *hypervisor.DomainCloneOptions) { o.UUID = "x" }), `invalid UUID "x"`},
		{"block LUN not mapped", chain, hypervisor.DomainCloneOptions{Name: "c", NVRAM: "/n", Disks: map[string]string{
			"/var/lib/libvirt/images/db1.qcow2": "/a", "/var/lib/libvirt/images/base & co.qcow2": "/b",
		}}, "disks not mapped to a copy: /dev/mapper/db1-data"},
		{"network disk", strings.Replace(inactive, "<devices>", `<devices><disk type='network' device='disk'><source protocol='nbd' name='x'><host name='h'/></source><target dev='vdz'/></disk>`, 1), good, "disk vdz: a network disk cannot be cloned"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := hypervisor.CloneDomainXML(tc.xml, tc.opts)
			if !errors.Is(err, hypervisor.ErrBadConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("CloneDomainXML: %v, want ErrBadConfig with %q", err, tc.want)
			}
		})
	}
}

// TestCloneDomainXMLAddsNVRAM: a domain with a pflash loader but no
// <nvram> (libvirt would make one from the template) gets the copy.
func TestCloneDomainXMLAddsNVRAM(t *testing.T) {
	x := readTestdata(t, "domainxml-uefi-inactive.xml")
	start := strings.Index(x, "    <nvram")
	end := strings.Index(x, "</nvram>\n") + len("</nvram>\n")
	x = x[:start] + x[end:]
	opts := domainFixtures[0].opts
	got, err := hypervisor.CloneDomainXML(x, opts)
	if err != nil {
		t.Fatalf("CloneDomainXML: %v", err)
	}
	if !strings.Contains(got, "</loader>\n    <nvram>/srv/vms/web2/OVMF_VARS.fd</nvram>\n    <kernel>") {
		t.Fatalf("no <nvram> after the loader:\n%s", got)
	}
	// Without a loader, a store has nowhere to go.
	x = strings.Replace(x, "<loader", "<!-- ", 1)
	x = strings.Replace(x, "</loader>", " -->", 1)
	if _, err := hypervisor.CloneDomainXML(x, opts); !errors.Is(err, hypervisor.ErrBadConfig) || !strings.Contains(err.Error(), "has none") {
		t.Fatalf("CloneDomainXML without a loader: %v", err)
	}
}
