package hypervisor_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/guestagent"
	"github.com/twinsnap/twinsnap/internal/hypervisor"
	"github.com/twinsnap/twinsnap/internal/testenv"
)

// TestCloneDomain clones a running testenv domain that boots with OVMF:
// its inactive XML, its images (copied while the guest is frozen through
// libvirt) and its UEFI variables; it defines and starts the clone under
// the same libvirtd and checks from inside the clone's guest that it has
// the new identity. libvirt also accepts a clone of the live XML.
func TestCloneDomain(t *testing.T) {
	lv := testenv.StartLibvirtd(t)
	start := time.Now()
	d := testenv.StartDomain(t, lv, testenv.VMOptions{UEFI: true, DataDisks: []testenv.DiskSpec{{Serial: "data1", SizeMiB: 32}}})
	t.Logf("original domain (OVMF): agent ready %s after the definition", time.Since(start).Round(time.Millisecond))
	ctx := within(t, 10*time.Minute)
	c, err := hypervisor.DialLibvirt(ctx, lv.Socket)
	if err != nil {
		t.Fatalf("DialLibvirt: %v", err)
	}
	defer closeQuietly(c)

	x, err := c.DomainXML(ctx, d.Name, true)
	if err != nil {
		t.Fatalf("DomainXML: %v", err)
	}
	disks, err := hypervisor.DomainDisks(x)
	if err != nil || len(disks) != len(d.Disks) {
		t.Fatalf("DomainDisks = %+v, %v; want %d disks", disks, err, len(d.Disks))
	}
	for i, want := range d.Disks {
		if disks[i].Path != want.Path || disks[i].Serial != want.Serial || disks[i].DeviceID != want.DeviceID {
			t.Fatalf("disk %d = %+v, want %+v", i, disks[i], want)
		}
	}
	nvram, err := hypervisor.DomainNVRAM(x)
	if err != nil || nvram != d.UEFIVars {
		t.Fatalf("DomainNVRAM = %q, %v; want %q", nvram, err, d.UEFIVars)
	}
	if macs, err := hypervisor.DomainMACs(x); err != nil || !reflect.DeepEqual(macs, []string{d.MAC}) {
		t.Fatalf("DomainMACs = %q, %v", macs, err)
	}

	// Copy the images and the variable store while the guest is frozen.
	dir := testenv.TempDir(t, "domclone")
	opts := hypervisor.DomainCloneOptions{
		Name:  d.Name + "-c",
		UUID:  hypervisor.NewUUID(),
		Disks: map[string]string{},
		NVRAM: filepath.Join(dir, "OVMF_VARS.fd"),
		Paths: map[string]string{d.SerialLog: filepath.Join(dir, "serial.log")},
	}
	newMAC := hypervisor.RandomMAC()
	opts.MAC = func(string) string { return newMAC }
	m, err := c.OpenMachine(ctx, d.Name, hypervisor.WithLogger(quiet))
	if err != nil {
		t.Fatalf("OpenMachine: %v", err)
	}
	defer closeQuietly(m)
	ga := guestagent.NewClient(m.Agent())
	if _, err := ga.FreezeAll(ctx); err != nil {
		t.Fatalf("freeze: %v", err)
	}
	for _, disk := range disks {
		opts.Disks[disk.Path] = filepath.Join(dir, filepath.Base(disk.Path))
		qemuImg(ctx, t, "convert", "-U", "-f", "qcow2", "-O", "qcow2", disk.Path, opts.Disks[disk.Path])
	}
	b, err := os.ReadFile(nvram)
	if err == nil {
		err = os.WriteFile(opts.NVRAM, b, 0o644)
	}
	if err != nil {
		t.Fatalf("copying the variable store: %v", err)
	}
	if _, err := ga.Thaw(ctx); err != nil {
		t.Fatalf("thaw: %v", err)
	}

	clone, err := hypervisor.CloneDomainXML(x, opts)
	if err != nil {
		t.Fatalf("CloneDomainXML: %v", err)
	}
	name, uuid, err := c.DefineDomain(ctx, clone)
	if err != nil {
		t.Fatalf("DefineDomain: %v\n%s", err, clone)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := c.DestroyDomain(cctx, name); err != nil {
			t.Errorf("DestroyDomain: %v", err)
		}
		if err := c.UndefineDomain(cctx, name, false); err != nil {
			t.Errorf("UndefineDomain: %v", err)
		}
	}()
	if name != opts.Name || uuid != opts.UUID {
		t.Fatalf("defined %s %s, want %s %s", name, uuid, opts.Name, opts.UUID)
	}
	start = time.Now()
	if err := c.StartDomain(ctx, name); err != nil {
		t.Fatalf("StartDomain: %v", err)
	}
	cm, err := c.OpenMachine(ctx, name, hypervisor.WithLogger(quiet))
	if err != nil {
		t.Fatalf("OpenMachine on the clone: %v", err)
	}
	defer closeQuietly(cm)
	cga := guestagent.NewClient(cm.Agent())
	if err := pollPing(ctx, cga); err != nil {
		b, _ := os.ReadFile(opts.Paths[d.SerialLog])
		t.Fatalf("the clone's agent: %v\nserial:\n%s", err, tailString(string(b), 4096))
	}
	t.Logf("clone domain (OVMF): agent ready %s after the start", time.Since(start).Round(time.Millisecond))

	raw, err := cm.Agent().Execute(ctx, "guest-network-get-interfaces", nil)
	if err != nil {
		t.Fatalf("guest-network-get-interfaces: %v", err)
	}
	var ifaces []struct {
		HW string `json:"hardware-address"`
	}
	if err := json.Unmarshal(raw, &ifaces); err != nil {
		t.Fatalf("guest-network-get-interfaces: %v", err)
	}
	found := false
	for _, i := range ifaces {
		found = found || strings.EqualFold(i.HW, newMAC)
	}
	if !found {
		t.Fatalf("no guest interface with %s: %s", newMAC, raw)
	}
	guestFile(ctx, t, cga, "/sys/class/dmi/id/product_uuid", opts.UUID)
	guestFile(ctx, t, cga, "/sys/firmware/efi/fw_platform_size", "64")

	// libvirt made the clone its own agent socket.
	live, err := c.DomainXML(ctx, name, false)
	if err != nil {
		t.Fatalf("DomainXML of the clone: %v", err)
	}
	if !strings.Contains(live, "-"+name+"/org.qemu.guest_agent.0'") {
		t.Fatalf("the clone's live XML has no agent socket of its own:\n%s", live)
	}
	if nv, _ := hypervisor.DomainNVRAM(live); nv != opts.NVRAM {
		t.Fatalf("the clone's NVRAM = %q, want %q", nv, opts.NVRAM)
	}

	// The live XML of the original clones too (its channel socket is
	// dropped); libvirt accepts the result.
	origLive, err := c.DomainXML(ctx, d.Name, false)
	if err != nil {
		t.Fatalf("DomainXML: %v", err)
	}
	opts2 := opts
	opts2.Name, opts2.UUID = d.Name+"-l", ""
	opts2.MAC = nil
	fromLive, err := hypervisor.CloneDomainXML(origLive, opts2)
	if err != nil {
		t.Fatalf("CloneDomainXML of the live XML: %v", err)
	}
	name2, _, err := c.DefineDomain(ctx, fromLive)
	if err != nil {
		t.Fatalf("DefineDomain from the live XML: %v\n%s", err, fromLive)
	}
	if err := c.UndefineDomain(ctx, name2, false); err != nil {
		t.Fatalf("UndefineDomain: %v", err)
	}
}

// pollPing polls guest-ping until the agent answers or ctx ends.
func pollPing(ctx context.Context, ga *guestagent.Client) error {
	for {
		attempt, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := ga.Ping(attempt)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(500 * time.Millisecond):
		}
	}
}
