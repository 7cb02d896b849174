package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"
)

// LibvirtdReadyTimeout bounds the wait for a started libvirtd to accept a
// connection. A start with an empty capabilities cache probes QEMU for
// several seconds, more when the machine is busy.
const LibvirtdReadyTimeout = 60 * time.Second

// libvirtdConfName names libvirtd's configuration file; it carries Marker
// so that libvirtd's command line does.
const libvirtdConfName = Marker + "-libvirtd.conf"

// libvirtdScriptName names the shell wrapper that sets up the private
// mounts and runs libvirtd.
const libvirtdScriptName = Marker + "-libvirtd.sh"

// Libvirtd is a private libvirtd with the QEMU driver. It runs as root in
// its own mount and PID namespaces (unshare --mount --pid): its
// configuration, /etc/passwd, /etc/group, /var and /run are bind mounts of
// directories under Dir, so the host's /etc, /var and /run stay untouched,
// and every process it starts (QEMU) dies with it, even when the test
// binary is killed.
//
// Layout of Dir, with the path each directory is mounted at inside the
// namespace:
//
//	libvirt-sock            the read-write socket (Socket; also -ro, -admin)
//	etc-libvirt/            /etc/libvirt: qemu.conf, the daemon's configuration
//	                        (twinsnap-testenv-libvirtd.conf), domain XML
//	passwd, group           /etc/passwd, /etc/group plus libvirt-qemu
//	var/                    /var: lib/libvirt, cache/libvirt, log/libvirt, tmp
//	run/                    /run: libvirt/ (QEMU monitor state), lock/
//	libvirtd.log            libvirtd's own log (warnings and errors)
//	libvirtd.out            standard output and error of the wrapper
//	twinsnap-testenv-libvirtd.sh  the wrapper that mounts and runs libvirtd
type Libvirtd struct {
	// Dir holds everything the daemon writes.
	Dir string
	// Socket is the path of the read-write unix socket.
	Socket string
	// URI is the connection URI for virsh and the libvirt C library:
	// qemu:///system?socket=<Dir>/libvirt-sock.
	URI string
	// LogPath is libvirtd's log file.
	LogPath string
	// OutputPath holds the standard output and error of unshare, the
	// wrapper script and libvirtd.
	OutputPath string
	// ReadyAfter is how long the daemon took, from its start to the first
	// successful connection.
	ReadyAfter time.Duration

	proc      *Process
	closeOnce sync.Once
	closeErr  error
}

// StartLibvirtd starts a private libvirtd in a fresh directory and closes
// it when the test ends. A missing component skips the test outside CI.
func StartLibvirtd(tb testing.TB) *Libvirtd {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*LibvirtdReadyTimeout)
	defer cancel()
	lv, err := LaunchLibvirtd(ctx, TempDir(tb, "libvirtd"))
	Need(tb, "libvirtd", err)
	tb.Cleanup(func() {
		if err := lv.Close(); err != nil {
			tb.Errorf("closing libvirtd: %v", err)
		}
		if tb.Failed() {
			tb.Logf("libvirtd log (%s):\n%s", lv.LogPath, lv.LogTail(4096))
		}
	})
	return lv
}

// LaunchLibvirtd starts a private libvirtd that keeps its state in dir and
// waits, up to LibvirtdReadyTimeout or until ctx ends, until it accepts a
// connection to qemu:///system. On error nothing is left running, and the
// error holds the tail of the daemon's log. Call Close to stop it.
func LaunchLibvirtd(ctx context.Context, dir string) (*Libvirtd, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w: a private libvirtd needs root (mount namespaces, QEMU as root)", ErrUnavailable)
	}
	bins := map[string]string{}
	for _, name := range []string{"unshare", "mount", "libvirtd", "sh"} {
		path, err := LookBinary(name)
		if err != nil {
			return nil, err
		}
		bins[name] = path
	}
	if drivers, _ := filepath.Glob("/usr/lib*/*/libvirt/connection-driver/libvirt_driver_qemu.so"); len(drivers) == 0 {
		if drivers, _ = filepath.Glob("/usr/lib*/libvirt/connection-driver/libvirt_driver_qemu.so"); len(drivers) == 0 {
			return nil, fmt.Errorf("%w: libvirt's QEMU driver is not installed (install libvirt-daemon-driver-qemu; run scripts/deps)", ErrUnavailable)
		}
	}
	if st, err := os.Stat("/etc/libvirt"); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("%w: /etc/libvirt is missing; it is the mount point of the private configuration (install libvirt-daemon)", ErrUnavailable)
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("testenv: libvirtd dir: %w", err)
	}
	lv := &Libvirtd{
		Dir:        dir,
		Socket:     filepath.Join(dir, "libvirt-sock"),
		LogPath:    filepath.Join(dir, "libvirtd.log"),
		OutputPath: filepath.Join(dir, "libvirtd.out"),
	}
	lv.URI = "qemu:///system?socket=" + lv.Socket
	// The longest socket libvirtd creates is libvirt-admin-sock.
	if n := len(filepath.Join(dir, "libvirt-admin-sock")); n >= 108 {
		return nil, fmt.Errorf("testenv: libvirtd dir %s is too long for unix sockets (%d bytes)", dir, n)
	}
	if err := lv.writeTree(bins["libvirtd"]); err != nil {
		return nil, err
	}
	seedCapabilities(dir)

	out, err := os.Create(lv.OutputPath)
	if err != nil {
		return nil, fmt.Errorf("testenv: libvirtd output: %w", err)
	}
	defer out.Close()
	// --pid and --fork make the wrapper PID 1 of a new PID namespace: when
	// it ends, the kernel kills everything left in the namespace, including
	// the QEMU processes, which libvirtd daemonizes into sessions and
	// process groups of their own (so signals to libvirtd's group miss
	// them). The wrapper stays PID 1 (it does not exec libvirtd) because
	// the daemonized QEMU processes are reparented to PID 1, which must
	// reap them; sh does while it waits for libvirtd. --kill-child ends the
	// namespace when unshare itself dies (the parent-death signal from
	// StartProcess). unshare blocks SIGTERM while it waits, so a SIGTERM to
	// the process group reaches only libvirtd, which shuts down cleanly.
	cmd := exec.Command(bins["unshare"], "--mount", "--propagation", "private",
		"--pid", "--fork", "--kill-child", "--mount-proc",
		bins["sh"], filepath.Join(dir, libvirtdScriptName))
	cmd.Dir = dir
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", "HOME=/root"}
	cmd.Stdout, cmd.Stderr = out, out
	start := time.Now()
	lv.proc, err = StartProcess("libvirtd", cmd)
	if err != nil {
		return nil, err
	}

	readyCtx, cancel := context.WithTimeout(ctx, LibvirtdReadyTimeout)
	defer cancel()
	err = WaitFor(readyCtx, lv.proc, 100*time.Millisecond, func(ctx context.Context) error {
		attempt, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return lv.withConn(attempt, func(l *libvirt.Libvirt) error {
			_, err := l.ConnectGetLibVersion()
			return err
		})
	})
	if err != nil {
		_ = lv.proc.Stop(5 * time.Second)
		_ = lv.killStrays()
		return nil, fmt.Errorf("testenv: libvirtd in %s not ready: %w\noutput: %s\nlog: %s", dir, err, lv.OutputTail(2048), lv.LogTail(4096))
	}
	lv.ReadyAfter = time.Since(start)
	return lv, nil
}

// writeTree creates the directories, configuration files and wrapper
// script under lv.Dir.
func (lv *Libvirtd) writeTree(libvirtd string) error {
	dir := lv.Dir
	for _, d := range []string{
		"etc-libvirt",
		"var/lib/libvirt", "var/cache/libvirt", "var/log/libvirt", "var/tmp",
		"run/libvirt", "run/lock",
	} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return fmt.Errorf("testenv: libvirtd tree: %w", err)
		}
	}
	if err := os.Chmod(filepath.Join(dir, "var/tmp"), 0o1777); err != nil {
		return fmt.Errorf("testenv: libvirtd tree: %w", err)
	}
	// /var/run and /var/lock are symbolic links into /run on Debian; keep
	// them so inside the private /var.
	for name, target := range map[string]string{"var/run": "/run", "var/lock": "/run/lock"} {
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("testenv: libvirtd tree: %w", err)
		}
	}
	// libvirtd looks up the libvirt-qemu account at start even when QEMU
	// runs as root.
	for _, f := range []struct{ name, line string }{
		{"passwd", "libvirt-qemu:x:64055:64055:Libvirt Qemu,,,:/var/lib/libvirt:/usr/sbin/nologin\n"},
		{"group", "libvirt-qemu:x:64055:\n"},
	} {
		b, err := os.ReadFile("/etc/" + f.name)
		if err != nil {
			return fmt.Errorf("testenv: libvirtd %s: %w", f.name, err)
		}
		if !hasAccount(b, "libvirt-qemu") {
			if len(b) > 0 && b[len(b)-1] != '\n' {
				b = append(b, '\n')
			}
			b = append(b, f.line...)
		}
		if err := os.WriteFile(filepath.Join(dir, f.name), b, 0o644); err != nil {
			return fmt.Errorf("testenv: libvirtd %s: %w", f.name, err)
		}
	}

	qemuConf := `# Written by twinsnap's testenv for a private libvirtd.
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
# QEMU's output goes to files in /var/log/libvirt/qemu, not through virtlogd,
# which is not running.
stdio_handler = "file"
`
	daemonConf := fmt.Sprintf(`# Written by twinsnap's testenv for a private libvirtd.
unix_sock_dir = %[1]s
unix_sock_group = "root"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
unix_sock_admin_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
listen_tls = 0
listen_tcp = 0
log_outputs = %[2]s
`, confString(dir), confString("3:file:"+lv.LogPath))
	for name, content := range map[string]string{"qemu.conf": qemuConf, libvirtdConfName: daemonConf} {
		if err := os.WriteFile(filepath.Join(dir, "etc-libvirt", name), []byte(content), 0o644); err != nil {
			return fmt.Errorf("testenv: libvirtd config: %w", err)
		}
	}

	// The wrapper runs as PID 1 of the new namespaces. It does not exec
	// libvirtd: see LaunchLibvirtd.
	q := func(p string) string { return shellQuote(filepath.Join(dir, p)) }
	script := fmt.Sprintf(`# twinsnap testenv: a private libvirtd in its own mount and PID namespace.
set -eu
mount --bind %s /etc/libvirt
mount --bind %s /etc/passwd
mount --bind %s /etc/group
mount --bind %s /var
mount --bind %s /run
%s --config %s --pid-file %s
`, q("etc-libvirt"), q("passwd"), q("group"), q("var"), q("run"),
		shellQuote(libvirtd), q(filepath.Join("etc-libvirt", libvirtdConfName)), q("libvirtd.pid"))
	if err := os.WriteFile(filepath.Join(dir, libvirtdScriptName), []byte(script), 0o644); err != nil {
		return fmt.Errorf("testenv: libvirtd wrapper: %w", err)
	}
	return nil
}

// hasAccount reports whether a passwd or group file holds an entry named
// name.
func hasAccount(file []byte, name string) bool {
	for _, line := range strings.Split(string(file), "\n") {
		if n, _, ok := strings.Cut(line, ":"); ok && n == name {
			return true
		}
	}
	return false
}

// confString quotes s as a libvirt configuration string.
func confString(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// Connect opens a new go-libvirt connection to qemu:///system on the
// private socket; ctx bounds only the connection set-up. The caller
// disconnects it. go-libvirt has no request timeouts: bound later calls
// yourself, or close the connection.
func (lv *Libvirtd) Connect(ctx context.Context) (*libvirt.Libvirt, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("testenv: connecting to libvirtd at %s: %w", lv.Socket, err)
	}
	d := &abortDialer{local: dialers.NewLocal(dialers.WithSocket(lv.Socket), dialers.WithLocalTimeout(10*time.Second))}
	l := libvirt.NewWithDialer(d)
	done := make(chan error, 1)
	go func() { done <- l.ConnectToURI(libvirt.QEMUSystem) }()
	select {
	case err := <-done:
		if err != nil {
			return nil, fmt.Errorf("testenv: connecting to libvirtd at %s: %w", lv.Socket, err)
		}
		return l, nil
	case <-ctx.Done():
		d.abort() // the aborted connection fails every pending request
		select {
		case err := <-done:
			if err == nil {
				_ = l.Disconnect()
			}
		case <-time.After(10 * time.Second):
		}
		return nil, fmt.Errorf("testenv: connecting to libvirtd at %s: %w", lv.Socket, ctx.Err())
	}
}

// withConn runs fn on a fresh connection that is closed afterwards. When
// ctx ends first, the connection is torn down, which fails fn's pending
// request, and withConn returns ctx's error.
func (lv *Libvirtd) withConn(ctx context.Context, fn func(*libvirt.Libvirt) error) error {
	d := &abortDialer{local: dialers.NewLocal(dialers.WithSocket(lv.Socket), dialers.WithLocalTimeout(10*time.Second))}
	l := libvirt.NewWithDialer(d)
	done := make(chan error, 1)
	go func() {
		if err := l.ConnectToURI(libvirt.QEMUSystem); err != nil {
			done <- fmt.Errorf("testenv: connecting to libvirtd at %s: %w", lv.Socket, err)
			return
		}
		err := fn(l)
		_ = l.Disconnect()
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		d.abort()
		select {
		case <-done:
		case <-time.After(10 * time.Second): // go-libvirt's own disconnect bound is 5 s
		}
		return fmt.Errorf("testenv: libvirt call: %w", ctx.Err())
	}
}

// abortDialer dials libvirtd's unix socket and can close the connection
// from outside, which is the only way to cancel a go-libvirt request.
type abortDialer struct {
	local *dialers.Local

	mu      sync.Mutex
	conn    net.Conn
	aborted bool
}

// Dial connects to the socket unless the dialer was aborted.
func (d *abortDialer) Dial() (net.Conn, error) {
	c, err := d.local.Dial()
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.aborted {
		c.Close()
		return nil, net.ErrClosed
	}
	d.conn = c
	return c, nil
}

// abort closes the connection and refuses new ones.
func (d *abortDialer) abort() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.aborted = true
	if d.conn != nil {
		_ = d.conn.Close()
	}
}

// Pid returns the process id of the unshare process that holds the
// daemon's namespaces; killing it ends the daemon and its guests.
func (lv *Libvirtd) Pid() int { return lv.proc.Pid() }

// Running reports whether the daemon is still running.
func (lv *Libvirtd) Running() bool {
	exited, _ := lv.proc.Exited()
	return !exited
}

// Close destroys every running domain, stops libvirtd (SIGTERM, then
// SIGKILL to its process group) and makes sure that no process of this
// instance is left: a QEMU process would die with the PID namespace anyway,
// and one that is still found is killed and reported. It is idempotent and
// does not remove Dir.
func (lv *Libvirtd) Close() error {
	lv.closeOnce.Do(func() { lv.closeErr = lv.close() })
	return lv.closeErr
}

// close does the work of Close, once.
func (lv *Libvirtd) close() error {
	var errs []error
	if lv.Running() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		if err := lv.destroyAll(ctx); err != nil {
			errs = append(errs, err)
		}
		cancel()
	}
	if err := lv.proc.Stop(15 * time.Second); err != nil {
		errs = append(errs, err)
	}
	if err := lv.killStrays(); err != nil {
		errs = append(errs, err)
	}
	// libvirtd probes QEMU when first asked for its capabilities (the
	// first define), not at start.
	storeCapabilities(lv.Dir)
	return errors.Join(errs...)
}

// destroyAll destroys every running domain of the daemon.
func (lv *Libvirtd) destroyAll(ctx context.Context) error {
	return lv.withConn(ctx, func(l *libvirt.Libvirt) error {
		doms, _, err := l.ConnectListAllDomains(1, libvirt.ConnectListDomainsActive)
		if err != nil {
			return fmt.Errorf("testenv: listing domains: %w", err)
		}
		var errs []error
		for _, d := range doms {
			if err := l.DomainDestroy(d); err != nil && !isLibvirtError(err, libvirt.ErrOperationInvalid) {
				errs = append(errs, fmt.Errorf("testenv: destroying domain %s: %w", d.Name, err))
			}
		}
		return errors.Join(errs...)
	})
}

// Processes returns the ids of the running processes that belong to this
// instance: unshare, the wrapper, libvirtd and its QEMU processes (whose
// command lines name Dir through a fw_cfg entry, see DefineDomain).
func (lv *Libvirtd) Processes() []int {
	return processesMentioning(lv.Dir)
}

// killStrays kills the processes of this instance that are still running
// and reports them.
func (lv *Libvirtd) killStrays() error {
	// The kernel tears the PID namespace down once its first process has
	// ended; give it a moment before calling anything a stray.
	deadline := time.Now().Add(5 * time.Second)
	left := lv.Processes()
	for len(left) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		left = lv.Processes()
	}
	if len(left) == 0 {
		return nil
	}
	desc := make([]string, 0, len(left))
	for _, pid := range left {
		desc = append(desc, fmt.Sprintf("%d (%s)", pid, commandLine(pid)))
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline = time.Now().Add(10 * time.Second)
	for len(lv.Processes()) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("testenv: processes of libvirtd %s outlived it and were killed: %s", lv.Dir, strings.Join(desc, "; "))
}

// LogTail returns the last n bytes of libvirtd's log.
func (lv *Libvirtd) LogTail(n int) string {
	b, err := os.ReadFile(lv.LogPath)
	if err != nil {
		return fmt.Sprintf("(no libvirtd log: %v)", err)
	}
	return tail(b, n)
}

// OutputTail returns the last n bytes of the output of the daemon and its
// wrapper.
func (lv *Libvirtd) OutputTail(n int) string {
	b, err := os.ReadFile(lv.OutputPath)
	if err != nil {
		return fmt.Sprintf("(no libvirtd output: %v)", err)
	}
	return tail(b, n)
}

// processesMentioning returns the ids of processes with an argument that
// names path itself or something below it.
func processesMentioning(path string) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 { // gone, or a zombie or kernel thread
			continue
		}
		for _, arg := range bytes.Split(b, []byte{0}) {
			if mentionsPath(string(arg), path) {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// mentionsPath reports whether s contains path followed by the end, a
// slash or a comma (so that /tmp/a does not match /tmp/ab).
func mentionsPath(s, path string) bool {
	for {
		i := strings.Index(s, path)
		if i < 0 {
			return false
		}
		rest := s[i+len(path):]
		if rest == "" || rest[0] == '/' || rest[0] == ',' {
			return true
		}
		s = rest
	}
}

// commandLine returns a process's command line with spaces between the
// arguments, shortened.
func commandLine(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	s := strings.TrimSpace(string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})))
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

// isLibvirtError reports whether err is a libvirt error with the given
// code.
func isLibvirtError(err error, code libvirt.ErrorNumber) bool {
	var le libvirt.Error
	return errors.As(err, &le) && le.Code == uint32(code)
}

// capabilitiesCache is where QEMU capabilities probed by one private
// libvirtd are kept for the next: probing takes seconds, and libvirt checks
// a cached entry (QEMU's and libvirt's binaries, the kernel, the CPU)
// before it uses it.
func capabilitiesCache() (string, error) {
	cache, err := CacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(cache, "libvirt", "qemu-capabilities"), nil
}

// privateCapabilities is the capabilities cache inside a daemon's /var.
func privateCapabilities(dir string) string {
	return filepath.Join(dir, "var", "cache", "libvirt", "qemu", "capabilities")
}

// seedCapabilities copies the shared capabilities cache into the daemon's
// private /var; it is best effort.
func seedCapabilities(dir string) {
	shared, err := capabilitiesCache()
	if err != nil {
		return
	}
	files, _ := filepath.Glob(filepath.Join(shared, "*.xml"))
	if len(files) == 0 {
		return
	}
	dst := privateCapabilities(dir)
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return
	}
	for _, f := range files {
		_ = copyFile(f, filepath.Join(dst, filepath.Base(f)), 0o600)
	}
}

// storeCapabilities copies new or changed entries of the daemon's
// capabilities cache to the shared one, each by an atomic rename; it is
// best effort.
func storeCapabilities(dir string) {
	shared, err := capabilitiesCache()
	if err != nil {
		return
	}
	files, _ := filepath.Glob(filepath.Join(privateCapabilities(dir), "*.xml"))
	if len(files) == 0 || os.MkdirAll(shared, 0o755) != nil {
		return
	}
	for _, f := range files {
		mine, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		dst := filepath.Join(shared, filepath.Base(f))
		if old, err := os.ReadFile(dst); err == nil && bytes.Equal(old, mine) {
			continue
		}
		tmp, err := os.CreateTemp(shared, ".caps-*")
		if err != nil {
			continue
		}
		_, werr := tmp.Write(mine)
		if cerr := tmp.Close(); werr != nil || cerr != nil || os.Rename(tmp.Name(), dst) != nil {
			_ = os.Remove(tmp.Name())
		}
	}
}
