package daemon

import (
	"reflect"
	"strings"
	"testing"

	"github.com/twinsnap/twinsnap/cluster/command"
	"github.com/twinsnap/twinsnap/internal/hypervisor"
)

func TestParseShareURL(t *testing.T) {
	for _, tc := range []struct {
		url  string
		want shareLocation
	}{
		{"smb://nas:4450/backup", shareLocation{smb: true, addr: "nas:4450", share: "backup"}},
		{"smb://nas/backup/twinsnap/weekly", shareLocation{smb: true, addr: "nas:445", share: "backup", dir: "twinsnap/weekly"}},
		{"file:///srv/exports/", shareLocation{dir: "/srv/exports"}},
	} {
		got, err := parseShareURL(tc.url)
		if err != nil || got != tc.want {
			t.Errorf("parseShareURL(%q) = %+v, %v; want %+v", tc.url, got, err, tc.want)
		}
	}
	for _, bad := range []string{"smb://user:pw@nas/share", "smb://nas", "smb://nas/", "smb://nas/share/../../etc", "file://host/dir", "file:relative", "nfs://nas/share", "smb://nas/share?x=1"} {
		if _, err := parseShareURL(bad); err == nil {
			t.Errorf("parseShareURL(%q) accepted", bad)
		}
	}
}

func TestVMShape(t *testing.T) {
	for _, tc := range []struct {
		cfg  *command.CapturedConfig
		cpus int
		mem  int64
	}{
		{nil, 1, 512},
		{&command.CapturedConfig{Kind: command.ConfigLibvirtXML, Text: `<domain><vcpu placement='static'>4</vcpu><memory unit='KiB'>2097152</memory></domain>`}, 4, 2048},
		{&command.CapturedConfig{Kind: command.ConfigLibvirtXML, Text: `<domain><vcpu>2</vcpu><memory unit="GiB">3</memory></domain>`}, 2, 3072},
		{&command.CapturedConfig{Kind: command.ConfigQEMULaunch, Text: `{"binary":"qemu","args":["-m","256","-smp","1"]}`}, 1, 256},
		{&command.CapturedConfig{Kind: command.ConfigQEMULaunch, Text: `{"binary":"qemu","args":["-m","size=2G","-smp","cpus=4,sockets=1"]}`}, 4, 2048},
		{&command.CapturedConfig{Kind: command.ConfigQEMULaunch, Text: `not json`}, 1, 512},
	} {
		cpus, mem := vmShape(tc.cfg)
		if cpus != tc.cpus || mem != tc.mem {
			t.Errorf("vmShape(%+v) = %d CPUs, %d MiB; want %d, %d", tc.cfg, cpus, mem, tc.cpus, tc.mem)
		}
	}
}

func TestSelectedVolumeIDs(t *testing.T) {
	vm := command.VM{Name: "web", Volumes: []command.Volume{
		{ID: "v-boot", Name: "boot", Boot: true}, {ID: "v-d1", Name: "data1", Serial: "s1"}, {ID: "v-d2", Name: "data2"},
	}}
	for _, tc := range []struct {
		names  []string
		noData bool
		want   []string
	}{
		{nil, false, []string{"v-boot", "v-d1", "v-d2"}},
		{nil, true, []string{"v-boot"}},
		{[]string{"data2"}, false, []string{"v-boot", "v-d2"}},
		{[]string{"s1", "boot"}, false, []string{"v-boot", "v-d1"}},
	} {
		got, err := selectedVolumeIDs(vm, tc.names, tc.noData)
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("selectedVolumeIDs(%v, %v) = %v, %v; want %v", tc.names, tc.noData, got, err, tc.want)
		}
	}
	if _, err := selectedVolumeIDs(vm, []string{"nope"}, false); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("an unknown volume: %v", err)
	}
	if _, err := selectedVolumeIDs(vm, []string{"data1"}, true); err == nil {
		t.Errorf("--volumes with --no-data accepted")
	}
}

func TestWithoutDisks(t *testing.T) {
	spec := hypervisor.LaunchSpec{Binary: "qemu", Args: []string{
		"-name", "g",
		"-blockdev", `{"driver":"qcow2","node-name":"vol-boot","file":{"driver":"file","filename":"/vm/boot.qcow2"}}`,
		"-device", "virtio-blk-pci,drive=vol-boot,id=disk-boot,serial=boot",
		"-blockdev", `{"driver":"qcow2","node-name":"vol-data2","file":{"driver":"file","filename":"/vm/data2.qcow2"}}`,
		"-device", "virtio-blk-pci,drive=vol-data2,id=disk-data2,serial=data2",
		"-drive", "file=/vm/old.qcow2,if=none,id=drv9",
		"-device", "virtio-blk-pci,drive=drv9,serial=old",
		"-device", "virtio-net-pci,netdev=net0",
	}}
	got := withoutDisks(spec, []hypervisor.LaunchDisk{{Path: "/vm/data2.qcow2", NodeName: "vol-data2"}, {Path: "/vm/old.qcow2", DriveID: "drv9"}})
	want := []string{
		"-name", "g",
		"-blockdev", `{"driver":"qcow2","node-name":"vol-boot","file":{"driver":"file","filename":"/vm/boot.qcow2"}}`,
		"-device", "virtio-blk-pci,drive=vol-boot,id=disk-boot,serial=boot",
		"-device", "virtio-net-pci,netdev=net0",
	}
	if !reflect.DeepEqual(got.Args, want) {
		t.Fatalf("withoutDisks:\n got %q\nwant %q", got.Args, want)
	}
}
