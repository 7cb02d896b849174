package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/twinsnap/twinsnap/guestagent"
)

// BlockDevice is one disk of a VM as QEMU sees it: the guest device, the
// block node behind it, the image, and the guest-visible identity (serial
// and PCI address) by which the guest's view (guest-get-fsinfo) is mapped
// onto it.
type BlockDevice struct {
	// DeviceID is the qdev id of the guest device ("disk-data1"); empty
	// for a device created without an id.
	DeviceID string
	// QOMPath is the device as query-block names it: the QOM path of the
	// device the block backend is attached to (for virtio-blk-pci,
	// "/machine/peripheral/<id>/virtio-backend"), or its id.
	QOMPath string
	// Drive is the legacy drive name (-drive id=...); empty for
	// -blockdev disks.
	Drive string
	// NodeName is the image's format node ("vol-data1"): the node to back
	// up and to put bitmaps on. Filters that QEMU inserts above it (a
	// backup job's copy-before-write) are looked through.
	NodeName string
	// TopNode is the node attached to the device: NodeName, or a filter
	// above it.
	TopNode string
	// File is the image's file name, Format its format driver ("qcow2").
	File   string
	Format string
	// VirtualSize is the disk's size in bytes.
	VirtualSize int64
	// ReadOnly reports a read-only disk.
	ReadOnly bool
	// Serial is the device's serial property (qom-get); empty if it has
	// none.
	Serial string
	// PCI is the guest PCI address of the device itself (virtio-blk-pci),
	// matched through query-pci by DeviceID; nil for devices that are not
	// PCI functions (disks on a SCSI or IDE controller).
	PCI *guestagent.PCIAddress
	// Bitmaps are the dirty bitmaps on NodeName.
	Bitmaps []DirtyBitmap
}

// DirtyBitmap is one dirty bitmap of a node.
type DirtyBitmap struct {
	Name        string `json:"name"`
	Granularity int64  `json:"granularity"`
	// Count is the number of dirty bytes.
	Count        int64 `json:"count"`
	Persistent   bool  `json:"persistent"`
	Recording    bool  `json:"recording"`
	Busy         bool  `json:"busy"`
	Inconsistent bool  `json:"inconsistent"`
}

// filterDrivers are the block drivers that pass I/O through to one child
// ("file" or "backing"), which QEMU may insert above a disk's node.
var filterDrivers = map[string]bool{
	"copy-before-write": true, "backup-top": true, "mirror_top": true, "commit_top": true,
	"throttle": true, "copy-on-read": true, "preallocate": true, "compress": true,
}

// Wire types of query-block, query-named-block-nodes, query-pci and
// x-debug-query-block-graph (QEMU 7.2), reduced to what is used.
type (
	qBlock struct {
		Device   string        `json:"device"`
		QDev     string        `json:"qdev"`
		Inserted *qBlockDevice `json:"inserted"`
	}
	qBlockDevice struct {
		NodeName string        `json:"node-name"`
		Drv      string        `json:"drv"`
		File     string        `json:"file"`
		RO       bool          `json:"ro"`
		Image    qImage        `json:"image"`
		Bitmaps  []DirtyBitmap `json:"dirty-bitmaps"`
	}
	qImage struct {
		Filename    string `json:"filename"`
		Format      string `json:"format"`
		VirtualSize int64  `json:"virtual-size"`
	}
	qPCIBus struct {
		Bus     int          `json:"bus"`
		Devices []qPCIDevice `json:"devices"`
	}
	qPCIDevice struct {
		Bus      int    `json:"bus"`
		Slot     int    `json:"slot"`
		Function int    `json:"function"`
		QDevID   string `json:"qdev_id"`
		Bridge   *struct {
			Bus struct {
				Number int `json:"number"`
			} `json:"bus"`
			Devices []qPCIDevice `json:"devices"`
		} `json:"pci_bridge"`
	}
	qGraph struct {
		Nodes []struct {
			ID   int    `json:"id"`
			Name string `json:"name"`
			Type string `json:"type"`
		} `json:"nodes"`
		Edges []struct {
			Parent int    `json:"parent"`
			Child  int    `json:"child"`
			Name   string `json:"name"`
		} `json:"edges"`
	}
)

// BlockDevices lists the VM's disks that have a medium (empty removable
// drives are left out), in query-block's order. It combines query-block,
// query-named-block-nodes (the format node's image and bitmaps), qom-get
// of each device's "serial" property, query-pci (the guest PCI address,
// by qdev id) and, when a filter sits above a disk's node,
// x-debug-query-block-graph to look through it.
func BlockDevices(ctx context.Context, q QMP) ([]BlockDevice, error) {
	var blocks []qBlock
	if err := q.Execute(ctx, "query-block", nil, &blocks); err != nil {
		return nil, fmt.Errorf("hypervisor: block devices: %w", err)
	}
	var nodeList []qBlockDevice
	if err := q.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodeList); err != nil {
		return nil, fmt.Errorf("hypervisor: block devices: %w", err)
	}
	nodes := map[string]qBlockDevice{}
	for _, n := range nodeList {
		nodes[n.NodeName] = n
	}
	var buses []qPCIBus
	if err := q.Execute(ctx, "query-pci", nil, &buses); err != nil {
		return nil, fmt.Errorf("hypervisor: block devices: %w", err)
	}
	pci := map[string]guestagent.PCIAddress{}
	for _, b := range buses {
		collectPCI(pci, b.Devices, 0)
	}

	var graph *qGraph
	var devs []BlockDevice
	for _, b := range blocks {
		if b.Inserted == nil {
			continue
		}
		d := BlockDevice{
			QOMPath:  b.QDev,
			DeviceID: deviceID(b.QDev),
			Drive:    b.Device,
			TopNode:  b.Inserted.NodeName,
			NodeName: b.Inserted.NodeName,
			ReadOnly: b.Inserted.RO,
		}
		if filterDrivers[b.Inserted.Drv] {
			if graph == nil {
				graph = new(qGraph)
				if err := q.Execute(ctx, "x-debug-query-block-graph", nil, graph); err != nil {
					return nil, fmt.Errorf("hypervisor: block devices: looking through the %s filter of %s: %w", b.Inserted.Drv, b.QDev, err)
				}
			}
			d.NodeName = lookThrough(graph, nodes, d.TopNode)
		}
		n, ok := nodes[d.NodeName]
		if !ok {
			n = *b.Inserted
		}
		d.File, d.Format, d.VirtualSize, d.Bitmaps = n.Image.Filename, n.Drv, n.Image.VirtualSize, n.Bitmaps
		if d.File == "" {
			d.File = n.File
		}
		if addr, ok := pci[d.DeviceID]; ok && d.DeviceID != "" {
			d.PCI = &addr
		}
		serial, err := deviceSerial(ctx, q, b.QDev)
		if err != nil {
			return nil, fmt.Errorf("hypervisor: block devices: serial of %s: %w", b.QDev, err)
		}
		d.Serial = serial
		devs = append(devs, d)
	}
	return devs, nil
}

// deviceID returns the qdev id in a query-block "qdev" value: the value
// itself when it is an id, the component after /machine/peripheral/ when
// it is a path, and "" for anonymous devices.
func deviceID(qdev string) string {
	const prefix = "/machine/peripheral/"
	if !strings.HasPrefix(qdev, "/") {
		return qdev
	}
	if rest, ok := strings.CutPrefix(qdev, prefix); ok {
		id, _, _ := strings.Cut(rest, "/")
		return id
	}
	return ""
}

// collectPCI records the address of every PCI function with a qdev id,
// recursing into bridges.
func collectPCI(out map[string]guestagent.PCIAddress, devs []qPCIDevice, depth int) {
	if depth > 32 {
		return
	}
	for _, d := range devs {
		if d.QDevID != "" {
			out[d.QDevID] = guestagent.PCIAddress{Domain: 0, Bus: d.Bus, Slot: d.Slot, Function: d.Function}
		}
		if d.Bridge != nil {
			collectPCI(out, d.Bridge.Devices, depth+1)
		}
	}
}

// lookThrough follows filter nodes down from top to the first node that
// is not a filter, through their "file" or "backing" child.
func lookThrough(g *qGraph, nodes map[string]qBlockDevice, top string) string {
	byName := map[string]int{}
	byID := map[int]string{}
	for _, n := range g.Nodes {
		if n.Type == "block-driver" {
			byName[n.Name] = n.ID
			byID[n.ID] = n.Name
		}
	}
	name := top
	for range 16 {
		if !filterDrivers[nodes[name].Drv] {
			return name
		}
		id, ok := byName[name]
		if !ok {
			return name
		}
		next := ""
		for _, e := range g.Edges {
			if e.Parent == id && (e.Name == "file" || e.Name == "backing") {
				next = byID[e.Child]
				break
			}
		}
		if next == "" {
			return name
		}
		name = next
	}
	return name
}

// deviceSerial reads a device's "serial" property; a device without one
// (QEMU answers with an error) has an empty serial.
func deviceSerial(ctx context.Context, q QMP, path string) (string, error) {
	if path == "" {
		return "", nil
	}
	var serial *string
	err := q.Execute(ctx, "qom-get", map[string]any{"path": path, "property": "serial"}, &serial)
	var qe *QMPError
	switch {
	case errors.As(err, &qe):
		return "", nil
	case err != nil:
		return "", err
	case serial == nil:
		return "", nil
	}
	return *serial, nil
}

// MatchGuestDisk finds the block device behind a disk that the guest
// reports (guest-get-fsinfo): by serial when the guest reports one (it
// needs udev or sysfs serials, which minimal guests may lack), else by
// the PCI address of the disk's controller, which for virtio-blk is the
// disk itself; a PCI address shared by several devices (disks behind one
// SCSI controller) matches none.
func MatchGuestDisk(devs []BlockDevice, d guestagent.Disk) (BlockDevice, bool) {
	if d.Serial != "" {
		for _, dev := range devs {
			if dev.Serial != "" && dev.Serial == d.Serial {
				return dev, true
			}
		}
	}
	var found []BlockDevice
	for _, dev := range devs {
		if dev.PCI != nil && *dev.PCI == d.PCIController {
			found = append(found, dev)
		}
	}
	if len(found) == 1 {
		return found[0], true
	}
	return BlockDevice{}, false
}
