package hypervisor

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"time"

	"github.com/twinsnap/twinsnap/guestagent"
)

// DefaultCaptureRate is the rate limit of each volume's copy after the
// thaw when CaptureRequest.RateLimit is zero, in bytes per second.
const DefaultCaptureRate = 256 << 20

// ThrottledSpeed is the rate limit, in bytes per second, at which Capture
// starts its backup jobs inside the freeze window: the lowest QEMU takes
// (zero means unlimited). Checked on QEMU 7.2: block-copy's rate limiter
// lets the first chunk through (1 MiB, its largest buffer) and then puts
// the next one about a million 100 ms slices away, so a job started at
// this speed copies 1 MiB and then nothing, and block-job-set-speed wakes
// it at once. The point-in-time image is fixed when the transaction
// starts the job (its copy-before-write filter keeps the old data of
// whatever the guest overwrites); only the bulk copy waits.
const ThrottledSpeed = 1

// ErrCapture: a capture failed after QEMU state was touched (a job
// failed, was cancelled or timed out, or a target could not be closed).
// Nothing was captured; see CaptureResult for what was cleaned up.
var ErrCapture = errors.New("hypervisor: capture failed")

// ErrBitmapInvalid: a dirty bitmap cannot serve as asked. For a capture:
// the bitmap of an incremental capture is not persistent, does not
// record writes, is busy (a job uses it: a capture in progress, or a
// stale one that CleanupStale removes) or is inconsistent (QEMU stopped
// without storing it), so it may not mark every write since its capture
// (take a full capture); or a NewBitmap already exists. For
// RemoveBitmaps: a bitmap to remove is busy.
var ErrBitmapInvalid = errors.New("hypervisor: dirty bitmap unusable")

// CaptureMode says how much of a volume a capture copies.
type CaptureMode string

// Capture modes.
const (
	// CaptureFull copies the whole volume.
	CaptureFull CaptureMode = "full"
	// CaptureIncremental copies what the parent capture's bitmap
	// (CaptureVolume.Bitmap) marks dirty: the writes since the parent's
	// point in time. The job only reads the bitmap (blockdev-backup sync
	// "bitmap", bitmap-mode "never").
	CaptureIncremental CaptureMode = "incremental"
)

// captureCleanupTimeout bounds the cleanup after a failed capture, which
// runs on a fresh context.
const captureCleanupTimeout = 30 * time.Second

// captureIDRE is what a capture id may hold: it names QEMU block nodes,
// which take at most 31 bytes.
var captureIDRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,16}$`)

// CaptureVolume is one volume to capture.
type CaptureVolume struct {
	// Volume names the volume as BlockDevices reports it: its block node
	// name ("vol-data1"), its device id ("disk-data1") or its serial
	// ("data1"), tried in that order.
	Volume string
	// Target is the path of an existing image, created by the caller
	// with the volume's virtual size (qemu-img create -f qcow2 PATH
	// SIZE). An incremental capture may give it the previous capture as
	// its backing file, which QEMU then opens read-only.
	Target string
	// TargetFormat is the target's format driver; default "qcow2".
	TargetFormat string
	// Mode is CaptureFull or CaptureIncremental.
	Mode CaptureMode
	// Bitmap, for an incremental capture only (a full one must leave it
	// empty), names the dirty bitmap on the volume's node that the parent
	// capture added (its NewBitmap): it marks the writes since the
	// parent's point in time, and the job copies what it marks. It must
	// exist (else ErrNotFound) and be persistent, recording, neither busy
	// nor inconsistent (else ErrBitmapInvalid), checked before the
	// freeze. Capture never changes or removes it: the job reads it with
	// bitmap-mode "never", so a capture that fails, or whose job finishes
	// in QEMU after its daemon died, leaves it as it was, still
	// recording. The caller removes it (RemoveBitmaps) once no later
	// capture will start from it.
	Bitmap string
	// NewBitmap names the persistent dirty bitmap that the transaction
	// adds to the volume's node at this capture's point in time, so that
	// it records the writes after it: the Bitmap of an incremental
	// capture on top of this one. Required for an incremental capture,
	// optional for a full one; it must not exist yet (else
	// ErrBitmapInvalid before the freeze). When Capture fails it removes
	// NewBitmap if the transaction may have added it. Callers name it
	// after the snapshot ("twinsnap-<snapshot id>"), so that a bitmap
	// that outlives a crash can be matched to a kept snapshot or removed
	// (see CleanupStale); Capture does not look at the name.
	NewBitmap string
}

// CaptureRequest is what Capture is asked to do.
type CaptureRequest struct {
	// ID names the capture's jobs ("ts-ID-jobN") and target nodes
	// ("ts-ID-tgtN"): letters, digits, '-' and '_', at most 16 bytes. A
	// random id is used when empty.
	ID string
	// Volumes are the selected volumes, each once.
	Volumes []CaptureVolume
	// Quiesce is the consistency wanted and the freeze's bounds.
	Quiesce QuiesceOptions
	// Plan is the freeze plan. When nil, Capture computes it from the
	// guest's file systems (guest-get-fsinfo, bounded by
	// Quiesce.AgentTimeout) and QEMU's block devices; a guest that cannot
	// tell steps the capture down to crash consistency (or fails it with
	// ErrConsistency when application consistency is required).
	Plan *FreezePlan
	// RateLimit bounds each volume's copy after the thaw, in bytes per
	// second; zero means DefaultCaptureRate.
	RateLimit int64
	// CopyTimeout bounds the copy after the thaw; zero means twice the
	// largest volume at RateLimit, plus a minute.
	CopyTimeout time.Duration
}

// VolumeResult is what Capture did for one volume.
type VolumeResult struct {
	// Volume is the name from the request; Node the block node copied.
	Volume string `json:"volume"`
	Node   string `json:"node"`
	// Target is the image path, TargetNode the node it was opened as
	// while the job ran, JobID the backup job's id.
	Target     string      `json:"target"`
	TargetNode string      `json:"target_node"`
	JobID      string      `json:"job_id"`
	Mode       CaptureMode `json:"mode"`
	// Bitmap is the bitmap an incremental capture copied through (left
	// as it was). NewBitmap is the bitmap the transaction added: after a
	// successful capture it records the writes since this capture; after
	// a failed one Capture removed it (or its error says why it could
	// not).
	Bitmap    string `json:"bitmap,omitempty"`
	NewBitmap string `json:"new_bitmap,omitempty"`
	// Bytes and Total are the job's progress when it ended (query-jobs):
	// the bytes it went through (the whole volume for a full capture, the
	// dirty part for an incremental one) and its total.
	Bytes int64 `json:"bytes"`
	Total int64 `json:"total"`
	// Duration is from the transaction's reply to the job's end.
	Duration time.Duration `json:"duration"`
	// Error is the job's error, if it failed or was cancelled.
	Error string `json:"error,omitempty"`
}

// CaptureResult records a capture.
type CaptureResult struct {
	// ID is the capture's id.
	ID string `json:"id"`
	// Quiesce is the consistency achieved and the freeze window's times.
	Quiesce QuiesceResult `json:"quiesce"`
	// Plan is the freeze plan used (computed or given).
	Plan FreezePlan `json:"plan"`
	// Volumes are the per-volume results, in the request's order.
	Volumes []VolumeResult `json:"volumes"`
	// Setup is the time to resolve the volumes, plan the freeze and open
	// the targets, all before the freeze.
	Setup time.Duration `json:"setup"`
	// Copy is from the confirmed thaw to the end of the last job.
	Copy time.Duration `json:"copy"`
	// Total is the whole call.
	Total time.Duration `json:"total"`
}

// FSInfoAgent is what planning needs of the guest agent; a
// *guestagent.Client has it.
type FSInfoAgent interface {
	FSInfo(ctx context.Context) ([]guestagent.FileSystem, error)
}

// PlanFor computes the freeze plan for a capture of the selected volumes
// (named as in CaptureVolume.Volume): every disk QEMU reports
// (BlockDevices: serials and PCI addresses) is a volume, and the guest's
// file systems (guest-get-fsinfo) are mapped onto them by PlanFreeze, by
// serial when the guest reports one, else by PCI address on the root bus.
// A selected name that matches no disk is ErrNotFound.
func PlanFor(ctx context.Context, q QMP, agent FSInfoAgent, selected []string) (FreezePlan, error) {
	devs, err := BlockDevices(ctx, q)
	if err != nil {
		return FreezePlan{}, fmt.Errorf("hypervisor: freeze plan: %w", err)
	}
	fs, err := agent.FSInfo(ctx)
	if err != nil {
		return FreezePlan{}, fmt.Errorf("hypervisor: freeze plan: guest file systems: %w", err)
	}
	return planFrom(devs, fs, selected)
}

// planFrom maps the guest's file systems onto devs with the selected
// ones marked.
func planFrom(devs []BlockDevice, fs []guestagent.FileSystem, selected []string) (FreezePlan, error) {
	chosen := map[int]bool{}
	for _, s := range selected {
		i := findDevice(devs, s)
		if i < 0 {
			return FreezePlan{}, fmt.Errorf("%w: freeze plan: no volume %q", ErrNotFound, s)
		}
		chosen[i] = true
	}
	vols := make([]PlanVolume, 0, len(devs))
	for i, d := range devs {
		vols = append(vols, PlanVolume{Name: volumeName(d), Serial: d.Serial, PCI: d.PCI, Selected: chosen[i]})
	}
	return PlanFreeze(vols, fs), nil
}

// findDevice returns the index of the device named name (node name, then
// device id, then serial), or -1.
func findDevice(devs []BlockDevice, name string) int {
	if name == "" {
		return -1
	}
	for _, field := range []func(BlockDevice) string{
		func(d BlockDevice) string { return d.NodeName },
		func(d BlockDevice) string { return d.DeviceID },
		func(d BlockDevice) string { return d.Serial },
	} {
		for i, d := range devs {
			if field(d) == name {
				return i
			}
		}
	}
	return -1
}

// volumeName is how plans and messages name a device: its serial, else
// its device id, else its node name.
func volumeName(d BlockDevice) string {
	switch {
	case d.Serial != "":
		return d.Serial
	case d.DeviceID != "":
		return d.DeviceID
	}
	return d.NodeName
}

// capVol is one volume of a capture in progress.
type capVol struct {
	req    CaptureVolume
	dev    BlockDevice
	format string
	res    VolumeResult
	// opened is set while the target is open as a block node.
	opened bool
}

// Capture takes a point-in-time copy of the requested volumes, quiesced
// as req.Quiesce allows, without holding the guest's thaw hostage to the
// copy. Before the freeze it resolves the volumes, plans the freeze
// (unless req.Plan is given), opens each target (blockdev-add) and
// subscribes to each job's events. Inside the freeze window (Quiesce) it
// runs one transaction: per volume the NewBitmap's
// block-dirty-bitmap-add (persistent), if named, and a blockdev-backup
// job (sync "full", or sync "bitmap" through Bitmap with bitmap-mode
// "never") started at ThrottledSpeed, so that the jobs do not compete
// with the thaw. Once the guest is thawed it raises each job to the rate
// limit, waits for the jobs (which it finalizes and dismisses), closes
// the targets and returns per-volume results and the QuiesceResult.
//
// Each capture's bitmap belongs to its snapshot: an incremental capture
// copies through its parent's bitmap without changing it, and starts a
// bitmap of its own. So nothing that happens to a capture, including its
// daemon being killed while QEMU finishes the job, changes what the
// parent's bitmap records; a half-done capture leaves only its own jobs,
// targets and NewBitmap, which CleanupStale and RemoveBitmaps remove.
//
// agent freezes and thaws the guest (nil when the VM has no agent); the
// plan's guest-get-fsinfo goes through agent when it has FSInfo, else
// through m.Agent(). Quiesce guarantees the thaw, on a fresh context,
// whatever happens. When Capture returns an error nothing was captured:
// the jobs it started were cancelled and dismissed, the targets closed
// (their content is undefined; the caller deletes them), the NewBitmaps
// the transaction may have added removed, and the Bitmaps left as they
// were. What that cleanup could not do (the connection to QEMU was lost,
// say) is joined to the error; CleanupStale and RemoveBitmaps finish it.
// Failures wrap ErrConsistency, ErrThaw, ErrCapture, ErrJobFailed,
// ErrNotFound, ErrBitmapInvalid or ErrTimeout.
func Capture(ctx context.Context, m Machine, agent FreezeAgent, req CaptureRequest) (CaptureResult, error) {
	start := time.Now()
	opts := req.Quiesce
	if err := opts.defaults(); err != nil {
		return CaptureResult{}, err
	}
	if req.ID == "" {
		var b [4]byte
		_, _ = rand.Read(b[:])
		req.ID = hex.EncodeToString(b[:])
	}
	if err := req.validate(); err != nil {
		return CaptureResult{ID: req.ID}, err
	}
	if req.RateLimit <= 0 {
		req.RateLimit = DefaultCaptureRate
	}
	c := &capturing{
		q:     m.QMP(),
		log:   opts.Logger.With("component", "capture", "vm", m.Name(), "capture", req.ID),
		start: start,
		res:   CaptureResult{ID: req.ID},
	}

	devs, err := BlockDevices(ctx, c.q)
	if err != nil {
		return c.results(), fmt.Errorf("hypervisor: capture %s: %w", req.ID, err)
	}
	if err := c.resolve(devs, req); err != nil {
		return c.results(), fmt.Errorf("hypervisor: capture %s: %w", req.ID, err)
	}

	// The freeze plan, unless given or not needed.
	var planStepDown string
	switch {
	case req.Plan != nil:
		c.res.Plan = *req.Plan
	case opts.Desire == Application && opts.FreezeEnabled && agent != nil:
		plan, err := c.plan(ctx, m, agent, devs, opts.AgentTimeout)
		if err != nil {
			planStepDown = "guest file systems unknown: " + err.Error()
			if opts.Require == Application {
				res := c.results()
				res.Quiesce = QuiesceResult{Achieved: Crash, StepDown: planStepDown}
				return res, fmt.Errorf("%w: %s", ErrConsistency, planStepDown)
			}
			c.log.Warn("cannot plan the freeze; stepping down to crash consistency", "err", err)
		}
		c.res.Plan = plan
	}

	// Open the targets, outside the freeze window.
	if err := c.openTargets(ctx); err != nil {
		return c.fail(ctx, false, fmt.Errorf("hypervisor: capture %s: %w", req.ID, err))
	}
	c.res.Setup = time.Since(start)

	// The window: one transaction. The jobs' watches exist before it.
	watches := make([]*JobWatch, len(c.vols))
	for i := range c.vols {
		watches[i] = WatchJob(c.q, c.vols[i].res.JobID)
	}
	closeWatches := func() {
		for _, w := range watches {
			w.Close()
		}
	}
	actions := c.actions()
	var txnErr error
	txnRan := false
	var txnDone time.Time
	qopts := opts
	if planStepDown != "" {
		qopts.Desire = Crash
	}
	qres, qerr := Quiesce(ctx, agent, c.res.Plan, qopts, func(ctx context.Context) error {
		txnRan = true
		txnErr = Transaction(ctx, c.q, actions, nil)
		txnDone = time.Now()
		return txnErr
	})
	if planStepDown != "" {
		qres.Achieved, qres.StepDown = Crash, planStepDown
	}
	c.res.Quiesce = qres
	if qerr != nil {
		closeWatches()
		// A transaction that QEMU refused changed nothing; one that
		// timed out may have run: fail checks.
		var qe *QMPError
		mayHaveRun := txnRan && !errors.As(txnErr, &qe)
		return c.fail(ctx, mayHaveRun, fmt.Errorf("hypervisor: capture %s: %w", req.ID, qerr))
	}
	thawed := time.Now()
	c.log.Debug("jobs started in the freeze window", "consistency", qres.Achieved, "window", qres.Window, "thaw_call", qres.ThawCall)

	// The guest is thawed: let the copy run.
	for i := range c.vols {
		if err := c.raise(ctx, c.vols[i].res.JobID, req.RateLimit); err != nil {
			closeWatches()
			return c.fail(ctx, true, fmt.Errorf("%w: %s: %w", ErrCapture, req.ID, err))
		}
	}
	copyTimeout := req.CopyTimeout
	if copyTimeout <= 0 {
		var largest int64
		for _, v := range c.vols {
			largest = max(largest, v.dev.VirtualSize)
		}
		copyTimeout = time.Minute + 2*time.Duration(float64(largest)/float64(req.RateLimit)*float64(time.Second))
	}
	if err := c.wait(ctx, watches, txnDone, copyTimeout); err != nil {
		return c.fail(ctx, true, fmt.Errorf("%w: %s: %w", ErrCapture, req.ID, err))
	}
	c.res.Copy = time.Since(thawed)

	var errs []error
	for i := range c.vols {
		if err := BlockdevDel(ctx, c.q, c.vols[i].res.TargetNode); err != nil {
			errs = append(errs, err)
		} else {
			c.vols[i].opened = false
		}
	}
	if err := errors.Join(errs...); err != nil {
		return c.fail(ctx, true, fmt.Errorf("%w: %s: closing the targets: %w", ErrCapture, req.ID, err))
	}
	c.log.Info("captured", "consistency", qres.Achieved, "volumes", len(c.vols), "window", qres.Window, "thaw_call", qres.ThawCall, "copy", c.res.Copy)
	return c.results(), nil
}

// validate checks the request's form.
func (r *CaptureRequest) validate() error {
	if !captureIDRE.MatchString(r.ID) {
		return fmt.Errorf("hypervisor: capture id %q: want 1 to 16 letters, digits, '-' or '_'", r.ID)
	}
	if len(r.Volumes) == 0 {
		return fmt.Errorf("hypervisor: capture %s: no volumes", r.ID)
	}
	for i, v := range r.Volumes {
		switch {
		case v.Volume == "":
			return fmt.Errorf("hypervisor: capture %s: volume %d has no name", r.ID, i)
		case v.Target == "":
			return fmt.Errorf("hypervisor: capture %s: volume %s has no target", r.ID, v.Volume)
		case v.Mode != CaptureFull && v.Mode != CaptureIncremental:
			return fmt.Errorf("hypervisor: capture %s: volume %s: mode %q, want full or incremental", r.ID, v.Volume, v.Mode)
		case v.Mode == CaptureFull && v.Bitmap != "":
			return fmt.Errorf("hypervisor: capture %s: volume %s: a full capture reads no bitmap (got %q)", r.ID, v.Volume, v.Bitmap)
		case v.Mode == CaptureIncremental && (v.Bitmap == "" || v.NewBitmap == ""):
			return fmt.Errorf("hypervisor: capture %s: volume %s: an incremental capture needs its parent's bitmap and a new one (got %q and %q)", r.ID, v.Volume, v.Bitmap, v.NewBitmap)
		case v.NewBitmap != "" && v.NewBitmap == v.Bitmap:
			return fmt.Errorf("hypervisor: capture %s: volume %s: the new bitmap %q is the parent's", r.ID, v.Volume, v.NewBitmap)
		}
	}
	if r.RateLimit < 0 {
		return fmt.Errorf("hypervisor: capture %s: negative rate limit %d", r.ID, r.RateLimit)
	}
	return nil
}

// capturing is one Capture call in progress.
type capturing struct {
	q     QMP
	log   *slog.Logger
	start time.Time
	vols  []capVol
	res   CaptureResult
}

// results returns the result as it stands, with the per-volume results
// and the time taken so far.
func (c *capturing) results() CaptureResult {
	c.res.Volumes = make([]VolumeResult, len(c.vols))
	for i, v := range c.vols {
		c.res.Volumes[i] = v.res
	}
	c.res.Total = time.Since(c.start)
	return c.res
}

func jobID(id string, i int) string      { return fmt.Sprintf("%s%s-job%d", CapturePrefix, id, i) }
func targetNode(id string, i int) string { return fmt.Sprintf("%s%s-tgt%d", CapturePrefix, id, i) }

// resolve maps the requested volumes to QEMU's devices and checks their
// bitmaps, so that the transaction inside the window does not fail on
// what could be known before.
func (c *capturing) resolve(devs []BlockDevice, req CaptureRequest) error {
	seen := map[string]string{}
	for i, v := range req.Volumes {
		di := findDevice(devs, v.Volume)
		if di < 0 {
			return fmt.Errorf("%w: volume %q", ErrNotFound, v.Volume)
		}
		dev := devs[di]
		if other, ok := seen[dev.NodeName]; ok {
			return fmt.Errorf("volumes %q and %q are the same disk (%s)", other, v.Volume, dev.NodeName)
		}
		seen[dev.NodeName] = v.Volume
		cv := capVol{req: v, dev: dev, format: v.TargetFormat, res: VolumeResult{
			Volume: v.Volume, Node: dev.NodeName, Target: v.Target, TargetNode: targetNode(req.ID, i),
			JobID: jobID(req.ID, i), Mode: v.Mode, Bitmap: v.Bitmap, NewBitmap: v.NewBitmap,
		}}
		if cv.format == "" {
			cv.format = "qcow2"
		}
		if v.Mode == CaptureIncremental {
			bm := findBitmap(dev.Bitmaps, v.Bitmap)
			if bm == nil {
				return fmt.Errorf("%w: volume %s (%s) has no bitmap %q: take a full capture", ErrNotFound, v.Volume, dev.NodeName, v.Bitmap)
			}
			if why := bitmapUnusable(*bm); why != "" {
				return fmt.Errorf("%w: volume %s (%s): bitmap %q %s", ErrBitmapInvalid, v.Volume, dev.NodeName, v.Bitmap, why)
			}
		}
		if v.NewBitmap != "" && findBitmap(dev.Bitmaps, v.NewBitmap) != nil {
			return fmt.Errorf("%w: volume %s (%s) already has a bitmap %q", ErrBitmapInvalid, v.Volume, dev.NodeName, v.NewBitmap)
		}
		c.vols = append(c.vols, cv)
	}
	return nil
}

// bitmapUnusable says why bm may not mark every write since its capture
// ("" if it does): a bitmap that is not persistent was not created by
// Capture (or is lost when QEMU stops), one that does not record writes
// misses them, one that is inconsistent was not stored when QEMU
// stopped, and one that is busy is in use by a job.
func bitmapUnusable(bm DirtyBitmap) string {
	switch {
	case bm.Inconsistent:
		return "is inconsistent (QEMU stopped without storing it): take a full capture"
	case bm.Busy:
		return "is in use by a job (a capture in progress, or a stale one: CleanupStale)"
	case !bm.Persistent:
		return "is not persistent: take a full capture"
	case !bm.Recording:
		return "does not record writes: take a full capture"
	}
	return ""
}

// findBitmap returns the bitmap named name, or nil.
func findBitmap(bms []DirtyBitmap, name string) *DirtyBitmap {
	for i := range bms {
		if bms[i].Name == name {
			return &bms[i]
		}
	}
	return nil
}

// plan computes the freeze plan through the guest's file systems.
func (c *capturing) plan(ctx context.Context, m Machine, agent FreezeAgent, devs []BlockDevice, timeout time.Duration) (FreezePlan, error) {
	fa, ok := agent.(FSInfoAgent)
	if !ok {
		fa = guestagent.NewClient(m.Agent())
	}
	fctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	fs, err := fa.FSInfo(fctx)
	if err != nil {
		return FreezePlan{}, fmt.Errorf("guest-get-fsinfo: %w", err)
	}
	names := make([]string, len(c.vols))
	for i, v := range c.vols {
		names[i] = v.dev.NodeName
	}
	return planFrom(devs, fs, names)
}

// openTargets opens each target as a block node and checks that it has
// the volume's size (a backup job refuses another size, which would
// otherwise be found inside the freeze window). On error the nodes it
// opened are left for fail to close.
func (c *capturing) openTargets(ctx context.Context) error {
	for i := range c.vols {
		v := &c.vols[i]
		if err := BlockdevAdd(ctx, c.q, v.res.TargetNode, v.req.Target, v.format); err != nil {
			return err
		}
		v.opened = true
	}
	var nodes []qBlockDevice
	if err := c.q.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		return fmt.Errorf("checking the targets: %w", err)
	}
	for _, v := range c.vols {
		i := slices.IndexFunc(nodes, func(n qBlockDevice) bool { return n.NodeName == v.res.TargetNode })
		if i < 0 {
			return fmt.Errorf("%w: target node %s not listed after blockdev-add", ErrNotFound, v.res.TargetNode)
		}
		if got := nodes[i].Image.VirtualSize; got != v.dev.VirtualSize {
			return fmt.Errorf("target %s of volume %s holds %d bytes, the volume %d", v.req.Target, v.req.Volume, got, v.dev.VirtualSize)
		}
	}
	return nil
}

// actions builds the transaction: the new bitmaps first, then one
// throttled backup job per volume; an incremental job reads its parent's
// bitmap and never changes it. Jobs finalize by themselves and stay
// concluded until dismissed, so that their outcome can always be read.
// QEMU runs every action of a transaction before it lets the guest's I/O
// go on, so the new bitmaps start at the jobs' point in time.
func (c *capturing) actions() []Action {
	var actions []Action
	for _, v := range c.vols {
		if v.req.NewBitmap != "" {
			actions = append(actions, BitmapAdd(v.dev.NodeName, v.req.NewBitmap, true))
		}
	}
	for _, v := range c.vols {
		if v.req.Mode == CaptureIncremental {
			actions = append(actions, BlockdevBackupBitmap(v.res.JobID, v.dev.NodeName, v.res.TargetNode, v.req.Bitmap, BitmapModeNever, ThrottledSpeed, true, false))
			continue
		}
		actions = append(actions, BlockdevBackup(v.res.JobID, v.dev.NodeName, v.res.TargetNode, SyncFull, "", ThrottledSpeed, true, false))
	}
	return actions
}

// raise sets a job's rate limit. A job that has already finished (a
// small incremental copy can finish within its first chunk) refuses a
// new speed; that is fine.
func (c *capturing) raise(ctx context.Context, id string, rate int64) error {
	err := SetJobSpeed(ctx, c.q, id, rate)
	if err == nil {
		return nil
	}
	jobs, qerr := QueryJobs(ctx, c.q)
	if qerr != nil {
		return errors.Join(err, qerr)
	}
	for _, j := range jobs {
		if j.ID == id {
			switch j.Status {
			case "waiting", "pending", "concluded", "aborting":
				return nil
			}
		}
	}
	return err
}

// waitResult is one job's end.
type waitResult struct {
	i   int
	res JobResult
	err error
	at  time.Time
}

// wait follows every job to its end, in parallel, within timeout. When a
// job fails, the others are cancelled: the capture is lost anyway.
func (c *capturing) wait(ctx context.Context, watches []*JobWatch, started time.Time, timeout time.Duration) error {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ch := make(chan waitResult, len(watches)) // every sender can send without a receiver
	for i, w := range watches {
		go func() {
			r, err := w.Wait(wctx)
			ch <- waitResult{i: i, res: r, err: err, at: time.Now()}
		}()
	}
	var errs []error
	for range watches {
		d := <-ch
		v := &c.vols[d.i]
		v.res.Bytes, v.res.Total, v.res.Error = d.res.CurrentProgress, d.res.TotalProgress, d.res.Error
		v.res.Duration = d.at.Sub(started)
		if d.err == nil {
			continue
		}
		if v.res.Error == "" {
			v.res.Error = d.err.Error()
		}
		if len(errs) == 0 {
			for j := range c.vols {
				if j != d.i {
					// Refused by a job that has ended: ignore.
					_ = CancelJob(wctx, c.q, c.vols[j].res.JobID)
				}
			}
		}
		errs = append(errs, fmt.Errorf("volume %s: %w", v.req.Volume, d.err))
	}
	return errors.Join(errs...)
}

// fail cleans up after a failure, on a fresh context: it cancels and
// dismisses the capture's jobs that QEMU still lists, removes the new
// bitmaps (when the transaction may have run, which may have added them;
// the parents' bitmaps are never touched), and closes the targets. It
// returns the result and cause, joined with any cleanup error.
func (c *capturing) fail(ctx context.Context, mayHaveRun bool, cause error) (CaptureResult, error) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), captureCleanupTimeout)
	defer cancel()
	var errs []error
	if mayHaveRun {
		jobs, err := QueryJobs(cctx, c.q)
		if err != nil {
			errs = append(errs, err)
		}
		for i := range c.vols {
			v := &c.vols[i]
			idx := slices.IndexFunc(jobs, func(j JobInfo) bool { return j.ID == v.res.JobID })
			if idx < 0 {
				continue
			}
			if st := jobs[idx].Status; st != "concluded" && st != "null" && st != "aborting" {
				if err := CancelJob(cctx, c.q, v.res.JobID); err != nil && !errors.Is(err, ErrNotFound) {
					c.log.Warn("cancelling a job", "job", v.res.JobID, "err", err)
				}
			}
			r, err := WaitJob(cctx, c.q, v.res.JobID)
			switch {
			case err == nil:
			case errors.Is(err, ErrJobFailed):
				if v.res.Error == "" {
					v.res.Error = r.Error
				}
			default:
				errs = append(errs, fmt.Errorf("cleaning up job %s: %w", v.res.JobID, err))
			}
		}
		// A new bitmap did not exist before (resolve checked): if the
		// node has it now, the transaction added it.
		for _, v := range c.vols {
			if v.req.NewBitmap == "" {
				continue
			}
			if err := RemoveBitmaps(cctx, c.q, v.dev.NodeName, []string{v.req.NewBitmap}); err != nil {
				errs = append(errs, fmt.Errorf("removing the new bitmap %s of %s: %w", v.req.NewBitmap, v.req.Volume, err))
			}
		}
	}
	for i := range c.vols {
		v := &c.vols[i]
		if !v.opened {
			continue
		}
		if err := BlockdevDel(cctx, c.q, v.res.TargetNode); err != nil {
			errs = append(errs, err)
			continue
		}
		v.opened = false
	}
	if len(errs) > 0 {
		cause = errors.Join(cause, fmt.Errorf("hypervisor: cleaning up after the failed capture: %w", errors.Join(errs...)))
	}
	return c.results(), cause
}
