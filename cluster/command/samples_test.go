package command

import (
	"encoding/hex"
	"strings"
	"time"
)

var (
	sampleTime = time.Date(2026, 11, 21, 10, 30, 0, 123456789, time.UTC)
	sampleSum  = strings.Repeat("ab", 32)
	sampleSum2 = strings.Repeat("0f", 32)
	yes        = true
	// sampleSealed is "secret" sealed for share "nas" with the cluster key
	// of 32 bytes 0x42, whose id is sampleKeyID (cluster/pki's known answer).
	sampleSealed = mustHex("f7314aaa2d8a0cfbf2007febbb18f119beefac8a5ce764db156e32edf64c4c7823df")
	sampleKeyID  = "a584ae36"
)

func mustHex(s string) Sealed {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// samples returns one fully populated, valid command per name. Each is
// pinned by testdata/<name>.bin; every command type must appear at least
// once.
func samples() map[string]Command {
	return map[string]Command{
		"node-added-data": &NodeAdded{Node{
			ID: "node-a", Role: RoleData,
			RaftAddress: "10.0.0.1:7000", APIAddress: "10.0.0.1:7001", DataAddress: "10.0.0.1:7002",
		}},
		"node-added-witness": &NodeAdded{Node{
			ID: "witness", Role: RoleWitness,
			RaftAddress: "[fd00::3]:7000", APIAddress: "[fd00::3]:7001",
		}},
		"node-updated": &NodeUpdated{Node{
			ID: "node-b", Role: RoleData,
			RaftAddress: "node-b.example:7000", APIAddress: "node-b.example:7001", DataAddress: "node-b.example:7002",
		}},
		"node-removed": &NodeRemoved{ID: "node-b"},
		"settings-set": &SettingsSet{
			SnapshotsEnabled: &yes,
			Values:           map[string]string{"retention.max": "20", "export.window": "22:00-06:00"},
		},
		"vm-registered": &VMRegistered{VM{
			ID: "vm-1", Name: "web server", HostNode: "node-a", Driver: DriverQEMU,
			QEMU: &QEMUConnection{QMPSocket: "/run/twinsnap/vm-1/qmp.sock", AgentSocket: "/run/twinsnap/vm-1/qga.sock"},
			Volumes: []Volume{
				{ID: "vol-1", Name: "root", Serial: "TSROOT1", Boot: true, SizeBytes: 8 << 30, Format: FormatQCOW2},
				{ID: "vol-2", Name: "data", Serial: "TSDATA1", SizeBytes: 1 << 30, Format: FormatRaw},
			},
			FreezeEnabled: true, FreezeTimeout: 10 * time.Second,
		}},
		"vm-updated": &VMUpdated{VM{
			ID: "vm-2", Name: "db", HostNode: "node-b", Driver: DriverLibvirt,
			Libvirt: &LibvirtConnection{URI: "qemu:///system?socket=/run/libvirt/libvirt-sock", Domain: "db"},
			Volumes: []Volume{{ID: "vol-3", Name: "root", Boot: true, SizeBytes: 4 << 30, Format: FormatQCOW2}},
		}},
		"vm-removed": &VMRemoved{ID: "vm-2"},
		"volume-container-created": &ContainerCreated{
			VolumeID: "vol-1", Node: "node-a", CapacityBytes: 32 << 30,
		},
		"volume-container-expanded": &ContainerExpanded{
			VolumeID: "vol-1", Node: "node-a", CapacityBytes: 64 << 30,
		},
		"snapshot-created": &SnapshotCreated{
			ID: "snap-1", VMID: "vm-1", Name: "before upgrade", Description: "nightly\nbefore the kernel upgrade",
			Creator: "admin", CreatedAt: sampleTime,
			Volumes: []SnapshotVolume{
				{VolumeID: "vol-1", EstimatedBytes: 2 << 30},
				{VolumeID: "vol-2", ParentID: "snap-0", EstimatedBytes: 64 << 20},
			},
			Desired: ConsistencyApplication, Required: ConsistencyCrash,
			Coordinator: "node-a", Term: 3,
		},
		"snapshot-captured": &SnapshotCaptured{
			ID: "snap-1", Term: 3, Node: "node-a",
			Achieved: ConsistencyCrash, StepDownReason: "guest agent did not answer guest-fsfreeze-freeze-list",
			Volumes: []VolumeData{
				{VolumeID: "vol-1", SizeBytes: 8 << 30, StoredBytes: 1 << 30, SHA256: sampleSum},
				{VolumeID: "vol-2", SizeBytes: 1 << 30, StoredBytes: 3 << 20, SHA256: sampleSum2},
			},
			Verified: true, CapturedAt: sampleTime.Add(2 * time.Second),
		},
		"replica-written": &ReplicaWritten{
			ID: "snap-1", Term: 3, Node: "node-b",
			Volumes: []VolumeData{
				{VolumeID: "vol-1", SizeBytes: 8 << 30, StoredBytes: 1 << 30, SHA256: sampleSum},
				{VolumeID: "vol-2", SizeBytes: 1 << 30, StoredBytes: 3 << 20, SHA256: sampleSum2},
			},
			Verified: true, At: sampleTime.Add(time.Minute),
		},
		"snapshot-failed": &SnapshotFailed{
			ID: "snap-2", Term: 3, Node: "node-a", Reason: "QMP transaction failed: GenericError", At: sampleTime,
		},
		"discard-incomplete": &DiscardIncomplete{
			Term: 4, LostNodes: []string{"node-a"}, Reason: "new leader node-b", At: sampleTime.Add(time.Hour),
		},
		"snapshot-delete-requested": &SnapshotDeleteRequested{
			ID: "snap-1", Term: 4, Requester: "admin", At: sampleTime.Add(2 * time.Hour),
		},
		"replica-reclaimed": &ReplicaReclaimed{
			ID: "snap-1", Term: 4, Node: "node-b", At: sampleTime.Add(3 * time.Hour),
		},
		"export-job-created": &ExportJobCreated{
			ID: "job-1", SnapshotID: "snap-1", Node: "node-a",
			Target: "smb://backup@files.example/exports/web", Format: ExportVMDK,
			Creator: "admin", CreatedAt: sampleTime,
		},
		"import-job-created": &ImportJobCreated{
			ID: "job-2", Node: "node-b", Source: "file:///srv/import/web/web.ovf",
			VMName: "web copy", NewMACs: true, Creator: "admin", CreatedAt: sampleTime,
		},
		"job-progress": &JobProgress{
			ID: "job-1", Offset: 1 << 30, Bytes: 1<<30 + 4096, TotalBytes: 9 << 30, At: sampleTime.Add(time.Minute),
		},
		"job-state-changed": &JobStateChanged{
			ID: "job-1", State: JobFailed, Error: "share went away: connection reset", At: sampleTime.Add(time.Hour),
		},
		// Payload version 2 of the job commands: every new field set.
		"export-job-created-share": &ExportJobCreated{
			ID: "job-3", SnapshotID: "snap-1", Node: "node-b",
			Share: "nas", Target: "exports/web", Format: ExportQCOW2,
			Package: "web-2026-11-21", OVA: true, Volumes: []string{"vol-1", "vol-2"},
			Window:         &Window{Spec: "22:00-04:00", Days: "mon-fri", Location: "Europe/Berlin"},
			BandwidthBytes: 50 << 20,
			Creator:        "admin", CreatedAt: sampleTime,
		},
		"import-job-created-share": &ImportJobCreated{
			ID: "job-4", Node: "node-a", Share: "nas", Path: "imports/web/web-2026-11-21.ova",
			VMName: "web restored", NewMACs: true,
			Readdress: &Readdress{Path: "/usr/local/sbin/readdress", Args: []string{"--ip", "10.0.0.50/24", "--gateway", "10.0.0.1"}},
			Creator:   "admin", CreatedAt: sampleTime,
		},
		"job-progress-rate": &JobProgress{
			ID: "job-3", Offset: 2 << 30, Bytes: 2 << 30, TotalBytes: 9 << 30,
			Rate: 48 << 20, File: "web-2026-11-21.ova", At: sampleTime.Add(2 * time.Minute),
		},
		"job-state-changed-paused": &JobStateChanged{
			ID: "job-3", State: JobPaused, Reason: "window closed, reopens at 2026-11-23T22:00:00+01:00", At: sampleTime.Add(5 * time.Hour),
		},
		"job-state-changed-done-vm": &JobStateChanged{
			ID: "job-4", State: JobDone, VMID: "vm-7", At: sampleTime.Add(6 * time.Hour),
		},
		"job-assigned": &JobAssigned{
			ID: "job-3", Node: "node-a", Reason: "node node-b lost", At: sampleTime.Add(7 * time.Hour),
		},
		"share-added": &ShareAdded{
			Name: "nas", URL: "smb://files.example:445/exports", User: "backup", Domain: "EXAMPLE",
			Password: sampleSealed, KeyID: sampleKeyID, CreatedAt: sampleTime,
		},
		"share-added-file": &ShareAdded{
			Name: "local", URL: "file:///srv/exports", CreatedAt: sampleTime,
		},
		"share-removed": &ShareRemoved{Name: "nas", At: sampleTime.Add(8 * time.Hour)},
	}
}

// newFieldSamples are the samples that set fields of a later payload
// version; every other sample is written at version 1.
var newFieldSamples = map[string]uint8{
	"export-job-created-share":  2,
	"import-job-created-share":  2,
	"job-progress-rate":         2,
	"job-state-changed-paused":  2,
	"job-state-changed-done-vm": 2,
}
