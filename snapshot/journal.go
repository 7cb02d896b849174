package snapshot

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/twinsnap/twinsnap/cluster/command"
)

// The coordinator's journal phases for one snapshot. The journal is the
// only local record of a capture: the replicated state cannot say whether
// a coordinator that restarted had already touched the guest.
const (
	// journalCapturing is written (and synced) before the guest is touched.
	journalCapturing = "capturing"
	// journalCaptured is written once every image verified: the capture
	// command in it can be proposed again after a restart.
	journalCaptured = "captured"
)

// journal is the coordinator's record of a snapshot's capture.
type journal struct {
	Phase   string    `json:"phase"`
	Updated time.Time `json:"updated"`
	// Captured is the command to propose, once the phase is captured.
	Captured *command.SnapshotCaptured `json:"captured,omitempty"`
}

func (e *Engine) journalPath(id string) string { return filepath.Join(e.snapDir(id), "journal.json") }

// readJournal returns a snapshot's journal; an error wrapping
// os.ErrNotExist when there is none.
func (e *Engine) readJournal(id string) (journal, error) {
	var j journal
	b, err := os.ReadFile(e.journalPath(id))
	if err != nil {
		return j, err
	}
	if err := json.Unmarshal(b, &j); err != nil {
		return j, fmt.Errorf("journal of snapshot %s: %w", id, err)
	}
	return j, nil
}

// writeJournal replaces a snapshot's journal atomically and durably.
func (e *Engine) writeJournal(id string, j journal) error {
	j.Updated = time.Now().UTC()
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	dir := e.snapDir(id)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("journal of snapshot %s: %w", id, err)
	}
	tmp := e.journalPath(id) + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return fmt.Errorf("journal of snapshot %s: %w", id, err)
	}
	_, werr := f.Write(b)
	serr := f.Sync()
	cerr := f.Close()
	if werr != nil || serr != nil || cerr != nil {
		os.Remove(tmp)
		return fmt.Errorf("journal of snapshot %s: write %v, sync %v, close %v", id, werr, serr, cerr)
	}
	if err := os.Rename(tmp, e.journalPath(id)); err != nil {
		return fmt.Errorf("journal of snapshot %s: %w", id, err)
	}
	return syncDir(dir)
}
