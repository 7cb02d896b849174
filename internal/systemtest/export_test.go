package systemtest

import (
	"context"
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
	job, err := cl2.Import(ctx, api.ImportRequest{Share: "nas", Path: "exports/guest-qcow2/guest-qcow2.ovf", Name: "imported"})
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
