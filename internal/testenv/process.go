package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Process is a child process started by the test environment. It runs in
// its own process group and receives SIGKILL if the test binary dies, so
// that nothing it starts outlives the tests.
type Process struct {
	Name string
	cmd  *exec.Cmd

	done    chan struct{}
	waitErr error
	once    sync.Once
}

// StartProcess starts cmd in a new process group with a parent-death signal.
// The caller sets Path, Args, Env, Dir and output redirection beforehand.
func StartProcess(name string, cmd *exec.Cmd) (*Process, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("testenv: start %s: %w", name, err)
	}
	p := &Process{Name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Pid returns the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited, and its wait error.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.waitErr
	default:
		return false, nil
	}
}

// Signal sends sig to the process group.
func (p *Process) Signal(sig syscall.Signal) error {
	err := syscall.Kill(-p.cmd.Process.Pid, sig)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// Stop asks the process to end with SIGTERM and waits up to grace for it;
// then it kills the whole process group. It is safe to call more than once.
func (p *Process) Stop(grace time.Duration) error {
	var err error
	p.once.Do(func() {
		_ = p.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
			_ = p.Signal(syscall.SIGKILL)
			<-p.done
			err = fmt.Errorf("testenv: %s did not stop within %s; killed", p.Name, grace)
		}
		// Children left in the group (smbd forks, libvirtd's QEMU) go too.
		_ = p.Signal(syscall.SIGKILL)
	})
	return err
}

// Kill sends SIGKILL to the process group and waits for the process.
func (p *Process) Kill() {
	_ = p.Signal(syscall.SIGKILL)
	<-p.done
}

// WaitFor polls check until it returns nil, the process exits, or ctx ends.
func WaitFor(ctx context.Context, p *Process, every time.Duration, check func(context.Context) error) error {
	t := time.NewTicker(every)
	defer t.Stop()
	var last error
	for {
		if last = check(ctx); last == nil {
			return nil
		}
		if p != nil {
			if exited, werr := p.Exited(); exited {
				return fmt.Errorf("testenv: %s exited (%v) before it was ready: %w", p.Name, werr, last)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("testenv: waiting: %w (last: %w)", ctx.Err(), last)
		case <-t.C:
		}
	}
}

// LookBinary returns the path of a required binary or an ErrUnavailable.
func LookBinary(name string) (string, error) {
	path, err := exec.LookPath(name)
	if err != nil {
		for _, dir := range []string{"/usr/sbin", "/sbin"} {
			if _, serr := os.Stat(dir + "/" + name); serr == nil {
				return dir + "/" + name, nil
			}
		}
		return "", fmt.Errorf("%w: %s not installed (run scripts/deps): %w", ErrUnavailable, name, err)
	}
	return path, nil
}
