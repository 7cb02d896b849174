package export

import (
	"errors"
	"fmt"
	"math"
	"net"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// validate applies the rules every descriptor obeys, whether it is about to
// be written or has just been read. Parsing normalises first (trims
// labels, lower-cases MACs and firmware), so that what validate accepts
// writes and reads back unchanged.
func validate(d *Descriptor, lim Limits) error {
	if err := checkLabel("VirtualSystem Name", d.Name, true); err != nil {
		return err
	}
	if err := checkText("AnnotationSection Annotation", d.Description, MaxDescriptionBytes); err != nil {
		return err
	}
	if err := checkLabel("OperatingSystemSection", d.OSType, false); err != nil {
		return err
	}
	if err := checkLabel("VirtualSystemType", d.SystemType, false); err != nil {
		return err
	}
	if d.CPUs < 1 || d.CPUs > MaxCPUs {
		return fmt.Errorf("%w: CPU item: %d virtual CPUs, want 1 to %d", ErrTooLarge, d.CPUs, MaxCPUs)
	}
	if d.MemoryMiB < MinMemoryMiB || d.MemoryMiB > MaxMemoryMiB {
		return fmt.Errorf("%w: memory item: %d MiB, want %d MiB to %d MiB (16 TiB)", ErrTooLarge, d.MemoryMiB, MinMemoryMiB, MaxMemoryMiB)
	}
	switch d.Firmware {
	case "", FirmwareBIOS, FirmwareEFI:
	default:
		return fmt.Errorf("%w: firmware %q, want %q or %q", ErrMalformed, d.Firmware, FirmwareBIOS, FirmwareEFI)
	}
	if len(d.Disks) == 0 {
		return fmt.Errorf("%w: DiskSection: no disks", ErrMalformed)
	}
	if len(d.Disks) > lim.MaxDisks {
		return fmt.Errorf("%w: DiskSection: %d disks, more than %d", ErrTooLarge, len(d.Disks), lim.MaxDisks)
	}
	files := nameSet{}
	ids := map[string]bool{}
	boot := 0
	for i := range d.Disks {
		if err := validateDisk(&d.Disks[i], lim, files, ids); err != nil {
			return err
		}
		if d.Disks[i].Boot {
			boot++
		}
	}
	if boot != 1 {
		return fmt.Errorf("%w: %d disks marked as boot disk, want exactly 1", ErrMalformed, boot)
	}
	if len(d.NICs) > MaxNICs {
		return fmt.Errorf("%w: %d NICs, more than %d", ErrTooLarge, len(d.NICs), MaxNICs)
	}
	for i, n := range d.NICs {
		what := fmt.Sprintf("NIC %d (%q)", i, n.Name)
		if err := checkLabel(what+" name", n.Name, false); err != nil {
			return err
		}
		if n.MAC != "" {
			if _, err := parseMAC(n.MAC); err != nil {
				return fmt.Errorf("%s: %w", what, err)
			}
		}
		if err := checkLabel(what+" model", n.Model, false); err != nil {
			return err
		}
		if err := checkLabel(what+" network", n.Network, false); err != nil {
			return err
		}
	}
	nfiles := len(d.Disks)
	if m := d.Twinsnap; m != nil {
		if err := validateMeta(m, d.Firmware, files); err != nil {
			return err
		}
		if m.UEFIVarsFile != "" {
			nfiles++
		}
	}
	if nfiles > lim.MaxFiles {
		return fmt.Errorf("%w: References: %d files, more than %d", ErrTooLarge, nfiles, lim.MaxFiles)
	}
	return nil
}

func validateDisk(k *Disk, lim Limits, files nameSet, ids map[string]bool) error {
	if err := checkID("disk", k.ID); err != nil {
		return err
	}
	if ids[k.ID] {
		return fmt.Errorf("%w: disk %q: duplicate disk id", ErrMalformed, k.ID)
	}
	ids[k.ID] = true
	what := fmt.Sprintf("disk %q", k.ID)
	if err := checkLabel(what+" name", k.Name, true); err != nil {
		return err
	}
	if err := files.add(k.File); err != nil {
		return fmt.Errorf("%s file: %w", what, err)
	}
	if k.Format != FormatQCOW2 && k.Format != FormatVMDK {
		return fmt.Errorf("%w: %s: format %q, want %q or %q", ErrFormat, what, k.Format, FormatQCOW2, FormatVMDK)
	}
	if k.CapacityBytes <= 0 || k.CapacityBytes > lim.MaxDiskBytes {
		return fmt.Errorf("%w: %s: capacity %d bytes, want 1 to %d", ErrTooLarge, what, k.CapacityBytes, lim.MaxDiskBytes)
	}
	if k.PopulatedBytes < 0 || k.PopulatedBytes > k.CapacityBytes {
		return fmt.Errorf("%w: %s: populated size %d bytes, want 0 to its capacity %d", ErrTooLarge, what, k.PopulatedBytes, k.CapacityBytes)
	}
	if k.FileSize < 0 {
		return fmt.Errorf("%w: %s: file %q: negative size %d", ErrTooLarge, what, k.File, k.FileSize)
	}
	if limit := maxFileBytes(k.CapacityBytes); k.FileSize > limit {
		return fmt.Errorf("%w: %s: file %q: size %d bytes, more than twice the capacity plus 1 MiB (%d)", ErrTooLarge, what, k.File, k.FileSize, limit)
	}
	if _, ok := controllerSpecs[k.Controller]; !ok {
		return fmt.Errorf("%w: %s: controller %q, want virtio, scsi, ide, sata or nvme", ErrMalformed, what, k.Controller)
	}
	return checkLabel(what+" serial", k.Serial, false)
}

func validateMeta(m *Meta, firmware string, files nameSet) error {
	for _, f := range []struct{ name, v string }{
		{"SnapshotID", m.SnapshotID}, {"SnapshotName", m.SnapshotName},
		{"VMID", m.VMID}, {"VMName", m.VMName}, {"SourceSystem", m.SourceSystem},
	} {
		if err := checkLabel("twinsnap:"+f.name, f.v, false); err != nil {
			return err
		}
	}
	switch m.Consistency {
	case "", "application", "crash":
	default:
		return fmt.Errorf("%w: twinsnap:Consistency %q, want application or crash", ErrMalformed, m.Consistency)
	}
	switch m.Driver {
	case "", "qemu", "libvirt":
	default:
		return fmt.Errorf("%w: twinsnap:Driver %q, want qemu or libvirt", ErrMalformed, m.Driver)
	}
	if y := m.CapturedAt.Year(); y < 1 || y > 9999 {
		return fmt.Errorf("%w: twinsnap:CapturedAt: year %d outside 1 to 9999", ErrMalformed, y)
	}
	if len(m.Config) > MaxConfigBytes {
		return fmt.Errorf("%w: twinsnap:Config: %d bytes, more than %d", ErrTooLarge, len(m.Config), MaxConfigBytes)
	}
	if m.UEFIVarsFile == "" {
		if m.UEFIVarsSize != 0 {
			return fmt.Errorf("%w: twinsnap:UEFIVarsFile: size %d given without a file", ErrMalformed, m.UEFIVarsSize)
		}
		return nil
	}
	if err := files.add(m.UEFIVarsFile); err != nil {
		return fmt.Errorf("twinsnap:UEFIVarsFile: %w", err)
	}
	if firmware != FirmwareEFI {
		return fmt.Errorf("%w: twinsnap:UEFIVarsFile %q given for firmware %q, want efi", ErrMalformed, m.UEFIVarsFile, firmware)
	}
	if m.UEFIVarsSize < 0 || m.UEFIVarsSize > MaxUEFIVarsBytes {
		return fmt.Errorf("%w: UEFI variable store %q: size %d bytes, want 0 to %d", ErrTooLarge, m.UEFIVarsFile, m.UEFIVarsSize, MaxUEFIVarsBytes)
	}
	return nil
}

// checkLabel checks a one-line string: printable UTF-8, no leading or
// trailing white space, at most MaxLabelBytes; required ones not empty.
func checkLabel(what, s string, required bool) error {
	if s == "" {
		if required {
			return fmt.Errorf("%w: %s: empty", ErrMalformed, what)
		}
		return nil
	}
	if len(s) > MaxLabelBytes {
		return fmt.Errorf("%w: %s: %d bytes, more than %d", ErrTooLarge, what, len(s), MaxLabelBytes)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: %s %q: not valid UTF-8", ErrMalformed, what, s)
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("%w: %s %q: non-printing character %U", ErrMalformed, what, s, r)
		}
	}
	if strings.TrimSpace(s) != s {
		return fmt.Errorf("%w: %s %q: leading or trailing space", ErrMalformed, what, s)
	}
	return nil
}

// checkText checks free text: UTF-8 made of characters XML can carry.
func checkText(what, s string, limit int) error {
	if len(s) > limit {
		return fmt.Errorf("%w: %s: %d bytes, more than %d", ErrTooLarge, what, len(s), limit)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: %s: not valid UTF-8", ErrMalformed, what)
	}
	for _, r := range s {
		if !isXMLChar(r) {
			return fmt.Errorf("%w: %s: character %U cannot appear in XML", ErrMalformed, what, r)
		}
	}
	return nil
}

// isXMLChar reports whether XML 1.0 allows r in a document.
func isXMLChar(r rune) bool {
	return r == 0x09 || r == 0x0A || r == 0x0D ||
		(r >= 0x20 && r <= 0xD7FF) ||
		(r >= 0xE000 && r <= 0xFFFD) ||
		(r >= 0x10000 && r <= 0x10FFFF)
}

// checkID checks an ovf:diskId: 1 to 128 of A-Z a-z 0-9 . _ -.
func checkID(what, id string) error {
	if id == "" || len(id) > 128 {
		return fmt.Errorf("%w: %s id %q: want 1 to 128 characters", ErrMalformed, what, truncate(id))
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !isASCIILetter(c) && (c < '0' || c > '9') && c != '.' && c != '_' && c != '-' {
			return fmt.Errorf("%w: %s id %q: character %q not allowed (A-Z a-z 0-9 . _ -)", ErrMalformed, what, id, c)
		}
	}
	return nil
}

// parseMAC parses a 6-byte unicast MAC address written with colons,
// hyphens, or as 12 hex digits (as VirtualBox writes it), and returns it
// in lower case with colons.
func parseMAC(s string) (string, error) {
	in := s
	if len(s) == 12 && !strings.ContainsAny(s, ":-.") {
		var b strings.Builder
		for i := 0; i < 12; i += 2 {
			if i > 0 {
				b.WriteByte(':')
			}
			b.WriteString(s[i : i+2])
		}
		s = b.String()
	}
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return "", fmt.Errorf("%w: MAC address %q: not a 6-byte MAC", ErrMalformed, truncate(in))
	}
	if hw[0]&1 != 0 {
		return "", fmt.Errorf("%w: MAC address %q: multicast, want unicast", ErrMalformed, in)
	}
	if hw.String() == "00:00:00:00:00:00" {
		return "", fmt.Errorf("%w: MAC address %q: all zeros", ErrMalformed, in)
	}
	return hw.String(), nil
}

// normalMAC returns a valid MAC in its canonical form ("" stays "").
func normalMAC(s string) string {
	if m, err := parseMAC(s); err == nil {
		return m
	}
	return s
}

// parseSize parses a non-negative decimal size; what names the value.
// Numbers that do not fit in 64 bits and negative ones are ErrTooLarge.
func parseSize(what, s string) (int64, error) {
	s = strings.TrimSpace(s)
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		if errors.Is(err, strconv.ErrRange) {
			return 0, fmt.Errorf("%w: %s %q: does not fit in 64 bits", ErrTooLarge, what, truncate(s))
		}
		return 0, fmt.Errorf("%w: %s %q: not an integer", ErrMalformed, what, truncate(s))
	}
	if n < 0 {
		return 0, fmt.Errorf("%w: %s %d: negative size", ErrTooLarge, what, n)
	}
	return n, nil
}

// parseUnits parses a programmatic unit of bytes as OVF writers use them
// ("byte", "byte * 2^30", "byte * 10^9", "byte * 1024", "MegaBytes", "GB")
// and returns its multiplier. Empty means def.
func parseUnits(what, s string, def int64) (int64, error) {
	u := strings.ToLower(strings.Join(strings.Fields(s), ""))
	switch u {
	case "":
		return def, nil
	case "byte", "bytes", "b":
		return 1, nil
	case "kilobytes", "kb", "kib":
		return 1 << 10, nil
	case "megabytes", "mb", "mib":
		return 1 << 20, nil
	case "gigabytes", "gb", "gib":
		return 1 << 30, nil
	case "terabytes", "tb", "tib":
		return 1 << 40, nil
	}
	bad := fmt.Errorf("%w: %s %q: not a unit of bytes", ErrMalformed, what, truncate(s))
	rest, ok := strings.CutPrefix(u, "byte*")
	if !ok {
		return 0, bad
	}
	if base, exp, ok := strings.Cut(rest, "^"); ok {
		b, err1 := strconv.Atoi(base)
		e, err2 := strconv.Atoi(exp)
		if err1 != nil || err2 != nil || (b != 2 && b != 10) || e < 0 || e > 62 {
			return 0, bad
		}
		m := int64(1)
		for i := 0; i < e; i++ {
			if m > math.MaxInt64/int64(b) {
				return 0, fmt.Errorf("%w: %s %q: does not fit in 64 bits", ErrTooLarge, what, s)
			}
			m *= int64(b)
		}
		return m, nil
	}
	m, err := strconv.ParseInt(rest, 10, 64)
	if err != nil || m <= 0 {
		return 0, bad
	}
	return m, nil
}

// mulSize multiplies a size by a unit, refusing overflow with ErrTooLarge.
func mulSize(what string, n, unit int64) (int64, error) {
	if unit > 0 && n > math.MaxInt64/unit {
		return 0, fmt.Errorf("%w: %s: %d × %d bytes does not fit in 64 bits", ErrTooLarge, what, n, unit)
	}
	return n * unit, nil
}

// truncate shortens a hostile value for an error message.
func truncate(s string) string {
	if len(s) <= 64 {
		return s
	}
	for i := 64; i > 0; i-- {
		if utf8.RuneStart(s[i]) {
			return s[:i] + "…"
		}
	}
	return ""
}

// parseTime parses twinsnap:CapturedAt; empty is the zero time.
func parseTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%w: twinsnap:CapturedAt %q: not an RFC 3339 time", ErrMalformed, truncate(s))
	}
	return t.UTC(), nil
}
