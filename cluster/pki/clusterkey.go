package pki

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
)

// ClusterKeyFile is the cluster key's file name, in the CA directory and in
// every node's bundle directory.
const ClusterKeyFile = "cluster.key"

// ClusterKeySize is the length of a cluster key: 32 random bytes.
const ClusterKeySize = 32

// sealNonceSize and sealTagSize frame a sealed value: nonce, ciphertext, tag.
const (
	sealNonceSize = 12
	sealTagSize   = 16
)

// HKDF info strings. Each use of the cluster key derives its own key, so
// that a value sealed for one purpose never opens for another.
const (
	infoShareCredentials = "twinsnap share credentials v1"
	infoKeyID            = "twinsnap cluster key id v1"
)

// ClusterKey is the cluster's symmetric secret: 32 random bytes created
// with the CA ([NewCA], saved as cluster.key beside ca.key) and copied into
// every node's bundle directory by [WriteBundle]. It seals secrets that
// must be replicated but never stored in clear text, such as the passwords
// of export shares: the Raft log, state checkpoints and API responses only
// ever hold [ClusterKey.Seal]'s output.
//
// The zero ClusterKey holds no key: Seal and Open fail with
// ErrNoClusterKey. A ClusterKey never prints its secret: String, GoString,
// Format and LogValue show its [ClusterKey.ID] only.
type ClusterKey struct {
	secret []byte // ClusterKeySize bytes; never modified
}

// NewClusterKey returns a new random cluster key.
func NewClusterKey() (ClusterKey, error) {
	b := make([]byte, ClusterKeySize)
	if _, err := io.ReadFull(rand.Reader, b); err != nil {
		return ClusterKey{}, fmt.Errorf("pki: new cluster key: %w", err)
	}
	return ClusterKey{secret: b}, nil
}

// ClusterKeyFromBytes returns the cluster key held in b, which must be
// ClusterKeySize bytes; b is copied.
func ClusterKeyFromBytes(b []byte) (ClusterKey, error) {
	if len(b) != ClusterKeySize {
		return ClusterKey{}, fmt.Errorf("%w: %d bytes, want %d", ErrBadClusterKey, len(b), ClusterKeySize)
	}
	return ClusterKey{secret: append([]byte(nil), b...)}, nil
}

// IsZero reports whether k holds no key.
func (k ClusterKey) IsZero() bool { return len(k.secret) == 0 }

// derive returns the 32-byte key for one purpose.
func (k ClusterKey) derive(info string) ([]byte, error) {
	if k.IsZero() {
		return nil, ErrNoClusterKey
	}
	key, err := hkdf.Key(sha256.New, k.secret, nil, info, 32)
	if err != nil {
		return nil, fmt.Errorf("pki: derive key: %w", err)
	}
	return key, nil
}

// ID returns a short fingerprint of the key: the first 8 hexadecimal digits
// of the SHA-256 of a key derived from it for this purpose alone. It tells
// keys apart (a record sealed under another key names another id) without
// revealing anything about them; it is "" for the zero key.
func (k ClusterKey) ID() string {
	d, err := k.derive(infoKeyID)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(d)
	return hex.EncodeToString(sum[:4])
}

func (k ClusterKey) aead() (cipher.AEAD, error) {
	key, err := k.derive(infoShareCredentials)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("pki: seal: %w", err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("pki: seal: %w", err)
	}
	return gcm, nil
}

// Seal encrypts plaintext with AES-256-GCM under a key derived from k by
// HKDF-SHA256 (info "twinsnap share credentials v1") and returns a random
// 12-byte nonce followed by the ciphertext and its 16-byte tag. aad is
// authenticated but not encrypted: [ClusterKey.Open] needs the same aad.
// A share's password is sealed with the share's name as aad, so that the
// sealed bytes cannot be moved to another share's record.
func (k ClusterKey) Seal(plaintext, aad []byte) ([]byte, error) {
	gcm, err := k.aead()
	if err != nil {
		return nil, err
	}
	out := make([]byte, sealNonceSize, sealNonceSize+len(plaintext)+sealTagSize)
	if _, err := io.ReadFull(rand.Reader, out); err != nil {
		return nil, fmt.Errorf("pki: seal: nonce: %w", err)
	}
	return gcm.Seal(out, out, plaintext, aad), nil
}

// Open reverses [ClusterKey.Seal]. Sealed bytes that were changed, sealed
// under another key or with another aad, or are too short fail with an
// error wrapping ErrSealed; nothing of the plaintext is returned then.
func (k ClusterKey) Open(sealed, aad []byte) ([]byte, error) {
	gcm, err := k.aead()
	if err != nil {
		return nil, err
	}
	if len(sealed) < sealNonceSize+sealTagSize {
		return nil, fmt.Errorf("%w: %d bytes is shorter than a nonce and a tag", ErrSealed, len(sealed))
	}
	pt, err := gcm.Open(nil, sealed[:sealNonceSize], sealed[sealNonceSize:], aad)
	if err != nil {
		return nil, fmt.Errorf("%w (cluster key %s)", ErrSealed, k.ID())
	}
	return pt, nil
}

// String returns "cluster-key(ID)", never the key.
func (k ClusterKey) String() string {
	if k.IsZero() {
		return "cluster-key(none)"
	}
	return "cluster-key(" + k.ID() + ")"
}

// GoString is String, so that %#v does not print the key either.
func (k ClusterKey) GoString() string { return k.String() }

// Format prints String for every verb, so that no verb (%x, %d, %+v)
// reaches the key's bytes.
func (k ClusterKey) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, k.String()) }

// LogValue logs the key's id only.
func (k ClusterKey) LogValue() slog.Value { return slog.StringValue(k.String()) }

// MarshalText refuses: a cluster key is written to its file with
// [WriteClusterKey] and goes nowhere else.
func (k ClusterKey) MarshalText() ([]byte, error) {
	return nil, errors.New("pki: a cluster key is not marshalled")
}

// LoadClusterKey reads dir/cluster.key. A missing file is reported with an
// error wrapping ErrNoClusterKey that tells the operator how to get one; a
// file that group or others may read wraps ErrInsecureKey; a file of the
// wrong size wraps ErrBadClusterKey.
func LoadClusterKey(dir string) (ClusterKey, error) {
	path := filepath.Join(dir, ClusterKeyFile)
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return ClusterKey{}, fmt.Errorf("%w: %s does not exist; run `twinsnapd tls node` for this node again with the cluster's CA directory (it copies %s into the node's directory, next to its certificate)",
			ErrNoClusterKey, path, ClusterKeyFile)
	}
	if err != nil {
		return ClusterKey{}, fmt.Errorf("pki: load cluster key: %w", err)
	}
	defer func() { _ = f.Close() }()
	fi, err := f.Stat()
	if err != nil {
		return ClusterKey{}, fmt.Errorf("pki: load cluster key: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return ClusterKey{}, fmt.Errorf("pki: load cluster key: %s: mode %v: %w", path, fi.Mode().Perm(), ErrInsecureKey)
	}
	if !fi.Mode().IsRegular() {
		return ClusterKey{}, fmt.Errorf("pki: load cluster key: %s: %w: not a regular file", path, ErrBadClusterKey)
	}
	b, err := io.ReadAll(io.LimitReader(f, ClusterKeySize+1))
	if err != nil {
		return ClusterKey{}, fmt.Errorf("pki: load cluster key: %w", err)
	}
	k, err := ClusterKeyFromBytes(b)
	if err != nil {
		return ClusterKey{}, fmt.Errorf("pki: load cluster key: %s: %w", path, err)
	}
	return k, nil
}

// WriteClusterKey writes k to dir/cluster.key with mode 0600, creating dir
// (0700) if needed and replacing an earlier file atomically.
func WriteClusterKey(dir string, k ClusterKey) error {
	if k.IsZero() {
		return fmt.Errorf("pki: write cluster key: %w", ErrNoClusterKey)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("pki: write cluster key: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(dir, ClusterKeyFile), k.secret, 0o600); err != nil {
		return fmt.Errorf("pki: write cluster key: %w", err)
	}
	return nil
}

// createClusterKey writes k to dir/cluster.key only if no such file exists
// (fs.ErrExist otherwise), so that two processes never hand out different
// keys for one CA.
func createClusterKey(dir string, k ClusterKey) error {
	return createFileExclusive(filepath.Join(dir, ClusterKeyFile), k.secret, 0o600)
}
