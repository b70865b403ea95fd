package ckpt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/mosaic-cluster/mosaic/internal/bufpool"
	"github.com/mosaic-cluster/mosaic/internal/ioprio"
)

// Frozen is a process that Dump stopped: it stays stopped until Resume or
// Kill. Both must be called from the thread that called Dump.
type Frozen struct {
	pid  int
	tids []int
	vmas []VMA // what ReadMemory reads
	// inflight are the signals (their siginfo) that were being delivered
	// to threads when they were stopped; Resume delivers them, and an
	// image carries them as pending.
	inflight map[int][]byte
	// locks are the file locks it held, let go while it is frozen.
	locks []Lock
	// buffers are where ReadMemory reads into (see UseBuffers).
	buffers *bufpool.Pool
	stopped time.Time
	// children are its descendants, frozen with it (see tree.go), and
	// shared the pipes and socket pairs between them, by each end's link
	// (sharedChannels).
	children []*Frozen
	parents  []int // each child's parent
	shared   map[string]treeEnd
	// objects are the objects of its shared memory of no file (or of a
	// deleted one), by index in its image's VMAs.
	objects map[int]fileID
}

// Stopped is when the process stopped: Freeze checks first, while it
// runs, whether it can move at all.
func (f *Frozen) Stopped() time.Time { return f.stopped }

// UseBuffers makes ReadMemory take its buffers from p and give them back
// to it, warm for the next process.
func (f *Frozen) UseBuffers(p *bufpool.Pool) {
	f.buffers = p
	for _, c := range f.children {
		c.buffers = p
	}
}

// Pid is the frozen process.
func (f *Frozen) Pid() int { return f.pid }

// Resume lets the process go on as if nothing happened.
func (f *Frozen) Resume() error {
	var errs []error
	for _, c := range f.children {
		errs = append(errs, c.Resume())
	}
	if err := f.relock(); err != nil {
		errs = append(errs, err)
	}
	for _, tid := range f.tids {
		var sig int
		if info := f.inflight[tid]; info != nil {
			sig = int(int32(binary.LittleEndian.Uint32(info))) // si_signo
		}
		if err := ptrace(unix.PTRACE_DETACH, tid, 0, uintptr(sig)); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("let thread %d go: %w", tid, err))
		}
	}
	return errors.Join(errs...)
}

// Kill ends the process (its copy lives elsewhere now).
func (f *Frozen) Kill() error {
	for _, c := range f.children {
		c.Kill()
		// Its parent is not this process: a traced child's end is ours
		// to collect first, or it stays a zombie that neither its
		// parent nor its namespace's init can reap.
		var ws syscall.WaitStatus
		syscall.Wait4(c.pid, &ws, unix.WALL, nil)
	}
	err := syscall.Kill(f.pid, syscall.SIGKILL)
	for _, tid := range f.tids {
		ptrace(unix.PTRACE_DETACH, tid, 0, 0)
	}
	// Threads other than the leader that died traced are the tracer's to
	// reap; until they are, the leader cannot be waited for by its parent.
	for _, tid := range f.tids {
		if tid != f.pid {
			var ws syscall.WaitStatus
			syscall.Wait4(tid, &ws, unix.WALL, nil)
		}
	}
	return err
}

// Dump freezes the process pid and captures it, memory included. On
// success the process stays frozen (see Frozen); on failure it runs on
// untouched. The calling goroutine must be locked to its OS thread
// (runtime.LockOSThread) until it has resumed or killed the process.
func Dump(pid int) (*Image, *Frozen, error) {
	img, f, err := Freeze(pid)
	if err != nil {
		return nil, nil, err
	}
	err = f.ReadMemory(func(p PageRun) error {
		of := img
		if p.Proc > 0 {
			of = img.Children[p.Proc-1]
		}
		of.addPages(p)
		return nil
	})
	if err != nil {
		f.Resume()
		return nil, nil, err
	}
	return img, f, nil
}

// Checkpoint freezes the process pid and writes its image to w as a
// stream, memory read as it is written. On success the process stays
// frozen (see Frozen); on failure it runs on untouched. The calling
// goroutine must be locked to its OS thread until it has resumed or
// killed the process.
func Checkpoint(pid int, w io.Writer) (*Image, *Frozen, error) {
	img, f, err := Freeze(pid)
	if err != nil {
		return nil, nil, err
	}
	err = func() error {
		e, err := NewEncoder(w, img)
		if err != nil {
			return err
		}
		if err := f.ReadMemory(e.Pages); err != nil {
			return err
		}
		return e.Close()
	}()
	if err != nil {
		f.Resume()
		return nil, nil, err
	}
	return img, f, nil
}

// FreezeSoon is FreezeWith, tried again up to tries times, wait apart,
// while what pins the process passes by itself (PinnedError.Momentary).
func FreezeSoon(pid int, opt FreezeOptions, tries int, wait time.Duration) (*Image, *Frozen, error) {
	for try := 1; ; try++ {
		img, f, err := FreezeWith(pid, opt)
		var pe *PinnedError
		if err == nil || try >= tries || !errors.As(err, &pe) || !pe.Momentary {
			return img, f, err
		}
		time.Sleep(wait)
	}
}

// Freeze stops the process pid and captures all of it but its memory
// contents (see Frozen.ReadMemory). On failure it runs on untouched. The
// calling goroutine must be locked to its OS thread until it has resumed
// or killed the process.
func Freeze(pid int) (*Image, *Frozen, error) { return FreezeWith(pid, FreezeOptions{}) }

// FreezeOptions says what the node knows of a process it freezes.
type FreezeOptions struct {
	// Home are the pipes to its home the node gave it (see Stdio).
	Home Stdio
}

// Stdio names a process's streams to its home, the standard input,
// output and error the node gave it (index 0, 1, 2: pipes, or one
// terminal for all three), by device and inode. A descriptor on one of
// them is carried as that stream, wherever the process holds it: after
// dup2(2, 1), descriptor 1 is its error output (restored as the new
// node's descriptor 1, it went to the output, which the home had closed
// when the process let go of it: what it wrote was lost). And a pipe or
// terminal at 0, 1 or 2 that is none of them is not taken for one (a
// pipe between two programs of a shell's). The zero Stdio says nothing:
// descriptors 0, 1 and 2 are then taken for the home's, whatever they
// are (as the engine's tests run programs).
type Stdio [3]StreamID

// StreamID is a stream's device and inode (stat's st_dev, st_ino).
type StreamID struct{ Dev, Ino uint64 }

func (s Stdio) known() bool { return s != Stdio{} }

// FreezeWith is Freeze with what the node knows of the process.
func FreezeWith(pid int, opt FreezeOptions) (img *Image, frozen *Frozen, err error) {
	// Refuse early what cannot move, before stopping anything.
	if err := MovableWith(pid, opt.Home); err != nil {
		return nil, nil, err
	}
	f := &Frozen{pid: pid, inflight: map[int][]byte{}}
	defer func() {
		if err != nil {
			f.Resume()
		}
	}()
	if err := f.stop(); err != nil {
		return nil, nil, err
	}
	// Its descendants, each stopped likewise; then none can fork. One
	// that forked between the listing and its stop has a child not
	// listed: the listing, done again, says so.
	tree, err := descendants(pid)
	if err != nil {
		return nil, nil, err
	}
	for _, m := range tree {
		c := &Frozen{pid: m.pid, inflight: map[int][]byte{}}
		f.children = append(f.children, c)
		f.parents = append(f.parents, m.parent)
		if err := c.stop(); err != nil {
			if st, serr := readStatus(m.pid); serr != nil || checkMember(st) != nil {
				// It ended (or stopped) since it was listed.
				return nil, nil, &PinnedError{Reason: childReason(m.pid, "it ended just now"), Momentary: true}
			}
			return nil, nil, fmt.Errorf("its child %d: %w", m.pid, err)
		}
	}
	if again, err := descendants(pid); err != nil {
		return nil, nil, err
	} else if !slices.Equal(again, tree) {
		return nil, nil, &PinnedError{Reason: "its child processes came and went while it was being frozen", Momentary: true}
	}
	if len(tree) > 0 {
		pids := []int{pid}
		for _, c := range f.children {
			pids = append(pids, c.pid)
		}
		shared, err := sharedChannels(pids, true)
		if err != nil {
			return nil, nil, err
		}
		for _, p := range append([]*Frozen{f}, f.children...) {
			p.shared = shared
		}
	}
	if img, err = f.capture(opt); err != nil {
		return nil, nil, err
	}
	seen := map[int]int{pid: img.Pid} // node's pid to the one it sees
	for i, c := range f.children {
		ci, err := c.capture(opt)
		if err != nil {
			var pe *PinnedError
			if errors.As(err, &pe) {
				return nil, nil, &PinnedError{Reason: childReason(c.pid, pe.Reason), Momentary: pe.Momentary}
			}
			return nil, nil, fmt.Errorf("its child %d: %w", c.pid, err)
		}
		seen[c.pid] = ci.Pid
		ci.Parent = seen[tree[i].parent]
		img.Children = append(img.Children, ci)
	}
	if len(tree) > 0 {
		if err := checkTree(img, f); err != nil {
			return nil, nil, err
		}
		if err := gatherShared(img, f); err != nil {
			return nil, nil, err
		}
		if err := shareMemory(img, f); err != nil {
			return nil, nil, err
		}
		img.Version = treeVersion
	}
	return img, f, nil
}

// stop stops every thread of the process (PTRACE_SEIZE and
// PTRACE_INTERRUPT), remembering a signal being delivered to one.
func (f *Frozen) stop() error {
	pid := f.pid
	// Stop every thread; list them again until no new one appears (one
	// not stopped yet may start another meanwhile).
	for {
		tids, err := threads(pid)
		if err != nil {
			return fmt.Errorf("list the threads of %d: %w", pid, err)
		}
		added := 0
		for _, tid := range tids {
			if slices.Contains(f.tids, tid) {
				continue
			}
			if err := ptrace(unix.PTRACE_SEIZE, tid, 0, unix.PTRACE_O_TRACESYSGOOD); err != nil {
				if errors.Is(err, syscall.ESRCH) && tid != pid {
					continue // it ended meanwhile
				}
				return fmt.Errorf("attach to thread %d: %w", tid, err)
			}
			f.tids = append(f.tids, tid)
			added++
			if f.stopped.IsZero() {
				f.stopped = time.Now()
			}
			if err := unix.PtraceInterrupt(tid); err != nil {
				return fmt.Errorf("stop thread %d: %w", tid, err)
			}
			ws, err := waitStop(tid)
			if err != nil {
				return err
			}
			// A stop for a signal being delivered, rather than our
			// interrupt: it is delivered when the process goes on.
			if ws.StopSignal() != syscall.SIGTRAP || ws.TrapCause() != unix.PTRACE_EVENT_STOP {
				if s := ws.StopSignal(); s != syscall.SIGSTOP && s != syscall.SIGTRAP {
					if f.inflight[tid], err = getSiginfo(tid); err != nil {
						return err
					}
				}
			}
		}
		if added == 0 {
			break
		}
	}
	if len(f.tids) == 0 || f.tids[0] != pid {
		return fmt.Errorf("process %d has no main thread to stop", pid)
	}
	return nil
}

// capture reads all of the stopped process but its memory.
func (f *Frozen) capture(opt FreezeOptions) (*Image, error) {
	pid := f.pid
	tids := f.tids
	files, err := dumpFiles(pid, true, opt.Home, f.shared)
	if err != nil {
		return nil, err
	}
	status, err := readStatus(pid)
	if err != nil {
		return nil, fmt.Errorf("read the status of %d: %w", pid, err)
	}
	seen, err := status.seenID()
	if err != nil {
		return nil, err
	}
	img := &Image{Version: ImageVersion, Pid: seen, Files: files.files, Locks: files.locks, Channels: files.channels}
	if err := dumpProcess(pid, status, img); err != nil {
		return nil, err
	}
	for _, tid := range tids {
		ts := status // the main thread's is the process's
		if tid != pid {
			if ts, err = readStatus(tid); err != nil {
				return nil, fmt.Errorf("read the status of thread %d: %w", tid, err)
			}
		}
		if err := checkSandbox(ts); err != nil {
			return nil, err
		}
		if v, _ := ts.field("NoNewPrivs"); v == "1" {
			// Per thread in the kernel, for the whole process here: the
			// stricter way.
			img.NoNewPrivs = true
		}
		t, err := dumpThread(tid, ts)
		if err != nil {
			return nil, err
		}
		if info := f.inflight[tid]; info != nil {
			t.Pending = append(t.Pending, info)
		}
		queued, err := pendingSignals(tid, false)
		if err != nil {
			return nil, err
		}
		t.Pending = append(t.Pending, queued...)
		img.Threads = append(img.Threads, t)
	}
	if img.SharedPending, err = pendingSignals(pid, true); err != nil {
		return nil, err
	}
	if img.PosixTimers, err = readPosixTimers(pid, tids, img.Threads); err != nil {
		return nil, err
	}
	maps, err := readMaps(pid)
	if err != nil {
		return nil, fmt.Errorf("read the mappings of %d: %w", pid, err)
	}
	if img.VMAs, err = imageVMAs(maps); err != nil {
		return nil, err
	}
	// Its shared memory's objects, which a tree's processes may share
	// (shareMemory); img.VMAs are maps, one for one.
	f.objects = map[int]fileID{}
	for k, v := range maps {
		if id, ok := v.fileID(); ok && v.Shared && vmaKind(v) == VMAAnon {
			f.objects[k] = id
		}
	}
	if err := readAdvice(pid, img.VMAs); err != nil {
		return nil, err
	}
	if err := dumpInside(tids, img, f); err != nil {
		return nil, err
	}
	f.vmas = img.VMAs
	return img, nil
}

// checkSandbox refuses a thread under a seccomp filter (a sandbox the
// program made itself): the filter is kernel state mosaic does not carry,
// and a copy without it would be a process let out of its sandbox.
func checkSandbox(status procStatus) error {
	if v, err := status.field("Seccomp"); err == nil && v != "0" {
		return &PinnedError{Reason: "it runs under a seccomp filter (a sandbox it set up), which mosaic cannot carry to another node"}
	}
	return nil
}

// member is a descendant of a process: its id and its parent's, as this
// node sees them.
type member struct{ pid, parent int }

// descendants lists the process's descendants, parents before their
// children: each thread's children file names those it forked.
func descendants(pid int) ([]member, error) {
	var out []member
	buf := make([]byte, 4096)
	for next := []int{pid}; len(next) > 0; {
		p := next[0]
		next = next[1:]
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", p))
		if err != nil {
			if p != pid {
				continue // it ended meanwhile
			}
			return nil, fmt.Errorf("list the threads of %d: %w", pid, err)
		}
		for _, t := range tasks {
			b, err := procRead(fmt.Sprintf("/proc/%d/task/%s/children", p, t.Name()), buf)
			if err != nil {
				continue // gone meanwhile; or no such file without CONFIG_PROC_CHILDREN
			}
			for _, f := range strings.Fields(string(b)) {
				if c, err := strconv.Atoi(f); err == nil {
					out = append(out, member{pid: c, parent: p})
					next = append(next, c)
				}
			}
		}
	}
	return out, nil
}

// childReason says of a child what reason says of a process ("it holds
// ...").
func childReason(pid int, reason string) string {
	name := ""
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil {
		name = " (" + strings.TrimSpace(string(b)) + ")"
	}
	if rest, ok := strings.CutPrefix(reason, "it "); ok {
		return fmt.Sprintf("its child process %d%s %s", pid, name, rest)
	}
	return fmt.Sprintf("its child process %d%s: %s", pid, name, reason)
}

// checkMember refuses a descendant the engine cannot make again as it is:
// one that has ended and is not yet waited for (a zombie), one stopped
// (job control) or traced (a debugger's).
func checkMember(status procStatus) error {
	state, _ := status.field("State")
	switch {
	case strings.HasPrefix(state, "Z"):
		return &PinnedError{Reason: childReason(status.pid, "it has ended and its parent has not waited for it yet"), Momentary: true}
	case strings.HasPrefix(state, "T"), strings.HasPrefix(state, "t"):
		return &PinnedError{Reason: childReason(status.pid, "it is stopped")}
	}
	if v, _ := status.field("TracerPid"); v != "" && v != "0" {
		return &PinnedError{Reason: childReason(status.pid, "it is traced by process "+v)}
	}
	return nil
}

// dumpProcess reads what /proc and the kernel tell of the process as a
// whole.
func dumpProcess(pid int, status procStatus, img *Image) error {
	var err error
	if img.Exe, err = os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err != nil {
		return fmt.Errorf("read the executable of %d: %w", pid, err)
	}
	img.Exe = strings.TrimSuffix(img.Exe, " (deleted)")
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil {
		img.Argv = strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil {
		img.Comm = strings.TrimSpace(string(b))
	}
	if b, err := procRead(fmt.Sprintf("/proc/%d/personality", pid), make([]byte, 16)); err == nil {
		p, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 16, 32)
		img.Personality = uint32(p)
	}
	if img.Cwd, err = os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid)); err != nil {
		return fmt.Errorf("read the working directory of %d: %w", pid, err)
	}
	ids := func(field string) (uint32, error) {
		v, err := status.field(field)
		if err != nil {
			return 0, err
		}
		f := strings.Fields(v)
		n, err := strconv.ParseUint(f[0], 10, 32) // the real id
		return uint32(n), err
	}
	if img.UID, err = ids("Uid"); err != nil {
		return err
	}
	if img.GID, err = ids("Gid"); err != nil {
		return err
	}
	if v, err := status.field("Groups"); err == nil {
		for _, g := range strings.Fields(v) {
			if n, err := strconv.ParseUint(g, 10, 32); err == nil {
				img.Groups = append(img.Groups, uint32(n))
			}
		}
	}
	if v, err := status.field("Umask"); err == nil {
		u, _ := strconv.ParseUint(v, 8, 32)
		img.Umask = uint32(u)
	}
	for res := range unix.RLIMIT_RTTIME + 1 {
		var l unix.Rlimit
		if err := unix.Prlimit(pid, res, nil, &l); err == nil {
			img.Rlimits = append(img.Rlimits, Rlimit{Resource: res, Cur: l.Cur, Max: l.Max})
		}
	}
	mm, err := readMM(pid)
	if err != nil {
		return fmt.Errorf("read the memory layout of %d: %w", pid, err)
	}
	img.MM = MM(mm)
	return nil
}

// dumpThread reads a stopped thread's registers, FPU state, signal mask and
// registrations with the kernel; status is its /proc status.
func dumpThread(tid int, status procStatus) (Thread, error) {
	t := Thread{}
	var err error
	if t.Tid, err = status.seenID(); err != nil {
		return t, err
	}
	var rg regs
	if err := unix.PtraceGetRegs(tid, &rg); err != nil {
		return t, fmt.Errorf("read the registers of thread %d: %w", tid, err)
	}
	t.Regs = regsFrom(&rg)
	if t.XState, err = getXState(tid); err != nil {
		return t, err
	}
	if t.Sigmask, err = getSigmask(tid); err != nil {
		return t, err
	}
	rs, err := getRseq(tid)
	if err != nil {
		return t, err
	}
	t.RseqAddr, t.RseqLen, t.RseqSig = rs.Addr, rs.Len, rs.Sig
	var head, size uint64
	if _, _, e := syscall.Syscall(unix.SYS_GET_ROBUST_LIST, uintptr(tid), uintptr(unsafe.Pointer(&head)), uintptr(unsafe.Pointer(&size))); e != 0 {
		return t, fmt.Errorf("read the robust futex list of thread %d: %w", tid, e)
	}
	t.RobustList, t.RobustLen = head, size
	// Each thread has its own nice value (getpriority(2) returns 20 - nice).
	prio, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
	if err != nil {
		return t, fmt.Errorf("read the nice value of thread %d: %w", tid, err)
	}
	t.Nice = 20 - prio
	io, err := ioprio.Get(tid)
	if err != nil {
		return t, err
	}
	t.IOPrio = int(io)
	attr, err := unix.SchedGetAttr(tid, 0)
	if err != nil {
		return t, fmt.Errorf("read the scheduling policy of thread %d: %w", tid, err)
	}
	if attr.Policy != unix.SCHED_DEADLINE {
		t.SchedPolicy, t.SchedPriority = int(attr.Policy), int(attr.Priority)
	}
	// Its name, which a program may set (prctl PR_SET_NAME, a JVM names
	// every thread).
	if b, err := procRead(fmt.Sprintf("/proc/%d/comm", tid), make([]byte, 32)); err == nil {
		t.Comm = strings.TrimSuffix(string(b), "\n")
	}
	// Its timer slack: a program may have set its own (prctl).
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/timerslack_ns", tid)); err == nil {
		t.TimerSlackNs, _ = strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	}
	return t, nil
}

// dumpInside runs, in the process's threads, the system calls that read
// what only the process itself can: its break, signal actions and timers
// (in the main thread), each thread's alternate stack and clear_child_tid.
func dumpInside(tids []int, img *Image, f *Frozen) (err error) {
	tid := tids[0]
	unblock, err := blockAll(tid)
	if err != nil {
		return err
	}
	defer func() {
		if e := unblock(); e != nil && err == nil {
			err = e
		}
	}()
	r, err := newRemote(tid)
	if err != nil {
		return err
	}
	defer func() {
		if e := r.close(); e != nil && err == nil {
			err = e
		}
	}()
	work, err := r.call(unix.SYS_MMAP, 0, workPages*pageSize, unix.PROT_READ|unix.PROT_WRITE|unix.PROT_EXEC,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
	if err != nil {
		return fmt.Errorf("map a work area in the process: %w", err)
	}
	defer r.call(unix.SYS_MUNMAP, work, workPages*pageSize)
	if err := r.useWorkArea(work); err != nil {
		return err
	}
	// One batch: the break, every signal's action, the alternate stack,
	// the three interval timers and clear_child_tid, each into its place
	// in the scratch memory.
	const (
		actionsAt = 0
		altAt     = 64 * 32
		timersAt  = altAt + 32
		tidAddrAt = timersAt + 3*32
		end       = tidAddrAt + 8
	)
	s := r.scratch
	calls := []sysCall{sc(unix.SYS_BRK, 0)}
	calls = append(calls, sigactionCalls(s+actionsAt)...)
	calls = append(calls, sc(unix.SYS_SIGALTSTACK, 0, s+altAt))
	for which := range uint64(3) {
		calls = append(calls, sc(unix.SYS_GETITIMER, which, s+timersAt+32*which))
	}
	calls = append(calls, sc(unix.SYS_PRCTL, unix.PR_GET_TID_ADDRESS, s+tidAddrAt))
	calls = append(calls, sc(unix.SYS_PRCTL, unix.PR_GET_DUMPABLE)) // 70
	timersFrom := len(calls)
	calls = append(calls, timerGetCalls(img.PosixTimers, s+end)...)
	errs, rets, err := r.batch(calls)
	if err != nil {
		return err
	}
	b := make([]byte, end+32*len(img.PosixTimers))
	if err := r.read(s, b); err != nil {
		return err
	}
	if err := parseTimerGets(img.PosixTimers, b[end:], errs[timersFrom:]); err != nil {
		return err
	}
	for i, what := range map[int]string{0: "the break", 65: "the alternate signal stack", 66: "interval timer 0",
		67: "interval timer 1", 68: "interval timer 2", 69: "the thread's clear_child_tid", 70: "whether it is dumpable"} {
		if errs[i] != nil {
			return fmt.Errorf("read %s: %w", what, errs[i])
		}
	}
	img.MM.Brk = rets[0]
	img.NotDumpable = rets[70] == 0
	if img.Actions, err = parseSigactions(b[actionsAt:], errs[1:65]); err != nil {
		return err
	}
	img.Threads[0].AltStack = parseAltStack(b[altAt:])
	for which := range 3 {
		img.Timers[which] = parseTimer(b[timersAt+32*which:])
	}
	img.Threads[0].TidAddress = leU64(b[tidAddrAt:])
	// Its file locks go with it: the frozen copy lets them go (Resume
	// takes them back).
	f.locks = img.Locks
	if err := setLocks(r, img.Locks, true); err != nil {
		return fmt.Errorf("let go of its file locks: %w", err)
	}
	for i, t := range tids[1:] {
		if err := dumpThreadInside(t, r, &img.Threads[i+1]); err != nil {
			return err
		}
	}
	return nil
}

// blockAll blocks every signal of thread tid while we borrow it (nothing
// is delivered meanwhile), and returns what puts its mask back.
func blockAll(tid int) (func() error, error) {
	mask, err := getSigmask(tid)
	if err != nil {
		return nil, err
	}
	if err := setSigmask(tid, ^uint64(0)); err != nil {
		return nil, err
	}
	return func() error { return setSigmask(tid, mask) }, nil
}

// dumpThreadInside reads a thread's alternate stack and clear_child_tid
// by a batch run in it, in the work area main set up.
func dumpThreadInside(tid int, main *remote, t *Thread) (err error) {
	unblock, err := blockAll(tid)
	if err != nil {
		return err
	}
	defer func() {
		if e := unblock(); e != nil && err == nil {
			err = e
		}
	}()
	r, err := main.forThread(tid)
	if err != nil {
		return err
	}
	defer func() {
		if e := r.close(); e != nil && err == nil {
			err = e
		}
	}()
	s := r.scratch
	errs, _, err := r.batch([]sysCall{
		sc(unix.SYS_SIGALTSTACK, 0, s),
		sc(unix.SYS_PRCTL, unix.PR_GET_TID_ADDRESS, s+32),
	})
	if err != nil {
		return err
	}
	for _, e := range errs {
		if e != nil {
			return fmt.Errorf("read the state of thread %d: %w", tid, e)
		}
	}
	b := make([]byte, 40)
	if err := r.read(s, b); err != nil {
		return err
	}
	t.AltStack = parseAltStack(b)
	t.TidAddress = leU64(b[32:])
	return nil
}

func leU64(b []byte) uint64 {
	var v uint64
	for i := 7; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v
}

// Movable says why the process pid cannot move (a *PinnedError), or nil:
// what Freeze would refuse, found without stopping it; all of it but two
// rarer cases: a pipe or socket pair of its own that another process
// holds an end of too (see resolveChannels), and an open file two of its
// processes share that cannot move (see shareFiles).
func Movable(pid int) error { return MovableWith(pid, Stdio{}) }

// MovableWith is Movable for a process whose pipes to its home are home.
func MovableWith(pid int, home Stdio) error {
	rootPgid, rootSid := -1, -1
	if status, err := readStatus(pid); err == nil {
		if err := checkSandbox(status); err != nil {
			return err
		}
		rootPgid, rootSid, _ = status.nsGroup()
	}
	tree, err := descendants(pid)
	if err != nil {
		return err
	}
	var shared map[string]treeEnd // the tree's channels (not asked whether others hold them)
	if len(tree) > 0 {
		pids := []int{pid}
		for _, m := range tree {
			pids = append(pids, m.pid)
		}
		if shared, err = sharedChannels(pids, false); err != nil {
			return err
		}
	}
	if _, err := dumpFiles(pid, false, home, shared); err != nil {
		return err
	}
	type member struct {
		status        procStatus
		parent        int
		pgid, sid     int
		groupsUnknown bool
	}
	members := make([]member, 0, len(tree))
	leads := map[int]bool{}    // the descendants' ids, as they see them
	sessions := map[int]bool{} // those that lead a session of their own
	for _, m := range tree {
		status, err := readStatus(m.pid)
		if err != nil {
			continue // ended meanwhile
		}
		mb := member{status: status, parent: m.parent}
		mb.pgid, mb.sid, err = status.nsGroup()
		mb.groupsUnknown = err != nil
		members = append(members, mb)
		if id, err := status.seenID(); err == nil {
			leads[id] = true
			if !mb.groupsUnknown && mb.sid == id {
				sessions[id] = true
			}
		}
	}
	for _, mb := range members {
		status := mb.status
		if err := checkMember(status); err != nil {
			return err
		}
		if !mb.groupsUnknown && rootSid >= 0 {
			if err := checkGroup(status.pid, mb.pgid, mb.sid, rootPgid, rootSid, leads, sessions); err != nil {
				return err
			}
		}
		if err := checkVfork(mb.parent, status.pid); err != nil {
			return err
		}
		err := checkSandbox(status)
		if err == nil {
			_, err = dumpFiles(status.pid, false, home, shared)
		}
		var pe *PinnedError
		if errors.As(err, &pe) {
			return &PinnedError{Reason: childReason(status.pid, pe.Reason), Momentary: pe.Momentary}
		}
		if err != nil {
			return err
		}
	}
	// Last, as it may read every process's mappings.
	pids := []int{pid}
	for _, m := range tree {
		pids = append(pids, m.pid)
	}
	return checkSharers(pids)
}
