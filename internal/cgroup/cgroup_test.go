package cgroup

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

func needCgroups(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates cgroups")
	}
	if err := Available(DefaultRoot); err != nil {
		t.Skipf("no cgroup v1 cpu and memory controllers here: %v", err)
	}
}

func TestGroupLifecycle(t *testing.T) {
	needCgroups(t)
	top := fmt.Sprintf("mosaic-test-cgroup-%d", os.Getpid())
	rel := filepath.Join(top, "cluster", "n1")
	g, err := Create(DefaultRoot, rel, 0.5)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Destroy()
	quota, _ := os.ReadFile(filepath.Join(g.CPUPath(), "cpu.cfs_quota_us"))
	if strings.TrimSpace(string(quota)) != "50000" {
		t.Fatalf("quota = %q, want 50000 (half of a 100000 µs period)", quota)
	}
	// Memory is charged to the group it is allocated in: the process
	// allocates (exec) only after it was moved.
	cmd := exec.Command("sh", "-c", "sleep 0.3; exec sleep 60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan struct{})
	go func() { cmd.Wait(); close(waited) }()
	if err := g.AddProc(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	procs, err := g.Procs()
	if err != nil || !slices.Contains(procs, cmd.Process.Pid) {
		t.Fatalf("Procs = %v, %v; want %d", procs, err, cmd.Process.Pid)
	}
	tasks, _ := g.Tasks()
	if !slices.Contains(tasks, cmd.Process.Pid) {
		t.Fatalf("Tasks = %v", tasks)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		u, err := g.MemoryUsage()
		if err != nil {
			t.Fatal(err)
		}
		if u > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the group's memory use stays 0 after its process allocated")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := g.SetQuota(0); err != nil {
		t.Fatal(err)
	}
	quota, _ = os.ReadFile(filepath.Join(g.CPUPath(), "cpu.cfs_quota_us"))
	if strings.TrimSpace(string(quota)) != "-1" {
		t.Fatalf("unlimited quota = %q", quota)
	}
	if err := g.SetQuota(0.001); err == nil {
		t.Fatal("a quota below the kernel's minimum was accepted")
	}

	// Destroy kills what runs inside and removes the group and its empty parents.
	if err := g.Destroy(); err != nil {
		t.Fatal(err)
	}
	<-waited
	for _, c := range []string{"cpu", "memory"} {
		if _, err := os.Stat(filepath.Join(DefaultRoot, c, top)); err == nil {
			t.Errorf("%s/%s left behind", c, top)
		}
	}
	if err := g.Destroy(); err != nil {
		t.Fatalf("second Destroy: %v", err)
	}
}

// cgroupOf is pid's group in one controller.
func cgroupOf(t *testing.T, pid int, controller string) string {
	t.Helper()
	g, err := Of(pid, controller)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// offMainThread runs fn locked to a thread that ends with it. Not the
// process's main thread: the runtime cannot end that one and parks it for
// good instead, and a group it had joined could never be removed (the
// test left such groups behind now and then). The goroutine that lands on
// the main thread holds it while another, necessarily elsewhere, runs fn.
func offMainThread(fn func()) {
	runtime.LockOSThread()
	if syscall.Gettid() == os.Getpid() {
		done := make(chan struct{})
		go offMainThread(func() { defer close(done); fn() })
		<-done
		runtime.UnlockOSThread()
		return
	}
	fn()
	// Returning locked ends the thread.
}

// A process restored by a thread in the group's memory controller only
// is charged there from the start and comes under the CPU quota when
// capped; uncapped, it goes back to the caller's CPU group, its memory
// staying charged to the group.
func TestMemoryOnlyThenCapped(t *testing.T) {
	needCgroups(t)
	top := fmt.Sprintf("mosaic-test-cgroup-%d", os.Getpid())
	g, err := Create(DefaultRoot, filepath.Join(top, "cluster", "n1"), 0.5)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Destroy()
	own := cgroupOf(t, os.Getpid(), "cpu")
	want := "/" + filepath.Join(top, "cluster", "n1")

	// A thread of this test in the memory group only forks the process.
	started := make(chan *exec.Cmd, 1)
	errc := make(chan error, 1)
	go offMainThread(func() { // the thread dies with the goroutine, out of the group
		if err := g.AddThreadMemory(syscall.Gettid()); err != nil {
			errc <- err
			return
		}
		cmd := exec.Command("sleep", "60")
		if err := cmd.Start(); err != nil {
			errc <- err
			return
		}
		started <- cmd
	})
	var cmd *exec.Cmd
	select {
	case err := <-errc:
		t.Fatal(err)
	case cmd = <-started:
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	pid := cmd.Process.Pid
	if got := cgroupOf(t, pid, "memory"); got != want {
		t.Fatalf("memory group %q, want %q", got, want)
	}
	if got := cgroupOf(t, pid, "cpu"); got != own {
		t.Fatalf("cpu group before CapCPU %q, want the caller's %q", got, own)
	}
	if err := g.CapCPU(pid); err != nil {
		t.Fatal(err)
	}
	if got := cgroupOf(t, pid, "cpu"); got != want {
		t.Fatalf("cpu group after CapCPU %q, want %q", got, want)
	}
	if procs, _ := g.Procs(); !slices.Contains(procs, pid) {
		t.Fatalf("Procs = %v after CapCPU, want %d in it", procs, pid)
	}
	if err := g.UncapCPU(pid); err != nil {
		t.Fatal(err)
	}
	if got := cgroupOf(t, pid, "cpu"); got != own {
		t.Fatalf("cpu group after UncapCPU %q, want the caller's %q", got, own)
	}
	if got := cgroupOf(t, pid, "memory"); got != want {
		t.Fatalf("memory group after UncapCPU %q, want %q", got, want)
	}
}
