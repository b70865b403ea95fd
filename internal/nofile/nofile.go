// Package nofile reads the open-file limit (RLIMIT_NOFILE) this process
// was started with, before Go changed it.
//
// Every Go program raises its own soft limit to one below the hard limit
// when its syscall package is initialized (go.dev/issue/46279), and gives
// its children the original back at fork; it keeps the original to itself.
// But mosaic passes limits on: the CLI tells its daemon the limits the
// user's program is to have (a shell's usual 1024 must not arrive as
// 524287), and a daemon compares them with what its own children inherit.
// So this package reads the limit first: it imports nothing but unsafe, so
// it is initialized before syscall (packages are initialized in the order
// of their import paths, each after its imports), and makes the system
// call through syscall's raw entry, which needs no initialization. Link it
// into a binary and every package sees the same value.
package nofile

import "unsafe"

const rlimitNofile = 7 // RLIMIT_NOFILE on every Linux architecture

// Limit is a soft (Cur) and hard (Max) limit.
type Limit struct{ Cur, Max uint64 }

// original is written once, by init, before anything can read it.
var original struct {
	lim Limit
	ok  bool
}

func init() {
	if sysPrlimit64 == 0 {
		return
	}
	// Into a package variable: static memory, which nothing moves while
	// the kernel writes it.
	_, _, errno := rawSyscall6(sysPrlimit64, 0, rlimitNofile, 0, uintptr(unsafe.Pointer(&original.lim)), 0, 0)
	original.ok = errno == 0
}

// Original returns the limit this process had when it started; ok is
// false where it could not be read (an architecture this package does not
// know).
func Original() (lim Limit, ok bool) { return original.lim, original.ok }

// rawSyscall6 is syscall.RawSyscall6, which the syscall package exports
// for linking (its Errno is a uintptr).
//
//go:linkname rawSyscall6 syscall.RawSyscall6
func rawSyscall6(trap, a1, a2, a3, a4, a5, a6 uintptr) (r1, r2, errno uintptr)
