package runclient

import (
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// dieOf ends this process by sig, as the program it ran ended, so that the
// shell sees the same status (128+n, "Segmentation fault", ...). The Go
// runtime keeps its own handlers for signals such as SIGSEGV even after
// signal.Reset (it would print a crash report instead of dying), so the
// default action is restored with rt_sigaction directly.
func dieOf(sig syscall.Signal) {
	// No core file of this client: the core, if any, was the program's.
	unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{})
	var act struct { // struct kernel_sigaction on linux/amd64
		handler  uintptr // SIG_DFL
		flags    uint64
		restorer uintptr
		mask     uint64
	}
	syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, uintptr(sig), uintptr(unsafe.Pointer(&act)), 0, 8, 0, 0)
	var set unix.Sigset_t
	set.Val[0] = 1 << (uint(sig) - 1)
	unix.PthreadSigmask(unix.SIG_UNBLOCK, &set, nil)
	unix.Tgkill(os.Getpid(), unix.Gettid(), sig)
	syscall.Kill(os.Getpid(), sig)
}
