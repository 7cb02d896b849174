package snapshot

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/cluster/command"
	"github.com/twinsnap/twinsnap/cluster/state"
	"github.com/twinsnap/twinsnap/volumes"
)

const (
	mib = int64(1) << 20
	// waitLimit bounds every wait of the engine tests; generous, for a
	// loaded machine under the race detector.
	waitLimit = 45 * time.Second
	// containerCapacity is every volume container's capacity.
	containerCapacity = 1 << 30
	testVM            = "vm-1"
)

// needQEMUTools fails the test in CI and skips it elsewhere when qemu-img
// or qemu-io is missing: nothing is skipped silently where it must run.
func needQEMUTools(t *testing.T) {
	t.Helper()
	for _, name := range []string{"qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(name); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is required in CI (install qemu-utils): %v", name, err)
			}
			t.Skipf("%s not installed (qemu-utils): %v", name, err)
		}
	}
}

// logBuffer collects the log lines of a test system; the test prints them
// when it fails.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// lines returns the logged lines that contain every one of parts.
func (l *logBuffer) lines(parts ...string) []string {
	var out []string
	for _, line := range strings.Split(l.String(), "\n") {
		if !slices.ContainsFunc(parts, func(p string) bool { return !strings.Contains(line, p) }) {
			out = append(out, line)
		}
	}
	return out
}

// sysOptions configures a test system.
type sysOptions struct {
	// volumes of the VM; default vol-boot (boot) and vol-data, 16 MiB
	// qcow2 each.
	volumes []command.Volume
	// writeLen is what the guest writes per volume before each capture;
	// default 1 MiB.
	writeLen int64
	// uefi gives the VM a UEFI variable store.
	uefi bool
	// stopped leaves the engines not running (their receivers run).
	stopped bool
}

// testSystem is two data nodes (node-a hosts the VM and coordinates its
// snapshots, node-b is its peer) on one fake raft with a real state, each
// with a real volume store, a real engine and a real receiver on loopback.
type testSystem struct {
	t    *testing.T
	raft *fakeRaft
	a, b *testNode
	vm   command.VM
	logs *logBuffer
}

// testNode is one data node; its engine and receiver can be stopped and
// started again on the same directories and address, as a daemon restart.
type testNode struct {
	sys   *testSystem
	id    string
	dir   string // the engine's Dir
	root  string // the volume store's root
	cl    *fakeCluster
	hv    *fakeHypervisor
	dial  *hookDialer
	addr  string // the receiver's address, kept across restarts
	log   *slog.Logger
	store *volumes.Store

	mu        sync.Mutex
	eng       *Engine
	cancelEng context.CancelFunc
	engDone   chan struct{}
	stopRecv  func()
}

// newSystem builds and starts a test system; t's cleanup stops it.
func newSystem(t *testing.T, o sysOptions) *testSystem {
	t.Helper()
	needQEMUTools(t)
	if o.writeLen == 0 {
		o.writeLen = mib
	}
	if o.volumes == nil {
		o.volumes = []command.Volume{
			{ID: "vol-boot", Name: "boot", Boot: true, SizeBytes: 16 * mib, Format: command.FormatQCOW2},
			{ID: "vol-data", Name: "data", SizeBytes: 16 * mib, Format: command.FormatQCOW2},
		}
	}
	logs := &logBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("engine logs:\n%s", logs.String())
		}
	})
	sys := &testSystem{t: t, raft: newFakeRaft(), logs: logs}
	base := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	tmp := t.TempDir()
	for _, id := range []string{"node-a", "node-b"} {
		n := &testNode{
			sys: sys, id: id, dir: filepath.Join(tmp, id, "snapshots"), root: filepath.Join(tmp, id, "volumes"),
			cl: &fakeCluster{raft: sys.raft, node: id}, hv: newFakeHypervisor(o.writeLen), dial: &hookDialer{},
			log: base.With("test_node", id),
		}
		n.newEngine()
		n.startReceiver()
		sys.raft.onApply(n.nudge)
		t.Cleanup(n.stop)
		if id == "node-a" {
			sys.a = n
		} else {
			sys.b = n
		}
	}
	if o.uefi {
		vars := filepath.Join(tmp, "OVMF_VARS.fd")
		if err := os.WriteFile(vars, bytes.Repeat([]byte("uefi-variables\x00"), 8192), 0o600); err != nil {
			t.Fatalf("writing the UEFI variables: %v", err)
		}
		sys.a.hv.uefiVars = vars
	}
	sys.vm = command.VM{
		ID: testVM, Name: "test vm", HostNode: "node-a", Driver: command.DriverQEMU,
		QEMU:    &command.QEMUConnection{QMPSocket: "/run/twinsnap-test/qmp.sock", AgentSocket: "/run/twinsnap-test/qga.sock"},
		Volumes: o.volumes, FreezeEnabled: true, FreezeTimeout: 5 * time.Second,
	}
	enabled := true
	for i, n := range []*testNode{sys.a, sys.b} {
		sys.apply(&command.NodeAdded{Node: command.Node{
			ID: n.id, Role: command.RoleData, DataAddress: n.addr,
			RaftAddress: fmt.Sprintf("127.0.0.%d:7000", i+1), APIAddress: fmt.Sprintf("127.0.0.%d:7001", i+1),
		}})
	}
	sys.apply(&command.NodeAdded{Node: command.Node{ID: "w", Role: command.RoleWitness, RaftAddress: "127.0.0.3:7000", APIAddress: "127.0.0.3:7001"}})
	sys.apply(&command.SettingsSet{SnapshotsEnabled: &enabled})
	sys.apply(&command.VMRegistered{VM: sys.vm})
	for _, v := range o.volumes {
		for _, n := range []string{"node-a", "node-b"} {
			sys.apply(&command.ContainerCreated{VolumeID: v.ID, Node: n, CapacityBytes: containerCapacity})
		}
	}
	if !o.stopped {
		sys.a.startEngine()
		sys.b.startEngine()
	}
	return sys
}

// apply proposes cmd as the leader and fails the test unless the state
// machine accepts it.
func (s *testSystem) apply(cmd command.Command) {
	s.t.Helper()
	applyOK(s.t, s.raft, cmd)
}

// applyOK proposes cmd to r as the leader and fails t unless the state
// machine accepts it.
func applyOK(t testing.TB, r *fakeRaft, cmd command.Command) {
	t.Helper()
	res, err := r.apply("", cmd)
	if err == nil {
		err = res.Err
	}
	if err != nil {
		t.Fatalf("apply %s: %v", cmd.Type(), err)
	}
}

// newEngine makes the node's engine (a new one: an empty memory, the same
// directories) on a reopened store.
func (n *testNode) newEngine() {
	t := n.sys.t
	t.Helper()
	store, err := volumes.OpenStore(n.root)
	if err != nil {
		t.Fatalf("%s: opening the store: %v", n.id, err)
	}
	eng, err := New(Config{
		Node: n.id, Dir: n.dir, Store: store, Cluster: n.cl, Hypervisor: n.hv,
		NewSender: func(addr string) *Sender {
			s := NewSender(n.dial, addr)
			s.ChunkSize = 256 << 10
			s.IOTimeout = 15 * time.Second
			return s
		},
		Containers: func(volumeID string) (int64, bool) {
			ct, err := n.sys.raft.st.Container(volumeID, n.id)
			return ct.CapacityBytes, err == nil
		},
		Interval: 50 * time.Millisecond,
		Logger:   n.log,
	})
	if err != nil {
		t.Fatalf("%s: new engine: %v", n.id, err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.eng, n.store = eng, store
}

// engine returns the node's current engine.
func (n *testNode) engine() *Engine {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.eng
}

// nudge wakes the node's engine, as the daemon does whenever the state
// moves.
func (n *testNode) nudge() {
	if e := n.engine(); e != nil {
		e.Nudge()
	}
}

// startEngine runs the node's engine until stopEngine or kill.
func (n *testNode) startEngine() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	n.mu.Lock()
	eng := n.eng
	n.cancelEng, n.engDone = cancel, done
	n.mu.Unlock()
	go func() {
		defer close(done)
		eng.Run(ctx)
	}()
}

// kill cancels the engine's context without waiting for it to stop: safe
// to call from inside one of its steps, as the process dying.
func (n *testNode) kill() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cancelEng != nil {
		n.cancelEng()
	}
}

// stopEngine stops the engine and waits for its steps to end.
func (n *testNode) stopEngine() {
	n.mu.Lock()
	cancel, done := n.cancelEng, n.engDone
	n.cancelEng, n.engDone = nil, nil
	n.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

// startReceiver serves the node's data port with its current engine as
// the destination, on the node's address (a new one the first time).
// Should the address be taken meanwhile (a closed listener's port can
// become another connection's local port), the port moves and the state
// learns the node's new data address.
func (n *testNode) startReceiver() {
	t := n.sys.t
	t.Helper()
	var ln net.Listener
	err := errors.New("no address yet")
	for deadline := time.Now().Add(2 * time.Second); n.addr != "" && err != nil && time.Now().Before(deadline); {
		if ln, err = net.Listen("tcp", n.addr); err != nil {
			time.Sleep(50 * time.Millisecond)
		}
	}
	if err != nil {
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatalf("%s: listen: %v", n.id, err)
		}
		if n.addr != "" {
			t.Logf("%s: %s is taken; the data port moves to %s", n.id, n.addr, ln.Addr())
			node, err := n.sys.raft.st.Node(n.id)
			if err != nil {
				t.Fatalf("%s: %v", n.id, err)
			}
			node.DataAddress = ln.Addr().String()
			n.sys.apply(&command.NodeUpdated{Node: node.Node})
		}
	}
	n.addr = ln.Addr().String()
	eng := n.engine()
	r := NewReceiver(eng)
	r.Received = eng.Received
	r.IdleTimeout = 15 * time.Second
	r.SyncEvery = 1 << 20 // small images still resume from a recorded offset
	r.Logger = n.log
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = r.Serve(ctx, ln)
	}()
	n.mu.Lock()
	defer n.mu.Unlock()
	n.stopRecv = func() { cancel(); <-done }
}

// stopReceiver closes the data port and ends its transfers (their partial
// files stay).
func (n *testNode) stopReceiver() {
	n.mu.Lock()
	stop := n.stopRecv
	n.stopRecv = nil
	n.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// stop stops the receiver and the engine.
func (n *testNode) stop() {
	n.stopReceiver()
	n.stopEngine()
}

// restart stops the node and starts it again with a new engine, as a
// daemon restart.
func (n *testNode) restart() {
	n.stop()
	n.newEngine()
	n.startReceiver()
	n.startEngine()
}

// imagePath is the node's image of a snapshot's volume.
func (n *testNode) imagePath(snapshotID, volumeID string) string {
	return filepath.Join(n.root, volumeID, "images", snapshotID+".qcow2")
}

// files lists, relative to dir, every file under dir but the volume
// containers' metadata.
func files(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) && p == dir {
			return filepath.SkipDir
		}
		if err != nil || d.IsDir() || d.Name() == "container.json" {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out = append(out, rel)
		return nil
	})
	if err != nil {
		t.Fatalf("walking %s: %v", dir, err)
	}
	return out
}

// snapshot plans a snapshot of the VM on node-a with req (VM and term
// filled in) and proposes it as the leader; it returns the command.
func (s *testSystem) snapshot(req PlanRequest) *command.SnapshotCreated {
	s.t.Helper()
	vm, err := s.raft.st.VM(testVM)
	if err != nil {
		s.t.Fatalf("VM: %v", err)
	}
	req.VM, req.Term = vm.VM, s.raft.currentTerm()
	if req.Desired == "" {
		req.Desired, req.Required = command.ConsistencyApplication, command.ConsistencyCrash
	}
	if req.Creator == "" {
		req.Creator = "admin"
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	cmd, err := s.a.engine().Plan(ctx, req)
	if err != nil {
		s.t.Fatalf("plan: %v", err)
	}
	s.apply(cmd)
	return cmd
}

// waitFor polls cond until it holds, failing the test after waitLimit.
func (s *testSystem) waitFor(what string, cond func() bool) {
	s.t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			s.t.Fatalf("gave up waiting for %s after %v", what, waitLimit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitState waits until snapshot id is in state want and returns it.
func (s *testSystem) waitState(id string, want state.SnapshotState) state.Snapshot {
	s.t.Helper()
	var sn state.Snapshot
	s.waitFor("snapshot "+id+" to be "+string(want), func() bool {
		var err error
		sn, err = s.raft.st.Snapshot(id)
		return err == nil && sn.State == want
	})
	return sn
}

// waitGone waits until the state no longer holds snapshot id.
func (s *testSystem) waitGone(id string) {
	s.t.Helper()
	s.waitFor("snapshot "+id+" to be gone", func() bool {
		_, err := s.raft.st.Snapshot(id)
		return errors.Is(err, state.ErrNotFound)
	})
}

// transitions returns "type→state" for each accepted entry naming
// snapshot id. Refused ones are left out: an engine acting on a list of
// snapshots read a moment before a change may propose what the state
// machine then refuses, harmlessly.
func (s *testSystem) transitions(id string) []string {
	var out []string
	for _, e := range s.raft.entries(id) {
		switch {
		case e.Err != nil:
		case e.Gone:
			out = append(out, e.Cmd.Type().String()+"→gone")
		default:
			out = append(out, e.Cmd.Type().String()+"→"+string(e.Snapshot.State))
		}
	}
	return out
}

// refusals returns the refused entries naming snapshot id.
func (s *testSystem) refusals(id string) []applied {
	var out []applied
	for _, e := range s.raft.entries(id) {
		if e.Err != nil {
			out = append(out, e)
		}
	}
	return out
}

// fileSHA256 returns the hex SHA-256 of a file's bytes.
func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading %s: %v", path, err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// checkReplicas asserts that both nodes hold byte-identical images of a
// complete snapshot whose SHA-256 is the state's, with verified replica
// records saying so, and the same UEFI variables when it has them.
func (s *testSystem) checkReplicas(id string) {
	t := s.t
	t.Helper()
	sn, err := s.raft.st.Snapshot(id)
	if err != nil {
		t.Fatalf("snapshot %s: %v", id, err)
	}
	for _, v := range sn.Volumes {
		if v.SHA256 == "" {
			t.Fatalf("snapshot %s volume %s: no SHA-256 in the state", id, v.VolumeID)
		}
		for _, n := range []*testNode{s.a, s.b} {
			if got := fileSHA256(t, n.imagePath(id, v.VolumeID)); got != v.SHA256 {
				t.Fatalf("snapshot %s volume %s on %s: sha256 %s, want the state's %s", id, v.VolumeID, n.id, got, v.SHA256)
			}
			rep, ok := sn.Replica(n.id)
			if !ok || !rep.Verified {
				t.Fatalf("snapshot %s: replica on %s = %+v, %v; want a verified one", id, n.id, rep, ok)
			}
			i := slices.IndexFunc(rep.Volumes, func(d command.VolumeData) bool { return d.VolumeID == v.VolumeID })
			if i < 0 || rep.Volumes[i].SHA256 != v.SHA256 {
				t.Fatalf("snapshot %s: replica on %s records %+v, want sha256 %s for %s", id, n.id, rep.Volumes, v.SHA256, v.VolumeID)
			}
		}
	}
	if sn.Captured != nil && sn.Captured.UEFIVars != nil {
		for _, n := range []*testNode{s.a, s.b} {
			p := n.engine().UEFIVarsPath(id)
			if got := fileSHA256(t, p); got != sn.Captured.UEFIVars.SHA256 {
				t.Fatalf("UEFI variables of %s on %s: sha256 %s, want %s", id, n.id, got, sn.Captured.UEFIVars.SHA256)
			}
		}
	}
}

// checkNoFiles asserts that neither node keeps a file of any snapshot:
// no image, no partial transfer, nothing in the engine's directory.
func (s *testSystem) checkNoFiles() {
	s.t.Helper()
	for _, n := range []*testNode{s.a, s.b} {
		if got := files(s.t, n.root); len(got) != 0 {
			s.t.Fatalf("%s: files left in the store: %v", n.id, got)
		}
		if got := files(s.t, n.dir); len(got) != 0 {
			s.t.Fatalf("%s: files left in the engine's directory: %v", n.id, got)
		}
	}
}

// journalPhase reads a snapshot's journal on a node directly ("" when
// there is none).
func (n *testNode) journalPhase(id string) string {
	t := n.sys.t
	t.Helper()
	b, err := os.ReadFile(filepath.Join(n.dir, id, "journal.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return ""
	}
	if err != nil {
		t.Fatalf("%s: journal of %s: %v", n.id, id, err)
	}
	var j journal
	if err := json.Unmarshal(b, &j); err != nil {
		t.Fatalf("%s: journal of %s: %v", n.id, id, err)
	}
	return j.Phase
}

// qemuImg runs qemu-img and returns its output, failing the test on error.
func qemuImg(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("qemu-img", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// referenceDisk writes a raw image of size bytes holding what the guest
// wrote (the first n writes) and returns its path: the guest view every
// snapshot holding those writes must show.
func referenceDisk(t *testing.T, size int64, ws []guestWrite) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "reference.raw")
	f, err := os.Create(p)
	if err != nil {
		t.Fatalf("reference disk: %v", err)
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = qemuIOWrite(context.Background(), p, "raw", ws)
	}
	if err != nil {
		t.Fatalf("reference disk: %v", err)
	}
	return p
}

// sameGuestView asserts that the qcow2 image (through its chain) shows
// the guest the same disk as the raw reference.
func sameGuestView(t *testing.T, image, reference string) {
	t.Helper()
	out, err := exec.Command("qemu-img", "compare", "-f", "qcow2", "-F", "raw", image, reference).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img compare %s with the reference: %v\n%s", image, err, out)
	}
}

// backingOf returns the backing file an image records ("" for none).
func backingOf(t *testing.T, image string) string {
	t.Helper()
	var info struct {
		Backing string `json:"backing-filename"`
	}
	if err := json.Unmarshal([]byte(qemuImg(t, "info", "--output=json", "-U", image)), &info); err != nil {
		t.Fatalf("qemu-img info %s: %v", image, err)
	}
	return info.Backing
}
