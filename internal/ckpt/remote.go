package ckpt

import (
	"encoding/binary"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// remote runs system calls inside a stopped thread of a tracee, as that
// thread: the way to read or set state that only the process itself can
// (its signal handlers, its timers, its memory layout).
type remote struct {
	tid       int
	saved     regs   // the thread's registers when we took it over
	syscallAt uint64 // address of a syscall instruction in the tracee
	// pokedAt and poked undo a syscall instruction we wrote over the
	// tracee's code, if we did.
	pokedAt uint64
	poked   []byte
	// scratch is a page of the tracee's memory we may use for arguments.
	scratch uint64
}

// newRemote takes over a stopped thread. It writes a syscall instruction
// over the code at its instruction pointer (put back by close).
func newRemote(tid int) (*remote, error) {
	r := &remote{tid: tid}
	if err := unix.PtraceGetRegs(tid, &r.saved); err != nil {
		return nil, fmt.Errorf("read the registers of thread %d: %w", tid, err)
	}
	r.pokedAt = r.saved.Rip
	r.poked = make([]byte, 8)
	if _, err := unix.PtracePeekText(tid, uintptr(r.pokedAt), r.poked); err != nil {
		return nil, fmt.Errorf("read the code of thread %d: %w", tid, err)
	}
	code := append([]byte(nil), r.poked...)
	code[0], code[1] = 0x0f, 0x05 // syscall
	if _, err := unix.PtracePokeText(tid, uintptr(r.pokedAt), code); err != nil {
		return nil, fmt.Errorf("write into the code of thread %d: %w", tid, err)
	}
	r.syscallAt = r.pokedAt
	return r, nil
}

// close puts back the code and the registers.
func (r *remote) close() error {
	if r.poked != nil {
		if _, err := unix.PtracePokeText(r.tid, uintptr(r.pokedAt), r.poked); err != nil {
			return fmt.Errorf("restore the code of thread %d: %w", r.tid, err)
		}
		r.poked = nil
	}
	if err := unix.PtraceSetRegs(r.tid, &r.saved); err != nil {
		return fmt.Errorf("restore the registers of thread %d: %w", r.tid, err)
	}
	return nil
}

// call runs one system call in the tracee and returns its result. The
// thread goes from its stop to the syscall's entry and exit stops
// (PTRACE_SYSCALL) and is stopped again when call returns.
func (r *remote) call(nr uintptr, args ...uint64) (uint64, error) {
	ret, err := r.enter(nr, args...)
	if err != nil {
		return 0, err
	}
	return ret()
}

// enter starts a system call and returns a function that completes it.
// Between the two the thread is at the syscall's exit stop: whatever the
// caller does there (set the final registers) takes effect when it resumes,
// without running another instruction of the tracee.
func (r *remote) enter(nr uintptr, args ...uint64) (func() (uint64, error), error) {
	rg := r.saved
	rg.Rax = uint64(nr)
	rg.Orig_rax = ^uint64(0) // no syscall restart on the way out of our stop
	a := make([]uint64, 6)
	copy(a, args)
	rg.Rdi, rg.Rsi, rg.Rdx, rg.R10, rg.R8, rg.R9 = a[0], a[1], a[2], a[3], a[4], a[5]
	rg.Rip = r.syscallAt
	if err := unix.PtraceSetRegs(r.tid, &rg); err != nil {
		return nil, fmt.Errorf("set up system call %d in thread %d: %w", nr, r.tid, err)
	}
	if err := r.stepSyscall(); err != nil { // to the syscall's entry
		return nil, err
	}
	if err := r.stepSyscall(); err != nil { // to its exit
		return nil, err
	}
	return func() (uint64, error) {
		if err := unix.PtraceGetRegs(r.tid, &rg); err != nil {
			return 0, err
		}
		if v := int64(rg.Rax); v < 0 && v > -4096 {
			return 0, fmt.Errorf("system call %d in the process: %w", nr, syscall.Errno(-v))
		}
		return rg.Rax, nil
	}, nil
}

// stepSyscall runs the thread to its next syscall stop.
func (r *remote) stepSyscall() error {
	if err := unix.PtraceSyscall(r.tid, 0); err != nil {
		return fmt.Errorf("run thread %d to a system call: %w", r.tid, err)
	}
	ws, err := waitStop(r.tid)
	if err != nil {
		return err
	}
	if !ws.Stopped() || ws.StopSignal() != syscall.SIGTRAP|0x80 {
		return fmt.Errorf("thread %d stopped by %v instead of at a system call", r.tid, ws)
	}
	return nil
}

// write copies b into the tracee's memory at addr, even into read-only
// pages (as a debugger writes breakpoints).
func (r *remote) write(addr uint64, b []byte) error {
	f, err := memFile(r.tid)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.WriteAt(b, int64(addr)); err != nil {
		return fmt.Errorf("write %d bytes at %#x in thread %d: %w", len(b), addr, r.tid, err)
	}
	return nil
}

// read copies the tracee's memory at addr into b.
func (r *remote) read(addr uint64, b []byte) error {
	f, err := memFile(r.tid)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.ReadAt(b, int64(addr)); err != nil {
		return fmt.Errorf("read %d bytes at %#x in thread %d: %w", len(b), addr, r.tid, err)
	}
	return nil
}

// callScratch runs a system call whose arguments point into the scratch
// page: in is written at the start of it, and out (if any) is read back
// from offset outAt.
func (r *remote) callScratch(nr uintptr, in []byte, outAt int, out []byte, args ...uint64) (uint64, error) {
	if r.scratch == 0 {
		return 0, fmt.Errorf("no scratch page in thread %d", r.tid)
	}
	if len(in) > 0 {
		if err := r.write(r.scratch, in); err != nil {
			return 0, err
		}
	}
	ret, err := r.call(nr, args...)
	if err != nil {
		return 0, err
	}
	if len(out) > 0 {
		if err := r.read(r.scratch+uint64(outAt), out); err != nil {
			return 0, err
		}
	}
	return ret, nil
}

// cString is s with a terminating NUL.
func cString(s string) []byte { return append([]byte(s), 0) }

func le64(vs ...uint64) []byte {
	b := make([]byte, 8*len(vs))
	for i, v := range vs {
		binary.LittleEndian.PutUint64(b[8*i:], v)
	}
	return b
}
