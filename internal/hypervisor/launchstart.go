package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// startPoll is how often StartQEMU tries the new QEMU's QMP socket.
const startPoll = 50 * time.Millisecond

// startKillWait bounds the wait for a QEMU that StartQEMU killed.
const startKillWait = 10 * time.Second

// logTailBytes is how much of QEMU's log a failed start reports.
const logTailBytes = 2048

// StartQEMU starts the QEMU of spec detached from the caller and returns
// its pid once its QMP socket accepts connections.
//
// QEMU runs in a session of its own (setsid), with stdin on /dev/null and
// stdout and stderr appended to logPath, and gets no parent-death signal:
// a VM outlives the daemon that started it. The caller's process reaps it
// when it exits (a goroutine waits for it). The spec needs a QMP monitor
// on a unix socket (LaunchInfo.QMPSocket), and must not -daemonize.
//
// The socket counts as ready when a connection to it reaches the new
// process (SO_PEERCRED), not a stale QEMU that held the path before; the
// probe connection is closed without a word, which QEMU takes as a client
// that left. If QEMU exits first, or ctx ends first (ErrTimeout), it is
// killed and the error carries the last lines of its log.
func StartQEMU(ctx context.Context, spec LaunchSpec, logPath string) (pid int, err error) {
	info, err := spec.Info()
	if err != nil {
		return 0, fmt.Errorf("hypervisor: start QEMU: %w", err)
	}
	switch {
	case spec.Binary == "":
		return 0, fmt.Errorf("%w: start QEMU: no binary", ErrBadConfig)
	case info.Daemonize:
		return 0, fmt.Errorf("%w: start QEMU: -daemonize is not supported (StartQEMU detaches QEMU itself)", ErrBadConfig)
	case info.QMPSocket == "":
		return 0, fmt.Errorf("%w: start QEMU: no QMP monitor on a unix socket to wait for", ErrBadConfig)
	}
	socket := resolve(spec.Dir, info.QMPSocket)

	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return 0, fmt.Errorf("hypervisor: start QEMU: log: %w", err)
	}
	cmd := exec.Command(spec.Binary, spec.Args...)
	cmd.Dir = spec.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	_ = logf.Close() // QEMU has its own descriptor
	if err != nil {
		return 0, fmt.Errorf("hypervisor: start QEMU %s: %w", spec.Binary, err)
	}
	pid = cmd.Process.Pid
	done := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(done)
	}()

	fail := func(cause error) (int, error) {
		_ = syscall.Kill(-pid, syscall.SIGKILL) // its session's process group
		select {
		case <-done:
		case <-time.After(startKillWait):
		}
		return 0, fmt.Errorf("hypervisor: start QEMU (pid %d): %w\nQEMU log %s:\n%s", pid, cause, logPath, fileTail(logPath, logTailBytes))
	}
	t := time.NewTicker(startPoll)
	defer t.Stop()
	var last error
	for {
		err := probeSocket(ctx, socket, pid)
		if err == nil {
			return pid, nil
		}
		// Keep the last real answer: near the deadline a dial fails
		// with a timeout (by the clock) before ctx reports its end.
		if last == nil || !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, context.DeadlineExceeded) {
			last = err
		}
		select {
		case <-done:
			return fail(fmt.Errorf("QEMU exited (%v) before its QMP socket %s was ready", waitErr, socket))
		case <-ctx.Done():
			return fail(fmt.Errorf("%w: QMP socket %s not ready: %w (last: %w)", ErrTimeout, socket, ctx.Err(), last))
		case <-t.C:
		}
	}
}

// probeSocket connects to a unix socket and checks that process pid
// serves it.
func probeSocket(ctx context.Context, socket string, pid int) error {
	attempt, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(attempt, "unix", socket)
	if err != nil {
		return err
	}
	defer conn.Close()
	peer, err := peerPid(conn)
	if err != nil {
		return err
	}
	if peer != pid {
		return fmt.Errorf("socket %s is served by process %d, not the new QEMU", socket, peer)
	}
	return nil
}

// fileTail returns the last n bytes of a file, for error messages.
func fileTail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read: %v)", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Sprintf("(cannot read: %v)", err)
	}
	off := max(st.Size()-n, 0)
	buf := make([]byte, st.Size()-off)
	k, _ := f.ReadAt(buf, off) // best effort: what could be read
	return strings.TrimSpace(string(buf[:k]))
}
