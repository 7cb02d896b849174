package testenv_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hirochachacha/go-smb2"

	"github.com/twinsnap/twinsnap/internal/testenv"
)

// roundTripSize is a few MiB, deliberately not a multiple of go-smb2's
// 1 MiB request size.
const (
	roundTripSize     = 6<<20 + 12345
	roundTripParallel = 4 << 20 // written with concurrent WriteAt
	roundTripWriters  = 4
	roundTripChunk    = 256 << 10
	sustainedSize     = 32 << 20
)

func TestSambaEncryptedRoundTrip(t *testing.T) {
	s := testenv.StartSamba(t, testenv.SambaOptions{})
	t.Logf("smbd ready after %s on %s", s.ReadyAfter, s.Addr)
	sambaRoundTrip(t, s, "encrypted")
}

func TestSambaSigningOnlyRoundTrip(t *testing.T) {
	s := testenv.StartSamba(t, testenv.SambaOptions{SigningOnly: true})
	t.Logf("smbd ready after %s on %s", s.ReadyAfter, s.Addr)
	sambaRoundTrip(t, s, "signing")
}

// TestSambaSigningOnlySustainedWrites keeps several WriteAt calls in flight
// long enough that Samba would answer some with an unsigned interim
// response if its async I/O were on; go-smb2 then fails with "signing
// required". With async I/O switched on, this failed in 4 runs of 4 here.
func TestSambaSigningOnlySustainedWrites(t *testing.T) {
	s := testenv.StartSamba(t, testenv.SambaOptions{SigningOnly: true})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	data := make([]byte, sustainedSize)
	if _, err := rand.Read(data); err != nil {
		t.Fatalf("random data: %v", err)
	}
	share, done, err := s.Dial(ctx)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer func() { _ = done() }()
	f, err := share.WithContext(ctx).Create("sustained.bin")
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	began := time.Now()
	werr := writeParallel(f, data)
	took := time.Since(began)
	if err := errors.Join(werr, f.Close()); err != nil {
		t.Fatalf("parallel WriteAt of %d MiB: %v", sustainedSize>>20, err)
	}
	local, err := os.ReadFile(filepath.Join(s.Dir, "sustained.bin"))
	if err != nil {
		t.Fatalf("local copy: %v", err)
	}
	if sha256.Sum256(local) != sha256.Sum256(data) {
		t.Fatalf("local copy differs from what was written (%d bytes, want %d)", len(local), len(data))
	}
	t.Logf("%d MiB with %d writers in %s", sustainedSize>>20, roundTripWriters, took)
}

func TestSambaRejectsWrongPassword(t *testing.T) {
	s := testenv.StartSamba(t, testenv.SambaOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", s.Addr)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	dialer := &smb2.Dialer{Initiator: &smb2.NTLMInitiator{User: s.User, Password: s.Password + "x"}}
	if sess, err := dialer.DialContext(ctx, conn); err == nil {
		_ = sess.Logoff()
		t.Fatalf("session setup with a wrong password succeeded")
	}
	_, done, err := s.DialSession(ctx)
	if err != nil {
		t.Fatalf("session setup with the right password: %v", err)
	}
	if err := done(); err != nil {
		t.Fatalf("logoff: %v", err)
	}
}

func TestSambaCloseLeavesNoProcess(t *testing.T) {
	s := testenv.StartSamba(t, testenv.SambaOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// A connected client gets its own forked smbd: hold one open so that
	// Close has children to take down.
	share, done, err := s.Dial(ctx)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer func() { _ = done() }()
	if _, err := share.WithContext(ctx).Stat(""); err != nil {
		t.Fatalf("stat share root: %v", err)
	}
	before := liveSambaProcs(t, s)
	if len(before) < 2 {
		t.Fatalf("want smbd and at least one forked child with %s in the command line, found %v", s.ConfPath, before)
	}
	for _, p := range before {
		if p.pgid != s.Pid() {
			t.Fatalf("process %d (%s) is in group %d, not smbd's group %d", p.pid, p.comm, p.pgid, s.Pid())
		}
		if !strings.Contains(p.cmdline, testenv.Marker) {
			t.Fatalf("process %d (%s) lacks the marker %q in its command line %q", p.pid, p.comm, testenv.Marker, p.cmdline)
		}
	}
	t.Logf("smbd processes before Close: %v", before)

	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	// Orphaned children are reaped by init, which may take a while here;
	// a zombie is dead, so only live processes count.
	deadline := time.Now().Add(10 * time.Second)
	for {
		left := liveSambaProcs(t, s)
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after Close, smbd processes remain: %v", left)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out, err := exec.Command("pgrep", "-f", s.ConfPath).CombinedOutput(); err == nil {
		t.Fatalf("pgrep -f %s still finds: %s", s.ConfPath, out)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
}

// sambaRoundTrip writes a file of random data through go-smb2, partly with
// concurrent WriteAt calls and partly as one stream, reads it back, and
// checks both the SMB view and the share's local directory. It also checks
// with smbstatus that the session is protected the way the variant says.
func sambaRoundTrip(t *testing.T, s *testenv.Samba, protection string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	data := make([]byte, roundTripSize)
	if _, err := rand.Read(data); err != nil {
		t.Fatalf("random data: %v", err)
	}
	want := sha256.Sum256(data)

	share, done, err := s.Dial(ctx)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer func() {
		if err := done(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	}()
	share = share.WithContext(ctx)

	checkSessionProtection(t, s, protection)

	const name = "roundtrip.bin"
	f, err := share.Create(name)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if err := writeParallel(f, data[:roundTripParallel]); err != nil {
		_ = f.Close()
		t.Fatalf("parallel WriteAt: %v", err)
	}
	if _, err := f.Seek(roundTripParallel, io.SeekStart); err != nil {
		_ = f.Close()
		t.Fatalf("seek: %v", err)
	}
	if n, err := f.Write(data[roundTripParallel:]); err != nil || n != len(data)-roundTripParallel {
		_ = f.Close()
		t.Fatalf("sequential write: wrote %d of %d: %v", n, len(data)-roundTripParallel, err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("close after write: %v", err)
	}

	fi, err := share.Stat(name)
	if err != nil {
		t.Fatalf("stat: %v", err)
	}
	if fi.Size() != roundTripSize {
		t.Fatalf("size over SMB: got %d, want %d", fi.Size(), roundTripSize)
	}
	r, err := share.Open(name)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	h := sha256.New()
	n, err := io.Copy(h, r)
	_ = r.Close()
	if err != nil {
		t.Fatalf("read back: %v", err)
	}
	if n != roundTripSize {
		t.Fatalf("read back %d bytes, want %d", n, roundTripSize)
	}
	if got := h.Sum(nil); !bytes.Equal(got, want[:]) {
		t.Fatalf("SHA-256 over SMB: got %x, want %x", got, want)
	}

	local, err := os.ReadFile(filepath.Join(s.Dir, name))
	if err != nil {
		t.Fatalf("local copy: %v", err)
	}
	if got := sha256.Sum256(local); got != want {
		t.Fatalf("SHA-256 of %s in the share's directory: got %x (%d bytes), want %x",
			name, got, len(local), want)
	}
	t.Logf("%s: %d bytes round-tripped, sha256 %s", protection, roundTripSize, hex.EncodeToString(want[:8]))
}

// writeParallel writes data at offset 0 of f with roundTripWriters
// goroutines, each owning one contiguous stripe written in chunks.
func writeParallel(f *smb2.File, data []byte) error {
	stripe := (len(data) + roundTripWriters - 1) / roundTripWriters
	errs := make([]error, roundTripWriters)
	var wg sync.WaitGroup
	for w := range roundTripWriters {
		wg.Go(func() {
			lo := min(w*stripe, len(data))
			hi := min(lo+stripe, len(data))
			for off := lo; off < hi; off += roundTripChunk {
				end := min(off+roundTripChunk, hi)
				if n, err := f.WriteAt(data[off:end], int64(off)); err != nil || n != end-off {
					errs[w] = fmt.Errorf("writer %d at %d: wrote %d of %d: %w", w, off, n, end-off, err)
					return
				}
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// checkSessionProtection asks smbstatus how the open sessions are protected:
// "encrypted" wants every session encrypted, "signing" wants every session
// signed and none encrypted.
func checkSessionProtection(t *testing.T, s *testenv.Samba, protection string) {
	t.Helper()
	smbstatus, err := testenv.LookBinary("smbstatus")
	if err != nil {
		t.Logf("not checking session protection: %v", err)
		return
	}
	out, err := exec.Command(smbstatus, "-s", s.ConfPath, "--json", "-b").Output()
	if err != nil {
		t.Fatalf("smbstatus: %v", err)
	}
	var status struct {
		Sessions map[string]struct {
			Dialect    string `json:"session_dialect"`
			Encryption struct {
				Cipher string `json:"cipher"`
				Degree string `json:"degree"`
			} `json:"encryption"`
			Signing struct {
				Cipher string `json:"cipher"`
				Degree string `json:"degree"`
			} `json:"signing"`
		} `json:"sessions"`
	}
	if err := json.Unmarshal(out, &status); err != nil {
		t.Fatalf("smbstatus --json: %v: %s", err, out)
	}
	if len(status.Sessions) == 0 {
		t.Fatalf("smbstatus lists no session: %s", out)
	}
	for id, ss := range status.Sessions {
		switch protection {
		case "encrypted":
			if ss.Encryption.Degree != "full" {
				t.Fatalf("session %s: encryption %q (%s), want full", id, ss.Encryption.Degree, ss.Encryption.Cipher)
			}
		case "signing":
			if ss.Encryption.Degree != "none" || ss.Signing.Degree != "full" {
				t.Fatalf("session %s: encryption %q, signing %q; want none and full",
					id, ss.Encryption.Degree, ss.Signing.Degree)
			}
		default:
			t.Fatalf("unknown protection %q", protection)
		}
		t.Logf("session %s: %s, encryption %s %s, signing %s %s", id, ss.Dialect,
			ss.Encryption.Degree, ss.Encryption.Cipher, ss.Signing.Degree, ss.Signing.Cipher)
	}
}

type sambaProc struct {
	pid, pgid int
	comm      string
	cmdline   string
}

func (p sambaProc) String() string { return fmt.Sprintf("%d(%s,pgid %d)", p.pid, p.comm, p.pgid) }

// liveSambaProcs lists the processes that are not zombies and either carry
// s.ConfPath in their command line or belong to smbd's process group.
func liveSambaProcs(t *testing.T, s *testenv.Samba) []sambaProc {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatalf("list /proc: %v", err)
	}
	var found []sambaProc
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid pgrp ...; comm may hold spaces.
		end := bytes.LastIndexByte(stat, ')')
		if end < 0 {
			continue
		}
		start := bytes.IndexByte(stat, '(')
		fields := strings.Fields(string(stat[end+1:]))
		if len(fields) < 3 || fields[0] == "Z" || fields[0] == "X" {
			continue
		}
		pgid, _ := strconv.Atoi(fields[2])
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if pgid == s.Pid() || bytes.Contains(cmdline, []byte(s.ConfPath)) {
			found = append(found, sambaProc{
				pid: pid, pgid: pgid, comm: string(stat[start+1 : end]),
				cmdline: string(bytes.ReplaceAll(bytes.TrimRight(cmdline, "\x00"), []byte{0}, []byte{' '})),
			})
		}
	}
	return found
}
