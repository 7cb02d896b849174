package snapshot

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"time"

	"github.com/twinsnap/twinsnap/cluster/command"
)

// replicate sends a partial snapshot's images from this node (which holds
// a verified replica) to the peer. The peer verifies each image end to end
// and proposes its replica once it has them all; a transfer cut short
// resumes from the receiver's last verified chunk on the next attempt.
func (e *Engine) replicate(ctx context.Context, rec Record) error {
	peer, addr, ok := e.cfg.Cluster.Peer()
	if !ok || addr == "" {
		e.setProgress(rec.ID, PhaseReplicate, 0, 0, "waiting for the peer data node")
		return errors.New("no peer data node with a data address")
	}
	imgs, err := e.images(rec)
	if err != nil {
		return err
	}
	var total int64
	for _, img := range imgs {
		total += img.Size
	}
	e.setProgress(rec.ID, PhaseReplicate, 0, total, "to "+peer)
	var before int64
	sender := e.cfg.NewSender(addr)
	sender.Progress = func(_ Image, off int64) {
		e.mu.Lock()
		if p := e.progress[rec.ID]; p != nil {
			p.BytesDone, p.UpdatedAt = before+off, time.Now()
		}
		e.mu.Unlock()
	}
	for _, img := range imgs {
		st, err := sender.Send(ctx, img)
		if err != nil {
			return err
		}
		before += img.Size
		e.log.Debug("replicated an image", "snapshot", rec.ID, "volume", img.VolumeID, "to", peer,
			"resumed_at", st.ResumedAt, "sent", st.BytesSent, "took", st.Duration)
	}
	e.setProgress(rec.ID, PhaseReplicate, total, total, "waiting for "+peer+" to record its replica")
	e.awaitPeerReplica(ctx, rec.ID)
	return nil
}

// peerRecordWait bounds how long a replicate step that sent every image
// waits for the peer to record its replica.
const peerRecordWait = 5 * time.Second

// awaitPeerReplica waits, at most peerRecordWait, until the snapshot is no
// longer partial or the peer holds a verified replica of it. The peer
// records its replica as soon as it has verified the last image; sending
// again before that would only make it hash every image anew (and, as
// the step's success starts the next one at once, again and again). A
// peer that dropped an image that did not verify gets it after the wait.
func (e *Engine) awaitPeerReplica(ctx context.Context, id string) {
	deadline := time.NewTimer(peerRecordWait)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		snaps := e.cfg.Cluster.Snapshots()
		i := slices.IndexFunc(snaps, func(r Record) bool { return r.ID == id })
		if i < 0 || snaps[i].State != StatePartial || e.peerVerified(&snaps[i]) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			return
		case <-tick.C:
		}
	}
}

// images lists what replicates for a snapshot: one image per volume, then
// the UEFI variables.
func (e *Engine) images(rec Record) ([]Image, error) {
	var out []Image
	for _, v := range rec.Volumes {
		img := Image{SnapshotID: rec.ID, VolumeID: v.VolumeID, Path: e.ImagePath(rec.ID, v.VolumeID), Size: v.StoredBytes}
		if err := decodeSum(v.SHA256, &img.SHA256); err != nil {
			return nil, fmt.Errorf("volume %s: %w", v.VolumeID, err)
		}
		out = append(out, img)
	}
	if rec.UEFIVars != nil {
		img := Image{SnapshotID: rec.ID, VolumeID: UEFIVarsID, Path: e.varsPath(rec.ID), Size: rec.UEFIVars.SizeBytes}
		if err := decodeSum(rec.UEFIVars.SHA256, &img.SHA256); err != nil {
			return nil, fmt.Errorf("UEFI variables: %w", err)
		}
		out = append(out, img)
	}
	return out, nil
}

func decodeSum(s string, out *[32]byte) error {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(out) {
		return fmt.Errorf("bad sha256 %q", s)
	}
	copy(out[:], b)
	return nil
}

// Path implements Destination for the replication receiver: it accepts
// images of partial snapshots this node has no verified replica of, and
// places them where the snapshot's volume container keeps them.
func (e *Engine) Path(snapshotID, volumeID string) (string, error) {
	// The coordinator starts sending as soon as the capture is committed;
	// this node may apply that entry a moment later.
	var rec Record
	for deadline := time.Now().Add(3 * time.Second); ; {
		snaps := e.cfg.Cluster.Snapshots()
		i := slices.IndexFunc(snaps, func(r Record) bool { return r.ID == snapshotID })
		if i >= 0 {
			rec = snaps[i]
		}
		if (i >= 0 && rec.State != StateCreating) || time.Now().After(deadline) {
			if i < 0 {
				return "", fmt.Errorf("%w: %s", ErrUnknown, snapshotID)
			}
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if rec.State != StatePartial || rec.verifiedOn(e.cfg.Node) {
		return "", fmt.Errorf("%w: snapshot %s is %s", ErrUnknown, snapshotID, rec.State)
	}
	if volumeID == UEFIVarsID {
		if rec.UEFIVars == nil {
			return "", fmt.Errorf("%w: snapshot %s has no UEFI variables", ErrUnknown, snapshotID)
		}
		if err := os.MkdirAll(e.snapDir(snapshotID), 0o750); err != nil {
			return "", err
		}
		return e.varsPath(snapshotID), nil
	}
	if !slices.ContainsFunc(rec.Volumes, func(v RecordVolume) bool { return v.VolumeID == volumeID }) {
		return "", fmt.Errorf("%w: snapshot %s has no volume %s", ErrUnknown, snapshotID, volumeID)
	}
	if err := e.ensureContainer(volumeID); err != nil {
		return "", err
	}
	return e.ImagePath(snapshotID, volumeID), nil
}

// Received records an image the receiver verified and renamed into place.
func (e *Engine) Received(img ReceivedImage) {
	e.mu.Lock()
	e.received[img.SnapshotID+"\x00"+img.VolumeID] = true
	e.mu.Unlock()
	e.Nudge()
}

// proposeReceived proposes this node's replica of a partial snapshot once
// every image arrived and verified.
func (e *Engine) proposeReceived(ctx context.Context, rec Record) error {
	imgs, err := e.images(rec)
	if err != nil {
		return err
	}
	cmd := &command.ReplicaWritten{ID: rec.ID, Term: rec.Term, Node: e.cfg.Node, Verified: true}
	for _, img := range imgs {
		fi, err := os.Stat(img.Path)
		if errors.Is(err, fs.ErrNotExist) {
			return nil // not all here yet: the coordinator is still sending
		}
		if err != nil {
			return err
		}
		e.mu.Lock()
		seen := e.received[rec.ID+"\x00"+img.VolumeID]
		e.mu.Unlock()
		if !seen {
			// Received by an earlier daemon: check it again.
			fd, err := fileData(img.Path)
			if err != nil {
				return err
			}
			if fd.SHA256 != hex.EncodeToString(img.SHA256[:]) || fd.SizeBytes != img.Size {
				e.log.Warn("a received image does not verify; fetching it again", "snapshot", rec.ID, "volume", img.VolumeID)
				return os.Remove(img.Path)
			}
		}
		if img.VolumeID == UEFIVarsID {
			cmd.UEFIVars = &command.FileData{SizeBytes: fi.Size(), SHA256: hex.EncodeToString(img.SHA256[:])}
			continue
		}
		size := volumeSize(rec.VM, img.VolumeID)
		if i := slices.IndexFunc(rec.Volumes, func(v RecordVolume) bool { return v.VolumeID == img.VolumeID }); i >= 0 && rec.Volumes[i].SizeBytes > 0 {
			size = rec.Volumes[i].SizeBytes
		}
		cmd.Volumes = append(cmd.Volumes, command.VolumeData{
			VolumeID: img.VolumeID, SizeBytes: size, StoredBytes: fi.Size(),
			SHA256: hex.EncodeToString(img.SHA256[:]),
		})
	}
	cmd.At = time.Now().UTC()
	pctx, cancel := context.WithTimeout(ctx, proposeTimeout)
	defer cancel()
	err = e.cfg.Cluster.Propose(pctx, cmd)
	if isRefusal(err) {
		e.log.Warn("the cluster refused this node's replica", "snapshot", rec.ID, "err", err)
		return nil
	}
	if err == nil {
		e.log.Info("replica written and verified", "snapshot", rec.ID, "volumes", len(cmd.Volumes))
	}
	return err
}
