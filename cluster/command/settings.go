package command

import "sort"

// SettingsSet changes cluster-wide settings. Fields left nil or absent keep
// their current value.
type SettingsSet struct {
	// SnapshotsEnabled turns taking new snapshots on or off; nil keeps the
	// current value. Snapshots in flight finish either way.
	SnapshotsEnabled *bool `json:"snapshots_enabled,omitempty"`
	// Values sets small free-form settings (key to value); an empty value
	// deletes the key. Keys are ids (see MaxIDLen); at most MaxSettings
	// entries per command and in total.
	Values map[string]string `json:"values,omitempty"`
}

// Type implements Command.
func (SettingsSet) Type() Type { return TypeSettingsSet }

// Validate implements Command.
func (c SettingsSet) Validate() error {
	if c.SnapshotsEnabled == nil && len(c.Values) == 0 {
		return invalid("settings", "nothing to set")
	}
	if len(c.Values) > MaxSettings {
		return invalid("values", "%d entries, at most %d", len(c.Values), MaxSettings)
	}
	keys := make([]string, 0, len(c.Values))
	for k := range c.Values {
		keys = append(keys, k)
	}
	sort.Strings(keys) // report the same error for the same input every time
	for _, k := range keys {
		if err := checkID("values key", k); err != nil {
			return err
		}
		if err := checkText("values["+k+"]", c.Values[k], MaxSettingValueLen); err != nil {
			return err
		}
	}
	return nil
}

func init() {
	register[SettingsSet](TypeSettingsSet, "settings-set")
}
