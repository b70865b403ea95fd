package ckpt

import (
	"errors"
	"fmt"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// This file wraps the ptrace requests the engine uses. Every one of them
// must come from the OS thread that attached the tracee (callers lock
// their goroutine to a thread for a whole dump or restore).

// regs are a thread's general-purpose registers.
type regs = unix.PtraceRegs

func ptrace(req int, pid int, addr, data uintptr) error {
	_, _, e := syscall.Syscall6(syscall.SYS_PTRACE, uintptr(req), uintptr(pid), addr, data, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// getXState reads a thread's extended FPU state (XSAVE area, AVX and all).
func getXState(tid int) ([]byte, error) {
	buf := make([]byte, 64<<10)
	iov := unix.Iovec{Base: &buf[0]}
	iov.SetLen(len(buf))
	if err := ptrace(unix.PTRACE_GETREGSET, tid, unix.NT_X86_XSTATE, uintptr(unsafe.Pointer(&iov))); err != nil {
		return nil, fmt.Errorf("read the FPU state of thread %d: %w", tid, err)
	}
	return buf[:iov.Len], nil
}

func setXState(tid int, xs []byte) error {
	if len(xs) == 0 {
		return nil
	}
	buf := append([]byte(nil), xs...)
	iov := unix.Iovec{Base: &buf[0]}
	iov.SetLen(len(buf))
	if err := ptrace(unix.PTRACE_SETREGSET, tid, unix.NT_X86_XSTATE, uintptr(unsafe.Pointer(&iov))); err != nil {
		return fmt.Errorf("write the FPU state of thread %d: %w", tid, err)
	}
	return nil
}

func getSigmask(tid int) (uint64, error) {
	var mask uint64
	if err := ptrace(unix.PTRACE_GETSIGMASK, tid, 8, uintptr(unsafe.Pointer(&mask))); err != nil {
		return 0, fmt.Errorf("read the signal mask of thread %d: %w", tid, err)
	}
	return mask, nil
}

func setSigmask(tid int, mask uint64) error {
	if err := ptrace(unix.PTRACE_SETSIGMASK, tid, 8, uintptr(unsafe.Pointer(&mask))); err != nil {
		return fmt.Errorf("write the signal mask of thread %d: %w", tid, err)
	}
	return nil
}

// rseqConfig is struct ptrace_rseq_configuration.
type rseqConfig struct {
	Addr    uint64
	Len     uint32
	Flags   uint32
	Sig     uint32
	Padding uint32
}

func getRseq(tid int) (rseqConfig, error) {
	var c rseqConfig
	if err := ptrace(unix.PTRACE_GET_RSEQ_CONFIGURATION, tid, unsafe.Sizeof(c), uintptr(unsafe.Pointer(&c))); err != nil {
		return c, fmt.Errorf("read the rseq registration of thread %d: %w", tid, err)
	}
	return c, nil
}

// pendingSignals reads the signals queued for a thread (shared=false) or
// its process (shared=true), as raw siginfo structs of 128 bytes.
func pendingSignals(tid int, shared bool) ([][]byte, error) {
	var out [][]byte
	for off := uint64(0); ; {
		args := struct {
			Off   uint64
			Flags uint32
			Nr    int32
		}{Off: off, Nr: 32}
		if shared {
			args.Flags = 1 // PTRACE_PEEKSIGINFO_SHARED
		}
		buf := make([]byte, 128*32)
		n, _, e := syscall.Syscall6(syscall.SYS_PTRACE, unix.PTRACE_PEEKSIGINFO, uintptr(tid),
			uintptr(unsafe.Pointer(&args)), uintptr(unsafe.Pointer(&buf[0])), 0, 0)
		if e != 0 {
			return nil, fmt.Errorf("read the pending signals of thread %d: %w", tid, e)
		}
		for i := range int(n) {
			out = append(out, buf[i*128:(i+1)*128])
		}
		if int(n) < 32 {
			return out, nil
		}
		off += uint64(n)
	}
}

// waitStop waits until tid is in a ptrace stop and returns its status.
func waitStop(tid int) (syscall.WaitStatus, error) {
	for {
		var ws syscall.WaitStatus
		_, err := syscall.Wait4(tid, &ws, syscall.WALL, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			return ws, fmt.Errorf("wait for thread %d: %w", tid, err)
		}
		if ws.Exited() || ws.Signaled() {
			return ws, fmt.Errorf("thread %d ended (%v) while being traced", tid, ws)
		}
		return ws, nil
	}
}
