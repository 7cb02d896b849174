// Command demo shows twinsnap's building blocks on this one machine, for
// `make demo`: it builds the test guest, boots it under TCG with two data
// volumes, and freezes and thaws just one of them through the real QEMU
// guest agent, printing what it did and what it measured.
//
// As the snapshot engine, replication and export land, the demo grows into
// the full snapshot → replicate → export → import cycle.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/twinsnap/twinsnap/guestagent"
	"github.com/twinsnap/twinsnap/internal/testenv"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	if err := run(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "demo failed: %v\n", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) {
	fmt.Printf("==> "+format+"\n", args...)
}

func run(ctx context.Context) error {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	t0 := time.Now()
	step("building the test guest (Debian kernel, busybox, the real qemu-ga); cached after the first run")
	img, err := testenv.BuildGuestImage(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("    guest %s, kernel %s (%.1fs)\n", img.Key, img.KernelVersion, time.Since(t0).Seconds())

	dir, err := os.MkdirTemp("", "tsn-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	step("booting a VM under TCG with a boot volume and two ext4 data volumes (data1, data2)")
	t1 := time.Now()
	vm, err := testenv.LaunchVM(ctx, img, dir, testenv.VMOptions{
		Name:      "demo",
		DataDisks: []testenv.DiskSpec{{Serial: "data1", SizeMiB: 128}, {Serial: "data2", SizeMiB: 128}},
	})
	if err != nil {
		return err
	}
	defer func() {
		step("stopping the VM")
		if err := vm.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "stop: %v\n", err)
		}
	}()
	boot := time.Since(t1)
	fmt.Printf("    QEMU pid %d, agent answered guest-ping after %.1fs\n", vm.Pid(), boot.Seconds())

	ga, err := vm.Agent(ctx)
	if err != nil {
		return err
	}
	defer ga.Close()
	info, err := ga.Info(ctx)
	if err != nil {
		return err
	}
	fsinfo, err := ga.FSInfo(ctx)
	if err != nil {
		return err
	}
	step("guest agent %s reports these file systems:", info.Version)
	for _, fs := range fsinfo {
		fmt.Printf("    %-12s %-6s on %s\n", fs.Mountpoint, fs.Type, fs.Name)
	}

	step("writing a file on each data volume through guest-exec")
	for _, v := range []string{"data1", "data2"} {
		st, err := ga.Run(ctx, "/bin/sh", "-c", "echo written-before-freeze > /mnt/"+v+"/demo.txt && sync")
		if err != nil {
			return err
		}
		if st.ExitCode != 0 {
			return fmt.Errorf("writing /mnt/%s/demo.txt: exit %d: %s", v, st.ExitCode, st.ErrData)
		}
	}

	step("freezing only /mnt/data1 (guest-fsfreeze-freeze-list)")
	f0 := time.Now()
	n, err := ga.FreezeList(ctx, []string{"/mnt/data1"})
	frozenAt := time.Now()
	thawed := false
	defer func() {
		if !thawed { // never leave the guest frozen, whatever happened
			tctx, c := context.WithTimeout(context.Background(), 10*time.Second)
			defer c()
			_, _ = ga.Thaw(tctx)
		}
	}()
	if err != nil {
		return err
	}
	status, err := ga.FreezeStatus(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("    froze %d file system in %.1f ms; guest-fsfreeze-status says %q\n", n, testenv.Millis(frozenAt.Sub(f0)), status)
	if status != guestagent.Frozen {
		return errors.New("the guest does not report frozen file systems")
	}

	step("thawing")
	t2 := time.Now()
	n, err = ga.Thaw(ctx)
	if err != nil {
		return err
	}
	thawed = true
	thawDone := time.Now()
	thawTook := thawDone.Sub(t2)
	status, err = ga.FreezeStatus(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("    thawed %d file system in %.1f ms; status %q; freeze call to thaw reply %.1f ms\n",
		n, testenv.Millis(thawTook), status, testenv.Millis(thawDone.Sub(f0)))

	st, err := ga.Run(ctx, "/bin/cat", "/mnt/data1/demo.txt")
	if err != nil {
		return err
	}
	fmt.Printf("    /mnt/data1/demo.txt after the thaw: %q\n", string(st.OutData))

	fmt.Printf("\nSummary: booted a TCG guest in %.1fs, froze 1 of its 3 file systems through the real guest agent and thawed it; whole demo %.1fs.\n",
		boot.Seconds(), time.Since(t0).Seconds())
	return nil
}
