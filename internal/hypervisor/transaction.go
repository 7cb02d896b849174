package hypervisor

import (
	"context"
	"encoding/json"
	"fmt"
)

// Backup sync modes (QEMU's MirrorSyncMode).
const (
	// SyncFull copies the whole disk.
	SyncFull = "full"
	// SyncIncremental copies what the bitmap marks dirty; on success the
	// bitmap is cleared and goes on recording from the job's start.
	SyncIncremental = "incremental"
	// SyncBitmap copies what the bitmap marks dirty, and treats the
	// bitmap as its BitmapMode says.
	SyncBitmap = "bitmap"
	// SyncTop copies only what the top image allocates.
	SyncTop = "top"
	// SyncNone copies only what the guest overwrites while the job runs.
	SyncNone = "none"
)

// Bitmap sync modes of a SyncBitmap backup (QEMU's BitmapSyncMode): what
// the job does to its bitmap when it ends. While the job runs, QEMU
// records the guest's writes in a successor of the bitmap (the bitmap is
// busy); when the job ends the successor either replaces the bitmap or is
// merged back into it.
const (
	// BitmapModeNever leaves the bitmap's content as it was, plus the
	// writes during the job: the job only reads it.
	BitmapModeNever = "never"
	// BitmapModeOnSuccess clears the bitmap to the writes since the job
	// started if the job succeeds (what SyncIncremental does).
	BitmapModeOnSuccess = "on-success"
	// BitmapModeAlways clears what the job copied, even if it failed.
	BitmapModeAlways = "always"
)

// Transaction completion modes (QEMU's ActionCompletionMode).
const (
	// CompletionIndividual lets each job finish on its own (QEMU's
	// default).
	CompletionIndividual = "individual"
	// CompletionGrouped fails every job of the transaction when one fails.
	// QEMU 7.2 refuses it for transactions holding
	// block-dirty-bitmap-add (GenericError "Action
	// 'block-dirty-bitmap-add' does not support Transaction property
	// completion-mode = grouped").
	CompletionGrouped = "grouped"
)

// Drive-backup target modes (QEMU's NewImageMode).
const (
	// ModeExisting writes to an existing image.
	ModeExisting = "existing"
	// ModeAbsolutePaths creates the image.
	ModeAbsolutePaths = "absolute-paths"
)

// Action is one action of a QMP transaction: its type (the command name,
// e.g. "blockdev-backup") and its data (the command's arguments).
type Action struct {
	Type string
	Data any
}

// MarshalJSON encodes the action as QMP's {"type": ..., "data": ...}.
func (a Action) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Type string `json:"type"`
		Data any    `json:"data"`
	}{a.Type, a.Data})
}

// TransactionProps are a transaction's properties.
type TransactionProps struct {
	// CompletionMode is CompletionIndividual (default) or
	// CompletionGrouped.
	CompletionMode string `json:"completion-mode,omitempty"`
}

// Transaction runs actions atomically in one QMP transaction: either all
// of them take effect, or none does and QEMU's error comes back as a
// *QMPError. Jobs the transaction starts run on after it returns: create
// their JobWatch before calling Transaction, since QEMU emits their first
// events before it replies.
func Transaction(ctx context.Context, q QMP, actions []Action, props *TransactionProps) error {
	args := struct {
		Actions    []Action          `json:"actions"`
		Properties *TransactionProps `json:"properties,omitempty"`
	}{Actions: actions}
	if props != nil && *props != (TransactionProps{}) {
		args.Properties = props
	}
	if args.Actions == nil {
		args.Actions = []Action{}
	}
	if err := q.Execute(ctx, "transaction", args, nil); err != nil {
		return fmt.Errorf("hypervisor: transaction of %d actions: %w", len(actions), err)
	}
	return nil
}

// BitmapAddData is the data of block-dirty-bitmap-add.
type BitmapAddData struct {
	Node       string `json:"node"`
	Name       string `json:"name"`
	Persistent bool   `json:"persistent"`
	// Granularity in bytes; zero lets QEMU choose (the cluster size).
	Granularity uint32 `json:"granularity,omitempty"`
}

// BitmapAdd adds a dirty bitmap to a node. A persistent bitmap is stored
// in the qcow2 image when QEMU closes it (not before), and survives QEMU
// restarts.
func BitmapAdd(node, name string, persistent bool) Action {
	return Action{Type: "block-dirty-bitmap-add", Data: BitmapAddData{Node: node, Name: name, Persistent: persistent}}
}

// bitmapRef names a bitmap on a node.
type bitmapRef struct {
	Node string `json:"node"`
	Name string `json:"name"`
}

// BitmapClear clears a dirty bitmap.
func BitmapClear(node, name string) Action {
	return Action{Type: "block-dirty-bitmap-clear", Data: bitmapRef{Node: node, Name: name}}
}

// BitmapRemove removes a dirty bitmap (from the image too, if persistent).
// A transaction refuses it for a bitmap that does not exist or that a job
// is using (busy); RemoveBitmaps checks the first.
func BitmapRemove(node, name string) Action {
	return Action{Type: "block-dirty-bitmap-remove", Data: bitmapRef{Node: node, Name: name}}
}

// BackupData is the data of blockdev-backup and drive-backup (QEMU 7.2's
// BackupCommon plus the target).
type BackupData struct {
	JobID  string `json:"job-id"`
	Device string `json:"device"`
	// Target is a node name (blockdev-backup) or a file name
	// (drive-backup).
	Target string `json:"target"`
	// Format and Mode are drive-backup's.
	Format string `json:"format,omitempty"`
	Mode   string `json:"mode,omitempty"`
	Sync   string `json:"sync"`
	Bitmap string `json:"bitmap,omitempty"`
	// BitmapMode is a SyncBitmap job's BitmapMode* value.
	BitmapMode string `json:"bitmap-mode,omitempty"`
	// Speed limits the job in bytes per second; zero is unlimited.
	Speed        int64 `json:"speed,omitempty"`
	AutoFinalize bool  `json:"auto-finalize"`
	AutoDismiss  bool  `json:"auto-dismiss"`
}

// BlockdevBackup starts a backup job jobID copying device (a node name)
// to the node target, with sync mode sync (SyncFull, SyncIncremental
// with bitmap, ...), at most speed bytes per second (zero: unlimited).
// With autoFinalize false the job waits in "pending" for job-finalize;
// with autoDismiss false it stays "concluded", with its error, until
// job-dismiss. JobWatch.Wait does both as needed; autoDismiss false lets
// it read the job's error from query-jobs even when events were lost.
func BlockdevBackup(jobID, device, target, sync, bitmap string, speed int64, autoFinalize, autoDismiss bool) Action {
	return Action{Type: "blockdev-backup", Data: BackupData{
		JobID: jobID, Device: device, Target: target, Sync: sync, Bitmap: bitmap,
		Speed: speed, AutoFinalize: autoFinalize, AutoDismiss: autoDismiss,
	}}
}

// BlockdevBackupBitmap starts a backup job jobID copying what bitmap (a
// dirty bitmap on device) marks dirty from device to the node target
// (sync SyncBitmap), treating the bitmap as bitmapMode says: with
// BitmapModeNever QEMU only reads it, whether the job succeeds, fails or
// is cancelled. speed, autoFinalize and autoDismiss are as for
// BlockdevBackup. QEMU 7.2 takes it in a transaction with
// block-dirty-bitmap-add (completion-mode individual).
func BlockdevBackupBitmap(jobID, device, target, bitmap, bitmapMode string, speed int64, autoFinalize, autoDismiss bool) Action {
	return Action{Type: "blockdev-backup", Data: BackupData{
		JobID: jobID, Device: device, Target: target, Sync: SyncBitmap, Bitmap: bitmap, BitmapMode: bitmapMode,
		Speed: speed, AutoFinalize: autoFinalize, AutoDismiss: autoDismiss,
	}}
}

// DriveBackup is BlockdevBackup to an image file: target is a file name,
// format its format ("" to probe an existing image), mode ModeExisting or
// ModeAbsolutePaths (QEMU creates the image). QEMU 7.2 still accepts it
// in transactions, although it is deprecated in favour of
// blockdev-backup.
func DriveBackup(jobID, device, target, format, mode, sync, bitmap string, speed int64, autoFinalize, autoDismiss bool) Action {
	return Action{Type: "drive-backup", Data: BackupData{
		JobID: jobID, Device: device, Target: target, Format: format, Mode: mode, Sync: sync, Bitmap: bitmap,
		Speed: speed, AutoFinalize: autoFinalize, AutoDismiss: autoDismiss,
	}}
}

// BlockdevAdd opens the image at path as a format node named node, over a
// file node named node+"-file" (a backup target, say). A qcow2 image's
// backing file, if it names one, is opened too.
func BlockdevAdd(ctx context.Context, q QMP, node, path, format string) error {
	args := map[string]any{
		"driver":    format,
		"node-name": node,
		"file":      map[string]any{"driver": "file", "filename": path, "node-name": node + "-file"},
	}
	if err := q.Execute(ctx, "blockdev-add", args, nil); err != nil {
		return fmt.Errorf("hypervisor: blockdev-add %s (%s): %w", node, path, err)
	}
	return nil
}

// BlockdevDel closes a node opened with BlockdevAdd, which flushes it; its
// file node goes with it.
func BlockdevDel(ctx context.Context, q QMP, node string) error {
	if err := q.Execute(ctx, "blockdev-del", map[string]any{"node-name": node}, nil); err != nil {
		return fmt.Errorf("hypervisor: blockdev-del %s: %w", node, err)
	}
	return nil
}
