package testenv_test

import (
	"context"
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
