package command

import (
	"fmt"
	"io"
	"log/slog"
	"time"
)

// Sealed is a secret sealed with the cluster key (cluster/pki's
// ClusterKey.Seal: a nonce, the AES-256-GCM ciphertext and its tag, bound
// to the record it belongs to). In JSON it is base64. Only a node holding
// the cluster key can open it; still, it never prints its bytes: String,
// GoString, Format and LogValue show its length only.
type Sealed []byte

// String returns "sealed(N bytes)", or "none" when empty.
func (s Sealed) String() string {
	if len(s) == 0 {
		return "none"
	}
	return fmt.Sprintf("sealed(%d bytes)", len(s))
}

// GoString is String, so that %#v does not print the bytes either.
func (s Sealed) GoString() string { return s.String() }

// Format prints String for every verb (%x and %d included).
func (s Sealed) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, s.String()) }

// LogValue logs String.
func (s Sealed) LogValue() slog.Value { return slog.StringValue(s.String()) }

// ShareAdded records a share that export and import jobs read and write:
// an SMB share, or a local directory for tests and appliances with a
// mounted file system. The password is given once, by an operator, and
// sealed with the cluster key before the command is proposed; the clear
// text never reaches the log.
type ShareAdded struct {
	// Name identifies the share; jobs name it.
	Name string `json:"name"`
	// URL is smb://host[:port]/share[/dir...] or file:///abs/dir. It
	// carries no credentials.
	URL string `json:"url"`
	// User is the SMB user name; empty for guest access and file shares.
	User string `json:"user,omitempty"`
	// Domain is the SMB domain or workgroup; optional, only with a user.
	Domain string `json:"domain,omitempty"`
	// Password is the SMB password sealed with the cluster key, with the
	// share's name as additional data; empty for none.
	Password Sealed `json:"password,omitempty"`
	// KeyID is the id of the cluster key that sealed Password (ClusterKey.ID);
	// required with a password and only with one.
	KeyID string `json:"key_id,omitempty"`
	// CreatedAt is when the share was added.
	CreatedAt time.Time `json:"created_at"`
}

// Type implements Command.
func (ShareAdded) Type() Type { return TypeShareAdded }

// Validate implements Command.
func (c ShareAdded) Validate() error {
	if err := checkID("name", c.Name); err != nil {
		return err
	}
	scheme, err := checkShareURL("url", c.URL)
	if err != nil {
		return err
	}
	if err := checkLine("user", c.User, MaxUserLen); err != nil {
		return err
	}
	if err := checkLine("domain", c.Domain, MaxDomainLen); err != nil {
		return err
	}
	if scheme == "file" && (c.User != "" || c.Domain != "" || len(c.Password) > 0) {
		return invalid("user", "a file:// share takes no user, domain or password")
	}
	if c.Domain != "" && c.User == "" {
		return invalid("domain", "only with a user")
	}
	switch n := len(c.Password); {
	case n > MaxSealedLen:
		return invalid("password", "sealed password of %d bytes, at most %d", n, MaxSealedLen)
	case n > 0 && n < MinSealedLen:
		return invalid("password", "sealed password of %d bytes, at least %d (nonce and tag)", n, MinSealedLen)
	case n > 0 && c.User == "":
		return invalid("password", "a password needs a user")
	case n > 0:
		if err := checkID("key_id", c.KeyID); err != nil {
			return err
		}
	case c.KeyID != "":
		return invalid("key_id", "only with a sealed password")
	}
	return checkTime("created_at", c.CreatedAt)
}

// String describes the command without the sealed password's bytes.
func (c ShareAdded) String() string {
	return fmt.Sprintf("share-added{name=%q url=%q user=%q domain=%q password=%s key_id=%q created_at=%s}",
		c.Name, c.URL, c.User, c.Domain, c.Password, c.KeyID, c.CreatedAt.UTC().Format(time.RFC3339Nano))
}

// GoString is String, so that %#v does not print the sealed bytes either.
func (c ShareAdded) GoString() string { return c.String() }

// LogValue logs the command's fields with the password as its length only.
func (c ShareAdded) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("type", TypeShareAdded.String()),
		slog.String("name", c.Name),
		slog.String("url", c.URL),
		slog.String("user", c.User),
		slog.String("domain", c.Domain),
		slog.String("password", c.Password.String()),
		slog.String("key_id", c.KeyID),
		slog.Time("created_at", c.CreatedAt),
	)
}

// ShareRemoved forgets a share. A share that an unfinished job uses cannot
// be removed.
type ShareRemoved struct {
	// Name is the share.
	Name string `json:"name"`
	// At is when the removal was accepted.
	At time.Time `json:"at"`
}

// Type implements Command.
func (ShareRemoved) Type() Type { return TypeShareRemoved }

// Validate implements Command.
func (c ShareRemoved) Validate() error {
	if err := checkID("name", c.Name); err != nil {
		return err
	}
	return checkTime("at", c.At)
}

func init() {
	register[ShareAdded](TypeShareAdded, "share-added")
	register[ShareRemoved](TypeShareRemoved, "share-removed")
}
