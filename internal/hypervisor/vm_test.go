package hypervisor_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/guestagent"
	"github.com/twinsnap/twinsnap/internal/hypervisor"
	"github.com/twinsnap/twinsnap/internal/testenv"
)

// TestRealVM runs the package against a real TCG guest with two data
// volumes and the real qemu-ga: the block view against the guest's, a
// transaction of bitmap-add and a full backup followed by job id, an
// incremental backup through the bitmap, failures, a big reply, and Quit.
func TestRealVM(t *testing.T) {
	vm := testenv.StartVM(t, testenv.VMOptions{DataDisks: []testenv.DiskSpec{
		{Serial: "data1", SizeMiB: 64}, {Serial: "data2", SizeMiB: 64},
	}})
	defer leakCheck(t)()
	ctx := within(t, 8*time.Minute)
	m, err := hypervisor.OpenQEMU(ctx, "", vm.QMPSocket, vm.AgentSocket)
	if err != nil {
		t.Fatalf("OpenQEMU: %v", err)
	}
	defer closeQuietly(m)
	if m.Name() != vm.Name {
		t.Fatalf("Name() = %q, want %q (from query-name)", m.Name(), vm.Name)
	}
	if v := m.Conn().Greeting().Version; v.Major != 7 || v.Minor != 2 {
		t.Logf("QEMU %s, not 7.2: facts checked here may differ", v)
	}
	ga := guestagent.NewClient(m.Agent())

	// QEMU serves one monitor client at a time: a second one connects
	// but gets no greeting while the first is there.
	busy, cancel := context.WithTimeout(ctx, time.Second)
	if _, err := hypervisor.DialQMP(busy, "unix", vm.QMPSocket, hypervisor.WithLogger(quiet)); !errors.Is(err, hypervisor.ErrTimeout) {
		t.Fatalf("second monitor client: %v, want ErrTimeout", err)
	}
	cancel()

	t.Run("BlockDevices", func(t *testing.T) { testBlockDevices(ctx, t, vm, m, ga) })
	t.Run("BigReply", func(t *testing.T) { testBigReply(ctx, t, m) })
	t.Run("Backups", func(t *testing.T) { testBackups(ctx, t, vm, m, ga) })
	t.Run("JobFailure", func(t *testing.T) { testJobFailure(ctx, t, vm, m) })
	t.Run("FilterSpeedCancel", func(t *testing.T) { testFilterSpeedCancel(ctx, t, vm, m) })
	t.Run("GroupedRefused", func(t *testing.T) { testGroupedRefused(ctx, t, vm, m) })

	// Quit returns once QEMU has closed its images: the persistent bitmap
	// is then in the image, and the images are consistent.
	if err := m.Quit(ctx); err != nil {
		t.Fatalf("Quit: %v", err)
	}
	d1, _ := vm.Disk("data1")
	info := qemuImg(ctx, t, "info", "--output=json", d1.Path)
	var ii struct {
		FormatSpecific struct {
			Data struct {
				Bitmaps []struct {
					Name  string
					Flags []string
				}
			}
		} `json:"format-specific"`
	}
	if err := json.Unmarshal([]byte(info), &ii); err != nil {
		t.Fatalf("qemu-img info: %v: %s", err, info)
	}
	bm := ii.FormatSpecific.Data.Bitmaps
	if len(bm) != 1 || bm[0].Name != "ts-1" {
		t.Fatalf("bitmaps stored in data1 after Quit = %+v, want ts-1", bm)
	}
	t.Logf("data1 after Quit: bitmap %s flags %v", bm[0].Name, bm[0].Flags)
	qemuImg(ctx, t, "check", d1.Path)
}

func testBlockDevices(ctx context.Context, t *testing.T, vm *testenv.VM, m *hypervisor.QEMUMachine, ga *guestagent.Client) {
	devs, err := hypervisor.BlockDevices(ctx, m.QMP())
	if err != nil {
		t.Fatalf("BlockDevices: %v", err)
	}
	for _, got := range checkBlockDevices(t, devs, vm.Disks) {
		if got.TopNode != got.NodeName || got.ReadOnly {
			t.Fatalf("device %s = %+v: want no filter above the format node, writable", got.Serial, got)
		}
		if got.Serial != testenv.BootSerial && got.VirtualSize != 64<<20 {
			t.Fatalf("device %s: virtual size %d, want 64 MiB", got.Serial, got.VirtualSize)
		}
		t.Logf("%-6s node %-10s device %-11s PCI %s qdev %s", got.Serial, got.NodeName, got.DeviceID, pciString(*got.PCI), got.QOMPath)
	}

	// The guest's view: the disks behind /mnt/data1 and /mnt/data2
	// are at the PCI addresses QEMU reports for those volumes.
	fsinfo, err := ga.FSInfo(ctx)
	if err != nil {
		t.Fatalf("guest-get-fsinfo: %v", err)
	}
	_ = ga.Close() // free the agent socket; the next call dials again
	seen := map[string]bool{}
	for _, fs := range fsinfo {
		for _, d := range fs.Disks {
			dev, ok := hypervisor.MatchGuestDisk(devs, d)
			if !ok {
				t.Logf("guest %s on %s (PCI %s, serial %q): no block device", fs.Mountpoint, d.Dev, pciString(d.PCIController), d.Serial)
				continue
			}
			if d.Serial != "" && d.Serial != dev.Serial {
				t.Fatalf("guest %s: serial %q, QEMU %q", fs.Mountpoint, d.Serial, dev.Serial)
			}
			t.Logf("guest %-10s on %-9s PCI %s serial %-7q -> %s (%s)", fs.Mountpoint, d.Dev, pciString(d.PCIController), d.Serial, dev.Serial, dev.NodeName)
			if strings.HasPrefix(fs.Mountpoint, "/mnt/") {
				if want := strings.TrimPrefix(fs.Mountpoint, "/mnt/"); dev.Serial != want {
					t.Fatalf("guest %s is on PCI %s, which QEMU has for %s", fs.Mountpoint, pciString(d.PCIController), dev.Serial)
				}
				seen[fs.Mountpoint] = true
			}
		}
	}
	if !seen["/mnt/data1"] || !seen["/mnt/data2"] {
		t.Fatalf("guest file systems matched: %v; want /mnt/data1 and /mnt/data2 (fsinfo %+v)", seen, fsinfo)
	}
}

// checkBlockDevices fails the test unless devs holds exactly the test VM's
// disks, each with its node name, device id, file, qcow2 format and a PCI
// address of its own; it returns the device of each disk, in disk order.
func checkBlockDevices(t *testing.T, devs []hypervisor.BlockDevice, disks []testenv.Disk) []hypervisor.BlockDevice {
	t.Helper()
	if len(devs) != len(disks) {
		t.Fatalf("BlockDevices returned %d devices, want %d: %+v", len(devs), len(disks), devs)
	}
	pcis := map[string]bool{}
	var out []hypervisor.BlockDevice
	for _, want := range disks {
		var got *hypervisor.BlockDevice
		for i := range devs {
			if devs[i].Serial == want.Serial {
				got = &devs[i]
			}
		}
		if got == nil {
			t.Fatalf("no block device with serial %s: %+v", want.Serial, devs)
		}
		if got.NodeName != want.NodeName || got.DeviceID != want.DeviceID || got.File != want.Path || got.Format != "qcow2" || got.PCI == nil {
			t.Fatalf("device %s = %+v, want node %s, device %s, file %s, qcow2, a PCI address", want.Serial, *got, want.NodeName, want.DeviceID, want.Path)
		}
		key := pciString(*got.PCI)
		if pcis[key] {
			t.Fatalf("PCI address %s appears twice", key)
		}
		pcis[key] = true
		out = append(out, *got)
	}
	return out
}

func pciString(a guestagent.PCIAddress) string {
	return fmt.Sprintf("%04x:%02x:%02x.%x", a.Domain, a.Bus, a.Slot, a.Function)
}

func testBigReply(ctx context.Context, t *testing.T, m *hypervisor.QEMUMachine) {
	for _, cmd := range []string{"query-qmp-schema", "query-named-block-nodes"} {
		var raw json.RawMessage
		start := time.Now()
		if err := m.QMP().Execute(ctx, cmd, nil, &raw); err != nil {
			t.Fatalf("%s: %v", cmd, err)
		}
		t.Logf("%s: %d bytes in %v", cmd, len(raw), time.Since(start).Round(time.Millisecond))
		if cmd == "query-qmp-schema" && len(raw) <= 64<<10 {
			t.Fatalf("query-qmp-schema is %d bytes; expected more than 64 KiB", len(raw))
		}
	}
}

// testBackups takes a full backup of data1 in a transaction with a
// persistent bitmap, then an incremental one through the bitmap after the
// guest wrote a file, into an overlay of the full backup; each is compared
// with the source while data1 is frozen. A drive-backup of data2 checks
// that QEMU takes drive-backup in a transaction too.
func testBackups(ctx context.Context, t *testing.T, vm *testenv.VM, m *hypervisor.QEMUMachine, ga *guestagent.Client) {
	q := m.QMP()
	d1, _ := vm.Disk("data1")
	d2, _ := vm.Disk("data2")
	dir := t.TempDir()
	full := filepath.Join(dir, "data1-full.qcow2")
	inc := filepath.Join(dir, "data1-inc.qcow2")
	full2 := filepath.Join(dir, "data2-full.qcow2")
	qemuImg(ctx, t, "create", "-q", "-f", "qcow2", full, "64M")
	qemuImg(ctx, t, "create", "-q", "-f", "qcow2", full2, "64M")

	guestRun(ctx, t, ga, "dd if=/dev/urandom of=/mnt/data1/base bs=64k count=32 2>/dev/null && dd if=/dev/urandom of=/mnt/data2/base bs=64k count=8 2>/dev/null && sync")

	// Full backups, data1 through blockdev-backup with a new persistent
	// bitmap, data2 through drive-backup, in one transaction.
	freeze(ctx, t, ga, "/mnt/data1", "/mnt/data2")
	if err := hypervisor.BlockdevAdd(ctx, q, "tgt-full", full, "qcow2"); err != nil {
		t.Fatalf("BlockdevAdd: %v", err)
	}
	w1, w2 := hypervisor.WatchJob(q, "full-data1"), hypervisor.WatchJob(q, "full-data2")
	start := time.Now()
	err := hypervisor.Transaction(ctx, q, []hypervisor.Action{
		hypervisor.BitmapAdd(d1.NodeName, "ts-1", true),
		hypervisor.BlockdevBackup("full-data1", d1.NodeName, "tgt-full", hypervisor.SyncFull, "", 0, true, false),
		hypervisor.DriveBackup("full-data2", d2.NodeName, full2, "qcow2", hypervisor.ModeExisting, hypervisor.SyncFull, "", 0, true, true),
	}, nil)
	if err != nil {
		w1.Close()
		w2.Close()
		t.Fatalf("Transaction: %v", err)
	}
	txn := time.Since(start)
	r1, err := w1.Wait(ctx)
	if err != nil {
		t.Fatalf("full backup of data1: %+v, %v", r1, err)
	}
	r2, err := w2.Wait(ctx)
	if err != nil {
		t.Fatalf("full backup of data2: %+v, %v", r2, err)
	}
	t.Logf("full backups: transaction %v, jobs done after %v (data1 %d/%d bytes)", txn.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), r1.CurrentProgress, r1.TotalProgress)
	if err := hypervisor.BlockdevDel(ctx, q, "tgt-full"); err != nil {
		t.Fatalf("BlockdevDel: %v", err)
	}
	if jobs, err := hypervisor.QueryJobs(ctx, q); err != nil || len(jobs) != 0 {
		t.Fatalf("jobs left after Wait: %+v, %v", jobs, err)
	}
	compare(ctx, t, d1.Path, full)
	compare(ctx, t, d2.Path, full2)
	thaw(ctx, t, ga)
	fullData, fullActual := allocated(ctx, t, full)
	t.Logf("full backup of data1: %d KiB of data, %d KiB on disk", fullData>>10, fullActual>>10)

	// The guest writes 256 KiB; the incremental backup copies that and
	// the file system's metadata, into an overlay whose backing file is
	// the full backup, so that the chain is the whole disk.
	guestRun(ctx, t, ga, "dd if=/dev/urandom of=/mnt/data1/inc bs=64k count=4 2>/dev/null && sync")
	qemuImg(ctx, t, "create", "-q", "-f", "qcow2", "-b", full, "-F", "qcow2", inc)
	freeze(ctx, t, ga, "/mnt/data1")
	devs, err := hypervisor.BlockDevices(ctx, q)
	if err != nil {
		t.Fatalf("BlockDevices: %v", err)
	}
	if bm := bitmapOf(devs, "data1", "ts-1"); bm == nil || !bm.Persistent || !bm.Recording || bm.Count == 0 {
		t.Fatalf("bitmap ts-1 before the incremental backup = %+v, want persistent, recording, dirty", bm)
	} else {
		t.Logf("bitmap ts-1 before the incremental backup: %d KiB dirty, granularity %d KiB", bm.Count>>10, bm.Granularity>>10)
	}
	if err := hypervisor.BlockdevAdd(ctx, q, "tgt-inc", inc, "qcow2"); err != nil {
		t.Fatalf("BlockdevAdd: %v", err)
	}
	w := hypervisor.WatchJob(q, "inc-data1")
	err = hypervisor.Transaction(ctx, q, []hypervisor.Action{
		hypervisor.BlockdevBackup("inc-data1", d1.NodeName, "tgt-inc", hypervisor.SyncIncremental, "ts-1", 0, true, false),
	}, nil)
	if err != nil {
		w.Close()
		t.Fatalf("incremental Transaction: %v", err)
	}
	r, err := w.Wait(ctx)
	if err != nil {
		t.Fatalf("incremental backup: %+v, %v", r, err)
	}
	if err := hypervisor.BlockdevDel(ctx, q, "tgt-inc"); err != nil {
		t.Fatalf("BlockdevDel: %v", err)
	}
	devs, err = hypervisor.BlockDevices(ctx, q)
	if err != nil {
		t.Fatalf("BlockDevices: %v", err)
	}
	if bm := bitmapOf(devs, "data1", "ts-1"); bm == nil || bm.Count != 0 {
		t.Fatalf("bitmap ts-1 after the incremental backup = %+v, want cleared", bm)
	}
	compare(ctx, t, d1.Path, inc)
	thaw(ctx, t, ga)
	incData, incActual := allocated(ctx, t, inc)
	t.Logf("incremental backup of data1: job copied %d KiB; image holds %d KiB of data, %d KiB on disk", r.CurrentProgress>>10, incData>>10, incActual>>10)
	if incData < 256<<10 || incData > 2<<20 {
		t.Fatalf("incremental backup holds %d KiB; want the 256 KiB written and little more", incData>>10)
	}
	if fullData < 2<<20 {
		t.Fatalf("full backup holds only %d KiB; the 2 MiB written are missing", fullData>>10)
	}
}

// testJobFailure backs data1 up to a target that fails every write: the
// job ends with QEMU's error as ErrJobFailed, and an auto-dismissed job's
// error comes from its completion event.
func testJobFailure(ctx context.Context, t *testing.T, vm *testenv.VM, m *hypervisor.QEMUMachine) {
	q := m.QMP()
	d1, _ := vm.Disk("data1")
	err := q.Execute(ctx, "blockdev-add", map[string]any{
		"driver": "raw", "node-name": "tgt-bad",
		"file": map[string]any{
			"driver": "blkdebug",
			"image":  map[string]any{"driver": "null-co", "size": 64 << 20},
			"inject-error": []map[string]any{
				{"event": "pwritev", "errno": 5}, {"event": "pwritev_zero", "errno": 5},
			},
		},
	}, nil)
	if err != nil {
		t.Fatalf("blockdev-add blkdebug: %v", err)
	}
	defer func() {
		if err := hypervisor.BlockdevDel(ctx, q, "tgt-bad"); err != nil {
			t.Errorf("BlockdevDel: %v", err)
		}
	}()
	for _, autoDismiss := range []bool{true, false} {
		id := "bad-" + map[bool]string{true: "auto", false: "manual"}[autoDismiss]
		w := hypervisor.WatchJob(q, id)
		if err := hypervisor.Transaction(ctx, q, []hypervisor.Action{
			hypervisor.BlockdevBackup(id, d1.NodeName, "tgt-bad", hypervisor.SyncFull, "", 0, true, autoDismiss),
		}, nil); err != nil {
			w.Close()
			t.Fatalf("Transaction: %v", err)
		}
		res, err := w.Wait(ctx)
		if !errors.Is(err, hypervisor.ErrJobFailed) || res.Error == "" {
			t.Fatalf("%s: Wait = %+v, %v; want ErrJobFailed", id, res, err)
		}
		t.Logf("%s: %v", id, err)
	}
	// A job id that is not running.
	if err := hypervisor.SetJobSpeed(ctx, q, "nope", 1); !errors.Is(err, hypervisor.ErrNotFound) {
		t.Fatalf("SetJobSpeed(nope) = %v, want ErrNotFound", err)
	}
}

// testFilterSpeedCancel runs a throttled backup of data2: while it runs,
// QEMU has a copy-before-write filter above the volume's node, which
// BlockDevices looks through; the job's speed can be changed, and a
// cancelled job is reported as such.
func testFilterSpeedCancel(ctx context.Context, t *testing.T, vm *testenv.VM, m *hypervisor.QEMUMachine) {
	q := m.QMP()
	d2, _ := vm.Disk("data2")
	if err := q.Execute(ctx, "blockdev-add", map[string]any{"driver": "null-co", "node-name": "tgt-null", "size": 64 << 20}, nil); err != nil {
		t.Fatalf("blockdev-add null-co: %v", err)
	}
	w := hypervisor.WatchJob(q, "slow-data2")
	if err := hypervisor.Transaction(ctx, q, []hypervisor.Action{
		hypervisor.BlockdevBackup("slow-data2", d2.NodeName, "tgt-null", hypervisor.SyncFull, "", 1, true, false),
	}, nil); err != nil {
		w.Close()
		t.Fatalf("Transaction: %v", err)
	}
	devs, err := hypervisor.BlockDevices(ctx, q)
	if err != nil {
		t.Fatalf("BlockDevices during the job: %v", err)
	}
	var dev *hypervisor.BlockDevice
	for i := range devs {
		if devs[i].Serial == "data2" {
			dev = &devs[i]
		}
	}
	if dev == nil || dev.NodeName != d2.NodeName || dev.TopNode == d2.NodeName || dev.Format != "qcow2" || dev.File != d2.Path || dev.VirtualSize != 64<<20 {
		t.Fatalf("data2 during a backup = %+v; want node %s below a filter", dev, d2.NodeName)
	}
	t.Logf("data2 during a backup: top node %s above %s", dev.TopNode, dev.NodeName)
	if err := hypervisor.SetJobSpeed(ctx, q, "slow-data2", 2); err != nil {
		t.Fatalf("SetJobSpeed: %v", err)
	}
	jobs, err := hypervisor.QueryJobs(ctx, q)
	if err != nil || len(jobs) != 1 || jobs[0].Status != "running" {
		t.Fatalf("QueryJobs = %+v, %v; want slow-data2 running", jobs, err)
	}
	if err := hypervisor.CancelJob(ctx, q, "slow-data2"); err != nil {
		t.Fatalf("CancelJob: %v", err)
	}
	res, err := w.Wait(ctx)
	if !errors.Is(err, hypervisor.ErrJobFailed) || !res.Cancelled {
		t.Fatalf("Wait after cancel = %+v, %v; want a cancelled job", res, err)
	}
	t.Logf("cancelled: %+v", res)
	if err := hypervisor.BlockdevDel(ctx, q, "tgt-null"); err != nil {
		t.Fatalf("BlockdevDel: %v", err)
	}
	if devs, err = hypervisor.BlockDevices(ctx, q); err != nil {
		t.Fatalf("BlockDevices: %v", err)
	}
	for _, d := range devs {
		if d.TopNode != d.NodeName {
			t.Fatalf("filter left above %s after the job: %+v", d.Serial, d)
		}
	}
}

// testGroupedRefused checks the fact that QEMU refuses completion-mode
// grouped for a transaction holding block-dirty-bitmap-add, and that the
// refusal leaves nothing behind.
func testGroupedRefused(ctx context.Context, t *testing.T, vm *testenv.VM, m *hypervisor.QEMUMachine) {
	q := m.QMP()
	d2, _ := vm.Disk("data2")
	err := hypervisor.Transaction(ctx, q, []hypervisor.Action{
		hypervisor.BitmapAdd(d2.NodeName, "ts-grouped", true),
	}, &hypervisor.TransactionProps{CompletionMode: hypervisor.CompletionGrouped})
	var qe *hypervisor.QMPError
	if !errors.As(err, &qe) || qe.Class != "GenericError" || qe.Command != "transaction" {
		t.Fatalf("grouped transaction with bitmap-add = %v, want a GenericError", err)
	}
	t.Logf("refused: %s", qe.Desc)
	devs, err := hypervisor.BlockDevices(ctx, q)
	if err != nil {
		t.Fatalf("BlockDevices: %v", err)
	}
	if bm := bitmapOf(devs, "data2", "ts-grouped"); bm != nil {
		t.Fatalf("the refused transaction added bitmap %+v", bm)
	}
}

func bitmapOf(devs []hypervisor.BlockDevice, serial, name string) *hypervisor.DirtyBitmap {
	for _, d := range devs {
		if d.Serial != serial {
			continue
		}
		for i := range d.Bitmaps {
			if d.Bitmaps[i].Name == name {
				return &d.Bitmaps[i]
			}
		}
	}
	return nil
}

func guestRun(ctx context.Context, t *testing.T, ga *guestagent.Client, script string) {
	t.Helper()
	st, err := ga.Run(ctx, "/bin/sh", "-c", script)
	if err != nil || st.ExitCode != 0 {
		t.Fatalf("guest %q: %+v, %v", script, st, err)
	}
}

func freeze(ctx context.Context, t *testing.T, ga *guestagent.Client, mountpoints ...string) {
	t.Helper()
	n, err := ga.FreezeList(ctx, mountpoints)
	if err != nil || n != len(mountpoints) {
		t.Fatalf("freeze %v = %d, %v", mountpoints, n, err)
	}
	t.Cleanup(func() {
		tctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _ = ga.Thaw(tctx) // a no-op when thawed
	})
}

func thaw(ctx context.Context, t *testing.T, ga *guestagent.Client) {
	t.Helper()
	if _, err := ga.Thaw(ctx); err != nil {
		t.Fatalf("thaw: %v", err)
	}
}

// compare checks with qemu-img compare (sharing the images QEMU has open)
// that two images hold the same data.
func compare(ctx context.Context, t *testing.T, a, b string) {
	t.Helper()
	out, err := exec.CommandContext(ctx, "qemu-img", "compare", "-U", "-f", "qcow2", "-F", "qcow2", a, b).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img compare %s %s: %v: %s", filepath.Base(a), filepath.Base(b), err, out)
	}
	t.Logf("qemu-img compare %s %s: %s", filepath.Base(a), filepath.Base(b), strings.TrimSpace(string(out)))
}

// allocated returns the bytes of data an image's top layer holds
// (qemu-img map) and its size on the host (qemu-img info actual-size).
func allocated(ctx context.Context, t *testing.T, path string) (data, actual int64) {
	t.Helper()
	var extents []struct {
		Length int64 `json:"length"`
		Depth  int   `json:"depth"`
		Data   bool  `json:"data"`
	}
	if err := json.Unmarshal([]byte(qemuImg(ctx, t, "map", "-U", "--output=json", path)), &extents); err != nil {
		t.Fatalf("qemu-img map %s: %v", path, err)
	}
	for _, e := range extents {
		if e.Data && e.Depth == 0 {
			data += e.Length
		}
	}
	var info struct {
		ActualSize int64 `json:"actual-size"`
	}
	if err := json.Unmarshal([]byte(qemuImg(ctx, t, "info", "-U", "--output=json", path)), &info); err != nil {
		t.Fatalf("qemu-img info %s: %v", path, err)
	}
	return data, info.ActualSize
}

func qemuImg(ctx context.Context, t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.CommandContext(ctx, "qemu-img", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}
