package export

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

var sentinels = []error{ErrUnsafeName, ErrEntity, ErrTooLarge, ErrChecksum, ErrTruncated, ErrFormat, ErrMalformed}

// checkSentinel fails unless err wraps one of the package's sentinels.
func checkSentinel(t *testing.T, err error) {
	t.Helper()
	for _, s := range sentinels {
		if errors.Is(err, s) {
			return
		}
	}
	t.Fatalf("error wraps no sentinel: %v", err)
}

// addFiles adds every file matching the patterns under testdata as a seed.
func addFiles(f *testing.F, patterns ...string) {
	for _, p := range patterns {
		paths, err := filepath.Glob(filepath.Join("testdata", p))
		if err != nil {
			f.Fatal(err)
		}
		for _, path := range paths {
			data, err := os.ReadFile(path)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data)
		}
	}
}

// FuzzParseDescriptor: no input panics; every refusal wraps a sentinel;
// a descriptor that parses writes, and reads back equal, and writing it
// again gives the same bytes.
func FuzzParseDescriptor(f *testing.F) {
	addFiles(f, "*.ovf", "malicious/*.ovf")
	f.Add(writeDescriptor(f, sample(false)))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := ParseDescriptor(bytes.NewReader(data), Limits{})
		if err != nil {
			checkSentinel(t, err)
			return
		}
		var a bytes.Buffer
		if err := WriteDescriptor(&a, d); err != nil {
			t.Fatalf("a parsed descriptor does not write: %v\n%+v", err, d)
		}
		d2, err := ParseDescriptor(bytes.NewReader(a.Bytes()), Limits{})
		if err != nil {
			t.Fatalf("a written descriptor does not parse: %v\n%s", err, a.Bytes())
		}
		if !reflect.DeepEqual(d, d2) {
			t.Fatalf("re-read descriptor differs:\n got %+v\nwant %+v", d2, d)
		}
		var b bytes.Buffer
		if err := WriteDescriptor(&b, d2); err != nil || !bytes.Equal(a.Bytes(), b.Bytes()) {
			t.Fatalf("second write differs (%v)", err)
		}
	})
}

// FuzzParseManifest: no input panics; refusals wrap a sentinel; parsed
// entries have safe names and sums of their algorithm's length; SHA-256
// manifests write and read back equal.
func FuzzParseManifest(f *testing.F) {
	addFiles(f, "malicious/*.mf")
	var b bytes.Buffer
	if err := WriteManifest(&b, sampleManifest()); err != nil {
		f.Fatal(err)
	}
	f.Add(b.Bytes())
	f.Add([]byte("SHA1(app.ovf)= da39a3ee5e6b4b0d3255bfef95601890afd80709\r\nSHA256(a)= e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseManifest(bytes.NewReader(data), Limits{})
		if err != nil {
			checkSentinel(t, err)
			return
		}
		sha256Only := true
		for _, e := range m {
			if err := CheckName(e.Name); err != nil {
				t.Fatalf("parsed an unsafe name: %v", err)
			}
			if len(e.Sum) != e.NewHash().Size() {
				t.Fatalf("%s: %d-byte %s sum", e.Name, len(e.Sum), e.Algorithm)
			}
			if e.Algorithm != AlgSHA256 {
				sha256Only = false
			}
		}
		if !sha256Only {
			return
		}
		var out bytes.Buffer
		if err := WriteManifest(&out, m); err != nil {
			t.Fatalf("a parsed manifest does not write: %v", err)
		}
		m2, err := ParseManifest(&out, Limits{})
		if err != nil || !reflect.DeepEqual(m, m2) {
			t.Fatalf("re-read manifest differs (%v):\n got %v\nwant %v", err, m2, m)
		}
	})
}

// FuzzOVAReader: no input panics; refusals wrap a sentinel; every member
// returned has a safe, distinct name, the descriptor comes first, and no
// more data is returned than the input holds.
func FuzzOVAReader(f *testing.F) {
	addFiles(f, "malicious/*.ova")
	f.Add(writeOVA(f, sampleMembers()))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewOVAReader(bytes.NewReader(data), Limits{})
		names := nameSet{}
		var total int64
		for i := 0; ; i++ {
			name, size, err := r.Next()
			if errors.Is(err, io.EOF) {
				return
			}
			if err != nil {
				checkSentinel(t, err)
				return
			}
			if err := names.add(name); err != nil {
				t.Fatalf("member %d: %v", i, err)
			}
			if i == 0 && !hasSuffixFold(name, ".ovf") {
				t.Fatalf("first member %q", name)
			}
			n, err := io.Copy(io.Discard, r)
			total += n
			if total > int64(len(data)) {
				t.Fatalf("read %d bytes from a %d-byte archive", total, len(data))
			}
			if err != nil {
				checkSentinel(t, err)
				return
			}
			if n != size {
				t.Fatalf("member %q: read %d of %d bytes without an error", name, n, size)
			}
		}
	})
}

// FuzzDescriptorFields fuzzes the values of a descriptor rather than its
// XML: whatever WriteDescriptor accepts must read back as the same
// descriptor (up to the documented normalisation of MACs, empty NIC names
// and empty firmware) and write again to the same bytes.
func FuzzDescriptorFields(f *testing.F) {
	f.Add("web01", "Front end\r\nline two ", "debian12", "qemu", 4, int64(8192), int64(20<<30), int64(1<<20), "52:54:00:12:34:56", "virtio", "nic0", "frontend", "ts-root", "root", "web01-root.qcow2", "<domain/>", int64(1700000000123456789), "application", "libvirt")
	f.Add("a", "", "", "", 1, int64(1), int64(1), int64(0), "", "", "", "", "", "x", "x", "", int64(0), "", "")
	f.Add("Ünïcode VM ✓", "\t<&>\"'", "win11", "vmx-14", 1024, int64(16<<20), int64(64<<40), int64(0), "0A-1B-2C-3D-4E-5F", "e1000", "", "net with spaces", "S/N 1", "disk ✓", "disk ✓.vmdk", "\x00\xff binary", int64(-1), "crash", "qemu")
	f.Fuzz(func(t *testing.T, name, desc, osType, sysType string, cpus int, mem, capacity, fileSize int64,
		mac, model, nicName, network, serial, diskName, file, config string, captured int64, consistency, driver string) {
		d := sample(true)
		d.Name, d.Description, d.OSType, d.SystemType, d.CPUs, d.MemoryMiB = name, desc, osType, sysType, cpus, mem
		d.Disks[0].CapacityBytes, d.Disks[0].FileSize, d.Disks[0].Serial, d.Disks[0].Name, d.Disks[0].File = capacity, fileSize, serial, diskName, file
		d.Disks[0].PopulatedBytes = 0
		d.NICs[0] = NIC{Name: nicName, MAC: mac, Model: model, Network: network}
		d.Twinsnap.Config, d.Twinsnap.CapturedAt = config, time.Unix(0, captured).UTC()
		d.Twinsnap.Consistency, d.Twinsnap.Driver = consistency, driver
		var a bytes.Buffer
		if err := WriteDescriptor(&a, d); err != nil {
			checkSentinel(t, err)
			return
		}
		got, err := ParseDescriptor(bytes.NewReader(a.Bytes()), Limits{})
		if err != nil {
			t.Fatalf("a written descriptor does not parse: %v\n%s", err, a.Bytes())
		}
		want := d
		want.NICs[0].MAC = normalMAC(mac)
		if nicName == "" {
			want.NICs[0].Name = "nic0"
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("read back differs:\n got %+v\nwant %+v", got, want)
		}
		var b bytes.Buffer
		if err := WriteDescriptor(&b, got); err != nil || !bytes.Equal(a.Bytes(), b.Bytes()) {
			t.Fatalf("second write differs (%v)", err)
		}
	})
}
