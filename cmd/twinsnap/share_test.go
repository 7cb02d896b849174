package main

import (
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/twinsnap/twinsnap/internal/api"
)

const (
	shareAddPath = "POST /v1/shares"
	shareURL     = "smb://nas1.example.com/backup/twinsnap"
	// testPassword is the password the share tests give; it must never
	// show on stdout or stderr.
	testPassword = "s3cret pass:word"
)

// shareBackupJSON is the SMB share as the server returns it.
const shareBackupJSON = `{"name":"backup","url":"smb://nas1.example.com/backup/twinsnap","user":"svc-twinsnap","domain":"CORP",
 "has_password":true,"created_at":"2026-03-01T09:00:00Z"}`

// shareScratchJSON is a local directory share.
const shareScratchJSON = `{"name":"scratch","url":"file:///srv/exports","has_password":false,"created_at":"2026-03-02T09:30:00Z"}`

const shareListJSON = `{"shares":[` + shareBackupJSON + `,` + shareScratchJSON + `]}`

const shareBackupTable = `Name:      backup
URL:       smb://nas1.example.com/backup/twinsnap
User:      svc-twinsnap
Domain:    CORP
Password:  stored
Created:   2026-03-01 10:00:00 CET
`

// shareAPI returns a fake serving the share endpoints.
func shareAPI() *fakeAPI {
	return &fakeAPI{routes: map[string]reply{
		shareAddPath:               {status: http.StatusCreated, body: shareBackupJSON},
		"GET /v1/shares":           {body: shareListJSON},
		"DELETE /v1/shares/backup": {status: http.StatusNoContent},
		"DELETE /v1/shares/busy":   {status: http.StatusConflict, body: `{"error":{"code":"conflict","message":"share busy is used by job job-8d1f"}}`},
		"DELETE /v1/shares/nope":   {status: http.StatusNotFound, body: `{"error":{"code":"not_found","message":"share nope does not exist"}}`},
	}}
}

// passwordFile writes content to a file with mode perm and returns its
// path.
func passwordFile(t *testing.T, content string, perm os.FileMode) string {
	t.Helper()
	name := filepath.Join(t.TempDir(), "nas1.pass")
	if err := os.WriteFile(name, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(name, perm); err != nil { // whatever the umask
		t.Fatal(err)
	}
	return name
}

// noPassword fails the test if the password shows in r's output.
func noPassword(t *testing.T, name string, r result) {
	t.Helper()
	if strings.Contains(r.stdout, "s3cret") || strings.Contains(r.stderr, "s3cret") {
		t.Fatalf("%s: the password shows: stdout %q, stderr %q", name, r.stdout, r.stderr)
	}
}

// TestShareAdd adds SMB and file shares with the password from a file,
// from stdin through --password-file -, and from the prompt, and checks
// the body the server receives.
func TestShareAdd(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	smbArgs := []string{"share", "add", "backup", "--url", shareURL, "--user", "svc-twinsnap", "--domain", "CORP"}
	withPassword := `{"name":"backup","url":"` + shareURL + `","user":"svc-twinsnap","domain":"CORP","password":"` + testPassword + `"}`
	for _, tc := range []struct {
		name   string
		setup  cliSetup
		args   []string
		body   string
		stderr string
	}{
		{"password file", cliSetup{}, append(smbArgs, "--password-file", passwordFile(t, testPassword+"\r\nsecond line\n", 0o600)),
			withPassword, ""},
		{"group-readable password file", cliSetup{}, append(smbArgs, "--password-file", passwordFile(t, testPassword, 0o640)),
			withPassword, ""},
		{"password file wins over the terminal", cliSetup{terminal: true, stdin: "typed\n"},
			append(smbArgs, "--password-file", passwordFile(t, testPassword+"\n", 0o400)), withPassword, ""},
		{"stdin", cliSetup{stdin: testPassword + "\n"}, append(smbArgs, "--password-file", "-"), withPassword, ""},
		{"prompt", cliSetup{terminal: true, stdin: testPassword + "\n"}, smbArgs, withPassword,
			"Password for CORP\\svc-twinsnap on " + shareURL + ": \n"},
		{"prompt twice without a check", cliSetup{terminal: true, stdin: testPassword + "\n" + testPassword + "\n"},
			append(smbArgs, "--no-check"),
			`{"name":"backup","url":"` + shareURL + `","user":"svc-twinsnap","domain":"CORP","password":"` + testPassword + `","check":false}`,
			"Password for CORP\\svc-twinsnap on " + shareURL + ": \nAgain, to confirm (--no-check: nothing tries it): \n"},
		{"file share on a terminal: no prompt", cliSetup{terminal: true}, []string{"share", "add", "scratch", "--url", "file:///srv/exports"},
			`{"name":"scratch","url":"file:///srv/exports"}`, ""},
	} {
		fake := shareAPI()
		addr := startFake(t, p, fake)
		r := runCLIWith(t, tc.setup, append(flagsFor(p, addr), tc.args...)...)
		if r.code != 0 || r.stdout != shareBackupTable || r.stderr != tc.stderr {
			t.Fatalf("%s: exit %d, stderr %q (want %q), stdout:\n%s", tc.name, r.code, r.stderr, tc.stderr, r.stdout)
		}
		if got, want := fake.seen(), []string{shareAddPath + " " + tc.body}; !slices.Equal(got, want) {
			t.Fatalf("%s: sent\n%q\nwant\n%q", tc.name, got, want)
		}
		noPassword(t, tc.name, r)
	}

	addr := startFake(t, p, shareAPI())
	r := runCLI(t, append(flagsFor(p, addr), "share", "add", "scratch", "--url", "file:///srv/exports", "-o", "json")...)
	if r.code != 0 {
		t.Fatalf("share add -o json: exit %d, stderr %q", r.code, r.stderr)
	}
	checkJSON[api.Share](t, r.stdout, shareBackupJSON)
}

// TestShareAddRefused checks what share add refuses before sending
// anything: a password on the command line (there is no such flag), a
// password file others can read, no way to read a password, credentials
// in the URL; none of the messages shows the password.
func TestShareAddRefused(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	fake := shareAPI()
	addr := startFake(t, p, fake)
	smbArgs := []string{"share", "add", "backup", "--url", shareURL, "--user", "svc-twinsnap"}
	for _, tc := range []struct {
		name  string
		setup cliSetup
		args  []string
		want  []string
	}{
		{"--password", cliSetup{}, append(smbArgs, "--password", "s3cret"),
			[]string{"unknown flag: --password", "hint: passwords are never taken on the command line"}},
		{"--password=", cliSetup{}, append(smbArgs, "--password=s3cret"),
			[]string{"unknown flag: --password", "hint: passwords are never taken on the command line"}},
		{"world-readable file", cliSetup{}, append(smbArgs, "--password-file", passwordFile(t, "s3cret\n", 0o644)),
			[]string{"can be read by every user (mode 0644): refusing a password others can read", "hint: restrict it with 'chmod o-r "}},
		{"missing file", cliSetup{}, append(smbArgs, "--password-file", "/nonexistent/nas1.pass"), []string{"no such file"}},
		{"directory", cliSetup{}, append(smbArgs, "--password-file", t.TempDir()), []string{"is a directory"}},
		{"empty first line", cliSetup{}, append(smbArgs, "--password-file", passwordFile(t, "\ns3cret\n", 0o600)),
			[]string{"the first line is empty"}},
		{"long first line", cliSetup{}, append(smbArgs, "--password-file", passwordFile(t, strings.Repeat("s3cret", 200), 0o600)),
			[]string{"longer than 1024 bytes"}},
		{"no terminal, no file", cliSetup{stdin: "s3cret\n"}, smbArgs,
			[]string{"stdin is not a terminal, so the password cannot be asked for", "hint: give it with --password-file FILE"}},
		{"stdin that is a terminal", cliSetup{terminal: true, stdin: "s3cret\n"}, append(smbArgs, "--password-file", "-"),
			[]string{"what you type would be shown"}},
		{"empty at the prompt", cliSetup{terminal: true, stdin: "\n"}, smbArgs, []string{"the password is empty"}},
		{"nothing at the prompt", cliSetup{terminal: true}, smbArgs, []string{"no password given"}},
		{"passwords differ", cliSetup{terminal: true, stdin: "s3cret\ns3cret2\n"}, append(smbArgs, "--no-check"),
			[]string{"the passwords do not match"}},
		{"user in the URL", cliSetup{}, []string{"share", "add", "backup", "--url", "smb://svc:s3cret@nas1/backup", "--user", "svc"},
			[]string{"--url holds user information"}},
		{"password in --user", cliSetup{}, []string{"share", "add", "backup", "--url", shareURL, "--user", "svc:s3cret"},
			[]string{"--user holds ':'"}},
		{"smb without user", cliSetup{}, []string{"share", "add", "backup", "--url", shareURL}, []string{"--user is required"}},
		{"file with user", cliSetup{}, []string{"share", "add", "scratch", "--url", "file:///srv/exports", "--user", "x"},
			[]string{"a file:// share takes no --user"}},
		{"file with password file", cliSetup{}, []string{"share", "add", "scratch", "--url", "file:///srv/exports",
			"--password-file", "/dev/null"}, []string{"a file:// share takes no"}},
		{"relative file URL", cliSetup{}, []string{"share", "add", "scratch", "--url", "file://srv/exports"}, []string{"file:///dir"}},
		{"no share in the URL", cliSetup{}, []string{"share", "add", "backup", "--url", "smb://nas1/", "--user", "x"},
			[]string{"names no host or share"}},
		{"other scheme", cliSetup{}, []string{"share", "add", "backup", "--url", "nfs://nas1/backup"},
			[]string{"is not smb://host[:port]/share[/dir] or file:///dir"}},
		{"no URL", cliSetup{}, []string{"share", "add", "backup"}, []string{"--url is required"}},
		{"no name", cliSetup{}, []string{"share", "add"}, []string{"needs NAME"}},
	} {
		r := runCLIWith(t, tc.setup, append(flagsFor(p, addr), tc.args...)...)
		if r.code != exitUsage || r.stdout != "" {
			t.Fatalf("%s: exit %d, want %d; stdout %q, stderr %q", tc.name, r.code, exitUsage, r.stdout, r.stderr)
		}
		for _, want := range tc.want {
			if !strings.Contains(r.stderr, want) {
				t.Fatalf("%s: stderr %q does not mention %q", tc.name, r.stderr, want)
			}
		}
		noPassword(t, tc.name, r)
	}
	if got := fake.seen(); len(got) != 0 {
		t.Fatalf("refused share adds sent requests: %q", got)
	}
}

// TestShareAddServerErrors checks the exit codes and hints of a name
// taken and a share the node could not use.
func TestShareAddServerErrors(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	for _, tc := range []struct {
		name  string
		reply reply
		code  int
		hint  string
	}{
		{"taken", reply{http.StatusConflict, `{"error":{"code":"conflict","message":"share backup exists"}}`}, exitConflict,
			"hint: the name may be taken: " + hintShareList},
		{"check failed", reply{http.StatusBadRequest, `{"error":{"code":"invalid","message":"share backup: logon failure"}}`}, exitInvalid,
			"hint: the node could not use the share as given"},
	} {
		addr := startFake(t, p, &fakeAPI{routes: map[string]reply{shareAddPath: tc.reply}})
		r := runCLI(t, append(flagsFor(p, addr), "share", "add", "backup", "--url", shareURL, "--user", "svc",
			"--password-file", passwordFile(t, testPassword, 0o600))...)
		if r.code != tc.code || !strings.Contains(r.stderr, tc.hint) || r.stdout != "" {
			t.Fatalf("%s: exit %d, want %d; stdout %q, stderr %q", tc.name, r.code, tc.code, r.stdout, r.stderr)
		}
		noPassword(t, tc.name, r)
	}
}

func TestShareList(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	addr := startFake(t, p, shareAPI())
	r := runCLI(t, append(flagsFor(p, addr), "share", "list")...)
	want := `NAME     URL                                     USER               PASSWORD  CREATED
backup   smb://nas1.example.com/backup/twinsnap  CORP\svc-twinsnap  yes       2026-03-01 10:00:00 CET
scratch  file:///srv/exports                     -                  no        2026-03-02 10:30:00 CET
`
	if r.code != 0 || r.stdout != want {
		t.Fatalf("share list: exit %d, stderr %q, stdout:\n%s\nwant:\n%s", r.code, r.stderr, r.stdout, want)
	}
	r = runCLI(t, append(flagsFor(p, addr), "share", "list", "-o", "json")...)
	if r.code != 0 {
		t.Fatalf("share list -o json: exit %d, stderr %q", r.code, r.stderr)
	}
	checkJSON[api.ShareList](t, r.stdout, shareListJSON)

	addr = startFake(t, p, &fakeAPI{routes: map[string]reply{"GET /v1/shares": {body: `{"shares":null}`}}})
	r = runCLI(t, append(flagsFor(p, addr), "share", "list", "-o", "json")...)
	if r.code != 0 || r.stdout != "{\n  \"shares\": []\n}\n" {
		t.Fatalf("empty share list: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestShareRemove(t *testing.T) {
	t.Parallel()
	p := newTestPKI(t)
	for _, tc := range []struct {
		name    string
		setup   cliSetup
		args    []string
		code    int
		removed bool
		stdout  string
		stderr  string
	}{
		{"yes flag", cliSetup{}, []string{"backup", "--yes"}, 0, true, "Removed share backup.\n", ""},
		{"confirmed on a terminal", cliSetup{terminal: true, stdin: "yes\n"}, []string{"backup"}, 0, true, "Removed share backup.\n",
			"Remove share backup (packages on it are not touched)? [y/N]"},
		{"declined on a terminal", cliSetup{terminal: true, stdin: "n\n"}, []string{"backup"}, exitUsage, false, "", "not confirmed"},
		{"not a terminal", cliSetup{stdin: "y\n"}, []string{"backup"}, exitUsage, false, "", "--yes"},
		{"in use", cliSetup{}, []string{"busy", "-y"}, exitConflict, true, "", "hint: a job may still use it: see 'twinsnap job list'"},
		{"unknown", cliSetup{}, []string{"nope", "-y"}, exitNotFound, true, "", "hint: " + hintShareList},
	} {
		fake := shareAPI()
		addr := startFake(t, p, fake)
		r := runCLIWith(t, tc.setup, append(append(flagsFor(p, addr), "share", "remove"), tc.args...)...)
		if r.code != tc.code || r.stdout != tc.stdout || !strings.Contains(r.stderr, tc.stderr) {
			t.Fatalf("%s: exit %d, want %d; stdout %q, stderr %q", tc.name, r.code, tc.code, r.stdout, r.stderr)
		}
		if sent := len(fake.seen()) > 0; sent != tc.removed {
			t.Fatalf("%s: requests %q", tc.name, fake.seen())
		}
		if tc.removed && !strings.HasPrefix(fake.seen()[0], "DELETE /v1/shares/"+tc.args[0]) {
			t.Fatalf("%s: requests %q", tc.name, fake.seen())
		}
	}
}
