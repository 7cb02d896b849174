package pki

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func newTestKey(t *testing.T) ClusterKey {
	t.Helper()
	k, err := NewClusterKey()
	if err != nil {
		t.Fatalf("NewClusterKey: %v", err)
	}
	return k
}

func TestClusterKeySealOpen(t *testing.T) {
	k := newTestKey(t)
	secret := []byte("Pa55w0rd: correct horse")
	sealed, err := k.Seal(secret, []byte("nas"))
	if err != nil {
		t.Fatalf("Seal: %v", err)
	}
	if len(sealed) != sealNonceSize+len(secret)+sealTagSize {
		t.Fatalf("sealed is %d bytes, want nonce+%d+tag", len(sealed), len(secret))
	}
	if bytes.Contains(sealed, secret) {
		t.Fatal("sealed bytes hold the plaintext")
	}
	again, err := k.Seal(secret, []byte("nas"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(sealed[:sealNonceSize], again[:sealNonceSize]) || bytes.Equal(sealed, again) {
		t.Fatal("two seals of one value share a nonce")
	}
	for _, s := range [][]byte{sealed, again} {
		got, err := k.Open(s, []byte("nas"))
		if err != nil || !bytes.Equal(got, secret) {
			t.Fatalf("Open = %q, %v; want %q", got, err, secret)
		}
	}
	empty, err := k.Seal(nil, []byte("nas"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := k.Open(empty, []byte("nas")); err != nil || len(got) != 0 {
		t.Fatalf("Open of a sealed empty value = %q, %v", got, err)
	}

	// Everything that must not open.
	other := newTestKey(t)
	refused := map[string]struct {
		key    ClusterKey
		sealed []byte
		aad    string
	}{
		"wrong key":       {other, sealed, "nas"},
		"wrong aad":       {k, sealed, "nas2"},
		"no aad":          {k, sealed, ""},
		"short":           {k, sealed[:sealNonceSize+sealTagSize-1], "nas"},
		"empty":           {k, nil, "nas"},
		"nonce only":      {k, sealed[:sealNonceSize], "nas"},
		"truncated":       {k, sealed[:len(sealed)-1], "nas"},
		"appended":        {k, append(bytes.Clone(sealed), 0), "nas"},
		"swapped nonces":  {k, append(bytes.Clone(again[:sealNonceSize]), sealed[sealNonceSize:]...), "nas"},
		"flipped nonce":   {k, flip(sealed, 0), "nas"},
		"flipped body":    {k, flip(sealed, sealNonceSize+2), "nas"},
		"flipped tag end": {k, flip(sealed, len(sealed)-1), "nas"},
	}
	for name, c := range refused {
		got, err := c.key.Open(c.sealed, []byte(c.aad))
		if !errors.Is(err, ErrSealed) || got != nil {
			t.Fatalf("%s: Open = %q, %v; want ErrSealed", name, got, err)
		}
	}
	for i := range sealed { // every single-byte change
		if _, err := k.Open(flip(sealed, i), []byte("nas")); !errors.Is(err, ErrSealed) {
			t.Fatalf("byte %d flipped: Open = %v, want ErrSealed", i, err)
		}
	}

	var zero ClusterKey
	if _, err := zero.Seal(secret, nil); !errors.Is(err, ErrNoClusterKey) {
		t.Fatalf("zero key Seal = %v, want ErrNoClusterKey", err)
	}
	if _, err := zero.Open(sealed, nil); !errors.Is(err, ErrNoClusterKey) {
		t.Fatalf("zero key Open = %v, want ErrNoClusterKey", err)
	}
}

func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 0x01
	return c
}

// TestClusterKeyKnownAnswer pins the derivations: a value sealed by this
// release must open in every later one, and an id must not change.
func TestClusterKeyKnownAnswer(t *testing.T) {
	k, err := ClusterKeyFromBytes(bytes.Repeat([]byte{0x42}, ClusterKeySize))
	if err != nil {
		t.Fatal(err)
	}
	if got := k.ID(); got != knownID {
		t.Fatalf("ID = %q, want %q", got, knownID)
	}
	sealed := mustHex(t, knownSealed)
	got, err := k.Open(sealed, []byte("nas"))
	if err != nil || string(got) != "secret" {
		t.Fatalf("Open of the pinned value = %q, %v", got, err)
	}
	if _, err := ClusterKeyFromBytes(make([]byte, 31)); !errors.Is(err, ErrBadClusterKey) {
		t.Fatalf("31-byte key = %v, want ErrBadClusterKey", err)
	}
}

// The pinned values for TestClusterKeyKnownAnswer, for the key of 32 bytes
// 0x42 (checked against an independent HKDF and AES-GCM implementation).
const (
	knownID     = "a584ae36"
	knownSealed = "f7314aaa2d8a0cfbf2007febbb18f119beefac8a5ce764db156e32edf64c4c7823df"
)

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("hex %q: %v", s, err)
	}
	return b
}

func TestClusterKeyID(t *testing.T) {
	a, b := newTestKey(t), newTestKey(t)
	if len(a.ID()) != 8 || strings.Trim(a.ID(), "0123456789abcdef") != "" {
		t.Fatalf("ID = %q, want 8 lower-case hex digits", a.ID())
	}
	if a.ID() == b.ID() {
		t.Fatalf("two keys share id %s", a.ID())
	}
	if (ClusterKey{}).ID() != "" {
		t.Fatal("the zero key has an id")
	}
}

// TestClusterKeyNeverPrinted formats a key every way a log line or an
// error might and expects nothing but its id.
func TestClusterKeyNeverPrinted(t *testing.T) {
	k, err := ClusterKeyFromBytes(bytes.Repeat([]byte{0xab}, ClusterKeySize))
	if err != nil {
		t.Fatal(err)
	}
	holder := struct {
		Key  ClusterKey
		PKey *ClusterKey
	}{k, &k}
	var logs bytes.Buffer
	// Without timestamps: their digits could spell the decimal byte.
	noTime := &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}}
	slog.New(slog.NewTextHandler(&logs, noTime)).Info("x", "key", k, "holder", holder)
	slog.New(slog.NewJSONHandler(&logs, noTime)).Info("x", "key", k)
	out := []string{logs.String()}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%x", "%X", "%d", "%q"} {
		out = append(out, fmt.Sprintf(verb, k), fmt.Sprintf(verb, holder), fmt.Sprintf(verb, &k))
	}
	for _, s := range out {
		if strings.Contains(strings.ToLower(s), "abab") || strings.Contains(s, "171") {
			t.Fatalf("key bytes printed: %s", s)
		}
		if !strings.Contains(s, k.ID()) {
			t.Fatalf("output %q does not name the key's id", s)
		}
	}
	if _, err := json.Marshal(holder); err == nil {
		t.Fatal("json.Marshal of a cluster key succeeded")
	}
}

func TestClusterKeyFiles(t *testing.T) {
	dir := t.TempDir()
	_, err := LoadClusterKey(dir)
	if !errors.Is(err, ErrNoClusterKey) || !strings.Contains(err.Error(), "twinsnapd tls node") {
		t.Fatalf("missing key: %v; want ErrNoClusterKey telling to run twinsnapd tls node", err)
	}
	k := newTestKey(t)
	if err := WriteClusterKey(dir, k); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, ClusterKeyFile)
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Size() != ClusterKeySize {
		t.Fatalf("cluster.key: %v %v", fi, err)
	}
	got, err := LoadClusterKey(dir)
	if err != nil || got.ID() != k.ID() {
		t.Fatalf("LoadClusterKey = %v, %v; want %v", got, err, k)
	}
	if err := WriteClusterKey(dir, ClusterKey{}); !errors.Is(err, ErrNoClusterKey) {
		t.Fatalf("WriteClusterKey(zero) = %v", err)
	}
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadClusterKey(dir); !errors.Is(err, ErrInsecureKey) {
		t.Fatalf("0640 key = %v, want ErrInsecureKey", err)
	}
	for _, size := range []int{0, 16, 33, 64} {
		if err := os.WriteFile(path, make([]byte, size), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadClusterKey(dir); !errors.Is(err, ErrBadClusterKey) {
			t.Fatalf("%d-byte file = %v, want ErrBadClusterKey", size, err)
		}
	}
}

// TestCAClusterKey: tls ca makes a key, tls node copies it into node
// bundles only, and a CA directory from before cluster keys gets one, the
// same for every node.
func TestCAClusterKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	ca := newTestCA(t, "c1")
	if ca.ClusterKey == nil || ca.ClusterKey.IsZero() {
		t.Fatal("NewCA made no cluster key")
	}
	if err := ca.Save(dir); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, ClusterKeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("CA's cluster.key: %v %v", fi, err)
	}
	loaded, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if loaded.ClusterKey.ID() != ca.ClusterKey.ID() {
		t.Fatalf("loaded CA's key %v, saved %v", loaded.ClusterKey, ca.ClusterKey)
	}

	node, err := loaded.IssueNode("n1", time.Hour, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	admin, err := loaded.IssueAdmin("alice", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if admin.ClusterKey != nil {
		t.Fatal("an admin bundle carries the cluster key")
	}
	nodeDir, adminDir := filepath.Join(t.TempDir(), "n1"), filepath.Join(t.TempDir(), "alice")
	if err := WriteBundle(nodeDir, node); err != nil {
		t.Fatal(err)
	}
	if err := WriteBundle(adminDir, admin); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(nodeDir, ClusterKeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("node's cluster.key: %v %v", fi, err)
	}
	if _, err := os.Stat(filepath.Join(adminDir, ClusterKeyFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("admin directory has a cluster key: %v", err)
	}
	nk, err := LoadClusterKey(nodeDir)
	if err != nil || nk.ID() != ca.ClusterKey.ID() {
		t.Fatalf("node's key %v, %v; want the CA's %v", nk, err, ca.ClusterKey)
	}
	// Sealed on one node, opened on another.
	sealed, err := ca.ClusterKey.Seal([]byte("pw"), []byte("nas"))
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := nk.Open(sealed, []byte("nas")); err != nil || string(pt) != "pw" {
		t.Fatalf("node opens %q, %v", pt, err)
	}
	// LoadBundle neither needs nor loads the key.
	if b, err := LoadBundle(adminDir, "alice"); err != nil || b.ClusterKey != nil {
		t.Fatalf("LoadBundle without a cluster key: %v", err)
	}

	// Save refuses to replace a cluster key.
	other := newTestCA(t, "c2")
	if err := os.Remove(filepath.Join(dir, CACertFile)); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, CAKeyFile)); err != nil {
		t.Fatal(err)
	}
	if err := other.Save(dir); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("Save over an existing cluster.key = %v, want fs.ErrExist", err)
	}
}

func TestLoadCACreatesMissingClusterKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	ca := newTestCA(t, "old")
	ca.ClusterKey = nil // a CA saved by a release without cluster keys
	if err := ca.Save(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, ClusterKeyFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("old-style CA has a cluster key: %v", err)
	}
	// Concurrent `tls node` runs against the old CA directory agree on one key.
	ids := make([]string, 8)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := LoadCA(dir)
			if err != nil {
				t.Error(err)
				return
			}
			ids[i] = c.ClusterKey.ID()
		}()
	}
	wg.Wait()
	for _, id := range ids {
		if id == "" || id != ids[0] {
			t.Fatalf("LoadCA runs created different keys: %v", ids)
		}
	}
	fi, err := os.Stat(filepath.Join(dir, ClusterKeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("created cluster.key: %v %v", fi, err)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(dir, ".*tmp*")); len(leftovers) != 0 {
		t.Fatalf("temporary files left: %v", leftovers)
	}
	again, err := LoadCA(dir)
	if err != nil || again.ClusterKey.ID() != ids[0] {
		t.Fatalf("LoadCA later: %v %v", again, err)
	}
}
