package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/internal/api"
)

const nodesJSON = `{"nodes":[
 {"id":"n1","role":"data","raft_address":"10.0.0.1:7000","api_address":"10.0.0.1:7443","data_address":"10.0.0.1:7001","voter":true,"leader":true},
 {"id":"n2","role":"data","raft_address":"10.0.0.2:7000","api_address":"10.0.0.2:7443","data_address":"10.0.0.2:7001","voter":true,"leader":false},
 {"id":"w1","role":"witness","raft_address":"10.0.0.3:7000","api_address":"10.0.0.3:7443","voter":true,"leader":false}]}`

const statusJSON = `{"answered_by":"n2","leader_id":"n1","term":7,"last_index":1204,"commit_index":1204,"peers":[
 {"id":"n1","role":"data","raft_address":"10.0.0.1:7000","api_address":"10.0.0.1:7443","voter":true,"reachable":true,"healthy":true,
  "status":{"id":"n1","role":"data","raft_state":"Leader","term":7,"last_index":1204,"commit_index":1204,"applied_index":1204,"leader_id":"n1","version":"v0.1.0"},"rtt_ms":0.42},
 {"id":"n2","role":"data","raft_address":"10.0.0.2:7000","api_address":"10.0.0.2:7443","voter":true,"reachable":true,"healthy":true,
  "status":{"id":"n2","role":"data","raft_state":"Follower","term":7,"last_index":1204,"commit_index":1204,"applied_index":1203,"leader_id":"n1","last_contact":"2026-01-02T03:04:05Z","version":"v0.1.0"}},
 {"id":"w1","role":"witness","raft_address":"10.0.0.3:7000","api_address":"10.0.0.3:7443","voter":true,"reachable":false,"healthy":false,
  "error":"dial tcp 10.0.0.3:7443: connect: connection refused"}]}`

const settingsJSON = `{"snapshots_enabled":true,"values":{"retention":"7","export.bandwidth":"100MiB/s"}}`

// cannedAPI returns a fake serving every read endpoint.
func cannedAPI() *fakeAPI {
	return &fakeAPI{routes: map[string]reply{
		"GET /v1/nodes":              {body: nodesJSON},
		"GET /v1/cluster/status":     {body: statusJSON},
		"GET /v1/settings":           {body: settingsJSON},
		"PUT /v1/settings/snapshots": {body: `{"snapshots_enabled":false}`},
		"DELETE /v1/nodes/n2":        {status: http.StatusNoContent},
	}}
}

// checkJSON checks that out is indented JSON that decodes to the same
// value of type T as canned.
func checkJSON[T any](t *testing.T, out, canned string) {
	t.Helper()
	if !strings.HasPrefix(out, "{\n  \"") {
		t.Fatalf("JSON output is not indented:\n%s", out)
	}
	var got, want T
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("decoding output: %v\n%s", err, out)
	}
	if err := json.Unmarshal([]byte(canned), &want); err != nil {
		t.Fatalf("decoding canned reply: %v", err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("JSON output differs from the API reply:\ngot  %+v\nwant %+v", got, want)
	}
}

func TestNodeList(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	addr := startFake(t, p, cannedAPI())

	r := runCLI(t, append(flagsFor(p, addr), "node", "list")...)
	if r.code != 0 {
		t.Fatalf("node list: exit %d, stderr %q", r.code, r.stderr)
	}
	want := `ID  ROLE     RAFT ADDRESS   API ADDRESS    DATA ADDRESS   VOTER  LEADER
n1  data     10.0.0.1:7000  10.0.0.1:7443  10.0.0.1:7001  yes    yes
n2  data     10.0.0.2:7000  10.0.0.2:7443  10.0.0.2:7001  yes    no
w1  witness  10.0.0.3:7000  10.0.0.3:7443  -              yes    no
`
	if r.stdout != want {
		t.Fatalf("node list table:\n%s\nwant:\n%s", r.stdout, want)
	}

	r = runCLI(t, append(flagsFor(p, addr), "node", "list", "-o", "json")...)
	if r.code != 0 {
		t.Fatalf("node list -o json: exit %d, stderr %q", r.code, r.stderr)
	}
	checkJSON[api.NodeList](t, r.stdout, nodesJSON)
}

func TestNodeListEmptyJSONIsAList(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	addr := startFake(t, p, &fakeAPI{routes: map[string]reply{"GET /v1/nodes": {body: `{"nodes":null}`}}})
	r := runCLI(t, append(flagsFor(p, addr), "node", "list", "--output=json")...)
	if r.code != 0 || r.stdout != "{\n  \"nodes\": []\n}\n" {
		t.Fatalf("empty node list: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestClusterStatus(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	addr := startFake(t, p, cannedAPI())

	r := runCLI(t, append(flagsFor(p, addr), "cluster", "status")...)
	if r.code != 0 {
		t.Fatalf("cluster status: exit %d, stderr %q", r.code, r.stderr)
	}
	want := `Leader:        n1
Term:          7
Last index:    1204
Commit index:  1204
Answered by:   n2

ID  ROLE     STATE     HEALTHY  REACHABLE  TERM  LAST INDEX  APPLIED  RTT     ERROR
n1  data     Leader    yes      yes        7     1204        1204     0.42ms  -
n2  data     Follower  yes      yes        7     1204        1203     -       -
w1  witness  -         no       no         -     -           -        -       dial tcp 10.0.0.3:7443: connect: connection refused
`
	if r.stdout != want {
		t.Fatalf("cluster status table:\n%s\nwant:\n%s", r.stdout, want)
	}

	r = runCLI(t, append(flagsFor(p, addr), "cluster", "status", "-o", "json")...)
	if r.code != 0 {
		t.Fatalf("cluster status -o json: exit %d, stderr %q", r.code, r.stderr)
	}
	checkJSON[api.ClusterStatus](t, r.stdout, statusJSON)
}

func TestClusterStatusNoLeader(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	addr := startFake(t, p, &fakeAPI{routes: map[string]reply{
		"GET /v1/cluster/status": {body: `{"answered_by":"n2","term":8,"last_index":5,"commit_index":5,"peers":[]}`},
	}})
	r := runCLI(t, append(flagsFor(p, addr), "cluster", "status")...)
	if r.code != 0 || !strings.HasPrefix(r.stdout, "Leader:        none\n") {
		t.Fatalf("cluster status without leader: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestSettingsShow(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	addr := startFake(t, p, cannedAPI())

	r := runCLI(t, append(flagsFor(p, addr), "settings", "show")...)
	want := `SETTING           VALUE
snapshots         enabled
export.bandwidth  100MiB/s
retention         7
`
	if r.code != 0 || r.stdout != want {
		t.Fatalf("settings show: exit %d, stderr %q, stdout:\n%s\nwant:\n%s", r.code, r.stderr, r.stdout, want)
	}

	r = runCLI(t, append(flagsFor(p, addr), "settings", "show", "-o", "json")...)
	if r.code != 0 {
		t.Fatalf("settings show -o json: exit %d, stderr %q", r.code, r.stderr)
	}
	checkJSON[api.Settings](t, r.stdout, settingsJSON)
}

func TestSettingsSnapshots(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	for _, tc := range []struct {
		verb, reply, body, table string
	}{
		{"enable", `{"snapshots_enabled":true}`, `{"enabled":true}`, "SETTING    VALUE\nsnapshots  enabled\n"},
		{"disable", `{"snapshots_enabled":false}`, `{"enabled":false}`, "SETTING    VALUE\nsnapshots  disabled\n"},
	} {
		fake := &fakeAPI{routes: map[string]reply{"PUT /v1/settings/snapshots": {body: tc.reply}}}
		addr := startFake(t, p, fake)

		r := runCLI(t, append(flagsFor(p, addr), "settings", "snapshots", tc.verb)...)
		if r.code != 0 || r.stdout != tc.table {
			t.Fatalf("settings snapshots %s: exit %d, stdout %q, stderr %q", tc.verb, r.code, r.stdout, r.stderr)
		}
		if got, want := fake.seen(), []string{"PUT /v1/settings/snapshots " + tc.body}; !slices.Equal(got, want) {
			t.Fatalf("settings snapshots %s sent %q, want %q", tc.verb, got, want)
		}

		r = runCLI(t, append(flagsFor(p, addr), "settings", "snapshots", tc.verb, "-o", "json")...)
		if r.code != 0 {
			t.Fatalf("settings snapshots %s -o json: exit %d, stderr %q", tc.verb, r.code, r.stderr)
		}
		checkJSON[api.Settings](t, r.stdout, tc.reply)
	}
}

func TestNodeRemove(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	const deleted = "DELETE /v1/nodes/n2"
	for _, tc := range []struct {
		name    string
		setup   cliSetup
		args    []string
		code    int
		removed bool
		stderr  string
	}{
		{"yes flag", cliSetup{}, []string{"--yes"}, 0, true, ""},
		{"confirmed on a terminal", cliSetup{terminal: true, stdin: "y\n"}, nil, 0, true, "Remove node n2 from the cluster? [y/N]"},
		{"declined on a terminal", cliSetup{terminal: true, stdin: "n\n"}, nil, 2, false, "not confirmed"},
		{"no answer on a terminal", cliSetup{terminal: true}, nil, 2, false, "no confirmation"},
		{"not a terminal", cliSetup{stdin: "y\n"}, nil, 2, false, "--yes"},
	} {
		fake := cannedAPI()
		addr := startFake(t, p, fake)
		args := append(append(flagsFor(p, addr), "node", "remove", "n2"), tc.args...)
		r := runCLIWith(t, tc.setup, args...)
		if r.code != tc.code {
			t.Fatalf("%s: exit %d, want %d; stderr %q", tc.name, r.code, tc.code, r.stderr)
		}
		if removed := slices.Contains(fake.seen(), deleted); removed != tc.removed {
			t.Fatalf("%s: requests %q, removed %v, want %v", tc.name, fake.seen(), removed, tc.removed)
		}
		if tc.removed && r.stdout != "Removed node n2.\n" {
			t.Fatalf("%s: stdout %q", tc.name, r.stdout)
		}
		if !strings.Contains(r.stderr, tc.stderr) {
			t.Fatalf("%s: stderr %q does not mention %q", tc.name, r.stderr, tc.stderr)
		}
	}
}

// TestNodeRemoveIDCharacters removes a node whose id uses every kind of
// character ids may hold (letters, digits, . _ : -).
func TestNodeRemoveIDCharacters(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	fake := &fakeAPI{routes: map[string]reply{"DELETE /v1/nodes/Node_1.a:b-c": {status: http.StatusNoContent}}}
	addr := startFake(t, p, fake)
	r := runCLI(t, append(flagsFor(p, addr), "node", "remove", "Node_1.a:b-c", "-y")...)
	if r.code != 0 || r.stdout != "Removed node Node_1.a:b-c.\n" {
		t.Fatalf("node remove: exit %d, stdout %q, stderr %q, requests %q", r.code, r.stdout, r.stderr, fake.seen())
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	r := runCLI(t, "version")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "twinsnap ") {
		t.Fatalf("version: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	r = runCLI(t, "version", "-o", "json")
	var v versionInfo
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &v) != nil || v.Version == "" || v.GoVersion == "" || v.Platform == "" {
		t.Fatalf("version -o json: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

// TestNodeRemoveInterruptedPrompt interrupts the command while it waits
// for an answer that never comes.
func TestNodeRemoveInterruptedPrompt(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	fake := cannedAPI()
	addr := startFake(t, p, fake)
	stdin, stdinW := io.Pipe()
	defer func() { _ = stdinW.Close() }()
	var stdout, stderr bytes.Buffer
	env := &cliEnv{stdin: stdin, stdout: &stdout, stderr: &stderr,
		getenv: func(string) string { return "" }, stdinIsTerminal: func() bool { return true }}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	code := run(ctx, append(flagsFor(p, addr), "node", "remove", "n2"), env)
	if code != exitUsage || !strings.Contains(stderr.String(), "interrupted") || len(fake.seen()) != 0 {
		t.Fatalf("interrupted prompt: exit %d, stderr %q, requests %q", code, stderr.String(), fake.seen())
	}
}
