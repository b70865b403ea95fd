package ckpt

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"
)

// Signal dispositions, the alternate signal stack and interval timers:
// the process's own view of them, read and set by system calls run inside
// it. (Masks come and go with ptrace directly, see dump.go and restore.go.)

// sigactionCalls are the calls that read every signal's action, each
// into 32 bytes of the scratch memory at out (64 signals: 2 KiB).
func sigactionCalls(out uint64) []sysCall {
	var calls []sysCall
	for sig := uint64(1); sig <= 64; sig++ {
		calls = append(calls, sc(unix.SYS_RT_SIGACTION, sig, 0, out+32*(sig-1), 8))
	}
	return calls
}

// parseSigactions reads what sigactionCalls wrote; errs are their results.
func parseSigactions(b []byte, errs []error) ([]Sigaction, error) {
	var out []Sigaction
	for i, err := range errs {
		sig := i + 1
		if err != nil {
			if sig == int(unix.SIGKILL) || sig == int(unix.SIGSTOP) || (sig >= 32 && sig <= 33) {
				continue // glibc's internal signals may be refused on some kernels
			}
			return nil, fmt.Errorf("read the action of signal %d: %w", sig, err)
		}
		old := b[32*i:]
		a := Sigaction{Signal: sig, Handler: binary.LittleEndian.Uint64(old[0:]), Flags: binary.LittleEndian.Uint64(old[8:]),
			Restorer: binary.LittleEndian.Uint64(old[16:]), Mask: binary.LittleEndian.Uint64(old[24:])}
		if a.Handler != 0 || a.Flags != 0 || a.Mask != 0 {
			out = append(out, a)
		}
	}
	return out, nil
}

func restoreSigactions(r *remote, as []Sigaction) error {
	if len(as) == 0 {
		return nil
	}
	var acts []byte
	var calls []sysCall
	for i, a := range as {
		acts = append(acts, le64(a.Handler, a.Flags, a.Restorer, a.Mask)...)
		calls = append(calls, sc(unix.SYS_RT_SIGACTION, uint64(a.Signal), r.scratch+uint64(32*i), 0, 8))
	}
	if err := r.write(r.scratch, acts); err != nil {
		return err
	}
	errs, _, err := r.batch(calls)
	if err != nil {
		return err
	}
	for i, err := range errs {
		if err != nil {
			return fmt.Errorf("set the action of signal %d: %w", as[i].Signal, err)
		}
	}
	return nil
}

func parseAltStack(b []byte) [3]uint64 {
	return [3]uint64{binary.LittleEndian.Uint64(b[0:]), binary.LittleEndian.Uint64(b[8:]), binary.LittleEndian.Uint64(b[16:])}
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

// parseTimer reads a struct itimerval.
func parseTimer(b []byte) ITimer {
	tv := func(o int) int64 {
		return int64(binary.LittleEndian.Uint64(b[o:]))*1e6 + int64(binary.LittleEndian.Uint64(b[o+8:]))
	}
	return ITimer{IntervalUs: tv(0), ValueUs: tv(16)}
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
