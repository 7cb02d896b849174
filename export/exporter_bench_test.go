package export_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/export"
	"github.com/twinsnap/twinsnap/export/smb"
	"github.com/twinsnap/twinsnap/internal/testenv"
)

// writeRandom writes n pseudo-random (incompressible) bytes to path.
func writeRandom(b *testing.B, path string, n int64, seed uint64) {
	b.Helper()
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	buf := make([]byte, 4<<20)
	for off := int64(0); off < n; off += int64(len(buf)) {
		_, _ = r.Read(buf)
		if _, err := f.Write(buf[:min(int64(len(buf)), n-off)]); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
}

// fullChain builds a 1 GiB chain in dir whose base holds data everywhere
// and whose overlay rewrites 64 MiB of it.
func fullChain(b *testing.B, dir string) string {
	b.Helper()
	raw, base, top := filepath.Join(dir, "full.raw"), filepath.Join(dir, "full-base.qcow2"), filepath.Join(dir, "full-top.qcow2")
	writeRandom(b, raw, 1<<30, 1)
	tool(b, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, base)
	_ = os.Remove(raw)
	patch := filepath.Join(dir, "patch")
	writeRandom(b, patch, 4<<20, 2)
	tool(b, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
	var cmds []string
	for i := range 16 {
		cmds = append(cmds, "-c", fmt.Sprintf("write -q -s %s %dM 4M", patch, 37+i*61))
	}
	tool(b, "qemu-io", append(append([]string{"-f", "qcow2"}, cmds...), top)...)
	return top
}

// sparseChain builds a 16 GiB chain in dir holding 64 MiB of data: 48
// pieces of 1 MiB spread over the base and 16 in the overlay.
func sparseChain(b *testing.B, dir string) string {
	b.Helper()
	base, top := filepath.Join(dir, "sparse-base.qcow2"), filepath.Join(dir, "sparse-top.qcow2")
	patch := filepath.Join(dir, "piece")
	writeRandom(b, patch, 1<<20, 3)
	tool(b, "qemu-img", "create", "-q", "-f", "qcow2", base, "16G")
	var cmds []string
	for i := range 48 {
		cmds = append(cmds, "-c", fmt.Sprintf("write -q -s %s %dM 1M", patch, i*331+5))
	}
	tool(b, "qemu-io", append(append([]string{"-f", "qcow2"}, cmds...), base)...)
	tool(b, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
	cmds = nil
	for i := range 16 {
		cmds = append(cmds, "-c", fmt.Sprintf("write -q -s %s %dM 1M", patch, i*977+100))
	}
	tool(b, "qemu-io", append(append([]string{"-f", "qcow2"}, cmds...), top)...)
	return top
}

// benchSpec is a one-volume qcow2 export of the chain at top.
func benchSpec(b *testing.B, name, top string) export.ExportSpec {
	v := openView(b, top)
	return export.ExportSpec{Package: name, Format: export.FormatQCOW2,
		Descriptor: export.Descriptor{Name: "bench", CPUs: 1, MemoryMiB: 512},
		Volumes:    []export.ExportVolume{{VolumeID: "v1", Name: "root", Boot: true, SizeBytes: v.Size(), Source: v}}}
}

// exportTimed exports spec to a fresh directory of the share and returns
// how long it took and the disk file's local path in the share.
func exportTimed(b *testing.B, s *testenv.Samba, spec export.ExportSpec) (time.Duration, string, export.ExportResult) {
	b.Helper()
	dir, err := os.MkdirTemp(s.Dir, "b-")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	tr, err := smb.Dial(ctx, smbConfig(s, filepath.Base(dir)))
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = tr.Close() }()
	began := time.Now()
	res, err := export.Export(ctx, tr, spec, export.ExportOptions{})
	took := time.Since(began)
	if err != nil {
		b.Fatalf("export %s: %v", spec.Package, err)
	}
	return took, filepath.Join(dir, spec.Package, export.DiskName(spec.Package, "root", spec.Format)), res
}

// smbclientPut copies the local file to the share with smbclient and
// returns how long the transfer took.
func smbclientPut(b *testing.B, s *testenv.Samba, file string) time.Duration {
	b.Helper()
	host, port, err := net.SplitHostPort(s.Addr)
	if err != nil {
		b.Fatal(err)
	}
	remote := fmt.Sprintf("put-%d", time.Now().UnixNano())
	args := []string{"//" + host + "/" + s.Share, "-p", port, "-U", s.User + "%" + s.Password}
	if s.SigningOnly {
		args = append(args, "--option=client signing=required")
	} else {
		args = append(args, "--option=client smb encrypt=required")
	}
	args = append(args, "-c", fmt.Sprintf("put %s %s", file, remote))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	began := time.Now()
	out, err := exec.CommandContext(ctx, "smbclient", args...).CombinedOutput()
	took := time.Since(began)
	if err != nil {
		b.Fatalf("smbclient put: %v\n%s", err, out)
	}
	_ = os.Remove(filepath.Join(s.Dir, remote))
	return took
}

// BenchmarkExport exports a 1 GiB fully allocated qcow2 chain and a
// 16 GiB one holding 64 MiB to an encrypted share, and the 1 GiB one to a
// signing-only share, and compares export throughput (generation, writes
// with four in flight, flush and read-back verification included) with
// `smbclient put` of the exported disk file to the same share in the same
// run. Run with -benchtime 1x.
func BenchmarkExport(b *testing.B) {
	needQemu(b)
	if _, err := exec.LookPath("smbclient"); err != nil {
		testenv.Need(b, "smbclient", fmt.Errorf("%w: %v", testenv.ErrUnavailable, err))
	}
	dir := testenv.TempDir(b, "export-bench")
	full := fullChain(b, dir)
	sparse := sparseChain(b, dir)
	for _, variant := range []struct {
		name string
		opts testenv.SambaOptions
	}{
		{"encrypted", testenv.SambaOptions{}},
		{"signing", testenv.SambaOptions{SigningOnly: true}},
	} {
		b.Run(variant.name, func(b *testing.B) {
			s := testenv.StartSamba(b, variant.opts)
			var tFull, tSparse, tPut time.Duration
			var size int64
			for i := 0; b.Loop(); i++ {
				var file string
				var res export.ExportResult
				tFull, file, res = exportTimed(b, s, benchSpec(b, fmt.Sprintf("full%d", i), full))
				size = res.Size
				fi, err := os.Stat(file)
				if err != nil {
					b.Fatal(err)
				}
				tPut = smbclientPut(b, s, file)
				if variant.name == "encrypted" {
					tSparse, _, _ = exportTimed(b, s, benchSpec(b, fmt.Sprintf("sparse%d", i), sparse))
				}
				b.SetBytes(fi.Size())
				_ = os.RemoveAll(filepath.Dir(filepath.Dir(file)))
			}
			exportMBps := float64(size) / 1e6 / tFull.Seconds()
			putMBps := float64(size) / 1e6 / tPut.Seconds()
			b.ReportMetric(exportMBps, "export-MB/s")
			b.ReportMetric(putMBps, "smbclient-MB/s")
			testenv.RecordMetric(b, testenv.Metric{
				Name: "export_vs_smbclient_" + variant.name, Value: exportMBps / putMBps, Unit: "ratio",
				Reference: "smbclient put of the exported 1 GiB disk file to the same share",
				Note: fmt.Sprintf("export %.0f MB/s (verification included), smbclient %.0f MB/s, %s share",
					exportMBps, putMBps, variant.name),
			})
			if variant.name == "encrypted" {
				b.ReportMetric(tSparse.Seconds(), "sparse16g-s")
				testenv.RecordMetric(b, testenv.Metric{
					Name: "export_sparse16g_over_full1g", Value: tSparse.Seconds() / tFull.Seconds(), Unit: "ratio",
					Reference: "export of a 1 GiB fully allocated qcow2 chain",
					Note: fmt.Sprintf("16 GiB chain with 64 MiB of data %.2f s, 1 GiB full chain %.2f s, encrypted share",
						tSparse.Seconds(), tFull.Seconds()),
				})
			}
		})
	}
}
