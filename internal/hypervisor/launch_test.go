package hypervisor_test

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/twinsnap/twinsnap/internal/hypervisor"
)

// testenvArgv is the command line of a test VM as testenv's launcher
// writes it, with a UEFI variable store, a data volume and a file name
// that needs QEMU's comma escape nowhere (JSON).
var testenvArgv = []string{
	"-name", "vm1,process=twinsnap-testenv-vm1",
	"-machine", "pc,accel=tcg",
	"-m", "256", "-smp", "1",
	"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
	"-drive", "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd",
	"-drive", "if=pflash,format=raw,unit=1,file=/d/OVMF_VARS.fd",
	"-kernel", "/c/vmlinuz", "-initrd", "/c/initrd.gz",
	"-append", "console=ttyS0 panic=-1 loglevel=4 twinsnap.root=boot",
	"-serial", "file:/d/serial.log",
	"-chardev", "socket,id=qmp,path=/d/qmp.sock,server=on,wait=off",
	"-mon", "chardev=qmp,mode=control",
	"-chardev", "socket,id=qga,path=/d/qga.sock,server=on,wait=off",
	"-device", "virtio-serial-pci,id=vser0",
	"-device", "virtserialport,chardev=qga,name=org.qemu.guest_agent.0",
	"-netdev", "user,id=net0,restrict=on",
	"-device", "virtio-net-pci,netdev=net0,id=nic0,mac=52:54:00:12:34:56",
	"-blockdev", `{"driver":"qcow2","node-name":"vol-boot","discard":"unmap","file":{"driver":"file","filename":"/d/boot.qcow2","node-name":"file-boot"}}`,
	"-device", "virtio-blk-pci,drive=vol-boot,id=disk-boot,serial=boot",
	"-blockdev", `{"driver":"qcow2","node-name":"vol-data1","discard":"unmap","file":{"driver":"file","filename":"/d/data1 <&>.qcow2","node-name":"file-data1"}}`,
	"-device", "virtio-blk-pci,drive=vol-data1,id=disk-data1,serial=data1",
}

// libvirtArgv is the command line libvirt 9.0 gives QEMU 7.2 for a UEFI
// domain (as in its log of a testenv domain), here with a backing chain:
// JSON -blockdev and -device, separate protocol and format nodes, monitor
// and agent sockets passed as fds, the serial log as an -add-fd set.
var libvirtArgv = []string{
	"-name", "guest=web1,debug-threads=on",
	"-S",
	"-object", `{"qom-type":"secret","id":"masterKey0","format":"raw","file":"/var/lib/libvirt/qemu/domain-3-web1/master-key.aes"}`,
	"-blockdev", `{"driver":"file","filename":"/usr/share/OVMF/OVMF_CODE.fd","node-name":"libvirt-pflash0-storage","auto-read-only":true,"discard":"unmap"}`,
	"-blockdev", `{"node-name":"libvirt-pflash0-format","read-only":true,"driver":"raw","file":"libvirt-pflash0-storage"}`,
	"-blockdev", `{"driver":"file","filename":"/var/lib/libvirt/qemu/nvram/web1_VARS.fd","node-name":"libvirt-pflash1-storage","auto-read-only":true,"discard":"unmap"}`,
	"-blockdev", `{"node-name":"libvirt-pflash1-format","read-only":false,"driver":"raw","file":"libvirt-pflash1-storage"}`,
	"-machine", "pc-i440fx-7.2,usb=off,dump-guest-core=off,memory-backend=pc.ram,pflash0=libvirt-pflash0-format,pflash1=libvirt-pflash1-format",
	"-accel", "tcg",
	"-m", "256",
	"-object", `{"qom-type":"memory-backend-ram","id":"pc.ram","size":268435456}`,
	"-uuid", "6f2ab1a4-3c1e-4d5b-9a7e-0c1d2e3f4a5b",
	"-smbios", "type=1,manufacturer=twinsnap,uuid=6f2ab1a4-3c1e-4d5b-9a7e-0c1d2e3f4a5b",
	"-no-user-config", "-nodefaults",
	"-chardev", "socket,id=charmonitor,fd=31,server=on,wait=off",
	"-mon", "chardev=charmonitor,id=monitor,mode=control",
	"-rtc", "base=utc", "-no-shutdown", "-boot", "strict=on",
	"-device", `{"driver":"virtio-serial-pci","id":"virtio-serial0","bus":"pci.0","addr":"0x4"}`,
	"-blockdev", `{"driver":"file","filename":"/var/lib/libvirt/images/base.qcow2","node-name":"libvirt-3-storage","auto-read-only":true,"discard":"unmap"}`,
	"-blockdev", `{"node-name":"libvirt-3-format","read-only":true,"driver":"qcow2","file":"libvirt-3-storage","backing":null}`,
	"-blockdev", `{"driver":"file","filename":"/var/lib/libvirt/images/web1.qcow2","node-name":"libvirt-2-storage","auto-read-only":true,"discard":"unmap"}`,
	"-blockdev", `{"node-name":"libvirt-2-format","read-only":false,"discard":"unmap","driver":"qcow2","file":"libvirt-2-storage","backing":"libvirt-3-format"}`,
	"-device", `{"driver":"virtio-blk-pci","bus":"pci.0","addr":"0x5","drive":"libvirt-2-format","id":"virtio-disk0","bootindex":1,"serial":"root"}`,
	"-blockdev", `{"driver":"file","filename":"/var/lib/libvirt/images/data,1.qcow2","node-name":"libvirt-1-storage","auto-read-only":true,"discard":"unmap"}`,
	"-blockdev", `{"node-name":"libvirt-1-format","read-only":false,"driver":"qcow2","file":"libvirt-1-storage","backing":null}`,
	"-device", `{"driver":"virtio-blk-pci","bus":"pci.0","addr":"0x6","drive":"libvirt-1-format","id":"ua-data","serial":"data"}`,
	"-netdev", `{"type":"tap","fd":"33","vhost":true,"vhostfd":"35","id":"hostnet0"}`,
	"-device", `{"driver":"virtio-net-pci","netdev":"hostnet0","id":"net0","mac":"52:54:00:aa:bb:cc","bus":"pci.0","addr":"0x3"}`,
	"-add-fd", "set=0,fd=26,opaque=serial0-source",
	"-chardev", "file,id=charserial0,path=/dev/fdset/0,append=on",
	"-device", `{"driver":"isa-serial","chardev":"charserial0","id":"serial0","index":0}`,
	"-chardev", "socket,id=charchannel0,fd=32,server=on,wait=off",
	"-device", `{"driver":"virtserialport","bus":"virtio-serial0.0","nr":1,"chardev":"charchannel0","id":"channel0","name":"org.qemu.guest_agent.0"}`,
	"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
	"-msg", "timestamp=on",
}

// driveArgv is an older hand-written command line: -drive, -cdrom, a
// positional image, -pflash, -nic, -net nic, -qmp, a comma in a file name,
// and the options a clone drops.
var driveArgv = []string{
	"--enable-kvm", "-m", "1024",
	"-name", "legacy,,box",
	"-drive", "file=/vm/a,,b.qcow2,format=qcow2,if=virtio,serial=s1",
	"-drive", "file=/vm/data.raw,format=raw,if=none,id=d2,cache=none",
	"-device", "virtio-blk-pci,drive=d2,id=vdb,serial=data",
	"-drive", "driver=qcow2,file.driver=file,file.filename=/vm/keyval.qcow2,if=none,id=d3",
	"-device", "virtio-blk-pci,drive=d3",
	"-blockdev", "driver=qcow2,node-name=kv4,file.driver=file,file.filename=/vm/kv4,,x.qcow2",
	"-device", "virtio-blk-pci,drive=kv4,id=vdd",
	"-cdrom", "/iso/install.iso",
	"-pflash", "/fw/OVMF_CODE.fd",
	"-pflash", "/vm/vars.fd",
	"-nic", "user,model=virtio,mac=52:54:00:00:00:01",
	"-net", "nic,macaddr=52:54:00:00:00:02",
	"-net", "user",
	"-qmp", "unix:/run/legacy.qmp,server=on,wait=off",
	"-serial", "file:/var/log/legacy.log",
	"-monitor", "stdio",
	"-daemonize", "-pidfile", "/run/legacy.pid",
	"-incoming", "defer", "-loadvm", "snap1",
	"-append", "-v quiet",
	"-vnc", ":1",
	"/vm/positional.img",
}

// macs returns a MAC function that maps from a table and fails the test
// on an address it does not know.
func macs(t *testing.T, table map[string]string) func(string) string {
	return func(old string) string {
		m, ok := table[old]
		if !ok {
			t.Errorf("MAC %s not expected", old)
		}
		return m
	}
}

func TestLaunchSpecInfo(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want hypervisor.LaunchInfo
	}{{
		name: "testenv",
		args: testenvArgv,
		want: hypervisor.LaunchInfo{
			Name: "vm1",
			Disks: []hypervisor.LaunchDisk{
				{Path: "/d/boot.qcow2", Format: "qcow2", NodeName: "vol-boot", DeviceID: "disk-boot", Serial: "boot"},
				{Path: "/d/data1 <&>.qcow2", Format: "qcow2", NodeName: "vol-data1", DeviceID: "disk-data1", Serial: "data1"},
			},
			UEFICode:    "/usr/share/OVMF/OVMF_CODE.fd",
			UEFIVars:    "/d/OVMF_VARS.fd",
			MACs:        []string{"52:54:00:12:34:56"},
			QMPSocket:   "/d/qmp.sock",
			AgentSocket: "/d/qga.sock",
			SerialLog:   "/d/serial.log",
		},
	}, {
		name: "libvirt",
		args: libvirtArgv,
		want: hypervisor.LaunchInfo{
			Name: "web1",
			UUID: "6f2ab1a4-3c1e-4d5b-9a7e-0c1d2e3f4a5b",
			Disks: []hypervisor.LaunchDisk{
				{Path: "/var/lib/libvirt/images/base.qcow2", Format: "qcow2", NodeName: "libvirt-3-format", ReadOnly: true, Backing: true},
				{Path: "/var/lib/libvirt/images/web1.qcow2", Format: "qcow2", NodeName: "libvirt-2-format", DeviceID: "virtio-disk0", Serial: "root"},
				{Path: "/var/lib/libvirt/images/data,1.qcow2", Format: "qcow2", NodeName: "libvirt-1-format", DeviceID: "ua-data", Serial: "data"},
			},
			UEFICode: "/usr/share/OVMF/OVMF_CODE.fd",
			UEFIVars: "/var/lib/libvirt/qemu/nvram/web1_VARS.fd",
			MACs:     []string{"52:54:00:aa:bb:cc"},
		},
	}, {
		name: "drive",
		args: driveArgv,
		want: hypervisor.LaunchInfo{
			Name: "legacy,box",
			Disks: []hypervisor.LaunchDisk{
				{Path: "/vm/a,b.qcow2", Format: "qcow2", Serial: "s1"},
				{Path: "/vm/data.raw", Format: "raw", DriveID: "d2", DeviceID: "vdb", Serial: "data"},
				{Path: "/vm/keyval.qcow2", Format: "qcow2", DriveID: "d3"},
				{Path: "/vm/kv4,x.qcow2", Format: "qcow2", NodeName: "kv4", DeviceID: "vdd"},
				{Path: "/iso/install.iso", Media: "cdrom", ReadOnly: true},
				{Path: "/vm/positional.img"},
			},
			UEFICode:    "/fw/OVMF_CODE.fd",
			UEFIVars:    "/vm/vars.fd",
			MACs:        []string{"52:54:00:00:00:01", "52:54:00:00:00:02"},
			QMPSocket:   "/run/legacy.qmp",
			SerialLog:   "/var/log/legacy.log",
			Daemonize:   true,
			AgentSocket: "",
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := hypervisor.LaunchSpec{Binary: "/usr/bin/qemu-system-x86_64", Args: tc.args}.Info()
			if err != nil {
				t.Fatalf("Info: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Info:\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestLaunchSpecClone(t *testing.T) {
	const uuid = "0b5d3c8e-6d7f-4e21-8a3b-5c6d7e8f9a0b"
	for _, tc := range []struct {
		name string
		args []string
		opts hypervisor.CloneOptions
		want []string
	}{{
		name: "testenv",
		args: testenvArgv,
		opts: hypervisor.CloneOptions{
			Name: "clone1", UUID: uuid,
			MAC:         macs(t, map[string]string{"52:54:00:12:34:56": "52:54:00:65:43:21"}),
			Disks:       map[string]string{"/d/boot.qcow2": "/e/boot.qcow2", "/d/data1 <&>.qcow2": "/e/data1,x.qcow2"},
			QMPSocket:   "/e/qmp.sock",
			AgentSocket: "/e/qga,sock",
			SerialLog:   "/e/serial.log",
			UEFIVars:    "/e/OVMF_VARS.fd",
			PIDFile:     "/e/qemu.pid",
		},
		want: []string{
			"-name", "clone1,process=twinsnap-testenv-clone1",
			"-uuid", uuid,
			"-machine", "pc,accel=tcg",
			"-m", "256", "-smp", "1",
			"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd",
			"-drive", "if=pflash,format=raw,unit=1,file=/e/OVMF_VARS.fd",
			"-kernel", "/c/vmlinuz", "-initrd", "/c/initrd.gz",
			"-append", "console=ttyS0 panic=-1 loglevel=4 twinsnap.root=boot",
			"-serial", "file:/e/serial.log",
			"-chardev", "socket,id=qmp,path=/e/qmp.sock,server=on,wait=off",
			"-mon", "chardev=qmp,mode=control",
			"-chardev", "socket,id=qga,path=/e/qga,,sock,server=on,wait=off",
			"-device", "virtio-serial-pci,id=vser0",
			"-device", "virtserialport,chardev=qga,name=org.qemu.guest_agent.0",
			"-netdev", "user,id=net0,restrict=on",
			"-device", "virtio-net-pci,netdev=net0,id=nic0,mac=52:54:00:65:43:21",
			"-blockdev", `{"driver":"qcow2","node-name":"vol-boot","discard":"unmap","file":{"driver":"file","filename":"/e/boot.qcow2","node-name":"file-boot"}}`,
			"-device", "virtio-blk-pci,drive=vol-boot,id=disk-boot,serial=boot",
			"-blockdev", `{"driver":"qcow2","node-name":"vol-data1","discard":"unmap","file":{"driver":"file","filename":"/e/data1,x.qcow2","node-name":"file-data1"}}`,
			"-device", "virtio-blk-pci,drive=vol-data1,id=disk-data1,serial=data1",
			"-pidfile", "/e/qemu.pid",
		},
	}, {
		name: "libvirt",
		args: libvirtArgv,
		opts: hypervisor.CloneOptions{
			Name: "web2", UUID: uuid,
			MAC: macs(t, map[string]string{"52:54:00:aa:bb:cc": "52:54:00:cc:bb:aa"}),
			Disks: map[string]string{
				"/var/lib/libvirt/images/base.qcow2":   "/c/base.qcow2",
				"/var/lib/libvirt/images/web1.qcow2":   "/c/web2.qcow2",
				"/var/lib/libvirt/images/data,1.qcow2": "/c/data,2.qcow2",
			},
			QMPSocket:   "/c/qmp.sock",
			AgentSocket: "/c/qga.sock",
			SerialLog:   "/c/serial.log",
			UEFIVars:    "/c/web2_VARS.fd",
		},
		want: []string{
			"-name", "guest=web2,debug-threads=on",
			"-S",
			"-object", `{"qom-type":"secret","id":"masterKey0","format":"raw","file":"/var/lib/libvirt/qemu/domain-3-web1/master-key.aes"}`,
			"-blockdev", `{"driver":"file","filename":"/usr/share/OVMF/OVMF_CODE.fd","node-name":"libvirt-pflash0-storage","auto-read-only":true,"discard":"unmap"}`,
			"-blockdev", `{"node-name":"libvirt-pflash0-format","read-only":true,"driver":"raw","file":"libvirt-pflash0-storage"}`,
			"-blockdev", `{"driver":"file","filename":"/c/web2_VARS.fd","node-name":"libvirt-pflash1-storage","auto-read-only":true,"discard":"unmap"}`,
			"-blockdev", `{"node-name":"libvirt-pflash1-format","read-only":false,"driver":"raw","file":"libvirt-pflash1-storage"}`,
			"-machine", "pc-i440fx-7.2,usb=off,dump-guest-core=off,memory-backend=pc.ram,pflash0=libvirt-pflash0-format,pflash1=libvirt-pflash1-format",
			"-accel", "tcg",
			"-m", "256",
			"-object", `{"qom-type":"memory-backend-ram","id":"pc.ram","size":268435456}`,
			"-uuid", uuid,
			"-smbios", "type=1,manufacturer=twinsnap,uuid=" + uuid,
			"-no-user-config", "-nodefaults",
			"-chardev", "socket,id=charmonitor,server=on,wait=off,path=/c/qmp.sock",
			"-mon", "chardev=charmonitor,id=monitor,mode=control",
			"-rtc", "base=utc", "-no-shutdown", "-boot", "strict=on",
			"-device", `{"driver":"virtio-serial-pci","id":"virtio-serial0","bus":"pci.0","addr":"0x4"}`,
			"-blockdev", `{"driver":"file","filename":"/c/base.qcow2","node-name":"libvirt-3-storage","auto-read-only":true,"discard":"unmap"}`,
			"-blockdev", `{"node-name":"libvirt-3-format","read-only":true,"driver":"qcow2","file":"libvirt-3-storage","backing":null}`,
			"-blockdev", `{"driver":"file","filename":"/c/web2.qcow2","node-name":"libvirt-2-storage","auto-read-only":true,"discard":"unmap"}`,
			"-blockdev", `{"node-name":"libvirt-2-format","read-only":false,"discard":"unmap","driver":"qcow2","file":"libvirt-2-storage","backing":"libvirt-3-format"}`,
			"-device", `{"driver":"virtio-blk-pci","bus":"pci.0","addr":"0x5","drive":"libvirt-2-format","id":"virtio-disk0","bootindex":1,"serial":"root"}`,
			"-blockdev", `{"driver":"file","filename":"/c/data,2.qcow2","node-name":"libvirt-1-storage","auto-read-only":true,"discard":"unmap"}`,
			"-blockdev", `{"node-name":"libvirt-1-format","read-only":false,"driver":"qcow2","file":"libvirt-1-storage","backing":null}`,
			"-device", `{"driver":"virtio-blk-pci","bus":"pci.0","addr":"0x6","drive":"libvirt-1-format","id":"ua-data","serial":"data"}`,
			"-netdev", `{"type":"tap","fd":"33","vhost":true,"vhostfd":"35","id":"hostnet0"}`,
			"-device", `{"driver":"virtio-net-pci","netdev":"hostnet0","id":"net0","mac":"52:54:00:cc:bb:aa","bus":"pci.0","addr":"0x3"}`,
			"-chardev", "file,id=charserial0,path=/c/serial.log,append=on",
			"-device", `{"driver":"isa-serial","chardev":"charserial0","id":"serial0","index":0}`,
			"-chardev", "socket,id=charchannel0,server=on,wait=off,path=/c/qga.sock",
			"-device", `{"driver":"virtserialport","bus":"virtio-serial0.0","nr":1,"chardev":"charchannel0","id":"channel0","name":"org.qemu.guest_agent.0"}`,
			"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
			"-msg", "timestamp=on",
		},
	}, {
		name: "drive",
		args: driveArgv,
		opts: hypervisor.CloneOptions{
			Name: "copy=2", UUID: uuid,
			MAC: macs(t, map[string]string{"52:54:00:00:00:01": "52:54:00:00:01:01", "52:54:00:00:00:02": "52:54:00:00:01:02"}),
			Disks: map[string]string{
				"/vm/a,b.qcow2":      "/c/a,b.qcow2",
				"/vm/data.raw":       "/c/data.raw",
				"/vm/keyval.qcow2":   "/c/keyval.qcow2",
				"/vm/kv4,x.qcow2":    "/c/kv4.qcow2",
				"/vm/positional.img": "/c/positional.img",
			},
			QMPSocket: "/c/qmp.sock",
			SerialLog: "/c/serial.log",
			UEFIVars:  "/c/vars.fd",
		},
		want: []string{
			"--enable-kvm", "-m", "1024",
			"-name", "guest=copy=2",
			"-uuid", uuid,
			"-drive", "file=/c/a,,b.qcow2,format=qcow2,if=virtio,serial=s1",
			"-drive", "file=/c/data.raw,format=raw,if=none,id=d2,cache=none",
			"-device", "virtio-blk-pci,drive=d2,id=vdb,serial=data",
			"-drive", "driver=qcow2,file.driver=file,file.filename=/c/keyval.qcow2,if=none,id=d3",
			"-device", "virtio-blk-pci,drive=d3",
			"-blockdev", "driver=qcow2,node-name=kv4,file.driver=file,file.filename=/c/kv4.qcow2",
			"-device", "virtio-blk-pci,drive=kv4,id=vdd",
			"-cdrom", "/iso/install.iso",
			"-pflash", "/fw/OVMF_CODE.fd",
			"-pflash", "/c/vars.fd",
			"-nic", "user,model=virtio,mac=52:54:00:00:01:01",
			"-net", "nic,macaddr=52:54:00:00:01:02",
			"-net", "user",
			"-qmp", "unix:/c/qmp.sock,server=on,wait=off",
			"-serial", "file:/c/serial.log",
			"-monitor", "stdio",
			"-append", "-v quiet",
			"-vnc", ":1",
			"/c/positional.img",
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			in := hypervisor.LaunchSpec{Binary: "/usr/bin/qemu-system-x86_64", Args: tc.args, Dir: "/"}
			got, err := in.Clone(tc.opts)
			if err != nil {
				t.Fatalf("Clone: %v", err)
			}
			if got.Binary != in.Binary || got.Dir != in.Dir {
				t.Fatalf("Clone changed the binary or directory: %+v", got)
			}
			if !reflect.DeepEqual(got.Args, tc.want) {
				t.Fatalf("Clone:\n%s", argDiff(got.Args, tc.want))
			}
			// The clone reads back as asked, and the original is unchanged.
			info, err := got.Info()
			if err != nil {
				t.Fatalf("Info of the clone: %v", err)
			}
			if info.Name != tc.opts.Name || info.UUID != uuid || info.UEFIVars != tc.opts.UEFIVars ||
				(tc.opts.QMPSocket != "" && info.QMPSocket != tc.opts.QMPSocket) || info.Daemonize {
				t.Fatalf("Info of the clone = %+v", info)
			}
			for _, d := range info.Disks {
				if _, old := tc.opts.Disks[d.Path]; old {
					t.Fatalf("clone still uses %s", d.Path)
				}
			}
			if !reflect.DeepEqual(in.Args, tc.args) {
				t.Fatalf("Clone modified its receiver")
			}
		})
	}
}

// argDiff lists the differences of two argument lists.
func argDiff(got, want []string) string {
	var b strings.Builder
	for i := 0; i < max(len(got), len(want)); i++ {
		var g, w string
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		if g != w {
			fmt.Fprintf(&b, "  [%d] got  %s\n       want %s\n", i, g, w)
		}
	}
	return b.String()
}

// without returns args without the options whose value contains s.
func without(args []string, s string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		if strings.HasPrefix(args[i], "-") && i+1 < len(args) && strings.Contains(args[i+1], s) {
			i++
			continue
		}
		out = append(out, args[i])
	}
	return out
}

// plus returns args with more appended, leaving args alone.
func plus(args []string, more ...string) []string {
	return append(append([]string(nil), args...), more...)
}

func TestLaunchSpecCloneRefuses(t *testing.T) {
	full := hypervisor.CloneOptions{
		Name: "c", Disks: map[string]string{"/d/boot.qcow2": "/e/b", "/d/data1 <&>.qcow2": "/e/d"},
		QMPSocket: "/e/q", AgentSocket: "/e/a", SerialLog: "/e/s", UEFIVars: "/e/v",
	}
	with := func(f func(o *hypervisor.CloneOptions)) hypervisor.CloneOptions {
		o := full
		o.Disks = map[string]string{}
		for k, v := range full.Disks {
			o.Disks[k] = v
		}
		f(&o)
		return o
	}
	for _, tc := range []struct {
		name string
		args []string
		opts hypervisor.CloneOptions
		want string
	}{
		{"unmapped disk", testenvArgv, with(func(o *hypervisor.CloneOptions) { delete(o.Disks, "/d/boot.qcow2") }), "disks not mapped to a copy: /d/boot.qcow2"},
		{"unknown disk", testenvArgv, with(func(o *hypervisor.CloneOptions) { o.Disks["/d/other"] = "/e/o" }), "disk /d/other is not in the configuration"},
		{"no name", testenvArgv, with(func(o *hypervisor.CloneOptions) { o.Name = "" }), "invalid name"},
		{"bad UUID", testenvArgv, with(func(o *hypervisor.CloneOptions) { o.UUID = "nope" }), `invalid UUID "nope"`},
		{"bad MAC", testenvArgv, with(func(o *hypervisor.CloneOptions) { o.MAC = func(string) string { return "01:00:5e:00:00:01" } }), "invalid MAC address"},
		{"QMP socket not mapped", testenvArgv, with(func(o *hypervisor.CloneOptions) { o.QMPSocket = "" }), "the QMP monitor at /d/qmp.sock is not mapped"},
		{"agent socket not mapped", testenvArgv, with(func(o *hypervisor.CloneOptions) { o.AgentSocket = "" }), "the guest agent at /d/qga.sock is not mapped"},
		{"serial log not mapped", testenvArgv, with(func(o *hypervisor.CloneOptions) { o.SerialLog = "" }), "the serial port at /d/serial.log is not mapped"},
		{"vars not mapped", testenvArgv, with(func(o *hypervisor.CloneOptions) { o.UEFIVars = "" }), "the UEFI variable store /d/OVMF_VARS.fd is not mapped"},
		{"vars without UEFI", without(testenvArgv, "if=pflash"), with(func(o *hypervisor.CloneOptions) {}), "a UEFI variable store is given but the VM has none"},
		{"unknown path", testenvArgv, with(func(o *hypervisor.CloneOptions) { o.Paths = map[string]string{"/x": "/y"} }), "path /x is not in the configuration"},
		{"other socket", plus(testenvArgv, "-chardev", "socket,id=c,path=/d/console.sock,server=on,wait=off"), full, "chardev c: host path /d/console.sock is not mapped"},
		{"fd socket", plus(testenvArgv, "-chardev", "socket,id=c,fd=3"), full, "an inherited descriptor (fd=3) cannot be cloned"},
		{"network disk", plus(testenvArgv, "-blockdev", `{"driver":"raw","node-name":"n","file":{"driver":"nbd","server":{"type":"inet","host":"h","port":"10809"},"export":"e"}}`), full, "disks on network storage (nbd (node n))"},
		{"json filename", plus(testenvArgv, "-drive", `file=json:{"driver":"file"}`), full, "json: pseudo-filename"},
		{"bad JSON", plus(testenvArgv, "-blockdev", `{"driver":"file","driver":"raw"}`), full, `duplicate JSON key "driver"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := hypervisor.LaunchSpec{Binary: "qemu", Args: tc.args}.Clone(tc.opts)
			if !errors.Is(err, hypervisor.ErrBadConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Clone: %v, want ErrBadConfig with %q", err, tc.want)
			}
		})
	}
}

func TestLaunchSpecCloneAddsQMP(t *testing.T) {
	in := hypervisor.LaunchSpec{Binary: "qemu", Args: []string{"-m", "128", "-hda", "/a.img"}}
	got, err := in.Clone(hypervisor.CloneOptions{Name: "n", Disks: map[string]string{"/a.img": "/b.img"}, QMPSocket: "/s/q"})
	if err != nil {
		t.Fatalf("Clone: %v", err)
	}
	info, err := got.Info()
	if err != nil {
		t.Fatalf("Info: %v", err)
	}
	if info.Name != "n" || info.QMPSocket != "/s/q" || len(info.Disks) != 1 || info.Disks[0].Path != "/b.img" || info.UUID == "" {
		t.Fatalf("clone %q: %+v", got.Args, info)
	}
	if got.Args[0] != "-name" || got.Args[2] != "-uuid" {
		t.Fatalf("clone %q: want -name and -uuid first", got.Args)
	}
}

func TestRandomMACAndUUID(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		m := hypervisor.RandomMAC()
		if !strings.HasPrefix(m, "52:54:00:") || len(m) != 17 || seen[m] {
			t.Fatalf("RandomMAC() = %q (seen %v)", m, seen[m])
		}
		seen[m] = true
		u := hypervisor.NewUUID()
		if len(u) != 36 || u[14] != '4' || !strings.ContainsRune("89ab", rune(u[19])) || seen[u] {
			t.Fatalf("NewUUID() = %q", u)
		}
		seen[u] = true
	}
}
