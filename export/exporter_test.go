package export_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/export"
	"github.com/twinsnap/twinsnap/export/local"
	"github.com/twinsnap/twinsnap/export/smb"
	"github.com/twinsnap/twinsnap/internal/testenv"
	"github.com/twinsnap/twinsnap/volumes"
)

// needQemu skips the test (fails it in CI) without the QEMU tools.
func needQemu(t testing.TB) {
	t.Helper()
	for _, bin := range []string{"qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(bin); err != nil {
			testenv.Need(t, bin, fmt.Errorf("%w: %v", testenv.ErrUnavailable, err))
		}
	}
}

func testCtx(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// tool runs a program and fails the test if it fails.
func tool(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// randomFile writes n random bytes to a new file in dir.
func randomFile(t testing.TB, dir, name string, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// chain builds a qcow2 chain of size MiB in dir: a base with data
// (random and patterned) and an incremental overlay that overwrites some
// of it, zeroes some and adds data beyond it. It returns the overlay.
func chain(t testing.TB, dir string, sizeMiB int) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	base, top := filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "top.qcow2")
	r1 := randomFile(t, dir, "r1", 3<<20)
	r2 := randomFile(t, dir, "r2", 2<<20)
	tool(t, "qemu-img", "create", "-q", "-f", "qcow2", base, fmt.Sprintf("%dM", sizeMiB))
	tool(t, "qemu-io", "-f", "qcow2", "-c", "write -q -s "+r1+" 0 3M", "-c", "write -q -P 0x11 8M 1M",
		"-c", "write -q -s "+r2+" 20M 2M", base)
	tool(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
	tool(t, "qemu-io", "-f", "qcow2", "-c", "write -q -P 0x5a 1M 512k", "-c", "write -q -z 20M 1M",
		"-c", "write -q -s "+r2+" 30M 2M", "-c", fmt.Sprintf("write -q -P 0x77 %dM 64k", sizeMiB-1), top)
	return top
}

// openView opens a chain as an export source, closed with the test.
func openView(t testing.TB, top string) *volumes.View {
	t.Helper()
	v, err := volumes.OpenView(testCtx(t, time.Minute), top)
	if err != nil {
		t.Fatalf("OpenView(%s): %v", top, err)
	}
	t.Cleanup(func() { _ = v.Close() })
	return v
}

// testVM is a source VM: its volumes' chains and their views.
type testVM struct {
	tops  []string
	views []*volumes.View
	uefi  string
}

// newVM builds a VM with a 48 MiB root volume and a 40 MiB data volume.
func newVM(t testing.TB, withUEFI bool) *testVM {
	t.Helper()
	dir := t.TempDir()
	vm := &testVM{}
	for i, size := range []int{48, 40} {
		top := chain(t, filepath.Join(dir, fmt.Sprint(i)), size)
		vm.tops = append(vm.tops, top)
		vm.views = append(vm.views, openView(t, top))
	}
	if withUEFI {
		vm.uefi = randomFile(t, dir, "OVMF_VARS.fd", 128<<10)
	}
	return vm
}

// spec returns the export of vm as package name.
func (vm *testVM) spec(name, format string, ova bool) export.ExportSpec {
	d := export.Descriptor{
		Name: "web01", Description: "a test VM", OSType: "debian12", SystemType: "qemu",
		CPUs: 2, MemoryMiB: 512, Firmware: export.FirmwareBIOS,
		NICs: []export.NIC{{Name: "nic0", MAC: "52:54:00:12:34:56", Model: "virtio", Network: "frontend"}},
		Twinsnap: &export.Meta{SnapshotID: "snap-1", SnapshotName: "before upgrade", VMID: "vm-1", VMName: "web01",
			Consistency: "crash", CapturedAt: time.Date(2026, 11, 21, 9, 30, 0, 0, time.UTC),
			SourceSystem: "sys-test", Driver: "qemu", Config: `{"name":"web01"}`},
	}
	if vm.uefi != "" {
		d.Firmware = export.FirmwareEFI
	}
	s := export.ExportSpec{Package: name, Format: format, OVA: ova, Descriptor: d, UEFIVars: vm.uefi}
	for i, v := range vm.views {
		s.Volumes = append(s.Volumes, export.ExportVolume{
			VolumeID: fmt.Sprintf("vol-%d", i), Name: []string{"root", "data"}[i], Serial: fmt.Sprintf("ts-%d", i),
			Boot: i == 0, SizeBytes: v.Size(), Source: v,
		})
	}
	return s
}

// checkImported compares every imported disk with its source chain.
func (vm *testVM) checkImported(t testing.TB, imp *export.Imported) {
	t.Helper()
	ctx := testCtx(t, 2*time.Minute)
	if len(imp.Disks) != len(vm.tops) {
		t.Fatalf("imported %d disks, want %d", len(imp.Disks), len(vm.tops))
	}
	for i, d := range imp.Disks {
		same, out, err := testenv.CompareImages(ctx, vm.tops[i], d.Path)
		if err != nil || !same {
			t.Errorf("disk %d (%s): qemu-img compare with the source chain: same=%v %v\n%s", i, d.Disk.Name, same, err, out)
		}
		info := tool(t, "qemu-img", "info", "--output=json", d.Path)
		if strings.Contains(info, "backing-filename") {
			t.Errorf("disk %d: imported image has a backing file:\n%s", i, info)
		}
	}
	if imp.Foreign {
		t.Error("Foreign set for a twinsnap package")
	}
	if vm.uefi != "" {
		want, _ := os.ReadFile(vm.uefi)
		got, err := os.ReadFile(imp.UEFIVars)
		if err != nil || string(got) != string(want) {
			t.Errorf("UEFI store %q differs from the source (%v)", imp.UEFIVars, err)
		}
	} else if imp.UEFIVars != "" {
		t.Errorf("UEFIVars %q without a store", imp.UEFIVars)
	}
}

// checkDiskFiles runs qemu-img check on every disk file of the package
// that Export wrote at the root of a transport backed by the local
// directory root (an archive is unpacked with GNU tar first).
func checkDiskFiles(t testing.TB, root string, spec export.ExportSpec) {
	t.Helper()
	dir := filepath.Join(root, spec.Package)
	if spec.OVA {
		dir = t.TempDir()
		tool(t, "tar", "-xf", filepath.Join(root, spec.Package+export.OVASuffix), "-C", dir)
		members := strings.Fields(tool(t, "tar", "-tf", filepath.Join(root, spec.Package+export.OVASuffix)))
		if len(members) < 3 || members[0] != spec.Package+".ovf" || members[1] != spec.Package+".mf" {
			t.Errorf("archive members %q: want the .ovf, then the .mf", members)
		}
	}
	for _, v := range spec.Volumes {
		p := filepath.Join(dir, export.DiskName(spec.Package, v.Name, spec.Format))
		out := tool(t, "qemu-img", "check", "-f", spec.Format, p)
		if !strings.Contains(out, "No errors") {
			t.Errorf("qemu-img check %s: %s", p, out)
		}
	}
	for _, name := range []string{spec.Package + ".ovf", spec.Package + ".mf"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("package file %s: %v", name, err)
		}
	}
}

// newLocal returns a local transport over a fresh directory.
func newLocal(t testing.TB) (*local.Transport, string) {
	t.Helper()
	root := t.TempDir()
	tr, err := local.New(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	return tr, root
}

// exportAndImport exports spec to tr, checks the result, imports it back
// and returns what was imported.
func exportAndImport(t *testing.T, tr export.Transport, spec export.ExportSpec, opts export.ExportOptions) (export.ExportResult, *export.Imported) {
	t.Helper()
	ctx := testCtx(t, 3*time.Minute)
	var last export.Progress
	opts.OnProgress = func(p export.Progress) error { last = p; return nil }
	res, err := export.Export(ctx, tr, spec, opts)
	if err != nil {
		t.Fatalf("Export: %v", err)
	}
	if last.Offset != last.Total || last.Total == 0 {
		t.Errorf("last progress %+v: offset is not the total", last)
	}
	wantFiles := 2 + len(spec.Volumes)
	if spec.UEFIVars != "" {
		wantFiles++
	}
	if len(res.Files) != wantFiles || res.Files[0].Name != spec.Package+".ovf" || res.Files[len(res.Files)-1].Name != spec.Package+".mf" {
		t.Errorf("result files %+v", res.Files)
	}
	if res.Rewritten != 0 {
		t.Errorf("Rewritten %d in an uninterrupted export", res.Rewritten)
	}
	imp, err := export.Import(ctx, tr, export.PackagePath("", spec.Package, spec.OVA), export.ImportOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("Import: %v", err)
	}
	return res, imp
}

func TestExportImportLocal(t *testing.T) {
	needQemu(t)
	vm := newVM(t, true)
	for _, tc := range []struct {
		format string
		ova    bool
	}{
		{export.FormatQCOW2, false},
		{export.FormatVMDK, false},
		{export.FormatQCOW2, true},
		{export.FormatVMDK, true},
	} {
		t.Run(fmt.Sprintf("%s-ova=%v", tc.format, tc.ova), func(t *testing.T) {
			tr, root := newLocal(t)
			spec := vm.spec("web01-snap1", tc.format, tc.ova)
			res, imp := exportAndImport(t, tr, spec, export.ExportOptions{})
			vm.checkImported(t, imp)
			checkDiskFiles(t, root, spec)
			for i, k := range imp.Descriptor.Disks {
				if k.FileSize != res.Files[1+i].Size || k.PopulatedBytes != vm.views[i].AllocatedBytes() {
					t.Errorf("disk %d: FileSize %d, PopulatedBytes %d; want %d and %d", i, k.FileSize, k.PopulatedBytes,
						res.Files[1+i].Size, vm.views[i].AllocatedBytes())
				}
			}
			// Exporting the same package again gives the same bytes, and
			// refuses to replace the first.
			if _, err := export.Export(testCtx(t, time.Minute), tr, spec, export.ExportOptions{}); !errors.Is(err, export.ErrExist) {
				t.Errorf("second export to the same name: %v, want ErrExist", err)
			}
			tr2, _ := newLocal(t)
			res2, err := export.Export(testCtx(t, time.Minute), tr2, spec, export.ExportOptions{Parallelism: 1})
			if err != nil {
				t.Fatal(err)
			}
			for i := range res.Files {
				if string(res.Files[i].SHA256) != string(res2.Files[i].SHA256) {
					t.Errorf("%s: exported twice with different sums", res.Files[i].Name)
				}
			}
		})
	}
}

// startSamba starts an encrypted share and returns a transport on a fresh
// directory of it and that directory's local path.
func startSamba(t *testing.T, opts testenv.SambaOptions) (*testenv.Samba, func(t *testing.T) (export.Transport, string)) {
	t.Helper()
	s := testenv.StartSamba(t, opts)
	return s, func(t *testing.T) (export.Transport, string) {
		dir, err := os.MkdirTemp(s.Dir, "t-")
		if err != nil {
			t.Fatal(err)
		}
		tr, err := smb.Dial(testCtx(t, 30*time.Second), smbConfig(s, filepath.Base(dir)))
		if err != nil {
			t.Fatalf("smb.Dial: %v", err)
		}
		t.Cleanup(func() { _ = tr.Close() })
		return tr, dir
	}
}

func smbConfig(s *testenv.Samba, dir string) smb.Config {
	return smb.Config{Addr: s.Addr, Share: s.Share, Dir: dir, User: s.User, Password: s.Password, RequireEncryption: !s.SigningOnly}
}

func TestExportImportSamba(t *testing.T) {
	needQemu(t)
	_, dial := startSamba(t, testenv.SambaOptions{})
	vm := newVM(t, false)
	for _, tc := range []struct {
		format string
		ova    bool
	}{
		{export.FormatQCOW2, false},
		{export.FormatVMDK, false},
		{export.FormatQCOW2, true},
		{export.FormatVMDK, true},
	} {
		t.Run(fmt.Sprintf("%s-ova=%v", tc.format, tc.ova), func(t *testing.T) {
			tr, dir := dial(t)
			spec := vm.spec("web01", tc.format, tc.ova)
			_, imp := exportAndImport(t, tr, spec, export.ExportOptions{})
			vm.checkImported(t, imp)
			checkDiskFiles(t, dir, spec)
		})
	}
}

// stepTransport lists the root at every call of the transport (and at
// every 4 MiB written) and records where the package's final name was
// seen, and every rename.
type stepTransport struct {
	export.Transport
	final string

	mu      sync.Mutex
	renames []string
	early   []string // steps at which the final name existed before its rename
	steps   int
}

func (s *stepTransport) step(op string) {
	list, err := s.List(context.Background(), "")
	s.mu.Lock()
	defer s.mu.Unlock()
	s.steps++
	if err != nil {
		s.early = append(s.early, op+": list: "+err.Error())
		return
	}
	renamed := len(s.renames) > 0
	for _, fi := range list {
		if fi.Name == s.final && !renamed {
			s.early = append(s.early, op)
		}
	}
}

func (s *stepTransport) OpenWriter(ctx context.Context, name string) (export.FileWriter, error) {
	s.step("open " + name)
	w, err := s.Transport.OpenWriter(ctx, name)
	if err != nil {
		return nil, err
	}
	return &stepWriter{FileWriter: w, s: s, name: name}, nil
}

func (s *stepTransport) Rename(ctx context.Context, from, to string) error {
	s.step("before rename")
	err := s.Transport.Rename(ctx, from, to)
	if err == nil {
		s.mu.Lock()
		s.renames = append(s.renames, from+" -> "+to)
		s.mu.Unlock()
	}
	s.step("after rename")
	return err
}

func (s *stepTransport) MkdirAll(ctx context.Context, dir string) error {
	s.step("mkdir " + dir)
	return s.Transport.MkdirAll(ctx, dir)
}

type stepWriter struct {
	export.FileWriter
	s    *stepTransport
	name string
}

func (w *stepWriter) WriteAt(p []byte, off int64) (int, error) {
	if off%(4<<20) == 0 {
		w.s.step(fmt.Sprintf("write %s at %d", w.name, off))
	}
	return w.FileWriter.WriteAt(p, off)
}

func (w *stepWriter) Sync() error {
	w.s.step("sync " + w.name)
	return w.FileWriter.Sync()
}

func (w *stepWriter) Truncate(n int64) error {
	w.s.step("truncate " + w.name)
	return w.FileWriter.Truncate(n)
}

func TestPackageAppearsOnlyWhole(t *testing.T) {
	needQemu(t)
	vm := newVM(t, false)
	for _, ova := range []bool{false, true} {
		t.Run(fmt.Sprintf("ova=%v", ova), func(t *testing.T) {
			tr, _ := newLocal(t)
			spec := vm.spec("whole", export.FormatVMDK, ova)
			final := "whole"
			if ova {
				final += export.OVASuffix
			}
			st := &stepTransport{Transport: tr, final: final}
			_, imp := exportAndImport(t, st, spec, export.ExportOptions{})
			vm.checkImported(t, imp)
			if len(st.early) > 0 {
				t.Errorf("the final name %q existed before the package was renamed to it, at: %q", final, st.early)
			}
			if want := []string{final + export.PartSuffix + " -> " + final}; fmt.Sprint(st.renames) != fmt.Sprint(want) {
				t.Errorf("renames %q, want %q", st.renames, want)
			}
			if st.steps < 10 {
				t.Errorf("only %d steps observed", st.steps)
			}
			list, err := tr.List(context.Background(), "")
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, fi := range list {
				names = append(names, fi.Name)
			}
			if fmt.Sprint(names) != fmt.Sprint([]string{final}) {
				t.Errorf("root holds %q, want only %q", names, final)
			}
		})
	}
}
