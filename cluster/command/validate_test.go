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
		// jobs, payload version 2
		"export share id":            {"export-job-created-share", "share", func(c Command) { c.(*ExportJobCreated).Share = "a/b" }},
		"export share target abs":    {"export-job-created-share", "target", func(c Command) { c.(*ExportJobCreated).Target = "/exports" }},
		"export share target dotdot": {"export-job-created-share", "target", func(c Command) { c.(*ExportJobCreated).Target = "a/../b" }},
		"export share target url":    {"export-job-created-share", "target", func(c Command) { c.(*ExportJobCreated).Target = "smb://h/s" }},
		"export share target empty elem": {"export-job-created-share", "target", func(c Command) {
			c.(*ExportJobCreated).Target = "a//b"
		}},
		"export share target trailing": {"export-job-created-share", "target", func(c Command) { c.(*ExportJobCreated).Target = "a/" }},
		"export share target bidi":     {"export-job-created-share", "target", func(c Command) { c.(*ExportJobCreated).Target = "a\u202eb" }},
		"export package slash":         {"export-job-created-share", "package", func(c Command) { c.(*ExportJobCreated).Package = "a/b" }},
		"export package dot end":       {"export-job-created-share", "package", func(c Command) { c.(*ExportJobCreated).Package = "web." }},
		"export package dotdot":        {"export-job-created-share", "package", func(c Command) { c.(*ExportJobCreated).Package = ".." }},
		"export package colon":         {"export-job-created-share", "package", func(c Command) { c.(*ExportJobCreated).Package = "C:web" }},
		"export package star":          {"export-job-created-share", "package", func(c Command) { c.(*ExportJobCreated).Package = "web*" }},
		"export package newline":       {"export-job-created-share", "package", func(c Command) { c.(*ExportJobCreated).Package = "a\nb" }},
		"export package space":         {"export-job-created-share", "package", func(c Command) { c.(*ExportJobCreated).Package = " web" }},
		"export package long":          {"export-job-created-share", "package", func(c Command) { c.(*ExportJobCreated).Package = strings.Repeat("p", MaxPackageNameLen+1) }},
		"export volumes dup":           {"export-job-created-share", "volumes[1]", func(c Command) { c.(*ExportJobCreated).Volumes[1] = "vol-1" }},
		"export volumes bad":           {"export-job-created-share", "volumes[0]", func(c Command) { c.(*ExportJobCreated).Volumes[0] = "" }},
		"export volumes many": {"export-job-created-share", "volumes", func(c Command) {
			c.(*ExportJobCreated).Volumes = make([]string, MaxVolumes+1)
		}},
		"export window spec":      {"export-job-created-share", "window.spec", func(c Command) { c.(*ExportJobCreated).Window.Spec = "" }},
		"export window spec char": {"export-job-created-share", "window.spec", func(c Command) { c.(*ExportJobCreated).Window.Spec = "22h-4h" }},
		"export window spec long": {"export-job-created-share", "window.spec", func(c Command) { c.(*ExportJobCreated).Window.Spec = strings.Repeat("1", 161) }},
		"export window days":      {"export-job-created-share", "window.days", func(c Command) { c.(*ExportJobCreated).Window.Days = "mon;fri" }},
		"export window location":  {"export-job-created-share", "window.location", func(c Command) { c.(*ExportJobCreated).Window.Location = "../../etc/passwd" }},
		"export window abs zone":  {"export-job-created-share", "window.location", func(c Command) { c.(*ExportJobCreated).Window.Location = "/etc/localtime" }},
		"export bandwidth":        {"export-job-created-share", "bandwidth_bytes", func(c Command) { c.(*ExportJobCreated).BandwidthBytes = -1 }},
		"import share id":         {"import-job-created-share", "share", func(c Command) { c.(*ImportJobCreated).Share = "-x" }},
		"import share and source": {"import-job-created-share", "source", func(c Command) { c.(*ImportJobCreated).Source = "file:///x.ovf" }},
		"import share no path":    {"import-job-created-share", "path", func(c Command) { c.(*ImportJobCreated).Path = "" }},
		"import path abs":         {"import-job-created-share", "path", func(c Command) { c.(*ImportJobCreated).Path = "/x/web.ovf" }},
		"import path dotdot":      {"import-job-created-share", "path", func(c Command) { c.(*ImportJobCreated).Path = "../web.ovf" }},
		"import path not ovf":     {"import-job-created-share", "path", func(c Command) { c.(*ImportJobCreated).Path = "web.vmdk" }},
		"import path short":       {"import-job-created-share", "path", func(c Command) { c.(*ImportJobCreated).Path = "ova" }},
		"import path no share":    {"import-job-created", "path", func(c Command) { c.(*ImportJobCreated).Path = "web.ovf" }},
		"import no source":        {"import-job-created", "source", func(c Command) { c.(*ImportJobCreated).Source = "" }},
		"readdress no path":       {"import-job-created-share", "readdress.path", func(c Command) { c.(*ImportJobCreated).Readdress.Path = "" }},
		"readdress relative":      {"import-job-created-share", "readdress.path", func(c Command) { c.(*ImportJobCreated).Readdress.Path = "readdress.sh" }},
		"readdress ctrl":          {"import-job-created-share", "readdress.path", func(c Command) { c.(*ImportJobCreated).Readdress.Path = "/bin/x\n" }},
		"readdress long":          {"import-job-created-share", "readdress.path", func(c Command) { c.(*ImportJobCreated).Readdress.Path = "/" + strings.Repeat("x", MaxGuestPathLen) }},
		"readdress arg ctrl":      {"import-job-created-share", "readdress.args[1]", func(c Command) { c.(*ImportJobCreated).Readdress.Args[1] = "a\x00b" }},
		"readdress arg long":      {"import-job-created-share", "readdress.args[0]", func(c Command) { c.(*ImportJobCreated).Readdress.Args[0] = strings.Repeat("a", MaxGuestArgLen+1) }},
		"readdress many args": {"import-job-created-share", "readdress.args", func(c Command) {
			c.(*ImportJobCreated).Readdress.Args = make([]string, MaxGuestArgs+1)
		}},
		"progress rate":        {"job-progress-rate", "rate", func(c Command) { c.(*JobProgress).Rate = -1 }},
		"progress file abs":    {"job-progress-rate", "file", func(c Command) { c.(*JobProgress).File = "/etc/shadow" }},
		"progress file dotdot": {"job-progress-rate", "file", func(c Command) { c.(*JobProgress).File = "../x" }},
		"state reason failed": {"job-state-changed", "reason", func(c Command) {
			c.(*JobStateChanged).Reason = "why"
		}},
		"state reason ctrl":    {"job-state-changed-paused", "reason", func(c Command) { c.(*JobStateChanged).Reason = "a\x1bb" }},
		"state reason long":    {"job-state-changed-paused", "reason", func(c Command) { c.(*JobStateChanged).Reason = strings.Repeat("r", MaxDescriptionLen+1) }},
		"state vm not done":    {"job-state-changed-paused", "vm_id", func(c Command) { c.(*JobStateChanged).VMID = "vm-1" }},
		"state vm bad":         {"job-state-changed-done-vm", "vm_id", func(c Command) { c.(*JobStateChanged).VMID = "vm 1" }},
		"assigned id":          {"job-assigned", "id", func(c Command) { c.(*JobAssigned).ID = "" }},
		"assigned node":        {"job-assigned", "node", func(c Command) { c.(*JobAssigned).Node = "a b" }},
		"assigned no reason":   {"job-assigned", "reason", func(c Command) { c.(*JobAssigned).Reason = "" }},
		"assigned reason ctrl": {"job-assigned", "reason", func(c Command) { c.(*JobAssigned).Reason = "\x07" }},
		"assigned time":        {"job-assigned", "at", func(c Command) { c.(*JobAssigned).At = time.Time{} }},
		// shares
		"share name":             {"share-added", "name", func(c Command) { c.(*ShareAdded).Name = "" }},
		"share name chars":       {"share-added", "name", func(c Command) { c.(*ShareAdded).Name = "my share" }},
		"share url missing":      {"share-added", "url", func(c Command) { c.(*ShareAdded).URL = "" }},
		"share url scheme":       {"share-added", "url", func(c Command) { c.(*ShareAdded).URL = "nfs://h/s" }},
		"share url user":         {"share-added", "url", func(c Command) { c.(*ShareAdded).URL = "smb://backup@h/s" }},
		"share url password":     {"share-added", "url", func(c Command) { c.(*ShareAdded).URL = "smb://backup:pw@h/s" }},
		"share url no share":     {"share-added", "url", func(c Command) { c.(*ShareAdded).URL = "smb://h" }},
		"share url slash only":   {"share-added", "url", func(c Command) { c.(*ShareAdded).URL = "smb://h/" }},
		"share url no host":      {"share-added", "url", func(c Command) { c.(*ShareAdded).URL = "smb:///s" }},
		"share url port 0":       {"share-added", "url", func(c Command) { c.(*ShareAdded).URL = "smb://h:0/s" }},
		"share url port big":     {"share-added", "url", func(c Command) { c.(*ShareAdded).URL = "smb://h:65536/s" }},
		"share url query":        {"share-added", "url", func(c Command) { c.(*ShareAdded).URL = "smb://h/s?sec=ntlm" }},
		"share url fragment":     {"share-added", "url", func(c Command) { c.(*ShareAdded).URL = "smb://h/s#x" }},
		"share url dotdot":       {"share-added", "url", func(c Command) { c.(*ShareAdded).URL = "smb://h/s/../t" }},
		"share url escaped":      {"share-added", "url", func(c Command) { c.(*ShareAdded).URL = "smb://h/s%2Ft" }},
		"share url opaque":       {"share-added", "url", func(c Command) { c.(*ShareAdded).URL = "smb:h/s" }},
		"share url ctrl":         {"share-added", "url", func(c Command) { c.(*ShareAdded).URL = "smb://h/s\x00" }},
		"share file host":        {"share-added-file", "url", func(c Command) { c.(*ShareAdded).URL = "file://nas/srv" }},
		"share file relative":    {"share-added-file", "url", func(c Command) { c.(*ShareAdded).URL = "file:///srv/../etc" }},
		"share file user":        {"share-added-file", "user", func(c Command) { c.(*ShareAdded).User = "root" }},
		"share file password":    {"share-added-file", "user", func(c Command) { c.(*ShareAdded).Password = sampleSealed }},
		"share user long":        {"share-added", "user", func(c Command) { c.(*ShareAdded).User = strings.Repeat("u", MaxUserLen+1) }},
		"share user ctrl":        {"share-added", "user", func(c Command) { c.(*ShareAdded).User = "a\tb" }},
		"share domain ctrl":      {"share-added", "domain", func(c Command) { c.(*ShareAdded).Domain = "a\nb" }},
		"share domain no user":   {"share-added", "domain", func(c Command) { c.(*ShareAdded).User, c.(*ShareAdded).Password = "", nil }},
		"share password short":   {"share-added", "password", func(c Command) { c.(*ShareAdded).Password = make(Sealed, MinSealedLen-1) }},
		"share password long":    {"share-added", "password", func(c Command) { c.(*ShareAdded).Password = make(Sealed, MaxSealedLen+1) }},
		"share password user":    {"share-added", "password", func(c Command) { c.(*ShareAdded).User, c.(*ShareAdded).Domain = "", "" }},
		"share key id missing":   {"share-added", "key_id", func(c Command) { c.(*ShareAdded).KeyID = "" }},
		"share key id chars":     {"share-added", "key_id", func(c Command) { c.(*ShareAdded).KeyID = "a/b" }},
		"share key id no secret": {"share-added", "key_id", func(c Command) { c.(*ShareAdded).Password = nil }},
		"share created":          {"share-added", "created_at", func(c Command) { c.(*ShareAdded).CreatedAt = time.Time{} }},
		"share removed name":     {"share-removed", "name", func(c Command) { c.(*ShareRemoved).Name = "" }},
		"share removed at":       {"share-removed", "at", func(c Command) { c.(*ShareRemoved).At = time.Time{} }},
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

// TestValidateAccepts changes one thing in a valid sample to another valid
// form and expects Validate to accept it.
func TestValidateAccepts(t *testing.T) {
	cases := map[string]struct {
		sample string
		mutate func(Command)
	}{
		"smb ipv6 host":        {"share-added", func(c Command) { c.(*ShareAdded).URL = "smb://[fd00::5]:445/exports/a b" }},
		"smb escaped space":    {"share-added", func(c Command) { c.(*ShareAdded).URL = "smb://nas/My%20Share/dir" }},
		"smb trailing slash":   {"share-added", func(c Command) { c.(*ShareAdded).URL = "smb://nas/exports/" }},
		"smb guest":            {"share-added", func(c Command) { s := c.(*ShareAdded); s.User, s.Domain, s.Password, s.KeyID = "", "", nil, "" }},
		"smb user no password": {"share-added", func(c Command) { s := c.(*ShareAdded); s.Password, s.KeyID = nil, "" }},
		"smb unicode share":    {"share-added", func(c Command) { c.(*ShareAdded).URL = "smb://nas/Sicherungen/Übung" }},
		"file root":            {"share-added-file", func(c Command) { c.(*ShareAdded).URL = "file:///" }},
		"max sealed":           {"share-added", func(c Command) { c.(*ShareAdded).Password = make(Sealed, MaxSealedLen) }},
		"share top":            {"export-job-created-share", func(c Command) { c.(*ExportJobCreated).Target = "" }},
		"no window days":       {"export-job-created-share", func(c Command) { c.(*ExportJobCreated).Window = &Window{Spec: "00:00-24:00"} }},
		"window seconds":       {"export-job-created-share", func(c Command) { c.(*ExportJobCreated).Window.Spec = "22:00:30-04:00:00" }},
		"window zone":          {"export-job-created-share", func(c Command) { c.(*ExportJobCreated).Window.Location = "America/Argentina/Buenos_Aires" }},
		"window zone offset":   {"export-job-created-share", func(c Command) { c.(*ExportJobCreated).Window.Location = "Etc/GMT+5" }},
		"no package":           {"export-job-created-share", func(c Command) { c.(*ExportJobCreated).Package = "" }},
		"package unicode":      {"export-job-created-share", func(c Command) { c.(*ExportJobCreated).Package = "Webserver (Übung) 2026-11-21" }},
		"target url":           {"export-job-created-share", func(c Command) { e := c.(*ExportJobCreated); e.Share, e.Target = "", "file:///srv/exports" }},
		"import ovf upper":     {"import-job-created-share", func(c Command) { c.(*ImportJobCreated).Path = "WEB.OVF" }},
		"readdress windows":    {"import-job-created-share", func(c Command) { c.(*ImportJobCreated).Readdress.Path = `C:\Tools\readdress.exe` }},
		"readdress no args":    {"import-job-created-share", func(c Command) { c.(*ImportJobCreated).Readdress.Args = nil }},
		"progress no file":     {"job-progress-rate", func(c Command) { c.(*JobProgress).File = "" }},
		"progress file in dir": {"job-progress-rate", func(c Command) { c.(*JobProgress).File = "web/web-disk1.vmdk" }},
		"running with reason":  {"job-state-changed-paused", func(c Command) { c.(*JobStateChanged).State = JobRunning }},
		"done without vm":      {"job-state-changed-done-vm", func(c Command) { c.(*JobStateChanged).VMID = "" }},
	}
	for name, m := range cases {
		c := samples()[m.sample]
		m.mutate(c)
		if err := c.Validate(); err != nil {
			t.Fatalf("%s: Validate = %v", name, err)
		}
	}
}
