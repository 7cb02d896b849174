// Command demo walks through twinsnap on this one machine, for `make
// demo`: it builds twinsnap, starts a three-process cluster on loopback
// (two data nodes and a witness), boots a test guest under TCG with two
// data volumes, and then, through the real admin CLI (each command is
// printed before it runs), enables snapshots, registers the guest, takes an
// application-consistent snapshot of one data volume, lists and shows it,
// and creates a new VM from it. It checks the new VM from the inside (its
// guest agent answers, its MAC address differs, the file written before
// the snapshot is there) and prints a summary with the figures. Everything
// it started is stopped and its temporary directory removed at the end,
// also after a failure or Ctrl-C.
//
// Then it exports the snapshot to a private Samba share (encrypted) as an
// OVF package with qcow2 disks, imports the package as another VM, and
// checks that one from the inside too.
package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/twinsnap/twinsnap/guestagent"
	"github.com/twinsnap/twinsnap/internal/api"
	"github.com/twinsnap/twinsnap/internal/testenv"
)

// The names the demo uses.
const (
	vmName   = "guest"
	copyName = "guest-copy"
	// markerPath is the file the guest writes before the snapshot, on the
	// snapshotted volume.
	markerPath = "/mnt/data1/demo-marker.txt"
)

func main() {
	sigCtx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(sigCtx, 20*time.Minute)
	err := run(ctx)
	interrupted := sigCtx.Err() != nil
	cancel()
	stop()
	switch {
	case interrupted:
		fmt.Fprintln(os.Stderr, "demo interrupted; everything it started has been stopped")
		os.Exit(130)
	case err != nil:
		fmt.Fprintf(os.Stderr, "demo failed: %v\n", err)
		os.Exit(1)
	}
}

// step prints the heading of a step.
func step(format string, args ...any) {
	fmt.Printf("\n==> "+format+"\n", args...)
}

// detail prints an indented line under a step.
func detail(format string, args ...any) {
	fmt.Printf("    "+format+"\n", args...)
}

// demo is the running demo's state.
type demo struct {
	c *testenv.Cluster
	// cl is an API client for checks the CLI output does not show.
	cl *api.Client
	// node is the node whose API the CLI calls: the witness, which
	// forwards writes to the leader and VM work to the VM's host.
	node string
}

// figures are what the summary reports.
type figures struct {
	guestBoot    time.Duration
	snapshotCLI  time.Duration // snapshot create --wait, as the CLI ran
	snapshot     *api.Snapshot
	replicated   int64 // bytes of the peer's replica
	freezeWindow string
	copyCLI      time.Duration // vm create-from-snapshot, as the CLI ran
	copyServer   string        // the node's own figure ("Took" in the CLI's table)
	exportTime   time.Duration // snapshot export --wait
	exportBytes  int64         // package bytes on the share
	importTime   time.Duration // import --wait (read, verify, boot, register)
}

// run does the demo; its deferred cleanups run on every path.
func run(ctx context.Context) error {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	t0 := time.Now()
	var fig figures

	dir, err := os.MkdirTemp("", "tsn-demo-")
	if err != nil {
		return fmt.Errorf("temp dir: %w", err)
	}
	// Cleanups run last to first when run returns, whatever happened.
	var cleanups []func()
	defer func() {
		step("cleaning up: the VMs, the cluster's processes, %s", dir)
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
		if err := os.RemoveAll(dir); err != nil {
			fmt.Fprintf(os.Stderr, "removing %s: %v\n", dir, err)
		}
	}()

	step("building the test guest (Debian kernel, busybox, the real qemu-ga); cached after the first run")
	img, err := testenv.BuildGuestImage(ctx)
	if err != nil {
		return err
	}
	detail("guest %s, kernel %s (%.1fs)", img.Key, img.KernelVersion, time.Since(t0).Seconds())

	step("building twinsnapd and twinsnap, and starting a cluster of three processes on loopback: data-a, data-b (data nodes) and a witness")
	t1 := time.Now()
	// Raft's timeouts are raised from the daemons' defaults: on a busy
	// machine the defaults let leadership change hands, and a leader
	// change discards the snapshot being captured.
	c, err := testenv.LaunchCluster(ctx, filepath.Join(dir, "cluster"), testenv.ClusterOptions{
		Raft: testenv.RaftTiming{Heartbeat: 2 * time.Second, Election: 2 * time.Second, LeaderLease: time.Second},
	})
	if err != nil {
		return err
	}
	cleanups = append(cleanups, c.Close) // also stops the VM a node starts from the snapshot
	leader, err := c.WaitLeader(ctx, "")
	if err != nil {
		return err
	}
	for _, id := range []string{testenv.DataA, testenv.DataB, testenv.Witness} {
		n := c.Nodes[id]
		detail("%-8s %-7s API %s, Raft %s, dir %s", id, n.Role, n.APIAddr, n.RaftAddr, n.Dir)
	}
	detail("leader %s, elected %.1fs after the build started", leader, time.Since(t1).Seconds())
	cl, err := c.NewClient()
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() { cl.Close() })
	d := &demo{c: c, cl: cl, node: testenv.Witness}

	step("booting the guest under TCG on data-a: a boot volume and two ext4 data volumes (data1, data2)")
	t2 := time.Now()
	vmDir := filepath.Join(dir, "vm")
	if err := os.Mkdir(vmDir, 0o755); err != nil {
		return fmt.Errorf("the guest's directory: %w", err)
	}
	vm, err := testenv.LaunchVM(ctx, img, vmDir, testenv.VMOptions{
		Name:      "demo-guest",
		DataDisks: []testenv.DiskSpec{{Serial: "data1", SizeMiB: 256}, {Serial: "data2", SizeMiB: 128}},
	})
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() {
		if err := vm.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "stopping the guest: %v\n", err)
		}
	})
	fig.guestBoot = time.Since(t2)
	detail("QEMU pid %d, MAC %s; the guest agent answered after %.1fs", vm.Pid(), vm.MAC, fig.guestBoot.Seconds())

	step("the admin CLI from here on; every command runs as:")
	detail("twinsnap --server %s --tls-dir %s COMMAND...", c.Nodes[d.node].APIAddr, c.AdminDir)
	detail("(the %s's API: it forwards writes to the leader and VM work to the VM's host)", d.node)
	if _, err := d.cli(ctx, "cluster", "status"); err != nil {
		return err
	}
	if _, err := d.cli(ctx, "settings", "snapshots", "enable"); err != nil {
		return err
	}
	if _, err := d.cli(ctx, "vm", "register", vmName, "--host", testenv.DataA,
		"--qmp-socket", vm.QMPSocket, "--agent-socket", vm.AgentSocket); err != nil {
		return err
	}

	step("writing a marker file in the guest, through its agent: %s", markerPath)
	marker := fmt.Sprintf("written by the demo at %s, before the snapshot", time.Now().Format(time.RFC3339))
	if _, err := guestShell(ctx, vm.Agent, fmt.Sprintf("echo '%s' > %s && sync", marker, markerPath)); err != nil {
		return err
	}
	detail("%q", marker)

	step("an application-consistent snapshot of data1 (the boot volume is always included): frozen through the agent, copied by one QMP transaction, replicated to data-b")
	t3 := time.Now()
	if _, err := d.cli(ctx, "snapshot", "create", vmName, "--volumes", "data1", "--require", "application", "--wait"); err != nil {
		return err
	}
	fig.snapshotCLI = time.Since(t3)
	// The filter is applied here: api.Client sends a filtered list's
	// query string escaped into the path, which the server does not know.
	list, err := cl.Snapshots(ctx, api.SnapshotFilter{})
	if err != nil {
		return fmt.Errorf("listing snapshots: %w", err)
	}
	i := slices.IndexFunc(list.Snapshots, func(s api.Snapshot) bool { return s.VMName == vmName })
	if i < 0 {
		return errors.New("the snapshot is not listed")
	}
	sn := list.Snapshots[i]
	fig.snapshot = &sn
	for _, r := range sn.Replicas {
		if r.Node != sn.Coordinator {
			for _, v := range r.Volumes {
				fig.replicated += v.StoredBytes
			}
		}
	}
	fig.freezeWindow = freezeWindow(c.Nodes[sn.Coordinator].LogPath)
	if _, err := d.cli(ctx, "snapshot", "list"); err != nil {
		return err
	}
	if _, err := d.cli(ctx, "snapshot", "show", sn.ID); err != nil {
		return err
	}

	step("a new VM from the snapshot, on the same system: new name, UUID and MAC; started; registered")
	t4 := time.Now()
	res, err := d.cli(ctx, "vm", "create-from-snapshot", sn.ID, "--name", copyName)
	if err != nil {
		return err
	}
	fig.copyCLI = time.Since(t4)
	fig.copyServer = lastMatch(strings.NewReader(res.Stdout), tookRE, "")
	if _, err := d.cli(ctx, "vm", "list"); err != nil {
		return err
	}
	if err := d.checkCopy(ctx, vm, marker); err != nil {
		return err
	}

	if err := exportImport(ctx, d, dir, &sn, vm, marker, &fig, &cleanups); err != nil {
		return err
	}

	printSummary(fig, time.Since(t0))
	return nil
}

// cli prints a CLI command as a walkthrough shows it, runs it against the
// demo's node and prints its output; a non-zero exit is an error.
func (d *demo) cli(ctx context.Context, args ...string) (testenv.CLIResult, error) {
	fmt.Printf("\n$ twinsnap %s\n", shellJoin(args))
	cctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	res := d.c.CLI(cctx, d.node, args...)
	if out := strings.TrimRight(res.Stdout, "\n"); out != "" {
		for _, line := range strings.Split(out, "\n") {
			fmt.Println(strings.TrimRight("  "+line, " "))
		}
	}
	if res.Exit != 0 {
		return res, fmt.Errorf("twinsnap %s: exit %d: %s", strings.Join(args, " "), res.Exit, strings.TrimSpace(res.Stderr))
	}
	return res, nil
}

// checkCopy looks at the VM made from the snapshot: registered, its agent
// answers, its MAC address differs from the original's (both read inside
// the guests), the marker is on its data1, and data2 (left out of the
// snapshot) is a blank volume.
func (d *demo) checkCopy(ctx context.Context, orig *testenv.VM, marker string) error {
	step("looking inside %s through its own guest agent", copyName)
	cp, err := d.cl.VM(ctx, copyName)
	if err != nil {
		return fmt.Errorf("the new VM: %w", err)
	}
	if cp.QEMU == nil || cp.QEMU.AgentSocket == "" {
		return fmt.Errorf("the new VM %s has no guest agent socket: %+v", copyName, cp.VM)
	}
	agent := func(ctx context.Context) (*guestagent.Client, error) {
		s, err := guestagent.Dial(ctx, "unix", cp.QEMU.AgentSocket)
		if err != nil {
			return nil, err
		}
		return guestagent.NewClient(s), nil
	}
	detail("registered on %s with %d volumes; agent socket %s", cp.HostNode, len(cp.Volumes), cp.QEMU.AgentSocket)

	ga, err := agent(ctx)
	if err != nil {
		return fmt.Errorf("the new VM's agent: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	info, err := ga.Info(pctx)
	cancel()
	ga.Close()
	if err != nil {
		return fmt.Errorf("the new VM's agent does not answer: %w", err)
	}
	detail("guest agent %s answers", info.Version)

	origMAC, err := guestShell(ctx, orig.Agent, "cat /sys/class/net/eth0/address")
	if err != nil {
		return err
	}
	copyMAC, err := guestShell(ctx, agent, "cat /sys/class/net/eth0/address")
	if err != nil {
		return err
	}
	detail("MAC inside %s: %s; inside %s: %s", vmName, origMAC, copyName, copyMAC)
	if origMAC == copyMAC || copyMAC == "" {
		return fmt.Errorf("the copy's MAC %q does not differ from the original's %q", copyMAC, origMAC)
	}

	got, err := guestShell(ctx, agent, "cat "+markerPath)
	if err != nil {
		return fmt.Errorf("the marker in the copy: %w", err)
	}
	detail("%s in %s: %q", markerPath, copyName, got)
	if got != marker {
		return fmt.Errorf("the copy's marker is %q, want %q", got, marker)
	}
	mounts, err := guestShell(ctx, agent, "grep ' /mnt/' /proc/mounts | cut -d' ' -f1,2 || true")
	if err != nil {
		return err
	}
	detail("data volumes mounted in %s: %s", copyName, strings.ReplaceAll(mounts, "\n", "; "))
	detail("(data2 was not in the snapshot: the copy got a blank data2, which holds no file system to mount)")
	return nil
}

// importName is the VM the demo imports from the exported package.
const importName = "guest-imported"

// exportImport exports the snapshot to a private Samba share (encrypted)
// as an OVF package with qcow2 disks, imports the package as another VM,
// and checks that VM from the inside: its agent answers, its MAC differs
// from the original's, and the marker is on its data1.
func exportImport(ctx context.Context, d *demo, dir string, sn *api.Snapshot, orig *testenv.VM, marker string, fig *figures, cleanups *[]func()) error {
	step("starting a private Samba server (encrypted share) on loopback")
	smb, err := testenv.LaunchSamba(ctx, filepath.Join(dir, "samba"), testenv.SambaOptions{})
	if err != nil {
		return fmt.Errorf("samba: %w", err)
	}
	*cleanups = append(*cleanups, func() { _ = smb.Close() })
	detail("smbd on %s, share %q, user %s", smb.Addr, smb.Share, smb.User)
	pass := filepath.Join(dir, "nas.pass")
	if err := os.WriteFile(pass, []byte(smb.Password+"\n"), 0o600); err != nil {
		return err
	}

	step("registering the share once: the password is read from a file and stored sealed with the cluster key")
	if _, err := d.cli(ctx, "share", "add", "nas", "--url", "smb://"+smb.Addr+"/"+smb.Share, "--user", smb.User, "--password-file", pass); err != nil {
		return err
	}
	if _, err := d.cli(ctx, "share", "list"); err != nil {
		return err
	}

	step("exporting the snapshot as an OVF package with qcow2 disks (streamed from the stored chain, verified, renamed when whole)")
	const pkg = "guest-demo"
	t0 := time.Now()
	if _, err := d.cli(ctx, "snapshot", "export", sn.ID, "--share", "nas", "--dir", "exports", "--package", pkg, "--wait", "--output", "table"); err != nil {
		return err
	}
	fig.exportTime = time.Since(t0)
	pkgDir := filepath.Join(smb.Dir, "exports", pkg)
	entries, err := os.ReadDir(pkgDir)
	if err != nil {
		return fmt.Errorf("the package on the share: %w", err)
	}
	for _, e := range entries {
		if fi, err := e.Info(); err == nil {
			fig.exportBytes += fi.Size()
			detail("on the share: exports/%s/%-28s %10s", pkg, e.Name(), iec(fi.Size()))
		}
	}
	if mf, err := os.ReadFile(filepath.Join(pkgDir, pkg+".mf")); err == nil {
		for _, line := range strings.Split(strings.TrimSpace(string(mf)), "\n") {
			detail("manifest: %s", line)
		}
	}
	if _, err := d.cli(ctx, "job", "list"); err != nil {
		return err
	}

	step("importing the package as %s: manifest and disks verified, new MAC addresses, started, registered", importName)
	t1 := time.Now()
	if _, err := d.cli(ctx, "import", "--share", "nas", "--path", "exports/"+pkg+"/"+pkg+".ovf", "--name", importName, "--node", testenv.DataA, "--wait", "--output", "table"); err != nil {
		return err
	}
	fig.importTime = time.Since(t1)

	step("looking inside %s through its own guest agent", importName)
	imp, err := d.cl.VM(ctx, importName)
	if err != nil || imp.QEMU == nil {
		return fmt.Errorf("the imported VM: %+v %w", imp, err)
	}
	agent := func(ctx context.Context) (*guestagent.Client, error) {
		s, err := guestagent.Dial(ctx, "unix", imp.QEMU.AgentSocket)
		if err != nil {
			return nil, err
		}
		return guestagent.NewClient(s), nil
	}
	origMAC, err := guestShell(ctx, orig.Agent, "cat /sys/class/net/eth0/address")
	if err != nil {
		return err
	}
	impMAC, err := guestShell(ctx, agent, "cat /sys/class/net/eth0/address")
	if err != nil {
		return err
	}
	detail("MAC inside %s: %s; inside %s: %s", vmName, origMAC, importName, impMAC)
	if impMAC == origMAC || impMAC == "" {
		return fmt.Errorf("the imported VM's MAC %q does not differ from the original's %q", impMAC, origMAC)
	}
	got, err := guestShell(ctx, agent, "cat "+markerPath)
	if err != nil {
		return fmt.Errorf("the marker in the imported VM: %w", err)
	}
	detail("%s in %s: %q", markerPath, importName, got)
	if got != marker {
		return fmt.Errorf("the imported VM's marker is %q, want %q", got, marker)
	}
	return nil
}

// guestShell runs a shell command in a guest on an agent connection of
// its own and returns its trimmed standard output; a non-zero exit is an
// error.
func guestShell(ctx context.Context, agent func(context.Context) (*guestagent.Client, error), script string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	ga, err := agent(ctx)
	if err != nil {
		return "", fmt.Errorf("guest agent: %w", err)
	}
	defer ga.Close()
	st, err := ga.Run(ctx, "/bin/sh", "-c", script)
	if err != nil {
		return "", fmt.Errorf("guest %q: %w", script, err)
	}
	if st.ExitCode != 0 {
		return "", fmt.Errorf("guest %q: exit %d: %s", script, st.ExitCode, st.ErrData)
	}
	return strings.TrimSpace(string(st.OutData)), nil
}

// freezeWindowRE finds the freeze window in the coordinator's log line for
// a capture.
var freezeWindowRE = regexp.MustCompile(`msg=captured .*\bwindow=(\S+)`)

// tookRE finds the node's own time in the table of "vm
// create-from-snapshot".
var tookRE = regexp.MustCompile(`(?m)^\s*Took:\s+(\S+)`)

// freezeWindow returns the freeze window (freeze call to confirmed thaw)
// of the last capture the node's log reports, or "not logged".
func freezeWindow(logPath string) string {
	f, err := os.Open(logPath)
	if err != nil {
		return "not logged"
	}
	defer f.Close()
	w := lastMatch(f, freezeWindowRE, "")
	if d, err := time.ParseDuration(w); err == nil {
		return d.Round(100 * time.Microsecond).String()
	}
	return "not logged"
}

// lastMatch returns the last submatch of the last line of r that matches
// re, or def.
func lastMatch(r io.Reader, re *regexp.Regexp, def string) string {
	out := def
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if m := re.FindStringSubmatch(sc.Text()); m != nil {
			out = m[len(m)-1]
		}
	}
	return out
}

// printSummary prints the figures of the run.
func printSummary(f figures, total time.Duration) {
	sn := f.snapshot
	fmt.Printf("\nSummary\n")
	fmt.Printf("  guest booted (agent answering)       %.1fs\n", f.guestBoot.Seconds())
	fmt.Printf("  snapshot %s: %s, %s consistency, %d volumes\n", sn.ID, sn.State, sn.Achieved, len(sn.Volumes))
	fmt.Printf("    request to complete (CLI --wait)   %.1fs\n", f.snapshotCLI.Seconds())
	if !sn.CompletedAt.IsZero() {
		fmt.Printf("    created to complete (cluster)      %.1fs (captured %.1fs after creation)\n",
			sn.CompletedAt.Sub(sn.CreatedAt).Seconds(), sn.CapturedAt.Sub(sn.CreatedAt).Seconds())
	}
	fmt.Printf("    freeze window (freeze to thaw)     %s\n", f.freezeWindow)
	fmt.Printf("    bytes stored per replica           %s\n", iec(sn.StoredBytes))
	fmt.Printf("    bytes replicated (the peer's copy) %s\n", iec(f.replicated))
	for _, v := range sn.Volumes {
		kind := "full: " + v.FullReason
		if v.ParentID != "" {
			kind = "incremental to " + v.ParentID
		}
		fmt.Printf("      %-6s %10s of %-10s (%s)\n", v.Name, iec(v.StoredBytes), iec(v.SizeBytes), kind)
	}
	fmt.Printf("  VM copy %s: images copied, booted, agent answering\n", copyName)
	fmt.Printf("    as the CLI waited                  %.1fs (the node's own figure: %s)\n", f.copyCLI.Seconds(), orDash(f.copyServer))
	fmt.Printf("  export to the encrypted SMB share    %.1fs, package %s (qcow2 disks, manifest, descriptor)\n", f.exportTime.Seconds(), iec(f.exportBytes))
	fmt.Printf("  import as %-26s %.1fs (read, verify, boot, agent, register)\n", importName, f.importTime.Seconds())
	fmt.Printf("  whole demo                           %.1fs\n", total.Seconds())
}

// orDash returns s, or "-" when it is empty.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// iec formats a byte count with binary units.
func iec(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// shellJoin quotes the arguments that need it, for printing.
func shellJoin(args []string) string {
	out := slices.Clone(args)
	for i, a := range out {
		if a == "" || strings.ContainsAny(a, " \t'\"$\\|&;<>()*?[]#~") {
			out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(out, " ")
}
