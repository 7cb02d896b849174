package main

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/twinsnap/twinsnap/internal/api"
)

const containersJSON = `{"containers":[
 {"volume_id":"vol-7c1e-0","volume":"boot","vm_id":"vm-7c1e","vm":"web1","node":"n1",
  "capacity_bytes":64424509440,"reserved_bytes":21474836480,"used_bytes":3221225472,"free_bytes":39728447488},
 {"volume_id":"vol-7c1e-0","volume":"boot","vm_id":"vm-7c1e","vm":"web1","node":"n2",
  "capacity_bytes":64424509440,"reserved_bytes":21474836480,"used_bytes":3221225472,"free_bytes":39728447488},
 {"volume_id":"vol-b20d-0","volume":"vda","vm_id":"vm-b20d","vm":"db1","node":"n2",
  "capacity_bytes":42949672960,"reserved_bytes":42949672960,"used_bytes":536870912,"free_bytes":-536870912}]}`

// expandedJSON is vol-7c1e-0's containers after growing to 80 GiB.
const expandedJSON = `{"containers":[
 {"volume_id":"vol-7c1e-0","volume":"boot","vm_id":"vm-7c1e","vm":"web1","node":"n1",
  "capacity_bytes":85899345920,"reserved_bytes":21474836480,"used_bytes":3221225472,"free_bytes":61203283968},
 {"volume_id":"vol-7c1e-0","volume":"boot","vm_id":"vm-7c1e","vm":"web1","node":"n2",
  "capacity_bytes":85899345920,"reserved_bytes":21474836480,"used_bytes":3221225472,"free_bytes":61203283968}]}`

const expandPath = "POST /v1/volume-containers/vol-7c1e-0/expand"

// containerAPI returns a fake serving the volume-container endpoints.
func containerAPI() *fakeAPI {
	f := &fakeAPI{routes: map[string]reply{
		"GET /v1/volume-containers": {body: containersJSON},
		expandPath:                  {body: expandedJSON},
		"POST /v1/volume-containers/vol-b20d-0/expand": {status: http.StatusConflict,
			body: `{"error":{"code":"conflict","message":"invalid state transition: container of volume \"vol-b20d-0\" on node \"n2\" cannot shrink from 42949672960 to 1073741824 bytes"}}`},
		"POST /v1/volume-containers/nope/expand": {status: http.StatusNotFound,
			body: `{"error":{"code":"not_found","message":"volume nope does not exist"}}`},
		"GET /v1/vms/vm-b20d": {body: vmDBJSON},
	}}
	for k, v := range vmAPI().routes {
		f.routes[k] = v
	}
	return f
}

func TestContainerList(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	addr := startFake(t, p, containerAPI())

	r := runCLI(t, append(flagsFor(p, addr), "volume-container", "list")...)
	want := `VM    VOLUME  NODE  CAPACITY  RESERVED  USED     FREE      VOLUME ID
web1  boot    n1    60 GiB    20 GiB    3 GiB    37 GiB    vol-7c1e-0
web1  boot    n2    60 GiB    20 GiB    3 GiB    37 GiB    vol-7c1e-0
db1   vda     n2    40 GiB    40 GiB    512 MiB  -512 MiB  vol-b20d-0
`
	if r.code != 0 || r.stdout != want {
		t.Fatalf("volume-container list: exit %d, stderr %q, stdout:\n%s\nwant:\n%s", r.code, r.stderr, r.stdout, want)
	}

	r = runCLI(t, append(flagsFor(p, addr), "volume-container", "list", "-o", "json")...)
	if r.code != 0 {
		t.Fatalf("volume-container list -o json: exit %d, stderr %q", r.code, r.stderr)
	}
	checkJSON[api.VolumeContainerList](t, r.stdout, containersJSON)

	for _, tc := range []struct {
		args  []string
		nodes []string // node of each container listed
	}{
		{[]string{"--vm", "web1"}, []string{"n1", "n2"}},
		{[]string{"--vm", "vm-b20d"}, []string{"n2"}},
		{[]string{"--node", "n2"}, []string{"n2", "n2"}},
		{[]string{"--vm", "web1", "--node", "n1"}, []string{"n1"}},
		{[]string{"--node", "w1"}, nil},
	} {
		r = runCLI(t, append(append(flagsFor(p, addr), "volume-container", "list", "-o", "json"), tc.args...)...)
		var l api.VolumeContainerList
		if err := json.Unmarshal([]byte(r.stdout), &l); r.code != 0 || err != nil || l.Containers == nil {
			t.Fatalf("volume-container list %v: exit %d, stderr %q, stdout %q", tc.args, r.code, r.stderr, r.stdout)
		}
		var nodes []string
		for _, ct := range l.Containers {
			nodes = append(nodes, ct.Node)
		}
		if !slices.Equal(nodes, tc.nodes) {
			t.Fatalf("volume-container list %v: nodes %q, want %q", tc.args, nodes, tc.nodes)
		}
	}

	r = runCLI(t, append(flagsFor(p, addr), "volume-container", "list", "--vm", "nope")...)
	if r.code != exitNotFound || !strings.Contains(r.stderr, "hint: "+hintVMList) {
		t.Fatalf("volume-container list --vm nope: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestContainerExpand(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	for _, tc := range []struct {
		args []string
		body string
	}{
		{[]string{"--capacity", "80GiB"}, `{"capacity_bytes":85899345920}`},
		{[]string{"--capacity", "1.5TiB", "--node", "n2"}, `{"capacity_bytes":1649267441664,"node":"n2"}`},
		{[]string{"--capacity=85899345920"}, `{"capacity_bytes":85899345920}`},
	} {
		fake := containerAPI()
		addr := startFake(t, p, fake)
		r := runCLI(t, append(append(flagsFor(p, addr), "volume-container", "expand", "vol-7c1e-0"), tc.args...)...)
		want := `VM    VOLUME  NODE  CAPACITY  RESERVED  USED   FREE    VOLUME ID
web1  boot    n1    80 GiB    20 GiB    3 GiB  57 GiB  vol-7c1e-0
web1  boot    n2    80 GiB    20 GiB    3 GiB  57 GiB  vol-7c1e-0
`
		if r.code != 0 || r.stdout != want {
			t.Fatalf("expand %v: exit %d, stderr %q, stdout:\n%s\nwant:\n%s", tc.args, r.code, r.stderr, r.stdout, want)
		}
		if got, want := fake.seen(), []string{expandPath + " " + tc.body}; !slices.Equal(got, want) {
			t.Fatalf("expand %v sent %q, want %q", tc.args, got, want)
		}
	}

	// VM/VOLUME travels as one path segment.
	fake := &fakeAPI{routes: map[string]reply{"POST /v1/volume-containers/web1%2Fboot/expand": {body: expandedJSON}}}
	r := runCLI(t, append(flagsFor(p, startFake(t, p, fake)), "volume-container", "expand", "web1/boot", "--capacity", "80GiB")...)
	if r.code != 0 {
		t.Fatalf("expand web1/boot: exit %d, stderr %q, requests %q", r.code, r.stderr, fake.seen())
	}

	addr := startFake(t, p, containerAPI())
	r = runCLI(t, append(flagsFor(p, addr), "volume-container", "expand", "vol-7c1e-0", "--capacity", "80GiB", "-o", "json")...)
	if r.code != 0 {
		t.Fatalf("expand -o json: exit %d, stderr %q", r.code, r.stderr)
	}
	checkJSON[api.VolumeContainerList](t, r.stdout, expandedJSON)

	// Refusals: shrinking (exit 6) and an unknown volume (exit 5).
	r = runCLI(t, append(flagsFor(p, addr), "volume-container", "expand", "vol-b20d-0", "--capacity", "1GiB")...)
	if r.code != exitConflict || !strings.Contains(r.stderr, "cannot shrink") || !strings.Contains(r.stderr, "hint: a container never shrinks") {
		t.Fatalf("shrink: exit %d, stderr %q", r.code, r.stderr)
	}
	r = runCLI(t, append(flagsFor(p, addr), "volume-container", "expand", "nope", "--capacity", "1GiB")...)
	if r.code != exitNotFound || !strings.Contains(r.stderr, "hint: "+hintContainerList) {
		t.Fatalf("unknown volume: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestParseSize(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want int64
		err  string // part of the error; "" for none
	}{
		{"1", 1, ""},
		{"4096", 4096, ""},
		{"512B", 512, ""},
		{"2KiB", 2048, ""},
		{"512MiB", 512 << 20, ""},
		{"40GiB", 40 << 30, ""},
		{"40 GiB", 40 << 30, ""},
		{"40gib", 40 << 30, ""},
		{"1.5GiB", 1610612736, ""},
		{"2TiB", 2 << 40, ""},
		{"0.5TiB", 1 << 39, ""},
		{"1PiB", 1 << 50, ""},
		{"007MiB", 7 << 20, ""},
		{"8191PiB", 8191 << 50, ""},
		{"9223372036854775807", 1<<63 - 1, ""},

		{"", 0, "is not a size"},
		{"GiB", 0, "is not a size"},
		{"lots", 0, "is not a size"},
		{"40GiBs", 0, "is not a size"},
		{"40 GiB ", 0, "is not a size"},
		{"40  GiB", 0, "is not a size"},
		{"-5GiB", 0, "is not a size"},
		{"+5GiB", 0, "is not a size"},
		{"0x10", 0, "is not a size"},
		{"1e9", 0, "is not a size"},
		{".5GiB", 0, "is not a size"},
		{"5.GiB", 0, "is not a size"},
		{"1.2.3GiB", 0, "is not a size"},
		{"1,5GiB", 0, "is not a size"},
		{"40GB", 0, `unit "GB" is ambiguous: use GiB`},
		{"40G", 0, `unit "G" is ambiguous: use GiB`},
		{"2tb", 0, `unit "tb" is ambiguous: use TiB`},
		{"0", 0, "must be positive"},
		{"0GiB", 0, "must be positive"},
		{"0.0MiB", 0, "must be positive"},
		{"1.5", 0, "not a whole number of bytes (1.5)"},
		{"1.3KiB", 0, "not a whole number of bytes (1331.2)"},
		{"8192PiB", 0, "too large"},
		{"9223372036854775808", 0, "too large"},
		{"99999999999999999999999TiB", 0, "too large"},
	} {
		got, err := parseSize(tc.in)
		switch {
		case tc.err == "" && (err != nil || got != tc.want):
			t.Fatalf("parseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Fatalf("parseSize(%q) = %d, %v; want an error with %q", tc.in, got, err, tc.err)
		}
	}
}

// TestContainerUsageErrors checks that bad flags and arguments exit 2
// before any request is sent.
func TestContainerUsageErrors(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	fake := containerAPI()
	addr := startFake(t, p, fake)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no capacity", []string{"volume-container", "expand", "vol-7c1e-0"}, "--capacity is required"},
		{"garbage capacity", []string{"volume-container", "expand", "vol-7c1e-0", "--capacity", "big"},
			`--capacity: "big" is not a size: give bytes or a number with KiB, MiB, GiB, TiB or PiB`},
		{"decimal unit", []string{"volume-container", "expand", "vol-7c1e-0", "--capacity", "40GB"}, "ambiguous"},
		{"fraction of a byte", []string{"volume-container", "expand", "vol-7c1e-0", "--capacity", "0.1KiB"}, "whole number of bytes"},
		{"zero", []string{"volume-container", "expand", "vol-7c1e-0", "--capacity", "0"}, "must be positive"},
		{"no volume", []string{"volume-container", "expand", "--capacity", "1GiB"}, "needs VOLUME"},
		{"empty volume", []string{"volume-container", "expand", "", "--capacity", "1GiB"}, "volume is empty"},
		{"list with an argument", []string{"volume-container", "list", "web1"}, "takes 0 argument"},
		{"register percent below 100", []string{"vm", "register", "web1", "--libvirt-domain", "web1", "--container-percent", "99"},
			"--container-percent must be at least 100"},
		{"register percent not a number", []string{"vm", "register", "web1", "--libvirt-domain", "web1", "--container-percent", "3x"},
			"--container-percent"},
	} {
		r := runCLI(t, append(flagsFor(p, addr), tc.args...)...)
		if r.code != exitUsage || !strings.HasPrefix(r.stderr, "twinsnap: ") || !strings.Contains(r.stderr, tc.want) || r.stdout != "" {
			t.Fatalf("%s: exit %d, want %d; stdout %q, stderr %q does not mention %q", tc.name, r.code, exitUsage, r.stdout, r.stderr, tc.want)
		}
	}
	if got := fake.seen(); len(got) != 0 {
		t.Fatalf("usage errors sent requests: %q", got)
	}
}

// TestVMRegisterContainerPercent sends container_percent only when
// --container-percent is given.
func TestVMRegisterContainerPercent(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	for _, tc := range []struct {
		args []string
		body string
	}{
		{nil, `{"name":"db1","driver":"libvirt","libvirt":{"uri":"qemu:///system","domain":"db1"},"freeze_enabled":true,"freeze_timeout_ms":10000}`},
		{[]string{"--container-percent", "150"},
			`{"name":"db1","driver":"libvirt","libvirt":{"uri":"qemu:///system","domain":"db1"},"freeze_enabled":true,"freeze_timeout_ms":10000,"container_percent":150}`},
		{[]string{"--container-percent=100"},
			`{"name":"db1","driver":"libvirt","libvirt":{"uri":"qemu:///system","domain":"db1"},"freeze_enabled":true,"freeze_timeout_ms":10000,"container_percent":100}`},
	} {
		fake := vmAPI()
		addr := startFake(t, p, fake)
		r := runCLI(t, append(append(flagsFor(p, addr), "vm", "register", "db1", "--libvirt-domain", "db1"), tc.args...)...)
		if r.code != 0 {
			t.Fatalf("%v: exit %d, stderr %q", tc.args, r.code, r.stderr)
		}
		if got, want := fake.seen(), []string{"POST /v1/vms " + tc.body}; !slices.Equal(got, want) {
			t.Fatalf("%v: sent\n%q\nwant\n%q", tc.args, got, want)
		}
	}
}
