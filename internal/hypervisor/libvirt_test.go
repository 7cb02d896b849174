package hypervisor_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"
	"github.com/twinsnap/twinsnap/guestagent"
	"github.com/twinsnap/twinsnap/internal/hypervisor"
	"github.com/twinsnap/twinsnap/internal/testenv"
)

// TestLibvirtDomain runs the libvirt driver against a private libvirtd
// 9.0 and a real TCG guest with two data volumes: commands and their error
// classes, the block view, the guest agent, backup jobs started behind
// libvirt's back and followed by id (next to libvirt's own backup), and a
// call that libvirt holds.
func TestLibvirtDomain(t *testing.T) {
	lv := testenv.StartLibvirtd(t)
	d := testenv.StartDomain(t, lv, testenv.VMOptions{DataDisks: []testenv.DiskSpec{
		{Serial: "data1", SizeMiB: 64}, {Serial: "data2", SizeMiB: 64},
	}})
	defer leakCheck(t)()
	ctx := within(t, 10*time.Minute)

	start := time.Now()
	m, err := hypervisor.OpenLibvirt(ctx, lv.Socket, d.Name, hypervisor.WithLogger(quiet))
	if err != nil {
		t.Fatalf("OpenLibvirt: %v", err)
	}
	defer func() {
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}()
	t.Logf("OpenLibvirt took %s", time.Since(start).Round(time.Millisecond))
	if m.Name() != d.Name || m.UUID() != d.UUID {
		t.Fatalf("machine %s %s, want %s %s", m.Name(), m.UUID(), d.Name, d.UUID)
	}

	t.Run("Execute", func(t *testing.T) { testLibvirtExecute(ctx, t, d, m) })
	t.Run("ErrorClass", func(t *testing.T) { testLibvirtErrorClass(ctx, t, m) })
	t.Run("BlockDevices", func(t *testing.T) { testLibvirtBlockDevices(ctx, t, d, m) })
	t.Run("Agent", func(t *testing.T) { testLibvirtAgent(ctx, t, m) })
	t.Run("BackupJobs", func(t *testing.T) { testLibvirtBackupJobs(ctx, t, d, m) })
	t.Run("AlongsideLibvirtBackup", func(t *testing.T) { testLibvirtAlongsideBackup(ctx, t, d, m) })
	t.Run("EventsWithoutData", func(t *testing.T) { testLibvirtEventsWithoutData(ctx, t, d, m) })
	t.Run("HeldCall", func(t *testing.T) { testLibvirtHeldCall(ctx, t, lv, d, m) })
}

func testLibvirtExecute(ctx context.Context, t *testing.T, d *testenv.Domain, m *hypervisor.LibvirtMachine) {
	q := m.QMP()
	start := time.Now()
	var st struct {
		Status  string `json:"status"`
		Running bool   `json:"running"`
	}
	if err := q.Execute(ctx, "query-status", nil, &st); err != nil {
		t.Fatalf("query-status: %v", err)
	}
	t.Logf("query-status took %s", time.Since(start).Round(time.Microsecond))
	if st.Status != "running" || !st.Running {
		t.Fatalf("query-status = %+v, want running", st)
	}
	var blocks []struct {
		Device   string `json:"device"`
		QDev     string `json:"qdev"`
		Inserted *struct {
			NodeName string `json:"node-name"`
			File     string `json:"file"`
		} `json:"inserted"`
	}
	if err := q.Execute(ctx, "query-block", nil, &blocks); err != nil {
		t.Fatalf("query-block: %v", err)
	}
	for _, disk := range d.Disks {
		found := false
		for _, b := range blocks {
			if b.Inserted != nil && b.Inserted.NodeName == disk.NodeName && strings.Contains(b.QDev, disk.DeviceID) && b.Inserted.File == disk.Path {
				found = true
			}
		}
		if !found {
			t.Fatalf("query-block lacks disk %s (node %s, device %s): %+v", disk.Serial, disk.NodeName, disk.DeviceID, blocks)
		}
	}
	// Arguments reach QEMU.
	var serial string
	data1, _ := d.Disk("data1")
	path := "/machine/peripheral/" + data1.DeviceID + "/virtio-backend"
	if err := q.Execute(ctx, "qom-get", map[string]any{"path": "/machine/peripheral/" + data1.DeviceID, "property": "serial"}, &serial); err != nil || serial != "data1" {
		t.Fatalf("qom-get serial of %s = %q, %v", path, serial, err)
	}
}

func testLibvirtErrorClass(ctx context.Context, t *testing.T, m *hypervisor.LibvirtMachine) {
	q := m.QMP()
	for _, tc := range []struct {
		cmd   string
		args  any
		class string
	}{
		{"twinsnap-bogus", nil, "CommandNotFound"},
		{"qom-get", map[string]any{"path": "/machine/peripheral/nope", "property": "serial"}, "DeviceNotFound"},
		{"query-status", map[string]any{"bogus": 1}, "GenericError"},
		{"block-job-cancel", map[string]any{"device": "twinsnap-nope"}, "DeviceNotActive"},
	} {
		err := q.Execute(ctx, tc.cmd, tc.args, nil)
		var qe *hypervisor.QMPError
		if !errors.As(err, &qe) || qe.Class != tc.class || qe.Command != tc.cmd {
			t.Fatalf("%s: %v, want a QMPError of class %s", tc.cmd, err, tc.class)
		}
		t.Logf("%s: %s: %s", tc.cmd, qe.Class, qe.Desc)
	}
	// The other engineer's job helpers read the class.
	if err := hypervisor.CancelJob(ctx, q, "twinsnap-nope"); !errors.Is(err, hypervisor.ErrNotFound) {
		t.Fatalf("CancelJob of an unknown job: %v, want ErrNotFound", err)
	}
}

func testLibvirtBlockDevices(ctx context.Context, t *testing.T, d *testenv.Domain, m *hypervisor.LibvirtMachine) {
	devs, err := hypervisor.BlockDevices(ctx, m.QMP())
	if err != nil {
		t.Fatalf("BlockDevices: %v", err)
	}
	for _, got := range checkBlockDevices(t, devs, d.Disks) {
		t.Logf("%-6s node %-17s device %-14s PCI %s", got.Serial, got.NodeName, got.DeviceID, pciString(*got.PCI))
	}
	// The guest's view maps onto them.
	ga := guestagent.NewClient(m.Agent())
	defer ga.Close()
	fsinfo, err := ga.FSInfo(ctx)
	if err != nil {
		t.Fatalf("guest-get-fsinfo: %v", err)
	}
	for _, serial := range []string{"data1", "data2"} {
		matched := false
		for _, fs := range fsinfo {
			if fs.Mountpoint != "/mnt/"+serial {
				continue
			}
			for _, gd := range fs.Disks {
				if dev, ok := hypervisor.MatchGuestDisk(devs, gd); ok && dev.Serial == serial {
					matched = true
				}
			}
		}
		if !matched {
			t.Fatalf("the guest's /mnt/%s matches no block device with serial %s: %+v", serial, serial, fsinfo)
		}
	}
}

func testLibvirtAgent(ctx context.Context, t *testing.T, m *hypervisor.LibvirtMachine) {
	ga := guestagent.NewClient(m.Agent())
	if err := ga.Ping(ctx); err != nil {
		t.Fatalf("guest-ping: %v", err)
	}
	// Closing a client leaves the machine's shared transport open.
	_ = ga.Close()
	ga = guestagent.NewClient(m.Agent())
	defer ga.Close()
	start := time.Now()
	n, err := ga.FreezeList(ctx, []string{"/mnt/data1"})
	froze := time.Since(start)
	if err != nil || n != 1 {
		thawCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = ga.Thaw(thawCtx)
		t.Fatalf("freeze /mnt/data1 = %d, %v; want 1", n, err)
	}
	st, serr := ga.FreezeStatus(ctx)
	start = time.Now()
	thawCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err = ga.Thaw(thawCtx)
	thawed := time.Since(start)
	if err != nil || n != 1 {
		t.Fatalf("thaw = %d, %v; want 1", n, err)
	}
	if serr != nil || st != guestagent.Frozen {
		t.Fatalf("freeze status while frozen = %q, %v", st, serr)
	}
	if st, err := ga.FreezeStatus(ctx); err != nil || st != guestagent.Thawed {
		t.Fatalf("freeze status after thaw = %q, %v", st, err)
	}
	t.Logf("freeze of /mnt/data1 %s, thaw %s (through libvirt)", froze.Round(time.Millisecond), thawed.Round(time.Millisecond))
}

// testLibvirtBackupJobs starts backup jobs behind libvirt's back, with
// qemu-monitor-command: a transaction of a persistent bitmap and a full
// blockdev-backup, then an incremental one through the bitmap, both
// followed by job id. libvirt 9.0 neither refuses them nor touches them:
// a concluded job with auto-dismiss off stays until we dismiss it.
func testLibvirtBackupJobs(ctx context.Context, t *testing.T, d *testenv.Domain, m *hypervisor.LibvirtMachine) {
	q := m.QMP()
	data1, _ := d.Disk("data1")
	dir := t.TempDir()
	target := func(name string) string {
		t.Helper()
		path := filepath.Join(dir, name+".qcow2")
		qemuImg(ctx, t, "create", "-q", "-f", "qcow2", path, "64M")
		if err := hypervisor.BlockdevAdd(ctx, q, name, path, "qcow2"); err != nil {
			t.Fatalf("blockdev-add %s: %v", name, err)
		}
		return path
	}
	events, cancel := q.Subscribe(func(ev hypervisor.Event) bool {
		return strings.HasPrefix(ev.Name, "JOB_") || strings.HasPrefix(ev.Name, "BLOCK_JOB_")
	})
	defer cancel()

	fullPath := target("ts-full")
	w := hypervisor.WatchJob(q, "ts-full")
	start := time.Now()
	err := hypervisor.Transaction(ctx, q, []hypervisor.Action{
		hypervisor.BitmapAdd(data1.NodeName, "ts-1", true),
		hypervisor.BlockdevBackup("ts-full", data1.NodeName, "ts-full", hypervisor.SyncFull, "", 0, true, false),
	}, nil)
	if err != nil {
		w.Close()
		t.Fatalf("transaction: %v", err)
	}
	tx := time.Since(start)
	res, err := w.Wait(ctx)
	if err != nil || res.TotalProgress != 64<<20 {
		t.Fatalf("full backup: %+v, %v", res, err)
	}
	t.Logf("transaction (bitmap-add + blockdev-backup full) %s, job done after %s", tx.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	// The subscriber saw the job's events, with their data.
	var statuses []string
	completed := false
	for len(statuses) == 0 || statuses[len(statuses)-1] != "null" {
		select {
		case ev := <-events:
			var d struct{ ID, Status, Device string }
			if err := json.Unmarshal(ev.Data, &d); err != nil {
				t.Fatalf("event %s with data %q: %v", ev.Name, ev.Data, err)
			}
			switch {
			case ev.Name == "JOB_STATUS_CHANGE" && d.ID == "ts-full":
				statuses = append(statuses, d.Status)
			case ev.Name == "BLOCK_JOB_COMPLETED" && d.Device == "ts-full":
				completed = true
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("ts-full events: statuses %v, completed %v; no null status", statuses, completed)
		}
	}
	if !completed || statuses[0] != "created" || !slices.Contains(statuses, "concluded") {
		t.Fatalf("ts-full events: statuses %v, completed %v", statuses, completed)
	}
	t.Logf("ts-full statuses seen through libvirt: %v", statuses)

	// Change the volume, then copy only what changed.
	ga := guestagent.NewClient(m.Agent())
	defer ga.Close()
	st, err := ga.Run(ctx, "/bin/sh", "-c", "dd if=/dev/urandom of=/mnt/data1/inc bs=64k count=16 2>/dev/null && sync")
	if err != nil || st.ExitCode != 0 {
		t.Fatalf("writing in the guest: %+v, %v", st, err)
	}
	incPath := target("ts-inc")
	w = hypervisor.WatchJob(q, "ts-inc")
	err = hypervisor.Transaction(ctx, q, []hypervisor.Action{
		hypervisor.BlockdevBackup("ts-inc", data1.NodeName, "ts-inc", hypervisor.SyncIncremental, "ts-1", 0, true, false),
	}, nil)
	if err != nil {
		w.Close()
		t.Fatalf("incremental transaction: %v", err)
	}
	res, err = w.Wait(ctx)
	if err != nil || res.TotalProgress < 1<<20 || res.TotalProgress >= 16<<20 {
		t.Fatalf("incremental backup: %+v, %v; want between 1 and 16 MiB copied", res, err)
	}
	t.Logf("incremental backup copied %d KiB", res.TotalProgress>>10)

	// A concluded job with auto-dismiss off: libvirt leaves it alone.
	lingerPath := target("ts-linger")
	concluded, cancelConcluded := q.Subscribe(func(ev hypervisor.Event) bool {
		var d struct{ ID, Status string }
		return ev.Name == "JOB_STATUS_CHANGE" && json.Unmarshal(ev.Data, &d) == nil && d.ID == "ts-linger" && d.Status == "concluded"
	})
	defer cancelConcluded()
	err = q.Execute(ctx, "blockdev-backup", hypervisor.BackupData{
		JobID: "ts-linger", Device: data1.NodeName, Target: "ts-linger", Sync: hypervisor.SyncFull, AutoFinalize: true, AutoDismiss: false,
	}, nil)
	if err != nil {
		t.Fatalf("blockdev-backup: %v", err)
	}
	select {
	case <-concluded:
	case <-time.After(60 * time.Second):
		t.Fatalf("ts-linger did not conclude")
	}
	time.Sleep(2 * time.Second) // give libvirt time to act on it, if it would
	jobs, err := hypervisor.QueryJobs(ctx, q)
	if err != nil {
		t.Fatalf("query-jobs: %v", err)
	}
	if len(jobs) != 1 || jobs[0].ID != "ts-linger" || jobs[0].Status != "concluded" {
		t.Fatalf("query-jobs 2 s after ts-linger concluded = %+v; want it still concluded (not dismissed by libvirt)", jobs)
	}
	if res, err := hypervisor.WaitJob(ctx, q, "ts-linger"); err != nil {
		t.Fatalf("WaitJob ts-linger: %+v, %v", res, err)
	}

	for _, node := range []string{"ts-full", "ts-inc", "ts-linger"} {
		if err := hypervisor.BlockdevDel(ctx, q, node); err != nil {
			t.Fatalf("blockdev-del: %v", err)
		}
	}
	for _, p := range []string{fullPath, incPath, lingerPath} {
		qemuImg(ctx, t, "check", "-q", p)
	}
	// The persistent bitmap is on the node; libvirt knows no checkpoint.
	devs, err := hypervisor.BlockDevices(ctx, q)
	if err != nil {
		t.Fatalf("BlockDevices: %v", err)
	}
	for _, dev := range devs {
		if dev.Serial == "data1" && (len(dev.Bitmaps) != 1 || dev.Bitmaps[0].Name != "ts-1" || !dev.Bitmaps[0].Persistent) {
			t.Fatalf("bitmaps of data1 = %+v, want the persistent ts-1", dev.Bitmaps)
		}
	}
}

// testLibvirtAlongsideBackup runs libvirt's own push backup
// (virDomainBackupBegin, with a checkpoint) of data1 while a throttled
// backup job of ours copies data2: they coexist, libvirt's job events
// reach our subscribers under libvirt's job ids, and our job, followed by
// id, is not disturbed and can be cancelled.
func testLibvirtAlongsideBackup(ctx context.Context, t *testing.T, d *testenv.Domain, m *hypervisor.LibvirtMachine) {
	q := m.QMP()
	data2, _ := d.Disk("data2")
	dir := t.TempDir()
	path := filepath.Join(dir, "ts-slow.qcow2")
	qemuImg(ctx, t, "create", "-q", "-f", "qcow2", path, "64M")
	if err := hypervisor.BlockdevAdd(ctx, q, "ts-slow", path, "qcow2"); err != nil {
		t.Fatalf("blockdev-add: %v", err)
	}
	libvirtJobs, cancel := q.Subscribe(func(ev hypervisor.Event) bool {
		var d struct{ ID, Status string }
		return ev.Name == "JOB_STATUS_CHANGE" && json.Unmarshal(ev.Data, &d) == nil && strings.HasPrefix(d.ID, "backup-vdb-") && d.Status == "null"
	})
	defer cancel()
	w := hypervisor.WatchJob(q, "ts-slow")
	err := hypervisor.Transaction(ctx, q, []hypervisor.Action{
		hypervisor.BlockdevBackup("ts-slow", data2.NodeName, "ts-slow", hypervisor.SyncFull, "", 256<<10, true, false),
	}, nil)
	if err != nil {
		w.Close()
		t.Fatalf("transaction: %v", err)
	}

	backupXML := fmt.Sprintf(`<domainbackup mode='push'><disks>
  <disk name='vdb' type='file'><target file='%s'/><driver type='qcow2'/></disk>
  <disk name='vda' backup='no'/><disk name='vdc' backup='no'/>
</disks></domainbackup>`, filepath.Join(dir, "libvirt-full.qcow2"))
	checkpointXML := `<domaincheckpoint><name>lv-cp1</name><disks>
  <disk name='vdb' checkpoint='bitmap'/><disk name='vda' checkpoint='no'/><disk name='vdc' checkpoint='no'/>
</disks></domaincheckpoint>`
	conn := m.Libvirt().Conn()
	if err := libvirtCall(ctx, func() error {
		return conn.DomainBackupBegin(m.Domain(), backupXML, libvirt.OptString{checkpointXML}, 0)
	}); err != nil {
		t.Fatalf("DomainBackupBegin (libvirt's push backup) next to our job: %v", err)
	}
	select {
	case <-libvirtJobs:
	case <-time.After(60 * time.Second):
		t.Fatalf("libvirt's backup job did not end")
	}
	jobs, err := hypervisor.QueryJobs(ctx, q)
	if err != nil || len(jobs) != 1 || jobs[0].ID != "ts-slow" || jobs[0].Status != "running" {
		t.Fatalf("query-jobs after libvirt's backup = %+v, %v; want only ts-slow, running", jobs, err)
	}
	if err := hypervisor.CancelJob(ctx, q, "ts-slow"); err != nil {
		t.Fatalf("cancel ts-slow: %v", err)
	}
	res, err := w.Wait(ctx)
	if !errors.Is(err, hypervisor.ErrJobFailed) || !res.Cancelled {
		t.Fatalf("ts-slow after cancel: %+v, %v; want cancelled", res, err)
	}
	t.Logf("libvirt's backup ran beside ours; ours cancelled at %d of %d bytes", res.CurrentProgress, res.TotalProgress)
	if err := hypervisor.BlockdevDel(ctx, q, "ts-slow"); err != nil {
		t.Fatalf("blockdev-del: %v", err)
	}
	if err := libvirtCall(ctx, func() error {
		cp, err := conn.DomainCheckpointLookupByName(m.Domain(), "lv-cp1", 0)
		if err != nil {
			return err
		}
		return conn.DomainCheckpointDelete(cp, 0)
	}); err != nil {
		t.Fatalf("deleting libvirt's checkpoint: %v", err)
	}
}

// testLibvirtEventsWithoutData pins down a go-libvirt limitation that
// LibvirtQMP documents: QMP events without data (STOP, RESUME) are
// dropped, while events with data arrive.
func testLibvirtEventsWithoutData(ctx context.Context, t *testing.T, d *testenv.Domain, m *hypervisor.LibvirtMachine) {
	q := m.QMP()
	data2, _ := d.Disk("data2")
	events, cancel := q.Subscribe(nil)
	defer cancel()
	if err := q.Execute(ctx, "stop", nil, nil); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if err := q.Execute(ctx, "cont", nil, nil); err != nil {
		t.Fatalf("cont: %v", err)
	}
	// An event with data after them: once it is here, STOP and RESUME
	// would have been too.
	if err := q.Execute(ctx, "block-set-write-threshold", map[string]any{"node-name": data2.NodeName, "write-threshold": 512}, nil); err != nil {
		t.Fatalf("block-set-write-threshold: %v", err)
	}
	ga := guestagent.NewClient(m.Agent())
	defer ga.Close()
	if st, err := ga.Run(ctx, "/bin/sh", "-c", "echo x > /mnt/data2/threshold && sync"); err != nil || st.ExitCode != 0 {
		t.Fatalf("writing in the guest: %+v, %v", st, err)
	}
	var names []string
	for {
		select {
		case ev := <-events:
			names = append(names, ev.Name)
			if ev.Name != "BLOCK_WRITE_THRESHOLD" {
				continue
			}
			if slices.Contains(names, "STOP") || slices.Contains(names, "RESUME") {
				t.Fatalf("events %v: STOP and RESUME arrived; go-libvirt no longer drops events without data: update LibvirtQMP's doc", names)
			}
			t.Logf("events seen: %v (no STOP, RESUME)", names)
			return
		case <-time.After(30 * time.Second):
			t.Fatalf("no BLOCK_WRITE_THRESHOLD event; saw %v", names)
		}
	}
}

// testLibvirtHeldCall stops the QEMU process, so that libvirt holds a
// monitor command: the call returns ErrTimeout at its context's end and is
// counted as abandoned; a second call, waiting for libvirt's domain job
// lock, gets libvirt's own timeout (ErrTimeout); a call in progress ends
// with ErrClosed when its LibvirtQMP is closed. Once QEMU runs again,
// libvirt answers the abandoned calls.
func testLibvirtHeldCall(ctx context.Context, t *testing.T, lv *testenv.Libvirtd, d *testenv.Domain, m *hypervisor.LibvirtMachine) {
	pid := qemuPid(t, lv, d.Name)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP QEMU %d: %v", pid, err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
				t.Errorf("SIGCONT QEMU %d: %v", pid, err)
			}
		}
	}
	defer resume()
	lq := m.LibvirtQMP()

	const bound = 3 * time.Second
	cctx, cancel := context.WithTimeout(ctx, bound)
	start := time.Now()
	err := lq.Execute(cctx, "query-status", nil, nil)
	took := time.Since(start)
	cancel()
	if !errors.Is(err, hypervisor.ErrTimeout) {
		t.Fatalf("held call: %v, want ErrTimeout", err)
	}
	if took > bound+time.Second {
		t.Fatalf("held call returned after %s, bound %s", took, bound)
	}
	if n := lq.Abandoned(); n != 1 {
		t.Fatalf("Abandoned() = %d, want 1", n)
	}
	t.Logf("held call: ErrTimeout after %s (bound %s)", took.Round(time.Millisecond), bound)

	// A second LibvirtQMP on the same connection: a call waiting for the
	// job lock ends with Close.
	other, err := hypervisor.NewLibvirtQMP(ctx, m.Libvirt().Conn(), m.Domain(), hypervisor.WithLogger(quiet))
	if err != nil {
		t.Fatalf("NewLibvirtQMP: %v", err)
	}
	errc := make(chan error, 1)
	go func() { errc <- other.Execute(ctx, "query-status", nil, nil) }()
	time.Sleep(500 * time.Millisecond)
	if err := other.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, hypervisor.ErrClosed) {
			t.Fatalf("call ended by Close: %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("Close did not end the call in progress")
	}

	// libvirt gives up waiting for the domain's job lock after 30 s.
	cctx, cancel = context.WithTimeout(ctx, 90*time.Second)
	start = time.Now()
	err = lq.Execute(cctx, "query-status", nil, nil)
	took = time.Since(start)
	cancel()
	var le libvirt.Error
	if !errors.Is(err, hypervisor.ErrTimeout) || !errors.As(err, &le) || le.Code != uint32(libvirt.ErrOperationTimeout) {
		t.Fatalf("call waiting for the job lock: %v after %s, want ErrTimeout wrapping libvirt's operation timeout", err, took)
	}
	t.Logf("call waiting for libvirt's job lock: %v after %s", err, took.Round(time.Second))

	resume()
	if !waitFor(60*time.Second, func() bool { return lq.Abandoned() == 0 && other.Abandoned() == 0 }) {
		t.Fatalf("abandoned calls not answered after QEMU resumed: %d, %d", lq.Abandoned(), other.Abandoned())
	}
	if err := lq.Execute(ctx, "query-status", nil, nil); err != nil {
		t.Fatalf("query-status after QEMU resumed: %v", err)
	}
}

// TestLibvirtLifecycle defines a second domain from XML, starts it, shuts
// it down (the guest powering off, then a guest that ignores the ACPI
// button, destroyed) and undefines it.
func TestLibvirtLifecycle(t *testing.T) {
	lv := testenv.StartLibvirtd(t)
	img, err := testenv.BuildGuestImage(within(t, 10*time.Minute))
	testenv.Need(t, "test guest image", err)
	qemu, err := exec.LookPath("qemu-system-x86_64")
	testenv.Need(t, "qemu-system-x86_64", err)
	defer leakCheck(t)()
	ctx := within(t, 10*time.Minute)

	c, err := hypervisor.DialLibvirt(ctx, lv.Socket)
	if err != nil {
		t.Fatalf("DialLibvirt: %v", err)
	}
	defer func() {
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}()

	dir := testenv.TempDir(t, "lc")
	const name = "tsn-lifecycle"
	x := lifecycleXML(name, qemu, img, dir, lv.Dir)
	if _, _, err := c.DefineDomain(ctx, strings.Replace(x, "<vcpu>", "<vcpux>", 1)); !errors.Is(err, hypervisor.ErrLibvirt) {
		t.Fatalf("defining invalid XML: %v, want ErrLibvirt", err)
	}
	gotName, uuid, err := c.DefineDomain(ctx, x)
	if err != nil {
		t.Fatalf("DefineDomain: %v", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := c.DestroyDomain(cctx, name); err != nil && !errors.Is(err, hypervisor.ErrNotFound) {
			t.Errorf("cleanup: destroy: %v", err)
		}
		if err := c.UndefineDomain(cctx, name, true); err != nil && !errors.Is(err, hypervisor.ErrNotFound) {
			t.Errorf("cleanup: undefine: %v", err)
		}
	}()
	if gotName != name || len(uuid) != 36 {
		t.Fatalf("DefineDomain = %q, %q", gotName, uuid)
	}
	state := func(want hypervisor.DomainState) {
		t.Helper()
		st, err := c.DomainState(ctx, name)
		if err != nil || st != want {
			t.Fatalf("DomainState = %q, %v; want %q", st, err, want)
		}
	}
	state(hypervisor.DomainShutoff)
	inactive, err := c.DomainXML(ctx, name, true)
	if err != nil || !strings.Contains(inactive, "<uuid>"+uuid+"</uuid>") {
		t.Fatalf("inactive XML: %v\n%s", err, inactive)
	}

	if err := c.StartDomain(ctx, name); err != nil {
		t.Fatalf("StartDomain: %v", err)
	}
	state(hypervisor.DomainRunning)
	if err := c.StartDomain(ctx, name); !errors.Is(err, hypervisor.ErrLibvirt) {
		t.Fatalf("starting a running domain: %v, want ErrLibvirt", err)
	}
	live, err := c.DomainXML(ctx, name, false)
	if err != nil || !strings.Contains(live, "<alias name=") {
		t.Fatalf("live XML lacks libvirt's aliases: %v", err)
	}

	// A guest that powers off while ShutdownDomain waits.
	m, err := c.OpenMachine(ctx, name, hypervisor.WithLogger(quiet))
	if err != nil {
		t.Fatalf("OpenMachine: %v", err)
	}
	ga := guestagent.NewClient(m.Agent())
	bootStart := time.Now()
	if !waitFor(3*time.Minute, func() bool {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		return ga.Ping(pctx) == nil
	}) {
		t.Fatalf("the guest agent of %s did not answer", name)
	}
	t.Logf("guest agent of %s up %s after start", name, time.Since(bootStart).Round(time.Millisecond))
	type result struct {
		forced bool
		err    error
		took   time.Duration
	}
	done := make(chan result, 1)
	go func() {
		start := time.Now()
		forced, err := c.ShutdownDomain(ctx, name, 2*time.Minute)
		done <- result{forced, err, time.Since(start)}
	}()
	time.Sleep(time.Second)
	if _, err := ga.Exec(ctx, "/bin/busybox", []string{"poweroff", "-f"}, nil, false); err != nil {
		t.Logf("guest-exec poweroff: %v (the agent may die first)", err)
	}
	r := <-done
	if r.err != nil || r.forced {
		t.Fatalf("ShutdownDomain while the guest powers off: forced %v, %v", r.forced, r.err)
	}
	t.Logf("ShutdownDomain returned %s after it began (the guest was told to power off 1 s in)", r.took.Round(time.Millisecond))
	state(hypervisor.DomainShutoff)
	if err := m.Close(); err != nil {
		t.Fatalf("machine Close: %v", err)
	}

	// The test guest ignores the ACPI button (no acpid): destroyed after
	// the grace period.
	if err := c.StartDomain(ctx, name); err != nil {
		t.Fatalf("StartDomain again: %v", err)
	}
	start := time.Now()
	forced, err := c.ShutdownDomain(ctx, name, 3*time.Second)
	if err != nil || !forced {
		t.Fatalf("ShutdownDomain of a guest that ignores ACPI: forced %v, %v; want forced", forced, err)
	}
	t.Logf("ShutdownDomain with 3 s grace: forced after %s", time.Since(start).Round(time.Millisecond))
	state(hypervisor.DomainShutoff)
	if forced, err := c.ShutdownDomain(ctx, name, time.Second); err != nil || forced {
		t.Fatalf("ShutdownDomain of a shut-off domain: %v, %v", forced, err)
	}
	if err := c.DestroyDomain(ctx, name); err != nil {
		t.Fatalf("DestroyDomain of a shut-off domain: %v", err)
	}

	if err := c.UndefineDomain(ctx, name, false); err != nil {
		t.Fatalf("UndefineDomain: %v", err)
	}
	if _, err := c.DomainState(ctx, name); !errors.Is(err, hypervisor.ErrNotFound) {
		t.Fatalf("DomainState after undefine: %v, want ErrNotFound", err)
	}
	if err := c.StartDomain(ctx, name); !errors.Is(err, hypervisor.ErrNotFound) {
		t.Fatalf("StartDomain after undefine: %v, want ErrNotFound", err)
	}
	if _, err := hypervisor.OpenLibvirt(ctx, lv.Socket, name); !errors.Is(err, hypervisor.ErrNotFound) {
		t.Fatalf("OpenLibvirt of an undefined domain: %v, want ErrNotFound", err)
	}

	// A libvirtd that does not answer: calls end with their context, and
	// Close reclaims the abandoned RPCs by closing the socket.
	hung, err := hypervisor.DialLibvirt(ctx, lv.Socket)
	if err != nil {
		t.Fatalf("DialLibvirt: %v", err)
	}
	pid := libvirtdPid(t, lv)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP libvirtd: %v", err)
	}
	defer func() { _ = syscall.Kill(pid, syscall.SIGCONT) }()
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	start = time.Now()
	_, err = hung.DomainState(cctx, name)
	cancel()
	if !errors.Is(err, hypervisor.ErrTimeout) || time.Since(start) > 2*time.Second || hung.Abandoned() != 1 {
		t.Fatalf("call to a stopped libvirtd: %v after %s, %d abandoned; want ErrTimeout after 1 s, 1 abandoned", err, time.Since(start), hung.Abandoned())
	}
	start = time.Now()
	err = hung.Close()
	took := time.Since(start)
	if !errors.Is(err, hypervisor.ErrTimeout) || took > 10*time.Second {
		t.Fatalf("Close with libvirtd stopped: %v after %s; want ErrTimeout after about 5 s", err, took)
	}
	if !waitFor(5*time.Second, func() bool { return hung.Abandoned() == 0 }) {
		t.Fatalf("%d RPCs still pending after Close", hung.Abandoned())
	}
	t.Logf("Close with libvirtd stopped: %v after %s", err, took.Round(time.Millisecond))
	if _, err := hung.DomainState(ctx, name); !errors.Is(err, hypervisor.ErrClosed) {
		t.Fatalf("call after Close: %v, want ErrClosed", err)
	}
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatalf("SIGCONT libvirtd: %v", err)
	}
}

// libvirtdPid finds the libvirtd process of lv.
func libvirtdPid(t *testing.T, lv *testenv.Libvirtd) int {
	t.Helper()
	for _, pid := range lv.Processes() {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && filepath.Base(strings.Split(string(b), "\x00")[0]) == "libvirtd" {
			return pid
		}
	}
	t.Fatalf("no libvirtd process of %s", lv.Dir)
	return 0
}

// lifecycleXML is a diskless TCG domain that boots the test guest's
// kernel and initramfs (which then stays in the initramfs and starts the
// guest agent).
func lifecycleXML(name, qemu string, img *testenv.GuestImage, dir, lvDir string) string {
	return fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <sysinfo type='fwcfg'><entry name='opt/org.twinsnap/testenv'>%s:%s</entry></sysinfo>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>%s</kernel>
    <initrd>%s</initrd>
    <cmdline>%s</cmdline>
  </os>
  <features><acpi/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>%s</emulator>
    <controller type='usb' model='none'/>
    <controller type='virtio-serial' index='0'/>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <serial type='file'><source path='%s'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
`, name, testenv.Marker, lvDir, img.Kernel, img.Initrd, img.Cmdline("none"), qemu, filepath.Join(dir, "serial.log"))
}

// qemuPid finds the QEMU process of a domain of lv.
func qemuPid(t *testing.T, lv *testenv.Libvirtd, name string) int {
	t.Helper()
	for _, pid := range lv.Processes() {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if strings.Contains(args[0], "qemu-system") && strings.Contains(string(b), "guest="+name+",") {
			return pid
		}
	}
	t.Fatalf("no QEMU process of domain %s", name)
	return 0
}

// libvirtCall runs a go-libvirt call under ctx (it keeps running if ctx
// ends; the connection's Close reclaims it).
func libvirtCall(ctx context.Context, fn func() error) error {
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}
