package systemtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/cluster/command"
	"github.com/twinsnap/twinsnap/internal/api"
	"github.com/twinsnap/twinsnap/internal/testenv"
)

// waitJob polls a job until it is done (failing the test if it fails or
// is cancelled) within bound.
func waitJob(t *testing.T, ctx context.Context, cl *api.Client, id string, bound time.Duration) *api.Job {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	var last *api.Job
	for {
		j, err := cl.Job(ctx, id)
		if err == nil {
			last = j
			switch j.State {
			case "done":
				return j
			case "failed", "cancelled":
				t.Fatalf("job %s %s: %s", id, j.State, j.Error)
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("job %s not done within %v; last %+v (err %v)", id, bound, last, err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// addSambaShare registers a Samba server's share with a cluster.
func addSambaShare(t *testing.T, ctx context.Context, cl *api.Client, name string, smb *testenv.Samba) {
	t.Helper()
	if _, err := cl.AddShare(ctx, api.ShareAddRequest{Name: name, URL: "smb://" + smb.Addr + "/" + smb.Share, User: smb.User, Password: smb.Password}); err != nil {
		t.Fatalf("share add: %v", err)
	}
	list, err := cl.Shares(ctx)
	if err != nil || len(list.Shares) != 1 || !list.Shares[0].HasPassword {
		t.Fatalf("shares %+v %v", list, err)
	}
}

// TestExportImportRoundTrip is must-show 1 of the export issue: a
// complete snapshot goes to an encrypted Samba share as a qcow2 package
// and as a VMDK one; every exported disk passes qemu-img check and
// compares equal to the snapshot; a second, separately started twinsnap
// system imports the qcow2 package as a new VM that boots, whose agent
// answers, whose marker files match and whose MAC differs.
func TestExportImportRoundTrip(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	e := newQEMUSnapEnv(t, ctx, []testenv.DiskSpec{{Serial: "data1", SizeMiB: 64}}, 0)
	smb := testenv.StartSamba(t, testenv.SambaOptions{})
	e.sh(t, ctx, "echo exported > /mnt/data1/marker && sync")
	sn, err := e.cl.CreateSnapshot(ctx, api.SnapshotCreateRequest{VM: "guest"})
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	done := waitSnapshot(t, ctx, e.cl, sn.ID, api.StateComplete, 3*time.Minute)
	addSambaShare(t, ctx, e.cl, "nas", smb)

	for _, format := range []string{"qcow2", "vmdk"} {
		job, err := e.cl.ExportSnapshot(ctx, sn.ID, api.ExportRequest{Share: "nas", Dir: "exports", Package: "guest-" + format, Format: format})
		if err != nil {
			t.Fatalf("export %s: %v", format, err)
		}
		j := waitJob(t, ctx, e.cl, job.ID, 5*time.Minute)
		t.Logf("export %s: %d bytes", format, j.Bytes)
		pkgDir := filepath.Join(smb.Dir, "exports", "guest-"+format)
		for _, v := range done.Volumes {
			file := filepath.Join(pkgDir, "guest-"+format+"-"+v.Name+"."+format)
			if _, err := os.Stat(file); err != nil {
				t.Fatalf("exported disk: %v", err)
			}
			if out, err := runTool(ctx, "qemu-img", "check", file); err != nil {
				t.Fatalf("qemu-img check %s: %v\n%s", file, err, out)
			}
			snap := imagePath(e.c, testenv.DataA, sn.ID, v.VolumeID)
			eq, out, err := testenv.CompareImages(ctx, snap, file)
			if err != nil || !eq {
				t.Fatalf("%s: exported %s vs snapshot: equal %v err %v: %s", v.Name, format, eq, err, out)
			}
		}
		for _, f := range []string{"guest-" + format + ".ovf", "guest-" + format + ".mf"} {
			if _, err := os.Stat(filepath.Join(pkgDir, f)); err != nil {
				t.Fatalf("package file: %v", err)
			}
		}
	}

	// A second twinsnap system imports the qcow2 package.
	c2 := testenv.StartCluster(t, testenv.ClusterOptions{})
	if _, err := c2.WaitLeader(ctx, "data"); err != nil {
		t.Fatalf("%v", err)
	}
	cl2 := c2.Client(testenv.DataA)
	defer cl2.Close()
	addSambaShare(t, ctx, cl2, "nas", smb)
	job, err := cl2.Import(ctx, api.ImportRequest{Share: "nas", Path: "exports/guest-qcow2/guest-qcow2.ovf", Name: "imported",
		// The re-addressing hook: a program of the guest's, run through
		// guest-exec once it is up.
		Readdress: "/bin/sh", ReaddressArgs: []string{"-c", "echo 10.0.0.9/24 > /run/readdressed"}})
	if err != nil {
		t.Fatalf("import: %v", err)
	}
	j := waitJob(t, ctx, cl2, job.ID, 8*time.Minute)
	vm, err := cl2.VM(ctx, "imported")
	if err != nil || vm.ID != j.VMID {
		t.Fatalf("imported VM %+v (job says %s): %v", vm, j.VMID, err)
	}
	t.Cleanup(func() { stopCreatedVM(t, context.Background(), &api.CreateVMResult{VM: vm.VM}) })
	res := &api.CreateVMResult{VM: vm.VM}
	ga, err := guestagentFor(ctx, res)
	if err != nil {
		t.Fatalf("agent of the imported VM: %v", err)
	}
	defer ga.Close()
	if out := strings.TrimSpace(guestSh(t, ctx, ga, "cat /mnt/data1/marker")); out != "exported" {
		t.Fatalf("marker in the imported VM: %q", out)
	}
	if out := strings.TrimSpace(guestSh(t, ctx, ga, "cat /run/readdressed")); out != "10.0.0.9/24" {
		t.Fatalf("the re-addressing hook did not run: %q", out)
	}
	mac := strings.TrimSpace(guestSh(t, ctx, ga, "cat /sys/class/net/eth0/address"))
	if strings.EqualFold(mac, e.mac) || mac == "" {
		t.Fatalf("imported VM's MAC %q, source %q", mac, e.mac)
	}
	if vm.Driver != command.DriverQEMU || vm.HostNode != testenv.DataA {
		t.Fatalf("imported VM %+v", vm.VM)
	}
	t.Logf("imported VM %s: marker matches, MAC %s (source %s)", vm.Name, mac, e.mac)
}

// runTool runs a program and returns its combined output.
func runTool(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

// TestImportRefusesBadPackages is must-show 4 of the export issue through
// the daemon: import jobs of tampered packages fail with their own clear
// error and leave no VM, no registration and no files behind.
func TestImportRefusesBadPackages(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c := testenv.StartCluster(t, testenv.ClusterOptions{})
	if _, err := c.WaitLeader(ctx, "data"); err != nil {
		t.Fatalf("%v", err)
	}
	cl := c.Client(testenv.DataA)
	defer cl.Close()
	dir := t.TempDir()
	if _, err := cl.AddShare(ctx, api.ShareAddRequest{Name: "local", URL: "file://" + dir}); err != nil {
		t.Fatalf("share: %v", err)
	}
	// A valid package to tamper with: one small qcow2 disk.
	good := filepath.Join(dir, "good")
	if err := os.MkdirAll(good, 0o755); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(good, "good-boot.qcow2")
	if out, err := runTool(ctx, "qemu-img", "create", "-q", "-f", "qcow2", disk, "16M"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if out, err := runTool(ctx, "qemu-io", "-c", "write -P 0x5a 0 1M", disk); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	fi, _ := os.Stat(disk)
	ovf := foreignOVF("%s", fi.Size(), qcow2FormatURI)
	write := func(pkg, href, ovfText string, tamper func(pkgDir string)) {
		t.Helper()
		pdir := filepath.Join(dir, pkg)
		if err := os.MkdirAll(pdir, 0o755); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(disk)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(pdir, pkg+"-boot.qcow2"), b, 0o644); err != nil {
			t.Fatal(err)
		}
		text := fmt.Sprintf(ovfText, href)
		if err := os.WriteFile(filepath.Join(pdir, pkg+".ovf"), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		mf := fmt.Sprintf("SHA256(%s.ovf)= %s\nSHA256(%s-boot.qcow2)= %s\n", pkg, fileSHA(t, filepath.Join(pdir, pkg+".ovf")), pkg, fileSHA(t, filepath.Join(pdir, pkg+"-boot.qcow2")))
		if err := os.WriteFile(filepath.Join(pdir, pkg+".mf"), []byte(mf), 0o644); err != nil {
			t.Fatal(err)
		}
		if tamper != nil {
			tamper(pdir)
		}
	}
	cases := []struct {
		name, href string
		tamper     func(string)
		want       string
	}{
		{"liar", "liar-boot.qcow2", func(p string) {
			f, _ := os.OpenFile(filepath.Join(p, "liar-boot.qcow2"), os.O_WRONLY, 0)
			_, _ = f.WriteAt([]byte("tampered"), 1<<20)
			f.Close()
		}, "checksum"},
		{"escape", "../../../etc/passwd", nil, "unsafe"},
		{"entity", "entity-boot.qcow2", func(p string) {
			b, _ := os.ReadFile(filepath.Join(p, "entity.ovf"))
			b = []byte(strings.Replace(string(b), "<Envelope", `<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><Envelope`, 1))
			_ = os.WriteFile(filepath.Join(p, "entity.ovf"), b, 0o644)
		}, "entit"},
		{"truncated", "truncated-boot.qcow2", func(p string) {
			_ = os.Truncate(filepath.Join(p, "truncated-boot.qcow2"), 4096)
		}, "truncat"},
	}
	for _, tc := range cases {
		write(tc.name, tc.href, ovf, tc.tamper)
		job, err := cl.Import(ctx, api.ImportRequest{Share: "local", Path: tc.name + "/" + tc.name + ".ovf", Name: "vm-" + tc.name})
		if err != nil {
			t.Fatalf("%s: import request: %v", tc.name, err)
		}
		deadline := time.Now().Add(2 * time.Minute)
		var j *api.Job
		for {
			j, err = cl.Job(ctx, job.ID)
			if err == nil && (j.State == "failed" || j.State == "done") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: job not ended: %+v %v", tc.name, j, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
		if j.State != "failed" || !strings.Contains(strings.ToLower(j.Error), tc.want) {
			t.Fatalf("%s: job %s with error %q, want failed naming %q", tc.name, j.State, j.Error, tc.want)
		}
		t.Logf("%s: refused: %s", tc.name, j.Error)
		if _, err := cl.VM(ctx, "vm-"+tc.name); err == nil {
			t.Fatalf("%s: a VM was registered", tc.name)
		}
		for _, d := range []string{"vms", "imports"} {
			left, _ := filepath.Glob(filepath.Join(c.Nodes[testenv.DataA].Dir, "data", d, "*"))
			if len(left) > 0 {
				t.Fatalf("%s: files left behind: %v", tc.name, left)
			}
		}
	}
	if _, err := os.Stat("/etc/passwd"); err != nil {
		t.Fatalf("%v", err)
	}
}

// Disk format URIs of OVF descriptors.
const (
	qcow2FormatURI = "https://gitlab.com/qemu-project/qemu/-/blob/master/docs/interop/qcow2.txt"
	vmdkFormatURI  = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
)

// foreignOVF is a minimal descriptor as other tools write it (no twinsnap
// section): one disk file on a SCSI controller, 1 CPU, 256 MiB.
func foreignOVF(href string, size int64, format string) string {
	return fmt.Sprintf(`<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData">
  <References><File ovf:id="file1" ovf:href="%s" ovf:size="%d"/></References>
  <DiskSection><Info>disks</Info><Disk ovf:diskId="vol-boot" ovf:fileRef="file1" ovf:capacity="16777216" ovf:capacityAllocationUnits="byte" ovf:format="%s"/></DiskSection>
  <VirtualSystem ovf:id="good"><Info>vm</Info><Name>good</Name>
    <VirtualHardwareSection><Info>hw</Info>
      <Item><rasd:ElementName>1 CPU</rasd:ElementName><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>1</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:ElementName>256 MiB</rasd:ElementName><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>256</rasd:VirtualQuantity></Item>
      <Item><rasd:ElementName>scsi0</rasd:ElementName><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceType>6</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:ElementName>boot</rasd:ElementName><rasd:HostResource>ovf:/disk/vol-boot</rasd:HostResource><rasd:InstanceID>4</rasd:InstanceID><rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
`, href, size, format)
}

// TestImportForeignPackage imports a package another tool could have
// written (a streamOptimized VMDK made by qemu-img, a descriptor without
// twinsnap's section): the job makes a running, registered VM of it with
// a launch spec made from the descriptor, without waiting for an agent
// the guest may not have. The share's password, meanwhile, appears in no
// log and no Raft file of any node.
func TestImportForeignPackage(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c := testenv.StartCluster(t, testenv.ClusterOptions{})
	if _, err := c.WaitLeader(ctx, "data"); err != nil {
		t.Fatalf("%v", err)
	}
	cl := c.Client(testenv.DataA)
	defer cl.Close()
	smb := testenv.StartSamba(t, testenv.SambaOptions{})
	addSambaShare(t, ctx, cl, "nas", smb)
	pkg := filepath.Join(smb.Dir, "foreign")
	if err := os.MkdirAll(pkg, 0o755); err != nil {
		t.Fatal(err)
	}
	raw := filepath.Join(t.TempDir(), "disk.raw")
	if out, err := runTool(ctx, "qemu-img", "create", "-q", "-f", "raw", raw, "16M"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if out, err := runTool(ctx, "qemu-io", "-f", "raw", "-c", "write -P 0x42 1M 2M", raw); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	vmdk := filepath.Join(pkg, "foreign-disk1.vmdk")
	if out, err := runTool(ctx, "qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", raw, vmdk); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	fi, err := os.Stat(vmdk)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pkg, "foreign.ovf"), []byte(foreignOVF("foreign-disk1.vmdk", fi.Size(), vmdkFormatURI)), 0o644); err != nil {
		t.Fatal(err)
	}
	mf := fmt.Sprintf("SHA256(foreign.ovf)= %s\nSHA256(foreign-disk1.vmdk)= %s\n", fileSHA(t, filepath.Join(pkg, "foreign.ovf")), fileSHA(t, vmdk))
	if err := os.WriteFile(filepath.Join(pkg, "foreign.mf"), []byte(mf), 0o644); err != nil {
		t.Fatal(err)
	}
	job, err := cl.Import(ctx, api.ImportRequest{Share: "nas", Path: "foreign/foreign.ovf", Name: "foreign"})
	if err != nil {
		t.Fatalf("import: %v", err)
	}
	j := waitJob(t, ctx, cl, job.ID, 5*time.Minute)
	vm, err := cl.VM(ctx, "foreign")
	if err != nil || vm.ID != j.VMID || len(vm.Volumes) != 1 || !vm.Volumes[0].Boot {
		t.Fatalf("the imported VM %+v: %v", vm, err)
	}
	t.Cleanup(func() { stopCreatedVM(t, context.Background(), &api.CreateVMResult{VM: vm.VM}) })
	// Its disk holds the package's data.
	eq, out, err := testenv.CompareImages(ctx, raw, vm.Volumes[0].Path)
	if err != nil || !eq {
		t.Fatalf("the imported disk differs from the source: %v %s", err, out)
	}
	t.Logf("foreign package imported as %s: disk %s equals the source", vm.Name, vm.Volumes[0].Path)

	// The password is nowhere in clear text on any node.
	for id, n := range c.Nodes {
		files := []string{n.LogPath}
		raftFiles, _ := filepath.Glob(filepath.Join(n.Dir, "data", "raft", "*"))
		files = append(files, raftFiles...)
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			if strings.Contains(string(b), smb.Password) {
				t.Fatalf("%s: the share's password is in %s", id, f)
			}
		}
	}
}
