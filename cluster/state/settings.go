package state

import (
	"fmt"
	"maps"

	"github.com/twinsnap/twinsnap/cluster/command"
)

// Settings are the cluster-wide settings.
type Settings struct {
	// SnapshotsEnabled allows taking new snapshots; false in a new cluster.
	SnapshotsEnabled bool `json:"snapshots_enabled"`
	// Values are small free-form settings.
	Values map[string]string `json:"values,omitempty"`
	// UpdatedIndex is the log index of the last change.
	UpdatedIndex uint64 `json:"updated_index"`
}

func (st *Settings) clone() Settings {
	n := *st
	n.Values = maps.Clone(st.Values)
	return n
}

func init() {
	on(command.TypeSettingsSet, applySettingsSet)
}

func applySettingsSet(c *applyCtx, cmd *command.SettingsSet) error {
	n := c.d.settings.clone()
	if cmd.SnapshotsEnabled != nil {
		n.SnapshotsEnabled = *cmd.SnapshotsEnabled
	}
	for k, v := range cmd.Values {
		if v == "" {
			delete(n.Values, k)
			continue
		}
		if n.Values == nil {
			n.Values = map[string]string{}
		}
		n.Values[k] = v
	}
	if len(n.Values) > command.MaxSettings {
		return fmt.Errorf("%w: %d settings values, at most %d", ErrLimit, len(n.Values), command.MaxSettings)
	}
	if len(n.Values) == 0 {
		n.Values = nil
	}
	n.UpdatedIndex = c.index
	c.d.settings = &n
	return nil
}

// Settings returns the cluster settings.
func (s *State) Settings() Settings {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.d.settings.clone()
}
