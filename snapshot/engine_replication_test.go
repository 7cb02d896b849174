package snapshot

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/cluster/state"
)

// TestEngineReplicationInterrupted: the peer's data port goes away in the
// middle of an image; the snapshot stays partial, and once the port is
// back the transfer resumes where the peer's last synced chunk ended and
// the snapshot completes.
func TestEngineReplicationInterrupted(t *testing.T) {
	t.Parallel()
	sys := newSystem(t, sysOptions{writeLen: 8 * mib})
	// Once 3 MiB of the first image are on their way, the sender stalls
	// until the peer has synced some of them, then the peer's port closes
	// (at once: its transfer must not wait out the idle timeout).
	cut := make(chan error, 1)
	sys.a.dial.arm(3*mib, func() {
		if err := waitSynced(filepath.Join(sys.b.root, "vol-boot", "images")); err != nil {
			cut <- err
			return
		}
		start := time.Now()
		sys.b.stopReceiver()
		if d := time.Since(start); d > 5*time.Second {
			cut <- fmt.Errorf("the peer's receiver took %v to stop", d)
			return
		}
		cut <- nil
	})
	s := sys.snapshot(PlanRequest{})
	select {
	case err := <-cut:
		if err != nil {
			t.Fatalf("cutting the transfer: %v", err)
		}
	case <-time.After(waitLimit):
		t.Fatalf("the transfer was not cut")
	}
	sys.waitFor("node-a to notice the cut", func() bool {
		p, ok := sys.a.engine().Progress(s.ID)
		return ok && strings.HasPrefix(p.Detail, "retrying")
	})
	if sn, err := sys.raft.st.Snapshot(s.ID); err != nil || sn.State != state.Partial {
		t.Fatalf("snapshot with the peer away: %s, %v; want partial", sn.State, err)
	}
	img := sys.b.imagePath(s.ID, "vol-boot")
	for _, p := range []string{img + partSuffix, img + progressSuffix} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("the peer kept no partial transfer: %v", err)
		}
	}
	if _, err := os.Stat(img); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the peer has the image at its final path after a cut: %v", err)
	}

	sys.b.startReceiver()
	sys.waitState(s.ID, state.Complete)
	sys.checkReplicas(s.ID)
	resumed := int64(0)
	for _, line := range sys.logs.lines(`msg="replicated an image"`, "volume=vol-boot") {
		if m := regexp.MustCompile(`resumed_at=(\d+)`).FindStringSubmatch(line); m != nil {
			resumed, _ = strconv.ParseInt(m[1], 10, 64)
		}
	}
	if resumed == 0 {
		t.Fatalf("the transfer of vol-boot started over; want it resumed (log: %q)", sys.logs.lines("replicated an image"))
	}
	for _, p := range []string{img + partSuffix, img + progressSuffix} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("partial transfer left on the peer: %v", err)
		}
	}
}

// TestEngineReceivedImageCorrupt: the peer received every image but
// stopped before recording them; one changed meanwhile. The restarted
// peer hashes what it finds, drops the image that does not verify, and
// the coordinator sends it again; the snapshot completes with intact
// images. Meanwhile the coordinator does not hammer the peer.
func TestEngineReceivedImageCorrupt(t *testing.T) {
	t.Parallel()
	sys := newSystem(t, sysOptions{uefi: true})
	// node-b's receiver runs, its engine does not: images arrive and are
	// not recorded.
	sys.b.stopEngine()
	s := sys.snapshot(PlanRequest{VolumeIDs: []string{"vol-data"}})
	img := sys.b.imagePath(s.ID, "vol-data")
	sys.waitFor("node-b to hold every image", func() bool {
		for _, p := range []string{sys.b.imagePath(s.ID, "vol-boot"), img, sys.b.engine().UEFIVarsPath(s.ID)} {
			if _, err := os.Stat(p); err != nil {
				return false
			}
		}
		return true
	})
	dials := sys.a.dial.dialCount()
	time.Sleep(2 * time.Second)
	if n := sys.a.dial.dialCount() - dials; n > 3 {
		t.Fatalf("the coordinator connected %d times in 2 s to a peer holding every image; want it to wait for the peer's record", n)
	}

	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatalf("reading the received image: %v", err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(img, b, 0o640); err != nil {
		t.Fatalf("corrupting the received image: %v", err)
	}
	sys.b.restart()
	sys.waitState(s.ID, state.Complete)
	sys.checkReplicas(s.ID)
	if got := sys.logs.lines("a received image does not verify; fetching it again", "volume=vol-data"); len(got) != 1 {
		t.Fatalf("log lines about the image that did not verify: %q, want one", got)
	}
	if got := sys.transitions(s.ID); !slices.Equal(got, []string{"snapshot-created→creating", "snapshot-captured→partial", "replica-written→complete"}) {
		t.Fatalf("snapshot went %v", got)
	}
}

// waitSynced waits until a receiver's progress record in dir says that
// part of an image is written and synced.
func waitSynced(dir string) error {
	for deadline := time.Now().Add(waitLimit); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		recs, _ := filepath.Glob(filepath.Join(dir, "*"+progressSuffix))
		for _, p := range recs {
			if b, err := os.ReadFile(p); err == nil && len(b) == progressLen && binary.BigEndian.Uint64(b[48:]) > 0 {
				return nil
			}
		}
	}
	return errors.New("no progress record with an offset")
}
