package ckpt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"strings"
	"unsafe"

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
	errs, _, err := r.batchWith(acts, calls)
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

// parseTimer reads a struct itimerval.
func parseTimer(b []byte) ITimer {
	tv := func(o int) int64 {
		return int64(binary.LittleEndian.Uint64(b[o:]))*1e6 + int64(binary.LittleEndian.Uint64(b[o+8:]))
	}
	return ITimer{IntervalUs: tv(0), ValueUs: tv(16)}
}

// stack_t flags.
const (
	ssOnStack = 1
	ssDisable = 2
)

// getSiginfo reads the siginfo of the signal a thread stopped to take.
func getSiginfo(tid int) ([]byte, error) {
	info := make([]byte, siginfoSize)
	if err := ptrace(unix.PTRACE_GETSIGINFO, tid, 0, uintptr(unsafe.Pointer(&info[0]))); err != nil {
		return nil, fmt.Errorf("read the signal thread %d is taking: %w", tid, err)
	}
	return info, nil
}

const siginfoSize = 128

// maxPosixTimers bounds what one batch reads (32 bytes of scratch each).
const maxPosixTimers = 150

// readPosixTimers lists the process's timer_create timers from
// /proc/PID/timers (their times are read inside it, see timerGetCalls).
// tids are the threads' ids here, threads their image entries in the same
// order: a timer that signals a thread names it as the process sees it.
func readPosixTimers(pid int, tids []int, threads []Thread) ([]PosixTimer, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/timers", pid))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil // a kernel without CONFIG_CHECKPOINT_RESTORE: none to see
		}
		return nil, fmt.Errorf("read the POSIX timers of %d: %w", pid, err)
	}
	var out []PosixTimer
	var t *PosixTimer
	for line := range strings.Lines(string(b)) {
		key, val, ok := strings.Cut(strings.TrimSpace(line), ": ")
		if !ok {
			continue
		}
		switch key {
		case "ID":
			out = append(out, PosixTimer{})
			t = &out[len(out)-1]
			_, err = fmt.Sscanf(val, "%d", &t.ID)
		case "signal":
			if t != nil {
				_, err = fmt.Sscanf(val, "%d/%x", &t.Signo, &t.Value)
			}
		case "notify":
			if t == nil {
				break
			}
			// "signal/pid.N", "none/pid.N", "signal/tid.N"
			how, who, _ := strings.Cut(val, "/")
			switch how {
			case "signal":
				t.Notify = sigevSignal
			case "none":
				t.Notify = sigevNone
			default:
				return nil, fmt.Errorf("POSIX timer %d notifies by %q, which is not carried", t.ID, how)
			}
			if kind, n, ok := strings.Cut(who, "."); ok && kind == "tid" {
				t.Notify |= sigevThreadID
				tid, _ := strconv.Atoi(n)
				i := slices.Index(tids, tid)
				if i < 0 {
					return nil, fmt.Errorf("POSIX timer %d signals thread %d, not of this process", t.ID, tid)
				}
				t.Tid = int32(threads[i].Tid)
			}
		case "ClockID":
			if t != nil {
				_, err = fmt.Sscanf(val, "%d", &t.Clock)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("read the POSIX timers of %d: %q: %w", pid, line, err)
		}
	}
	if len(out) > maxPosixTimers {
		return nil, &PinnedError{Reason: fmt.Sprintf("it has %d POSIX timers, and at most %d move", len(out), maxPosixTimers)}
	}
	return out, nil
}

// timerGetCalls read each timer's time left and period, 32 bytes each
// (struct itimerspec) from out.
func timerGetCalls(ts []PosixTimer, out uint64) []sysCall {
	var calls []sysCall
	for i, t := range ts {
		calls = append(calls, sc(unix.SYS_TIMER_GETTIME, uint64(t.ID), out+32*uint64(i)))
	}
	return calls
}

func parseTimerGets(ts []PosixTimer, b []byte, errs []error) error {
	for i := range ts {
		if errs[i] != nil {
			return fmt.Errorf("read POSIX timer %d: %w", ts[i].ID, errs[i])
		}
		spec := b[32*i:]
		ns := func(o int) int64 {
			return int64(binary.LittleEndian.Uint64(spec[o:]))*1e9 + int64(binary.LittleEndian.Uint64(spec[o+8:]))
		}
		ts[i].IntervalNs, ts[i].ValueNs = ns(0), ns(16)
		ts[i].Running = ts[i].ValueNs != 0
	}
	return nil
}

// restorePosixTimers makes the timers again under their ids (the kernel
// takes the id asked for while PR_TIMER_CREATE_RESTORE_IDS is on) and sets
// them going with the time they had left. newTid maps the image's thread
// ids to the restored threads' (the same in a PID namespace).
func restorePosixTimers(r *remote, ts []PosixTimer, newTid map[int32]int32) error {
	if len(ts) == 0 {
		return nil
	}
	if len(ts) > maxPosixTimers {
		return fmt.Errorf("the image has %d POSIX timers, more than %d", len(ts), maxPosixTimers)
	}
	// Per timer in the scratch memory: a struct sigevent (64 bytes), the
	// id (8) and a struct itimerspec (32): 104 bytes.
	const each = 104
	var data []byte
	calls := []sysCall{sc(unix.SYS_PRCTL, unix.PR_TIMER_CREATE_RESTORE_IDS, unix.PR_TIMER_CREATE_RESTORE_IDS_ON)}
	for i, t := range ts {
		at := r.scratch + uint64(each*i)
		ev := make([]byte, 64)
		binary.LittleEndian.PutUint64(ev[0:], t.Value)
		binary.LittleEndian.PutUint32(ev[8:], uint32(t.Signo))
		binary.LittleEndian.PutUint32(ev[12:], uint32(t.Notify))
		if t.Notify&sigevThreadID != 0 {
			tid, ok := newTid[t.Tid]
			if !ok {
				return fmt.Errorf("POSIX timer %d signals thread %d, which is not in the image", t.ID, t.Tid)
			}
			binary.LittleEndian.PutUint32(ev[16:], uint32(tid))
		}
		data = append(data, ev...)
		data = binary.LittleEndian.AppendUint64(data, uint64(t.ID))
		iv, v := t.IntervalNs, t.ValueNs
		data = append(data, le64(uint64(iv/1e9), uint64(iv%1e9), uint64(v/1e9), uint64(v%1e9))...)
		calls = append(calls, sc(unix.SYS_TIMER_CREATE, uint64(t.Clock), at, at+64))
	}
	calls = append(calls, sc(unix.SYS_PRCTL, unix.PR_TIMER_CREATE_RESTORE_IDS, unix.PR_TIMER_CREATE_RESTORE_IDS_OFF))
	for i, t := range ts {
		if t.Running {
			at := r.scratch + uint64(each*i)
			calls = append(calls, sc(unix.SYS_TIMER_SETTIME, uint64(t.ID), 0, at+72, 0))
		}
	}
	errs, _, err := r.batchWith(data, calls)
	if err != nil {
		return err
	}
	if errs[0] != nil {
		return fmt.Errorf("this kernel cannot give POSIX timers their ids back: %w", errs[0])
	}
	for i, t := range ts {
		if e := errs[1+i]; e != nil {
			return fmt.Errorf("make POSIX timer %d again: %w", t.ID, e)
		}
	}
	got := make([]byte, each*len(ts))
	if err := r.read(r.scratch, got); err != nil {
		return err
	}
	for i, t := range ts {
		if id := int32(binary.LittleEndian.Uint64(got[each*i+64:])); id != t.ID {
			return fmt.Errorf("POSIX timer %d came back as %d", t.ID, id)
		}
	}
	for i, e := range errs[len(ts)+1:] {
		if e != nil {
			return fmt.Errorf("set a POSIX timer going (call %d): %w", i, e)
		}
	}
	return nil
}

// queueSignals queues the image's pending signals again, from inside the
// process (which alone may queue a siginfo that says the kernel or
// another process sent it). tgid and tids are the ids as the process sees
// them; tids[i] is threads[i]'s.
func queueSignals(r *remote, tgid int, tids []int, threads []Thread, shared [][]byte) error {
	type queued struct {
		tid  int // 0: for the process
		info []byte
	}
	var all []queued
	for i, t := range threads {
		for _, info := range t.Pending {
			all = append(all, queued{tids[i], info})
		}
	}
	for _, info := range shared {
		all = append(all, queued{0, info})
	}
	perBatch := scratchSize / siginfoSize
	for len(all) > 0 {
		n := min(len(all), perBatch)
		var data []byte
		var calls []sysCall
		for i, q := range all[:n] {
			if len(q.info) != siginfoSize {
				return fmt.Errorf("a pending signal of %d bytes in the image", len(q.info))
			}
			sig := uint64(binary.LittleEndian.Uint32(q.info))
			at := r.scratch + uint64(siginfoSize*i)
			data = append(data, q.info...)
			if q.tid == 0 {
				calls = append(calls, sc(unix.SYS_RT_SIGQUEUEINFO, uint64(tgid), sig, at))
			} else {
				calls = append(calls, sc(unix.SYS_RT_TGSIGQUEUEINFO, uint64(tgid), uint64(q.tid), sig, at))
			}
		}
		errs, _, err := r.batchWith(data, calls)
		if err != nil {
			return err
		}
		for i, e := range errs {
			if e != nil {
				return fmt.Errorf("queue pending signal %d again: %w", binary.LittleEndian.Uint32(all[i].info), e)
			}
		}
		all = all[n:]
	}
	return nil
}

// struct sigevent's sigev_notify.
const (
	sigevSignal   = 0
	sigevNone     = 1
	sigevThreadID = 4
)

// ExecSetup is state a new process takes from the one that starts it and
// that only the process itself can set: its signals ignored (as a shell
// ignores nohup's SIGHUP, or a background job's SIGINT, for the programs
// it starts) and no_new_privs (as its caller had it). Both then last
// through the program's own execs.
type ExecSetup struct {
	Ignore     []int
	Default    []int // signals set back to their default action
	NoNewPrivs bool
}

// Apply sets s up in a new process before its program's first
// instruction: the process must be stopped at its exec and traced by the
// calling thread (spawn's AtExec).
func (s ExecSetup) Apply(pid int) (err error) {
	// Its system calls stop distinctly, and it dies if we do meanwhile.
	if err := ptrace(unix.PTRACE_SETOPTIONS, pid, 0, unix.PTRACE_O_TRACESYSGOOD|unix.PTRACE_O_EXITKILL); err != nil {
		return fmt.Errorf("trace process %d's system calls: %w", pid, err)
	}
	r, err := newRemote(pid)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := r.close(); err == nil {
			err = cerr
		}
	}()
	// A struct sigaction {handler SIG_IGN, flags, restorer, mask} on the
	// stack below anything in use: at exec the stack pointer is at argc,
	// and the stack's mapping reaches further down.
	// And one {SIG_DFL, ...} after it.
	acts := make([]byte, 64)
	binary.LittleEndian.PutUint64(acts, 1) // SIG_IGN
	at := (r.saved.Rsp - 4096) &^ 15
	if err := r.write(at, acts); err != nil {
		return err
	}
	for _, sig := range s.Ignore {
		if _, err := r.call(unix.SYS_RT_SIGACTION, uint64(sig), at, 0, 8); err != nil {
			return fmt.Errorf("ignore signal %d: %w", sig, err)
		}
	}
	for _, sig := range s.Default {
		if _, err := r.call(unix.SYS_RT_SIGACTION, uint64(sig), at+32, 0, 8); err != nil {
			return fmt.Errorf("set signal %d to its default: %w", sig, err)
		}
	}
	if s.NoNewPrivs {
		if _, err := r.call(unix.SYS_PRCTL, unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("set no_new_privs: %w", err)
		}
	}
	return nil
}
