package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twinsnap/twinsnap/cluster/command"
	"github.com/twinsnap/twinsnap/cluster/state"
	"github.com/twinsnap/twinsnap/export"
	"github.com/twinsnap/twinsnap/internal/hypervisor"
	"github.com/twinsnap/twinsnap/volumes"
)

// jobRunner runs this data node's export and import jobs. Jobs live in
// the replicated state; the runner only keeps which ones run here now.
type jobRunner struct {
	d       *Daemon
	mu      sync.Mutex
	running map[string]context.CancelFunc
	wg      sync.WaitGroup
}

// maxRunningJobs bounds the jobs a node runs at once.
const maxRunningJobs = 2

// progressEvery is how often a running job records its progress.
const progressEvery = time.Second

// run starts the jobs assigned to this node, every second, until ctx ends.
func (jr *jobRunner) run(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		jr.tick(ctx)
		if jr.d.node.IsLeader() {
			jr.d.reassignLostJobs(ctx)
			jr.d.discardForLostNodes(ctx)
		}
		select {
		case <-ctx.Done():
			jr.mu.Lock()
			for _, cancel := range jr.running {
				cancel()
			}
			jr.mu.Unlock()
			jr.wg.Wait()
			return
		case <-t.C:
		}
	}
}

func (jr *jobRunner) tick(ctx context.Context) {
	d := jr.d
	for _, j := range d.st.Jobs(state.JobFilter{Node: d.cfg.ID}) {
		jr.mu.Lock()
		cancel, running := jr.running[j.ID]
		jr.mu.Unlock()
		if running {
			if j.State.Final() {
				cancel() // cancelled by an operator
			}
			continue
		}
		if j.State.Final() {
			continue
		}
		if j.State == command.JobPaused && j.Window != nil {
			win, err := jobWindow(j.Window)
			if err == nil && win != nil && !win.Open(time.Now()) {
				continue // waits for its window
			}
		}
		jr.mu.Lock()
		if len(jr.running) >= maxRunningJobs {
			jr.mu.Unlock()
			return
		}
		jctx, cancel := context.WithCancel(ctx)
		jr.running[j.ID] = cancel
		jr.mu.Unlock()
		jr.wg.Add(1)
		go func(j state.Job) {
			defer jr.wg.Done()
			defer func() {
				jr.mu.Lock()
				delete(jr.running, j.ID)
				jr.mu.Unlock()
				cancel()
			}()
			jr.runJob(jctx, j)
		}(j)
	}
}

// runJob runs one job to its end, its pause, or this node's shutdown.
func (jr *jobRunner) runJob(ctx context.Context, j state.Job) {
	d := jr.d
	log := d.log.With("job", j.ID, "kind", j.Kind)
	if j.State != command.JobRunning {
		if err := d.jobState(ctx, j.ID, command.JobRunning, "", ""); err != nil {
			log.Warn("cannot start the job", "err", err)
			return
		}
	}
	var err error
	var vmID string
	switch j.Kind {
	case command.JobExport:
		err = d.runExport(ctx, j)
	case command.JobImport:
		vmID, err = d.runImport(ctx, j)
	default:
		err = fmt.Errorf("unknown job kind %q", j.Kind)
	}
	var paused *export.PausedError
	switch {
	case ctx.Err() != nil:
		// Cancelled by an operator (the state says so already) or this
		// daemon stops: the job resumes from its last progress.
		log.Info("job stopped", "err", err)
	case errors.Is(err, export.ErrTransient):
		// The share is unreachable for longer than the retries last: the
		// job stays running and starts again (resuming from its recorded
		// offset) once the back-off below has passed.
		log.Warn("job interrupted by the share; it resumes from its last offset", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Second):
		}
	case errors.As(err, &paused):
		reason := "the maintenance window closed; it opens again at " + paused.Until.UTC().Format(time.RFC3339)
		if serr := d.jobState(context.WithoutCancel(ctx), j.ID, command.JobPaused, reason, ""); serr != nil {
			log.Warn("cannot record the pause", "err", serr)
		}
		log.Info("job paused by its window", "until", paused.Until)
	case err != nil:
		log.Error("job failed", "err", err)
		if serr := d.jobFail(context.WithoutCancel(ctx), j.ID, err); serr != nil {
			log.Warn("cannot record the failure", "err", serr)
		}
	default:
		if serr := d.jobState(context.WithoutCancel(ctx), j.ID, command.JobDone, "", vmID); serr != nil {
			log.Warn("cannot record the end", "err", serr)
		}
		log.Info("job done")
	}
}

// jobState proposes a job's new state.
func (d *Daemon) jobState(ctx context.Context, id string, st command.JobState, reason, vmID string) error {
	_, err := d.propose(ctx, &command.JobStateChanged{ID: id, State: st, Reason: reason, VMID: vmID, At: time.Now().UTC()})
	return err
}

// jobFail proposes a job's failure with a bounded message.
func (d *Daemon) jobFail(ctx context.Context, id string, cause error) error {
	msg := cause.Error()
	if len(msg) > command.MaxDescriptionLen {
		msg = msg[:command.MaxDescriptionLen]
	}
	_, err := d.propose(ctx, &command.JobStateChanged{ID: id, State: command.JobFailed, Error: msg, At: time.Now().UTC()})
	return err
}

// progressReporter turns export progress into job-progress proposals, at
// most one per progressEvery (and always at file ends), and stops the
// transfer when the job was cancelled.
func (d *Daemon) progressReporter(ctx context.Context, id string) func(export.Progress) error {
	var last time.Time
	var lastFile string
	return func(p export.Progress) error {
		if j, err := d.st.Job(id); err == nil && j.State.Final() {
			return fmt.Errorf("job %s is %s", id, j.State)
		}
		if time.Since(last) < progressEvery && p.File == lastFile {
			return nil
		}
		last, lastFile = time.Now(), p.File
		total := max(p.Total, p.Offset, p.Bytes)
		_, err := d.propose(ctx, &command.JobProgress{ID: id, Offset: p.Offset, Bytes: p.Bytes, TotalBytes: total, Rate: p.Rate, File: p.File, At: time.Now().UTC()})
		if err != nil {
			d.log.Debug("cannot record job progress", "job", id, "err", err)
		}
		return nil // progress is advisory; the transfer goes on
	}
}

// runExport writes a snapshot's package to its share.
func (d *Daemon) runExport(ctx context.Context, j state.Job) error {
	if d.engine == nil {
		return errNoEngine
	}
	sn, err := d.st.Snapshot(j.SnapshotID)
	if err != nil {
		return err
	}
	if rep, ok := sn.Replica(d.cfg.ID); !ok || !rep.Verified {
		return fmt.Errorf("this node holds no verified replica of snapshot %s", sn.ID)
	}
	sh, err := d.st.Share(j.Share)
	if err != nil {
		return err
	}
	win, err := jobWindow(j.Window)
	if err != nil {
		return err
	}
	spec, closeViews, err := d.exportSpec(ctx, sn, j)
	if err != nil {
		return err
	}
	defer closeViews()
	var wire atomic.Int64
	t, err := d.dialShareCounting(ctx, sh, j.Target, true, &wire)
	if err != nil {
		return fmt.Errorf("share %s: %w", sh.Name, err)
	}
	defer func() { _ = t.Close() }()
	if j.BandwidthBytes > 0 {
		t = export.WithBandwidthLimit(t, j.BandwidthBytes)
	}
	res, err := export.Export(ctx, t, spec, export.ExportOptions{
		Resume: j.Offset, Window: win, OnProgress: d.progressReporter(ctx, j.ID),
		Logger: d.log.With("job", j.ID),
	})
	if err != nil {
		return err
	}
	// sent twice: what went to the server beyond what the export meant
	// to write (writes a broken connection made the retry layer resend),
	// plus what this call rewrote of an interrupted earlier one.
	d.log.Info("export job finished", "job", j.ID, "package", j.Package, "size", res.Size, "written", res.Written,
		"wire_bytes", wire.Load(), "resent", wire.Load()-res.Written, "rewritten", res.Rewritten, "took", res.Duration)
	_, err = d.propose(ctx, &command.JobProgress{ID: j.ID, Offset: res.Size, Bytes: res.Written, TotalBytes: res.Size, At: time.Now().UTC()})
	return err
}

// exportSpec describes a snapshot as an export package: one disk per
// exported volume, read from the snapshot's chain on this node.
func (d *Daemon) exportSpec(ctx context.Context, sn state.Snapshot, j state.Job) (export.ExportSpec, func(), error) {
	var views []*volumes.View
	closeViews := func() {
		for _, v := range views {
			_ = v.Close()
		}
	}
	cpus, mem := vmShape(sn.Captured)
	desc := export.Descriptor{Name: sn.Config.Name, CPUs: cpus, MemoryMiB: mem, Firmware: export.FirmwareBIOS, SystemType: "qemu"}
	if sn.Captured != nil && sn.Captured.UEFIVars != nil {
		desc.Firmware = export.FirmwareEFI
	}
	for i, mac := range vmMACs(sn.Captured) {
		desc.NICs = append(desc.NICs, export.NIC{Name: fmt.Sprintf("nic%d", i), MAC: mac, Model: "virtio", Network: "default"})
	}
	meta := &export.Meta{
		SnapshotID: sn.ID, SnapshotName: sn.Name, VMID: sn.VMID, VMName: sn.Config.Name,
		Consistency: string(sn.Achieved), CapturedAt: sn.CapturedAt, SourceSystem: d.systemID(), Driver: string(sn.Config.Driver),
	}
	if sn.Captured != nil && len(sn.Captured.Text) <= export.MaxConfigBytes {
		meta.Config = sn.Captured.Text
	}
	desc.Twinsnap = meta
	spec := export.ExportSpec{Package: j.Package, Format: string(j.Format), OVA: j.OVA, Descriptor: desc}
	for _, v := range sn.Volumes {
		if len(j.Volumes) > 0 && !containsString(j.Volumes, v.VolumeID) {
			continue
		}
		vol, _ := findVolume(sn.Config, v.VolumeID)
		view, err := volumes.OpenView(ctx, d.engine.ImagePath(sn.ID, v.VolumeID))
		if err != nil {
			closeViews()
			return spec, nil, fmt.Errorf("volume %s: %w", vol.Name, err)
		}
		views = append(views, view)
		spec.Volumes = append(spec.Volumes, export.ExportVolume{
			VolumeID: v.VolumeID, Name: vol.Name, Serial: vol.Serial, Boot: vol.Boot, SizeBytes: view.Size(), Source: view,
		})
	}
	if sn.Captured != nil && sn.Captured.UEFIVars != nil {
		spec.UEFIVars = d.engine.UEFIVarsPath(sn.ID)
	}
	return spec, closeViews, nil
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// systemID names this twinsnap system in export packages: a fingerprint
// of its cluster CA.
func (d *Daemon) systemID() string {
	return fmt.Sprintf("twinsnap-%x", d.bundle.CACert.SubjectKeyId)
}

var (
	vcpuRE   = regexp.MustCompile(`<vcpu[^>]*>\s*(\d+)\s*</vcpu>`)
	memoryRE = regexp.MustCompile(`<memory(?:\s+unit=['"](\w+)['"])?\s*>\s*(\d+)\s*</memory>`)
)

// vmShape reads the CPU count and memory size from a captured
// configuration; 1 CPU and 512 MiB when it does not say.
func vmShape(cfg *command.CapturedConfig) (int, int64) {
	cpus, mem := 1, int64(512)
	if cfg == nil {
		return cpus, mem
	}
	switch cfg.Kind {
	case command.ConfigLibvirtXML:
		if m := vcpuRE.FindStringSubmatch(cfg.Text); m != nil {
			if n, err := strconv.Atoi(m[1]); err == nil && n > 0 {
				cpus = n
			}
		}
		if m := memoryRE.FindStringSubmatch(cfg.Text); m != nil {
			if n, err := strconv.ParseInt(m[2], 10, 64); err == nil && n > 0 {
				switch strings.ToLower(m[1]) {
				case "", "kib", "k":
					mem = n / 1024
				case "mib", "m":
					mem = n
				case "gib", "g":
					mem = n * 1024
				case "b", "bytes":
					mem = n >> 20
				}
			}
		}
	case command.ConfigQEMULaunch:
		spec, err := parseLaunchSpec(cfg.Text)
		if err != nil {
			return cpus, mem
		}
		for i := 0; i+1 < len(spec.Args); i++ {
			switch spec.Args[i] {
			case "-smp":
				v := spec.Args[i+1]
				if _, val, ok := strings.Cut(v, "cpus="); ok {
					v = val
				}
				v = strings.SplitN(v, ",", 2)[0]
				if n, err := strconv.Atoi(v); err == nil && n > 0 {
					cpus = n
				}
			case "-m":
				v := spec.Args[i+1]
				if _, val, ok := strings.Cut(v, "size="); ok {
					v = val
				}
				v = strings.SplitN(v, ",", 2)[0]
				mult := int64(1)
				switch {
				case strings.HasSuffix(v, "G"), strings.HasSuffix(v, "g"):
					mult, v = 1024, v[:len(v)-1]
				case strings.HasSuffix(v, "M"), strings.HasSuffix(v, "m"):
					v = v[:len(v)-1]
				}
				if n, err := strconv.ParseInt(v, 10, 64); err == nil && n > 0 {
					mem = n * mult
				}
			}
		}
	}
	return cpus, max(mem, 1)
}

// vmMACs returns the MAC addresses a captured configuration gives its NICs.
func vmMACs(cfg *command.CapturedConfig) []string {
	if cfg == nil {
		return nil
	}
	switch cfg.Kind {
	case command.ConfigLibvirtXML:
		macs, _ := hypervisor.DomainMACs(cfg.Text)
		return macs
	case command.ConfigQEMULaunch:
		spec, err := parseLaunchSpec(cfg.Text)
		if err != nil {
			return nil
		}
		macs, _ := spec.MACs()
		return macs
	}
	return nil
}

// jobNodeLostAfter is how long a job's node must have failed heartbeats
// before the leader moves its unfinished jobs to the other data node.
const jobNodeLostAfter = 10 * time.Second

// reassignLostJobs runs on the leader: an unfinished job whose node is
// lost moves to the other data node, which resumes it from the job's last
// recorded offset (an export needs a verified replica there).
func (d *Daemon) reassignLostJobs(ctx context.Context) {
	failed := d.node.Status().FailedPeers
	if len(failed) == 0 {
		return
	}
	for _, j := range d.st.Jobs(state.JobFilter{}) {
		since, ok := failed[j.Node]
		if j.State.Final() || !ok || time.Since(since) < jobNodeLostAfter {
			continue
		}
		for _, n := range d.st.Nodes() {
			if n.Role != command.RoleData || n.ID == j.Node {
				continue
			}
			if _, down := failed[n.ID]; down {
				continue
			}
			if j.Kind == command.JobExport {
				sn, err := d.st.Snapshot(j.SnapshotID)
				if rep, ok := sn.Replica(n.ID); err != nil || !ok || !rep.Verified {
					continue
				}
			}
			pctx, cancel := context.WithTimeout(ctx, writeTimeout)
			_, err := d.propose(pctx, &command.JobAssigned{ID: j.ID, Node: n.ID,
				Reason: fmt.Sprintf("node %s lost since %s", j.Node, since.UTC().Format(time.RFC3339)), At: time.Now().UTC()})
			cancel()
			if err != nil {
				d.log.Warn("cannot move a job off a lost node", "job", j.ID, "from", j.Node, "to", n.ID, "err", err)
			} else {
				d.log.Warn("moved a job off a lost node", "job", j.ID, "from", j.Node, "to", n.ID, "offset", j.Offset)
			}
			break
		}
	}
}

// parseLaunchSpec reads a captured QEMU launch spec.
func parseLaunchSpec(text string) (hypervisor.LaunchSpec, error) {
	var spec hypervisor.LaunchSpec
	err := json.Unmarshal([]byte(text), &spec)
	return spec, err
}

// snapshotNodeLostAfter is how long a data node must have failed
// heartbeats before the leader declares it lost for the snapshots it
// alone holds: its creating snapshots and partial snapshots with no other
// verified replica are half-written and discarded (DESIGN.md). A node that
// comes back reclaims their files.
const snapshotNodeLostAfter = time.Minute

// discardForLostNodes runs on the leader.
func (d *Daemon) discardForLostNodes(ctx context.Context) {
	st := d.node.Status()
	for node, since := range st.FailedPeers {
		if time.Since(since) < snapshotNodeLostAfter {
			continue
		}
		if n, err := d.st.Node(node); err != nil || n.Role != command.RoleData {
			continue
		}
		affected := false
		for _, sn := range d.st.Snapshots(state.SnapshotFilter{States: []state.SnapshotState{state.Creating, state.Partial}}) {
			if sn.State == state.Creating && sn.Coordinator == node {
				affected = true
			}
			if sn.State == state.Partial {
				other := false
				for _, r := range sn.Replicas {
					if r.Verified && r.Node != node {
						other = true
					}
				}
				affected = affected || !other
			}
		}
		if !affected {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, writeTimeout)
		_, err := d.propose(pctx, &command.DiscardIncomplete{Term: st.Term, LostNodes: []string{node},
			Reason: fmt.Sprintf("node %s lost since %s", node, since.UTC().Format(time.RFC3339)), At: time.Now().UTC()})
		cancel()
		if err != nil {
			d.log.Warn("cannot discard the snapshots of a lost node", "node", node, "err", err)
		} else {
			d.log.Warn("discarded the half-written snapshots of a lost node", "node", node, "since", since)
		}
	}
}
