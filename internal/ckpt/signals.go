package ckpt

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"
)

// Signal dispositions, the alternate signal stack and interval timers:
// the process's own view of them, read and set by system calls run inside
// it. (Masks come and go with ptrace directly, see dump.go and restore.go.)

func dumpSigactions(r *remote) ([]Sigaction, error) {
	var out []Sigaction
	for sig := 1; sig <= 64; sig++ {
		if sig == int(unix.SIGKILL) || sig == int(unix.SIGSTOP) {
			continue
		}
		old := make([]byte, 32)
		if _, err := r.callScratch(unix.SYS_RT_SIGACTION, nil, 0, old, uint64(sig), 0, r.scratch, 8); err != nil {
			if sig >= 32 && sig <= 33 {
				continue // glibc's internal signals may be refused on some kernels
			}
			return nil, fmt.Errorf("read the action of signal %d: %w", sig, err)
		}
		a := Sigaction{Signal: sig, Handler: binary.LittleEndian.Uint64(old[0:]), Flags: binary.LittleEndian.Uint64(old[8:]),
			Restorer: binary.LittleEndian.Uint64(old[16:]), Mask: binary.LittleEndian.Uint64(old[24:])}
		if a.Handler != 0 || a.Flags != 0 || a.Mask != 0 {
			out = append(out, a)
		}
	}
	return out, nil
}

func restoreSigactions(r *remote, as []Sigaction) error {
	for _, a := range as {
		act := le64(a.Handler, a.Flags, a.Restorer, a.Mask)
		if _, err := r.callScratch(unix.SYS_RT_SIGACTION, act, 0, nil, uint64(a.Signal), r.scratch, 0, 8); err != nil {
			return fmt.Errorf("set the action of signal %d: %w", a.Signal, err)
		}
	}
	return nil
}

// dumpAltStack reads the thread's alternate signal stack (stack_t).
func dumpAltStack(r *remote) ([3]uint64, error) {
	b := make([]byte, 24)
	if _, err := r.callScratch(unix.SYS_SIGALTSTACK, nil, 0, b, 0, r.scratch); err != nil {
		return [3]uint64{}, fmt.Errorf("read the alternate signal stack: %w", err)
	}
	return [3]uint64{binary.LittleEndian.Uint64(b[0:]), binary.LittleEndian.Uint64(b[8:]), binary.LittleEndian.Uint64(b[16:])}, nil
}

func restoreAltStack(r *remote, ss [3]uint64) error {
	if ss[2] == 0 || ss[1]&ssDisable != 0 {
		return nil
	}
	flags := ss[1] &^ ssOnStack // the kernel works it out from the stack pointer
	if _, err := r.callScratch(unix.SYS_SIGALTSTACK, le64(ss[0], flags, ss[2]), 0, nil, r.scratch, 0); err != nil {
		return fmt.Errorf("set the alternate signal stack: %w", err)
	}
	return nil
}

func dumpTimers(r *remote) ([3]ITimer, error) {
	var out [3]ITimer
	for which := range 3 {
		b := make([]byte, 32)
		if _, err := r.callScratch(unix.SYS_GETITIMER, nil, 0, b, uint64(which), r.scratch); err != nil {
			return out, fmt.Errorf("read interval timer %d: %w", which, err)
		}
		tv := func(o int) int64 {
			return int64(binary.LittleEndian.Uint64(b[o:]))*1e6 + int64(binary.LittleEndian.Uint64(b[o+8:]))
		}
		out[which] = ITimer{IntervalUs: tv(0), ValueUs: tv(16)}
	}
	return out, nil
}

func restoreTimers(r *remote, ts [3]ITimer) error {
	for which, t := range ts {
		if t.ValueUs == 0 && t.IntervalUs == 0 {
			continue
		}
		v := le64(uint64(t.IntervalUs/1e6), uint64(t.IntervalUs%1e6), uint64(t.ValueUs/1e6), uint64(t.ValueUs%1e6))
		if _, err := r.callScratch(unix.SYS_SETITIMER, v, 0, nil, uint64(which), r.scratch, 0); err != nil {
			return fmt.Errorf("set interval timer %d: %w", which, err)
		}
	}
	return nil
}

// stack_t flags.
const (
	ssOnStack = 1
	ssDisable = 2
)
