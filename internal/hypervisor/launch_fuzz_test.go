package hypervisor_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/twinsnap/twinsnap/internal/hypervisor"
)

// FuzzLaunchSpecClone clones arbitrary command lines (arguments split at
// NUL) with every disk and path mapped: Clone either refuses with
// ErrBadConfig or returns a command line that reads back with the new
// name and without any of the old disks.
func FuzzLaunchSpecClone(f *testing.F) {
	for _, args := range [][]string{testenvArgv, libvirtArgv, driveArgv} {
		f.Add(strings.Join(args, "\x00"))
	}
	f.Add("-blockdev\x00{\"file\":{\"filename\":\"a,,b\"},\"driver\":\"qcow2\"}\x00-name\x00=,,\x00-chardev\x00socket,id=q,fd=3\x00-mon\x00q,mode=control")
	f.Fuzz(func(t *testing.T, joined string) {
		spec := hypervisor.LaunchSpec{Binary: "qemu", Args: strings.Split(joined, "\x00")}
		info, err := spec.Info()
		if err != nil {
			if !errors.Is(err, hypervisor.ErrBadConfig) {
				t.Fatalf("Info: %v", err)
			}
			return
		}
		opts := hypervisor.CloneOptions{Name: "clone", Disks: map[string]string{}, Paths: map[string]string{}}
		for i, d := range info.Disks {
			opts.Disks[d.Path] = "/new/disk" + string(rune('a'+i%26)) + strings.Repeat("x", i/26)
		}
		_, err = spec.Clone(opts)
		if err == nil {
			return
		}
		if !errors.Is(err, hypervisor.ErrBadConfig) {
			t.Fatalf("Clone: %v", err)
		}
		// Give every role a path and try again: what remains refused is
		// refused for a reason of its own.
		opts.QMPSocket, opts.AgentSocket, opts.SerialLog, opts.UEFIVars = "/new/qmp", "/new/qga", "/new/log", ""
		if info.UEFIVars != "" {
			opts.UEFIVars = "/new/vars"
		}
		clone, err := spec.Clone(opts)
		if err != nil {
			if !errors.Is(err, hypervisor.ErrBadConfig) {
				t.Fatalf("Clone: %v", err)
			}
			return
		}
		got, err := clone.Info()
		if err != nil {
			t.Fatalf("Info of a clone: %v\n%q", err, clone.Args)
		}
		if got.Name != "clone" || got.Daemonize {
			t.Fatalf("clone reads back as %+v\n%q", got, clone.Args)
		}
		for _, d := range got.Disks {
			if _, old := opts.Disks[d.Path]; old && d.Media != "cdrom" && !strings.HasPrefix(d.Path, "/new/") {
				t.Fatalf("clone still uses %s\n%q", d.Path, clone.Args)
			}
		}
	})
}

// FuzzCloneDomainXML clones arbitrary domain XML: CloneDomainXML either
// refuses with ErrBadConfig or returns XML that parses with the new name.
func FuzzCloneDomainXML(f *testing.F) {
	for _, name := range []string{"domainxml-uefi-inactive.xml", "domainxml-uefi-live.xml", "domainxml-chain.xml"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b))
	}
	f.Add(`<domain><name>a</name><devices><disk type='file'><source file='/x'/></disk></devices></domain>`)
	f.Fuzz(func(t *testing.T, x string) {
		disks, err := hypervisor.DomainDisks(x)
		if err != nil {
			if !errors.Is(err, hypervisor.ErrBadConfig) {
				t.Fatalf("DomainDisks: %v", err)
			}
			return
		}
		nv, _ := hypervisor.DomainNVRAM(x)
		opts := hypervisor.DomainCloneOptions{Name: "clone", Disks: map[string]string{}}
		for i, d := range disks {
			opts.Disks[d.Path] = "/new/" + strings.Repeat("d", i+1)
		}
		if nv != "" {
			opts.NVRAM = "/new/vars"
		}
		out, err := hypervisor.CloneDomainXML(x, opts)
		if err != nil {
			if !errors.Is(err, hypervisor.ErrBadConfig) {
				t.Fatalf("CloneDomainXML: %v", err)
			}
			return
		}
		if _, err := hypervisor.DomainDisks(out); err != nil {
			t.Fatalf("the clone does not parse: %v\n%s", err, out)
		}
	})
}
