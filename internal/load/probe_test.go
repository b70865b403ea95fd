package load

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/cgroup"
)

func TestMachineProbe(t *testing.T) {
	p := MachineProbe{}
	if _, err := p.RunQueue(); err != nil {
		t.Fatal(err)
	}
	if n, err := p.Procs(); err != nil || n < 1 {
		t.Fatalf("Procs = %d, %v", n, err)
	}
	total, free, err := p.Memory()
	if err != nil || total == 0 || free > total {
		t.Fatalf("Memory = %d, %d, %v", total, free, err)
	}
	capped := MachineProbe{MemCap: 1 << 20}
	ct, cf, _ := capped.Memory()
	if ct != 1<<20 || cf > ct {
		t.Fatalf("capped Memory = %d, %d", ct, cf)
	}
}

// TestGroupProbeCountsOnlyItsGroup runs a busy process inside a group and
// checks that the group's run queue sees it.
func TestGroupProbeCountsOnlyItsGroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates cgroups")
	}
	if err := cgroup.Available(cgroup.DefaultRoot); err != nil {
		t.Skipf("no cgroup v1 here: %v", err)
	}
	g, err := cgroup.Create(cgroup.DefaultRoot, filepath.Join(fmt.Sprintf("mosaic-test-load-%d", os.Getpid()), "probe"), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Destroy()
	p := GroupProbe{Group: g, MemCap: 1 << 30}
	if q, _ := p.RunQueue(); q != 0 {
		t.Fatalf("empty group has run queue %d", q)
	}
	// The shell waits on its stdin, a builtin, so it never has a child;
	// once in the group it is told to go on and execs the busy loop there,
	// so the loop's memory is charged to the group.
	busy := exec.Command("sh", "-c", "read go; exec sh -c 'while :; do :; done'")
	goOn, err := busy.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := busy.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { busy.Process.Kill(); busy.Wait() }()
	if err := g.AddProc(busy.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if n, _ := p.Procs(); n != 1 {
		t.Fatalf("Procs = %d with one process in the group, want 1", n)
	}
	if _, err := goOn.Write([]byte("go\n")); err != nil {
		t.Fatal(err)
	}
	// A busy process is runnable nearly always; sample until seen.
	seen := false
	for range 200 {
		if q, _ := p.RunQueue(); q == 1 {
			seen = true
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !seen {
		t.Fatal("the busy process in the group was never counted")
	}
	if n, _ := p.Procs(); n != 1 {
		t.Fatalf("Procs = %d with one process in the group, want 1", n)
	}
	// A helper of the node's (a namespace's idle init) is not counted.
	p.Helper = func(pid int) bool { return pid == busy.Process.Pid }
	if n, _ := p.Procs(); n != 0 {
		t.Fatalf("Procs = %d with the only process a helper, want 0", n)
	}
	p.Helper = nil
	deadline := time.Now().Add(5 * time.Second)
	for {
		total, free, err := p.Memory()
		if err != nil || total != 1<<30 {
			t.Fatalf("Memory = %d, %d, %v", total, free, err)
		}
		if free < total {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("free memory stays at the cap while the group uses memory")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestMeasureSpeed(t *testing.T) {
	if s := MeasureSpeed(20 * time.Millisecond); s <= 0 {
		t.Fatalf("speed %v", s)
	}
}
