package hypervisor

import (
	"reflect"
	"strings"
	"testing"

	"github.com/twinsnap/twinsnap/guestagent"
)

func fsOn(mp string, disks ...guestagent.Disk) guestagent.FileSystem {
	return guestagent.FileSystem{Name: "x", Mountpoint: mp, Type: "ext4", Disks: disks}
}

func diskAt(slot int, serial string) guestagent.Disk {
	return guestagent.Disk{PCIController: guestagent.PCIAddress{Slot: slot}, BusType: "virtio", Serial: serial}
}

func TestPlanFreeze(t *testing.T) {
	vols := []PlanVolume{
		{Name: "boot", Serial: "boot", PCI: &guestagent.PCIAddress{Slot: 4}},
		{Name: "data1", Serial: "data1", PCI: &guestagent.PCIAddress{Slot: 5}, Selected: true},
		{Name: "data2", Serial: "data2", PCI: &guestagent.PCIAddress{Slot: 6}, Selected: true},
		{Name: "data3", Serial: "data3", PCI: &guestagent.PCIAddress{Slot: 7}},
		{Name: "raw", Serial: "raw", PCI: &guestagent.PCIAddress{Slot: 8}, Selected: true},
	}
	fs := []guestagent.FileSystem{
		fsOn("/", diskAt(4, "")),
		fsOn("/mnt/data1", diskAt(5, "")),               // matched by PCI address: no serial without udev
		fsOn("/mnt/data2", diskAt(0, "data2")),          // matched by serial
		fsOn("/mnt/span", diskAt(6, ""), diskAt(7, "")), // selected data2 + unselected data3
		fsOn("/mnt/data3", diskAt(7, "data3")),
		fsOn("/mnt/usb", diskAt(12, "usbstick")),
		{Name: "tmpfs", Mountpoint: "/run", Type: "tmpfs"},
	}
	p := PlanFreeze(vols, fs)
	if want := []string{"/mnt/data1", "/mnt/data2", "/mnt/span"}; !reflect.DeepEqual(p.Mountpoints, want) {
		t.Fatalf("mount points %v, want %v", p.Mountpoints, want)
	}
	if want := []string{"/mnt/span"}; !reflect.DeepEqual(p.Spanning, want) {
		t.Fatalf("spanning %v, want %v", p.Spanning, want)
	}
	if !strings.Contains(p.Reasons["/mnt/span"], "unselected data3") {
		t.Fatalf("reason for the spanning file system: %q", p.Reasons["/mnt/span"])
	}
	if want := []string{"raw"}; !reflect.DeepEqual(p.Unmapped, want) {
		t.Fatalf("unmapped %v, want %v", p.Unmapped, want)
	}
	if want := []string{"/mnt/usb"}; !reflect.DeepEqual(p.Unmatched, want) {
		t.Fatalf("unmatched %v, want %v", p.Unmatched, want)
	}
}

func TestPlanFreezeBridgedBusIsNotGuessed(t *testing.T) {
	vols := []PlanVolume{{Name: "data1", PCI: &guestagent.PCIAddress{Bus: 1, Slot: 0}, Selected: true}}
	fs := []guestagent.FileSystem{fsOn("/mnt/data1", guestagent.Disk{PCIController: guestagent.PCIAddress{Bus: 2, Slot: 0}})}
	p := PlanFreeze(vols, fs)
	if len(p.Mountpoints) != 0 || len(p.Unmapped) != 1 {
		t.Fatalf("a device behind a bridge was matched by slot alone: %+v", p)
	}
}
