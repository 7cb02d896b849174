package state

import (
	"fmt"
	"testing"

	"github.com/twinsnap/twinsnap/cluster/command"
)

func TestSettingsSet(t *testing.T) {
	h := newHarness(t)
	if s := h.st.Settings(); s.SnapshotsEnabled || len(s.Values) != 0 {
		t.Fatalf("new cluster settings = %+v, want snapshots off and no values", s)
	}
	h.ok(&command.SettingsSet{SnapshotsEnabled: &enabled, Values: map[string]string{"a": "1", "b": "2"}})
	h.ok(&command.SettingsSet{Values: map[string]string{"a": "", "c": "3"}})
	s := h.st.Settings()
	if !s.SnapshotsEnabled || len(s.Values) != 2 || s.Values["b"] != "2" || s.Values["c"] != "3" || s.UpdatedIndex != 2 {
		t.Fatalf("settings = %+v", s)
	}
	s.Values["b"] = "changed"
	if h.st.Settings().Values["b"] != "2" {
		t.Fatalf("Settings() returned shared map")
	}
	off := false
	h.ok(&command.SettingsSet{SnapshotsEnabled: &off})
	if h.st.Settings().SnapshotsEnabled {
		t.Fatalf("snapshots still enabled")
	}

	h.refused(&command.SettingsSet{}, ErrInvalid)
	h.refused(&command.SettingsSet{Values: map[string]string{"bad key": "x"}}, ErrInvalid)
	many := map[string]string{}
	for i := 0; i < command.MaxSettings-1; i++ {
		many[fmt.Sprintf("k%d", i)] = "v"
	}
	h.refused(&command.SettingsSet{Values: many}, ErrLimit) // 63 new + b + c
}
