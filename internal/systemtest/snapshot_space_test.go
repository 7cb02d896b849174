package systemtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/guestagent"
	"github.com/twinsnap/twinsnap/internal/api"
	"github.com/twinsnap/twinsnap/internal/hypervisor"
	"github.com/twinsnap/twinsnap/internal/testenv"
)

// TestSnapshotRefusedForSpace is must-show 3: with containers that hold
// the volumes alone, a snapshot is refused with a clear error before the
// guest is touched (no snapshot record, no bitmap, no freeze); after
// `volume-container expand` the same snapshot goes through.
func TestSnapshotRefusedForSpace(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	e := newQEMUSnapEnv(t, ctx, []testenv.DiskSpec{{Serial: "data1", SizeMiB: 64}}, 100)

	res := e.c.CLI(ctx, testenv.Witness, "snapshot", "create", "guest", "--no-data", "--wait")
	if res.Exit != 9 { // the CLI's documented exit code for no space
		t.Fatalf("snapshot into full containers: exit %d, want 9:\n%s%s", res.Exit, res.Stdout, res.Stderr)
	}
	for _, want := range []string{"not enough space", "boot", "bytes free", "volume-container expand"} {
		if !strings.Contains(res.Stderr, want) {
			t.Fatalf("refusal does not say %q:\n%s", want, res.Stderr)
		}
	}
	t.Logf("refused (exit %d): %s", res.Exit, strings.TrimSpace(res.Stderr))
	list, err := e.cl.Snapshots(ctx, api.SnapshotFilter{})
	if err != nil || len(list.Snapshots) != 0 {
		t.Fatalf("snapshots after the refusal: %+v %v", list, err)
	}
	// The guest was not touched: QEMU holds no dirty bitmap (a capture
	// adds one in the transaction that the freeze surrounds).
	m, err := hypervisor.OpenQEMU(ctx, "guest", e.vm.QEMU.QMPSocket, "")
	if err != nil {
		t.Fatalf("%v", err)
	}
	devs, err := hypervisor.BlockDevices(ctx, m.QMP())
	_ = m.Close()
	if err != nil {
		t.Fatalf("%v", err)
	}
	for _, d := range devs {
		if len(d.Bitmaps) > 0 {
			t.Fatalf("disk %s has bitmaps %+v after a refused snapshot", d.NodeName, d.Bitmaps)
		}
	}

	// Expand the boot volume's containers and try again.
	var boot api.SnapshotVolume
	for _, v := range e.vm.Volumes {
		if v.Boot {
			boot.VolumeID, boot.Name = v.ID, v.Name
			boot.SizeBytes = v.SizeBytes
		}
	}
	out := e.c.CLI(ctx, testenv.DataA, "volume-container", "expand", "guest/"+boot.Name, "--capacity", fmt.Sprint(3*boot.SizeBytes), "--output", "json")
	if out.Exit != 0 {
		t.Fatalf("expand: exit %d\n%s%s", out.Exit, out.Stdout, out.Stderr)
	}
	var cts api.VolumeContainerList
	if err := json.Unmarshal([]byte(out.Stdout), &cts); err != nil || len(cts.Containers) != 2 {
		t.Fatalf("expand output %v: %s", err, out.Stdout)
	}
	for _, ct := range cts.Containers {
		if ct.CapacityBytes != 3*boot.SizeBytes || ct.FreeBytes != 2*boot.SizeBytes {
			t.Fatalf("container after expand %+v", ct)
		}
	}
	// Shrinking is refused.
	if out := e.c.CLI(ctx, testenv.DataA, "volume-container", "expand", "guest/"+boot.Name, "--capacity", fmt.Sprint(boot.SizeBytes)); out.Exit == 0 {
		t.Fatalf("a container shrank:\n%s", out.Stdout)
	}
	// Snapshots turned off system-wide are refused too (exit 6), and on
	// again they go through.
	if out := e.c.CLI(ctx, testenv.DataA, "settings", "snapshots", "disable"); out.Exit != 0 {
		t.Fatalf("disable: %s%s", out.Stdout, out.Stderr)
	}
	if out := e.c.CLI(ctx, testenv.Witness, "snapshot", "create", "guest", "--no-data"); out.Exit != 6 || !strings.Contains(out.Stderr, "disabled") {
		t.Fatalf("a snapshot while disabled: exit %d: %s", out.Exit, out.Stderr)
	}
	if out := e.c.CLI(ctx, testenv.DataA, "settings", "snapshots", "enable"); out.Exit != 0 {
		t.Fatalf("enable: %s%s", out.Stdout, out.Stderr)
	}
	res = e.c.CLI(ctx, testenv.Witness, "snapshot", "create", "guest", "--no-data", "--wait", "--output", "json")
	if res.Exit != 0 {
		t.Fatalf("snapshot after expand: exit %d\n%s%s", res.Exit, res.Stdout, res.Stderr)
	}
	var sn api.Snapshot
	if err := json.Unmarshal([]byte(res.Stdout), &sn); err != nil || sn.State != api.StateComplete || len(sn.Volumes) != 1 {
		t.Fatalf("snapshot after expand %v: %+v", err, sn)
	}
}

// TestSnapshotIncrementalChain is must-show 4: after a full snapshot of a
// 2 GiB volume, changing 1% of it makes an incremental snapshot that
// transfers and stores about 1%; deleting the middle of three snapshots
// keeps the other two restorable: VMs created from both boot and hold
// their marker files.
func TestSnapshotIncrementalChain(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	e := newQEMUSnapEnv(t, ctx, []testenv.DiskSpec{{Serial: "big", SizeMiB: 2048}}, 0)
	const size = 2 << 30

	snap := func(marker string) *api.Snapshot {
		t.Helper()
		e.sh(t, ctx, fmt.Sprintf("echo %s > /mnt/big/%s && sync", marker, marker))
		sn, err := e.cl.CreateSnapshot(ctx, api.SnapshotCreateRequest{VM: "guest", Volumes: []string{"big"}})
		if err != nil {
			t.Fatalf("snapshot: %v", err)
		}
		return waitSnapshot(t, ctx, e.cl, sn.ID, api.StateComplete, 5*time.Minute)
	}
	volume := func(sn *api.Snapshot) api.SnapshotVolume {
		for _, v := range sn.Volumes {
			if v.Name == "big" {
				return v
			}
		}
		t.Fatalf("no volume big in %+v", sn)
		return api.SnapshotVolume{}
	}
	change1pct := func(name string) {
		// 20 MiB of fresh data: 1% of the volume (ext4 adds a little
		// metadata).
		e.sh(t, ctx, "dd if=/dev/urandom of=/mnt/big/"+name+" bs=1M count=20 2>/dev/null && sync")
	}

	s1 := snap("marker-a")
	v1 := volume(s1)
	if v1.ParentID != "" || v1.FullReason == "" {
		t.Fatalf("first snapshot's volume %+v", v1)
	}
	change1pct("change1")
	s2 := snap("marker-b")
	v2 := volume(s2)
	if v2.ParentID != s1.ID {
		t.Fatalf("second snapshot's volume is not incremental to the first: %+v", v2)
	}
	ratio := float64(v2.StoredBytes) / size
	t.Logf("full snapshot stores %d bytes; the 1%% incremental stores %d bytes (%.2f%% of the 2 GiB volume) and transferred an image of %d bytes",
		v1.StoredBytes, v2.StoredBytes, 100*ratio, replicaBytes(t, s2, testenv.DataB, v2.VolumeID))
	if ratio < 0.009 || ratio > 0.02 {
		t.Fatalf("the 1%% incremental stores %.2f%% of the volume", 100*ratio)
	}
	change1pct("change2")
	s3 := snap("marker-c")
	if v3 := volume(s3); v3.ParentID != s2.ID {
		t.Fatalf("third snapshot's volume is not incremental to the second: %+v", v3)
	}

	// Delete the middle one; it merges into the third on both nodes.
	if _, err := e.cl.DeleteSnapshot(ctx, s2.ID); err != nil {
		t.Fatalf("delete: %v", err)
	}
	gone := time.Now().Add(2 * time.Minute)
	for {
		_, err := e.cl.Snapshot(ctx, s2.ID)
		var ae *api.Error
		if errors.As(err, &ae) && ae.Detail.Code == api.CodeNotFound {
			break
		}
		if time.Now().After(gone) {
			t.Fatalf("deleted snapshot still there: %v", err)
		}
		time.Sleep(250 * time.Millisecond)
	}
	for _, node := range []string{testenv.DataA, testenv.DataB} {
		if left := snapshotFiles(t, e.c, node, s2.ID); len(left) > 0 {
			t.Fatalf("%s still holds %v of the deleted snapshot", node, left)
		}
	}
	s3now, err := e.cl.Snapshot(ctx, s3.ID)
	if err != nil || volume(s3now).ParentID != s1.ID {
		t.Fatalf("third snapshot after the merge: %v %+v", err, s3now)
	}

	// Both remaining snapshots restore.
	for _, tc := range []struct {
		sn      *api.Snapshot
		name    string
		present []string
		absent  []string
	}{
		{s1, "from-first", []string{"marker-a"}, []string{"marker-b", "marker-c"}},
		{s3, "from-third", []string{"marker-a", "marker-b", "marker-c"}, nil},
	} {
		res, err := e.cl.CreateVMFromSnapshot(ctx, tc.sn.ID, api.CreateVMRequest{Name: tc.name})
		if err != nil {
			t.Fatalf("create VM from %s: %v", tc.sn.ID, err)
		}
		t.Cleanup(func() { stopCreatedVM(t, context.Background(), res) })
		if !res.Started || !res.AgentReady || len(res.MACs) == 0 {
			t.Fatalf("created VM %+v", res)
		}
		t.Logf("VM %s from snapshot %s: booted, agent ready in %.1f s, MACs %v", tc.name, tc.sn.ID, res.Seconds, res.MACs)
		ga, err := guestagentFor(ctx, res)
		if err != nil {
			t.Fatalf("agent of %s: %v", tc.name, err)
		}
		for _, m := range tc.present {
			if out := strings.TrimSpace(guestSh(t, ctx, ga, "cat /mnt/big/"+m)); out != m {
				t.Fatalf("%s: %s holds %q", tc.name, m, out)
			}
		}
		for _, m := range tc.absent {
			if st, err := ga.Run(ctx, "/bin/sh", "-c", "test -e /mnt/big/"+m); err != nil || st.ExitCode == 0 {
				t.Fatalf("%s: %s must not exist (err %v)", tc.name, m, err)
			}
		}
		ga.Close()
	}
}

// replicaBytes returns the size of a node's image of a volume.
func replicaBytes(t *testing.T, sn *api.Snapshot, node, volumeID string) int64 {
	for _, r := range sn.Replicas {
		if r.Node != node {
			continue
		}
		for _, v := range r.Volumes {
			if v.VolumeID == volumeID {
				return v.StoredBytes
			}
		}
	}
	t.Fatalf("no replica of %s on %s", volumeID, node)
	return 0
}

// guestagentFor opens the agent of a VM created from a snapshot.
func guestagentFor(ctx context.Context, res *api.CreateVMResult) (*guestagent.Client, error) {
	if res.VM.QEMU == nil {
		return nil, fmt.Errorf("VM %s is not a bare QEMU VM", res.VM.Name)
	}
	m, err := hypervisor.OpenQEMU(ctx, res.VM.Name, res.VM.QEMU.QMPSocket, res.VM.QEMU.AgentSocket)
	if err != nil {
		return nil, err
	}
	return guestagent.NewClient(machineAgent{m}), nil
}

// stopCreatedVM quits a bare QEMU VM made by create-from-snapshot.
func stopCreatedVM(t *testing.T, ctx context.Context, res *api.CreateVMResult) {
	t.Helper()
	m, err := hypervisor.OpenQEMU(ctx, res.VM.Name, res.VM.QEMU.QMPSocket, "")
	if err != nil {
		return // already gone
	}
	defer func() { _ = m.Close() }()
	if err := m.Quit(ctx); err != nil {
		t.Errorf("stopping %s: %v", res.VM.Name, err)
	}
}
