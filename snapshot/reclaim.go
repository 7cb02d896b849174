package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/twinsnap/twinsnap/cluster/command"
	"github.com/twinsnap/twinsnap/volumes"
)

// reclaim frees this node's space of a discarded or deleting snapshot:
// each image leaves its chain by being merged into its children (a chain
// is merged, not broken), partial transfers and the snapshot's own files
// go, and the node proposes that it reclaimed, naming the children whose
// images the merge rewrote.
func (e *Engine) reclaim(ctx context.Context, rec Record, snaps []Record) error {
	e.setProgress(rec.ID, phaseOf(rec), 0, int64(len(rec.Volumes)), "")
	var merged []command.MergedImage
	for _, v := range rec.Volumes {
		path := e.ImagePath(rec.ID, v.VolumeID)
		removePartial(path)
		// An image already gone was merged by an earlier attempt whose
		// proposal did not go through: its children are reported again.
		if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
			if _, err := e.cfg.Store.Get(v.VolumeID); err != nil {
				return fmt.Errorf("volume %s: %w", v.VolumeID, err)
			}
			if err := e.cfg.Store.RemoveFromChain(ctx, v.VolumeID, path); err != nil && !errors.Is(err, volumes.ErrNotFound) {
				return fmt.Errorf("volume %s: %w", v.VolumeID, err)
			}
		}
		// Children of this image on this node now hold its data.
		for _, child := range snaps {
			for _, cv := range child.Volumes {
				if cv.VolumeID != v.VolumeID || cv.ParentID != rec.ID {
					continue
				}
				if _, ok := child.replicaOn(e.cfg.Node); !ok {
					continue
				}
				cpath := e.ImagePath(child.ID, cv.VolumeID)
				fd, err := fileData(cpath)
				if err != nil {
					return fmt.Errorf("child %s of volume %s after the merge: %w", child.ID, v.VolumeID, err)
				}
				merged = append(merged, command.MergedImage{SnapshotID: child.ID, VolumeID: cv.VolumeID, StoredBytes: fd.SizeBytes, SHA256: fd.SHA256})
			}
		}
		e.addProgress(rec.ID, 1)
	}
	os.RemoveAll(e.snapDir(rec.ID))
	e.pruneBitmaps(ctx, rec.VM, func(_, sid string) bool { return sid != rec.ID })

	pctx, cancel := context.WithTimeout(ctx, proposeTimeout)
	defer cancel()
	err := e.cfg.Cluster.Propose(pctx, &command.ReplicaReclaimed{ID: rec.ID, Term: rec.Term, Node: e.cfg.Node, Merged: merged, At: time.Now().UTC()})
	if isRefusal(err) {
		e.log.Warn("the cluster refused the reclaim", "snapshot", rec.ID, "err", err)
		return nil
	}
	if err == nil {
		e.log.Info("reclaimed a snapshot's space", "snapshot", rec.ID, "state", rec.State, "merged", len(merged))
	}
	return err
}

func phaseOf(rec Record) string {
	if rec.State == StateDeleting {
		return PhaseDelete
	}
	return PhaseDiscard
}

// removePartial removes what an unfinished transfer of an image left.
func removePartial(final string) {
	for _, suffix := range []string{".part", ".progress", verifiedSuffix} {
		os.Remove(final + suffix)
	}
	// A hidden temporary of the receiver, if its naming differs.
	matches, _ := filepath.Glob(filepath.Join(filepath.Dir(final), "."+filepath.Base(final)+"*"))
	for _, m := range matches {
		os.Remove(m)
	}
}
