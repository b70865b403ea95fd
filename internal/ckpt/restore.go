package ckpt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/mosaic-cluster/mosaic/internal/bufpool"
	"github.com/mosaic-cluster/mosaic/internal/ioprio"
)

// glibcTidOffset is where glibc (2.36, x86-64) caches a thread's id in its
// thread control block, at the thread pointer (fs_base) plus this offset.
// raise() and pthread_kill() use it: a thread restored under another id
// would signal the wrong thread, so the cache is corrected.
const glibcTidOffset = 0x2d0

// Syscall restart codes the kernel leaves in rax of a thread stopped in an
// interrupted system call.
const (
	errRestartSys          = 512
	errRestartNoIntr       = 513
	errRestartNoHand       = 514
	errRestartRestartBlock = 516
)

// Restore turns pid, a stub process started by the calling thread with
// PTRACE_TRACEME (so it stops at its exec; Restore waits for that stop),
// into the image's process, and lets it run. The stub's descriptors 0, 1
// and 2 are the process's standard ones; it should run as the image's
// user. If Restore fails the stub is killed.
func Restore(pid int, img *Image) error {
	r, err := restore(pid, img, RestoreOptions{}, func(write func(PageRun) error) error {
		for _, p := range img.Pages {
			if err := write(p); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return r.Go()
}

// RestoreFrom restores, as Restore does, the image that d reads, writing
// its memory into the process as it arrives. The process is left stopped
// (see Restored) once all of the image has arrived and checked out; if
// anything fails, the stub is killed.
func RestoreFrom(pid int, d *Decoder, opt RestoreOptions) (*Restored, error) {
	return restore(pid, d.Image(), opt, decodedPages(d, opt.Buffers))
}

// decodedPages writes the memory d decodes, through buffers from pool.
func decodedPages(d *Decoder, pool *bufpool.Pool) func(write func(PageRun) error) error {
	return func(write func(PageRun) error) error {
		newBuf := func() *[]byte {
			b := new([]byte)
			if pool != nil {
				*b = pool.Get(RunBuffer) // a record of a run, as ReadMemory makes them
			}
			return b
		}
		// The first aheadAfter bytes (most processes' all) are decoded
		// and written by this thread, in one buffer.
		first := newBuf()
		for written := 0; written < aheadAfter; {
			p, err := d.NextInto(first)
			if errors.Is(err, io.EOF) {
				pool.Put(*first)
				return nil
			}
			if err == nil {
				err = write(p)
			}
			if err != nil {
				pool.Put(*first)
				return err
			}
			written += len(p.Data)
		}
		// Then receiving and writing overlap: a goroutine decodes runs
		// into free buffers while this thread writes the ones decoded.
		const depth = 3
		free := make(chan *[]byte, depth) // grown to the runs they carry
		free <- first
		for range depth - 1 {
			free <- newBuf()
		}
		var done *[]byte // the buffer of the stream's end
		defer func() {
			// Those not with the decoder go back (all of them, once it
			// has reached the end).
			if done != nil {
				pool.Put(*done)
			}
			for {
				select {
				case b := <-free:
					pool.Put(*b)
				default:
					return
				}
			}
		}()
		type decoded struct {
			run PageRun
			buf *[]byte
			err error
		}
		full := make(chan decoded, depth)
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			defer close(full)
			for {
				var buf *[]byte
				select {
				case buf = <-free:
				case <-stop:
					return
				}
				p, err := d.NextInto(buf)
				select {
				case full <- decoded{p, buf, err}:
				case <-stop:
					return
				}
				if err != nil {
					return
				}
			}
		}()
		for dec := range full {
			if errors.Is(dec.err, io.EOF) {
				done = dec.buf
				return nil
			}
			if dec.err != nil {
				return dec.err
			}
			err := write(dec.run)
			free <- dec.buf
			if err != nil {
				return err
			}
		}
		return errors.New("the image stream ended without its end")
	}
}

// Restored is a restored process that has not run yet: it waits, stopped,
// for Go or Abort, which must be called from the thread that restored it.
type Restored struct {
	pid  int
	lazy *LazyMemory // its memory still to come, if any
	// filled is how much of its memory was written through a
	// userfaultfd (fill.go).
	filled uint64
	tids   []int // the other threads
	done   bool
	// children are its descendants, restored with it (restoreTree).
	children []*Restored
}

// Pid is the restored process.
func (r *Restored) Pid() int { return r.pid }

// Filled is how many bytes of the memory of the process and its
// descendants were written through a userfaultfd (UFFDIO_COPY) rather
// than into pages faulted in and zeroed first.
func (r *Restored) Filled() uint64 {
	n := r.filled
	for _, c := range r.children {
		n += c.filled
	}
	return n
}

// Pids are the restored process and its descendants restored with it.
func (r *Restored) Pids() []int {
	pids := []int{r.pid}
	for _, c := range r.children {
		pids = append(pids, c.pid)
	}
	return pids
}

// Go lets the process run.
func (r *Restored) Go() error {
	if r.done {
		return errors.New("the restored process was already let go or aborted")
	}
	r.done = true
	for i, c := range r.children {
		if err := c.Go(); err != nil {
			for _, o := range r.children[i+1:] {
				o.Abort()
			}
			r.kill()
			return err
		}
	}
	for _, tid := range append(slices.Clone(r.tids), r.pid) {
		if err := ptrace(unix.PTRACE_DETACH, tid, 0, 0); err != nil {
			r.kill()
			return fmt.Errorf("let the restored process run: %w", err)
		}
	}
	return nil
}

// Abort kills the process before it ran.
func (r *Restored) Abort() {
	if !r.done {
		r.done = true
		r.kill()
	}
}

func (r *Restored) kill() {
	if r.pid <= 0 {
		return // (kill(0) would signal our own process group)
	}
	for _, c := range r.children {
		c.done = true
		c.kill() // let go already or not: the tree goes as one
	}
	syscall.Kill(r.pid, syscall.SIGKILL)
	if r.lazy != nil {
		r.lazy.close()
	}
	var ws syscall.WaitStatus
	for _, tid := range r.tids {
		syscall.Wait4(tid, &ws, syscall.WALL, nil)
	}
	syscall.Wait4(r.pid, &ws, syscall.WALL, nil)
}

// RestoreOptions say where the new process is.
type RestoreOptions struct {
	// Init, if not 0, is the init of the PID namespace the new process is
	// in (and alone in): its threads then get the ids they had, and the
	// process must have the one it had.
	Init int
	// Userfaultfd, if not 0, is the new process's descriptor of
	// /dev/userfaultfd, needed for an image with lazy memory; the restore
	// closes it.
	Userfaultfd int
	// Buffers, if set, is where the image's memory is decoded into, and
	// where those buffers go back afterwards.
	Buffers *bufpool.Pool
	// Prepare, if set, is called with each descendant's stub (a process
	// with children, see tree.go) before it is restored into, and its
	// image: where the node sets its resource limits, as it did the
	// first one's. On the thread that restores.
	Prepare func(pid int, img *Image) error
	// Step, if set, is told as each part of the restore ends ("layout":
	// the mappings made; "memory": written; "state": the rest), so that
	// the caller can say where a restore's time went.
	Step func(name string)
}

// Stub is a new process made ready to become a restored one: stopped at
// its exec, traced, all signals blocked, its program's mappings gone but
// for the kernel's own and a trampoline the restore works from. None of
// it depends on the image, so a node expecting a process prepares the
// stub while the image is still on its way (see RestoreInto): on this
// machine that is a millisecond or more of ptrace round trips out of the
// time the process stands still.
type Stub struct {
	pid   int
	r     *remote
	maps  []vma  // the stub's mappings left: the kernel's own
	tramp uint64 // the trampoline, workPages pages
	used  bool
	// premapped: the mappings Premap made ahead of the image; spoiled:
	// why the stub cannot be restored into (a Premap that could not be
	// undone).
	premapped []VMA
	spoiled   error
}

// PrepareStub makes pid, a stub process started by the calling thread
// with PTRACE_TRACEME (so it stops at its exec; PrepareStub waits for
// that stop), ready for RestoreInto. The calling thread must be the one
// that restores. If PrepareStub fails the stub is killed.
func PrepareStub(pid int) (_ *Stub, err error) {
	defer func() {
		if err != nil {
			(&Restored{pid: pid}).kill()
		}
	}()
	if ws, err := waitStop(pid); err != nil {
		return nil, err
	} else if ws.StopSignal() != syscall.SIGTRAP {
		return nil, fmt.Errorf("the new process stopped with %v, not at its exec", ws)
	}
	// If this thread dies before the restore is done, so does the stub.
	// Threads it starts are ours from their first instruction.
	if err := ptrace(unix.PTRACE_SETOPTIONS, pid, 0, unix.PTRACE_O_TRACESYSGOOD|unix.PTRACE_O_EXITKILL|unix.PTRACE_O_TRACECLONE); err != nil {
		return nil, fmt.Errorf("set trace options of the new process: %w", err)
	}
	if err := setSigmask(pid, ^uint64(0)); err != nil {
		return nil, err
	}
	r, err := newRemote(pid)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil && r.mem != nil {
			r.mem.Close()
		}
	}()
	maps, err := readMaps(pid)
	if err != nil {
		return nil, fmt.Errorf("read the new process's mappings: %w", err)
	}
	// The trampoline: the work area of a remote (code, a table of calls,
	// scratch memory), where the stub has nothing. (Where the image has
	// something too, RestoreInto moves it.)
	tramp, err := freeRange(nil, maps, workPages*pageSize)
	if err != nil {
		return nil, err
	}
	if err := mapTrampoline(r, tramp); err != nil {
		return nil, err
	}
	r.poked = nil // the stub's code goes away

	// Clear the stub's address space but for the kernel's own mappings.
	var unmaps []sysCall
	var unmapped []vma
	var left []vma
	for _, v := range maps {
		if v.special() {
			left = append(left, v)
		} else {
			unmaps = append(unmaps, sc(unix.SYS_MUNMAP, v.Start, v.size()))
			unmapped = append(unmapped, v)
		}
	}
	errs, _, err := r.batch(unmaps)
	if err != nil {
		return nil, err
	}
	for i, err := range errs {
		if err != nil {
			return nil, fmt.Errorf("unmap the new process's %s: %w", unmapped[i].Path, err)
		}
	}
	return &Stub{pid: pid, r: r, maps: left, tramp: tramp}, nil
}

// mapTrampoline maps the work area at tramp and runs the remote's calls
// from there.
func mapTrampoline(r *remote, tramp uint64) error {
	if _, err := r.call(unix.SYS_MMAP, tramp, workPages*pageSize, unix.PROT_READ|unix.PROT_WRITE|unix.PROT_EXEC,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED_NOREPLACE, ^uint64(0), 0); err != nil {
		return fmt.Errorf("map the restore trampoline: %w", err)
	}
	if err := r.useWorkArea(tramp); err != nil {
		return err
	}
	r.syscallAt = tramp
	return nil
}

// Pid is the stub's process.
func (s *Stub) Pid() int { return s.pid }

// Kill ends a stub that will not be restored into.
func (s *Stub) Kill() {
	if !s.used {
		s.used = true
		s.r.mem.Close()
		(&Restored{pid: s.pid}).kill()
	}
}

// moveTrampoline moves the trampoline out of the way of the image's
// mappings, if it is in it.
func (s *Stub) moveTrampoline(image []VMA) error {
	clash := slices.ContainsFunc(image, func(v VMA) bool {
		return v.Start < s.tramp+workPages*pageSize && s.tramp < v.End
	})
	if !clash {
		return nil
	}
	old := s.tramp
	to, err := freeRange(append(slices.Clone(image), VMA{Start: old, End: old + workPages*pageSize}), s.maps, workPages*pageSize)
	if err != nil {
		return err
	}
	if err := mapTrampoline(s.r, to); err != nil {
		return err
	}
	if _, err := s.r.call(unix.SYS_MUNMAP, old, workPages*pageSize); err != nil {
		return fmt.Errorf("unmap the old restore trampoline: %w", err)
	}
	s.tramp = to
	return nil
}

// RestoreInto restores, as RestoreFrom does, the image that d reads into
// a stub prepared for it, which it uses up: on failure the stub is killed.
func RestoreInto(s *Stub, d *Decoder, opt RestoreOptions) (*Restored, error) {
	return restoreInto(s, d.Image(), opt, decodedPages(d, opt.Buffers))
}

func restore(pid int, img *Image, opt RestoreOptions, pages func(write func(PageRun) error) error) (*Restored, error) {
	s, err := PrepareStub(pid)
	if err != nil {
		return nil, err
	}
	return restoreInto(s, img, opt, pages)
}

// restoreInto does the work of Restore, RestoreFrom and RestoreInto;
// pages writes the image's memory with the function it is given.
func restoreInto(s *Stub, img *Image, opt RestoreOptions, pages func(write func(PageRun) error) error) (_ *Restored, err error) {
	if len(img.Children) > 0 {
		return restoreTree(s, img, opt, pages)
	}
	step := opt.Step
	if step == nil {
		step = func(string) {}
	}
	rs, err := beginRestore(s, img, opt, treeShared{})
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			rs.fail()
		}
	}()
	step("layout")
	if err := pages(func(p PageRun) error {
		if p.Proc != 0 {
			return fmt.Errorf("%w: memory of a process the image does not have", ErrCorrupt)
		}
		return rs.write(p)
	}); err != nil {
		return nil, err
	}
	step("memory")
	restored, err := rs.finish()
	if err != nil {
		return nil, err
	}
	step("state")
	return restored, nil
}

// restoring is a restore under way: the stub laid out as the image's
// process, its memory being written.
type restoring struct {
	s        *Stub
	img      *Image
	opt      RestoreOptions
	restored *Restored
	uffd     int // the process's userfaultfd, for lazy memory; -1
	// fillFD is a userfaultfd its private anonymous memory is written
	// through (fill.go), or -1; filling says which mappings (by index in
	// img.VMAs) are registered with it.
	fillFD  int
	filling []bool
	mem     *procMem
	tree    treeShared // the pipes, files and memory of its tree, which it has
	// readOnly are its shared mappings it may not write to, each written
	// through its object (its file in /proc/PID/map_files), opened as
	// needed: the kernel writes through a mapping it cannot write to
	// only for a private one.
	readOnly map[int]*os.File // by index in img.VMAs
}

// beginRestore checks the image and makes the stub's address space the
// image's process's, ready for its memory (restoring.write) and the rest
// (restoring.finish). On failure the stub is killed.
func beginRestore(s *Stub, img *Image, opt RestoreOptions, tree treeShared) (_ *restoring, err error) {
	if s.used {
		return nil, errors.New("the stub was used already")
	}
	s.used = true
	pid, r := s.pid, s.r
	rs := &restoring{s: s, img: img, opt: opt, tree: tree, restored: &Restored{pid: pid}, uffd: -1, fillFD: -1}
	limitPriorities(img)
	defer func() {
		if err != nil {
			rs.fail()
		}
	}()
	if err := checkVersion(uint32(img.Version)); err != nil {
		return nil, err
	}
	if len(img.Threads) == 0 {
		return nil, errors.New("the image has no threads")
	}
	if s.spoiled != nil {
		return nil, s.spoiled
	}
	// The mappings made ahead (Premap) are the image's, or they go.
	premade := s.premapped != nil && sameLayout(s.premapped, img.VMAs)
	if s.premapped != nil && !premade {
		if err := s.unmapLayout(s.premapped); err != nil {
			return nil, err
		}
	}
	if !premade {
		if err := checkFiles(img.VMAs); err != nil {
			return nil, err
		}
		if err := s.moveTrampoline(img.VMAs); err != nil {
			return nil, err
		}
	}
	// Lazy memory needs a userfaultfd of the process's own.
	if len(img.Lazy) > 0 && opt.Userfaultfd == 0 {
		return nil, errors.New("the image's memory comes after it (post-copy), and this restore has no userfaultfd")
	}
	if opt.Userfaultfd != 0 {
		if len(img.Lazy) > 0 {
			if rs.uffd, err = makeUserfaultfd(r, pid, opt.Userfaultfd); err != nil {
				return nil, err
			}
		} else if fillSize(img.VMAs) >= fillMin {
			if fd, err := makeUserfaultfd(r, pid, opt.Userfaultfd); err == nil {
				rs.fillFD = fd
			} // else its memory is written as without one
		}
		// Closed before the image's descriptors come back: one of them
		// may have the device's number. (A descendant's stub has it from
		// its parent's.)
		if _, err := r.call(unix.SYS_CLOSE, uint64(opt.Userfaultfd)); err != nil && !errors.Is(err, unix.EBADF) {
			return nil, fmt.Errorf("close the restore's userfaultfd device: %w", err)
		}
	}
	if !premade {
		if err := moveVDSO(r, s.maps, img.VMAs, s.tramp); err != nil {
			return nil, err
		}
		if err := mapVMAs(r, img.VMAs); err != nil {
			return nil, err
		}
	}
	if err := mapTreeMemory(r, img.VMAs, tree.mems); err != nil {
		return nil, err
	}
	if rs.mem, err = openProcMem(pid); err != nil {
		return nil, err
	}
	if rs.fillFD >= 0 {
		if rs.filling, err = registerFill(rs.fillFD, img.VMAs); err != nil {
			rs.endFill() // written as without one
		}
	}
	return rs, nil
}

// write writes a run of the image's memory into the process.
func (rs *restoring) write(p PageRun) error {
	k := rs.vmaAt(p.Addr)
	if obj, at, err := rs.object(k, p); err != nil {
		return err
	} else if obj != nil {
		if _, err := obj.WriteAt(p.Data, at); err != nil {
			return fmt.Errorf("write %d bytes of shared memory at %#x: %w", len(p.Data), p.Addr, err)
		}
		return nil
	}
	if rs.filling != nil && k >= 0 && rs.filling[k] && p.Addr+uint64(len(p.Data)) <= rs.img.VMAs[k].End {
		return rs.fill(p)
	}
	if _, err := rs.mem.WriteAt(p.Data, int64(p.Addr)); err != nil {
		return fmt.Errorf("write %d bytes of memory at %#x: %w", len(p.Data), p.Addr, err)
	}
	return nil
}

// vmaAt returns the index in img.VMAs of the mapping at addr, or -1.
func (rs *restoring) vmaAt(addr uint64) int {
	vs := rs.img.VMAs
	k, _ := slices.BinarySearchFunc(vs, addr, func(v VMA, a uint64) int {
		switch {
		case v.End <= a:
			return -1
		case v.Start > a:
			return 1
		}
		return 0
	})
	if k == len(vs) || vs[k].Start > addr {
		return -1
	}
	return k
}

// object returns, for a run of memory in a shared mapping the process
// may not write to (img.VMAs[k], k from vmaAt), the mapping's object and
// where in it the run goes; nil for any other.
func (rs *restoring) object(k int, p PageRun) (*os.File, int64, error) {
	if k < 0 {
		return nil, 0, nil // not mapped: the write says so
	}
	v := rs.img.VMAs[k]
	if !v.Shared || v.Prot&unix.PROT_WRITE != 0 {
		return nil, 0, nil
	}
	if p.Addr+uint64(len(p.Data)) > v.End {
		return nil, 0, fmt.Errorf("%w: memory at %#x runs past its mapping's end %#x", ErrCorrupt, p.Addr, v.End)
	}
	obj := rs.readOnly[k]
	if obj == nil {
		var err error
		if obj, err = os.OpenFile(fmt.Sprintf("/proc/%d/map_files/%x-%x", rs.restored.pid, v.Start, v.End), os.O_RDWR, 0); err != nil {
			return nil, 0, fmt.Errorf("open the read-only shared memory at %#x to fill it: %w", v.Start, err)
		}
		if rs.readOnly == nil {
			rs.readOnly = map[int]*os.File{}
		}
		rs.readOnly[k] = obj
	}
	return obj, int64(v.Offset + p.Addr - v.Start), nil
}

// fail kills the process being restored and lets go of what the restore
// held.
func (rs *restoring) fail() {
	rs.close()
	if rs.uffd >= 0 {
		unix.Close(rs.uffd)
		rs.uffd = -1
	}
	rs.restored.kill()
}

func (rs *restoring) close() {
	rs.endFill()
	if rs.mem != nil {
		rs.mem.Close()
		rs.mem = nil
	}
	for k, obj := range rs.readOnly {
		obj.Close()
		delete(rs.readOnly, k)
	}
	if rs.s.r.mem != nil {
		rs.s.r.mem.Close()
		rs.s.r.mem = nil
	}
}

// finish gives the process, its memory written, the rest of its state,
// and leaves it stopped (Restored). On failure the process is killed.
func (rs *restoring) finish() (_ *Restored, err error) {
	s, img, r, restored := rs.s, rs.img, rs.s.r, rs.restored
	pid, init, tramp := s.pid, rs.opt.Init, s.tramp
	defer func() {
		if err != nil {
			rs.fail()
		} else {
			rs.close()
		}
	}()
	// The memory is in: first of all, its pages not written go back to
	// being zero at their first touch.
	rs.endFill()
	if err := setMM(r, img.MM); err != nil {
		return nil, err
	}
	if calls := adviseCalls(img.VMAs); len(calls) > 0 {
		errs, _, err := r.batch(calls)
		if err != nil {
			return nil, err
		}
		for i, e := range errs {
			if e != nil {
				return nil, fmt.Errorf("give its memory the advice it had (madvise %d at %#x): %w", calls[i].args[2], calls[i].args[0], e)
			}
		}
	}
	if err := lockMemory(r, img.VMAs); err != nil {
		return nil, err
	}
	if err := restoreFiles(r, img.Files, img.Channels, rs.tree); err != nil {
		return nil, err
	}
	if err := setLocks(r, img.Locks, false); err != nil {
		return nil, err
	}
	if err := restoreSigactions(r, img.Actions); err != nil {
		return nil, err
	}
	t := img.Threads[0]
	if err := restoreMainThread(r, img, t); err != nil {
		return nil, err
	}
	seen, err := seenID(pid)
	if err != nil {
		return nil, err
	}
	if init != 0 && seen != img.Pid {
		return nil, fmt.Errorf("the new process is %d in its PID namespace, not %d as in the image", seen, img.Pid)
	}
	if t.Tid != seen {
		if err := fixCachedTid(r, t, seen); err != nil {
			return nil, err
		}
	}
	// The other threads, started by the main one, each set up in itself.
	seenTids := []int{seen}
	if len(img.Threads) > 1 {
		others, err := restoreThreads(r, img.Threads[1:], init, restored)
		if err != nil {
			return nil, err
		}
		seenTids = append(seenTids, others...)
	}
	// With every thread there: the timers that may signal one, and the
	// signals that were waiting (all blocked in every thread until it
	// runs, so none is taken meanwhile).
	newTid := map[int32]int32{}
	for i, t := range img.Threads {
		newTid[int32(t.Tid)] = int32(seenTids[i])
	}
	if err := restorePosixTimers(r, img.PosixTimers, newTid); err != nil {
		return nil, err
	}
	if err := queueSignals(r, seen, seenTids, img.Threads, img.SharedPending); err != nil {
		return nil, err
	}
	final := resumeRegs(t.Regs)

	// The last system call unmaps the trampoline; at its exit stop the
	// thread gets its own registers, and detaching lets it run from them.
	done, err := r.enter(unix.SYS_MUNMAP, tramp, workPages*pageSize)
	if err != nil {
		return nil, err
	}
	if _, err := done(); err != nil {
		return nil, fmt.Errorf("unmap the restore trampoline: %w", err)
	}
	if err := unix.PtraceSetRegs(pid, &final); err != nil {
		return nil, fmt.Errorf("set the restored registers: %w", err)
	}
	if err := setXState(pid, t.XState); err != nil {
		return nil, err
	}
	if err := setSigmask(pid, t.Sigmask); err != nil {
		return nil, err
	}
	if err := setPriorities(pid, t); err != nil {
		return nil, err
	}
	// Last, as nothing of ours may touch lazy memory from here on.
	if rs.uffd >= 0 {
		f, err := registerLazy(rs.uffd, img.VMAs)
		if err != nil {
			return nil, err
		}
		rs.uffd = -1 // the file's now
		restored.lazy = &LazyMemory{set: newLazySet(img.Lazy), spaces: []*space{{uffd: f}}}
	}
	return restored, nil
}

// restoreMainThread sets, in one batch, what the process and its main
// thread registered with the kernel: alternate signal stack, interval
// timers, umask, working directory, robust futex list, clear_child_tid
// and rseq.
func restoreMainThread(r *remote, img *Image, t Thread) error {
	const (
		altAt    = 0
		timersAt = 32
		nameAt   = timersAt + 3*32
		cwdAt    = nameAt + 16 // TASK_COMM_LEN
	)
	if len(img.Cwd)+1 > scratchSize-cwdAt {
		return fmt.Errorf("the working directory's path is too long (%d bytes)", len(img.Cwd))
	}
	data := make([]byte, cwdAt)
	type named struct {
		call sysCall
		what string
	}
	var calls []named
	if ss := t.AltStack; ss[2] != 0 && ss[1]&ssDisable == 0 {
		// The kernel works SS_ONSTACK out from the stack pointer.
		copy(data[altAt:], le64(ss[0], ss[1]&^ssOnStack, ss[2]))
		calls = append(calls, named{sc(unix.SYS_SIGALTSTACK, r.scratch+altAt, 0), "set the alternate signal stack"})
	}
	for which, it := range img.Timers {
		if it.ValueUs == 0 && it.IntervalUs == 0 {
			continue
		}
		if it.ValueUs == 0 {
			// A periodic timer reads 0 left while its signal is pending
			// (the kernel re-arms ITIMER_REAL when the signal is taken).
			// That signal comes back as a plain queued one, which re-arms
			// nothing: arm the timer for its next period, or it would be
			// set off for good.
			it.ValueUs = it.IntervalUs
		}
		at := timersAt + 32*which
		copy(data[at:], le64(uint64(it.IntervalUs/1e6), uint64(it.IntervalUs%1e6), uint64(it.ValueUs/1e6), uint64(it.ValueUs%1e6)))
		calls = append(calls, named{sc(unix.SYS_SETITIMER, uint64(which), r.scratch+uint64(at), 0), fmt.Sprintf("set interval timer %d", which)})
	}
	if name := threadName(t, img.Comm); name != "" {
		copy(data[nameAt:], name)
		calls = append(calls, named{sc(unix.SYS_PRCTL, unix.PR_SET_NAME, r.scratch+nameAt, 0, 0, 0), "set its name"})
	}
	data = append(data, cString(img.Cwd)...)
	calls = append(calls,
		named{sc(unix.SYS_UMASK, uint64(img.Umask)), "set the umask"},
		named{sc(unix.SYS_CHDIR, r.scratch+cwdAt), "enter the working directory " + img.Cwd})
	if img.NoNewPrivs {
		// In the main thread before it makes the others, which inherit it.
		calls = append(calls, named{sc(unix.SYS_PRCTL, unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "keep no_new_privs"})
	}
	if img.Personality != 0 {
		// Before it makes the others, which take it from it.
		calls = append(calls, named{sc(unix.SYS_PERSONALITY, uint64(img.Personality)), "set its personality"})
	}
	if img.NotDumpable {
		// Its memory is written by now; the rest of the restore is root's
		// (CAP_SYS_PTRACE), which this does not stop.
		calls = append(calls, named{sc(unix.SYS_PRCTL, unix.PR_SET_DUMPABLE, 0, 0, 0, 0), "stay not dumpable"})
	}
	if t.RobustList != 0 {
		calls = append(calls, named{sc(unix.SYS_SET_ROBUST_LIST, t.RobustList, t.RobustLen), "set the robust futex list"})
	}
	calls = append(calls, named{sc(unix.SYS_SET_TID_ADDRESS, t.TidAddress), "set clear_child_tid"})
	if t.RseqAddr != 0 {
		calls = append(calls, named{sc(unix.SYS_RSEQ, t.RseqAddr, uint64(t.RseqLen), 0, uint64(t.RseqSig)), "register rseq"})
	}
	batch := make([]sysCall, len(calls))
	for i, c := range calls {
		batch[i] = c.call
	}
	errs, _, err := r.batchWith(data, batch)
	if err != nil {
		return err
	}
	for i, e := range errs {
		if e != nil {
			return fmt.Errorf("%s: %w", calls[i].what, e)
		}
	}
	return nil
}

// restoreThreads starts the threads other than the main one, with their
// ids when init (of their PID namespace) is given.
func restoreThreads(r *remote, threads []Thread, init int, restored *Restored) (seenTids []int, err error) {
	err = withPidSetter(init, func(ids *pidSetter) error {
		seenTids, err = cloneThreads(r, threads, ids, restored)
		return err
	})
	return seenTids, err
}

// cloneThreads is restoreThreads with the namespace's ids in hand (or nil).
func cloneThreads(r *remote, threads []Thread, ids *pidSetter, restored *Restored) (seenTids []int, err error) {
	for _, t := range threads {
		if ids != nil {
			if err := ids.next(t.Tid); err != nil {
				return nil, err
			}
		}
		tid, err := r.cloneThread()
		if err != nil {
			return nil, err
		}
		restored.tids = append(restored.tids, tid)
		seen, err := seenID(tid)
		if err != nil {
			return nil, err
		}
		if ids != nil && seen != t.Tid {
			return nil, fmt.Errorf("thread %d came back as %d: the id is taken in its PID namespace", t.Tid, seen)
		}
		if err := restoreThread(r, tid, seen, t); err != nil {
			return nil, err
		}
		seenTids = append(seenTids, seen)
	}
	return seenTids, nil
}

// restoreThread gives a thread started by cloneThread the state of the
// image's thread t: its registrations with the kernel (set in it), its
// registers, extended state and signal mask.
func restoreThread(main *remote, tid, seen int, t Thread) error {
	r, err := main.forThread(tid)
	if err != nil {
		return err
	}
	var calls []sysCall
	if t.RobustList != 0 {
		calls = append(calls, sc(unix.SYS_SET_ROBUST_LIST, t.RobustList, t.RobustLen))
	}
	calls = append(calls, sc(unix.SYS_SET_TID_ADDRESS, t.TidAddress))
	if t.RseqAddr != 0 {
		calls = append(calls, sc(unix.SYS_RSEQ, t.RseqAddr, uint64(t.RseqLen), 0, uint64(t.RseqSig)))
	}
	if ss := t.AltStack; ss[2] != 0 && ss[1]&ssDisable == 0 {
		if err := r.write(r.scratch, le64(ss[0], ss[1]&^ssOnStack, ss[2])); err != nil {
			return err
		}
		calls = append(calls, sc(unix.SYS_SIGALTSTACK, r.scratch, 0))
	}
	if name := threadName(t, ""); name != "" {
		const nameAt = 64
		if err := r.write(r.scratch+nameAt, cString(name)); err != nil {
			return err
		}
		calls = append(calls, sc(unix.SYS_PRCTL, unix.PR_SET_NAME, r.scratch+nameAt, 0, 0, 0))
	}
	errs, _, err := r.batch(calls)
	if err != nil {
		return err
	}
	for i, e := range errs {
		if e != nil {
			return fmt.Errorf("set up thread %d (call %d): %w", t.Tid, calls[i].nr, e)
		}
	}
	if seen != t.Tid {
		if err := fixCachedTid(main, t, seen); err != nil {
			return err
		}
	}
	final := resumeRegs(t.Regs)
	if err := unix.PtraceSetRegs(tid, &final); err != nil {
		return fmt.Errorf("set the registers of thread %d: %w", tid, err)
	}
	if err := setXState(tid, t.XState); err != nil {
		return err
	}
	if err := setPriorities(tid, t); err != nil {
		return err
	}
	return setSigmask(tid, t.Sigmask)
}

// limitPriorities keeps a negative nice value (more than the default
// share of the CPU), the realtime I/O class and the realtime scheduling
// policies for root's processes only:
// an image from a file is its user's to write. (A user's process that root
// gave either loses it on a move.)
// lockMemory locks the memory the process had locked (mlock, mlock2
// MLOCK_ONFAULT), from inside it: as its user, under its limit on locked
// memory, which the caller sets on the stub before the restore
// (RLIMIT_MEMLOCK). Memory still to come (post-copy) is locked as it
// comes in.
func lockMemory(r *remote, vs []VMA) error {
	for _, v := range vs {
		if v.Advice&AdviceLocked == 0 {
			continue
		}
		var flags uint64
		if v.Advice&AdviceLockOnFault != 0 || v.Lazy {
			flags = unix.MLOCK_ONFAULT
		}
		if _, err := r.call(unix.SYS_MLOCK2, v.Start, v.End-v.Start, flags); err != nil {
			return fmt.Errorf("lock its %d KiB of memory at %#x as it had (mlock; the limit on locked memory, ulimit -l, may be lower on this node): %w", (v.End-v.Start)>>10, v.Start, err)
		}
	}
	return nil
}

// threadName is the name a thread is given back: its own, else (an image
// of before) the process's; at most 15 bytes, as the kernel keeps.
func threadName(t Thread, process string) string {
	name := t.Comm
	if name == "" {
		name = process
	}
	if len(name) > 15 {
		name = name[:15]
	}
	return name
}

func limitPriorities(img *Image) {
	for i := range img.Threads {
		t := &img.Threads[i]
		if img.UID != 0 {
			t.Nice = max(t.Nice, 0)
			t.IOPrio = int(ioprio.ForUser(ioprio.Prio(t.IOPrio)))
			if t.SchedPolicy != unix.SCHED_BATCH && t.SchedPolicy != unix.SCHED_IDLE {
				t.SchedPolicy, t.SchedPriority = 0, 0 // the realtime ones are root's
			}
		}
	}
}

// setPriorities gives a restored thread its nice value, scheduling policy
// and I/O priority. The restorer runs as root and may raise a priority,
// but only gives back one the thread had.
func setPriorities(tid int, t Thread) error {
	nice := min(max(t.Nice, -20), 19)
	if err := unix.Setpriority(unix.PRIO_PROCESS, tid, nice); err != nil {
		return fmt.Errorf("set the nice value of thread %d to %d: %w", tid, t.Nice, err)
	}
	if t.SchedPolicy != 0 {
		attr := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: uint32(t.SchedPolicy), Nice: int32(nice), Priority: uint32(t.SchedPriority)}
		if err := unix.SchedSetAttr(tid, &attr, 0); err != nil {
			return fmt.Errorf("set the scheduling policy of thread %d to %d: %w", tid, t.SchedPolicy, err)
		}
	}
	// Written through /proc (this daemon's CAP_SYS_NICE); 0 would mean
	// "the default", which a realtime thread's 0 is not.
	if t.TimerSlackNs != 0 {
		if err := os.WriteFile(fmt.Sprintf("/proc/%d/timerslack_ns", tid), []byte(strconv.FormatUint(t.TimerSlackNs, 10)), 0); err != nil {
			return fmt.Errorf("set the timer slack of thread %d: %w", tid, err)
		}
	}
	if p := ioprio.Prio(t.IOPrio); p.Valid() {
		return ioprio.Set(tid, p)
	}
	return nil
}

// resumeRegs are the registers to resume a thread with. A thread stopped
// in an interrupted system call resumes by making the call again (its
// restart bookkeeping stayed in the old kernel).
func resumeRegs(g Regs) regs {
	rg := g.raw()
	if int64(rg.Orig_rax) >= 0 {
		switch -int64(rg.Rax) {
		case errRestartSys, errRestartNoIntr, errRestartNoHand, errRestartRestartBlock:
			rg.Rax = rg.Orig_rax
			rg.Rip -= 2
		}
	}
	rg.Orig_rax = ^uint64(0)
	return rg
}

// fixCachedTid corrects glibc's cached thread id, if it is there.
func fixCachedTid(r *remote, t Thread, tid int) error {
	addr := t.Regs.FsBase + glibcTidOffset
	b := make([]byte, 4)
	if t.Regs.FsBase == 0 || r.read(addr, b) != nil {
		return nil
	}
	if int(int32(binary.LittleEndian.Uint32(b))) != t.Tid {
		return nil // not glibc's layout: leave it
	}
	binary.LittleEndian.PutUint32(b, uint32(tid))
	return r.write(addr, b)
}

// setMM gives the address space the image's layout (break, stack,
// arguments, environment, auxiliary vector).
func setMM(r *remote, mm MM) error {
	auxv := make([]byte, 8*len(mm.Auxv))
	for i, v := range mm.Auxv {
		binary.LittleEndian.PutUint64(auxv[8*i:], v)
	}
	// struct prctl_mm_map, then the auxiliary vector right after it.
	const mapSize = 12*8 + 4 + 4
	auxvAt := r.scratch + mapSize
	buf := le64(mm.StartCode, mm.EndCode, mm.StartData, mm.EndData, mm.StartBrk, mm.Brk, mm.StartStack,
		mm.ArgStart, mm.ArgEnd, mm.EnvStart, mm.EnvEnd, auxvAt)
	buf = binary.LittleEndian.AppendUint32(buf, uint32(len(auxv)))
	buf = binary.LittleEndian.AppendUint32(buf, ^uint32(0)) // exe_fd: keep
	buf = append(buf, auxv...)
	if len(buf) > pageSize {
		return fmt.Errorf("auxiliary vector of %d bytes is too large", len(auxv))
	}
	if _, err := r.callScratch(unix.SYS_PRCTL, buf, 0, nil, unix.PR_SET_MM, unix.PR_SET_MM_MAP, r.scratch, mapSize); err != nil {
		return fmt.Errorf("set the memory layout: %w", err)
	}
	return nil
}

// moveVDSO moves the kernel's vDSO and its data pages to where the image
// had them: the process's code calls into them at those addresses.
func moveVDSO(r *remote, stub []vma, image []VMA, tramp uint64) error {
	names := []string{"[vvar]", "[vvar_vclock]", "[vdso]"}
	var moves []struct{ from, to, size uint64 }
	for _, n := range names {
		iv := slices.IndexFunc(image, func(v VMA) bool { return v.Name == n })
		sv := slices.IndexFunc(stub, func(v vma) bool { return v.Path == n })
		switch {
		case iv < 0 && sv < 0:
			continue
		case iv < 0 || sv < 0:
			return fmt.Errorf("the image's kernel mappings differ from this kernel's (%s): restore it on a node with the same kernel", n)
		}
		is, ss := image[iv], stub[sv]
		if is.End-is.Start != ss.size() {
			return fmt.Errorf("the image's %s has %d bytes, this kernel's %d: restore it on a node with the same kernel", n, is.End-is.Start, ss.size())
		}
		moves = append(moves, struct{ from, to, size uint64 }{ss.Start, is.Start, ss.size()})
	}
	// Move them out of the way first, then into place, so that no move
	// lands on a mapping that has not moved yet.
	var total uint64
	for _, m := range moves {
		total += m.size
	}
	park, err := freeRange(append(slices.Clone(image), VMA{Start: tramp, End: tramp + workPages*pageSize}), stub, total)
	if err != nil {
		return err
	}
	// One batch: out of the way, then into place.
	var calls []sysCall
	at := park
	for _, m := range moves {
		calls = append(calls, sc(unix.SYS_MREMAP, m.from, m.size, m.size, unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED, at))
		at += m.size
	}
	at = park
	for _, m := range moves {
		calls = append(calls, sc(unix.SYS_MREMAP, at, m.size, m.size, unix.MREMAP_MAYMOVE|unix.MREMAP_FIXED, m.to))
		at += m.size
	}
	errs, _, err := r.batch(calls)
	if err != nil {
		return err
	}
	for _, e := range errs {
		if e != nil {
			return fmt.Errorf("move the vDSO into place: %w", e)
		}
	}
	return nil
}

// freeRange finds an address range of size bytes used neither by the
// image nor by the stub (nor the trampoline, which lies below it: ranges
// are taken from the top of the usual mmap area down).
func freeRange(image []VMA, stub []vma, size uint64) (uint64, error) {
	type span struct{ lo, hi uint64 }
	var used []span
	for _, v := range image {
		used = append(used, span{v.Start, v.End})
	}
	for _, v := range stub {
		used = append(used, span{v.Start, v.End})
	}
	slices.SortFunc(used, func(a, b span) int {
		switch {
		case a.lo < b.lo:
			return -1
		case a.lo > b.lo:
			return 1
		}
		return 0
	})
	// Search between 1 GiB and 64 TiB, the first gap that fits, going up.
	cand := uint64(1 << 30)
	for _, u := range used {
		if u.hi <= cand {
			continue
		}
		if u.lo >= cand+size+pageSize {
			return cand, nil
		}
		cand = (u.hi + pageSize) &^ (pageSize - 1)
	}
	if cand+size < 1<<46 {
		return cand, nil
	}
	return 0, errors.New("no free address range for the restore trampoline")
}
