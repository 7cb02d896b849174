package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/internal/api"
)

const (
	jobGetPath    = "GET /v1/jobs/job-8d1f"
	jobCancelPath = "POST /v1/jobs/job-8d1f/cancel"
	jobNotFound   = `{"error":{"code":"not_found","message":"job nope does not exist"}}`
)

// exportJob returns job-8d1f, an export of snap-5f2a to backup:nightly
// (4 GiB), in a state with bytes moved, a rate, the time of its last
// change and extra fields ("reason", "error", "file": `"k":"v",`).
func exportJob(state string, done, rate int64, updated, extra string) string {
	return `{"id":"job-8d1f","kind":"export","state":"` + state + `",` + extra + `"node":"n1","snapshot_id":"snap-5f2a",
 "share":"backup","dir":"nightly","package":"web1-before-upgrade","format":"qcow2","window":"22:00-04:00",
 "bandwidth_bytes":52428800,"bytes":` + strconv.FormatInt(done, 10) + `,"offset":0,"total_bytes":4294967296,
 "rate":` + strconv.FormatInt(rate, 10) + `,"creator":"admin","created_at":"2026-03-01T12:00:00Z","updated_at":"` + updated + `"}`
}

// exportDone is job-8d1f finished.
var exportDone = exportJob("done", 4<<30, 0, "2026-03-02T21:10:00Z", "")

// exportFailedJSON is an OVA export to VMDK that failed.
const exportFailedJSON = `{"id":"job-77aa","kind":"export","state":"failed","error":"share backup: disk full writing web1-data.vmdk",
 "node":"n2","snapshot_id":"snap-6a01","share":"backup","package":"db1-nightly","format":"vmdk","ova":true,
 "bytes":1073741824,"offset":1048576,"total_bytes":42949672960,"rate":0,"file":"db1-nightly.ova",
 "creator":"admin","created_at":"2026-03-02T01:00:00Z","updated_at":"2026-03-02T01:30:00Z"}`

// importDoneJSON is an import that created VM app1.
const importDoneJSON = `{"id":"job-91c3","kind":"import","state":"done","node":"n2","share":"backup","path":"vmware/app.ova",
 "vm_name":"app1","vm_id":"vm-a11c","bytes":2147483648,"offset":0,"total_bytes":2147483648,"rate":0,
 "creator":"admin","created_at":"2026-03-02T08:00:00Z","updated_at":"2026-03-02T08:05:00Z"}`

var exportRunning = exportJob("running", 1<<30, 100<<20, "2026-03-01T22:05:00Z", `"file":"web1-boot.qcow2",`)

var jobListJSON = `{"jobs":[` + exportRunning + `,` + exportFailedJSON + `,` + importDoneJSON + `]}`

// jobAPI returns a fake serving the job endpoints.
func jobAPI() *fakeAPI {
	return &fakeAPI{routes: map[string]reply{
		"GET /v1/jobs":             {body: jobListJSON},
		"GET /v1/jobs?kind=export": {body: `{"jobs":[` + exportRunning + `,` + exportFailedJSON + `]}`},
		jobGetPath:                 {body: exportRunning},
		"GET /v1/jobs/job-77aa":    {body: exportFailedJSON},
		"GET /v1/jobs/job-91c3":    {body: importDoneJSON},
		"GET /v1/jobs/nope":        {status: http.StatusNotFound, body: jobNotFound},
		jobCancelPath:              {body: exportJob("cancelled", 1<<30, 0, "2026-03-01T22:06:00Z", "")},
		"POST /v1/jobs/job-91c3/cancel": {status: http.StatusConflict,
			body: `{"error":{"code":"conflict","message":"job job-91c3 has ended (done)"}}`},
		"POST /v1/jobs/nope/cancel": {status: http.StatusNotFound, body: jobNotFound},
	}}
}

const jobListTable = `ID        KIND    STATE    NODE  WHAT                                          PROGRESS              RATE       UPDATED
job-8d1f  export  running  n1    snap-5f2a→backup:nightly/web1-before-upgrade  1 GiB / 4 GiB (25%)   100 MiB/s  2026-03-01 23:05:00 CET
job-77aa  export  failed   n2    snap-6a01→backup:db1-nightly.ova              1 GiB / 40 GiB (2%)   -          2026-03-02 02:30:00 CET
job-91c3  import  done     n2    backup:vmware/app.ova→app1                    2 GiB / 2 GiB (100%)  -          2026-03-02 09:05:00 CET
`

func TestJobList(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	fake := jobAPI()
	addr := startFake(t, p, fake)

	r := runCLI(t, append(flagsFor(p, addr), "job", "list")...)
	if r.code != 0 || r.stdout != jobListTable {
		t.Fatalf("job list: exit %d, stderr %q, stdout:\n%s\nwant:\n%s", r.code, r.stderr, r.stdout, jobListTable)
	}
	r = runCLI(t, append(flagsFor(p, addr), "job", "list", "-o", "json")...)
	if r.code != 0 {
		t.Fatalf("job list -o json: exit %d, stderr %q", r.code, r.stderr)
	}
	checkJSON[api.JobList](t, r.stdout, jobListJSON)

	// Filters go to the server, and are applied here too.
	for _, tc := range []struct {
		args  []string
		query string
		ids   []string
	}{
		{[]string{"--kind", "export"}, "?kind=export", []string{"job-8d1f", "job-77aa"}},
		{[]string{"--kind", "import", "--state", "done"}, "?kind=import&state=done", []string{"job-91c3"}},
		{[]string{"--state", "paused"}, "?state=paused", []string{}},
	} {
		fake := jobAPI()
		addr := startFake(t, p, fake)
		r = runCLI(t, append(append(flagsFor(p, addr), "job", "list", "-o", "json"), tc.args...)...)
		var l api.JobList
		if err := json.Unmarshal([]byte(r.stdout), &l); r.code != 0 || err != nil || l.Jobs == nil {
			t.Fatalf("job list %v: exit %d, stderr %q, stdout %q", tc.args, r.code, r.stderr, r.stdout)
		}
		ids := []string{}
		for _, j := range l.Jobs {
			ids = append(ids, j.ID)
		}
		if !slices.Equal(ids, tc.ids) {
			t.Fatalf("job list %v = %q, want %q", tc.args, ids, tc.ids)
		}
		if got, want := fake.seen(), []string{"GET /v1/jobs" + tc.query}; !slices.Equal(got, want) {
			t.Fatalf("job list %v sent %q, want %q", tc.args, got, want)
		}
	}
}

func TestJobShow(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	paused := exportJob("paused", 2<<30, 0, "2026-03-02T03:00:00Z",
		`"reason":"the maintenance window closed; it opens again at 2026-03-02T21:00:00Z","file":"web1-data.qcow2",`)
	fake := jobAPI()
	fake.routes[jobGetPath] = reply{body: paused}
	addr := startFake(t, p, fake)

	r := runCLI(t, append(flagsFor(p, addr), "job", "show", "job-8d1f")...)
	want := `ID:         job-8d1f
Kind:       export
State:      paused
Reason:     the maintenance window closed; it opens again at 2026-03-02T21:00:00Z
Node:       n1
Snapshot:   snap-5f2a
Share:      backup
Directory:  nightly
Package:    web1-before-upgrade (import with --path nightly/web1-before-upgrade/web1-before-upgrade.ovf)
Format:     qcow2
OVA:        no
Window:     22:00-04:00
Bandwidth:  50 MiB/s
Progress:   2 GiB / 4 GiB (50%)
Offset:     -
Rate:       -
File:       web1-data.qcow2
Creator:    admin
Created:    2026-03-01 13:00:00 CET
Updated:    2026-03-02 04:00:00 CET
`
	if r.code != 0 || r.stdout != want {
		t.Fatalf("job show paused: exit %d, stderr %q, stdout:\n%s\nwant:\n%s", r.code, r.stderr, r.stdout, want)
	}

	r = runCLI(t, append(flagsFor(p, addr), "job", "show", "job-77aa")...)
	for _, want := range []string{
		"State:      failed\nError:      share backup: disk full writing web1-data.vmdk\nNode:       n2\n",
		"Directory:  -\nPackage:    db1-nightly (import with --path db1-nightly.ova)\nFormat:     vmdk\nOVA:        yes\n",
		"Window:     -\nBandwidth:  none\nProgress:   1 GiB / 40 GiB (2%)\nOffset:     1 MiB\n",
	} {
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Fatalf("job show failed: exit %d, stderr %q, no %q in:\n%s", r.code, r.stderr, want, r.stdout)
		}
	}

	r = runCLI(t, append(flagsFor(p, addr), "job", "show", "job-91c3")...)
	want = `ID:         job-91c3
Kind:       import
State:      done
Node:       n2
Share:      backup
Path:       vmware/app.ova
VM:         app1 (vm-a11c)
Window:     -
Bandwidth:  none
Progress:   2 GiB / 2 GiB (100%)
Offset:     -
Rate:       -
File:       -
Creator:    admin
Created:    2026-03-02 09:00:00 CET
Updated:    2026-03-02 09:05:00 CET
`
	if r.code != 0 || r.stdout != want {
		t.Fatalf("job show import: exit %d, stderr %q, stdout:\n%s\nwant:\n%s", r.code, r.stderr, r.stdout, want)
	}

	for _, tc := range []struct{ id, canned string }{{"job-8d1f", paused}, {"job-77aa", exportFailedJSON}, {"job-91c3", importDoneJSON}} {
		r = runCLI(t, append(flagsFor(p, addr), "job", "show", tc.id, "-o", "json")...)
		if r.code != 0 {
			t.Fatalf("job show %s -o json: exit %d, stderr %q", tc.id, r.code, r.stderr)
		}
		checkJSON[api.Job](t, r.stdout, tc.canned)
	}

	r = runCLI(t, append(flagsFor(p, addr), "job", "show", "nope")...)
	if r.code != exitNotFound || !strings.Contains(r.stderr, "job nope does not exist") || !strings.Contains(r.stderr, "hint: "+hintJobList) {
		t.Fatalf("job show nope: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestJobCancel(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	for _, tc := range []struct {
		name   string
		setup  cliSetup
		args   []string
		code   int
		sent   []string
		stdout string
		stderr string
	}{
		{"yes flag", cliSetup{}, []string{"job-8d1f", "--yes"}, 0, []string{jobCancelPath}, "Cancelled job job-8d1f.\n", ""},
		{"confirmed on a terminal", cliSetup{terminal: true, stdin: "y\n"}, []string{"job-8d1f"}, 0,
			[]string{jobGetPath, jobCancelPath}, "Cancelled job job-8d1f.\n",
			"Cancel Export job job-8d1f of snapshot snap-5f2a to backup:nightly/web1-before-upgrade (running, 1 GiB / 4 GiB (25%))? [y/N]"},
		{"declined on a terminal", cliSetup{terminal: true, stdin: "n\n"}, []string{"job-8d1f"}, exitUsage, []string{jobGetPath}, "",
			"not confirmed"},
		{"not a terminal", cliSetup{stdin: "y\n"}, []string{"job-8d1f"}, exitUsage, nil, "", "--yes"},
		{"ended", cliSetup{}, []string{"job-91c3", "-y"}, exitConflict, []string{"POST /v1/jobs/job-91c3/cancel"}, "",
			"hint: only a job that has not ended can be cancelled: see 'twinsnap job show job-91c3'"},
		{"unknown", cliSetup{}, []string{"nope", "-y"}, exitNotFound, []string{"POST /v1/jobs/nope/cancel"}, "", "hint: " + hintJobList},
		{"unknown on a terminal", cliSetup{terminal: true, stdin: "y\n"}, []string{"nope"}, exitNotFound, []string{"GET /v1/jobs/nope"}, "",
			"hint: " + hintJobList},
	} {
		fake := jobAPI()
		addr := startFake(t, p, fake)
		r := runCLIWith(t, tc.setup, append(append(flagsFor(p, addr), "job", "cancel"), tc.args...)...)
		if r.code != tc.code || r.stdout != tc.stdout || !strings.Contains(r.stderr, tc.stderr) {
			t.Fatalf("%s: exit %d, want %d; stdout %q, stderr %q", tc.name, r.code, tc.code, r.stdout, r.stderr)
		}
		if got := fake.seen(); !slices.Equal(got, tc.sent) {
			t.Fatalf("%s: sent %q, want %q", tc.name, got, tc.sent)
		}
	}

	// A cancel that the node is still carrying out; JSON is the job.
	stopping := exportJob("running", 1<<30, 0, "2026-03-01T22:06:00Z", "")
	fake := jobAPI()
	fake.routes[jobCancelPath] = reply{body: stopping}
	addr := startFake(t, p, fake)
	r := runCLI(t, append(flagsFor(p, addr), "job", "cancel", "job-8d1f", "-y")...)
	if want := "Cancelling job job-8d1f: it is running and stops shortly (see 'twinsnap job wait job-8d1f').\n"; r.code != 0 || r.stdout != want {
		t.Fatalf("job cancel of a running job: exit %d, stdout %q, want %q", r.code, r.stdout, want)
	}
	r = runCLI(t, append(flagsFor(p, addr), "job", "cancel", "job-8d1f", "-y", "-o", "json")...)
	if r.code != 0 {
		t.Fatalf("job cancel -o json: exit %d, stderr %q", r.code, r.stderr)
	}
	checkJSON[api.Job](t, r.stdout, stopping)
}

// usageCase is a command line that must exit 2 with a message, sending
// nothing.
type usageCase struct {
	name string
	args []string
	want string
}

// checkUsageErrors runs each case against a fake that must get no
// request.
func checkUsageErrors(t *testing.T, cases []usageCase) {
	t.Helper()
	p := newTestPKI(t)
	fake := jobAPI()
	addr := startFake(t, p, fake)
	for _, tc := range cases {
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

// TestJobUsageErrors checks that bad flags and arguments of the job
// commands exit 2 before any request is sent.
func TestJobUsageErrors(t *testing.T) {
	t.Parallel()
	checkUsageErrors(t, []usageCase{
		{"list bad kind", []string{"job", "list", "--kind", "backup"}, `--kind "backup" is not export or import`},
		{"list bad state", []string{"job", "list", "--state", "complete"}, `--state "complete" is not one of queued, running, paused, done, failed, cancelled`},
		{"list with an argument", []string{"job", "list", "job-8d1f"}, "takes 0 argument"},
		{"show without ID", []string{"job", "show"}, "needs ID"},
		{"show empty ID", []string{"job", "show", ""}, "ID is empty"},
		{"cancel empty ID", []string{"job", "cancel", "", "-y"}, "ID is empty"},
		{"wait without ID", []string{"job", "wait"}, "needs ID"},
		{"wait empty ID", []string{"job", "wait", ""}, "ID is empty"},
		{"wait zero timeout", []string{"--timeout", "0s", "job", "wait", "job-8d1f"}, "--timeout must be positive"},
		{"unknown subcommand", []string{"job", "lsit"}, `did you mean "list"`},
	})
}

// TestJobWait waits for a job that exists: done at once, done later, as
// JSON when stdout is not a terminal and as a table otherwise or with
// --output table; an unknown job exits 5.
func TestJobWait(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)

	fake := jobAPI()
	fake.sequences = map[string][]reply{jobGetPath: {{body: exportRunning}, {body: exportDone}}}
	addr := startFake(t, p, fake)
	r := runCLI(t, append(flagsFor(p, addr), "job", "wait", "job-8d1f")...)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("job wait: exit %d, stderr %q", r.code, r.stderr)
	}
	checkJSON[api.Job](t, r.stdout, exportDone)
	if got, want := fake.seen(), []string{jobGetPath, jobGetPath}; !slices.Equal(got, want) {
		t.Fatalf("job wait sent %q, want %q", got, want)
	}

	addr = startFake(t, p, jobAPI())
	r = runCLI(t, append(flagsFor(p, addr), "job", "wait", "job-91c3", "-o", "table")...)
	if r.code != 0 || !strings.HasPrefix(r.stdout, "ID:         job-91c3\nKind:       import\nState:      done\n") {
		t.Fatalf("job wait -o table for a job done: exit %d, stderr %q, stdout %q", r.code, r.stderr, r.stdout)
	}
	r = runCLIWith(t, cliSetup{stdoutWidth: 200}, append(flagsFor(p, addr), "job", "wait", "job-91c3")...)
	if r.code != 0 || !strings.HasPrefix(r.stdout, "ID:         job-91c3\nKind:       import\nState:      done\n") {
		t.Fatalf("job wait on a terminal for a job done: exit %d, stdout %q", r.code, r.stdout)
	}
	r = runCLI(t, append(flagsFor(p, addr), "job", "wait", "job-77aa")...)
	if r.code != exitInternal || !strings.Contains(r.stderr, "twinsnap: Export job job-77aa of snapshot snap-6a01 to backup:db1-nightly.ova failed: share backup: disk full writing web1-data.vmdk\n") {
		t.Fatalf("job wait for a failed job: exit %d, stderr %q", r.code, r.stderr)
	}
	checkJSON[api.Job](t, r.stdout, exportFailedJSON)
	r = runCLI(t, append(flagsFor(p, addr), "job", "wait", "nope")...)
	if r.code != exitNotFound || !strings.Contains(r.stderr, "hint: "+hintJobList) || r.stdout != "" {
		t.Fatalf("job wait nope: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

// TestJobWaitEnds ends a wait by --timeout and by an interrupt: exit 8,
// the job goes on, the last state seen is printed.
func TestJobWaitEnds(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	addr := startFake(t, p, jobAPI())
	r := runCLI(t, append(flagsFor(p, addr), "--timeout", "2s", "job", "wait", "job-8d1f")...)
	if r.code != exitUnknownResult ||
		!strings.HasPrefix(r.stderr, "twinsnap: stopped waiting for job job-8d1f after --timeout 2s: it is running and goes on\n") ||
		!strings.Contains(r.stderr, "hint: follow it with 'twinsnap job wait job-8d1f' or 'twinsnap job show job-8d1f'") {
		t.Fatalf("wait timed out: exit %d, want %d; stderr %q", r.code, exitUnknownResult, r.stderr)
	}
	checkJSON[api.Job](t, r.stdout, exportRunning)

	var stdout, stderr bytes.Buffer
	env := &cliEnv{stdin: strings.NewReader(""), stdout: &stdout, stderr: &stderr,
		getenv: func(string) string { return "" }, stdinIsTerminal: func() bool { return false },
		location: testZone, pollInterval: testPoll}
	fake := jobAPI()
	addr = startFake(t, p, fake)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { // Ctrl-C once a poll has been answered (a second one is asked)
		for len(fake.seen()) < 3 {
			time.Sleep(5 * time.Millisecond)
		}
		cancel()
	}()
	code := run(ctx, append(flagsFor(p, addr), "job", "wait", "job-8d1f"), env)
	if code != exitUnknownResult ||
		!strings.HasPrefix(stderr.String(), "twinsnap: stopped waiting for job job-8d1f (interrupted): it is running and goes on\n") {
		t.Fatalf("wait interrupted: exit %d, want %d; stderr %q", code, exitUnknownResult, stderr.String())
	}
	checkJSON[api.Job](t, stdout.String(), exportRunning)
}

func TestProgressBar(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		done, total int64
		want        string
	}{
		{0, 100, "[>                   ]"},
		{5, 100, "[=>                  ]"},
		{50, 100, "[==========>         ]"},
		{99, 100, "[===================>]"},
		{100, 100, "[====================]"},
		{150, 100, "[====================]"},
		{-1, 100, "[>                   ]"},
		{5, 0, "[>                   ]"},
	} {
		if got := progressBar(tc.done, tc.total); got != tc.want {
			t.Fatalf("progressBar(%d, %d) = %q, want %q", tc.done, tc.total, got, tc.want)
		}
	}
}

func TestJobProgressLine(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		job      api.Job
		measured float64
		pollErr  error
		want     string
	}{
		{api.Job{State: "queued"}, 0, nil, "0 B  queued"},
		{api.Job{State: "running", Bytes: 3 << 20, Rate: 1 << 20, File: "a.qcow2"}, 0, nil, "3 MiB  1 MiB/s  running  a.qcow2"},
		{api.Job{State: "running", Bytes: 1 << 30, TotalBytes: 4 << 30}, 0, nil,
			"[=====>              ]  1 GiB / 4 GiB  25%  running"},
		{api.Job{State: "running", Bytes: 1 << 30, TotalBytes: 4 << 30}, 1 << 30, nil,
			"[=====>              ]  1 GiB / 4 GiB  25%  1 GiB/s  ETA 3s  running"},
		{api.Job{State: "paused", Bytes: 1 << 30, TotalBytes: 4 << 30, Rate: 5, Reason: "window closed"}, 1 << 30, nil,
			"[=====>              ]  1 GiB / 4 GiB  25%  paused: window closed"},
		{api.Job{State: "paused", Bytes: 1 << 30, TotalBytes: 4 << 30, Window: "22:00-04:00"}, 0, nil,
			"[=====>              ]  1 GiB / 4 GiB  25%  paused (window 22:00-04:00)"},
		{api.Job{State: "running", Bytes: 1 << 30, TotalBytes: 4 << 30, Reason: "moved from n1"}, 0, nil,
			"[=====>              ]  1 GiB / 4 GiB  25%  running (moved from n1)"},
		{api.Job{State: "failed", Bytes: 1 << 30, TotalBytes: 4 << 30, Error: "disk full", File: "a.qcow2"}, 0, nil,
			"[=====>              ]  1 GiB / 4 GiB  25%  failed: disk full"},
		{api.Job{State: "running", Bytes: 1 << 30, TotalBytes: 4 << 30}, 0, api.ErrUnavailable,
			"[=====>              ]  1 GiB / 4 GiB  25%  running  (retrying: unavailable)"},
	} {
		if got := jobProgressLine(&tc.job, tc.measured, tc.pollErr, true); got != tc.want {
			t.Fatalf("jobProgressLine(%+v, %v) =\n%q, want\n%q", tc.job, tc.measured, got, tc.want)
		}
		noBar := tc.want
		if i := strings.Index(noBar, "]  "); i >= 0 {
			noBar = noBar[i+3:]
		}
		if got := jobProgressLine(&tc.job, tc.measured, tc.pollErr, false); got != noBar {
			t.Fatalf("jobProgressLine(%+v, %v) without a bar =\n%q, want\n%q", tc.job, tc.measured, got, noBar)
		}
	}
}
