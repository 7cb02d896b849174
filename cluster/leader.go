package cluster

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/raft"

	"github.com/twinsnap/twinsnap/cluster/command"
	"github.com/twinsnap/twinsnap/cluster/state"
)

// observe follows Raft's observations: leadership changes start and stop
// the leader's duties, and heartbeat failures feed the peers' health.
func (n *Node) observe() {
	defer n.wg.Done()
	for {
		select {
		case <-n.ctx.Done():
			return
		case o := <-n.obsCh:
			switch d := o.Data.(type) {
			case raft.LeaderObservation:
				n.log.Info("leader changed", "leader", string(d.LeaderID), "term", n.raft.CurrentTerm())
				n.checkLeadership()
			case raft.RaftState:
				n.checkLeadership()
			case raft.FailedHeartbeatObservation:
				n.mu.Lock()
				n.failedPeers[string(d.PeerID)] = d.LastContact
				n.mu.Unlock()
			case raft.ResumedHeartbeatObservation:
				n.mu.Lock()
				delete(n.failedPeers, string(d.PeerID))
				n.mu.Unlock()
			}
		}
	}
}

// checkLeadership starts the leader's duties once per term in which this
// node leads, and stops them when it no longer does.
func (n *Node) checkLeadership() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return
	}
	if n.raft.State() != raft.Leader {
		if n.leaderStop != nil {
			n.leaderStop()
			n.leaderStop = nil
		}
		n.failedPeers = map[string]time.Time{}
		return
	}
	term := n.raft.CurrentTerm()
	if n.leaderStop != nil && n.leaderTerm == term {
		return
	}
	if n.leaderStop != nil {
		n.leaderStop()
	}
	ctx, cancel := context.WithCancel(n.ctx)
	n.leaderStop, n.leaderTerm = cancel, term
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		n.lead(ctx, term)
	}()
}

// lead runs the duties of a new leader for one term: wait until the state
// holds every committed entry, fence the coordinators of earlier terms by
// discarding their half-written snapshots, and, on the witness, hand
// leadership to a healthy data node.
func (n *Node) lead(ctx context.Context, term uint64) {
	n.log.Info("leading", "term", term)
	for {
		err := n.raft.Barrier(5 * time.Second).Error()
		if err == nil {
			break
		}
		n.log.Warn("barrier as new leader failed", "term", term, "err", err)
		if !sleep(ctx, 200*time.Millisecond) {
			return
		}
	}
	for {
		err := n.discardIncomplete(ctx, term)
		if err == nil {
			break
		}
		n.log.Warn("discard-incomplete failed", "term", term, "err", err)
		if !sleep(ctx, 500*time.Millisecond) {
			return
		}
	}
	if n.cfg.Role == command.RoleWitness {
		n.handOver(ctx)
	}
}

// discardIncomplete proposes discard-incomplete for the given term.
func (n *Node) discardIncomplete(ctx context.Context, term uint64) error {
	cctx, cancel := context.WithTimeout(ctx, n.cfg.ApplyTimeout)
	defer cancel()
	res, err := n.applyLocalCmd(cctx, &command.DiscardIncomplete{
		Term:   term,
		Reason: "new leader " + n.cfg.ID,
		At:     n.cfg.Clock().UTC(),
	})
	if err != nil {
		return err
	}
	if res.Err != nil {
		return res.Err
	}
	if len(res.Affected) > 0 {
		n.log.Info("discarded half-written snapshots of earlier terms", "term", term, "snapshots", res.Affected)
	}
	return nil
}

// applyLocalCmd encodes and applies a command on this node, the leader.
func (n *Node) applyLocalCmd(ctx context.Context, cmd command.Command) (state.Result, error) {
	data, err := command.Encode(cmd)
	if err != nil {
		return state.Result{}, fmt.Errorf("cluster: %s: %w", cmd.Type(), err)
	}
	return n.applyLocal(ctx, data)
}

// handOver moves leadership from the witness to a healthy data node. It
// retries while the witness still leads: a witness keeps the cluster
// writable when a data node is lost, but never coordinates for long.
func (n *Node) handOver(ctx context.Context) {
	for {
		target, addr := n.healthyDataNode()
		if target != "" {
			n.log.Info("witness hands leadership over", "to", target)
			err := n.raft.LeadershipTransferToServer(raft.ServerID(target), raft.ServerAddress(addr)).Error()
			if err == nil {
				return
			}
			n.log.Warn("leadership transfer failed", "to", target, "err", err)
		}
		if !sleep(ctx, time.Second) {
			return
		}
	}
}

// healthyDataNode returns a voter that is a data node and whose heartbeats
// succeed, preferring the one with the lowest id for determinism.
func (n *Node) healthyDataNode() (id, addr string) {
	servers, err := n.Servers()
	if err != nil {
		return "", ""
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, s := range servers {
		if s.ID == n.cfg.ID {
			continue
		}
		if _, failed := n.failedPeers[s.ID]; failed {
			continue
		}
		node, err := n.cfg.State.Node(s.ID)
		if err != nil || node.Role != command.RoleData {
			continue
		}
		return s.ID, s.Address
	}
	return "", ""
}

// sleep waits d or until ctx ends; it reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
