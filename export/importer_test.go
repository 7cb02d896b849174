package export_test

import (
	"bytes"
	"crypto/sha1" //nolint:gosec // the manifest of a foreign package names SHA-1
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/export"
	"github.com/twinsnap/twinsnap/export/local"
	"github.com/twinsnap/twinsnap/internal/testenv"
)

// tampered is a package on a local transport, to be changed by a test.
type tampered struct {
	t    *testing.T
	tr   *local.Transport
	root string
	dir  string // the package's directory
	name string
	spec export.ExportSpec
}

// newPackage exports vm as a package named "evil" to a fresh directory.
func newPackage(t *testing.T, vm *testVM, format string) *tampered {
	t.Helper()
	tr, root := newLocal(t)
	spec := vm.spec("evil", format, false)
	if _, err := export.Export(testCtx(t, time.Minute), tr, spec, export.ExportOptions{}); err != nil {
		t.Fatalf("Export: %v", err)
	}
	return &tampered{t: t, tr: tr, root: root, dir: filepath.Join(root, "evil"), name: "evil", spec: spec}
}

func (p *tampered) file(name string) string { return filepath.Join(p.dir, name) }

func (p *tampered) disk(i int) string {
	return p.file(export.DiskName(p.name, p.spec.Volumes[i].Name, p.spec.Format))
}

// reseal rewrites the descriptor with the files' sizes as they are now
// and the manifest with their sums: a package that lies only where the
// test made it lie.
func (p *tampered) reseal() {
	p.t.Helper()
	ovf := p.file(p.name + ".ovf")
	f, err := os.Open(ovf)
	if err != nil {
		p.t.Fatal(err)
	}
	d, err := export.ParseDescriptor(f, export.Limits{})
	f.Close()
	if err != nil {
		p.t.Fatal(err)
	}
	for i := range d.Disks {
		fi, err := os.Stat(p.file(d.Disks[i].File))
		if err != nil {
			p.t.Fatal(err)
		}
		d.Disks[i].FileSize = fi.Size()
	}
	var b bytes.Buffer
	if err := export.WriteDescriptor(&b, d); err != nil {
		p.t.Fatal(err)
	}
	if err := os.WriteFile(ovf, b.Bytes(), 0o644); err != nil {
		p.t.Fatal(err)
	}
	entries := []export.ManifestEntry{{Name: p.name + ".ovf", Sum: sum(p.t, ovf)}}
	for _, k := range d.Disks {
		entries = append(entries, export.ManifestEntry{Name: k.File, Sum: sum(p.t, p.file(k.File))})
	}
	b.Reset()
	if err := export.WriteManifest(&b, entries); err != nil {
		p.t.Fatal(err)
	}
	if err := os.WriteFile(p.file(p.name+".mf"), b.Bytes(), 0o644); err != nil {
		p.t.Fatal(err)
	}
}

func sum(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(data)
	return s[:]
}

// editManifest applies edit to the manifest's lines.
func (p *tampered) editManifest(edit func([]string) []string) {
	p.t.Helper()
	mf := p.file(p.name + ".mf")
	data, err := os.ReadFile(mf)
	if err != nil {
		p.t.Fatal(err)
	}
	lines := edit(strings.Split(strings.TrimSuffix(string(data), "\n"), "\n"))
	if err := os.WriteFile(mf, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		p.t.Fatal(err)
	}
}

// importRefused imports path from the package's transport into a fresh
// directory, and checks that the import fails and leaves the directory
// empty.
func importRefused(t *testing.T, tr export.Transport, path string) error {
	t.Helper()
	dir := t.TempDir()
	imp, err := export.Import(testCtx(t, time.Minute), tr, path, export.ImportOptions{Dir: dir})
	if err == nil {
		t.Fatalf("Import(%s) accepted the package: %+v", path, imp)
	}
	left, rerr := os.ReadDir(dir)
	if rerr != nil || len(left) != 0 {
		t.Errorf("the refused import left %v in its directory (%v)", left, rerr)
	}
	return err
}

// wantRefusal checks the sentinel and the message of a refusal.
func wantRefusal(t *testing.T, err, want error, msg ...string) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Errorf("refused with %v, want %v", err, want)
	}
	for _, m := range msg {
		if !strings.Contains(err.Error(), m) {
			t.Errorf("refusal %q does not say %q", err, m)
		}
	}
}

func TestImportRefusesTamperedPackages(t *testing.T) {
	needQemu(t)
	vm := newVM(t, false)
	const root = "evil-root.qcow2"
	for _, tc := range []struct {
		name   string
		format string
		tamper func(p *tampered)
		want   error
		msg    []string
	}{
		{"manifest lies about a disk", export.FormatQCOW2, func(p *tampered) {
			p.editManifest(func(l []string) []string {
				for i := range l {
					if strings.Contains(l[i], root) {
						l[i] = "SHA256(" + root + ")= " + strings.Repeat("ab", 32)
					}
				}
				return l
			})
		}, export.ErrChecksum, []string{root, "abababab"}},
		{"truncated disk", export.FormatQCOW2, func(p *tampered) {
			fi, _ := os.Stat(p.disk(0))
			if err := os.Truncate(p.disk(0), fi.Size()/2); err != nil {
				t.Fatal(err)
			}
		}, export.ErrTruncated, []string{root, "the descriptor declares"}},
		{"disk longer than declared", export.FormatQCOW2, func(p *tampered) {
			f, _ := os.OpenFile(p.disk(0), os.O_APPEND|os.O_WRONLY, 0)
			_, _ = f.Write([]byte("more"))
			f.Close()
		}, export.ErrTooLarge, []string{root, "longer than"}},
		{"backing file /etc/passwd", export.FormatQCOW2, func(p *tampered) {
			_ = os.Remove(p.disk(0))
			tool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "/etc/passwd", "-F", "raw", p.disk(0), fmt.Sprint(vm.views[0].Size()))
			p.reseal()
		}, export.ErrFormat, []string{root, `backing file "/etc/passwd"`}},
		{"external data file", export.FormatQCOW2, func(p *tampered) {
			_ = os.Remove(p.disk(0))
			tool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "data_file="+filepath.Join(t.TempDir(), "data"), p.disk(0), fmt.Sprint(vm.views[0].Size()))
			p.reseal()
		}, export.ErrFormat, []string{root, "external data file"}},
		{"virtual size differs", export.FormatQCOW2, func(p *tampered) {
			_ = os.Remove(p.disk(0))
			tool(t, "qemu-img", "create", "-q", "-f", "qcow2", p.disk(0), "32M")
			p.reseal()
		}, export.ErrMalformed, []string{root, "virtual size is 33554432 bytes", "capacity 50331648"}},
		{"qcow2 that is not qcow2", export.FormatQCOW2, func(p *tampered) {
			randomFile(t, p.dir, root, 1<<20)
			p.reseal()
		}, export.ErrFormat, []string{root, "not a qcow2 image"}},
		{"garbage vmdk", export.FormatVMDK, func(p *tampered) {
			randomFile(t, p.dir, "evil-root.vmdk", 1<<20)
			p.reseal()
		}, export.ErrFormat, []string{"evil-root.vmdk", "not a streamOptimized VMDK"}},
		{"vmdk of another capacity", export.FormatVMDK, func(p *tampered) {
			small := filepath.Join(t.TempDir(), "small.qcow2")
			tool(t, "qemu-img", "create", "-q", "-f", "qcow2", small, "16M")
			tool(t, "qemu-io", "-f", "qcow2", "-c", "write -q -P 0x42 0 1M", small)
			_ = os.Remove(p.disk(0))
			tool(t, "qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized", small, p.disk(0))
			p.reseal()
		}, export.ErrMalformed, []string{"evil-root.vmdk", "capacity is 16777216 bytes"}},
		{"disk missing from the manifest", export.FormatQCOW2, func(p *tampered) {
			p.editManifest(func(l []string) []string {
				var out []string
				for _, s := range l {
					if !strings.Contains(s, root) {
						out = append(out, s)
					}
				}
				return out
			})
		}, export.ErrChecksum, []string{"does not list", root}},
		{"descriptor missing from the manifest", export.FormatQCOW2, func(p *tampered) {
			p.editManifest(func(l []string) []string { return l[1:] })
		}, export.ErrChecksum, []string{"does not list", "evil.ovf"}},
		{"descriptor changed after the manifest", export.FormatQCOW2, func(p *tampered) {
			ovf := p.file("evil.ovf")
			data, _ := os.ReadFile(ovf)
			data = bytes.Replace(data, []byte("<vssd:VirtualSystemType>qemu<"), []byte("<vssd:VirtualSystemType>vmx-14<"), 1)
			if err := os.WriteFile(ovf, data, 0o644); err != nil {
				t.Fatal(err)
			}
		}, export.ErrChecksum, []string{"evil.ovf"}},
		{"no manifest", export.FormatQCOW2, func(p *tampered) {
			_ = os.Remove(p.file("evil.mf"))
		}, export.ErrChecksum, []string{"no manifest", "evil.mf"}},
		{"disk file missing", export.FormatQCOW2, func(p *tampered) {
			_ = os.Remove(p.disk(1))
		}, export.ErrMalformed, []string{"evil-data.qcow2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPackage(t, vm, tc.format)
			tc.tamper(p)
			err := importRefused(t, p.tr, export.PackagePath("", "evil", false))
			t.Logf("refused: %v", err)
			wantRefusal(t, err, tc.want, tc.msg...)
		})
	}
}

// writeOVA packs the files of a directory package, in the given order,
// into an archive at path.
func writeOVA(t *testing.T, dir string, names []string, path string) {
	t.Helper()
	var b bytes.Buffer
	w := export.NewOVAWriter(&b)
	for _, n := range names {
		data, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		fw, err := w.AddFile(n, int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := fw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestImportRefusesTamperedArchives(t *testing.T) {
	needQemu(t)
	vm := newVM(t, false)
	p := newPackage(t, vm, export.FormatQCOW2)
	members := []string{"evil.ovf", "evil.mf", "evil-root.qcow2", "evil-data.qcow2"}
	good := filepath.Join(p.root, "good.ova")
	writeOVA(t, p.dir, members, good)
	goodData, _ := os.ReadFile(good)
	if imp, err := export.Import(testCtx(t, time.Minute), p.tr, "good.ova", export.ImportOptions{Dir: t.TempDir()}); err != nil {
		t.Fatalf("the untampered archive: %v", err)
	} else {
		vm.checkImported(t, imp)
	}

	t.Run("truncated", func(t *testing.T) {
		if err := os.WriteFile(filepath.Join(p.root, "cut.ova"), goodData[:len(goodData)*2/3], 0o644); err != nil {
			t.Fatal(err)
		}
		err := importRefused(t, p.tr, "cut.ova")
		wantRefusal(t, err, export.ErrTruncated, "evil-data.qcow2")
	})
	t.Run("manifest lies", func(t *testing.T) {
		p.editManifest(func(l []string) []string {
			l[2] = "SHA256(evil-data.qcow2)= " + strings.Repeat("0", 64)
			return l
		})
		writeOVA(t, p.dir, members, filepath.Join(p.root, "lies.ova"))
		err := importRefused(t, p.tr, "lies.ova")
		wantRefusal(t, err, export.ErrChecksum, "evil-data.qcow2")
	})
	t.Run("no manifest", func(t *testing.T) {
		writeOVA(t, p.dir, []string{"evil.ovf", "evil-root.qcow2", "evil-data.qcow2"}, filepath.Join(p.root, "nomf.ova"))
		err := importRefused(t, p.tr, "nomf.ova")
		wantRefusal(t, err, export.ErrChecksum, "no manifest")
	})
	t.Run("member missing", func(t *testing.T) {
		p.reseal()
		writeOVA(t, p.dir, members[:3], filepath.Join(p.root, "short.ova"))
		err := importRefused(t, p.tr, "short.ova")
		wantRefusal(t, err, export.ErrMalformed, `no member "evil-data.qcow2"`)
	})
	t.Run("unfinished", func(t *testing.T) {
		if err := os.WriteFile(filepath.Join(p.root, "x.ova.part"), goodData, 0o644); err != nil {
			t.Fatal(err)
		}
		wantRefusal(t, importRefused(t, p.tr, "x.ova.part"), export.ErrMalformed, "still being written")
	})
}

// TestImportRefusesMaliciousCorpus imports descriptors and archives of
// export/testdata/malicious as packages: each is refused with the
// parser's sentinel before anything is written.
func TestImportRefusesMaliciousCorpus(t *testing.T) {
	tr, root := newLocal(t)
	corpus := filepath.Join("testdata", "malicious")
	for name, want := range map[string]error{
		"traversal.ovf":             export.ErrUnsafeName,
		"url.ovf":                   export.ErrUnsafeName,
		"billion-laughs.ovf":        export.ErrEntity,
		"external-entity.ovf":       export.ErrEntity,
		"capacity-1eib.ovf":         export.ErrTooLarge,
		"file-larger-than-capacity": export.ErrTooLarge,
		"format-raw.ovf":            export.ErrFormat,
		"compressed.ovf":            export.ErrFormat,
		"unknown-fileref.ovf":       export.ErrMalformed,
		"not-ovf.ovf":               export.ErrMalformed,
		"symlink-member.ova":        export.ErrUnsafeName,
		"hard-link-member.ova":      export.ErrUnsafeName,
		"device-member.ova":         export.ErrUnsafeName,
		"dotdot-member.ova":         export.ErrUnsafeName,
		"absolute-member.ova":       export.ErrUnsafeName,
		"pax-rename-to-a-path.ova":  export.ErrUnsafeName,
		"member-of-1-PiB.ova":       export.ErrTooLarge,
		"descriptor-over-4-MiB.ova": export.ErrTooLarge,
		"descriptor-not-first.ova":  export.ErrMalformed,
		"sparse-member.ova":         export.ErrMalformed,
		"garbage.ova":               export.ErrMalformed,
		"empty-archive.ova":         export.ErrMalformed,
		"truncated-header.ova":      export.ErrTruncated,
	} {
		t.Run(name, func(t *testing.T) {
			if !strings.Contains(name, ".") {
				name += ".ovf"
			}
			data, err := os.ReadFile(filepath.Join(corpus, name))
			if err != nil {
				t.Fatal(err)
			}
			dir := strings.TrimSuffix(name, filepath.Ext(name))
			if err := os.MkdirAll(filepath.Join(root, dir), 0o755); err != nil {
				t.Fatal(err)
			}
			pkg := "P" + filepath.Ext(name)
			if err := os.WriteFile(filepath.Join(root, dir, pkg), data, 0o644); err != nil {
				t.Fatal(err)
			}
			// A manifest that lists the descriptor, so that only the
			// descriptor's own fault can refuse it.
			s := sha256.Sum256(data)
			mf := fmt.Sprintf("SHA256(%s)= %x\n", pkg, s)
			if err := os.WriteFile(filepath.Join(root, dir, "P.mf"), []byte(mf), 0o644); err != nil {
				t.Fatal(err)
			}
			err = importRefused(t, tr, dir+"/"+pkg)
			t.Logf("refused: %v", err)
			wantRefusal(t, err, want)
		})
	}
}

// TestImportForeignPackage imports a package in the manner of other
// tools: no twinsnap section, a VMDK written by qemu-img (grain directory
// before the grains) and a SHA-1 manifest.
func TestImportForeignPackage(t *testing.T) {
	needQemu(t)
	dir := t.TempDir()
	top := chain(t, filepath.Join(dir, "src"), 32)
	tr, root := newLocal(t)
	pkg := filepath.Join(root, "appliance")
	if err := os.MkdirAll(pkg, 0o755); err != nil {
		t.Fatal(err)
	}
	vmdk := filepath.Join(pkg, "appliance-disk1.vmdk")
	tool(t, "qemu-img", "convert", "-O", "vmdk", "-o", "subformat=streamOptimized", top, vmdk)
	fi, _ := os.Stat(vmdk)
	d := &export.Descriptor{Name: "appliance", CPUs: 1, MemoryMiB: 1024, SystemType: "vmx-14",
		Disks: []export.Disk{{ID: "vmdisk1", Name: "disk1", File: "appliance-disk1.vmdk", Format: export.FormatVMDK,
			CapacityBytes: 32 << 20, FileSize: fi.Size(), Controller: export.ControllerSCSI, Boot: true}},
		NICs: []export.NIC{{Name: "Ethernet 1", Model: "VmxNet3", Network: "VM Network"}}}
	var b bytes.Buffer
	if err := export.WriteDescriptor(&b, d); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pkg, "appliance.ovf"), b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	sha1hex := func(data []byte) string { s := sha1.Sum(data); return strings.ToUpper(hex.EncodeToString(s[:])) } //nolint:gosec // see the import
	disk, _ := os.ReadFile(vmdk)
	mf := fmt.Sprintf("SHA1(appliance.ovf)= %s\r\nSHA1(appliance-disk1.vmdk)= %s\r\n", sha1hex(b.Bytes()), sha1hex(disk))
	if err := os.WriteFile(filepath.Join(pkg, "appliance.mf"), []byte(mf), 0o644); err != nil {
		t.Fatal(err)
	}
	var progress []export.Progress
	imp, err := export.Import(testCtx(t, time.Minute), tr, "appliance/appliance.ovf", export.ImportOptions{Dir: t.TempDir(),
		OnProgress: func(p export.Progress) error { progress = append(progress, p); return nil }})
	if err != nil {
		t.Fatalf("Import: %v", err)
	}
	if !imp.Foreign || len(imp.Disks) != 1 {
		t.Fatalf("imported %+v, want one foreign disk", imp)
	}
	same, out, err := testenv.CompareImages(testCtx(t, time.Minute), top, imp.Disks[0].Path)
	if err != nil || !same {
		t.Errorf("imported disk differs from the source: %v %s", err, out)
	}
	if last := progress[len(progress)-1]; last.Offset != last.Total || last.Total == 0 {
		t.Errorf("last progress %+v", last)
	}
}

func TestImportProgressCallbackStops(t *testing.T) {
	needQemu(t)
	vm := newVM(t, false)
	p := newPackage(t, vm, export.FormatQCOW2)
	stop := errors.New("operator cancelled")
	dir := t.TempDir()
	_, err := export.Import(testCtx(t, time.Minute), p.tr, "evil/evil.ovf", export.ImportOptions{Dir: dir,
		OnProgress: func(export.Progress) error { return stop }})
	if !errors.Is(err, stop) {
		t.Fatalf("import whose callback fails: %v", err)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("left %v", left)
	}
}
