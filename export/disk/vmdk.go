package disk

import (
	"encoding/binary"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"
)

// VMDK sparse extent ("KDMV", VMDK 4) constants for streamOptimized files.
const (
	sectorSize      = 512
	vmdkMagic       = 0x564d444b // "KDMV" read little-endian
	vmdkVersion     = 3
	vmdkGrainSect   = 128 // 64 KiB grains
	vmdkGrainBytes  = vmdkGrainSect * sectorSize
	vmdkGTEs        = 512 // grain table entries per grain table
	vmdkGTSectors   = vmdkGTEs * 4 / sectorSize
	vmdkGDAtEnd     = ^uint64(0)
	vmdkDescOffset  = 1
	vmdkDescSectors = 20  // space the writer sets aside for the descriptor
	vmdkOverhead    = 128 // the writer's first grain is at 64 KiB
	vmdkMaxDescSect = 128 // a descriptor is at most 64 KiB
	vmdkDeflate     = 1   // compressAlgorithm

	flagNewlineTest = 1 << 0  // valid newline detection bytes
	flagRGD         = 1 << 1  // redundant grain directory
	flagCompressed  = 1 << 16 // compressed grains
	flagMarkers     = 1 << 17 // markers before grains and metadata

	markerEOS    = 0
	markerGT     = 1
	markerGD     = 2
	markerFooter = 3

	grainMarkerLen = 12 // lba uint64 + size uint32
)

// sparseHeader is the 512-byte header of a VMDK 4 sparse extent. Sector
// offsets and sizes are in 512-byte sectors.
type sparseHeader struct {
	Version           uint32
	Flags             uint32
	Capacity          uint64
	GrainSize         uint64
	DescriptorOffset  uint64
	DescriptorSize    uint64
	NumGTEsPerGT      uint32
	RGDOffset         uint64
	GDOffset          uint64
	OverHead          uint64
	UncleanShutdown   uint8
	Newline           [4]byte
	CompressAlgorithm uint16
}

// newlineBytes are the newline detection characters: '\n', ' ', '\r', '\n'.
var newlineBytes = [4]byte{'\n', ' ', '\r', '\n'}

// marshal encodes h into a 512-byte sector.
func (h *sparseHeader) marshal() []byte {
	b := make([]byte, sectorSize)
	le := binary.LittleEndian
	le.PutUint32(b[0:], vmdkMagic)
	le.PutUint32(b[4:], h.Version)
	le.PutUint32(b[8:], h.Flags)
	le.PutUint64(b[12:], h.Capacity)
	le.PutUint64(b[20:], h.GrainSize)
	le.PutUint64(b[28:], h.DescriptorOffset)
	le.PutUint64(b[36:], h.DescriptorSize)
	le.PutUint32(b[44:], h.NumGTEsPerGT)
	le.PutUint64(b[48:], h.RGDOffset)
	le.PutUint64(b[56:], h.GDOffset)
	le.PutUint64(b[64:], h.OverHead)
	b[72] = h.UncleanShutdown
	copy(b[73:77], h.Newline[:])
	le.PutUint16(b[77:], h.CompressAlgorithm)
	return b
}

// unmarshalHeader decodes a 512-byte sector; it checks only the magic.
func unmarshalHeader(b []byte) (sparseHeader, error) {
	le := binary.LittleEndian
	if len(b) < sectorSize || le.Uint32(b) != vmdkMagic {
		return sparseHeader{}, fmt.Errorf("not a VMDK sparse extent (bad magic): %w", ErrMalformed)
	}
	h := sparseHeader{
		Version:           le.Uint32(b[4:]),
		Flags:             le.Uint32(b[8:]),
		Capacity:          le.Uint64(b[12:]),
		GrainSize:         le.Uint64(b[20:]),
		DescriptorOffset:  le.Uint64(b[28:]),
		DescriptorSize:    le.Uint64(b[36:]),
		NumGTEsPerGT:      le.Uint32(b[44:]),
		RGDOffset:         le.Uint64(b[48:]),
		GDOffset:          le.Uint64(b[56:]),
		OverHead:          le.Uint64(b[64:]),
		UncleanShutdown:   b[72],
		CompressAlgorithm: le.Uint16(b[77:]),
	}
	copy(h.Newline[:], b[73:77])
	return h, nil
}

// metaMarker encodes a metadata marker sector: the number of sectors of
// metadata that follow, size 0, and the marker type.
func metaMarker(sectors uint64, typ uint32) []byte {
	b := make([]byte, sectorSize)
	binary.LittleEndian.PutUint64(b[0:], sectors)
	binary.LittleEndian.PutUint32(b[12:], typ)
	return b
}

// descriptor is what an embedded VMDK descriptor says.
type descriptor struct {
	CID         uint32
	CreateType  string
	Capacity    uint64 // sectors, from the extent line
	ExtentFile  string
	AdapterType string
	HWVersion   string
	Cylinders   string
	Heads       string
	Sectors     string
	Keys        map[string]string // every key=value line, quotes removed
}

// geometry returns a BIOS geometry for capacity sectors: 16 heads for IDE,
// 255 for SCSI, 63 sectors per track, cylinders capped as VMware does.
func geometry(capacity uint64, adapter string) (cyl, heads, sectors uint64) {
	heads, sectors, maxCyl := uint64(255), uint64(63), uint64(65535)
	if adapter == "ide" {
		heads, maxCyl = 16, 16383
	}
	cyl = min((capacity+heads*sectors-1)/(heads*sectors), maxCyl)
	return cyl, heads, sectors
}

// renderDescriptor writes the embedded descriptor of a streamOptimized
// extent.
func renderDescriptor(cid uint32, capacity uint64, file, adapter string, hw int) string {
	cyl, heads, sectors := geometry(capacity, adapter)
	var b strings.Builder
	fmt.Fprintf(&b, "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=%08x\nparentCID=ffffffff\n", cid)
	b.WriteString("createType=\"streamOptimized\"\n\n# Extent description\n")
	fmt.Fprintf(&b, "RW %d SPARSE \"%s\"\n\n# The Disk Data Base\n#DDB\n\n", capacity, file)
	fmt.Fprintf(&b, "ddb.virtualHWVersion = \"%d\"\n", hw)
	fmt.Fprintf(&b, "ddb.geometry.cylinders = \"%d\"\nddb.geometry.heads = \"%d\"\nddb.geometry.sectors = \"%d\"\n", cyl, heads, sectors)
	fmt.Fprintf(&b, "ddb.adapterType = \"%s\"\n", adapter)
	return b.String()
}

var (
	descKeyRe    = regexp.MustCompile(`^([A-Za-z][A-Za-z0-9._]*)[ \t]*=[ \t]*(?:"([^"]*)"|([^" \t]+))$`)
	descExtentRe = regexp.MustCompile(`^(RW|RDONLY|NOACCESS)[ \t]+([0-9]{1,20})[ \t]+([A-Z]+)[ \t]+"([^"]*)"(?:[ \t]+([0-9]+))?$`)
	descHexRe    = regexp.MustCompile(`^[0-9a-fA-F]{1,8}$`)
)

// parseDescriptor parses an embedded descriptor strictly: text up to the
// first NUL (zeros after it), printable UTF-8 lines that are blank,
// comments, key = value pairs (each key once) or one extent line. It
// requires a streamOptimized disk without a parent, with a single sparse
// extent.
func parseDescriptor(raw []byte) (*descriptor, error) {
	text := raw
	if i := indexByte(raw, 0); i >= 0 {
		text = raw[:i]
		if !isZero(raw[i:]) {
			return nil, fmt.Errorf("descriptor: data after its terminating NUL: %w", ErrMalformed)
		}
	}
	if !utf8.Valid(text) {
		return nil, fmt.Errorf("descriptor: not UTF-8: %w", ErrMalformed)
	}
	d := &descriptor{Keys: map[string]string{}}
	extents := 0
	for n, line := range strings.Split(string(text), "\n") {
		line = strings.TrimSuffix(line, "\r")
		for _, r := range line {
			if r < 0x20 && r != '\t' || r == 0x7f {
				return nil, fmt.Errorf("descriptor line %d: control character %q: %w", n+1, r, ErrMalformed)
			}
		}
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		if m := descExtentRe.FindStringSubmatch(line); m != nil {
			extents++
			if extents > 1 {
				return nil, fmt.Errorf("descriptor: more than one extent: %w", ErrUnsupported)
			}
			if m[1] != "RW" || m[3] != "SPARSE" || m[5] != "" {
				return nil, fmt.Errorf("descriptor: extent %q is not a read-write sparse extent: %w", line, ErrUnsupported)
			}
			c, err := strconv.ParseUint(m[2], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("descriptor: extent size %q: %w", m[2], ErrMalformed)
			}
			d.Capacity, d.ExtentFile = c, m[4]
			continue
		}
		m := descKeyRe.FindStringSubmatch(line)
		if m == nil {
			return nil, fmt.Errorf("descriptor line %d: %q is neither key = value nor an extent: %w", n+1, line, ErrMalformed)
		}
		key, val := m[1], m[2]+m[3]
		if _, dup := d.Keys[key]; dup {
			return nil, fmt.Errorf("descriptor: key %q given twice: %w", key, ErrMalformed)
		}
		d.Keys[key] = val
	}
	if extents == 0 {
		return nil, fmt.Errorf("descriptor: no extent line: %w", ErrMalformed)
	}
	if v := d.Keys["version"]; v != "1" {
		return nil, fmt.Errorf("descriptor: version %q, want 1: %w", v, ErrUnsupported)
	}
	cid, ok := d.Keys["CID"]
	if !descHexRe.MatchString(cid) {
		return nil, fmt.Errorf("descriptor: CID %q (present %v) is not 1 to 8 hex digits: %w", cid, ok, ErrMalformed)
	}
	c, _ := strconv.ParseUint(cid, 16, 32)
	d.CID = uint32(c)
	if p := strings.ToLower(d.Keys["parentCID"]); p != "ffffffff" {
		return nil, fmt.Errorf("descriptor: parentCID %q: a disk with a parent: %w", d.Keys["parentCID"], ErrUnsupported)
	}
	if _, ok := d.Keys["parentFileNameHint"]; ok {
		return nil, fmt.Errorf("descriptor: parentFileNameHint: a disk with a parent: %w", ErrUnsupported)
	}
	d.CreateType = d.Keys["createType"]
	if d.CreateType != "streamOptimized" {
		return nil, fmt.Errorf("descriptor: createType %q, want streamOptimized: %w", d.CreateType, ErrUnsupported)
	}
	d.AdapterType = d.Keys["ddb.adapterType"]
	d.HWVersion = d.Keys["ddb.virtualHWVersion"]
	d.Cylinders = d.Keys["ddb.geometry.cylinders"]
	d.Heads = d.Keys["ddb.geometry.heads"]
	d.Sectors = d.Keys["ddb.geometry.sectors"]
	return d, nil
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}
