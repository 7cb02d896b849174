package state

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/twinsnap/twinsnap/cluster/command"
)

func TestShares(t *testing.T) {
	h := newHarness(t)
	h.cluster()
	before := h.st.Digest()
	nas := shareAdded("nas")
	res := h.ok(nas)
	if h.st.Digest() == before {
		t.Fatal("adding a share left the digest as it was")
	}
	h.refused(shareAdded("nas"), ErrExists)
	h.ok(&command.ShareAdded{Name: "local", URL: "file:///srv/exports", CreatedAt: t0})
	bad := shareAdded("x")
	bad.URL = "smb://backup:pw@nas/x"
	h.refused(bad, ErrInvalid)

	sh, err := h.st.Share("nas")
	if err != nil {
		t.Fatal(err)
	}
	want := Share{
		Name: "nas", URL: nas.URL, User: "backup", Domain: "EXAMPLE", Password: nas.Password,
		KeyID: nas.KeyID, CreatedAt: t0, CreatedIndex: res.Index,
	}
	if !reflect.DeepEqual(sh, want) {
		t.Fatalf("Share(nas) = %+v\nwant %+v", sh, want)
	}
	sh.Password[0] ^= 0xff // a copy: the state keeps its own
	if again, _ := h.st.Share("nas"); !bytes.Equal(again.Password, nas.Password) {
		t.Fatal("Share returned the state's own password bytes")
	}
	if got := ids(h.st.Shares(), func(s Share) string { return s.Name }); got != "[local nas]" {
		t.Fatalf("Shares = %s", got)
	}
	if _, err := h.st.Share("nope"); !errorsIs(err, ErrNotFound) {
		t.Fatalf("Share(nope) = %v", err)
	}

	// A share in use by a job that is not final stays.
	h.completeSnapshot("s1", nil, "vol-1")
	h.ok(exportShareJob("j1", "s1", "node-a", "nas"))
	h.ok(&command.ImportJobCreated{ID: "j2", Node: "node-b", Share: "local", Path: "x.ovf", VMName: "x", Creator: "a", CreatedAt: t0})
	h.refused(&command.ShareRemoved{Name: "nas", At: t0}, ErrInUse)
	h.refused(&command.ShareRemoved{Name: "local", At: t0}, ErrInUse)
	h.refused(&command.ShareRemoved{Name: "nope", At: t0}, ErrNotFound)
	if got := h.st.Jobs(JobFilter{Share: "nas"}); len(got) != 1 || got[0].ID != "j1" {
		t.Fatalf("jobs of share nas = %+v", got)
	}
	h.ok(jobState("j1", command.JobRunning, ""))
	h.ok(jobState("j1", command.JobFailed, "share went away"))
	h.ok(&command.ShareRemoved{Name: "nas", At: t0}) // j1 is final
	if _, err := h.st.Share("nas"); !errorsIs(err, ErrNotFound) {
		t.Fatalf("removed share: %v", err)
	}
	h.ok(jobState("j2", command.JobCancelled, ""))
	h.ok(&command.ShareRemoved{Name: "local", At: t0})
	if len(h.st.Shares()) != 0 {
		t.Fatalf("shares left: %+v", h.st.Shares())
	}
	// The name is free again; the final job keeps naming it as history.
	h.ok(shareAdded("nas"))
	if j, _ := h.st.Job("j1"); j.Share != "nas" {
		t.Fatalf("final job lost its share: %+v", j)
	}
}

// TestShareCheckpointRoundTrip restores shares, sealed passwords included.
func TestShareCheckpointRoundTrip(t *testing.T) {
	h := newHarness(t)
	h.ok(shareAdded("b"))
	h.ok(shareAdded("a"))
	h.ok(&command.ShareAdded{Name: "c", URL: "file:///x", CreatedAt: t0})
	b := checkpointBytes(t, h.st)
	st := restored(t, b)
	if !reflect.DeepEqual(st.Shares(), h.st.Shares()) || st.Digest() != h.st.Digest() {
		t.Fatalf("restored shares %+v\nwant %+v", st.Shares(), h.st.Shares())
	}
	if !bytes.Contains(b, []byte(`"password":"c3Nz`)) { // base64 of the sealed bytes
		t.Fatalf("checkpoint does not hold the sealed password as base64")
	}
}
