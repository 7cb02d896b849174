package state

import (
	"fmt"
	"slices"
	"time"

	"github.com/twinsnap/twinsnap/cluster/command"
)

// Share is a location export and import jobs write to and read from: an
// SMB share or a local directory. Its password is held sealed with the
// cluster key, never in clear text; Sealed never prints its bytes, and API
// responses must leave Password out.
type Share struct {
	// Name identifies the share.
	Name string `json:"name"`
	// URL is smb://host[:port]/share[/dir...] or file:///dir.
	URL string `json:"url"`
	// User is the SMB user name; empty for guest access.
	User string `json:"user,omitempty"`
	// Domain is the SMB domain or workgroup.
	Domain string `json:"domain,omitempty"`
	// Password is the SMB password, sealed with the cluster key and the
	// share's name as additional data; empty for none.
	Password command.Sealed `json:"password,omitempty"`
	// KeyID is the id of the cluster key that sealed Password.
	KeyID string `json:"key_id,omitempty"`
	// CreatedAt is when the share was added.
	CreatedAt time.Time `json:"created_at"`
	// CreatedIndex is the log index of share-added.
	CreatedIndex uint64 `json:"created_index"`
}

func (sh *Share) clone() Share {
	n := *sh
	n.Password = slices.Clone(sh.Password)
	return n
}

func init() {
	on(command.TypeShareAdded, applyShareAdded)
	on(command.TypeShareRemoved, applyShareRemoved)
}

func applyShareAdded(c *applyCtx, cmd *command.ShareAdded) error {
	if c.d.shares.get(cmd.Name) != nil {
		return fmt.Errorf("share %q: %w", cmd.Name, ErrExists)
	}
	c.d.shares.put(cmd.Name, &Share{
		Name: cmd.Name, URL: cmd.URL, User: cmd.User, Domain: cmd.Domain,
		Password: slices.Clone(cmd.Password), KeyID: cmd.KeyID,
		CreatedAt: cmd.CreatedAt.UTC(), CreatedIndex: c.index,
	})
	return nil
}

func applyShareRemoved(c *applyCtx, cmd *command.ShareRemoved) error {
	d := c.d
	if d.shares.get(cmd.Name) == nil {
		return fmt.Errorf("share %q: %w", cmd.Name, ErrNotFound)
	}
	for _, j := range d.jobs.sorted() {
		if j.Share == cmd.Name && !j.State.Final() {
			return fmt.Errorf("%w: share %q is used by %s %s job %q", ErrInUse, cmd.Name, j.State, j.Kind, j.ID)
		}
	}
	d.shares.del(cmd.Name)
	return nil
}

// Share returns the share called name, or an error wrapping ErrNotFound.
func (s *State) Share(name string) (Share, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	sh := s.d.shares.get(name)
	if sh == nil {
		return Share{}, fmt.Errorf("share %q: %w", name, ErrNotFound)
	}
	return sh.clone(), nil
}

// Shares returns every share, sorted by name.
func (s *State) Shares() []Share {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []Share
	for _, sh := range s.d.shares.sorted() {
		out = append(out, sh.clone())
	}
	return out
}
