package ckpt

import (
	"encoding/binary"
	"fmt"
	"os"
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
	// scratch is memory of the tracee's we may use for arguments
	// (scratchSize bytes).
	scratch uint64
	// codeAt and tableAt are where batches run, in the work area.
	codeAt, tableAt uint64
	mem             *os.File // the tracee's memory, open while needed
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

// forThread is a remote for another stopped thread of the same process,
// running its calls in r's work area.
func (r *remote) forThread(tid int) (*remote, error) {
	t := &remote{tid: tid, syscallAt: r.codeAt - 64, codeAt: r.codeAt, tableAt: r.tableAt, scratch: r.scratch}
	if err := unix.PtraceGetRegs(tid, &t.saved); err != nil {
		return nil, fmt.Errorf("read the registers of thread %d: %w", tid, err)
	}
	return t, nil
}

// close puts back the code and the registers.
func (r *remote) close() error {
	if r.mem != nil {
		defer func() { r.mem.Close(); r.mem = nil }()
	}
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

// cloneThread starts a new thread in the tracee, which must trace its
// clones (PTRACE_O_TRACECLONE): the thread is returned stopped before its
// first instruction, its registers for the caller to set.
func (r *remote) cloneThread() (int, error) {
	const flags = unix.CLONE_VM | unix.CLONE_FS | unix.CLONE_FILES | unix.CLONE_SIGHAND | unix.CLONE_THREAD | unix.CLONE_SYSVSEM
	return r.clone(flags, unix.PTRACE_EVENT_CLONE)
}

// clone runs clone(flags) in the tracee, which must trace the kind of
// child it makes (event: PTRACE_EVENT_CLONE for a thread, _FORK for a
// process, with the matching option), and returns the child stopped
// before its first instruction.
func (r *remote) clone(flags uint64, event int) (int, error) {
	rg := r.saved
	rg.Rax, rg.Orig_rax = unix.SYS_CLONE, ^uint64(0)
	rg.Rdi, rg.Rsi, rg.Rdx, rg.R10, rg.R8 = flags, 0, 0, 0, 0
	rg.Rip = r.syscallAt
	if err := unix.PtraceSetRegs(r.tid, &rg); err != nil {
		return 0, fmt.Errorf("set up a clone in thread %d: %w", r.tid, err)
	}
	if err := r.stepSyscall(); err != nil { // entry
		return 0, err
	}
	if err := unix.PtraceSyscall(r.tid, 0); err != nil {
		return 0, err
	}
	ws, err := waitStop(r.tid)
	if err != nil {
		return 0, err
	}
	if ws.StopSignal() != syscall.SIGTRAP || ws.TrapCause() != event {
		return 0, fmt.Errorf("thread %d stopped by %v instead of at its clone", r.tid, ws)
	}
	msg, err := unix.PtraceGetEventMsg(r.tid)
	if err != nil {
		return 0, err
	}
	tid := int(msg)
	if err := r.stepSyscall(); err != nil { // exit
		return 0, err
	}
	// The new thread stops first thing (it is traced, with a SIGSTOP).
	if _, err := waitStop(tid); err != nil {
		return 0, err
	}
	return tid, nil
}

// stepSyscall runs the thread to its next syscall stop.
//
// A thread whose first stop at the freeze was a signal's delivery still has
// the freeze's interrupt pending: it reports it, as an interrupt stop, the
// first time it is let go. That stop carries no signal, so the thread is
// simply let go again.
func (r *remote) stepSyscall() error {
	for range 3 {
		if err := unix.PtraceSyscall(r.tid, 0); err != nil {
			return fmt.Errorf("run thread %d to a system call: %w", r.tid, err)
		}
		ws, err := waitStop(r.tid)
		if err != nil {
			return err
		}
		if ws.Stopped() && ws.StopSignal() == syscall.SIGTRAP && ws.TrapCause() == unix.PTRACE_EVENT_STOP {
			continue
		}
		if !ws.Stopped() || ws.StopSignal() != syscall.SIGTRAP|0x80 {
			return fmt.Errorf("thread %d stopped by %v instead of at a system call", r.tid, ws)
		}
		return nil
	}
	return fmt.Errorf("thread %d stopped for interrupts over and over instead of at a system call", r.tid)
}

// memory is the tracee's memory file, opened once.
func (r *remote) memory() (*os.File, error) {
	if r.mem == nil {
		f, err := memFile(r.tid)
		if err != nil {
			return nil, err
		}
		r.mem = f
	}
	return r.mem, nil
}

// write copies b into the tracee's memory at addr, even into read-only
// pages (as a debugger writes breakpoints).
func (r *remote) write(addr uint64, b []byte) error {
	f, err := r.memory()
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(b, int64(addr)); err != nil {
		return fmt.Errorf("write %d bytes at %#x in thread %d: %w", len(b), addr, r.tid, err)
	}
	return nil
}

// read copies the tracee's memory at addr into b.
func (r *remote) read(addr uint64, b []byte) error {
	f, err := r.memory()
	if err != nil {
		return err
	}
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

// Batches. Each system call run by call costs two trips through ptrace
// stops (tens of microseconds); a process has dozens to read or set (a
// signal action each, a mapping each). A batch runs many in one trip: a
// small loop, written into the tracee's work area, makes every call of a
// table there and stores its result, then stops at a breakpoint.
//
// The loop, at codeAt, with r12 the table and r13 its length; each entry
// is 8 words: the call's number, its six arguments and its result.
//
//	0:  test r13, r13        ; 4d 85 ed
//	    je done              ; 74 32
//	    mov rax, [r12]       ; 49 8b 04 24
//	    mov rdi, [r12+8]     ; 49 8b 7c 24 08
//	    mov rsi, [r12+16]    ; 49 8b 74 24 10
//	    mov rdx, [r12+24]    ; 49 8b 54 24 18
//	    mov r10, [r12+32]    ; 4d 8b 54 24 20
//	    mov r8,  [r12+40]    ; 4d 8b 44 24 28
//	    mov r9,  [r12+48]    ; 4d 8b 4c 24 30
//	    syscall              ; 0f 05
//	    mov [r12+56], rax    ; 49 89 44 24 38
//	    add r12, 64          ; 49 83 c4 40
//	    dec r13              ; 49 ff cd
//	    jmp 0                ; eb c9
//	done: int3               ; cc
var batchCode = []byte{
	0x4d, 0x85, 0xed, 0x74, 0x32,
	0x49, 0x8b, 0x04, 0x24,
	0x49, 0x8b, 0x7c, 0x24, 0x08,
	0x49, 0x8b, 0x74, 0x24, 0x10,
	0x49, 0x8b, 0x54, 0x24, 0x18,
	0x4d, 0x8b, 0x54, 0x24, 0x20,
	0x4d, 0x8b, 0x44, 0x24, 0x28,
	0x4d, 0x8b, 0x4c, 0x24, 0x30,
	0x0f, 0x05,
	0x49, 0x89, 0x44, 0x24, 0x38,
	0x49, 0x83, 0xc4, 0x40,
	0x49, 0xff, 0xcd,
	0xeb, 0xc9,
	0xcc,
}

// The work area a remote needs for batches: a page of code, the table,
// and scratch pages for the calls' data. The table holds 128 calls: a
// freeze's first batch (the break, all 64 signal actions, the interval
// timers...) and a restore's make 70 or more, and each table's worth is a
// round trip to the process (0.1-0.3 ms in a busy daemon).
const (
	tablePages   = 2
	workPages    = 1 + tablePages + 2
	batchEntry   = 64
	batchEntries = tablePages * pageSize / batchEntry
	scratchSize  = 2 * pageSize
)

// useWorkArea makes the remote run batches in the work area at base
// (workPages pages, readable, writable and executable). Its code page
// starts with a syscall instruction (for single calls, see
// useOwnSyscall), the batch loop follows.
func (r *remote) useWorkArea(base uint64) error {
	r.codeAt, r.tableAt, r.scratch = base+64, base+pageSize, base+(1+tablePages)*pageSize
	code := make([]byte, 64+len(batchCode))
	copy(code, []byte{0x0f, 0x05, 0xcc, 0xcc})
	copy(code[64:], batchCode)
	return r.write(base, code)
}

// useOwnSyscall makes single calls use the work area's syscall
// instruction at base, and puts back the code it wrote over the
// process's (so that nothing of it is left in the process if it dies).
func (r *remote) useOwnSyscall(base uint64) error {
	if r.poked != nil {
		if _, err := unix.PtracePokeText(r.tid, uintptr(r.pokedAt), r.poked); err != nil {
			return fmt.Errorf("restore the code of thread %d: %w", r.tid, err)
		}
		r.poked = nil
	}
	r.syscallAt = base
	return nil
}

// sysCall is one system call of a batch.
type sysCall struct {
	nr   uintptr
	args [6]uint64
}

func sc(nr uintptr, args ...uint64) sysCall {
	c := sysCall{nr: nr}
	copy(c.args[:], args)
	return c
}

// batchWith writes data at the start of the scratch memory (the calls'
// arguments point into it) and runs the calls.
func (r *remote) batchWith(data []byte, calls []sysCall) ([]error, []uint64, error) {
	if len(data) > scratchSize {
		return nil, nil, fmt.Errorf("%d bytes of arguments do not fit the scratch memory", len(data))
	}
	if err := r.write(r.scratch, data); err != nil {
		return nil, nil, err
	}
	return r.batch(calls)
}

// batch runs calls in the tracee, in order, and returns their results (a
// failed call's is its error; the calls after it run all the same).
func (r *remote) batch(calls []sysCall) ([]error, []uint64, error) {
	if r.codeAt == 0 {
		return nil, nil, fmt.Errorf("no work area in thread %d", r.tid)
	}
	errs := make([]error, 0, len(calls))
	rets := make([]uint64, 0, len(calls))
	for len(calls) > 0 {
		n := min(len(calls), batchEntries)
		table := make([]byte, n*batchEntry)
		for i, c := range calls[:n] {
			e := table[i*batchEntry:]
			binary.LittleEndian.PutUint64(e, uint64(c.nr))
			for k, a := range c.args {
				binary.LittleEndian.PutUint64(e[8+8*k:], a)
			}
		}
		if err := r.write(r.tableAt, table); err != nil {
			return nil, nil, err
		}
		rg := r.saved
		rg.Rip, rg.R12, rg.R13 = r.codeAt, r.tableAt, uint64(n)
		rg.Orig_rax = ^uint64(0) // no syscall restart on the way out of our stop
		if err := unix.PtraceSetRegs(r.tid, &rg); err != nil {
			return nil, nil, fmt.Errorf("set up system calls in thread %d: %w", r.tid, err)
		}
		if err := unix.PtraceCont(r.tid, 0); err != nil {
			return nil, nil, fmt.Errorf("run system calls in thread %d: %w", r.tid, err)
		}
		ws, err := waitStop(r.tid)
		if err != nil {
			return nil, nil, err
		}
		if err := unix.PtraceGetRegs(r.tid, &rg); err != nil {
			return nil, nil, err
		}
		if ws.StopSignal() != syscall.SIGTRAP || rg.Rip != r.codeAt+uint64(len(batchCode)) {
			return nil, nil, fmt.Errorf("thread %d stopped by %v at %#x while running system calls", r.tid, ws, rg.Rip)
		}
		if err := r.read(r.tableAt, table); err != nil {
			return nil, nil, err
		}
		for i, c := range calls[:n] {
			v := binary.LittleEndian.Uint64(table[i*batchEntry+56:])
			if e := int64(v); e < 0 && e > -4096 {
				errs = append(errs, fmt.Errorf("system call %d in the process: %w", c.nr, syscall.Errno(-e)))
				v = 0
			} else {
				errs = append(errs, nil)
			}
			rets = append(rets, v)
		}
		calls = calls[n:]
	}
	return errs, rets, nil
}
