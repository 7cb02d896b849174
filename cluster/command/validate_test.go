package command

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestSamplesValidate(t *testing.T) {
	for name, c := range samples() {
		if err := c.Validate(); err != nil {
			t.Fatalf("%s: Validate = %v", name, err)
		}
	}
}

// TestValidateRefuses changes one thing in a valid sample and expects
// Validate to refuse it, naming the field.
func TestValidateRefuses(t *testing.T) {
	type mutation struct {
		sample string
		field  string // expected ValidationError.Field prefix
		mutate func(Command)
	}
	long := strings.Repeat("x", 200)
	cases := map[string]mutation{
		// nodes
		"node no id":           {"node-added-data", "id", func(c Command) { c.(*NodeAdded).ID = "" }},
		"node id chars":        {"node-added-data", "id", func(c Command) { c.(*NodeAdded).ID = "a/b" }},
		"node id leading dash": {"node-added-data", "id", func(c Command) { c.(*NodeAdded).ID = "-a" }},
		"node id long":         {"node-added-data", "id", func(c Command) { c.(*NodeAdded).ID = long }},
		"node role":            {"node-added-data", "role", func(c Command) { c.(*NodeAdded).Role = "arbiter" }},
		"node raft addr":       {"node-added-data", "raft_address", func(c Command) { c.(*NodeAdded).RaftAddress = "10.0.0.1" }},
		"node api port 0":      {"node-added-data", "api_address", func(c Command) { c.(*NodeAdded).APIAddress = "h:0" }},
		"node api port big":    {"node-added-data", "api_address", func(c Command) { c.(*NodeAdded).APIAddress = "h:70000" }},
		"node no host":         {"node-added-data", "raft_address", func(c Command) { c.(*NodeAdded).RaftAddress = ":7000" }},
		"data node no data":    {"node-added-data", "data_address", func(c Command) { c.(*NodeAdded).DataAddress = "" }},
		"witness with data":    {"node-added-witness", "data_address", func(c Command) { c.(*NodeAdded).DataAddress = "w:1" }},
		"node updated role":    {"node-updated", "role", func(c Command) { c.(*NodeUpdated).Role = "" }},
		"node removed no id":   {"node-removed", "id", func(c Command) { c.(*NodeRemoved).ID = "" }},
		// settings
		"settings empty":      {"settings-set", "settings", func(c Command) { *c.(*SettingsSet) = SettingsSet{} }},
		"settings bad key":    {"settings-set", "values key", func(c Command) { c.(*SettingsSet).Values["a b"] = "1" }},
		"settings long value": {"settings-set", "values[retention.max]", func(c Command) { c.(*SettingsSet).Values["retention.max"] = strings.Repeat("v", 2000) }},
		"settings ctrl value": {"settings-set", "values[retention.max]", func(c Command) { c.(*SettingsSet).Values["retention.max"] = "a\x00b" }},
		"settings many values": {"settings-set", "values", func(c Command) {
			for i := 0; i < MaxSettings+1; i++ {
				c.(*SettingsSet).Values[strings.Repeat("k", i+1)] = "v"
			}
		}},
		// VMs
		"vm no name":          {"vm-registered", "name", func(c Command) { c.(*VMRegistered).Name = "" }},
		"vm name slash":       {"vm-registered", "name", func(c Command) { c.(*VMRegistered).Name = "a/b" }},
		"vm name spaces":      {"vm-registered", "name", func(c Command) { c.(*VMRegistered).Name = " web" }},
		"vm name utf8":        {"vm-registered", "name", func(c Command) { c.(*VMRegistered).Name = "\xff" }},
		"vm name ctrl":        {"vm-registered", "name", func(c Command) { c.(*VMRegistered).Name = "a\tb" }},
		"vm host":             {"vm-registered", "host_node", func(c Command) { c.(*VMRegistered).HostNode = "" }},
		"vm driver":           {"vm-registered", "driver", func(c Command) { c.(*VMRegistered).Driver = "xen" }},
		"vm qemu missing":     {"vm-registered", "qemu", func(c Command) { c.(*VMRegistered).QEMU = nil }},
		"vm qemu and libvirt": {"vm-registered", "qemu", func(c Command) { c.(*VMRegistered).Libvirt = &LibvirtConnection{URI: "qemu:///system", Domain: "d"} }},
		"vm qmp relative":     {"vm-registered", "qemu.qmp_socket", func(c Command) { c.(*VMRegistered).QEMU.QMPSocket = "run/qmp.sock" }},
		"vm qmp unclean":      {"vm-registered", "qemu.qmp_socket", func(c Command) { c.(*VMRegistered).QEMU.QMPSocket = "/run/../qmp.sock" }},
		"vm qmp long":         {"vm-registered", "qemu.qmp_socket", func(c Command) { c.(*VMRegistered).QEMU.QMPSocket = "/" + long }},
		"vm agent relative":   {"vm-registered", "qemu.agent_socket", func(c Command) { c.(*VMRegistered).QEMU.AgentSocket = "qga" }},
		"vm libvirt missing":  {"vm-updated", "libvirt", func(c Command) { c.(*VMUpdated).Libvirt = nil }},
		"vm libvirt scheme":   {"vm-updated", "libvirt.uri", func(c Command) { c.(*VMUpdated).Libvirt.URI = "http://x/" }},
		"vm libvirt password": {"vm-updated", "libvirt.uri", func(c Command) { c.(*VMUpdated).Libvirt.URI = "qemu+tls://u:pw@h/system" }},
		"vm libvirt domain":   {"vm-updated", "libvirt.domain", func(c Command) { c.(*VMUpdated).Libvirt.Domain = "" }},
		"vm freeze timeout":   {"vm-registered", "freeze_timeout", func(c Command) { c.(*VMRegistered).FreezeTimeout = 0 }},
		"vm freeze negative":  {"vm-registered", "freeze_timeout", func(c Command) { c.(*VMRegistered).FreezeTimeout = -time.Second }},
		"vm freeze too long":  {"vm-registered", "freeze_timeout", func(c Command) { c.(*VMRegistered).FreezeTimeout = time.Hour }},
		"vm no volumes":       {"vm-registered", "volumes", func(c Command) { c.(*VMRegistered).Volumes = nil }},
		"vm no boot":          {"vm-registered", "volumes", func(c Command) { c.(*VMRegistered).Volumes[0].Boot = false }},
		"vm two boots":        {"vm-registered", "volumes", func(c Command) { c.(*VMRegistered).Volumes[1].Boot = true }},
		"vm dup volume id":    {"vm-registered", "volumes[1].id", func(c Command) { c.(*VMRegistered).Volumes[1].ID = "vol-1" }},
		"vm dup volume name":  {"vm-registered", "volumes[1].name", func(c Command) { c.(*VMRegistered).Volumes[1].Name = "root" }},
		"vm dup serial":       {"vm-registered", "volumes[1].serial", func(c Command) { c.(*VMRegistered).Volumes[1].Serial = "TSROOT1" }},
		"vm serial long":      {"vm-registered", "volumes[0].serial", func(c Command) { c.(*VMRegistered).Volumes[0].Serial = long }},
		"vm serial space":     {"vm-registered", "volumes[0].serial", func(c Command) { c.(*VMRegistered).Volumes[0].Serial = "a b" }},
		"vm volume size":      {"vm-registered", "volumes[0].size_bytes", func(c Command) { c.(*VMRegistered).Volumes[0].SizeBytes = 0 }},
		"vm volume huge":      {"vm-registered", "volumes[0].size_bytes", func(c Command) { c.(*VMRegistered).Volumes[0].SizeBytes = MaxBytes + 1 }},
		"vm volume format":    {"vm-registered", "volumes[0].format", func(c Command) { c.(*VMRegistered).Volumes[0].Format = "vdi" }},
		"vm too many volumes": {"vm-registered", "volumes", func(c Command) {
			c.(*VMRegistered).Volumes = make([]Volume, MaxVolumes+1)
		}},
		"vm removed no id": {"vm-removed", "id", func(c Command) { c.(*VMRemoved).ID = "" }},
		// containers
		"container volume":   {"volume-container-created", "volume_id", func(c Command) { c.(*ContainerCreated).VolumeID = "" }},
		"container node":     {"volume-container-created", "node", func(c Command) { c.(*ContainerCreated).Node = "" }},
		"container capacity": {"volume-container-created", "capacity_bytes", func(c Command) { c.(*ContainerCreated).CapacityBytes = 0 }},
		"expand capacity":    {"volume-container-expanded", "capacity_bytes", func(c Command) { c.(*ContainerExpanded).CapacityBytes = -1 }},
		// snapshots
		"snap no id":        {"snapshot-created", "id", func(c Command) { c.(*SnapshotCreated).ID = "" }},
		"snap no vm":        {"snapshot-created", "vm_id", func(c Command) { c.(*SnapshotCreated).VMID = "" }},
		"snap no name":      {"snapshot-created", "name", func(c Command) { c.(*SnapshotCreated).Name = "" }},
		"snap long desc":    {"snapshot-created", "description", func(c Command) { c.(*SnapshotCreated).Description = strings.Repeat("d", 2000) }},
		"snap no creator":   {"snapshot-created", "creator", func(c Command) { c.(*SnapshotCreated).Creator = "" }},
		"snap no time":      {"snapshot-created", "created_at", func(c Command) { c.(*SnapshotCreated).CreatedAt = time.Time{} }},
		"snap year 10000":   {"snapshot-created", "created_at", func(c Command) { c.(*SnapshotCreated).CreatedAt = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) }},
		"snap no volumes":   {"snapshot-created", "volumes", func(c Command) { c.(*SnapshotCreated).Volumes = nil }},
		"snap dup volume":   {"snapshot-created", "volumes[1].volume_id", func(c Command) { c.(*SnapshotCreated).Volumes[1].VolumeID = "vol-1" }},
		"snap self parent":  {"snapshot-created", "volumes[0].parent_id", func(c Command) { c.(*SnapshotCreated).Volumes[0].ParentID = "snap-1" }},
		"snap bad parent":   {"snapshot-created", "volumes[0].parent_id", func(c Command) { c.(*SnapshotCreated).Volumes[0].ParentID = "?" }},
		"snap negative est": {"snapshot-created", "volumes[0].estimated_bytes", func(c Command) { c.(*SnapshotCreated).Volumes[0].EstimatedBytes = -1 }},
		"snap desired":      {"snapshot-created", "desired", func(c Command) { c.(*SnapshotCreated).Desired = "best" }},
		"snap required":     {"snapshot-created", "required", func(c Command) { c.(*SnapshotCreated).Required = "" }},
		"snap required>desire": {"snapshot-created", "required", func(c Command) {
			c.(*SnapshotCreated).Desired, c.(*SnapshotCreated).Required = ConsistencyCrash, ConsistencyApplication
		}},
		"snap coordinator":    {"snapshot-created", "coordinator", func(c Command) { c.(*SnapshotCreated).Coordinator = "" }},
		"snap term":           {"snapshot-created", "term", func(c Command) { c.(*SnapshotCreated).Term = 0 }},
		"captured term":       {"snapshot-captured", "term", func(c Command) { c.(*SnapshotCaptured).Term = 0 }},
		"captured node":       {"snapshot-captured", "node", func(c Command) { c.(*SnapshotCaptured).Node = "" }},
		"captured achieved":   {"snapshot-captured", "achieved", func(c Command) { c.(*SnapshotCaptured).Achieved = "" }},
		"captured unverified": {"snapshot-captured", "verified", func(c Command) { c.(*SnapshotCaptured).Verified = false }},
		"captured no time":    {"snapshot-captured", "captured_at", func(c Command) { c.(*SnapshotCaptured).CapturedAt = time.Time{} }},
		"captured no volumes": {"snapshot-captured", "volumes", func(c Command) { c.(*SnapshotCaptured).Volumes = nil }},
		"captured sha short":  {"snapshot-captured", "volumes[0].sha256", func(c Command) { c.(*SnapshotCaptured).Volumes[0].SHA256 = "abc" }},
		"captured sha upper":  {"snapshot-captured", "volumes[0].sha256", func(c Command) { c.(*SnapshotCaptured).Volumes[0].SHA256 = strings.Repeat("AB", 32) }},
		"captured sha nonhex": {"snapshot-captured", "volumes[0].sha256", func(c Command) { c.(*SnapshotCaptured).Volumes[0].SHA256 = strings.Repeat("zz", 32) }},
		"captured size":       {"snapshot-captured", "volumes[0].size_bytes", func(c Command) { c.(*SnapshotCaptured).Volumes[0].SizeBytes = 0 }},
		"captured stored":     {"snapshot-captured", "volumes[0].stored_bytes", func(c Command) { c.(*SnapshotCaptured).Volumes[0].StoredBytes = -5 }},
		"captured dup volume": {"snapshot-captured", "volumes[1].volume_id", func(c Command) { c.(*SnapshotCaptured).Volumes[1].VolumeID = "vol-1" }},
		"replica node":        {"replica-written", "node", func(c Command) { c.(*ReplicaWritten).Node = "" }},
		"replica term":        {"replica-written", "term", func(c Command) { c.(*ReplicaWritten).Term = 0 }},
		"replica time":        {"replica-written", "at", func(c Command) { c.(*ReplicaWritten).At = time.Time{} }},
		"replica sha":         {"replica-written", "volumes[1].sha256", func(c Command) { c.(*ReplicaWritten).Volumes[1].SHA256 = "" }},
		"failed reason":       {"snapshot-failed", "reason", func(c Command) { c.(*SnapshotFailed).Reason = "" }},
		"failed reason ctrl":  {"snapshot-failed", "reason", func(c Command) { c.(*SnapshotFailed).Reason = "a\x1bb" }},
		"failed term":         {"snapshot-failed", "term", func(c Command) { c.(*SnapshotFailed).Term = 0 }},
		"discard term":        {"discard-incomplete", "term", func(c Command) { c.(*DiscardIncomplete).Term = 0 }},
		"discard unsorted":    {"discard-incomplete", "lost_nodes", func(c Command) { c.(*DiscardIncomplete).LostNodes = []string{"b", "a"} }},
		"discard dup":         {"discard-incomplete", "lost_nodes", func(c Command) { c.(*DiscardIncomplete).LostNodes = []string{"a", "a"} }},
		"discard bad node":    {"discard-incomplete", "lost_nodes", func(c Command) { c.(*DiscardIncomplete).LostNodes = []string{""} }},
		"discard many":        {"discard-incomplete", "lost_nodes", func(c Command) { c.(*DiscardIncomplete).LostNodes = strings.Split("a b c d e f g h i", " ") }},
		"discard time":        {"discard-incomplete", "at", func(c Command) { c.(*DiscardIncomplete).At = time.Time{} }},
		"delete requester":    {"snapshot-delete-requested", "requester", func(c Command) { c.(*SnapshotDeleteRequested).Requester = "" }},
		"delete term":         {"snapshot-delete-requested", "term", func(c Command) { c.(*SnapshotDeleteRequested).Term = 0 }},
		"reclaimed node":      {"replica-reclaimed", "node", func(c Command) { c.(*ReplicaReclaimed).Node = "" }},
		"reclaimed id":        {"replica-reclaimed", "id", func(c Command) { c.(*ReplicaReclaimed).ID = "" }},
		// jobs
		"export snapshot":       {"export-job-created", "snapshot_id", func(c Command) { c.(*ExportJobCreated).SnapshotID = "" }},
		"export target scheme":  {"export-job-created", "target", func(c Command) { c.(*ExportJobCreated).Target = "ftp://x/y" }},
		"export target pw":      {"export-job-created", "target", func(c Command) { c.(*ExportJobCreated).Target = "smb://u:secret@x/share" }},
		"export target missing": {"export-job-created", "target", func(c Command) { c.(*ExportJobCreated).Target = "" }},
		"export format":         {"export-job-created", "format", func(c Command) { c.(*ExportJobCreated).Format = "ova" }},
		"export creator":        {"export-job-created", "creator", func(c Command) { c.(*ExportJobCreated).Creator = "" }},
		"import source":         {"import-job-created", "source", func(c Command) { c.(*ImportJobCreated).Source = "smb://[bad" }},
		"import vm name":        {"import-job-created", "vm_name", func(c Command) { c.(*ImportJobCreated).VMName = "" }},
		"import node":           {"import-job-created", "node", func(c Command) { c.(*ImportJobCreated).Node = "" }},
		"progress negative":     {"job-progress", "offset", func(c Command) { c.(*JobProgress).Offset = -1 }},
		"progress bytes":        {"job-progress", "bytes", func(c Command) { c.(*JobProgress).Bytes = -1 }},
		"progress beyond total": {"job-progress", "total_bytes", func(c Command) { c.(*JobProgress).TotalBytes = 1 }},
		"progress time":         {"job-progress", "at", func(c Command) { c.(*JobProgress).At = time.Time{} }},
		"state queued":          {"job-state-changed", "state", func(c Command) { c.(*JobStateChanged).State = JobQueued }},
		"state unknown":         {"job-state-changed", "state", func(c Command) { c.(*JobStateChanged).State = "exploded" }},
		"state failed no error": {"job-state-changed", "error", func(c Command) { c.(*JobStateChanged).Error = "" }},
		"state done with error": {"job-state-changed", "error", func(c Command) { c.(*JobStateChanged).State = JobDone }},
	}
	covered := map[Type]bool{}
	for name, m := range cases {
		c := samples()[m.sample]
		if c == nil {
			t.Fatalf("%s: no sample %q", name, m.sample)
		}
		m.mutate(c)
		err := c.Validate()
		if !errors.Is(err, ErrInvalid) {
			t.Fatalf("%s: Validate = %v, want ErrInvalid", name, err)
		}
		var ve *ValidationError
		if !errors.As(err, &ve) || !strings.HasPrefix(ve.Field, m.field) {
			t.Fatalf("%s: Validate = %v, want a *ValidationError on %q", name, err, m.field)
		}
		if _, err := Encode(c); !errors.Is(err, ErrInvalid) {
			t.Fatalf("%s: Encode = %v, want ErrInvalid", name, err)
		}
		covered[c.Type()] = true
	}
	for _, typ := range Types() {
		if !covered[typ] {
			t.Fatalf("no bad-input case for %s", typ)
		}
	}
}
