package main

import (
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/internal/api"
)

const vmWebJSON = `{"id":"vm-7c1e","name":"web1","host_node":"n1","driver":"qemu",
 "qemu":{"qmp_socket":"/run/qemu/web1.qmp","agent_socket":"/run/qemu/web1.qga"},
 "volumes":[
  {"id":"vol-7c1e-0","name":"boot","serial":"boot","boot":true,"size_bytes":21474836480,"format":"qcow2"},
  {"id":"vol-7c1e-1","name":"data","serial":"data1","size_bytes":107374182400,"format":"raw"},
  {"id":"vol-7c1e-2","name":"logs","size_bytes":1610612736,"format":"qcow2"}],
 "freeze_enabled":true,"freeze_timeout":10000000000}`

const vmDBJSON = `{"id":"vm-b20d","name":"db1","host_node":"n2","driver":"libvirt",
 "libvirt":{"uri":"qemu:///system","domain":"db1"},
 "volumes":[{"id":"vol-b20d-0","name":"vda","serial":"boot","boot":true,"size_bytes":42949672960,"format":"qcow2"}]}`

const vmListJSON = `{"vms":[` + vmWebJSON + `,` + vmDBJSON + `]}`

const quiesceJSON = `{"vm":"web1","host_node":"n1","achieved":"application",
 "frozen":["/","/srv"],
 "reasons":{"/":"on selected volume boot","/srv":"on selected volume data; also spans unselected logs, frozen too for a consistent image"},
 "spanning":["/srv"],"freeze_call_ms":12.34,"thaw_call_ms":4.567,"window_ms":2018.4}`

const quiesceCrashJSON = `{"vm":"db1","host_node":"n2","achieved":"crash","step_down":"freezing is turned off for this VM",
 "unmapped":["vda"],"freeze_call_ms":0,"thaw_call_ms":0,"window_ms":0}`

const vmNotFound = `{"error":{"code":"not_found","message":"VM nope is not registered"}}`

// vmAPI returns a fake serving the VM endpoints.
func vmAPI() *fakeAPI {
	return &fakeAPI{routes: map[string]reply{
		"GET /v1/vms":                         {body: vmListJSON},
		"GET /v1/vms/web1":                    {body: vmWebJSON},
		"GET /v1/vms/db1":                     {body: vmDBJSON},
		"GET /v1/vms/nope":                    {status: http.StatusNotFound, body: vmNotFound},
		"POST /v1/vms":                        {status: http.StatusCreated, body: vmWebJSON},
		"DELETE /v1/vms/web1":                 {status: http.StatusNoContent},
		"DELETE /v1/vms/nope":                 {status: http.StatusNotFound, body: vmNotFound},
		"POST /v1/vms/web1/quiesce-check":     {body: quiesceJSON},
		"POST /v1/vms/db1/quiesce-check":      {body: quiesceCrashJSON},
		"POST /v1/vms/nope/quiesce-check":     {status: http.StatusNotFound, body: vmNotFound},
		"POST /v1/vms/nofreeze/quiesce-check": {status: http.StatusConflict, body: `{"error":{"code":"conflict","message":"application consistency required: the VM has no guest agent"}}`},
		"DELETE /v1/vms/has-snapshots":        {status: http.StatusConflict, body: `{"error":{"code":"conflict","message":"VM has-snapshots still has 3 snapshots"}}`},
	}}
}

const vmWebTable = `Name:          web1
ID:            vm-7c1e
Host:          n1
Driver:        qemu
QMP socket:    /run/qemu/web1.qmp
Agent socket:  /run/qemu/web1.qga
Freeze:        yes (10s)

NAME  SERIAL  BOOT  SIZE     FORMAT  ID
boot  boot    yes   20 GiB   qcow2   vol-7c1e-0
data  data1   no    100 GiB  raw     vol-7c1e-1
logs  -       no    1.5 GiB  qcow2   vol-7c1e-2
`

func TestVMList(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	addr := startFake(t, p, vmAPI())

	r := runCLI(t, append(flagsFor(p, addr), "vm", "list")...)
	want := `NAME  ID       HOST  DRIVER   VOLUMES  BOOT  FREEZE
web1  vm-7c1e  n1    qemu     3        boot  yes (10s)
db1   vm-b20d  n2    libvirt  1        vda   no
`
	if r.code != 0 || r.stdout != want {
		t.Fatalf("vm list: exit %d, stderr %q, stdout:\n%s\nwant:\n%s", r.code, r.stderr, r.stdout, want)
	}

	r = runCLI(t, append(flagsFor(p, addr), "vm", "list", "-o", "json")...)
	if r.code != 0 {
		t.Fatalf("vm list -o json: exit %d, stderr %q", r.code, r.stderr)
	}
	checkJSON[api.VMList](t, r.stdout, vmListJSON)
}

func TestVMListEmptyJSONIsAList(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	addr := startFake(t, p, &fakeAPI{routes: map[string]reply{"GET /v1/vms": {body: `{"vms":null}`}}})
	r := runCLI(t, append(flagsFor(p, addr), "vm", "list", "-o", "json")...)
	if r.code != 0 || r.stdout != "{\n  \"vms\": []\n}\n" {
		t.Fatalf("empty vm list: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	r = runCLI(t, append(flagsFor(p, addr), "vm", "list")...)
	if r.code != 0 || r.stdout != "NAME  ID  HOST  DRIVER  VOLUMES  BOOT  FREEZE\n" {
		t.Fatalf("empty vm list table: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestVMShow(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	addr := startFake(t, p, vmAPI())

	r := runCLI(t, append(flagsFor(p, addr), "vm", "show", "web1")...)
	if r.code != 0 || r.stdout != vmWebTable {
		t.Fatalf("vm show web1: exit %d, stderr %q, stdout:\n%s\nwant:\n%s", r.code, r.stderr, r.stdout, vmWebTable)
	}

	r = runCLI(t, append(flagsFor(p, addr), "vm", "show", "db1")...)
	want := `Name:            db1
ID:              vm-b20d
Host:            n2
Driver:          libvirt
Libvirt URI:     qemu:///system
Libvirt domain:  db1
Freeze:          no

NAME  SERIAL  BOOT  SIZE    FORMAT  ID
vda   boot    yes   40 GiB  qcow2   vol-b20d-0
`
	if r.code != 0 || r.stdout != want {
		t.Fatalf("vm show db1: exit %d, stderr %q, stdout:\n%s\nwant:\n%s", r.code, r.stderr, r.stdout, want)
	}

	for _, tc := range []struct{ name, canned string }{{"web1", vmWebJSON}, {"db1", vmDBJSON}} {
		r = runCLI(t, append(flagsFor(p, addr), "vm", "show", tc.name, "-o", "json")...)
		if r.code != 0 {
			t.Fatalf("vm show %s -o json: exit %d, stderr %q", tc.name, r.code, r.stderr)
		}
		checkJSON[api.VM](t, r.stdout, tc.canned)
	}
}

// TestVMShowQEMUWithoutAgent shows a QEMU VM that has no agent socket and
// no volumes in its reply (JSON keeps the list a list).
func TestVMShowQEMUWithoutAgent(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	addr := startFake(t, p, &fakeAPI{routes: map[string]reply{
		"GET /v1/vms/bare": {body: `{"id":"vm-1","name":"bare","host_node":"n1","driver":"qemu","qemu":{"qmp_socket":"/run/bare.qmp"},"volumes":null}`},
	}})
	r := runCLI(t, append(flagsFor(p, addr), "vm", "show", "bare")...)
	if r.code != 0 || !strings.Contains(r.stdout, "Agent socket:  none (crash-consistent snapshots only)\n") {
		t.Fatalf("vm show bare: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	r = runCLI(t, append(flagsFor(p, addr), "vm", "show", "bare", "-o", "json")...)
	if r.code != 0 || !strings.Contains(r.stdout, `"volumes": []`) {
		t.Fatalf("vm show bare -o json: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestVMRegister(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	fake := vmAPI()
	addr := startFake(t, p, fake)

	r := runCLI(t, append(flagsFor(p, addr), "vm", "register", "web1", "--qmp-socket", "/run/qemu/web1.qmp")...)
	if r.code != 0 || r.stdout != vmWebTable {
		t.Fatalf("vm register: exit %d, stderr %q, stdout:\n%s\nwant:\n%s", r.code, r.stderr, r.stdout, vmWebTable)
	}
	r = runCLI(t, append(flagsFor(p, addr), "vm", "register", "web1", "--qmp-socket", "/run/qemu/web1.qmp", "-o", "json")...)
	if r.code != 0 {
		t.Fatalf("vm register -o json: exit %d, stderr %q", r.code, r.stderr)
	}
	checkJSON[api.VM](t, r.stdout, vmWebJSON)
	if n := len(fake.seen()); n != 2 {
		t.Fatalf("vm register sent %d requests, want 2: %q", n, fake.seen())
	}
}

// TestVMRegisterRequest checks the body that each combination of flags
// sends.
func TestVMRegisterRequest(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	for _, tc := range []struct {
		name string
		args []string
		body string
	}{
		{"qemu, defaults", []string{"web1", "--qmp-socket", "/run/qemu/web1.qmp"},
			`{"name":"web1","driver":"qemu","qemu":{"qmp_socket":"/run/qemu/web1.qmp"},"freeze_enabled":true,"freeze_timeout_ms":10000}`},
		{"qemu, every flag", []string{"web1", "--qmp-socket", "/run/qemu/web1.qmp", "--agent-socket", "/run/qemu/web1.qga",
			"--host", "n1", "--boot-volume", "boot", "--freeze-timeout", "5s"},
			`{"name":"web1","host_node":"n1","driver":"qemu","qemu":{"qmp_socket":"/run/qemu/web1.qmp","agent_socket":"/run/qemu/web1.qga"},"boot_volume":"boot","freeze_enabled":true,"freeze_timeout_ms":5000}`},
		{"libvirt, default URI, no freeze", []string{"db1", "--libvirt-domain", "db1", "--no-freeze"},
			`{"name":"db1","driver":"libvirt","libvirt":{"uri":"qemu:///system","domain":"db1"},"freeze_enabled":false}`},
		{"libvirt, URI and timeout", []string{"db1", "--libvirt-domain", "db-prod", "--libvirt-uri", "qemu+ssh://root@h2/system", "--freeze-timeout", "1500ms"},
			`{"name":"db1","driver":"libvirt","libvirt":{"uri":"qemu+ssh://root@h2/system","domain":"db-prod"},"freeze_enabled":true,"freeze_timeout_ms":1500}`},
	} {
		fake := vmAPI()
		addr := startFake(t, p, fake)
		r := runCLI(t, append(append(flagsFor(p, addr), "vm", "register"), tc.args...)...)
		if r.code != 0 {
			t.Fatalf("%s: exit %d, stderr %q", tc.name, r.code, r.stderr)
		}
		if got, want := fake.seen(), []string{"POST /v1/vms " + tc.body}; !slices.Equal(got, want) {
			t.Fatalf("%s: sent\n%q\nwant\n%q", tc.name, got, want)
		}
	}
}

func TestVMCheckQuiesce(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	addr := startFake(t, p, vmAPI())

	r := runCLI(t, append(flagsFor(p, addr), "vm", "check-quiesce", "web1")...)
	want := `VM:           web1
Host:         n1
Achieved:     application
Spanning:     /srv
Unmapped:     -
Freeze call:  12.3ms
Thaw call:    4.57ms
Window:       2018ms

FROZEN  REASON
/       on selected volume boot
/srv    on selected volume data; also spans unselected logs, frozen too for a consistent image
`
	if r.code != 0 || r.stdout != want {
		t.Fatalf("vm check-quiesce web1: exit %d, stderr %q, stdout:\n%s\nwant:\n%s", r.code, r.stderr, r.stdout, want)
	}

	r = runCLI(t, append(flagsFor(p, addr), "vm", "check-quiesce", "db1")...)
	want = `VM:           db1
Host:         n2
Achieved:     crash
Step-down:    freezing is turned off for this VM
Spanning:     -
Unmapped:     vda
Freeze call:  -
Thaw call:    -
Window:       -

No file system was frozen.
`
	if r.code != 0 || r.stdout != want {
		t.Fatalf("vm check-quiesce db1: exit %d, stderr %q, stdout:\n%s\nwant:\n%s", r.code, r.stderr, r.stdout, want)
	}

	for _, tc := range []struct{ name, canned string }{{"web1", quiesceJSON}, {"db1", quiesceCrashJSON}} {
		r = runCLI(t, append(flagsFor(p, addr), "vm", "check-quiesce", tc.name, "-o", "json")...)
		if r.code != 0 {
			t.Fatalf("vm check-quiesce %s -o json: exit %d, stderr %q", tc.name, r.code, r.stderr)
		}
		checkJSON[api.QuiesceCheckResult](t, r.stdout, tc.canned)
	}
}

// TestVMCheckQuiesceRequest checks the body that each combination of
// flags sends; what is not given is left to the server's defaults.
func TestVMCheckQuiesceRequest(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	for _, tc := range []struct {
		name string
		args []string
		body string
	}{
		{"defaults", nil, `{}`},
		{"every flag", []string{"--volumes", "boot,data", "--hold", "2s", "--desire", "application", "--require", "application"},
			`{"volumes":["boot","data"],"hold_ms":2000,"desire":"application","require":"application"}`},
		{"repeated --volumes", []string{"--volumes", "boot", "--volumes", "data1"}, `{"volumes":["boot","data1"]}`},
		{"crash only", []string{"--desire", "crash"}, `{"desire":"crash"}`},
		{"require crash", []string{"--require", "crash", "--hold", "250ms"}, `{"hold_ms":250,"require":"crash"}`},
	} {
		fake := vmAPI()
		addr := startFake(t, p, fake)
		r := runCLI(t, append(append(flagsFor(p, addr), "vm", "check-quiesce", "web1"), tc.args...)...)
		if r.code != 0 {
			t.Fatalf("%s: exit %d, stderr %q", tc.name, r.code, r.stderr)
		}
		if got, want := fake.seen(), []string{"POST /v1/vms/web1/quiesce-check " + tc.body}; !slices.Equal(got, want) {
			t.Fatalf("%s: sent\n%q\nwant\n%q", tc.name, got, want)
		}
	}
}

// TestVMUsageErrors checks that bad flags and arguments exit 2 before any
// request is sent.
func TestVMUsageErrors(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	fake := vmAPI()
	addr := startFake(t, p, fake)
	qmp := []string{"--qmp-socket", "/run/qemu/web1.qmp"}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"both drivers", []string{"vm", "register", "web1", "--qmp-socket", "/q", "--libvirt-domain", "d"}, "both drivers"},
		{"QMP socket and libvirt URI", []string{"vm", "register", "web1", "--qmp-socket", "/q", "--libvirt-uri", "qemu:///session"}, "both drivers"},
		{"agent socket and libvirt domain", []string{"vm", "register", "web1", "--agent-socket", "/a", "--libvirt-domain", "d"}, "both drivers"},
		{"no driver", []string{"vm", "register", "web1"}, "no driver given"},
		{"agent socket alone", []string{"vm", "register", "web1", "--agent-socket", "/a"}, "--agent-socket needs --qmp-socket"},
		{"libvirt URI alone", []string{"vm", "register", "web1", "--libvirt-uri", "qemu:///system"}, "--libvirt-uri needs --libvirt-domain"},
		{"empty QMP socket", []string{"vm", "register", "web1", "--qmp-socket="}, "--qmp-socket is empty"},
		{"empty agent socket", append([]string{"vm", "register", "web1", "--agent-socket="}, qmp...), "--agent-socket is empty"},
		{"empty domain", []string{"vm", "register", "web1", "--libvirt-domain="}, "--libvirt-domain is empty"},
		{"empty libvirt URI", []string{"vm", "register", "web1", "--libvirt-domain", "d", "--libvirt-uri="}, "--libvirt-uri is empty"},
		{"missing NAME", append([]string{"vm", "register"}, qmp...), "needs NAME"},
		{"empty NAME", append([]string{"vm", "register", ""}, qmp...), "name is empty"},
		{"two names", append([]string{"vm", "register", "a", "b"}, qmp...), "takes 1 argument"},
		{"timeout with no freeze", append([]string{"vm", "register", "web1", "--no-freeze", "--freeze-timeout", "5s"}, qmp...), "does not apply with --no-freeze"},
		{"zero freeze timeout", append([]string{"vm", "register", "web1", "--freeze-timeout", "0s"}, qmp...), "must be positive"},
		{"negative freeze timeout", append([]string{"vm", "register", "web1", "--freeze-timeout", "-1s"}, qmp...), "must not be negative"},
		{"sub-millisecond freeze timeout", append([]string{"vm", "register", "web1", "--freeze-timeout", "1500us"}, qmp...), "whole number of milliseconds"},
		{"bad freeze timeout", append([]string{"vm", "register", "web1", "--freeze-timeout", "soon"}, qmp...), "--freeze-timeout"},
		{"bad output", append([]string{"vm", "register", "web1", "-o", "yaml"}, qmp...), "not table or json"},
		{"show without VM", []string{"vm", "show"}, "needs VM"},
		{"show empty VM", []string{"vm", "show", ""}, "name is empty"},
		{"unregister without VM", []string{"vm", "unregister", "--yes"}, "needs VM"},
		{"unregister empty VM", []string{"vm", "unregister", "", "--yes"}, "name is empty"},
		{"list with an argument", []string{"vm", "list", "web1"}, "takes 0 argument"},
		{"check without VM", []string{"vm", "check-quiesce"}, "needs VM"},
		{"bad desire", []string{"vm", "check-quiesce", "web1", "--desire", "file"}, `"file" is not application or crash`},
		{"bad require", []string{"vm", "check-quiesce", "web1", "--require", "Application"}, `"Application" is not application or crash`},
		{"require above desire", []string{"vm", "check-quiesce", "web1", "--desire", "crash", "--require", "application"}, "--require application is above --desire crash"},
		{"negative hold", []string{"vm", "check-quiesce", "web1", "--hold", "-1s"}, "--hold must not be negative"},
		{"sub-millisecond hold", []string{"vm", "check-quiesce", "web1", "--hold", "1ns"}, "whole number of milliseconds"},
		{"hold beyond timeout", []string{"--timeout", "5s", "vm", "check-quiesce", "web1", "--hold", "5s"}, "does not fit within --timeout 5s"},
		{"empty volume name", []string{"vm", "check-quiesce", "web1", "--volumes", "boot,,data"}, "empty name"},
		{"volume named twice", []string{"vm", "check-quiesce", "web1", "--volumes", "boot,boot"}, "boot twice"},
		{"unknown vm subcommand", []string{"vm", "lst"}, `did you mean "list"`},
	} {
		r := runCLI(t, append(flagsFor(p, addr), tc.args...)...)
		if r.code != exitUsage {
			t.Fatalf("%s: exit %d, want %d; stderr %q", tc.name, r.code, exitUsage, r.stderr)
		}
		if !strings.HasPrefix(r.stderr, "twinsnap: ") || !strings.Contains(r.stderr, tc.want) {
			t.Fatalf("%s: stderr %q does not mention %q", tc.name, r.stderr, tc.want)
		}
		if r.stdout != "" {
			t.Fatalf("%s: stdout %q, want nothing", tc.name, r.stdout)
		}
	}
	if got := fake.seen(); len(got) != 0 {
		t.Fatalf("usage errors sent requests: %q", got)
	}
}

func TestVMUnregister(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	const deleted = "DELETE /v1/vms/web1"
	for _, tc := range []struct {
		name    string
		setup   cliSetup
		args    []string
		code    int
		removed bool
		stderr  string
	}{
		{"yes flag", cliSetup{}, []string{"--yes"}, 0, true, ""},
		{"short yes flag", cliSetup{}, []string{"-y"}, 0, true, ""},
		{"confirmed on a terminal", cliSetup{terminal: true, stdin: "yes\n"}, nil, 0, true,
			"Unregister VM web1 from twinsnap (the VM itself is not touched)? [y/N]"},
		{"declined on a terminal", cliSetup{terminal: true, stdin: "n\n"}, nil, 2, false, "not confirmed"},
		{"empty answer on a terminal", cliSetup{terminal: true, stdin: "\n"}, nil, 2, false, "not confirmed"},
		{"no answer on a terminal", cliSetup{terminal: true}, nil, 2, false, "no confirmation"},
		{"not a terminal", cliSetup{stdin: "y\n"}, nil, 2, false, "--yes"},
	} {
		fake := vmAPI()
		addr := startFake(t, p, fake)
		args := append(append(flagsFor(p, addr), "vm", "unregister", "web1"), tc.args...)
		r := runCLIWith(t, tc.setup, args...)
		if r.code != tc.code {
			t.Fatalf("%s: exit %d, want %d; stderr %q", tc.name, r.code, tc.code, r.stderr)
		}
		if removed := slices.Contains(fake.seen(), deleted); removed != tc.removed || len(fake.seen()) > 1 {
			t.Fatalf("%s: requests %q, removed %v, want %v", tc.name, fake.seen(), removed, tc.removed)
		}
		if tc.removed && r.stdout != "Unregistered VM web1.\n" {
			t.Fatalf("%s: stdout %q", tc.name, r.stdout)
		}
		if !tc.removed && r.stdout != "" {
			t.Fatalf("%s: stdout %q, want nothing", tc.name, r.stdout)
		}
		if !strings.Contains(r.stderr, tc.stderr) {
			t.Fatalf("%s: stderr %q does not mention %q", tc.name, r.stderr, tc.stderr)
		}
	}
}

// TestVMNotFound checks the exit code and hint for a VM the server does
// not know, from every command that names one.
func TestVMNotFound(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	addr := startFake(t, p, vmAPI())
	for _, args := range [][]string{
		{"vm", "show", "nope"},
		{"vm", "show", "nope", "-o", "json"},
		{"vm", "unregister", "nope", "--yes"},
		{"vm", "check-quiesce", "nope"},
	} {
		r := runCLI(t, append(flagsFor(p, addr), args...)...)
		if r.code != exitNotFound {
			t.Fatalf("%v: exit %d, want %d; stderr %q", args, r.code, exitNotFound, r.stderr)
		}
		if !strings.Contains(r.stderr, "twinsnap: ") || !strings.Contains(r.stderr, "VM nope is not registered") ||
			!strings.Contains(r.stderr, "\nhint: list the registered VMs with 'twinsnap vm list'\n") {
			t.Fatalf("%v: stderr %q lacks the message or the hint", args, r.stderr)
		}
		if r.stdout != "" {
			t.Fatalf("%v: stdout %q, want nothing", args, r.stdout)
		}
	}
}

// TestVMConflicts checks that the server's reason for a conflict is
// printed with a hint, and that it exits 6.
func TestVMConflicts(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	addr := startFake(t, p, vmAPI())
	for _, tc := range []struct {
		args      []string
		msg, hint string // no hint: none is expected
	}{
		{[]string{"vm", "check-quiesce", "nofreeze", "--require", "application"},
			"application consistency required: the VM has no guest agent", "--require application"},
		{[]string{"vm", "check-quiesce", "nofreeze"},
			"application consistency required: the VM has no guest agent", ""},
		{[]string{"vm", "unregister", "has-snapshots", "--yes"},
			"VM has-snapshots still has 3 snapshots", "still has snapshots"},
	} {
		r := runCLI(t, append(flagsFor(p, addr), tc.args...)...)
		if r.code != exitConflict {
			t.Fatalf("%v: exit %d, want %d; stderr %q", tc.args, r.code, exitConflict, r.stderr)
		}
		if !strings.HasPrefix(r.stderr, "twinsnap: ") || !strings.Contains(r.stderr, tc.msg) {
			t.Fatalf("%v: stderr %q does not carry the server's message", tc.args, r.stderr)
		}
		if tc.hint == "" && strings.Contains(r.stderr, "hint:") || tc.hint != "" && !strings.Contains(r.stderr, "\nhint: ") ||
			!strings.Contains(r.stderr, tc.hint) {
			t.Fatalf("%v: stderr %q, want hint %q", tc.args, r.stderr, tc.hint)
		}
	}
}

// TestVMSlowAnswers checks that a registration without an answer has an
// unknown outcome (exit 8), while a quiesce check without one, which
// changes nothing lasting, is a connection failure (exit 3).
func TestVMSlowAnswers(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	addr := startFake(t, p, &fakeAPI{delay: time.Minute, routes: vmAPI().routes})

	r := runCLI(t, append(flagsFor(p, addr), "--timeout", "300ms", "vm", "register", "web1", "--libvirt-domain", "web1")...)
	if r.code != exitUnknownResult || !strings.Contains(r.stderr, "twinsnap vm show web1") {
		t.Fatalf("slow register: exit %d, want %d; stderr %q", r.code, exitUnknownResult, r.stderr)
	}
	r = runCLI(t, append(flagsFor(p, addr), "--timeout", "300ms", "vm", "unregister", "web1", "--yes")...)
	if r.code != exitUnknownResult || !strings.Contains(r.stderr, "twinsnap vm list") {
		t.Fatalf("slow unregister: exit %d, want %d; stderr %q", r.code, exitUnknownResult, r.stderr)
	}
	r = runCLI(t, append(flagsFor(p, addr), "--timeout", "300ms", "vm", "check-quiesce", "web1")...)
	if r.code != exitConnect || !strings.Contains(r.stderr, "thaws the guest itself") {
		t.Fatalf("slow check-quiesce: exit %d, want %d; stderr %q", r.code, exitConnect, r.stderr)
	}
}

func TestFormatIEC(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		n    int64
		want string
	}{
		{0, "0 B"},
		{512, "512 B"},
		{1023, "1023 B"},
		{1024, "1 KiB"},
		{1536, "1.5 KiB"},
		{1<<20 - 1, "1 MiB"}, // 1023.999 KiB rounds into the next unit
		{1610612736, "1.5 GiB"},
		{20 << 30, "20 GiB"},
		{20<<30 + 512, "20 GiB"},
		{10 << 40, "10 TiB"},
		{1<<63 - 1, "8 EiB"},
	} {
		if got := formatIEC(tc.n); got != tc.want {
			t.Fatalf("formatIEC(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
}

// TestVMHelpAndDocs checks each vm command's help for the exit codes and
// docs/cli.md for a section per vm command.
func TestVMHelpAndDocs(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../../docs/cli.md")
	if err != nil {
		t.Fatalf("reading docs/cli.md: %v", err)
	}
	for _, sub := range []string{"", "register", "list", "show", "unregister", "check-quiesce"} {
		args := strings.Fields("vm " + sub + " --help")
		r := runCLI(t, args...)
		if r.code != 0 || !strings.Contains(r.stdout, exitCodesHelp) {
			t.Fatalf("%q: exit %d, no exit codes in:\n%s", args, r.code, r.stdout)
		}
		if sub != "" && !strings.Contains(string(doc), "\n### vm "+sub) {
			t.Fatalf("docs/cli.md has no section for vm %s", sub)
		}
	}
}
