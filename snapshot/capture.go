package snapshot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"time"

	"github.com/twinsnap/twinsnap/cluster/command"
)

// proposeTimeout bounds one proposal of the engine.
const proposeTimeout = 30 * time.Second

// resumeCreating drives a creating snapshot this node coordinates: it
// captures it, or, after a restart, proposes a capture the journal holds,
// or fails a capture the restart interrupted (its point in time is lost).
func (e *Engine) resumeCreating(ctx context.Context, rec Record) error {
	j, err := e.readJournal(rec.ID)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return e.capture(ctx, rec)
	case err != nil:
		return e.fail(ctx, rec, fmt.Sprintf("the capture's journal is unreadable: %v", err))
	case j.Phase == journalCaptured && j.Captured != nil:
		e.log.Info("resuming a verified capture after a restart", "snapshot", rec.ID)
		if err := e.reverify(ctx, rec, j.Captured); err != nil {
			return e.fail(ctx, rec, fmt.Sprintf("the capture did not verify after a restart: %v", err))
		}
		return e.proposeCaptured(ctx, rec, j.Captured)
	default:
		return e.fail(ctx, rec, "the coordinator restarted during the capture; its point in time is lost")
	}
}

// capture runs the plan's capture on this node: targets, the hypervisor's
// quiesced point-in-time copy, verification, and the proposal that makes
// the snapshot partial.
func (e *Engine) capture(ctx context.Context, rec Record) error {
	log := e.log.With("snapshot", rec.ID, "vm", rec.VM.Name)
	var total int64
	for _, v := range rec.Volumes {
		total += volumeSize(rec.VM, v.VolumeID)
	}
	e.setProgress(rec.ID, PhaseCapture, 0, total, "")
	if err := e.writeJournal(rec.ID, journal{Phase: journalCapturing}); err != nil {
		return err // nothing touched yet: retried
	}

	req := CaptureRequest{SnapshotID: rec.ID, VM: rec.VM, Desired: rec.Desired, Required: rec.Required}
	for _, v := range rec.Volumes {
		target, err := e.prepareTarget(ctx, rec, v)
		if err != nil {
			return e.fail(ctx, rec, fmt.Sprintf("preparing the image of volume %s: %v", v.VolumeID, err))
		}
		req.Volumes = append(req.Volumes, CaptureVolume{VolumeID: v.VolumeID, Target: target, ParentID: v.ParentID})
	}
	start := time.Now()
	res, err := e.cfg.Hypervisor.Capture(ctx, req)
	if err != nil {
		if ctx.Err() != nil {
			return err // shutting down: the next daemon fails it from the journal
		}
		return e.fail(ctx, rec, fmt.Sprintf("capture: %v", err))
	}
	log.Info("captured", "consistency", res.Achieved, "step_down", res.StepDownReason, "took", time.Since(start))

	e.setProgress(rec.ID, PhaseVerify, 0, total, "")
	cmd := &command.SnapshotCaptured{
		ID: rec.ID, Term: rec.Term, Node: e.cfg.Node, Achieved: res.Achieved, StepDownReason: res.StepDownReason,
		Verified: true, CapturedAt: res.CapturedAt.UTC(), Config: res.Config,
	}
	if cmd.Achieved == "" {
		cmd.Achieved = command.ConsistencyCrash
	}
	for _, v := range req.Volumes {
		vd, err := e.verifyImage(ctx, rec, v.VolumeID, v.Target)
		if err != nil {
			return e.fail(ctx, rec, fmt.Sprintf("verifying the image of volume %s: %v", v.VolumeID, err))
		}
		cmd.Volumes = append(cmd.Volumes, vd)
		e.addProgress(rec.ID, vd.SizeBytes)
	}
	if res.UEFIVars != "" && cmd.Config != nil {
		fd, err := copyFile(res.UEFIVars, e.varsPath(rec.ID))
		if err != nil {
			return e.fail(ctx, rec, fmt.Sprintf("copying the UEFI variables: %v", err))
		}
		cmd.Config.UEFIVars = &fd
	}
	if err := e.writeJournal(rec.ID, journal{Phase: journalCaptured, Captured: cmd}); err != nil {
		return e.fail(ctx, rec, fmt.Sprintf("recording the capture: %v", err))
	}
	return e.proposeCaptured(ctx, rec, cmd)
}

// prepareTarget creates the empty image a volume is captured into, on top
// of the parent's image for an incremental capture.
func (e *Engine) prepareTarget(ctx context.Context, rec Record, v RecordVolume) (string, error) {
	if err := e.ensureContainer(v.VolumeID); err != nil {
		return "", err
	}
	path := e.ImagePath(rec.ID, v.VolumeID)
	if _, err := os.Lstat(path); err == nil {
		// Left by an attempt that failed before the capture: start afresh.
		if err := os.Remove(path); err != nil {
			return "", err
		}
	}
	backing := ""
	if v.ParentID != "" {
		backing = e.ImagePath(v.ParentID, v.VolumeID)
		if _, err := os.Stat(backing); err != nil {
			return "", fmt.Errorf("the parent snapshot's image: %w", err)
		}
	}
	size := volumeSize(rec.VM, v.VolumeID)
	if backing != "" {
		size = 0
	}
	return e.cfg.Store.CreateTarget(ctx, v.VolumeID, rec.ID, size, backing)
}

// verifyImage checks a captured image and returns its description.
func (e *Engine) verifyImage(ctx context.Context, rec Record, volumeID, path string) (command.VolumeData, error) {
	if err := e.cfg.Store.Check(ctx, path); err != nil {
		return command.VolumeData{}, err
	}
	sum, err := e.cfg.Store.SHA256(ctx, path)
	if err != nil {
		return command.VolumeData{}, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return command.VolumeData{}, err
	}
	return command.VolumeData{VolumeID: volumeID, SizeBytes: volumeSize(rec.VM, volumeID), StoredBytes: fi.Size(), SHA256: sum}, nil
}

// reverify checks that the images a journal describes are still intact.
func (e *Engine) reverify(ctx context.Context, rec Record, cmd *command.SnapshotCaptured) error {
	for _, v := range cmd.Volumes {
		sum, err := e.cfg.Store.SHA256(ctx, e.ImagePath(rec.ID, v.VolumeID))
		if err != nil {
			return err
		}
		if sum != v.SHA256 {
			return fmt.Errorf("image of volume %s: sha256 %s, journal says %s", v.VolumeID, sum, v.SHA256)
		}
	}
	if cmd.Config != nil && cmd.Config.UEFIVars != nil {
		fd, err := fileData(e.varsPath(rec.ID))
		if err != nil {
			return err
		}
		if fd != *cmd.Config.UEFIVars {
			return fmt.Errorf("UEFI variables changed since the capture")
		}
	}
	return nil
}

// proposeCaptured makes the snapshot partial. A refusal by the state
// machine (the snapshot was fenced or failed meanwhile) ends the step:
// reclaiming the discarded snapshot removes the images.
func (e *Engine) proposeCaptured(ctx context.Context, rec Record, cmd *command.SnapshotCaptured) error {
	pctx, cancel := context.WithTimeout(ctx, proposeTimeout)
	defer cancel()
	err := e.cfg.Cluster.Propose(pctx, cmd)
	if isRefusal(err) {
		e.log.Warn("the cluster refused the capture", "snapshot", rec.ID, "err", err)
		e.pruneBitmaps(ctx, rec.VM, func(_, sid string) bool { return sid != rec.ID })
		return nil
	}
	if err != nil {
		return err
	}
	e.setProgress(rec.ID, PhaseReplicate, 0, 0, "")
	// The new bitmaps record the writes after this snapshot; the bitmaps
	// of earlier snapshots of the same volumes are of no further use.
	vols := map[string]bool{}
	for _, v := range rec.Volumes {
		vols[v.VolumeID] = true
	}
	e.pruneBitmaps(ctx, rec.VM, func(vol, sid string) bool { return !vols[vol] || sid == rec.ID })
	e.Nudge()
	return nil
}

// fail abandons a snapshot that has no verified replica: the state
// machine discards it, and every node then reclaims its files.
func (e *Engine) fail(ctx context.Context, rec Record, reason string) error {
	e.log.Warn("snapshot failed", "snapshot", rec.ID, "vm", rec.VM.Name, "reason", reason)
	e.setProgress(rec.ID, PhaseDiscard, 0, 0, reason)
	e.pruneBitmaps(ctx, rec.VM, func(_, sid string) bool { return sid != rec.ID })
	pctx, cancel := context.WithTimeout(ctx, proposeTimeout)
	defer cancel()
	err := e.cfg.Cluster.Propose(pctx, &command.SnapshotFailed{
		ID: rec.ID, Term: rec.Term, Node: e.cfg.Node, Reason: truncate(reason, command.MaxDescriptionLen), At: time.Now().UTC(),
	})
	if err == nil || isRefusal(err) {
		return nil
	}
	return err
}

// pruneBitmaps removes bitmaps of the VM, best effort: a bitmap left
// behind only makes QEMU track writes nobody reads.
func (e *Engine) pruneBitmaps(ctx context.Context, vm command.VM, keep func(volumeID, snapshotID string) bool) {
	if vm.HostNode != e.cfg.Node {
		return
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := e.cfg.Hypervisor.PruneBitmaps(pctx, vm, keep); err != nil {
		e.log.Debug("could not prune dirty bitmaps", "vm", vm.Name, "err", err)
	}
}

// startupCleanup runs once, before anything else touches the VMs of this
// node: it ends copy jobs a previous daemon left running and removes
// bitmaps of snapshots that will not be kept.
func (e *Engine) startupCleanup(ctx context.Context, snaps []Record) {
	e.mu.Lock()
	done := e.cleaned
	e.cleaned = true
	e.mu.Unlock()
	if done {
		return
	}
	kept := map[string]bool{}
	vms := map[string]command.VM{}
	for _, r := range snaps {
		if r.VM.HostNode == e.cfg.Node {
			vms[r.VM.ID] = r.VM
		}
		switch r.State {
		case StatePartial, StateComplete:
			kept[r.ID] = true
		case StateCreating:
			if j, err := e.readJournal(r.ID); err == nil && j.Phase == journalCaptured {
				kept[r.ID] = true
			}
		}
	}
	for _, vm := range vms {
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		if err := e.cfg.Hypervisor.Cleanup(cctx, vm); err != nil {
			e.log.Warn("start-up cleanup of the VM failed", "vm", vm.Name, "err", err)
		}
		cancel()
		e.pruneBitmaps(ctx, vm, func(_, sid string) bool { return kept[sid] })
	}
}

// isRefusal reports whether err is the state machine refusing a command,
// as opposed to the proposal not reaching a leader.
func isRefusal(err error) bool {
	var r *Refusal
	return errors.As(err, &r)
}

// Refusal is the state machine refusing a proposed command (fenced, an
// invalid transition, ...). Cluster.Propose wraps such errors in it so that
// the engine can tell them from a proposal that did not reach a leader.
type Refusal struct{ Err error }

// Error implements error.
func (r *Refusal) Error() string { return r.Err.Error() }

// Unwrap returns the state machine's error.
func (r *Refusal) Unwrap() error { return r.Err }

// volumeSize returns the virtual size of a VM's volume.
func volumeSize(vm command.VM, volumeID string) int64 {
	i := slices.IndexFunc(vm.Volumes, func(v command.Volume) bool { return v.ID == volumeID })
	if i < 0 {
		return 0
	}
	return vm.Volumes[i].SizeBytes
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// fileData hashes a small file.
func fileData(path string) (command.FileData, error) {
	f, err := os.Open(path)
	if err != nil {
		return command.FileData{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return command.FileData{}, err
	}
	return command.FileData{SizeBytes: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// copyFile copies src to dst durably and describes the copy.
func copyFile(src, dst string) (command.FileData, error) {
	in, err := os.Open(src)
	if err != nil {
		return command.FileData{}, err
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return command.FileData{}, err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, h), in)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		os.Remove(tmp)
		return command.FileData{}, err
	}
	return command.FileData{SizeBytes: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}
