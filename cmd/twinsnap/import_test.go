package main

import (
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/twinsnap/twinsnap/internal/api"
)

const (
	importPath    = "POST /v1/imports"
	importGetPath = "GET /v1/jobs/job-91c3"
)

// importQueuedJSON is an import as POST /v1/imports accepts it.
const importQueuedJSON = `{"id":"job-91c3","kind":"import","state":"queued","node":"n2","share":"backup","path":"vmware/app.ova",
 "vm_name":"app1","bytes":0,"offset":0,"rate":0,"creator":"admin","created_at":"2026-03-02T08:00:00Z","updated_at":"2026-03-02T08:00:00Z"}`

// importAPI returns a fake that accepts imports and walks job-91c3 from
// running to done.
func importAPI() *fakeAPI {
	running := strings.NewReplacer(`"state":"done"`, `"state":"running"`, `"vm_id":"vm-a11c",`, ``,
		`"bytes":2147483648`, `"bytes":1073741824`).Replace(importDoneJSON)
	return &fakeAPI{
		routes: map[string]reply{importPath: {status: http.StatusCreated, body: importQueuedJSON}},
		sequences: map[string][]reply{
			importGetPath: {{body: running}, {body: importDoneJSON}},
		},
	}
}

func TestImport(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	fake := importAPI()
	addr := startFake(t, p, fake)
	args := append(flagsFor(p, addr), "import", "--share", "backup", "--path", "vmware/app.ova", "--name", "app1")

	r := runCLI(t, args...)
	want := `ID:         job-91c3
Kind:       import
State:      queued
Node:       n2
Share:      backup
Path:       vmware/app.ova
VM:         app1
Window:     -
Bandwidth:  none
Progress:   -
Offset:     -
Rate:       -
File:       -
Creator:    admin
Created:    2026-03-02 09:00:00 CET
Updated:    2026-03-02 09:00:00 CET
`
	if r.code != 0 || r.stdout != want {
		t.Fatalf("import: exit %d, stderr %q, stdout:\n%s\nwant:\n%s", r.code, r.stderr, r.stdout, want)
	}
	r = runCLI(t, append(args, "-o", "json")...)
	if r.code != 0 {
		t.Fatalf("import -o json: exit %d, stderr %q", r.code, r.stderr)
	}
	checkJSON[api.Job](t, r.stdout, importQueuedJSON)

	// --wait, not on a terminal: JSON of the job as it ended.
	r = runCLI(t, append(args, "--wait")...)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("import --wait: exit %d, stderr %q", r.code, r.stderr)
	}
	checkJSON[api.Job](t, r.stdout, importDoneJSON)
	body := importPath + ` {"share":"backup","path":"vmware/app.ova","name":"app1"}`
	if got, want := fake.seen(), []string{body, body, body, importGetPath, importGetPath}; !slices.Equal(got, want) {
		t.Fatalf("import sent %q, want %q", got, want)
	}

	// On a terminal: the progress line, then the job as a table.
	r = runCLIWith(t, cliSetup{stdoutWidth: 200}, append(flagsFor(p, startFake(t, p, importAPI())),
		"import", "--share", "backup", "--path", "vmware/app.ova", "--name", "app1", "--wait")...)
	for _, want := range []string{
		"Import job job-91c3 of backup:vmware/app.ova as VM app1 is queued; waiting until it ends (Ctrl-C stops waiting, the job goes on).\n",
		"\r0 B  queued\x1b[K",
		"\r[==========>         ]  1 GiB / 2 GiB  50%  running\x1b[K",
		"\r\x1b[KID:         job-91c3\nKind:       import\nState:      done\n",
		"VM:         app1 (vm-a11c)\n",
	} {
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Fatalf("import --wait on a terminal: exit %d, stderr %q, no %q in %q", r.code, r.stderr, want, r.stdout)
		}
	}
}

// TestImportRequest checks that every flag reaches the request the
// server receives.
func TestImportRequest(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	for _, tc := range []struct {
		name string
		args []string
		body string
	}{
		{"defaults", nil, `{"share":"backup","path":"nightly/web1/web1.ovf","name":"web1-restored"}`},
		{"every flag", []string{"--node", "n2", "--keep-macs", "--readdress", "/usr/local/sbin/readdress",
			"--readdress-arg", "--ip", "--readdress-arg", "10.0.0.50/24", "--readdress-arg", "a,b",
			"--window", "22:00-06:00", "--days", "sat,sun", "--tz", "Europe/Berlin", "--bwlimit", "800KiB/s"},
			`{"share":"backup","path":"nightly/web1/web1.ovf","name":"web1-restored","node":"n2","keep_macs":true,` +
				`"readdress":"/usr/local/sbin/readdress","readdress_args":["--ip","10.0.0.50/24","a,b"],` +
				`"window":"22:00-06:00","days":"sat,sun","location":"Europe/Berlin","bandwidth_bytes":819200}`},
		{"readdress without arguments", []string{"--readdress", "/usr/local/sbin/readdress"},
			`{"share":"backup","path":"nightly/web1/web1.ovf","name":"web1-restored","readdress":"/usr/local/sbin/readdress"}`},
	} {
		fake := importAPI()
		addr := startFake(t, p, fake)
		r := runCLI(t, append(append(flagsFor(p, addr), "import", "--share", "backup", "--path", "nightly/web1/web1.ovf",
			"--name", "web1-restored"), tc.args...)...)
		if r.code != 0 {
			t.Fatalf("%s: exit %d, stderr %q", tc.name, r.code, r.stderr)
		}
		if got, want := fake.seen(), []string{importPath + " " + tc.body}; !slices.Equal(got, want) {
			t.Fatalf("%s: sent\n%q\nwant\n%q", tc.name, got, want)
		}
	}
}

// TestImportRefused checks the server's refusals: exit codes and hints.
func TestImportRefused(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	for _, tc := range []struct {
		name  string
		reply reply
		code  int
		hint  string
	}{
		{"name taken", reply{http.StatusConflict, `{"error":{"code":"conflict","message":"VM app1 exists"}}`}, exitConflict,
			"hint: the name may be taken ('twinsnap vm list')"},
		{"unknown share", reply{http.StatusNotFound, `{"error":{"code":"not_found","message":"share backup does not exist"}}`}, exitNotFound,
			"hint: check the share ('twinsnap share list')"},
		{"bad package", reply{http.StatusBadRequest, `{"error":{"code":"invalid","message":"path: .. not allowed"}}`}, exitInvalid,
			"twinsnap: importing backup:vmware/app.ova as VM app1: path: .. not allowed\n"},
	} {
		addr := startFake(t, p, &fakeAPI{routes: map[string]reply{importPath: tc.reply}})
		r := runCLI(t, append(flagsFor(p, addr), "import", "--share", "backup", "--path", "vmware/app.ova", "--name", "app1", "--wait")...)
		if r.code != tc.code || !strings.Contains(r.stderr, tc.hint) || r.stdout != "" {
			t.Fatalf("%s: exit %d, want %d; stdout %q, stderr %q", tc.name, r.code, tc.code, r.stdout, r.stderr)
		}
	}
}

// TestImportUsageErrors checks that bad flags and arguments exit 2
// before any request is sent.
func TestImportUsageErrors(t *testing.T) {
	t.Parallel()
	imp := []string{"import", "--share", "backup", "--path", "vmware/app.ova", "--name", "app1"}
	checkUsageErrors(t, []usageCase{
		{"without share", []string{"import", "--path", "a.ova", "--name", "x"}, "--share is required"},
		{"without path", []string{"import", "--share", "backup", "--name", "x"}, "--path is required"},
		{"not a package", []string{"import", "--share", "backup", "--path", "vmware/app.vmdk", "--name", "x"},
			`--path "vmware/app.vmdk" names no .ovf descriptor or .ova archive`},
		{"without name", []string{"import", "--share", "backup", "--path", "a.ova"}, "--name is required"},
		{"argument without program", append(imp, "--readdress-arg", "--ip"), "give --readdress too"},
		{"bad bwlimit", append(imp, "--bwlimit", "10Mbit/s"), `--bwlimit "10Mbit/s" is not a rate`},
		{"bad window", append(imp, "--window", "22:00-04:60"), "minute 60 is not 00-59"},
		{"days without window", append(imp, "--days", "sat"), "give --window too"},
		{"with an argument", append(imp, "extra"), "takes 0 argument"},
	})
}
