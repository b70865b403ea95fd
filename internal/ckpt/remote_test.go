package ckpt

import (
	"errors"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// A batch longer than the work area's table runs in several rounds: every
// call runs, in order, and each result comes back to its call.
func TestBatchLongerThanTable(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (ptrace of a child under any ptrace_scope)")
	}
	runtime.LockOSThread() // the tracer is this thread
	defer runtime.UnlockOSThread()
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	pid := cmd.Process.Pid
	if err := ptrace(unix.PTRACE_SEIZE, pid, 0, unix.PTRACE_O_TRACESYSGOOD); err != nil {
		t.Fatalf("seize %d: %v", pid, err)
	}
	if err := unix.PtraceInterrupt(pid); err != nil {
		t.Fatal(err)
	}
	if _, err := waitStop(pid); err != nil {
		t.Fatal(err)
	}
	r, err := newRemote(pid)
	if err != nil {
		t.Fatal(err)
	}
	work, err := r.call(unix.SYS_MMAP, 0, workPages*pageSize, unix.PROT_READ|unix.PROT_WRITE|unix.PROT_EXEC,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.useWorkArea(work); err != nil {
		t.Fatal(err)
	}
	// getpid, then prctl(PR_GET_DUMPABLE) answered 1, then a call that
	// fails (close of a descriptor the process does not have), in turn.
	var calls []sysCall
	for len(calls) < 2*batchEntries+5 {
		calls = append(calls, sc(unix.SYS_GETPID), sc(unix.SYS_PRCTL, unix.PR_GET_DUMPABLE), sc(unix.SYS_CLOSE, 1000+uint64(len(calls))))
	}
	errs, rets, err := r.batch(calls)
	if err != nil {
		t.Fatal(err)
	}
	if len(errs) != len(calls) || len(rets) != len(calls) {
		t.Fatalf("%d calls gave %d errors and %d results", len(calls), len(errs), len(rets))
	}
	for i := range calls {
		switch i % 3 {
		case 0:
			if errs[i] != nil || rets[i] != uint64(pid) {
				t.Fatalf("call %d, getpid: %d, %v; want %d", i, rets[i], errs[i], pid)
			}
		case 1:
			if errs[i] != nil || rets[i] != 1 {
				t.Fatalf("call %d, prctl(PR_GET_DUMPABLE): %d, %v; want 1", i, rets[i], errs[i])
			}
		case 2:
			if errs[i] == nil || !errors.Is(errs[i], syscall.EBADF) {
				t.Fatalf("call %d, close of no descriptor: %d, %v; want EBADF", i, rets[i], errs[i])
			}
		}
	}
	if _, err := r.call(unix.SYS_MUNMAP, work, workPages*pageSize); err != nil {
		t.Fatal(err)
	}
	if err := r.close(); err != nil {
		t.Fatal(err)
	}
	if err := ptrace(unix.PTRACE_DETACH, pid, 0, 0); err != nil {
		t.Fatal(err)
	}
	// It runs on as it was: sleep ends on SIGTERM as ever.
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err == nil || cmd.ProcessState.Sys().(syscall.WaitStatus).Signal() != syscall.SIGTERM {
		t.Fatalf("the process after the batches: %v", err)
	}
}
