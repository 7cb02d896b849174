package export

import (
	"errors"
	"strings"
	"testing"
)

func TestCheckName(t *testing.T) {
	for _, ok := range []string{
		"web01.ovf", "web01-root.qcow2", "Disk 1.vmdk", "ünïcode-disk.qcow2", "a(1)= b.vmdk",
		".hidden", strings.Repeat("a", MaxNameBytes), "console.log", "COM0.txt",
	} {
		if err := CheckName(ok); err != nil {
			t.Errorf("CheckName(%q) = %v, want nil", ok, err)
		}
	}
	for _, tc := range []struct{ name, msg string }{
		{"", "empty"},
		{".", "not a file name"},
		{"..", "not a file name"},
		{"../../etc/passwd", "path traversal"},
		{"a..b", "path traversal"},
		{"/etc/passwd", "absolute path"},
		{`\\server\share\x`, "absolute path"},
		{"dir/file", "path separator"},
		{`dir\file`, "path separator"},
		{"http://evil.example/x.vmdk", "URL"},
		{"file:///etc/passwd", "URL"},
		{"C:disk.vmdk", "drive letter"},
		{"disk.vmdk:stream", "stream separator"},
		{"disk\x00.vmdk", "NUL"},
		{"disk\n.vmdk", "non-printing"},
		{"disk\u202e.vmdk", "non-printing"},
		{"bad\xff.vmdk", "UTF-8"},
		{"what?.vmdk", "reserve"},
		{"disk.vmdk.", "ends with"},
		{"disk.vmdk ", "ends with"},
		{" disk.vmdk", "starts with a space"},
		{"CON", "device name"},
		{"nul.vmdk", "device name"},
		{"LPT3.qcow2", "device name"},
		{strings.Repeat("a", MaxNameBytes+1), "longer than 255"},
	} {
		err := CheckName(tc.name)
		if !errors.Is(err, ErrUnsafeName) || !strings.Contains(fmtErr(err), tc.msg) {
			t.Errorf("CheckName(%q) = %v, want ErrUnsafeName containing %q", tc.name, err, tc.msg)
		}
	}
}

func TestNameSetCaseInsensitive(t *testing.T) {
	s := nameSet{}
	if err := s.add("Disk.vmdk"); err != nil {
		t.Fatal(err)
	}
	for _, dup := range []string{"Disk.vmdk", "disk.VMDK"} {
		if err := s.add(dup); !errors.Is(err, ErrUnsafeName) {
			t.Errorf("add(%q) = %v, want ErrUnsafeName", dup, err)
		}
	}
}
