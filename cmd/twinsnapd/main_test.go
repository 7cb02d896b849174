package main

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/twinsnap/twinsnap/cluster/pki"
)

func run(t *testing.T, args ...string) error {
	t.Helper()
	root := rootCommand()
	root.SetArgs(args)
	return root.Execute()
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

// TestTLSClusterKey: tls ca creates cluster.key, tls node copies it into
// each node's directory, tls admin does not, and a CA directory from
// before cluster keys gets one on the next tls node.
func TestTLSClusterKey(t *testing.T) {
	base := t.TempDir()
	caDir := filepath.Join(base, "ca")
	if err := run(t, "tls", "ca", "--dir", caDir); err != nil {
		t.Fatalf("tls ca: %v", err)
	}
	if m := mode(t, filepath.Join(caDir, pki.ClusterKeyFile)); m != 0o600 {
		t.Fatalf("CA's cluster.key mode %v", m)
	}
	caKey, err := pki.LoadClusterKey(caDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"data-a", "witness"} {
		out := filepath.Join(base, id)
		if err := run(t, "tls", "node", "--ca-dir", caDir, "--id", id, "--host", "127.0.0.1", "--out", out); err != nil {
			t.Fatalf("tls node %s: %v", id, err)
		}
		if m := mode(t, filepath.Join(out, pki.ClusterKeyFile)); m != 0o600 {
			t.Fatalf("%s: cluster.key mode %v", id, m)
		}
		k, err := pki.LoadClusterKey(out)
		if err != nil || k.ID() != caKey.ID() {
			t.Fatalf("%s: cluster key %v, %v; want %v", id, k, err, caKey)
		}
	}
	adminOut := filepath.Join(base, "alice")
	if err := run(t, "tls", "admin", "--ca-dir", caDir, "--name", "alice", "--out", adminOut); err != nil {
		t.Fatalf("tls admin: %v", err)
	}
	if _, err := os.Stat(filepath.Join(adminOut, pki.ClusterKeyFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("admin directory holds a cluster key: %v", err)
	}
	if err := run(t, "tls", "ca", "--dir", caDir); err == nil {
		t.Fatal("a second tls ca in the same directory succeeded")
	}

	// A cluster set up before cluster keys: neither the CA directory nor
	// the node directory has one. The node still loads its bundle; tls node
	// run again creates the key in the CA directory and copies it.
	if err := os.Remove(filepath.Join(caDir, pki.ClusterKeyFile)); err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(base, "data-b")
	if err := run(t, "tls", "node", "--ca-dir", caDir, "--id", "data-b", "--host", "127.0.0.1", "--out", old); err != nil {
		t.Fatal(err)
	}
	newKey, err := pki.LoadClusterKey(caDir)
	if err != nil {
		t.Fatalf("tls node did not create the missing CA cluster key: %v", err)
	}
	if k, err := pki.LoadClusterKey(old); err != nil || k.ID() != newKey.ID() {
		t.Fatalf("node key %v, %v; want %v", k, err, newKey)
	}
	if err := os.Remove(filepath.Join(old, pki.ClusterKeyFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.LoadBundle(old, "data-b"); err != nil {
		t.Fatalf("a node directory without cluster.key no longer loads: %v", err)
	}
	if _, err := pki.LoadClusterKey(old); !errors.Is(err, pki.ErrNoClusterKey) {
		t.Fatalf("LoadClusterKey without the file = %v, want ErrNoClusterKey", err)
	}
}

func TestUsageErrors(t *testing.T) {
	var ue usageError
	if err := run(t, "tls", "ca"); !errors.As(err, &ue) {
		t.Fatalf("tls ca without --dir = %v, want a usage error", err)
	}
	if err := run(t, "tls", "node", "--ca-dir", "x"); !errors.As(err, &ue) {
		t.Fatalf("tls node without --id = %v, want a usage error", err)
	}
}
