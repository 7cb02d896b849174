package testenv_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/internal/testenv"
)

// TestStartVMUEFI boots the test guest under OVMF, its kernel loaded from
// fw_cfg, and shows from inside the guest that it runs on UEFI firmware.
func TestStartVMUEFI(t *testing.T) {
	start := time.Now()
	vm := testenv.StartVM(t, testenv.VMOptions{UEFI: true})
	t.Logf("OVMF guest: agent ready %s after the launch", time.Since(start).Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	st, err := os.Stat(vm.UEFIVars)
	if err != nil {
		t.Fatalf("UEFI variable store: %v", err)
	}
	tmpl, err := os.Stat(testenv.OVMFVars)
	if err != nil {
		t.Fatalf("OVMF template: %v", err)
	}
	if st.Size() != tmpl.Size() {
		t.Fatalf("variable store %s is %d bytes, template %d", vm.UEFIVars, st.Size(), tmpl.Size())
	}
	if !strings.Contains(strings.Join(vm.Args, " "), "if=pflash,format=raw,unit=1,file="+vm.UEFIVars) {
		t.Fatalf("command line lacks the variable store: %q", vm.Args)
	}

	ga, err := vm.Agent(ctx)
	if err != nil {
		t.Fatalf("agent: %v", err)
	}
	defer ga.Close()
	res, err := ga.Run(ctx, "/bin/cat", "/sys/firmware/efi/fw_platform_size")
	if err != nil {
		t.Fatalf("guest-exec: %v", err)
	}
	if res.ExitCode != 0 || strings.TrimSpace(string(res.OutData)) != "64" {
		t.Fatalf("/sys/firmware/efi/fw_platform_size: exit %d, %q %q: the guest did not boot through UEFI", res.ExitCode, res.OutData, res.ErrData)
	}
}

// BenchmarkGuestBootUEFI measures the time from QEMU start to the first
// answer of the guest agent under OVMF, next to SeaBIOS boots interleaved
// with it (three of each, alternating, so that both see the same load).
func BenchmarkGuestBootUEFI(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	img, err := testenv.BuildGuestImage(ctx)
	testenv.Need(b, "guest image", err)
	secs := map[bool][]float64{}
	for i := 0; i < 6; i++ {
		uefi := i%2 == 1
		start := time.Now()
		vm, err := testenv.LaunchVM(ctx, img, testenv.TempDir(b, "vm"), testenv.VMOptions{
			Name: fmt.Sprintf("bench-boot-fw-%d", i),
			UEFI: uefi,
		})
		if err != nil {
			b.Fatalf("boot %d (UEFI %v): %v", i, uefi, err)
		}
		secs[uefi] = append(secs[uefi], time.Since(start).Seconds())
		if err := vm.Stop(); err != nil {
			b.Fatalf("stop: %v", err)
		}
	}
	note := fmt.Sprintf("median of %d TCG boots each, OVMF and SeaBIOS alternating, QEMU start to guest-ping", len(secs[true]))
	testenv.RecordMetric(b, testenv.Metric{Name: "guest_boot_ovmf_to_agent_s", Value: testenv.Percentile(secs[true], 50), Unit: "s", Note: note})
	testenv.RecordMetric(b, testenv.Metric{Name: "guest_boot_seabios_interleaved_to_agent_s", Value: testenv.Percentile(secs[false], 50), Unit: "s", Note: note})
	b.Logf("SeaBIOS %v s, OVMF %v s", secs[false], secs[true])
}
