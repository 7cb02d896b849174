package main

import (
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/twinsnap/twinsnap/internal/api"
)

const exportPath = "POST /v1/snapshots/snap-5f2a/export"

// exportQueued is job-8d1f as POST /v1/snapshots/snap-5f2a/export
// accepts it.
var exportQueued = exportJob("queued", 0, 0, "2026-03-01T12:00:00Z", "")

// exportAPI returns a fake that accepts exports of snap-5f2a and serves
// job-8d1f: running, done.
func exportAPI() *fakeAPI {
	f := jobAPI()
	f.routes[exportPath] = reply{status: http.StatusCreated, body: exportQueued}
	f.routes["POST /v1/snapshots/snap-6a01/export"] = reply{status: http.StatusConflict,
		body: `{"error":{"code":"conflict","message":"snapshot snap-6a01 is partial, not complete"}}`}
	f.routes["POST /v1/snapshots/nope/export"] = reply{status: http.StatusNotFound, body: snapNotFound}
	f.sequences = map[string][]reply{jobGetPath: {{body: exportRunning}, {body: exportDone}}}
	return f
}

const exportQueuedTable = `ID:         job-8d1f
Kind:       export
State:      queued
Node:       n1
Snapshot:   snap-5f2a
Share:      backup
Directory:  nightly
Package:    web1-before-upgrade (import with --path nightly/web1-before-upgrade/web1-before-upgrade.ovf)
Format:     qcow2
OVA:        no
Window:     22:00-04:00
Bandwidth:  50 MiB/s
Progress:   0 B / 4 GiB (0%)
Offset:     -
Rate:       -
File:       -
Creator:    admin
Created:    2026-03-01 13:00:00 CET
Updated:    2026-03-01 13:00:00 CET
`

// TestSnapshotExport starts an export without waiting: one request, the
// job printed as accepted.
func TestSnapshotExport(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	fake := exportAPI()
	addr := startFake(t, p, fake)

	r := runCLI(t, append(flagsFor(p, addr), "snapshot", "export", "snap-5f2a", "--share", "backup")...)
	if r.code != 0 || r.stdout != exportQueuedTable {
		t.Fatalf("snapshot export: exit %d, stderr %q, stdout:\n%s\nwant:\n%s", r.code, r.stderr, r.stdout, exportQueuedTable)
	}
	r = runCLI(t, append(flagsFor(p, addr), "snapshot", "export", "snap-5f2a", "--share", "backup", "-o", "json")...)
	if r.code != 0 {
		t.Fatalf("snapshot export -o json: exit %d, stderr %q", r.code, r.stderr)
	}
	checkJSON[api.Job](t, r.stdout, exportQueued)
	want := []string{exportPath + ` {"share":"backup"}`, exportPath + ` {"share":"backup"}`}
	if got := fake.seen(); !slices.Equal(got, want) {
		t.Fatalf("snapshot export sent %q, want %q", got, want)
	}

	for _, tc := range []struct {
		snapshot string
		code     int
		hint     string
	}{
		{"snap-6a01", exitConflict, "hint: only a complete snapshot can be exported ('twinsnap snapshot show snap-6a01')"},
		{"nope", exitNotFound, "hint: check the snapshot ('twinsnap snapshot list') and the share ('twinsnap share list')"},
	} {
		r = runCLI(t, append(flagsFor(p, addr), "snapshot", "export", tc.snapshot, "--share", "backup", "--wait")...)
		if r.code != tc.code || !strings.Contains(r.stderr, tc.hint) || r.stdout != "" {
			t.Fatalf("export of %s: exit %d, want %d; stdout %q, stderr %q", tc.snapshot, r.code, tc.code, r.stdout, r.stderr)
		}
	}
}

// TestSnapshotExportRequest checks that every flag reaches the request
// the server receives.
func TestSnapshotExportRequest(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	for _, tc := range []struct {
		name string
		args []string
		body string
	}{
		{"defaults", nil, `{"share":"backup"}`},
		{"every flag", []string{"--dir", "nightly/web", "--package", "web1-before-upgrade", "--format", "vmdk", "--ova",
			"--volumes", "boot,data", "--window", "22:00-04:00", "--days", "mon-fri", "--tz", "Europe/Berlin",
			"--bwlimit", "50MiB/s", "--node", "n2"},
			`{"share":"backup","dir":"nightly/web","package":"web1-before-upgrade","format":"vmdk","ova":true,` +
				`"volumes":["boot","data"],"window":"22:00-04:00","days":"mon-fri","location":"Europe/Berlin",` +
				`"bandwidth_bytes":52428800,"node":"n2"}`},
		{"qcow2, seconds in the window, plain bytes", []string{"--format", "qcow2", "--window", "21:30:15-23:59:59", "--bwlimit", "1048576"},
			`{"share":"backup","format":"qcow2","window":"21:30:15-23:59:59","bandwidth_bytes":1048576}`},
		{"repeated volumes", []string{"--volumes", "boot", "--volumes", "logs"}, `{"share":"backup","volumes":["boot","logs"]}`},
	} {
		fake := exportAPI()
		addr := startFake(t, p, fake)
		r := runCLI(t, append(append(flagsFor(p, addr), "snapshot", "export", "snap-5f2a", "--share", "backup"), tc.args...)...)
		if r.code != 0 {
			t.Fatalf("%s: exit %d, stderr %q", tc.name, r.code, r.stderr)
		}
		if got, want := fake.seen(), []string{exportPath + " " + tc.body}; !slices.Equal(got, want) {
			t.Fatalf("%s: sent\n%q\nwant\n%q", tc.name, got, want)
		}
	}
}

// TestParseBandwidth checks the rates --bwlimit accepts and refuses.
func TestParseBandwidth(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"50MiB/s", 50 << 20},
		{"800KiB/s", 800 << 10},
		{"1GiB/s", 1 << 30},
		{"1048576", 1 << 20},
		{"1048576/s", 1 << 20},
		{"64MiB", 64 << 20},
		{"1.5MiB/s", 3 << 19},
		{"2 mib/s", 2 << 20},
		{"1TiB/s", 1 << 40},
	} {
		got, err := parseBandwidth(tc.in)
		if err != nil || got != tc.want {
			t.Fatalf("parseBandwidth(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{"", "is not a rate"},
		{"fast", "is not a rate"},
		{"/s", "is not a rate"},
		{"50MiB/h", "is not a rate"},
		{"50MiB/s/s", "is not a rate"},
		{"10Mbit/s", "is not a rate"},
		{"-5MiB/s", "is not a rate"},
		{"1e6", "is not a rate"},
		{"50 MiB / s", "is not a rate"},
		{"50MB/s", `unit "MB" is ambiguous`},
		{"1G/s", `unit "G" is ambiguous`},
		{"0", "must be positive"},
		{"0MiB/s", "must be positive"},
		{"0.5/s", "not a whole number of bytes"},
		{"9EiB/s", "is not a rate"},
		{"8388608TiB/s", "too large"},
	} {
		_, err := parseBandwidth(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) || exitCode(err) != exitUsage {
			t.Fatalf("parseBandwidth(%q) = %v, want a usage error mentioning %q", tc.in, err, tc.want)
		}
	}
}

// TestCheckWindowForm checks the form of --window, which the server
// checks fully.
func TestCheckWindowForm(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{"22:00-04:00", "00:00-24:00", "08:30-17:45", "22:00:30-04:00:00", "23:59:59-00:00"} {
		if err := checkWindowForm(ok); err != nil {
			t.Fatalf("checkWindowForm(%q) = %v", ok, err)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{"22:00", "is not START-END"},
		{"22-04", `"22" is not HH:MM or HH:MM:SS`},
		{"2200-0400", `"2200" is not HH:MM or HH:MM:SS`},
		{"22:00-4:00", `"4" is not two digits`},
		{"25:00-04:00", "hour 25 is not 00-24"},
		{"22:60-04:00", "minute 60 is not 00-59"},
		{"22:00:61-04:00", "second 61 is not 00-59"},
		{"22:00-04:00-05:00", "is not two digits"},
		{"22:00:00:00-04:00", "is not HH:MM or HH:MM:SS"},
		{"ab:cd-04:00", "is not two digits"},
		{"-", "is not HH:MM or HH:MM:SS"},
	} {
		err := checkWindowForm(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) || exitCode(err) != exitUsage {
			t.Fatalf("checkWindowForm(%q) = %v, want a usage error mentioning %q", tc.in, err, tc.want)
		}
	}
}

// TestSnapshotExportWait waits for an export: not on a terminal, nothing
// until the end, then JSON of the final job, or a table with --output
// table.
func TestSnapshotExportWait(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	fake := exportAPI()
	addr := startFake(t, p, fake)
	r := runCLI(t, append(flagsFor(p, addr), "snapshot", "export", "snap-5f2a", "--share", "backup", "--wait")...)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("snapshot export --wait: exit %d, stderr %q", r.code, r.stderr)
	}
	checkJSON[api.Job](t, r.stdout, exportDone)
	want := []string{exportPath + ` {"share":"backup"}`, jobGetPath, jobGetPath}
	if got := fake.seen(); !slices.Equal(got, want) {
		t.Fatalf("snapshot export --wait sent %q, want %q", got, want)
	}

	addr = startFake(t, p, exportAPI())
	r = runCLI(t, append(flagsFor(p, addr), "snapshot", "export", "snap-5f2a", "--share", "backup", "--wait", "-o", "table")...)
	if r.code != 0 || !strings.HasPrefix(r.stdout, "ID:         job-8d1f\nKind:       export\nState:      done\n") {
		t.Fatalf("snapshot export --wait -o table: exit %d, stderr %q, stdout %q", r.code, r.stderr, r.stdout)
	}
}

// TestSnapshotExportWaitFails ends waits with the job failed and
// cancelled: exit 1 with the error, the job printed.
func TestSnapshotExportWaitFails(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	failed := exportJob("failed", 1<<30, 0, "2026-03-01T22:10:00Z", `"error":"share backup: STATUS_DISK_FULL writing web1-data.qcow2",`)
	cancelled := exportJob("cancelled", 1<<30, 0, "2026-03-01T22:10:00Z", "")
	for _, tc := range []struct {
		name, final, stderr, hint string
	}{
		{"failed", failed,
			"twinsnap: Export job job-8d1f of snapshot snap-5f2a to backup:nightly/web1-before-upgrade failed: share backup: STATUS_DISK_FULL writing web1-data.qcow2\n",
			"hint: see 'twinsnap job show job-8d1f'; the log of twinsnapd on n1 says more; start a new export when the cause is dealt with\n"},
		{"cancelled", cancelled,
			"twinsnap: Export job job-8d1f of snapshot snap-5f2a to backup:nightly/web1-before-upgrade was cancelled\n",
			"hint: see 'twinsnap job show job-8d1f'\n"},
	} {
		fake := exportAPI()
		fake.sequences[jobGetPath] = []reply{{body: exportRunning}, {body: tc.final}}
		addr := startFake(t, p, fake)
		r := runCLI(t, append(flagsFor(p, addr), "snapshot", "export", "snap-5f2a", "--share", "backup", "--wait")...)
		if r.code != exitInternal || r.stderr != tc.stderr+tc.hint {
			t.Fatalf("%s: exit %d, want %d; stderr %q, want %q", tc.name, r.code, exitInternal, r.stderr, tc.stderr+tc.hint)
		}
		checkJSON[api.Job](t, r.stdout, tc.final)
	}
}

// TestSnapshotExportWaitTerminal follows an export on a terminal from
// queued through running, paused at the window's end, running again in
// the next window, to done: the progress line redrawn in place, then the
// line cleared for the final job as a table.
func TestSnapshotExportWaitTerminal(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	fake := exportAPI()
	fake.sequences[jobGetPath] = []reply{
		{body: exportJob("running", 1<<30, 100<<20, "2026-03-01T22:05:00Z", `"file":"web1-boot.qcow2",`)},
		{body: exportJob("paused", 2<<30, 0, "2026-03-02T03:00:00Z",
			`"reason":"the maintenance window closed; it opens again at 2026-03-02T21:00:00Z","file":"web1-data.qcow2",`)},
		// Running again: no rate reported, one sample since the pause.
		{body: exportJob("running", 3<<30, 0, "2026-03-02T21:00:10Z", `"file":"web1-data.qcow2",`)},
		// 512 MiB in 10 s: 51.2 MiB/s worked out here, 10 s to go.
		{body: exportJob("running", 7<<29, 0, "2026-03-02T21:00:20Z", `"file":"web1-data.qcow2",`)},
		{body: exportDone},
	}
	addr := startFake(t, p, fake)
	r := runCLIWith(t, cliSetup{stdoutWidth: 200}, append(flagsFor(p, addr), "snapshot", "export", "snap-5f2a", "--share", "backup",
		"--window", "22:00-04:00", "--bwlimit", "50MiB/s", "--wait")...)
	if r.code != 0 {
		t.Fatalf("snapshot export --wait on a terminal: exit %d, stderr %q", r.code, r.stderr)
	}
	doneTable := strings.NewReplacer("State:      queued", "State:      done",
		"Progress:   0 B / 4 GiB (0%)", "Progress:   4 GiB / 4 GiB (100%)",
		"Updated:    2026-03-01 13:00:00 CET", "Updated:    2026-03-02 22:10:00 CET").Replace(exportQueuedTable)
	want := "Export job job-8d1f of snapshot snap-5f2a to backup:nightly/web1-before-upgrade is queued; waiting until it ends (Ctrl-C stops waiting, the job goes on).\n" +
		"\r[>                   ]  0 B / 4 GiB  0%  queued\x1b[K" +
		"\r[=====>              ]  1 GiB / 4 GiB  25%  100 MiB/s  ETA 31s  running  web1-boot.qcow2\x1b[K" +
		"\r[==========>         ]  2 GiB / 4 GiB  50%  paused: the maintenance window closed; it opens again at 2026-03-02T21:00:00Z (window 22:00-04:00)  web1-data.qcow2\x1b[K" +
		"\r[===============>    ]  3 GiB / 4 GiB  75%  running  web1-data.qcow2\x1b[K" +
		"\r[=================>  ]  3.5 GiB / 4 GiB  87%  51.2 MiB/s  ETA 10s  running  web1-data.qcow2\x1b[K" +
		"\r[====================]  4 GiB / 4 GiB  100%  done\x1b[K" +
		"\r\x1b[K" + doneTable
	if r.stdout != want {
		t.Fatalf("snapshot export --wait on a terminal:\n%q\nwant:\n%q", r.stdout, want)
	}

	// A narrow terminal: no bar, and the line is cut to fit.
	r = runCLIWith(t, cliSetup{stdoutWidth: 40}, append(flagsFor(p, startFake(t, p, exportAPI())),
		"snapshot", "export", "snap-5f2a", "--share", "backup", "--wait", "-o", "json")...)
	if r.code != 0 || !strings.Contains(r.stdout, "\r1 GiB / 4 GiB  25%  100 MiB/s  ETA 31s…\x1b[K") {
		t.Fatalf("snapshot export --wait on a narrow terminal: exit %d, stdout %q", r.code, r.stdout)
	}
}

// TestSnapshotExportWaitRetries keeps waiting through polls that fail for
// want of a leader.
func TestSnapshotExportWaitRetries(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	fake := exportAPI()
	fake.sequences[jobGetPath] = []reply{
		{status: http.StatusServiceUnavailable, body: `{"error":{"code":"unavailable","message":"no leader"}}`},
		{body: exportDone},
	}
	addr := startFake(t, p, fake)
	r := runCLIWith(t, cliSetup{stdoutWidth: 200}, append(flagsFor(p, addr), "snapshot", "export", "snap-5f2a", "--share", "backup", "--wait")...)
	if r.code != 0 || !strings.Contains(r.stdout, "\r[>                   ]  0 B / 4 GiB  0%  queued  (retrying: no leader)\x1b[K") {
		t.Fatalf("snapshot export --wait through a failover: exit %d, stderr %q, stdout %q", r.code, r.stderr, r.stdout)
	}
}

// TestSnapshotExportUsageErrors checks that bad flags and arguments exit
// 2 before any request is sent.
func TestSnapshotExportUsageErrors(t *testing.T) {
	t.Parallel()
	exp := []string{"snapshot", "export", "snap-5f2a", "--share", "backup"}
	checkUsageErrors(t, []usageCase{
		{"without snapshot", []string{"snapshot", "export", "--share", "backup"}, "needs SNAPSHOT"},
		{"empty snapshot", []string{"snapshot", "export", "", "--share", "backup"}, "snapshot ID is empty"},
		{"without share", []string{"snapshot", "export", "snap-5f2a"}, "--share is required"},
		{"bad format", append(exp, "--format", "raw"), `--format "raw" is not qcow2 or vmdk`},
		{"empty volume", append(exp, "--volumes", "boot,"), "empty name"},
		{"days without window", append(exp, "--days", "mon-fri"), "give --window too"},
		{"tz without window", append(exp, "--tz", "Europe/Berlin"), "give --window too"},
		{"bad window", append(exp, "--window", "22-04"), `--window "22-04"`},
		{"bad bwlimit", append(exp, "--bwlimit", "fast"), `--bwlimit "fast" is not a rate`},
		{"ambiguous bwlimit", append(exp, "--bwlimit", "50MB/s"), `unit "MB" is ambiguous`},
		{"bad output", append(exp, "-o", "yaml"), "not table or json"},
		{"zero timeout", append([]string{"--timeout", "0s"}, append(exp, "--wait")...), "--timeout must be positive"},
	})
}
