package systemtest

import (
	"context"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/twinsnap/twinsnap/cluster/command"
	"github.com/twinsnap/twinsnap/guestagent"
	"github.com/twinsnap/twinsnap/internal/api"
	"github.com/twinsnap/twinsnap/internal/testenv"
)

// TestDaemonThawsGuestLeftFrozen registers a real guest with its host node,
// runs a quiesce check through a follower (forwarded to the host), then
// SIGKILLs the host's daemon while it holds the guest frozen, and finds the
// guest thawed by the restarted daemon.
func TestDaemonThawsGuestLeftFrozen(t *testing.T) {
	c := testenv.StartCluster(t, testenv.ClusterOptions{})
	vm := testenv.StartVM(t, testenv.VMOptions{DataDisks: []testenv.DiskSpec{{Serial: "data1", SizeMiB: 64}, {Serial: "data2", SizeMiB: 64}}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := c.WaitLeader(ctx, "data"); err != nil {
		t.Fatalf("%v", err)
	}
	cl := c.Client(testenv.DataB) // not the host: registration is forwarded
	defer cl.Close()
	reg, err := cl.RegisterVM(ctx, api.VMRegisterRequest{
		Name: "guest", HostNode: testenv.DataA, Driver: command.DriverQEMU,
		QEMU: &command.QEMUConnection{QMPSocket: vm.QMPSocket, AgentSocket: vm.AgentSocket},
	})
	if err != nil {
		t.Fatalf("register: %v", err)
	}
	names := map[string]bool{}
	for _, v := range reg.Volumes {
		names[v.Name] = true
		if v.Boot != (v.Name == testenv.BootSerial) {
			t.Fatalf("boot flag wrong on %+v", v)
		}
	}
	if !reflect.DeepEqual(names, map[string]bool{"boot": true, "data1": true, "data2": true}) {
		t.Fatalf("registered volumes %+v", reg.Volumes)
	}
	if reg.HostNode != testenv.DataA || !reg.FreezeEnabled || reg.FreezeTimeout != 10*time.Second {
		t.Fatalf("registered VM %+v", reg.VM)
	}

	res, err := cl.QuiesceCheck(ctx, "guest", api.QuiesceCheckRequest{Volumes: []string{"data1"}})
	if err != nil {
		t.Fatalf("quiesce check: %v", err)
	}
	if res.Achieved != "application" || !reflect.DeepEqual(res.Frozen, []string{"/mnt/data1"}) || res.HostNode != testenv.DataA {
		t.Fatalf("quiesce check result %+v", res)
	}
	t.Logf("quiesce check of data1: window %.1f ms (freeze %.1f ms, thaw %.1f ms)", res.WindowMS, res.FreezeCallMS, res.ThawCallMS)

	// The same through the real CLI, against the witness.
	var list api.VMList
	if r := c.CLI(ctx, testenv.Witness, "vm", "list", "-o", "json"); r.Exit != 0 || json.Unmarshal([]byte(r.Stdout), &list) != nil || len(list.VMs) != 1 || list.VMs[0].Name != "guest" {
		t.Fatalf("vm list: exit %d: %s %s", r.Exit, r.Stdout, r.Stderr)
	}
	var check api.QuiesceCheckResult
	if r := c.CLI(ctx, testenv.Witness, "vm", "check-quiesce", "guest", "--volumes", "data1,data2", "--require", "application", "-o", "json"); r.Exit != 0 || json.Unmarshal([]byte(r.Stdout), &check) != nil ||
		!reflect.DeepEqual(check.Frozen, []string{"/mnt/data1", "/mnt/data2"}) {
		t.Fatalf("vm check-quiesce: exit %d: %s %s", r.Exit, r.Stdout, r.Stderr)
	}
	if r := c.CLI(ctx, testenv.Witness, "vm", "show", "no-such-vm"); r.Exit != 5 {
		t.Fatalf("vm show of an unknown VM: exit %d, want 5: %s", r.Exit, r.Stderr)
	}

	// Hold the guest frozen through the host and kill the host's daemon
	// meanwhile.
	done := make(chan error, 1)
	go func() {
		_, err := cl.QuiesceCheck(ctx, "guest", api.QuiesceCheckRequest{Volumes: []string{"data1"}, HoldMS: 8000})
		done <- err
	}()
	time.Sleep(3 * time.Second)
	c.Kill(testenv.DataA)
	if err := <-done; err == nil {
		t.Fatalf("the quiesce check survived its host's SIGKILL")
	}
	if st := agentStatus(ctx, t, vm); st != guestagent.Frozen {
		t.Fatalf("after killing the daemon mid-check the guest is %q; the test expected it frozen", st)
	}
	if err := c.Start(ctx, testenv.DataA); err != nil {
		t.Fatalf("restart: %v", err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		st := agentStatus(ctx, t, vm)
		if st == guestagent.Thawed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the restarted daemon did not thaw the guest (status %q)", st)
		}
		time.Sleep(time.Second)
	}
	// And the VM works for the daemon again.
	if _, err := cl.QuiesceCheck(ctx, "guest", api.QuiesceCheckRequest{}); err != nil {
		t.Fatalf("quiesce check after the restart: %v", err)
	}
}

// agentStatus asks the guest agent directly, on a connection of its own
// that is closed again so that the daemon can reach the agent.
func agentStatus(ctx context.Context, t *testing.T, vm *testenv.VM) guestagent.FreezeStatus {
	t.Helper()
	for i := 0; i < 20; i++ {
		actx, cancel := context.WithTimeout(ctx, 3*time.Second)
		ga, err := vm.Agent(actx)
		if err == nil {
			st, serr := ga.FreezeStatus(actx)
			_ = ga.Close()
			cancel()
			if serr == nil {
				return st
			}
			err = serr
		} else {
			cancel()
		}
		t.Logf("agent status: %v; retrying", err)
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("the guest agent does not answer")
	return ""
}
