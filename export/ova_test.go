package export

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// member is a name and content of an OVA member in tests.
type member struct {
	name string
	data []byte
}

func sampleMembers() []member {
	return []member{
		{"web01.ovf", []byte("<Envelope/>\n")},
		{"web01.mf", []byte("SHA256(web01.ovf)= 00\n")},
		{"web01-root.qcow2", bytes.Repeat([]byte{1}, 1000)},
		{"web01-empty.qcow2", nil},
		{"web01-" + strings.Repeat("long", 30) + ".vmdk", bytes.Repeat([]byte{2}, 512)},
		{"web01-ünïcode.vmdk", []byte("x")},
		{"web01-uefi-vars.fd", bytes.Repeat([]byte{3}, 1025)},
	}
}

func writeOVA(t testing.TB, members []member) []byte {
	t.Helper()
	var b bytes.Buffer
	w := NewOVAWriter(&b)
	for _, m := range members {
		fw, err := w.AddFile(m.name, int64(len(m.data)))
		if err != nil {
			t.Fatalf("AddFile(%s): %v", m.name, err)
		}
		if _, err := fw.Write(m.data); err != nil {
			t.Fatalf("write %s: %v", m.name, err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return b.Bytes()
}

func readOVA(data []byte, lim Limits) ([]member, error) {
	r := NewOVAReader(bytes.NewReader(data), lim)
	var out []member
	for {
		name, size, err := r.Next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		b, err := io.ReadAll(r)
		if err != nil {
			return out, err
		}
		if int64(len(b)) != size {
			return out, fmt.Errorf("member %s: read %d of %d bytes", name, len(b), size)
		}
		out = append(out, member{name, b})
	}
}

func TestOVARoundTripAndLayout(t *testing.T) {
	members := sampleMembers()
	data := writeOVA(t, members)
	if again := writeOVA(t, members); !bytes.Equal(data, again) {
		t.Fatal("two OVAs of the same members differ")
	}

	got, err := readOVA(data, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(members) {
		t.Fatalf("read %d members, want %d", len(got), len(members))
	}
	for i := range members {
		if got[i].name != members[i].name || !bytes.Equal(got[i].data, members[i].data) {
			t.Fatalf("member %d: got %q (%d bytes), want %q (%d bytes)", i, got[i].name, len(got[i].data), members[i].name, len(members[i].data))
		}
	}

	// OVALayout predicts every data offset and the total size.
	names, sizes := make([]string, len(members)), make([]int64, len(members))
	for i, m := range members {
		names[i], sizes[i] = m.name, int64(len(m.data))
	}
	offsets, total := OVALayout(names, sizes)
	if total != int64(len(data)) {
		t.Fatalf("OVALayout total %d, archive is %d bytes", total, len(data))
	}
	for i, m := range members {
		if !bytes.Equal(data[offsets[i]:offsets[i]+sizes[i]], m.data) {
			t.Fatalf("member %s is not at offset %d", m.name, offsets[i])
		}
	}

	// WriteOVAFrame plus the data at the offsets, written out of order,
	// gives the same bytes as the stream.
	buf := &writerAt{}
	if err := WriteOVAFrame(buf, names, sizes); err != nil {
		t.Fatal(err)
	}
	for i := len(members) - 1; i >= 0; i-- {
		if _, err := buf.WriteAt(members[i].data, offsets[i]); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(buf.b, data) {
		t.Fatal("frame + data written at the offsets differs from the stream")
	}

	// Other tar readers agree.
	if tarBin, err := exec.LookPath("tar"); err == nil {
		path := filepath.Join(t.TempDir(), "web01.ova")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(tarBin, "-tvf", path).CombinedOutput()
		if err != nil {
			t.Fatalf("tar -tvf: %v\n%s", err, out)
		}
		for _, m := range members {
			if !strings.Contains(string(out), m.name) {
				t.Errorf("tar -tvf does not list %s:\n%s", m.name, out)
			}
		}
	}
}

// TestOVALayoutLarge checks the pax header of a member of 8 GiB or more,
// which ustar cannot describe, without writing its data.
func TestOVALayoutLarge(t *testing.T) {
	const big = 9 << 30
	names := []string{"vm.ovf", "vm.mf", "vm-big.vmdk", "vm-small.vmdk"}
	sizes := []int64{100, 50, big, 7}
	offsets, total := OVALayout(names, sizes)
	h, err := OVAHeader("vm-big.vmdk", big)
	if err != nil {
		t.Fatal(err)
	}
	if len(h) <= tarBlock {
		t.Fatalf("header of a 9 GiB member is %d bytes; want a pax header", len(h))
	}
	hdr, err := tar.NewReader(bytes.NewReader(h)).Next()
	if err != nil || hdr.Size != big || hdr.Name != "vm-big.vmdk" {
		t.Fatalf("the pax header reads as %+v, %v", hdr, err)
	}
	small, _ := OVAHeader("vm-small.vmdk", 7)
	if want := offsets[2] + big + int64(len(small)); offsets[3] != want {
		t.Fatalf("offset after the big member %d, want %d", offsets[3], want)
	}
	if want := offsets[3] + 512 + tarTrailer; total != want {
		t.Fatalf("total %d, want %d", total, want)
	}
	if testing.Short() {
		return
	}
	// Stream the 9 GiB member through OVAWriter to check the layout holds.
	cw := &countWriter{}
	w := NewOVAWriter(cw)
	zeros := make([]byte, 1<<20)
	for i, n := range names {
		fw, err := w.AddFile(n, sizes[i])
		if err != nil {
			t.Fatal(err)
		}
		if i == 2 {
			cw.marks = append(cw.marks, cw.n)
		}
		for left := sizes[i]; left > 0; {
			k := min(left, int64(len(zeros)))
			if _, err := fw.Write(zeros[:k]); err != nil {
				t.Fatal(err)
			}
			left -= k
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if cw.n != total || cw.marks[0] != offsets[2] {
		t.Fatalf("stream: %d bytes, big member at %d; layout: %d bytes, at %d", cw.n, cw.marks[0], total, offsets[2])
	}
}

func TestOVAWriterRefuses(t *testing.T) {
	w := NewOVAWriter(io.Discard)
	if _, err := w.AddFile("vm.mf", 1); !errors.Is(err, ErrMalformed) {
		t.Fatalf("manifest first: %v", err)
	}
	w = NewOVAWriter(io.Discard)
	fw, err := w.AddFile("vm.ovf", 10)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fw.Write(make([]byte, 11)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("writing past the size: %v", err)
	}
	if _, err := fw.Write(make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	if _, err := w.AddFile("vm-disk.vmdk", 1); !errors.Is(err, ErrTruncated) || !strings.Contains(fmtErr(err), `"vm.ovf"`) {
		t.Fatalf("next member before the last is complete: %v", err)
	}
	if _, err := fw.Write(make([]byte, 6)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		size int64
		want error
	}{
		{"../x.vmdk", 1, ErrUnsafeName},
		{"VM.OVF", 1, ErrMalformed},
		{"x.vmdk", -1, ErrTooLarge},
	} {
		if _, err := w.AddFile(tc.name, tc.size); !errors.Is(err, tc.want) {
			t.Errorf("AddFile(%q, %d): %v, want %v", tc.name, tc.size, err, tc.want)
		}
	}
	if _, err := w.AddFile("vm-empty.vmdk", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := w.AddFile("VM-EMPTY.vmdk", 0); !errors.Is(err, ErrUnsafeName) {
		t.Fatalf("duplicate up to case: %v", err)
	}
	if _, err := w.AddFile("late.mf", 0); !errors.Is(err, ErrMalformed) || !strings.Contains(fmtErr(err), "must follow the descriptor") {
		t.Fatalf("manifest third: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if offs, total := OVALayout([]string{"../x"}, []int64{1}); offs != nil || total != -1 {
		t.Fatalf("OVALayout of an unsafe name: %v, %d", offs, total)
	}
}

// tarHeader builds one raw ustar header block, for members archive/tar
// would refuse to write.
func tarHeader(name string, typ byte, size int64, link string) []byte {
	b := make([]byte, tarBlock)
	copy(b[0:100], name)
	copy(b[100:108], "0000644\x00")
	copy(b[108:116], "0000000\x00")
	copy(b[116:124], "0000000\x00")
	copy(b[124:136], fmt.Sprintf("%011o\x00", size))
	copy(b[136:148], fmt.Sprintf("%011o\x00", 946684800))
	b[156] = typ
	copy(b[157:257], link)
	copy(b[257:265], "ustar\x0000")
	copy(b[148:156], "        ")
	sum := 0
	for _, c := range b {
		sum += int(c)
	}
	copy(b[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return b
}

// rawMember is a header and its data padded to a whole block.
func rawMember(name string, typ byte, data []byte, link string) []byte {
	b := tarHeader(name, typ, int64(len(data)), link)
	b = append(b, data...)
	return append(b, make([]byte, padding(int64(len(data))))...)
}

func paxRecord(k, v string) string {
	n := len(k) + len(v) + 3
	for {
		s := fmt.Sprintf("%d %s=%s\n", n, k, v)
		if len(s) == n {
			return s
		}
		n = len(s)
	}
}

// maliciousOVAs builds the OVA corpus: each archive with the sentinel it
// must be refused with and part of the message.
func maliciousOVAs() []struct {
	name string
	data []byte
	want error
	msg  string
} {
	ovf := rawMember("vm.ovf", tar.TypeReg, []byte("<Envelope/>"), "")
	end := make([]byte, tarTrailer)
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	disk := rawMember("vm-disk.vmdk", tar.TypeReg, bytes.Repeat([]byte{7}, 2000), "")
	return []struct {
		name string
		data []byte
		want error
		msg  string
	}{
		{"dotdot member", cat(ovf, rawMember("../evil.vmdk", tar.TypeReg, []byte("x"), ""), end), ErrUnsafeName, `"../evil.vmdk": contains ".." (path traversal)`},
		{"absolute member", cat(ovf, rawMember("/etc/cron.d/evil", tar.TypeReg, []byte("x"), ""), end), ErrUnsafeName, `"/etc/cron.d/evil": an absolute path`},
		{"subdirectory member", cat(ovf, rawMember("disks/a.vmdk", tar.TypeReg, []byte("x"), ""), end), ErrUnsafeName, `path separator`},
		{"symlink member", cat(ovf, rawMember("vm-disk.vmdk", tar.TypeSymlink, nil, "/dev/sda"), end), ErrUnsafeName, `a symbolic link to "/dev/sda"`},
		{"hard link member", cat(ovf, rawMember("vm-disk.vmdk", tar.TypeLink, nil, "vm.ovf"), end), ErrUnsafeName, `a hard link to "vm.ovf"`},
		{"device member", cat(ovf, rawMember("vm-disk.vmdk", tar.TypeBlock, nil, ""), end), ErrUnsafeName, `a device`},
		{"directory member", cat(ovf, rawMember("disks", tar.TypeDir, nil, ""), end), ErrUnsafeName, `a directory`},
		{"pax rename to a path", cat(ovf, rawMember("PaxHeaders/x", tar.TypeXHeader, []byte(paxRecord("path", "../../root/.ssh/authorized_keys")), ""),
			rawMember("innocent.vmdk", tar.TypeReg, []byte("x"), ""), end), ErrUnsafeName, `"../../root/.ssh/authorized_keys"`},
		{"duplicate member", cat(ovf, disk, disk, end), ErrUnsafeName, `"vm-disk.vmdk": duplicate`},
		{"case duplicate member", cat(ovf, disk, rawMember("VM-DISK.vmdk", tar.TypeReg, nil, ""), end), ErrUnsafeName, `same name as "vm-disk.vmdk"`},
		{"truncated member", cat(ovf, disk)[:len(ovf)+tarBlock+1000], ErrTruncated, `member "vm-disk.vmdk": truncated: archive ends after 1000 of 2000 bytes`},
		{"truncated header", cat(ovf, disk)[:len(ovf)+100], ErrTruncated, `archive ends inside`},
		{"descriptor not first", cat(disk, ovf, end), ErrMalformed, `first member "vm-disk.vmdk" is not the .ovf descriptor`},
		{"descriptor over 4 MiB", cat(tarHeader("vm.ovf", tar.TypeReg, 5<<20, ""), end), ErrTooLarge, `member "vm.ovf": size or count outside its limits: 5242880 bytes, more than 4194304`},
		{"member of 1 PiB", cat(ovf, rawMember("PaxHeaders/x", tar.TypeXHeader, []byte(paxRecord("size", "1125899906842624")), ""),
			tarHeader("vm-disk.vmdk", tar.TypeReg, 0, ""), end), ErrTooLarge, `1125899906842624 bytes`},
		{"sparse member", cat(ovf, rawMember("PaxHeaders/x", tar.TypeXHeader, []byte(paxRecord("GNU.sparse.map", "0,2")+paxRecord("GNU.sparse.numblocks", "1")+paxRecord("GNU.sparse.size", "10")), ""),
			rawMember("s.vmdk", tar.TypeReg, []byte("0\n"), ""), end), ErrMalformed, `sparse`},
		{"empty archive", end, ErrMalformed, `no members`},
		{"garbage", bytes.Repeat([]byte("garbage!"), 200), ErrMalformed, `OVA`},
	}
}

// TestMaliciousOVAs reads each archive of the corpus, as built and as kept
// in testdata/malicious (run with -update to rewrite the files).
func TestMaliciousOVAs(t *testing.T) {
	for _, tc := range maliciousOVAs() {
		path := filepath.Join("testdata", "malicious", strings.ReplaceAll(tc.name, " ", "-")+".ova")
		if *update {
			if err := os.WriteFile(path, tc.data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		kept, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(kept, tc.data) {
			t.Errorf("%s differs from the archive the test builds (run with -update): %v", path, err)
		}
		got, err := readOVA(tc.data, Limits{})
		if !errors.Is(err, tc.want) || !strings.Contains(fmtErr(err), tc.msg) {
			t.Errorf("%s: got %v (members %d), want %v containing %s", tc.name, err, len(got), tc.want, tc.msg)
		}
	}
	// More members than MaxFiles.
	parts := [][]byte{rawMember("vm.ovf", tar.TypeReg, nil, "")}
	for i := 0; i < 5; i++ {
		parts = append(parts, rawMember(fmt.Sprintf("f%d", i), tar.TypeReg, nil, ""))
	}
	if _, err := readOVA(bytes.Join(parts, nil), Limits{MaxFiles: 4}); !errors.Is(err, ErrTooLarge) || !strings.Contains(fmtErr(err), "more than 4 members") {
		t.Errorf("too many members: %v", err)
	}
}

// writerAt is an in-memory io.WriterAt.
type writerAt struct{ b []byte }

func (w *writerAt) WriteAt(p []byte, off int64) (int, error) {
	if end := int(off) + len(p); end > len(w.b) {
		w.b = append(w.b, make([]byte, end-len(w.b))...)
	}
	return copy(w.b[off:], p), nil
}

// countWriter counts bytes and remembers marks.
type countWriter struct {
	n     int64
	marks []int64
}

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// TestOVAReaderReadsGNUTar reads archives made by GNU tar, as an operator
// might build one by hand, in its ustar, pax and default formats.
func TestOVAReaderReadsGNUTar(t *testing.T) {
	tarBin, err := exec.LookPath("tar")
	if err != nil {
		t.Skip("no tar")
	}
	dir := t.TempDir()
	files := []member{
		{"vm.ovf", []byte("<Envelope/>")},
		{"vm.mf", []byte("SHA256(vm.ovf)= 00\n")},
		{"vm-" + strings.Repeat("x", 120) + ".vmdk", bytes.Repeat([]byte{9}, 3000)},
	}
	args := []string{}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f.name), f.data, 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, f.name)
	}
	for _, format := range []string{"gnu", "pax", "ustar"} {
		out := filepath.Join(t.TempDir(), "vm.ova")
		cmd := exec.Command(tarBin, append([]string{"--format=" + format, "-C", dir, "-cf", out}, args...)...)
		if msg, err := cmd.CombinedOutput(); err != nil {
			if format == "ustar" { // ustar cannot hold the long name
				continue
			}
			t.Fatalf("tar --format=%s: %v\n%s", format, err, msg)
		}
		data, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		got, err := readOVA(data, Limits{})
		if err != nil || len(got) != len(files) {
			t.Fatalf("format %s: %d members, %v", format, len(got), err)
		}
		for i := range files {
			if got[i].name != files[i].name || !bytes.Equal(got[i].data, files[i].data) {
				t.Fatalf("format %s: member %d is %q", format, i, got[i].name)
			}
		}
	}
}
