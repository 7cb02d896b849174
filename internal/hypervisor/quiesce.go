package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/twinsnap/twinsnap/guestagent"
)

// Consistency is what a snapshot's image of the guest guarantees.
type Consistency string

// Consistency levels, best first.
const (
	// Application: the selected volumes' file systems were frozen through
	// the guest agent while the capture started.
	Application Consistency = "application"
	// Crash: the image is what a power cut would leave.
	Crash Consistency = "crash"
)

// Valid reports whether c is a known level.
func (c Consistency) Valid() bool { return c == Application || c == Crash }

// rank orders the levels: higher is better.
func (c Consistency) rank() int {
	if c == Application {
		return 2
	}
	return 1
}

// Errors of quiescing.
var (
	// ErrConsistency: the required consistency cannot be achieved; nothing
	// was captured.
	ErrConsistency = errors.New("hypervisor: required consistency not achievable")
	// ErrThaw: the guest could not be confirmed thawed. This is loud on
	// purpose: the caller must alert and keep trying (ThawIfFrozen).
	ErrThaw = errors.New("hypervisor: thaw failed")
)

// FreezeAgent is what quiescing needs of the guest agent; a
// *guestagent.Client has it.
type FreezeAgent interface {
	Ping(ctx context.Context) error
	FreezeList(ctx context.Context, mountpoints []string) (int, error)
	Thaw(ctx context.Context) (int, error)
	FreezeStatus(ctx context.Context) (guestagent.FreezeStatus, error)
}

// AgentConn is a FreezeAgent on a connection of its own.
type AgentConn interface {
	FreezeAgent
	Close() error
}

// QuiesceOptions follow everRun's --desire/--require: try Desire, step
// down, never below Require.
type QuiesceOptions struct {
	Desire  Consistency
	Require Consistency
	// FreezeEnabled is the VM's setting; false means crash consistency.
	FreezeEnabled bool
	// Deadline bounds freeze, capture and thaw together (default 10 s).
	Deadline time.Duration
	// AgentTimeout bounds the agent probe before freezing (default 2 s).
	AgentTimeout time.Duration
	// ThawTimeout bounds the thaw, all attempts together (default 5 s).
	ThawTimeout time.Duration
	// WatchFor bounds the watchdog that starts when a freeze call failed
	// or timed out without a confirmed thaw: a freeze hung in the guest can
	// still complete later, and the watchdog thaws it then (default 2 min).
	WatchFor time.Duration
	// Redial, if set, opens a new agent connection; the thaw and the
	// watchdog use it when the connection they have was lost (for example
	// dropped mid-reply). They close what they open.
	Redial func(context.Context) (AgentConn, error)
	Logger *slog.Logger
}

// QuiesceResult records what a quiesced capture achieved.
type QuiesceResult struct {
	Achieved Consistency `json:"achieved"`
	// StepDown says why Achieved is below Desire ("" if it is not).
	StepDown string `json:"step_down,omitempty"`
	// Frozen are the mount points that were frozen.
	Frozen []string `json:"frozen,omitempty"`
	// Plan reasons for each frozen mount point.
	Reasons map[string]string `json:"reasons,omitempty"`
	// FreezeCall, Capture and ThawCall time the three parts; Window is
	// from the freeze call to the confirmed thaw: the guest's frozen time
	// is within it.
	FreezeCall time.Duration `json:"freeze_call"`
	Capture    time.Duration `json:"capture"`
	ThawCall   time.Duration `json:"thaw_call"`
	Window     time.Duration `json:"window"`
}

func (o *QuiesceOptions) defaults() error {
	if o.Desire == "" {
		o.Desire = Application
	}
	if o.Require == "" {
		o.Require = Crash
	}
	if !o.Desire.Valid() || !o.Require.Valid() {
		return fmt.Errorf("hypervisor: consistency levels %q/%q: want application or crash", o.Desire, o.Require)
	}
	if o.Require.rank() > o.Desire.rank() {
		return fmt.Errorf("hypervisor: required consistency %s is above the desired %s", o.Require, o.Desire)
	}
	if o.Deadline <= 0 {
		o.Deadline = 10 * time.Second
	}
	if o.AgentTimeout <= 0 {
		o.AgentTimeout = 2 * time.Second
	}
	if o.ThawTimeout <= 0 {
		o.ThawTimeout = 5 * time.Second
	}
	if o.WatchFor <= 0 {
		o.WatchFor = 2 * time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return nil
}

// Quiesce runs capture with the guest quiesced as far as opts allow: it
// freezes the plan's mount points, runs capture, and thaws, all within
// opts.Deadline. The thaw runs on a fresh context whatever happened:
// capture failing, the deadline passing or ctx being cancelled. When the
// desired level cannot be reached (freeze disabled, no agent, agent not
// answering, no file system on the selected volumes, freeze refused) it
// steps down to crash consistency and records why, unless the required
// level forbids it: then it returns ErrConsistency before touching the
// guest. agent may be nil when the VM has no guest agent.
func Quiesce(ctx context.Context, agent FreezeAgent, plan FreezePlan, opts QuiesceOptions, capture func(context.Context) error) (QuiesceResult, error) {
	if err := opts.defaults(); err != nil {
		return QuiesceResult{}, err
	}
	log := opts.Logger.With("component", "quiesce")
	res := QuiesceResult{Achieved: opts.Desire}
	if opts.Desire == Application {
		res.StepDown = precheck(ctx, agent, plan, opts)
		if res.StepDown != "" {
			res.Achieved = Crash
			if opts.Require == Application {
				return res, fmt.Errorf("%w: %s", ErrConsistency, res.StepDown)
			}
			log.Warn("stepping down to crash consistency", "reason", res.StepDown)
		}
	}

	stepCtx, cancel := context.WithTimeout(ctx, opts.Deadline)
	defer cancel()
	if res.Achieved == Application {
		start := time.Now()
		_, err := agent.FreezeList(stepCtx, plan.Mountpoints)
		res.FreezeCall = time.Since(start)
		if err != nil {
			// The agent may have frozen some file systems before failing
			// or timing out: thaw before anything else.
			thawTook, thawErr := thaw(agent, opts)
			res.Window = time.Since(start)
			res.ThawCall = thawTook
			if thawErr != nil {
				go watchdog(agent, opts)
				return res, fmt.Errorf("%w after a failed freeze (%v): %w", ErrThaw, err, thawErr)
			}
			res.Achieved, res.StepDown = Crash, "freeze failed: "+err.Error()
			if opts.Require == Application {
				return res, fmt.Errorf("%w: %s", ErrConsistency, res.StepDown)
			}
			log.Warn("freeze failed; stepping down to crash consistency", "err", err)
		} else {
			res.Frozen, res.Reasons = plan.Mountpoints, plan.Reasons
			capStart := time.Now()
			capErr := capture(stepCtx)
			res.Capture = time.Since(capStart)
			thawTook, thawErr := thaw(agent, opts)
			res.ThawCall = thawTook
			res.Window = time.Since(start)
			if thawErr != nil {
				go watchdog(agent, opts)
				return res, errors.Join(fmt.Errorf("%w: %w", ErrThaw, thawErr), capErr)
			}
			if capErr != nil {
				return res, fmt.Errorf("hypervisor: capture with the guest frozen: %w", capErr)
			}
			log.Debug("quiesced capture", "frozen", plan.Mountpoints, "window", res.Window, "freeze", res.FreezeCall, "capture", res.Capture, "thaw", res.ThawCall)
			return res, nil
		}
	}
	capStart := time.Now()
	err := capture(stepCtx)
	res.Capture = time.Since(capStart)
	if err != nil {
		return res, fmt.Errorf("hypervisor: capture: %w", err)
	}
	return res, nil
}

// precheck returns why application consistency cannot be tried, or "".
func precheck(ctx context.Context, agent FreezeAgent, plan FreezePlan, opts QuiesceOptions) string {
	switch {
	case !opts.FreezeEnabled:
		return "freezing is turned off for this VM"
	case agent == nil:
		return "the VM has no guest agent"
	}
	pctx, cancel := context.WithTimeout(ctx, opts.AgentTimeout)
	defer cancel()
	if err := agent.Ping(pctx); err != nil {
		return "guest agent not responding: " + err.Error()
	}
	if st, err := agent.FreezeStatus(pctx); err != nil {
		return "guest agent not responding: " + err.Error()
	} else if st == guestagent.Frozen {
		return "the guest's file systems are already frozen by someone else"
	}
	if len(plan.Mountpoints) == 0 {
		if len(plan.Unmapped) > 0 {
			return "no guest file system found on the selected volumes (" + strings.Join(plan.Unmapped, ", ") + ")"
		}
		return "no guest file system found on the selected volumes"
	}
	return ""
}

// thaw thaws on a fresh context, retrying within opts.ThawTimeout, and
// confirms that the guest reports thawed. It returns the time of the first
// thaw call.
func thaw(agent FreezeAgent, opts QuiesceOptions) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), opts.ThawTimeout)
	defer cancel()
	var first time.Duration
	var errs []error
	for attempt := 0; ; attempt++ {
		start := time.Now()
		_, err := agent.Thaw(ctx)
		if errors.Is(err, guestagent.ErrClosed) && opts.Redial != nil {
			if fresh, derr := opts.Redial(ctx); derr == nil {
				defer func() { _ = fresh.Close() }()
				agent = fresh
				_, err = agent.Thaw(ctx)
			} else {
				err = errors.Join(err, derr)
			}
		}
		if attempt == 0 {
			first = time.Since(start)
		}
		if err == nil {
			var st guestagent.FreezeStatus
			st, err = agent.FreezeStatus(ctx)
			if err == nil && st != guestagent.Thawed {
				err = fmt.Errorf("guest still reports %q after thaw", st)
			}
		}
		if err == nil {
			return first, nil
		}
		errs = append(errs, err)
		opts.Logger.Error("thaw attempt failed", "component", "quiesce", "attempt", attempt+1, "err", err)
		select {
		case <-ctx.Done():
			return first, errors.Join(errs...)
		case <-time.After(time.Duration(attempt+1) * 50 * time.Millisecond):
		}
	}
}

// watchdog keeps checking a guest whose thaw could not be confirmed until
// the agent answers a freeze-status query (the agent runs one command at a
// time, so an answer means a hung freeze has finished), thaws it if it is
// frozen, and gives up after opts.WatchFor.
func watchdog(agent FreezeAgent, opts QuiesceOptions) {
	log := opts.Logger.With("component", "quiesce")
	deadline := time.Now().Add(opts.WatchFor)
	var fresh AgentConn
	defer func() {
		if fresh != nil {
			_ = fresh.Close()
		}
	}()
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), opts.ThawTimeout)
		thawed, err := ThawIfFrozen(ctx, agent)
		if errors.Is(err, guestagent.ErrClosed) && opts.Redial != nil {
			if fresh != nil {
				_ = fresh.Close()
				fresh = nil
			}
			if c, derr := opts.Redial(ctx); derr == nil {
				fresh, agent = c, c
				thawed, err = ThawIfFrozen(ctx, agent)
			}
		}
		cancel()
		if err == nil {
			if thawed {
				log.Warn("watchdog thawed a guest whose freeze completed late")
			}
			return
		}
		time.Sleep(time.Second)
	}
	log.Error("watchdog gave up: the guest may still be frozen", "after", opts.WatchFor)
}

// ThawIfFrozen thaws the guest if it reports frozen file systems. A daemon
// calls it at start-up for every local guest: no capture can be in progress
// then, so a frozen guest was left so by a capture that died.
func ThawIfFrozen(ctx context.Context, agent FreezeAgent) (bool, error) {
	st, err := agent.FreezeStatus(ctx)
	if err != nil {
		return false, fmt.Errorf("hypervisor: freeze status: %w", err)
	}
	if st != guestagent.Frozen {
		return false, nil
	}
	if _, err := agent.Thaw(ctx); err != nil {
		return true, fmt.Errorf("%w: %w", ErrThaw, err)
	}
	if st, err := agent.FreezeStatus(ctx); err != nil || st != guestagent.Thawed {
		return true, fmt.Errorf("%w: status after thaw %q: %v", ErrThaw, st, err)
	}
	return true, nil
}
