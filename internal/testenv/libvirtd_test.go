package testenv_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"
	"github.com/twinsnap/twinsnap/internal/testenv"
)

// TestLibvirtdDomainAgent starts a private libvirtd and a domain with one
// data volume, talks to the guest agent through libvirt, destroys the
// domain, and shows that Close leaves no process of the daemon behind.
func TestLibvirtdDomainAgent(t *testing.T) {
	lv := testenv.StartLibvirtd(t)
	t.Logf("libvirtd ready after %s", lv.ReadyAfter.Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// The marker is in libvirtd's command line, as a stray check sees it.
	found := false
	for _, pid := range pgrepRE(t, testenv.Marker) {
		if cmd := cmdline(pid); strings.Contains(cmd, "libvirtd") && strings.Contains(cmd, lv.Dir+"/") {
			found = true
		}
	}
	if !found {
		t.Fatalf("pgrep -f %s finds no libvirtd of %s", testenv.Marker, lv.Dir)
	}

	l, err := lv.Connect(ctx)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	ver, err := l.ConnectGetLibVersion()
	if err != nil {
		t.Fatalf("libvirt version: %v", err)
	}
	if ver < 9000000 {
		t.Fatalf("libvirt version %d, want 9.0 or later", ver)
	}
	if err := l.Disconnect(); err != nil {
		t.Fatalf("disconnect: %v", err)
	}
	if virsh, err := exec.LookPath("virsh"); err == nil {
		out, err := exec.CommandContext(ctx, virsh, "-c", lv.URI, "uri").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != lv.URI {
			t.Fatalf("virsh -c %s uri = %q, %v", lv.URI, out, err)
		}
	}

	start := time.Now()
	d := testenv.StartDomain(t, lv, testenv.VMOptions{DataDisks: []testenv.DiskSpec{{Serial: "data1", SizeMiB: 64}}})
	t.Logf("domain %s (%s) ready %s after define", d.Name, d.UUID, time.Since(start).Round(time.Millisecond))
	if !strings.Contains(d.XML, "<domain type=\"qemu\">") || !strings.Contains(d.XML, "org.qemu.guest_agent.0") {
		t.Fatalf("domain XML lacks TCG or the agent channel:\n%s", d.XML)
	}
	data, ok := d.Disk("data1")
	if !ok || data.NodeName == "" || data.DeviceID != "ua-disk-data1" {
		t.Fatalf("disk data1 = %+v, %v; want a node name and device id ua-disk-data1", data, ok)
	}

	if err := d.AgentPing(ctx); err != nil {
		t.Fatalf("guest-ping: %v", err)
	}
	reply, err := d.AgentCommand(ctx, `{"execute":"guest-get-fsinfo"}`)
	if err != nil {
		t.Fatalf("guest-get-fsinfo: %v", err)
	}
	var fsinfo struct {
		Return []struct {
			Mountpoint string `json:"mountpoint"`
			Type       string `json:"type"`
		} `json:"return"`
	}
	if err := json.Unmarshal([]byte(reply), &fsinfo); err != nil {
		t.Fatalf("guest-get-fsinfo reply %q: %v", reply, err)
	}
	mounted := map[string]string{}
	for _, fs := range fsinfo.Return {
		mounted[fs.Mountpoint] = fs.Type
	}
	if mounted["/"] != "ext4" || mounted["/mnt/data1"] != "ext4" {
		t.Fatalf("guest-get-fsinfo shows %v; want / and /mnt/data1 on ext4", mounted)
	}

	qemu := pgrep(t, testenv.Marker+":"+lv.Dir)
	if len(qemu) != 1 || !strings.Contains(cmdline(qemu[0]), "qemu-system") {
		t.Fatalf("want one QEMU process naming %s, found %v", lv.Dir, qemu)
	}
	if err := d.Destroy(ctx); err != nil {
		t.Fatalf("destroy: %v", err)
	}
	if running, err := d.Running(ctx); err != nil || running {
		t.Fatalf("running after destroy = %v, %v", running, err)
	}
	if err := d.AgentPing(ctx); err == nil {
		t.Fatalf("guest-ping answered after destroy")
	}
	if err := d.Destroy(ctx); err != nil {
		t.Fatalf("second destroy: %v", err)
	}
	if left := pgrep(t, testenv.Marker+":"+lv.Dir); len(left) != 0 {
		t.Fatalf("QEMU still running after destroy: %v", left)
	}

	if err := lv.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if left := pgrep(t, lv.Dir); len(left) != 0 {
		t.Fatalf("processes naming %s after Close: %v", lv.Dir, left)
	}
}

// TestLibvirtdCloseKillsDomains leaves a domain running and shows that
// closing the daemon, or killing its unshare process (what the test
// binary's death does through the parent-death signal), ends QEMU too.
func TestLibvirtdCloseKillsDomains(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	img, err := testenv.BuildGuestImage(ctx)
	testenv.Need(t, "test guest image", err)

	for _, how := range []string{"close", "kill"} {
		t.Run(how, func(t *testing.T) {
			dir := testenv.TempDir(t, "libvirtd")
			start := time.Now()
			lv, err := testenv.LaunchLibvirtd(ctx, dir)
			testenv.Need(t, "libvirtd", err)
			defer func() { _ = lv.Close() }()
			t.Logf("libvirtd ready after %s (measured %s)", lv.ReadyAfter.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
			defineStart := time.Now()
			d, err := testenv.DefineDomain(ctx, lv, img, testenv.TempDir(t, "dom"), testenv.VMOptions{
				Name:      "left-running",
				ExtraArgs: []string{"-fw_cfg", "name=opt/org.twinsnap/extra,string=extra-arg"},
			})
			if err != nil {
				t.Fatalf("define: %v", err)
			}
			t.Logf("domain defined and started in %s", time.Since(defineStart).Round(time.Millisecond))
			qemu := pgrep(t, testenv.Marker+":"+lv.Dir)
			if len(qemu) != 1 || !strings.Contains(cmdline(qemu[0]), "extra-arg") {
				t.Fatalf("want one QEMU process naming %s with the extra argument, found %v", lv.Dir, qemu)
			}
			// The guest needs seconds to boot; its agent is not connected yet.
			pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
			err = d.AgentPing(pctx)
			pcancel()
			var lerr libvirt.Error
			if !errors.As(err, &lerr) || lerr.Code != uint32(libvirt.ErrAgentUnresponsive) {
				t.Fatalf("guest-ping right after start = %v; want a libvirt ErrAgentUnresponsive", err)
			}
			if running, err := d.Running(ctx); err != nil || !running {
				t.Fatalf("running = %v, %v", running, err)
			}
			switch how {
			case "close":
				if err := lv.Close(); err != nil {
					t.Fatalf("close: %v", err)
				}
			case "kill":
				if err := syscall.Kill(lv.Pid(), syscall.SIGKILL); err != nil {
					t.Fatalf("kill: %v", err)
				}
				deadline := time.Now().Add(15 * time.Second)
				for len(pgrep(t, lv.Dir)) > 0 && time.Now().Before(deadline) {
					time.Sleep(100 * time.Millisecond)
				}
			}
			if left := pgrep(t, lv.Dir); len(left) != 0 {
				t.Fatalf("processes naming %s after %s: %v", lv.Dir, how, left)
			}
			if how == "kill" {
				if err := lv.Close(); err != nil {
					t.Fatalf("close after kill: %v", err)
				}
			}
		})
	}
}

// TestLibvirtdRejectsLongDir shows that a directory too long for unix
// socket paths is refused before anything starts.
func TestLibvirtdRejectsLongDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), strings.Repeat("x", 100))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("mkdir: %v", err)
	}
	lv, err := testenv.LaunchLibvirtd(context.Background(), dir)
	if err == nil {
		_ = lv.Close()
		t.Fatalf("LaunchLibvirtd accepted %s", dir)
	}
	if !strings.Contains(err.Error(), "too long") && !strings.Contains(err.Error(), "unavailable") {
		t.Fatalf("error = %v; want a too-long or unavailable error", err)
	}
}

// pgrep returns the ids of processes whose command line mentions s: s
// itself followed by a space, comma, slash or the end (pgrep -f).
func pgrep(t *testing.T, s string) []string {
	t.Helper()
	return pgrepRE(t, regexp.QuoteMeta(s)+"([ ,/]|$)")
}

// pgrepRE returns the ids of processes whose command line matches the
// extended regular expression re (pgrep -f).
func pgrepRE(t *testing.T, re string) []string {
	t.Helper()
	out, err := exec.Command("pgrep", "-f", re).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == 1 {
			return nil
		}
		t.Fatalf("pgrep -f %s: %v", re, err)
	}
	return strings.Fields(string(out))
}

// cmdline returns a process's command line with spaces between arguments.
func cmdline(pid string) string {
	b, _ := os.ReadFile("/proc/" + pid + "/cmdline")
	return strings.ReplaceAll(string(b), "\x00", " ")
}
