package main

import (
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/internal/api"
)

const createVMJSON = `{"vm":{"id":"6f1c2d3e-8a9b-4c5d-9e0f-1a2b3c4d5e6f","name":"web1-test","host_node":"n2","driver":"qemu",
  "qemu":{"qmp_socket":"/run/twinsnap/vms/web1-test/qmp.sock","agent_socket":"/run/twinsnap/vms/web1-test/qga.sock"},
  "volumes":[
   {"id":"vol-6f1c-0","name":"boot","serial":"boot","boot":true,"size_bytes":21474836480,"format":"qcow2"},
   {"id":"vol-6f1c-1","name":"data","serial":"data1","size_bytes":107374182400,"format":"qcow2"}],
  "freeze_enabled":true,"freeze_timeout":10000000000},
 "snapshot":"snap-5f2a","uuid":"6f1c2d3e-8a9b-4c5d-9e0f-1a2b3c4d5e6f",
 "macs":["52:54:00:3a:91:0c","52:54:00:3a:91:0d"],
 "images":{"data":"/var/lib/twinsnap/vms/web1-test/data.qcow2","boot":"/var/lib/twinsnap/vms/web1-test/boot.qcow2"},
 "started":true,"agent_ready":true,"seconds":23.47}`

const createVMPath = "POST /v1/snapshots/snap-5f2a/create-vm"

func TestVMCreateFromSnapshot(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	fake := &fakeAPI{routes: map[string]reply{
		createVMPath: {status: http.StatusCreated, body: createVMJSON},
		"POST /v1/snapshots/snap-6a01/create-vm": {status: http.StatusConflict,
			body: `{"error":{"code":"conflict","message":"snapshot snap-6a01 is partial, not complete"}}`},
		"POST /v1/snapshots/nope/create-vm": {status: http.StatusNotFound, body: snapNotFound},
	}}
	addr := startFake(t, p, fake)

	r := runCLI(t, append(flagsFor(p, addr), "vm", "create-from-snapshot", "snap-5f2a", "--name", "web1-test")...)
	want := `Name:         web1-test
UUID:         6f1c2d3e-8a9b-4c5d-9e0f-1a2b3c4d5e6f
Host:         n2
Snapshot:     snap-5f2a
MACs:         52:54:00:3a:91:0c, 52:54:00:3a:91:0d
Started:      yes
Agent ready:  yes
Took:         23.5s

VOLUME  IMAGE
boot    /var/lib/twinsnap/vms/web1-test/boot.qcow2
data    /var/lib/twinsnap/vms/web1-test/data.qcow2
`
	if r.code != 0 || r.stdout != want {
		t.Fatalf("vm create-from-snapshot: exit %d, stderr %q, stdout:\n%s\nwant:\n%s", r.code, r.stderr, r.stdout, want)
	}
	r = runCLI(t, append(flagsFor(p, addr), "vm", "create-from-snapshot", "snap-5f2a", "--name", "web1-test", "-o", "json")...)
	if r.code != 0 {
		t.Fatalf("vm create-from-snapshot -o json: exit %d, stderr %q", r.code, r.stderr)
	}
	checkJSON[api.CreateVMResult](t, r.stdout, createVMJSON)

	r = runCLI(t, append(flagsFor(p, addr), "vm", "create-from-snapshot", "snap-6a01", "--name", "db1-test")...)
	if r.code != exitConflict || !strings.Contains(r.stderr, "is partial, not complete") ||
		!strings.Contains(r.stderr, "twinsnap snapshot show snap-6a01") {
		t.Fatalf("from a partial snapshot: exit %d, stderr %q", r.code, r.stderr)
	}
	r = runCLI(t, append(flagsFor(p, addr), "vm", "create-from-snapshot", "nope", "--name", "x")...)
	if r.code != exitNotFound || !strings.Contains(r.stderr, "hint: "+hintSnapshotList) {
		t.Fatalf("from an unknown snapshot: exit %d, stderr %q", r.code, r.stderr)
	}
}

// TestVMCreateFromSnapshotRequest checks the body each combination of
// flags sends: start and register only when turned off.
func TestVMCreateFromSnapshotRequest(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	for _, tc := range []struct {
		args []string
		body string
	}{
		{nil, `{"name":"web1-test"}`},
		{[]string{"--host", "n2", "--no-start"}, `{"name":"web1-test","host_node":"n2","start":false}`},
		{[]string{"--no-register"}, `{"name":"web1-test","register":false}`},
		{[]string{"--no-start", "--no-register"}, `{"name":"web1-test","start":false,"register":false}`},
	} {
		fake := &fakeAPI{routes: map[string]reply{createVMPath: {body: createVMJSON}}}
		addr := startFake(t, p, fake)
		r := runCLI(t, append(append(flagsFor(p, addr), "vm", "create-from-snapshot", "snap-5f2a", "--name", "web1-test"), tc.args...)...)
		if r.code != 0 {
			t.Fatalf("%v: exit %d, stderr %q", tc.args, r.code, r.stderr)
		}
		if got, want := fake.seen(), []string{createVMPath + " " + tc.body}; !slices.Equal(got, want) {
			t.Fatalf("%v: sent\n%q\nwant\n%q", tc.args, got, want)
		}
	}
}

// TestVMCreateFromSnapshotNotStarted shows a VM neither started nor
// registered, with no MACs reported.
func TestVMCreateFromSnapshotNotStarted(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	body := `{"vm":{"id":"u1","name":"cold","host_node":"n1","driver":"libvirt","volumes":null},"snapshot":"snap-5f2a","uuid":"u1",
	 "images":{"vda":"/var/lib/twinsnap/vms/cold/vda.qcow2"},"started":false,"agent_ready":false,"seconds":1.04}`
	addr := startFake(t, p, &fakeAPI{routes: map[string]reply{createVMPath: {body: body}}})
	r := runCLI(t, append(flagsFor(p, addr), "vm", "create-from-snapshot", "snap-5f2a", "--name", "cold", "--no-start", "--no-register")...)
	for _, want := range []string{"MACs:         -\n", "Started:      no\n", "Agent ready:  no\n", "Took:         1.0s\n", "vda     /var/lib/twinsnap/vms/cold/vda.qcow2\n"} {
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Fatalf("not started: exit %d, stderr %q, no %q in:\n%s", r.code, r.stderr, want, r.stdout)
		}
	}
	r = runCLI(t, append(flagsFor(p, addr), "vm", "create-from-snapshot", "snap-5f2a", "--name", "cold", "-o", "json")...)
	if r.code != 0 || !strings.Contains(r.stdout, `"volumes": []`) {
		t.Fatalf("not started -o json: exit %d, stdout %q", r.code, r.stdout)
	}
}

// TestVMCreateFromSnapshotTimeout checks --timeout's longer default: a
// slow answer within a few seconds is waited for; a missing one with an
// explicit --timeout is an unknown outcome with a hint.
func TestVMCreateFromSnapshotTimeout(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	g := &globalOptions{env: &cliEnv{}, timeout: 30 * time.Second}
	g.defaultTimeout(defaultCreateVMTimeout)
	if g.timeout != defaultCreateVMTimeout {
		t.Fatalf("default timeout %s, want %s", g.timeout, defaultCreateVMTimeout)
	}
	addr := startFake(t, p, &fakeAPI{delay: time.Minute, routes: map[string]reply{createVMPath: {body: createVMJSON}}})
	r := runCLI(t, append(flagsFor(p, addr), "--timeout", "300ms", "vm", "create-from-snapshot", "snap-5f2a", "--name", "web1-test")...)
	if r.code != exitUnknownResult || !strings.Contains(r.stderr, "'twinsnap vm show web1-test'") ||
		strings.Contains(r.stderr, "twinsnap node list") {
		t.Fatalf("slow create: exit %d, want %d; stderr %q", r.code, exitUnknownResult, r.stderr)
	}
}

func TestVMCreateFromSnapshotUsageErrors(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	fake := &fakeAPI{}
	addr := startFake(t, p, fake)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"snap-5f2a"}, "--name is required"},
		{[]string{"snap-5f2a", "--name="}, "--name is required"},
		{[]string{"--name", "x"}, "needs SNAPSHOT"},
		{[]string{"", "--name", "x"}, "snapshot ID is empty"},
		{[]string{"a", "b", "--name", "x"}, "takes 1 argument"},
	} {
		r := runCLI(t, append(append(flagsFor(p, addr), "vm", "create-from-snapshot"), tc.args...)...)
		if r.code != exitUsage || !strings.Contains(r.stderr, tc.want) {
			t.Fatalf("%v: exit %d, stderr %q, want %q", tc.args, r.code, r.stderr, tc.want)
		}
	}
	if got := fake.seen(); len(got) != 0 {
		t.Fatalf("usage errors sent requests: %q", got)
	}
}
