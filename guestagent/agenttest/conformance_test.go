package agenttest_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/guestagent"
	"github.com/twinsnap/twinsnap/guestagent/agenttest"
	"github.com/twinsnap/twinsnap/internal/testenv"
)

// blocked are the RPCs the real agent under test may not run: it runs on
// the host, not in a guest, so nothing may freeze, write, run programs or
// change the machine.
var blocked = []string{
	"guest-set-time", "guest-shutdown", "guest-file-open", "guest-file-close", "guest-file-read",
	"guest-file-write", "guest-file-seek", "guest-file-flush", "guest-fsfreeze-freeze",
	"guest-fsfreeze-freeze-list", "guest-fsfreeze-thaw", "guest-fstrim", "guest-suspend-disk",
	"guest-suspend-ram", "guest-suspend-hybrid", "guest-set-vcpus", "guest-set-user-password",
	"guest-set-memory-blocks", "guest-exec", "guest-ssh-add-authorized-keys",
	"guest-ssh-remove-authorized-keys",
}

// startRealAgent runs the host's qemu-ga on a unix socket with every
// state-changing RPC blocked and returns the socket path.
func startRealAgent(t *testing.T) string {
	bin, err := testenv.LookBinary("qemu-ga")
	testenv.Need(t, "qemu-ga", err)
	dir := testenv.TempDir(t, "qga")
	sock := filepath.Join(dir, testenv.Marker+"-qga.sock")
	log, err := os.Create(filepath.Join(dir, "qga.log"))
	if err != nil {
		t.Fatalf("%v", err)
	}
	defer log.Close()
	cmd := exec.Command(bin, "-m", "unix-listen", "-p", sock, "-t", dir, "-f", filepath.Join(dir, "qga.pid"),
		"-b", strings.Join(blocked, ","))
	cmd.Stdout, cmd.Stderr = log, log
	p, err := testenv.StartProcess("qemu-ga", cmd)
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() { _ = p.Stop(2 * time.Second) })
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err := net.Dial("unix", sock); err == nil {
			_ = c.Close()
			return sock
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(log.Name())
			t.Fatalf("qemu-ga did not listen on %s: %s", sock, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// exchange sends each request on one connection to the agent at path and
// returns, for each, the replies it got: one string per reply line, with
// the JSON normalised and a leading 0xFF kept. After each request it sends
// a guest-sync fence and reads up to the fence's reply; a request that
// leaves the parser inside an object (partial) instead gets a quiet period.
func exchange(t *testing.T, path string, requests []string, partial map[string]bool) [][]string {
	t.Helper()
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	var out [][]string
	for i, req := range requests {
		fence := fmt.Sprintf(`{"return":%d}`, 1000+i)
		if !partial[req] {
			req += fmt.Sprintf(`{"execute":"guest-sync","arguments":{"id":%d}}`+"\n", 1000+i)
		}
		if _, err := conn.Write([]byte(req)); err != nil {
			t.Fatalf("write: %v", err)
		}
		var lines []string
		for {
			wait := 10 * time.Second
			if partial[requests[i]] {
				wait = 300 * time.Millisecond
			}
			_ = conn.SetReadDeadline(time.Now().Add(wait))
			line, err := r.ReadBytes('\n')
			if err != nil {
				if partial[requests[i]] && len(line) == 0 {
					break
				}
				t.Fatalf("reading the replies to %q: %v (so far %q)", requests[i], err, lines)
			}
			line = bytes.TrimSuffix(line, []byte("\n"))
			marker := ""
			if len(line) > 0 && line[0] == 0xFF {
				marker, line = "<FF>", line[1:]
			}
			var v any
			if err := json.Unmarshal(line, &v); err != nil {
				t.Fatalf("reply to %q is not JSON: %q", requests[i], line)
			}
			norm, _ := json.Marshal(v)
			if !partial[requests[i]] && string(norm) == fence {
				break
			}
			lines = append(lines, marker+string(norm))
		}
		out = append(out, lines)
	}
	return out
}

// TestMatchesRealAgent sends the same bytes to the fake and to the real
// agent (QEMU 7.2's qemu-ga, run on the host with state-changing RPCs
// blocked) and compares the replies: sync, resets, id echo, error classes
// and messages, parse errors.
func TestMatchesRealAgent(t *testing.T) {
	real := startRealAgent(t)
	fake := agenttest.New().Start(t)
	requests := []string{
		"\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":12345}}\n",
		`{"execute":"guest-ping","id":"x1"}` + "\n",
		`{"execute":"guest-ping","id":12345678901234}` + "\n",
		`{"execute":"guest-nosuch","id":"x2"}` + "\n",
		`{"execute":"guest-exec-status","id":"x3","arguments":{"pid":4242}}` + "\n",
		`{"execute":"guest-exec-status","arguments":{}}` + "\n",
		`{"execute":"guest-exec-status","arguments":{"pid":"x"}}` + "\n",
		`{"execute":"guest-ping","arguments":{"bogus":1},"id":"x4"}` + "\n",
		`{"execute":"guest-ping","bogus":1}` + "\n",
		`{"execute":5}` + "\n",
		`{"arguments":{}}` + "\n",
		`{"execute":"guest-fsfreeze-status"}` + "\n",
		`{"arguments":{"id":8},"execute":"guest-sync"}` + "\n",
		"garbage\n",
		`{"execute":"guest-ping","id":"x5"}{"execute":"guest-ping","id":"x6"}`,
		`{"execute":"guest-ping"`,
		"\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":99}}\n",
		"\xff\xff",
		"\n\n",
	}
	partial := map[string]bool{`{"execute":"guest-ping"`: true}
	want := exchange(t, real, requests, partial)
	got := exchange(t, fake, requests, partial)
	for i, req := range requests {
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Errorf("reply to %q:\n fake %q\n real %q", req, got[i], want[i])
		}
	}
}

// TestClientAgainstRealAgent runs package guestagent's client against the
// real agent: sync, id echo, typed replies and error classes.
func TestClientAgainstRealAgent(t *testing.T) {
	path := startRealAgent(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := guestagent.Dial(ctx, "unix", path)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	c := guestagent.NewClient(s)
	defer c.Close()
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("ping: %v", err)
	}
	info, err := c.Info(ctx)
	if err != nil || !strings.HasPrefix(info.Version, "7.") || !info.Supports("guest-fsfreeze-status") || info.Supports("guest-exec") {
		t.Fatalf("info = %+v, %v", info, err)
	}
	if st, err := c.FreezeStatus(ctx); err != nil || st != guestagent.Thawed {
		t.Fatalf("status = %q, %v", st, err)
	}
	if _, err := c.Exec(ctx, "/bin/true", nil, nil, false); !guestagent.IsClass(err, guestagent.ClassCommandNotFound) {
		t.Fatalf("blocked exec = %v; want CommandNotFound", err)
	}
	if _, err := c.ExecStatus(ctx, 4242); !guestagent.IsClass(err, guestagent.ClassGenericError) {
		t.Fatalf("status of an unknown pid = %v; want GenericError", err)
	}
	if _, err := s.Execute(ctx, "guest-nosuch", nil); !guestagent.IsClass(err, guestagent.ClassCommandNotFound) {
		t.Fatalf("unknown command = %v; want CommandNotFound", err)
	}
}
