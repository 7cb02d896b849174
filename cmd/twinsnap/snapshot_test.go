package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/internal/api"
)

// Checksums of the canned snapshot's images.
const (
	shaBoot = "b007b007b007b007b007b007b007b007b007b007b007b007b007b007b007b007"
	shaData = "da7ada7ada7ada7ada7ada7ada7ada7ada7ada7ada7ada7ada7ada7ada7ada7a"
)

// snapCreatingJSON is snap-5f2a as POST /v1/snapshots accepts it.
const snapCreatingJSON = `{"id":"snap-5f2a","vm_id":"vm-7c1e","vm_name":"web1","name":"before-upgrade","creator":"admin",
 "state":"creating","desired":"application","required":"crash","coordinator":"n1","term":7,
 "volumes":[
  {"volume_id":"vol-7c1e-0","name":"boot","boot":true,"full_reason":"first snapshot of the volume","estimated_bytes":21474836480},
  {"volume_id":"vol-7c1e-1","name":"data","parent_id":"snap-41c0","estimated_bytes":5368709120}],
 "stored_bytes":0,"created_at":"2026-03-01T10:00:00Z"}`

// snapPartialJSON is snap-5f2a captured on n1 and replicating to n2, with
// done bytes and the coordinator's time to fill in.
const snapPartialJSON = `{"id":"snap-5f2a","vm_id":"vm-7c1e","vm_name":"web1","name":"before-upgrade","creator":"admin",
 "state":"partial","desired":"application","required":"crash","achieved":"application","coordinator":"n1","term":7,
 "volumes":[
  {"volume_id":"vol-7c1e-0","name":"boot","boot":true,"full_reason":"first snapshot of the volume","estimated_bytes":21474836480,
   "size_bytes":21474836480,"stored_bytes":3221225472,"sha256":"` + shaBoot + `"},
  {"volume_id":"vol-7c1e-1","name":"data","parent_id":"snap-41c0","estimated_bytes":5368709120,
   "size_bytes":107374182400,"stored_bytes":1073741824,"sha256":"` + shaData + `"}],
 "replicas":[{"node":"n1","verified":true,"at":"2026-03-01T10:00:40Z","volumes":[
   {"volume_id":"vol-7c1e-0","size_bytes":21474836480,"stored_bytes":3221225472,"sha256":"` + shaBoot + `"},
   {"volume_id":"vol-7c1e-1","size_bytes":107374182400,"stored_bytes":1073741824,"sha256":"` + shaData + `"}]}],
 "config_kind":"qemu-launch-spec","stored_bytes":4294967296,
 "created_at":"2026-03-01T10:00:00Z","captured_at":"2026-03-01T10:00:40Z",
 "progress":{"phase":"replicate","node":"n1","bytes_done":DONE,"bytes_total":4294967296,"detail":"volume data","updated_at":"AT"}}`

// snapCompleteJSON is snap-5f2a with both replicas verified.
const snapCompleteJSON = `{"id":"snap-5f2a","vm_id":"vm-7c1e","vm_name":"web1","name":"before-upgrade",
 "description":"before the 2.4 upgrade","creator":"admin",
 "state":"complete","desired":"application","required":"crash","achieved":"application","coordinator":"n1","term":7,
 "volumes":[
  {"volume_id":"vol-7c1e-0","name":"boot","boot":true,"full_reason":"first snapshot of the volume","estimated_bytes":21474836480,
   "size_bytes":21474836480,"stored_bytes":3221225472,"sha256":"` + shaBoot + `"},
  {"volume_id":"vol-7c1e-1","name":"data","parent_id":"snap-41c0","estimated_bytes":5368709120,
   "size_bytes":107374182400,"stored_bytes":1073741824,"sha256":"` + shaData + `"}],
 "replicas":[
  {"node":"n1","verified":true,"at":"2026-03-01T10:00:40Z","volumes":[
   {"volume_id":"vol-7c1e-0","size_bytes":21474836480,"stored_bytes":3221225472,"sha256":"` + shaBoot + `"},
   {"volume_id":"vol-7c1e-1","size_bytes":107374182400,"stored_bytes":1073741824,"sha256":"` + shaData + `"}]},
  {"node":"n2","verified":true,"at":"2026-03-01T10:02:05Z","volumes":[
   {"volume_id":"vol-7c1e-0","size_bytes":21474836480,"stored_bytes":3221225472,"sha256":"` + shaBoot + `"},
   {"volume_id":"vol-7c1e-1","size_bytes":107374182400,"stored_bytes":1073741824,"sha256":"` + shaData + `"}]}],
 "config_kind":"qemu-launch-spec","stored_bytes":4294967296,
 "created_at":"2026-03-01T10:00:00Z","captured_at":"2026-03-01T10:00:40Z","completed_at":"2026-03-01T10:02:05Z"}`

// snapDiscardedJSON is a snapshot of db1 discarded by a failover.
const snapDiscardedJSON = `{"id":"snap-3c09","vm_id":"vm-b20d","vm_name":"db1","name":"db1","creator":"admin",
 "state":"discarded","desired":"application","required":"crash","coordinator":"n2","term":6,
 "volumes":[{"volume_id":"vol-b20d-0","name":"vda","boot":true,"full_reason":"first snapshot of the volume","estimated_bytes":42949672960}],
 "stored_bytes":0,"created_at":"2026-03-01T10:30:00Z",
 "discard":{"by":"n1","reason":"node n2 lost during capture (term 6 ended)","at":"2026-03-01T10:31:00Z"},"reclaim":["n2"]}`

// snapPartialDBJSON is a crash-consistent snapshot of db1 with one replica.
const snapPartialDBJSON = `{"id":"snap-6a01","vm_id":"vm-b20d","vm_name":"db1","name":"nightly","creator":"admin",
 "state":"partial","desired":"crash","required":"crash","achieved":"crash","coordinator":"n2","term":7,
 "volumes":[{"volume_id":"vol-b20d-0","name":"vda","boot":true,"full_reason":"first snapshot of the volume",
   "estimated_bytes":42949672960,"size_bytes":42949672960,"stored_bytes":42949672960,"sha256":"` + shaData + `"}],
 "replicas":[{"node":"n2","verified":true,"at":"2026-03-02T00:20:00Z","volumes":[
   {"volume_id":"vol-b20d-0","size_bytes":42949672960,"stored_bytes":42949672960,"sha256":"` + shaData + `"}]},
  {"node":"n1","verified":false,"at":"0001-01-01T00:00:00Z","volumes":[]}],
 "stored_bytes":42949672960,"created_at":"2026-03-02T00:15:00Z","captured_at":"2026-03-02T00:20:00Z"}`

// partialAt returns snapPartialJSON with done bytes reported at a time.
func partialAt(done, at string) string {
	return strings.NewReplacer("DONE", done, "AT", at).Replace(snapPartialJSON)
}

const (
	snapListJSON   = `{"snapshots":[` + snapCompleteJSON + `,` + snapDiscardedJSON + `,` + snapPartialDBJSON + `,` + snapCreatingJSON2 + `]}`
	snapNotFound   = `{"error":{"code":"not_found","message":"snapshot nope does not exist"}}`
	snapGetPath    = "GET /v1/snapshots/snap-5f2a"
	snapCreatePath = "POST /v1/snapshots"
)

// snapCreatingJSON2 is a second snapshot of web1, just accepted.
const snapCreatingJSON2 = `{"id":"snap-6b77","vm_id":"vm-7c1e","vm_name":"web1","name":"web1","creator":"admin",
 "state":"creating","desired":"application","required":"crash","coordinator":"n1","term":7,
 "volumes":[
  {"volume_id":"vol-7c1e-0","name":"boot","boot":true,"parent_id":"snap-5f2a","estimated_bytes":1073741824},
  {"volume_id":"vol-7c1e-1","name":"data","parent_id":"snap-5f2a","estimated_bytes":1073741824},
  {"volume_id":"vol-7c1e-2","name":"logs","full_reason":"first snapshot of the volume","estimated_bytes":1610612736}],
 "stored_bytes":0,"created_at":"2026-03-02T07:00:00Z"}`

// snapAPI returns a fake serving the snapshot endpoints; GET of snap-5f2a
// walks it from partial to complete.
func snapAPI() *fakeAPI {
	f := &fakeAPI{
		routes: map[string]reply{
			snapCreatePath:                   {status: http.StatusCreated, body: snapCreatingJSON},
			"GET /v1/snapshots":              {body: snapListJSON},
			"GET /v1/snapshots/snap-3c09":    {body: snapDiscardedJSON},
			"GET /v1/snapshots/nope":         {status: http.StatusNotFound, body: snapNotFound},
			"DELETE /v1/snapshots/nope":      {status: http.StatusNotFound, body: snapNotFound},
			"DELETE /v1/snapshots/snap-6a01": {status: http.StatusConflict, body: `{"error":{"code":"conflict","message":"invalid state transition: snapshot snap-6a01 is partial"}}`},
			"GET /v1/vms/vm-b20d":            {body: vmDBJSON},
		},
		sequences: map[string][]reply{
			snapGetPath: {
				{body: partialAt("1073741824", "2026-03-01T10:01:00Z")},
				{body: partialAt("2147483648", "2026-03-01T10:01:10Z")},
				{body: snapCompleteJSON},
			},
		},
	}
	for k, v := range vmAPI().routes {
		f.routes[k] = v
	}
	return f
}

const snapCompleteTable = `ID:           snap-5f2a
Name:         before-upgrade
Description:  before the 2.4 upgrade
VM:           web1 (vm-7c1e)
State:        complete
Consistency:  application (desired application, required crash)
Creator:      admin
Coordinator:  n1 (term 7)
Config:       qemu-launch-spec
UEFI vars:    -
Stored:       4 GiB
Created:      2026-03-01 11:00:00 CET
Captured:     2026-03-01 11:00:40 CET
Completed:    2026-03-01 11:02:05 CET

VOLUME  ID          BOOT  PARENT     FULL REASON                   SIZE     ESTIMATED  STORED  SHA256
boot    vol-7c1e-0  yes   -          first snapshot of the volume  20 GiB   20 GiB     3 GiB   ` + shaBoot + `
data    vol-7c1e-1  no    snap-41c0  -                             100 GiB  5 GiB      1 GiB   ` + shaData + `

NODE  VERIFIED  AT                       STORED  CHECKSUMS
n1    yes       2026-03-01 11:00:40 CET  4 GiB   match
n2    yes       2026-03-01 11:02:05 CET  4 GiB   match
`

func TestSnapshotList(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	fake := snapAPI()
	addr := startFake(t, p, fake)

	r := runCLI(t, append(flagsFor(p, addr), "snapshot", "list")...)
	want := `ID         VM    NAME            STATE      CONSISTENCY  VOLUMES    STORED  REPLICAS  CREATED
snap-5f2a  web1  before-upgrade  complete   application  2 +1 incr  4 GiB   2/2       2026-03-01 11:00:00 CET
snap-3c09  db1   db1             discarded  -            1          -       0/2       2026-03-01 11:30:00 CET
snap-6a01  db1   nightly         partial    crash        1          40 GiB  1/2       2026-03-02 01:15:00 CET
snap-6b77  web1  web1            creating   -            3 +2 incr  -       0/2       2026-03-02 08:00:00 CET
`
	if r.code != 0 || r.stdout != want {
		t.Fatalf("snapshot list: exit %d, stderr %q, stdout:\n%s\nwant:\n%s", r.code, r.stderr, r.stdout, want)
	}

	r = runCLI(t, append(flagsFor(p, addr), "snapshot", "list", "-o", "json")...)
	if r.code != 0 {
		t.Fatalf("snapshot list -o json: exit %d, stderr %q", r.code, r.stderr)
	}
	checkJSON[api.SnapshotList](t, r.stdout, snapListJSON)
	for _, state := range snapshotStates {
		if !strings.Contains(r.stdout, `"state": "`+state+`"`) && state != api.StateDeleting {
			t.Fatalf("snapshot list -o json: no state %q in:\n%s", state, r.stdout)
		}
	}

	// Filters: --vm by name or id, resolved through the VM; --state.
	for _, tc := range []struct {
		args []string
		ids  []string
	}{
		{[]string{"--vm", "web1"}, []string{"snap-5f2a", "snap-6b77"}},
		{[]string{"--vm", "vm-b20d"}, []string{"snap-3c09", "snap-6a01"}},
		{[]string{"--vm", "web1", "--state", "complete"}, []string{"snap-5f2a"}},
		{[]string{"--state", "partial"}, []string{"snap-6a01"}},
		{[]string{"--state", "deleting"}, nil},
	} {
		r = runCLI(t, append(append(flagsFor(p, addr), "snapshot", "list", "-o", "json"), tc.args...)...)
		var l api.SnapshotList
		if err := json.Unmarshal([]byte(r.stdout), &l); r.code != 0 || err != nil || l.Snapshots == nil {
			t.Fatalf("snapshot list %v: exit %d, stderr %q, stdout %q", tc.args, r.code, r.stderr, r.stdout)
		}
		var ids []string
		for _, s := range l.Snapshots {
			ids = append(ids, s.ID)
		}
		if !slices.Equal(ids, tc.ids) {
			t.Fatalf("snapshot list %v = %q, want %q", tc.args, ids, tc.ids)
		}
	}
	r = runCLI(t, append(flagsFor(p, addr), "snapshot", "list", "--vm", "nope")...)
	if r.code != exitNotFound || !strings.Contains(r.stderr, "hint: "+hintVMList) {
		t.Fatalf("snapshot list --vm nope: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestSnapshotListEmpty(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	addr := startFake(t, p, &fakeAPI{routes: map[string]reply{"GET /v1/snapshots": {body: `{"snapshots":null}`}}})
	r := runCLI(t, append(flagsFor(p, addr), "snapshot", "list", "-o", "json")...)
	if r.code != 0 || r.stdout != "{\n  \"snapshots\": []\n}\n" {
		t.Fatalf("empty snapshot list: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestSnapshotShow(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	addr := startFake(t, p, &fakeAPI{routes: map[string]reply{
		snapGetPath:                   {body: snapCompleteJSON},
		"GET /v1/snapshots/snap-3c09": {body: snapDiscardedJSON},
		"GET /v1/snapshots/snap-6a01": {body: snapPartialDBJSON},
		"GET /v1/snapshots/snap-p":    {body: partialAt("1073741824", "2026-03-01T10:01:00Z")},
	}})

	r := runCLI(t, append(flagsFor(p, addr), "snapshot", "show", "snap-5f2a")...)
	if r.code != 0 || r.stdout != snapCompleteTable {
		t.Fatalf("snapshot show: exit %d, stderr %q, stdout:\n%s\nwant:\n%s", r.code, r.stderr, r.stdout, snapCompleteTable)
	}

	r = runCLI(t, append(flagsFor(p, addr), "snapshot", "show", "snap-3c09")...)
	for _, want := range []string{
		"State:        discarded\n",
		"Consistency:  - (desired application, required crash)\n",
		"Discarded:    2026-03-01 11:31:00 CET by n1: node n2 lost during capture (term 6 ended)\n",
		"Reclaim:      pending on n2\n",
		"\nNo replica yet.\n",
	} {
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Fatalf("snapshot show discarded: exit %d, stderr %q, no %q in:\n%s", r.code, r.stderr, want, r.stdout)
		}
	}

	r = runCLI(t, append(flagsFor(p, addr), "snapshot", "show", "snap-p")...)
	want := "Progress:     replicate on n1: 1 GiB / 4 GiB (25%) (volume data), updated 2026-03-01 11:01:00 CET\n"
	if r.code != 0 || !strings.Contains(r.stdout, want) {
		t.Fatalf("snapshot show partial: exit %d, stderr %q, no %q in:\n%s", r.code, r.stderr, want, r.stdout)
	}

	r = runCLI(t, append(flagsFor(p, addr), "snapshot", "show", "snap-6a01")...)
	want = "n2    yes       2026-03-02 01:20:00 CET  40 GiB  match\nn1    no        -                        -       -\n"
	if r.code != 0 || !strings.Contains(r.stdout, want) {
		t.Fatalf("snapshot show with an unverified replica: exit %d, stderr %q, no %q in:\n%s", r.code, r.stderr, want, r.stdout)
	}

	for _, tc := range []struct{ id, canned string }{
		{"snap-5f2a", snapCompleteJSON}, {"snap-3c09", snapDiscardedJSON}, {"snap-6a01", snapPartialDBJSON},
	} {
		r = runCLI(t, append(flagsFor(p, addr), "snapshot", "show", tc.id, "-o", "json")...)
		if r.code != 0 {
			t.Fatalf("snapshot show %s -o json: exit %d, stderr %q", tc.id, r.code, r.stderr)
		}
		checkJSON[api.Snapshot](t, r.stdout, tc.canned)
	}
}

// TestReplicaChecksums compares replicas' checksums with the capture's.
func TestReplicaChecksums(t *testing.T) {
	t.Parallel()
	s := &api.Snapshot{Volumes: []api.SnapshotVolume{
		{VolumeID: "v0", Name: "boot", SHA256: shaBoot},
		{VolumeID: "v1", Name: "data", SHA256: shaData},
	}}
	rep := func(sums ...string) api.SnapshotReplica {
		var vols []string
		for i, sum := range sums {
			vols = append(vols, fmt.Sprintf(`{"volume_id":"v%d","sha256":%q}`, i, sum))
		}
		var r api.SnapshotReplica
		if err := json.Unmarshal([]byte(`{"node":"n1","volumes":[`+strings.Join(vols, ",")+`]}`), &r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	for _, tc := range []struct {
		r    api.SnapshotReplica
		want string
	}{
		{rep(shaBoot, shaData), "match"},
		{rep(shaBoot, shaBoot), "differ: data"},
		{rep(), "-"},
	} {
		if got := replicaChecksums(s, tc.r); got != tc.want {
			t.Fatalf("replicaChecksums = %q, want %q", got, tc.want)
		}
	}
}

// TestSnapshotCreate starts a snapshot without waiting: one request, the
// snapshot printed as accepted.
func TestSnapshotCreate(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	fake := snapAPI()
	addr := startFake(t, p, fake)

	r := runCLI(t, append(flagsFor(p, addr), "snapshot", "create", "web1")...)
	for _, want := range []string{
		"ID:           snap-5f2a\n", "State:        creating\n", "Stored:       -\n", "Captured:     -\n",
		"boot    vol-7c1e-0  yes   -          first snapshot of the volume  -     20 GiB     -       -\n",
		"\nNo replica yet.\n",
	} {
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Fatalf("snapshot create: exit %d, stderr %q, no %q in:\n%s", r.code, r.stderr, want, r.stdout)
		}
	}
	r = runCLI(t, append(flagsFor(p, addr), "snapshot", "create", "web1", "-o", "json")...)
	if r.code != 0 {
		t.Fatalf("snapshot create -o json: exit %d, stderr %q", r.code, r.stderr)
	}
	checkJSON[api.Snapshot](t, r.stdout, snapCreatingJSON)
	if got, want := fake.seen(), []string{snapCreatePath + ` {"vm":"web1"}`, snapCreatePath + ` {"vm":"web1"}`}; !slices.Equal(got, want) {
		t.Fatalf("snapshot create sent %q, want %q", got, want)
	}
}

// TestSnapshotCreateRequest checks the body each combination of flags
// sends; what is not given is left to the server's defaults.
func TestSnapshotCreateRequest(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	for _, tc := range []struct {
		name string
		args []string
		body string
	}{
		{"defaults", nil, `{"vm":"web1"}`},
		{"every flag", []string{"--name", "before-upgrade", "--description", "before the 2.4 upgrade", "--volumes", "boot,data",
			"--desire", "application", "--require", "application", "--full"},
			`{"vm":"web1","name":"before-upgrade","description":"before the 2.4 upgrade","volumes":["boot","data"],"desire":"application","require":"application","full":true}`},
		{"no data, crash", []string{"--no-data", "--desire", "crash"}, `{"vm":"web1","no_data":true,"desire":"crash"}`},
	} {
		fake := snapAPI()
		addr := startFake(t, p, fake)
		r := runCLI(t, append(append(flagsFor(p, addr), "snapshot", "create", "web1"), tc.args...)...)
		if r.code != 0 {
			t.Fatalf("%s: exit %d, stderr %q", tc.name, r.code, r.stderr)
		}
		if got, want := fake.seen(), []string{snapCreatePath + " " + tc.body}; !slices.Equal(got, want) {
			t.Fatalf("%s: sent\n%q\nwant\n%q", tc.name, got, want)
		}
	}
}

// TestSnapshotCreateWait waits while the fake moves the snapshot from
// creating through partial to complete: not on a terminal, only the final
// snapshot is printed.
func TestSnapshotCreateWait(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	fake := snapAPI()
	addr := startFake(t, p, fake)

	r := runCLI(t, append(flagsFor(p, addr), "snapshot", "create", "web1", "--wait", "-o", "json")...)
	if r.code != 0 {
		t.Fatalf("snapshot create --wait: exit %d, stderr %q", r.code, r.stderr)
	}
	checkJSON[api.Snapshot](t, r.stdout, snapCompleteJSON)
	want := []string{snapCreatePath + ` {"vm":"web1"}`, snapGetPath, snapGetPath, snapGetPath}
	if got := fake.seen(); !slices.Equal(got, want) {
		t.Fatalf("snapshot create --wait sent %q, want %q", got, want)
	}

	fake = snapAPI()
	addr = startFake(t, p, fake)
	r = runCLI(t, append(flagsFor(p, addr), "snapshot", "create", "web1", "--wait")...)
	if r.code != 0 || r.stdout != snapCompleteTable {
		t.Fatalf("snapshot create --wait -o table: exit %d, stderr %q, stdout:\n%s\nwant:\n%s", r.code, r.stderr, r.stdout, snapCompleteTable)
	}
}

// TestSnapshotCreateWaitTerminal checks the progress line redrawn on a
// terminal: state, phase, bytes, rate and ETA from the coordinator's
// progress, then the line cleared for the result.
func TestSnapshotCreateWaitTerminal(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	addr := startFake(t, p, snapAPI())

	r := runCLIWith(t, cliSetup{stdoutWidth: 200}, append(flagsFor(p, addr), "snapshot", "create", "web1", "--wait")...)
	if r.code != 0 {
		t.Fatalf("snapshot create --wait on a terminal: exit %d, stderr %q", r.code, r.stderr)
	}
	want := "Snapshot snap-5f2a of VM web1 is creating; waiting until it is complete (Ctrl-C stops waiting, the snapshot goes on).\n" +
		"\rcreating  no progress reported\x1b[K" +
		"\rpartial  replicate on n1  1 GiB / 4 GiB (25%)  volume data\x1b[K" +
		"\rpartial  replicate on n1  2 GiB / 4 GiB (50%)  102.4 MiB/s  ETA 20s  volume data\x1b[K" +
		"\rcomplete  no progress reported\x1b[K" +
		"\r\x1b[K" + snapCompleteTable
	if r.stdout != want {
		t.Fatalf("snapshot create --wait on a terminal:\n%q\nwant:\n%q", r.stdout, want)
	}

	// A narrow terminal: the line is cut to fit.
	r = runCLIWith(t, cliSetup{stdoutWidth: 30}, append(flagsFor(p, startFake(t, p, snapAPI())), "snapshot", "create", "web1", "--wait")...)
	if r.code != 0 || !strings.Contains(r.stdout, "\rpartial  replicate on n1  1 …\x1b[K") {
		t.Fatalf("snapshot create --wait on a narrow terminal: exit %d, stdout %q", r.code, r.stdout)
	}
}

// TestSnapshotCreateWaitRetries keeps waiting through polls that fail for
// want of a leader.
func TestSnapshotCreateWaitRetries(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	fake := snapAPI()
	fake.sequences[snapGetPath] = []reply{
		{status: http.StatusServiceUnavailable, body: `{"error":{"code":"unavailable","message":"no leader"}}`},
		{body: snapCompleteJSON},
	}
	addr := startFake(t, p, fake)
	r := runCLIWith(t, cliSetup{stdoutWidth: 200}, append(flagsFor(p, addr), "snapshot", "create", "web1", "--wait")...)
	if r.code != 0 || !strings.Contains(r.stdout, "\rcreating  no progress reported  (retrying: no leader)\x1b[K") ||
		!strings.HasSuffix(r.stdout, snapCompleteTable) {
		t.Fatalf("snapshot create --wait through a failover: exit %d, stderr %q, stdout %q", r.code, r.stderr, r.stdout)
	}
}

// TestSnapshotCreateWaitDiscarded ends a wait with the snapshot discarded:
// exit 1 with the reason, the discarded snapshot printed.
func TestSnapshotCreateWaitDiscarded(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	discarded := strings.NewReplacer(`"snap-3c09"`, `"snap-5f2a"`).Replace(snapDiscardedJSON)
	for _, tc := range []struct {
		name   string
		seq    []reply
		stderr string
	}{
		{"discarded", []reply{{body: partialAt("0", "2026-03-01T10:01:00Z")}, {body: discarded}},
			"twinsnap: snapshot snap-5f2a of VM db1 was discarded by n1: node n2 lost during capture (term 6 ended)\n"},
		{"gone", []reply{{body: partialAt("0", "2026-03-01T10:01:00Z")}, {status: http.StatusNotFound, body: snapNotFound}},
			"twinsnap: snapshot snap-5f2a no longer exists: it was discarded and its space reclaimed\n"},
	} {
		fake := snapAPI()
		fake.sequences[snapGetPath] = tc.seq
		addr := startFake(t, p, fake)
		r := runCLI(t, append(flagsFor(p, addr), "snapshot", "create", "web1", "--wait", "-o", "json")...)
		if r.code != exitInternal || !strings.HasPrefix(r.stderr, tc.stderr) || !strings.Contains(r.stderr, "\nhint: ") {
			t.Fatalf("%s: exit %d, want %d; stderr %q", tc.name, r.code, exitInternal, r.stderr)
		}
		want := discarded
		if tc.name == "gone" {
			want = partialAt("0", "2026-03-01T10:01:00Z")
		}
		checkJSON[api.Snapshot](t, r.stdout, want)
	}
}

// TestSnapshotCreateWaitEnds ends a wait by --timeout and by an interrupt:
// exit 8, the snapshot goes on, the last state seen is printed.
func TestSnapshotCreateWaitEnds(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	fake := snapAPI()
	fake.sequences[snapGetPath] = []reply{{body: partialAt("0", "2026-03-01T10:01:00Z")}}
	addr := startFake(t, p, fake)

	// Room for the handshake and the first polls, even with -race.
	r := runCLI(t, append(flagsFor(p, addr), "--timeout", "2s", "snapshot", "create", "web1", "--wait", "-o", "json")...)
	if r.code != exitUnknownResult ||
		!strings.HasPrefix(r.stderr, "twinsnap: stopped waiting for snapshot snap-5f2a after --timeout 2s: it is partial and goes on\n") ||
		!strings.Contains(r.stderr, "hint: follow it with 'twinsnap snapshot show snap-5f2a'") {
		t.Fatalf("wait timed out: exit %d, want %d; stderr %q", r.code, exitUnknownResult, r.stderr)
	}
	checkJSON[api.Snapshot](t, r.stdout, partialAt("0", "2026-03-01T10:01:00Z"))

	var stdout, stderr bytes.Buffer
	env := &cliEnv{stdin: strings.NewReader(""), stdout: &stdout, stderr: &stderr,
		getenv: func(string) string { return "" }, stdinIsTerminal: func() bool { return false },
		location: testZone, pollInterval: testPoll}
	fake = snapAPI()
	fake.sequences[snapGetPath] = []reply{{body: partialAt("0", "2026-03-01T10:01:00Z")}}
	addr = startFake(t, p, fake)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { // Ctrl-C once a poll has been answered (a second one is asked)
		for len(fake.seen()) < 3 {
			time.Sleep(5 * time.Millisecond)
		}
		cancel()
	}()
	code := run(ctx, append(flagsFor(p, addr), "snapshot", "create", "web1", "--wait"), env)
	if code != exitUnknownResult ||
		!strings.HasPrefix(stderr.String(), "twinsnap: stopped waiting for snapshot snap-5f2a (interrupted): it is partial and goes on\n") {
		t.Fatalf("wait interrupted: exit %d, want %d; stderr %q", code, exitUnknownResult, stderr.String())
	}
	if !strings.Contains(stdout.String(), "State:        partial\n") {
		t.Fatalf("wait interrupted: stdout %q lacks the last state seen", stdout.String())
	}
}

// TestSnapshotCreateNoSpace checks that a snapshot refused for want of
// container space exits 9 with the server's message and a hint.
func TestSnapshotCreateNoSpace(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	msg := `not enough space in volume container: volume "vol-7c1e-1" on node "n2" has 1073741824 bytes free, the snapshot needs 5368709120`
	fake := &fakeAPI{routes: map[string]reply{
		snapCreatePath: {status: api.StatusFor(api.CodeNoSpace), body: `{"error":{"code":"no_space","message":` + jsonString(t, msg) + `}}`},
	}}
	addr := startFake(t, p, fake)
	for _, wait := range []bool{false, true} {
		args := append(flagsFor(p, addr), "snapshot", "create", "web1")
		if wait {
			args = append(args, "--wait")
		}
		r := runCLI(t, args...)
		if r.code != exitNoSpace {
			t.Fatalf("no space (wait %v): exit %d, want %d; stderr %q", wait, r.code, exitNoSpace, r.stderr)
		}
		if !strings.HasPrefix(r.stderr, "twinsnap: creating a snapshot of VM web1: "+msg+"\n") ||
			!strings.Contains(r.stderr, "hint: make room: grow the volume's container with 'twinsnap volume-container expand") ||
			!strings.Contains(r.stderr, "'twinsnap volume-container list --vm web1'") {
			t.Fatalf("no space (wait %v): stderr %q", wait, r.stderr)
		}
		if r.stdout != "" {
			t.Fatalf("no space (wait %v): stdout %q, want nothing", wait, r.stdout)
		}
	}
}

// TestSnapshotCreateRefused checks the other refusals: unknown VM,
// snapshots disabled, an unreachable required consistency.
func TestSnapshotCreateRefused(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	for _, tc := range []struct {
		name  string
		reply reply
		args  []string
		code  int
		hint  string
	}{
		{"unknown VM", reply{http.StatusNotFound, vmNotFound}, nil, exitNotFound, "twinsnap vm list"},
		{"disabled", reply{http.StatusConflict, `{"error":{"code":"disabled","message":"snapshots are disabled"}}`}, nil, exitConflict,
			"twinsnap settings snapshots enable"},
		{"application required", reply{http.StatusConflict, `{"error":{"code":"conflict","message":"required consistency not achievable"}}`},
			[]string{"--require", "application"}, exitConflict, "--require application"},
		{"invalid", reply{http.StatusBadRequest, `{"error":{"code":"invalid","message":"volume nope of VM web1 does not exist"}}`},
			[]string{"--volumes", "nope"}, exitInvalid, ""},
	} {
		addr := startFake(t, p, &fakeAPI{routes: map[string]reply{snapCreatePath: tc.reply}})
		r := runCLI(t, append(append(flagsFor(p, addr), "snapshot", "create", "web1", "--wait"), tc.args...)...)
		if r.code != tc.code || !strings.Contains(r.stderr, tc.hint) || r.stdout != "" {
			t.Fatalf("%s: exit %d, want %d; stdout %q, stderr %q", tc.name, r.code, tc.code, r.stdout, r.stderr)
		}
	}
}

func TestSnapshotDelete(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	const deleted = "DELETE /v1/snapshots/snap-5f2a"
	deleting := strings.Replace(snapCompleteJSON, `"state":"complete"`, `"state":"deleting"`, 1)
	for _, tc := range []struct {
		name    string
		setup   cliSetup
		args    []string
		code    int
		removed bool
		stdout  string
		stderr  string
	}{
		{"yes flag", cliSetup{}, []string{"--yes"}, 0, true,
			"Deleting snapshot snap-5f2a; every node reclaims its space in the background.\n", ""},
		{"confirmed on a terminal", cliSetup{terminal: true, stdin: "y\n"}, nil, 0, true, "Deleting snapshot snap-5f2a;",
			"Delete snapshot snap-5f2a (before-upgrade of VM web1, complete, created 2026-03-01 11:00:00 CET, 2 volume(s))? [y/N]"},
		{"declined on a terminal", cliSetup{terminal: true, stdin: "n\n"}, nil, exitUsage, false, "", "not confirmed"},
		{"not a terminal", cliSetup{stdin: "y\n"}, nil, exitUsage, false, "", "--yes"},
		{"wait", cliSetup{}, []string{"-y", "--wait"}, 0, true, "Deleted snapshot snap-5f2a.\n", ""},
	} {
		fake := &fakeAPI{
			routes: map[string]reply{deleted: {body: deleting}},
			sequences: map[string][]reply{snapGetPath: {{body: snapCompleteJSON}, {body: deleting},
				{status: http.StatusNotFound, body: snapNotFound}}},
		}
		if tc.name == "wait" {
			fake.sequences[snapGetPath] = fake.sequences[snapGetPath][1:]
		}
		addr := startFake(t, p, fake)
		r := runCLIWith(t, tc.setup, append(append(flagsFor(p, addr), "snapshot", "delete", "snap-5f2a"), tc.args...)...)
		if r.code != tc.code {
			t.Fatalf("%s: exit %d, want %d; stderr %q", tc.name, r.code, tc.code, r.stderr)
		}
		if removed := slices.Contains(fake.seen(), deleted); removed != tc.removed {
			t.Fatalf("%s: requests %q, removed %v, want %v", tc.name, fake.seen(), removed, tc.removed)
		}
		if !strings.HasPrefix(r.stdout, tc.stdout) || tc.stdout == "" && r.stdout != "" {
			t.Fatalf("%s: stdout %q, want %q", tc.name, r.stdout, tc.stdout)
		}
		if !strings.Contains(r.stderr, tc.stderr) {
			t.Fatalf("%s: stderr %q does not mention %q", tc.name, r.stderr, tc.stderr)
		}
	}

	// JSON: the snapshot as the delete request returned it.
	addr := startFake(t, p, &fakeAPI{routes: map[string]reply{deleted: {body: deleting}}})
	r := runCLI(t, append(flagsFor(p, addr), "snapshot", "delete", "snap-5f2a", "-y", "-o", "json")...)
	if r.code != 0 {
		t.Fatalf("snapshot delete -o json: exit %d, stderr %q", r.code, r.stderr)
	}
	checkJSON[api.Snapshot](t, r.stdout, deleting)
}

// TestSnapshotDeleteRefused checks an unknown snapshot (asked on a
// terminal: no prompt, exit 5) and one that cannot be deleted (exit 6).
func TestSnapshotDeleteRefused(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	fake := snapAPI()
	addr := startFake(t, p, fake)
	r := runCLIWith(t, cliSetup{terminal: true, stdin: "y\n"}, append(flagsFor(p, addr), "snapshot", "delete", "nope")...)
	if r.code != exitNotFound || strings.Contains(r.stderr, "[y/N]") || !strings.Contains(r.stderr, "hint: "+hintSnapshotList) {
		t.Fatalf("delete unknown snapshot: exit %d, stderr %q", r.code, r.stderr)
	}
	if got := fake.seen(); !slices.Equal(got, []string{"GET /v1/snapshots/nope"}) {
		t.Fatalf("delete unknown snapshot sent %q", got)
	}
	r = runCLI(t, append(flagsFor(p, addr), "snapshot", "delete", "snap-6a01", "--yes")...)
	if r.code != exitConflict || !strings.Contains(r.stderr, "is partial") || !strings.Contains(r.stderr, "twinsnap snapshot show snap-6a01") {
		t.Fatalf("delete partial snapshot: exit %d, stderr %q", r.code, r.stderr)
	}
}

// TestSnapshotDeleteWaitTimeout ends a delete's wait by --timeout.
func TestSnapshotDeleteWaitTimeout(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	deleting := strings.Replace(snapCompleteJSON, `"state":"complete"`, `"state":"deleting"`, 1)
	addr := startFake(t, p, &fakeAPI{routes: map[string]reply{
		"DELETE /v1/snapshots/snap-5f2a": {body: deleting},
		snapGetPath:                      {body: deleting},
	}})
	r := runCLI(t, append(flagsFor(p, addr), "--timeout", "2s", "snapshot", "delete", "snap-5f2a", "-y", "--wait")...)
	if r.code != exitUnknownResult || !strings.Contains(r.stderr, "after --timeout 2s: it is deleting and goes on") || r.stdout != "" {
		t.Fatalf("delete wait timed out: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestProgressMeter(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	var m progressMeter
	obs := func(phase string, done int64, at time.Duration) {
		m.observe(&api.SnapshotProgress{Phase: phase, BytesDone: done, BytesTotal: 1 << 30, UpdatedAt: t0.Add(at)}, time.Time{})
	}
	obs("capture", 0, 0)
	if r := m.rate(); r != 0 {
		t.Fatalf("rate from one sample = %v, want 0", r)
	}
	obs("capture", 100<<20, 10*time.Second)
	obs("capture", 100<<20, 10*time.Second) // the same report again
	if r := m.rate(); r != 10<<20 {
		t.Fatalf("rate = %v, want 10 MiB/s", r)
	}
	for i := 2; i <= 10; i++ { // 20 MiB/s from 10s on
		obs("capture", 100<<20+int64(i-1)*200<<20, time.Duration(i)*10*time.Second)
	}
	if r := m.rate(); r != 20<<20 {
		t.Fatalf("rate over the window = %v, want 20 MiB/s", r)
	}
	obs("replicate", 5<<20, 110*time.Second)
	if r := m.rate(); r != 0 {
		t.Fatalf("rate after a phase change = %v, want 0", r)
	}
}

// TestSnapshotUsageErrors checks that bad flags and arguments exit 2
// before any request is sent.
func TestSnapshotUsageErrors(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	fake := snapAPI()
	addr := startFake(t, p, fake)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"create without VM", []string{"snapshot", "create"}, "needs VM"},
		{"create empty VM", []string{"snapshot", "create", ""}, "name is empty"},
		{"empty name", []string{"snapshot", "create", "web1", "--name="}, "--name is empty"},
		{"volumes and no data", []string{"snapshot", "create", "web1", "--volumes", "boot", "--no-data"}, "exclude each other"},
		{"empty volume", []string{"snapshot", "create", "web1", "--volumes", "boot,"}, "empty name"},
		{"volume twice", []string{"snapshot", "create", "web1", "--volumes", "data,data"}, "data twice"},
		{"bad desire", []string{"snapshot", "create", "web1", "--desire", "file"}, `"file" is not application or crash`},
		{"require above desire", []string{"snapshot", "create", "web1", "--desire", "crash", "--require", "application"}, "is above --desire crash"},
		{"require above default desire", []string{"snapshot", "create", "web1", "--require", "bogus"}, "not application or crash"},
		{"bad output", []string{"snapshot", "create", "web1", "-o", "yaml"}, "not table or json"},
		{"zero timeout", []string{"--timeout", "0s", "snapshot", "create", "web1", "--wait"}, "--timeout must be positive"},
		{"list bad state", []string{"snapshot", "list", "--state", "done"}, `--state "done" is not one of creating, partial, complete, discarded, deleting`},
		{"list with an argument", []string{"snapshot", "list", "web1"}, "takes 0 argument"},
		{"show without ID", []string{"snapshot", "show"}, "needs ID"},
		{"show empty ID", []string{"snapshot", "show", ""}, "ID is empty"},
		{"delete without ID", []string{"snapshot", "delete", "--yes"}, "needs ID"},
		{"delete empty ID", []string{"snapshot", "delete", "", "--yes"}, "ID is empty"},
		{"unknown subcommand", []string{"snapshot", "craete"}, `did you mean "create"`},
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

// TestSnapshotNotFound checks exit 5 and the hint for an unknown snapshot.
func TestSnapshotNotFound(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	addr := startFake(t, p, snapAPI())
	for _, args := range [][]string{{"snapshot", "show", "nope"}, {"snapshot", "delete", "nope", "--yes"}} {
		r := runCLI(t, append(flagsFor(p, addr), args...)...)
		if r.code != exitNotFound || !strings.Contains(r.stderr, "snapshot nope does not exist") ||
			!strings.Contains(r.stderr, "\nhint: "+hintSnapshotList+"\n") {
			t.Fatalf("%v: exit %d, stderr %q", args, r.code, r.stderr)
		}
	}
}

// jsonString returns s as a JSON string.
func jsonString(t *testing.T, s string) string {
	t.Helper()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
