package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"time"

	"github.com/twinsnap/twinsnap/cluster/command"
	"github.com/twinsnap/twinsnap/cluster/pki"
	"github.com/twinsnap/twinsnap/cluster/state"
	"github.com/twinsnap/twinsnap/snapshot"
	"github.com/twinsnap/twinsnap/volumes"
)

// storageDir is where a data node keeps its volume containers.
func (c *Config) storageDir() string {
	if c.Storage != "" {
		return c.Storage
	}
	return filepath.Join(c.DataDir, "volumes")
}

// snapshotsDir holds the snapshot engine's journals and UEFI variables.
func (c *Config) snapshotsDir() string { return filepath.Join(c.DataDir, "snapshots") }

// vmsDir holds the images of VMs created from snapshots.
func (c *Config) vmsDir() string { return filepath.Join(c.DataDir, "vms") }

// startSnapshots opens the volume store, the snapshot engine and the data
// port of a data node: the port takes images from the peer over mutual
// TLS (node certificates only), the engine drives every snapshot this node
// has a part in.
func (d *Daemon) startSnapshots(ctx context.Context) error {
	if d.cfg.Role != command.RoleData {
		return nil
	}
	store, err := volumes.OpenStore(d.cfg.storageDir())
	if err != nil {
		return fmt.Errorf("volume store: %w", err)
	}
	d.store = store
	d.engine, err = snapshot.New(snapshot.Config{
		Node:       d.cfg.ID,
		Dir:        d.cfg.snapshotsDir(),
		Store:      store,
		Cluster:    engineCluster{d},
		Hypervisor: &vmAccess{d: d},
		NewSender: func(addr string) *snapshot.Sender {
			return snapshot.NewSender(&tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: pki.ClientConfig(d.bundle, pki.RoleNode, "")}, addr)
		},
		Containers: func(volumeID string) (int64, bool) {
			ct, err := d.st.Container(volumeID, d.cfg.ID)
			return ct.CapacityBytes, err == nil
		},
		Interval: time.Second,
		Logger:   d.log,
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", d.cfg.Listen.Data)
	if err != nil {
		return fmt.Errorf("data listener: %w", err)
	}
	d.dataLn = tls.NewListener(ln, pki.ServerConfig(d.bundle, pki.RoleNode))
	recv := snapshot.NewReceiver(d.engine)
	recv.Received = d.engine.Received
	recv.Logger = d.log
	d.wg.Add(3)
	go func() {
		defer d.wg.Done()
		if err := recv.Serve(ctx, d.dataLn); err != nil && ctx.Err() == nil {
			d.log.Error("data port stopped", "err", err)
		}
	}()
	go func() {
		defer d.wg.Done()
		// Wait until the state is current before acting on it.
		if !d.waitCaughtUp(ctx) {
			return
		}
		d.engine.Run(ctx)
	}()
	go func() {
		defer d.wg.Done()
		d.nudgeOnApply(ctx)
	}()
	return nil
}

// waitCaughtUp waits until this node knows a leader and has applied what
// it knows to be committed.
func (d *Daemon) waitCaughtUp(ctx context.Context) bool {
	for {
		st := d.node.Status()
		if st.LeaderID != "" && st.AppliedIndex >= st.CommitIndex && st.CommitIndex > 0 {
			return true
		}
		if !sleep(ctx, 200*time.Millisecond) {
			return false
		}
	}
}

// nudgeOnApply wakes the engine whenever the state moves.
func (d *Daemon) nudgeOnApply(ctx context.Context) {
	var last uint64
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if i, _ := d.st.AppliedIndex(); i != last {
			last = i
			d.engine.Nudge()
		}
	}
}

// engineCluster is the snapshot engine's view of the cluster.
type engineCluster struct{ d *Daemon }

var _ snapshot.Cluster = engineCluster{}

// Propose implements snapshot.Cluster.
func (c engineCluster) Propose(ctx context.Context, cmd command.Command) error {
	res, err := c.d.node.Propose(ctx, cmd)
	if err != nil {
		return err
	}
	if res.Err != nil {
		return &snapshot.Refusal{Err: res.Err}
	}
	// Read-your-writes for the engine's next look at the state.
	return c.d.waitApplied(ctx, res.Index)
}

// Snapshots implements snapshot.Cluster.
func (c engineCluster) Snapshots() []snapshot.Record {
	snaps := c.d.st.Snapshots(state.SnapshotFilter{})
	out := make([]snapshot.Record, 0, len(snaps))
	for _, sn := range snaps {
		out = append(out, recordOf(c.d.st, sn))
	}
	return out
}

// Peer implements snapshot.Cluster.
func (c engineCluster) Peer() (string, string, bool) {
	for _, n := range c.d.st.Nodes() {
		if n.Role == command.RoleData && n.ID != c.d.cfg.ID {
			return n.ID, n.DataAddress, n.DataAddress != ""
		}
	}
	return "", "", false
}

// recordOf converts a snapshot of the state for the engine. The VM is the
// current record when the VM is still registered (its connection details
// may have changed), else the snapshot's copy.
func recordOf(st *state.State, sn state.Snapshot) snapshot.Record {
	vm := sn.Config
	if cur, err := st.VM(sn.VMID); err == nil {
		vm = cur.VM
	}
	r := snapshot.Record{
		ID: sn.ID, VM: vm, State: string(sn.State), Coordinator: sn.Coordinator, Term: sn.Term,
		Desired: sn.Desired, Required: sn.Required, Reclaim: sn.Reclaim, CreatedIndex: sn.CreatedIndex,
	}
	if sn.Captured != nil {
		r.UEFIVars = sn.Captured.UEFIVars
	}
	for _, v := range sn.Volumes {
		r.Volumes = append(r.Volumes, snapshot.RecordVolume{
			VolumeID: v.VolumeID, ParentID: v.ParentID, SizeBytes: v.SizeBytes, StoredBytes: v.StoredBytes, SHA256: v.SHA256,
		})
	}
	for _, rep := range sn.Replicas {
		r.Replicas = append(r.Replicas, snapshot.RecordReplica{Node: rep.Node, Verified: rep.Verified, Volumes: rep.Volumes})
	}
	return r
}

// errNoEngine is returned by snapshot calls on a witness.
var errNoEngine = errors.New("this node stores no snapshot data (a witness)")
