package command

import (
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"path"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Limits enforced by Validate. They are part of the payload format: loosening
// one is compatible, tightening one needs a new payload version, because an
// entry that an old node accepted and a new node refuses would make their
// states diverge.
const (
	// MaxIDLen is the longest id (node, VM, volume, snapshot, job).
	MaxIDLen = 64
	// MaxNameLen is the longest name, in bytes.
	MaxNameLen = 128
	// MaxDescriptionLen is the longest description or reason, in bytes.
	MaxDescriptionLen = 1024
	// MaxVolumes is the most volumes a VM may have.
	MaxVolumes = 64
	// MaxSettings is the most entries in the settings map.
	MaxSettings = 64
	// MaxSettingValueLen is the longest settings value, in bytes.
	MaxSettingValueLen = 1024
	// MaxBytes is the largest byte count accepted anywhere (1 PiB).
	MaxBytes = 1 << 50
	// MaxFreezeTimeout is the longest guest freeze a VM may be configured for.
	MaxFreezeTimeout = 5 * time.Minute
	// MaxSerialLen is the longest volume serial (virtio-blk's limit).
	MaxSerialLen = 20
	// MaxPathLen is the longest file path a record holds.
	MaxPathLen = 4096
	// MaxSocketPathLen is the longest Unix socket path (sun_path less the NUL).
	MaxSocketPathLen = 107
	// MaxURLLen is the longest URL (share locations, libvirt URIs).
	MaxURLLen = 2048
	// MaxLostNodes is the most nodes a DiscardIncomplete may declare lost.
	MaxLostNodes = 8
	// MaxFileNameLen is the longest element of a path within a share, in bytes.
	MaxFileNameLen = 255
	// MaxPackageNameLen is the longest export package base name, in bytes:
	// room is left for the suffixes of the package's files.
	MaxPackageNameLen = 200
	// MaxUserLen is the longest share user name, in bytes.
	MaxUserLen = 256
	// MaxDomainLen is the longest share domain (workgroup), in bytes.
	MaxDomainLen = 256
	// MaxSealedLen is the largest sealed secret, in bytes.
	MaxSealedLen = 4096
	// MinSealedLen is the smallest sealed secret: a 12-byte nonce and a
	// 16-byte authentication tag around an empty secret.
	MinSealedLen = 28
	// MaxWindowSpecLen is the longest maintenance window spec: up to
	// eight comma-separated spans ("22:00-04:00,12:00-13:00").
	MaxWindowSpecLen = 160
	// MaxWindowDaysLen is the longest list of window days ("mon-fri,sun").
	MaxWindowDaysLen = 64
	// MaxLocationLen is the longest IANA time zone name.
	MaxLocationLen = 64
	// MaxGuestPathLen is the longest path of a program in a guest.
	MaxGuestPathLen = 1024
	// MaxGuestArgs is the most arguments a guest program is given.
	MaxGuestArgs = 64
	// MaxGuestArgLen is the longest argument of a guest program, in bytes.
	MaxGuestArgLen = 1024
)

// ValidationError is what Validate returns: the offending field and why.
// It matches ErrInvalid through errors.Is.
type ValidationError struct {
	// Field is the JSON path of the offending field, such as "volumes[1].serial".
	Field string
	// Reason says what is wrong with it.
	Reason string
}

// Error implements error.
func (e *ValidationError) Error() string {
	return fmt.Sprintf("command: invalid %s: %s", e.Field, e.Reason)
}

// Is reports whether target is ErrInvalid.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalid }

func invalid(field, format string, args ...any) error {
	return &ValidationError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// idx builds an indexed field path such as "volumes[2].id".
func idx(field string, i int, sub string) string {
	return field + "[" + strconv.Itoa(i) + "]." + sub
}

// checkID accepts 1 to MaxIDLen characters from [A-Za-z0-9._:-], starting
// with a letter or digit: UUIDs, ULIDs and readable ids all fit.
func checkID(field, v string) error {
	if v == "" {
		return invalid(field, "required")
	}
	if len(v) > MaxIDLen {
		return invalid(field, "longer than %d bytes", MaxIDLen)
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if i == 0 && !alnum {
			return invalid(field, "%q must start with a letter or digit", v)
		}
		if !alnum && c != '.' && c != '_' && c != ':' && c != '-' {
			return invalid(field, "%q holds %q; ids use letters, digits and . _ : -", v, c)
		}
	}
	return nil
}

// checkOptionalID is checkID for a field that may be empty.
func checkOptionalID(field, v string) error {
	if v == "" {
		return nil
	}
	return checkID(field, v)
}

// checkName accepts a human-chosen name: valid UTF-8, 1 to MaxNameLen bytes,
// no control characters, no path separators, no surrounding white space.
func checkName(field, v string) error {
	if v == "" {
		return invalid(field, "required")
	}
	if len(v) > MaxNameLen {
		return invalid(field, "longer than %d bytes", MaxNameLen)
	}
	if !utf8.ValidString(v) {
		return invalid(field, "not valid UTF-8")
	}
	if strings.TrimSpace(v) != v {
		return invalid(field, "%q has leading or trailing white space", v)
	}
	for _, r := range v {
		if unicode.IsControl(r) || r == '/' || r == '\\' {
			return invalid(field, "%q holds %q", v, r)
		}
	}
	return nil
}

// checkText accepts optional free text of at most max bytes: valid UTF-8,
// no control characters but newline and tab.
func checkText(field, v string, max int) error {
	if len(v) > max {
		return invalid(field, "longer than %d bytes", max)
	}
	if !utf8.ValidString(v) {
		return invalid(field, "not valid UTF-8")
	}
	for _, r := range v {
		if unicode.IsControl(r) && r != '\n' && r != '\t' {
			return invalid(field, "holds control character %U", r)
		}
	}
	return nil
}

// checkAddr accepts host:port with a non-empty host and a port from 1 to 65535.
func checkAddr(field, v string) error {
	if v == "" {
		return invalid(field, "required")
	}
	if len(v) > 255 {
		return invalid(field, "longer than 255 bytes")
	}
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		return invalid(field, "%q is not host:port: %v", v, err)
	}
	if host == "" {
		return invalid(field, "%q has no host", v)
	}
	for _, r := range host {
		if r <= ' ' || r > '~' {
			return invalid(field, "%q: host holds %q", v, r)
		}
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return invalid(field, "%q: port must be 1-65535", v)
	}
	return nil
}

// checkSocketPath accepts an absolute, clean Unix socket path.
func checkSocketPath(field, v string) error {
	if v == "" {
		return invalid(field, "required")
	}
	if len(v) > MaxSocketPathLen {
		return invalid(field, "longer than %d bytes", MaxSocketPathLen)
	}
	if !path.IsAbs(v) || path.Clean(v) != v {
		return invalid(field, "%q is not an absolute, clean path", v)
	}
	for _, r := range v {
		if r < ' ' || r == 0x7f {
			return invalid(field, "holds control character %U", r)
		}
	}
	return nil
}

// checkURL accepts an absolute URL with one of schemes and no password: the
// replicated log is no place for secrets.
func checkURL(field, v string, schemes ...string) error {
	if v == "" {
		return invalid(field, "required")
	}
	if len(v) > MaxURLLen {
		return invalid(field, "longer than %d bytes", MaxURLLen)
	}
	if err := checkText(field, v, MaxURLLen); err != nil {
		return err
	}
	u, err := url.Parse(v)
	if err != nil {
		return invalid(field, "not a URL: %v", err)
	}
	ok := false
	for _, s := range schemes {
		if u.Scheme == s {
			ok = true
		}
	}
	if !ok {
		return invalid(field, "scheme %q is not one of %s", u.Scheme, strings.Join(schemes, ", "))
	}
	if _, has := u.User.Password(); has {
		return invalid(field, "holds a password; credentials are never replicated")
	}
	return nil
}

// checkSHA256 accepts 64 lower-case hexadecimal digits.
func checkSHA256(field, v string) error {
	if len(v) != 64 {
		return invalid(field, "want 64 hex digits, got %d characters", len(v))
	}
	if _, err := hex.DecodeString(v); err != nil || strings.ToLower(v) != v {
		return invalid(field, "%q is not lower-case hex", v)
	}
	return nil
}

// checkBytes accepts a byte count from min to MaxBytes.
func checkBytes(field string, v, min int64) error {
	if v < min || v > MaxBytes {
		return invalid(field, "%d is outside %d..%d", v, min, int64(MaxBytes))
	}
	return nil
}

// checkTime requires a set time that JSON can carry (years 1970 to 9999).
func checkTime(field string, t time.Time) error {
	if t.IsZero() {
		return invalid(field, "required")
	}
	if y := t.Year(); y < 1970 || y > 9999 {
		return invalid(field, "year %d is outside 1970..9999", y)
	}
	return nil
}

// checkTerm requires a Raft term, which is never zero.
func checkTerm(field string, v uint64) error {
	if v == 0 {
		return invalid(field, "required (Raft terms start at 1)")
	}
	return nil
}

// checkLine accepts optional single-line text of at most max bytes: valid
// UTF-8 without any control character.
func checkLine(field, v string, max int) error {
	if len(v) > max {
		return invalid(field, "longer than %d bytes", max)
	}
	if !utf8.ValidString(v) {
		return invalid(field, "not valid UTF-8")
	}
	for _, r := range v {
		if unicode.IsControl(r) {
			return invalid(field, "holds control character %U", r)
		}
	}
	return nil
}

// invisible are format characters that make a name look like another
// (bidirectional overrides and isolates, zero-width characters, the byte
// order mark). The list is fixed so that validation does not change with
// the Unicode tables of the Go release a node was built with.
const invisible = "\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2060\u2066\u2067\u2068\u2069\ufeff"

// fileNameProblem returns why v is not a safe element of a path within a
// share, or "" when it is one. The rules follow the export package's
// CheckName (a name that means the same file on Linux, on an SMB share and
// in a tar archive), with fixed character lists instead of Unicode
// classes; the export package checks its own rules again when it runs.
func fileNameProblem(v string) string {
	switch {
	case v == "":
		return "empty"
	case len(v) > MaxFileNameLen:
		return fmt.Sprintf("longer than %d bytes", MaxFileNameLen)
	case !utf8.ValidString(v):
		return "not valid UTF-8"
	case v == "." || v == "..":
		return "not a file name"
	case strings.Contains(v, ".."):
		return `holds ".."`
	case strings.ContainsAny(v, `/\`):
		return "holds a path separator"
	case strings.ContainsAny(v, `:<>"|?*`):
		return `holds one of : < > " | ? *, which SMB reserves`
	case strings.ContainsAny(v, invisible):
		return "holds an invisible format character"
	case v[0] == ' ':
		return "starts with a space"
	case strings.HasSuffix(v, " ") || strings.HasSuffix(v, "."):
		return "ends with a space or a dot, which SMB drops"
	}
	for _, r := range v {
		if unicode.IsControl(r) {
			return fmt.Sprintf("holds control character %U", r)
		}
	}
	return ""
}

// checkFileName accepts one safe path element of at most max bytes.
func checkFileName(field, v string, max int) error {
	if len(v) > max {
		return invalid(field, "longer than %d bytes", max)
	}
	if p := fileNameProblem(v); p != "" {
		return invalid(field, "%q is not a safe file name: %s", v, p)
	}
	return nil
}

// checkRelPath accepts a path within a share: safe elements (see
// checkFileName) separated by single slashes, without a leading or
// trailing slash, at most MaxPathLen bytes. The empty path (the share's
// top) is accepted only when optional.
func checkRelPath(field, v string, optional bool) error {
	if v == "" {
		if optional {
			return nil
		}
		return invalid(field, "required")
	}
	if len(v) > MaxPathLen {
		return invalid(field, "longer than %d bytes", MaxPathLen)
	}
	if strings.HasPrefix(v, "/") {
		return invalid(field, "%q is absolute; give a path within the share", v)
	}
	for elem := range strings.SplitSeq(v, "/") {
		if p := fileNameProblem(elem); p != "" {
			return invalid(field, "%q: element %q: %s", v, elem, p)
		}
	}
	return nil
}

// checkShareURL accepts the location of a share, smb://host[:port]/share[/dir...]
// or file:///abs/dir, and returns its scheme. Credentials, queries and
// fragments are refused: a share's user name, domain and sealed password
// have fields of their own.
func checkShareURL(field, v string) (string, error) {
	if v == "" {
		return "", invalid(field, "required")
	}
	if err := checkLine(field, v, MaxURLLen); err != nil {
		return "", err
	}
	u, err := url.Parse(v)
	if err != nil {
		return "", invalid(field, "not a URL: %v", err)
	}
	switch {
	case u.Scheme != "smb" && u.Scheme != "file":
		return "", invalid(field, "scheme %q is not smb or file", u.Scheme)
	case u.Opaque != "":
		return "", invalid(field, "%q is not scheme://host/path", v)
	case u.User != nil:
		return "", invalid(field, "holds user information; user, domain and password have fields of their own")
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.Contains(v, "#"):
		return "", invalid(field, "holds a query or a fragment")
	case strings.Contains(strings.ToLower(v), "%2f") || strings.Contains(strings.ToLower(v), "%5c"):
		return "", invalid(field, "%q escapes a path separator", v)
	}
	if u.Scheme == "file" {
		if u.Host != "" {
			return "", invalid(field, "file URLs name a local directory: file:///dir")
		}
		if !path.IsAbs(u.Path) || path.Clean(u.Path) != u.Path {
			return "", invalid(field, "path %q is not absolute and clean", u.Path)
		}
		return u.Scheme, nil
	}
	host := u.Hostname()
	if host == "" {
		return "", invalid(field, "no host")
	}
	for _, r := range host {
		if r <= ' ' || r > '~' || strings.ContainsRune(`/\%@`, r) {
			return "", invalid(field, "host %q holds %q", host, r)
		}
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 {
			return "", invalid(field, "port %q is not 1-65535", p)
		}
	}
	if !strings.HasPrefix(u.Path, "/") || len(u.Path) < 2 {
		return "", invalid(field, "no share: smb://host/share[/dir...]")
	}
	if err := checkRelPath(field, strings.TrimSuffix(u.Path[1:], "/"), false); err != nil {
		return "", err
	}
	return u.Scheme, nil
}

// checkChars accepts 0 to max bytes, each in allowed.
func checkChars(field, v string, max int, allowed string) error {
	if len(v) > max {
		return invalid(field, "longer than %d bytes", max)
	}
	for i := 0; i < len(v); i++ {
		if !strings.ContainsRune(allowed, rune(v[i])) {
			return invalid(field, "%q holds %q; allowed are %s", v, v[i], allowed)
		}
	}
	return nil
}
