package export

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxNameBytes is the longest file name CheckName accepts, in bytes.
const MaxNameBytes = 255

// CheckName reports whether name is a plain, safe file name for a member of
// an export package: one path element that means the same file on Linux, on
// an SMB share and inside a tar archive. It is the one check every name read
// from a descriptor, a manifest or an OVA passes through. It refuses, with
// an error wrapping ErrUnsafeName that names the value and the reason:
//
//   - the empty name, "." and "..", and names over MaxNameBytes bytes;
//   - anything that is not valid UTF-8, and control, format and other
//     non-printing characters (NUL, newline, bidirectional overrides, …);
//   - URLs ("://"), absolute paths, "/" and "\" anywhere, ".." anywhere;
//   - Windows drive letters ("C:") and any other ":" (NTFS streams);
//   - the characters Windows and SMB reserve: < > " | ? *;
//   - names ending in a space or a dot, or starting with a space, which
//     Windows and SMB servers silently change;
//   - reserved Windows device names (CON, PRN, AUX, NUL, COM1-9, LPT1-9),
//     with or without an extension.
//
// Duplicates are refused where names are collected (descriptor, manifest,
// archive); there, names that differ only in case count as the same, since
// SMB shares do not tell them apart.
func CheckName(name string) error {
	if reason := nameProblem(name); reason != "" {
		return fmt.Errorf("export: %w %q: %s", ErrUnsafeName, name, reason)
	}
	return nil
}

// checkName is CheckName without the package prefix, for errors that the
// caller wraps with more context.
func checkName(name string) error {
	if reason := nameProblem(name); reason != "" {
		return fmt.Errorf("%w %q: %s", ErrUnsafeName, name, reason)
	}
	return nil
}

// nameProblem returns why name is unsafe, or "" when it is safe.
func nameProblem(name string) string {
	switch {
	case name == "":
		return "empty"
	case len(name) > MaxNameBytes:
		return fmt.Sprintf("longer than %d bytes", MaxNameBytes)
	case !utf8.ValidString(name):
		return "not valid UTF-8"
	case strings.Contains(name, "://"):
		return "a URL, not a file in the package"
	case name == "." || name == "..":
		return "not a file name"
	case strings.Contains(name, ".."):
		return `contains ".." (path traversal)`
	case name[0] == '/' || name[0] == '\\':
		return "an absolute path"
	case strings.ContainsAny(name, `/\`):
		return "contains a path separator"
	case len(name) >= 2 && name[1] == ':' && isASCIILetter(name[0]):
		return "starts with a Windows drive letter"
	case strings.ContainsRune(name, ':'):
		return `contains ":" (a Windows stream separator)`
	}
	for _, r := range name {
		if r == 0 {
			return "contains a NUL character"
		}
		if !unicode.IsPrint(r) {
			return fmt.Sprintf("contains the non-printing character %U", r)
		}
		if strings.ContainsRune(`<>"|?*`, r) {
			return fmt.Sprintf("contains %q, which Windows and SMB reserve", r)
		}
	}
	switch {
	case name[0] == ' ':
		return "starts with a space"
	case strings.HasSuffix(name, " ") || strings.HasSuffix(name, "."):
		return "ends with a space or a dot, which Windows and SMB drop"
	case isWindowsDevice(name):
		return "a reserved Windows device name"
	}
	return ""
}

func isASCIILetter(c byte) bool {
	return ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z')
}

// isWindowsDevice reports whether name, without its extension, is one of
// the device names Windows reserves in every directory.
func isWindowsDevice(name string) bool {
	base := strings.ToUpper(name)
	if i := strings.IndexByte(base, '.'); i >= 0 {
		base = base[:i]
	}
	base = strings.TrimRight(base, " ")
	switch base {
	case "CON", "PRN", "AUX", "NUL":
		return true
	}
	if len(base) == 4 && (strings.HasPrefix(base, "COM") || strings.HasPrefix(base, "LPT")) {
		return base[3] >= '1' && base[3] <= '9'
	}
	return false
}

// nameSet collects file names and refuses duplicates, comparing names
// without regard to case (SMB shares are case-insensitive).
type nameSet map[string]string

// add checks name with checkName and records it; a second name equal to an
// earlier one up to case is refused with ErrUnsafeName.
func (s nameSet) add(name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	key := strings.ToLower(name)
	if prev, ok := s[key]; ok {
		if prev == name {
			return fmt.Errorf("%w %q: duplicate", ErrUnsafeName, name)
		}
		return fmt.Errorf("%w %q: same name as %q on a case-insensitive share", ErrUnsafeName, name, prev)
	}
	s[key] = name
	return nil
}
