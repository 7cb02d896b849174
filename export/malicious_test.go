package export

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// maliciousOVF lists every descriptor in testdata/malicious with the
// sentinel it must be refused with and a part of the message.
var maliciousOVF = map[string]struct {
	want error
	msg  string
}{
	"traversal.ovf":                 {ErrUnsafeName, `"../../etc/passwd": contains ".." (path traversal)`},
	"absolute.ovf":                  {ErrUnsafeName, `"/etc/passwd": an absolute path`},
	"backslash.ovf":                 {ErrUnsafeName, `path separator`},
	"url.ovf":                       {ErrUnsafeName, `"http://evil.example/root.qcow2": a URL`},
	"drive-letter.ovf":              {ErrUnsafeName, `Windows drive letter`},
	"tab-in-name.ovf":               {ErrUnsafeName, `non-printing character U+0009`},
	"long-name.ovf":                 {ErrUnsafeName, `longer than 255 bytes`},
	"duplicate-href.ovf":            {ErrUnsafeName, `"EVIL-ROOT.qcow2": same name as "evil-root.qcow2"`},
	"billion-laughs.ovf":            {ErrEntity, `<!DOCTYPE …>`},
	"external-entity.ovf":           {ErrEntity, `<!DOCTYPE …>`},
	"entity-reference.ovf":          {ErrEntity, `invalid character entity &xxe;`},
	"capacity-1eib.ovf":             {ErrTooLarge, `capacity 1152921504606846976 bytes`},
	"capacity-units-overflow.ovf":   {ErrTooLarge, `does not fit in 64 bits`},
	"capacity-zero.ovf":             {ErrTooLarge, `capacity 0 bytes`},
	"capacity-not-a-number.ovf":     {ErrMalformed, `ovf:capacity "${disk.size}": not an integer`},
	"negative-size.ovf":             {ErrTooLarge, `ovf:size -1: negative size`},
	"file-larger-than-capacity.ovf": {ErrTooLarge, `more than twice the capacity`},
	"unknown-fileref.ovf":           {ErrMalformed, `ovf:fileRef "file9" names no References/File`},
	"orphan-file.ovf":               {ErrMalformed, `"stowaway.bin" (file2) is used by no disk`},
	"format-sparse-vmdk.ovf":        {ErrFormat, `"http://www.vmware.com/interfaces/specifications/vmdk.html#sparse"`},
	"format-raw.ovf":                {ErrFormat, `format "raw"`},
	"compressed.ovf":                {ErrFormat, `compression "gzip"`},
	"chunked.ovf":                   {ErrFormat, `ovf:chunkSize`},
	"multicast-mac.ovf":             {ErrMalformed, `"01:00:5e:00:00:fb": multicast`},
	"eui64-mac.ovf":                 {ErrMalformed, `not a 6-byte MAC`},
	"cpus-zero.ovf":                 {ErrTooLarge, `0 virtual CPUs`},
	"cpus-5000.ovf":                 {ErrTooLarge, `5000 virtual CPUs`},
	"memory-32tib.ovf":              {ErrTooLarge, `memory of 35184372088832 bytes`},
	"memory-bad-units.ovf":          {ErrMalformed, `rasd:AllocationUnits "furlongs"`},
	"not-ovf.ovf":                   {ErrMalformed, `{}html is not an OVF 1.0 Envelope`},
	"collection.ovf":                {ErrMalformed, `VirtualSystemCollection`},
	"unattached-disk.ovf":           {ErrMalformed, `"vol-root" is attached by no disk item`},
	"parent-not-controller.ovf":     {ErrMalformed, `rasd:Parent "1" is not a disk controller`},
	"duplicate-instanceid.ovf":      {ErrMalformed, `duplicate rasd:InstanceID`},
}

func TestMaliciousDescriptors(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "malicious", "*.ovf"))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, path := range files {
		name := filepath.Base(path)
		seen[name] = true
		tc, ok := maliciousOVF[name]
		if !ok {
			t.Errorf("%s has no expectation in maliciousOVF", name)
			continue
		}
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		d, err := ParseDescriptor(bytes.NewReader(data), Limits{})
		if !errors.Is(err, tc.want) || !strings.Contains(fmtErr(err), tc.msg) {
			t.Errorf("%s: got %v (%+v), want %v containing %s", name, err, d, tc.want, tc.msg)
		}
	}
	for name := range maliciousOVF {
		if !seen[name] {
			t.Errorf("maliciousOVF names %s, which is not in testdata/malicious", name)
		}
	}
	// The corpus is built on a valid descriptor: what is refused is the
	// one change each file makes.
	data, err := os.ReadFile(filepath.Join("testdata", "minimal.ovf"))
	if err != nil {
		t.Fatal(err)
	}
	parseDescriptor(t, data)
}

// TestMaliciousGeneratedDescriptors covers the attacks too large to keep
// as files: they are built from testdata/minimal.ovf.
func TestMaliciousGeneratedDescriptors(t *testing.T) {
	base, err := os.ReadFile(filepath.Join("testdata", "minimal.ovf"))
	if err != nil {
		t.Fatal(err)
	}
	insert := func(after, what string) []byte {
		i := bytes.Index(base, []byte(after))
		if i < 0 {
			t.Fatalf("minimal.ovf lacks %q", after)
		}
		i += len(after)
		return append(append(append([]byte{}, base[:i]...), what...), base[i:]...)
	}
	var disks, files, nics strings.Builder
	for i := 0; i < 10000; i++ {
		fmt.Fprintf(&disks, `<Disk ovf:capacity="1" ovf:diskId="d%d" ovf:fileRef="f%d" ovf:format="%s"/>`+"\n", i, i, FormatURIQCOW2)
	}
	for i := 0; i < 200; i++ {
		fmt.Fprintf(&files, `<File ovf:href="f%d.qcow2" ovf:id="f%d"/>`+"\n", i, i)
	}
	for i := 0; i < 33; i++ {
		fmt.Fprintf(&nics, "<Item><rasd:ElementName>n%d</rasd:ElementName><rasd:InstanceID>%d</rasd:InstanceID><rasd:ResourceType>10</rasd:ResourceType></Item>\n", i, 100+i)
	}
	deep := strings.Repeat("<x>", 100) + strings.Repeat("</x>", 100)
	for _, tc := range []struct {
		name string
		data []byte
		lim  Limits
		want error
		msg  string
	}{
		{"10,000 disks", insert("<Info>Virtual disk information</Info>\n", disks.String()), Limits{}, ErrTooLarge, "more than 64 DiskSection/Disk elements"},
		{"200 files", insert("<References>\n", files.String()), Limits{}, ErrTooLarge, "more than 128 References/File elements"},
		{"33 NICs", insert("<Info>Virtual hardware requirements</Info>\n", nics.String()), Limits{}, ErrTooLarge, "more than 32 NICs"},
		{"deep nesting", insert("<Name>evil</Name>\n", deep), Limits{}, ErrTooLarge, "nested deeper than 64"},
		{"over 4 MiB", append(bytes.Clone(base), bytes.Repeat([]byte(" "), 4<<20)...), Limits{}, ErrTooLarge, "larger than 4194304 bytes"},
		{"over a lower limit", base, Limits{MaxDescriptorBytes: 1000}, ErrTooLarge, "larger than 1000 bytes"},
		{"disk over a lower limit", base, Limits{MaxDiskBytes: 1 << 20}, ErrTooLarge, "capacity 1073741824 bytes, want 1 to 1048576"},
		{"config over 1 MiB", insert("<Name>evil</Name>\n", `<twinsnap:SnapshotSection xmlns:twinsnap="`+NamespaceTwinsnap+`"><twinsnap:Snapshot><twinsnap:Config encoding="base64">`+
			strings.Repeat("QUFB", (MaxConfigBytes/3)+1)+`</twinsnap:Config></twinsnap:Snapshot></twinsnap:SnapshotSection>`), Limits{}, ErrTooLarge, "twinsnap:Config: 1048578 bytes, more than 1048576"},
	} {
		_, err := ParseDescriptor(bytes.NewReader(tc.data), tc.lim)
		if !errors.Is(err, tc.want) || !strings.Contains(fmtErr(err), tc.msg) {
			t.Errorf("%s: got %v, want %v containing %q", tc.name, err, tc.want, tc.msg)
		}
	}
}

// maliciousMF lists every manifest in testdata/malicious with the
// sentinel ParseManifest must refuse it with and a part of the message;
// an empty want means it parses and is used for Check.
var maliciousMF = map[string]struct {
	want error
	msg  string
}{
	"wrong-checksum.mf":        {nil, ""},
	"traversal.mf":             {ErrUnsafeName, `line 2: unsafe file name "../../etc/passwd"`},
	"absolute.mf":              {ErrUnsafeName, `"/etc/shadow": an absolute path`},
	"md5.mf":                   {ErrMalformed, `algorithm "MD5", want SHA256 or SHA1`},
	"short-hex.mf":             {ErrMalformed, `40 hex digits, want 64 for SHA256`},
	"sha1-length-as-sha256.mf": {ErrMalformed, `40 hex digits, want 64 for SHA256`},
	"not-hex.mf":               {ErrMalformed, `not hexadecimal`},
	"no-space.mf":              {ErrMalformed, `want "SHA256(name)= hex"`},
	"blank-line.mf":            {ErrMalformed, `line 2: malformed: "": empty line`},
	"duplicate.mf":             {ErrUnsafeName, `"EVIL.OVF": same name as "evil.ovf"`},
	"trailing-garbage.mf":      {ErrMalformed, `73 hex digits`},
	"no-parenthesis.mf":        {ErrMalformed, `want "SHA256(name)= hex"`},
}

func TestMaliciousManifests(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "malicious", "*.mf"))
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	if len(files) != len(maliciousMF) {
		t.Errorf("%d manifests in testdata/malicious, %d in maliciousMF", len(files), len(maliciousMF))
	}
	for _, path := range files {
		name := filepath.Base(path)
		tc, ok := maliciousMF[name]
		if !ok {
			t.Errorf("%s has no expectation in maliciousMF", name)
			continue
		}
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		m, err := ParseManifest(bytes.NewReader(data), Limits{})
		if tc.want == nil {
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
			continue
		}
		if !errors.Is(err, tc.want) || !strings.Contains(fmtErr(err), tc.msg) {
			t.Errorf("%s: got %v (%v), want %v containing %s", name, err, m, tc.want, tc.msg)
		}
	}

	// A file whose content does not match its line.
	data, err := os.ReadFile(filepath.Join("testdata", "malicious", "wrong-checksum.mf"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := ParseManifest(bytes.NewReader(data), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	e, _ := m.Lookup("evil-root.qcow2")
	h := e.NewHash()
	h.Write([]byte("not empty"))
	sum := h.Sum(nil)
	err = m.Check("evil-root.qcow2", sum)
	if !errors.Is(err, ErrChecksum) || !strings.Contains(fmtErr(err), `"evil-root.qcow2": SHA256 is `+fmt.Sprintf("%x", sum)+`, manifest says e3b0c442`) {
		t.Errorf("Check of a wrong sum: %v", err)
	}
	if err := m.Check("stowaway.bin", sum); !errors.Is(err, ErrChecksum) || !strings.Contains(fmtErr(err), `"stowaway.bin" is not listed`) {
		t.Errorf("Check of an unlisted file: %v", err)
	}

	// Too many lines, too many bytes.
	var many strings.Builder
	for i := 0; i < 129; i++ {
		fmt.Fprintf(&many, "SHA256(f%d)= %s\n", i, strings.Repeat("00", 32))
	}
	if _, err := ParseManifest(strings.NewReader(many.String()), Limits{}); !errors.Is(err, ErrTooLarge) || !strings.Contains(fmtErr(err), "more than 128 lines") {
		t.Errorf("129 lines: %v", err)
	}
	big := strings.Repeat("SHA256(f)= "+strings.Repeat("00", 32)+"\n", (1<<20)/76+1)
	if _, err := ParseManifest(strings.NewReader(big), Limits{MaxFiles: 1 << 20}); !errors.Is(err, ErrTooLarge) || !strings.Contains(fmtErr(err), "larger than 1048576 bytes") {
		t.Errorf("over 1 MiB: %v", err)
	}
}
