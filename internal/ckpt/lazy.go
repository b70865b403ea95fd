package ckpt

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"runtime"
	"slices"
	"sort"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Post-copy ("lazy") migration. A process of a GiB stands still for the
// seconds its memory takes to cross the link; post-copy makes it run on
// the target after its small state has crossed, and brings the bulk of its
// memory after it: large anonymous mappings are left out of the image, the
// target registers them with userfaultfd, and a page the process touches
// before it arrived is asked of the source ahead of the rest, which streams
// in the background. Soft-dirty pre-copy is not possible here (the kernel
// lacks it), so post-copy is the way to a short freeze.
//
// The price (as for CRIU's lazy pages): until the last page has arrived
// the process needs the source; if the source or the link dies in that
// window, the process is lost. So it is asked for (mosaic migrate --lazy).

// LazyRun is a run of pages the source has that the image does not carry.
type LazyRun struct{ Addr, Pages uint64 }

// lazyMinBytes is the smallest mapping left for later: small ones cost
// more in faults than they save in freeze time.
const lazyMinBytes = 4 << 20

// MakeLazy leaves the large anonymous mappings of a frozen process out of
// its image (img, from Freeze): they are marked Lazy, img.Lazy lists the
// pages of theirs the process has, and ReadMemory skips them. Mappings that
// hold a thread's stack or TLS stay in the image: the restore touches them.
func (f *Frozen) MakeLazy(img *Image) error {
	near := func(v VMA) bool {
		for _, t := range img.Threads {
			for _, a := range []uint64{t.Regs.Rsp, t.Regs.FsBase} {
				if a >= v.Start && a < v.End {
					return true
				}
			}
		}
		return false
	}
	pm, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", f.pid))
	if err != nil {
		return fmt.Errorf("open the page map: %w", err)
	}
	defer pm.Close()
	img.Lazy = nil
	var entries []byte
	for i := range img.VMAs {
		v := &img.VMAs[i]
		if v.Kind != VMAAnon || v.Shared || v.GrowsDown || v.Prot&unix.PROT_WRITE == 0 || v.End-v.Start < lazyMinBytes || near(*v) {
			continue
		}
		v.Lazy = true
		n := (v.End - v.Start) / pageSize
		if uint64(cap(entries)) < 8*n {
			entries = make([]byte, 8*n)
		}
		entries = entries[:8*n]
		if _, err := pm.ReadAt(entries, int64(v.Start/pageSize*8)); err != nil {
			return fmt.Errorf("read the page map of %#x-%#x: %w", v.Start, v.End, err)
		}
		has := func(i uint64) bool { return binary.LittleEndian.Uint64(entries[8*i:])&(pmPresent|pmSwapped) != 0 }
		for p := uint64(0); p < n; {
			if !has(p) {
				p++
				continue
			}
			q := p + 1
			for q < n && has(q) {
				q++
			}
			img.Lazy = append(img.Lazy, LazyRun{Addr: v.Start + p*pageSize, Pages: q - p})
			p = q
		}
	}
	f.vmas = img.VMAs
	return nil
}

// lazyPages counts the pages of runs.
func lazyPages(runs []LazyRun) uint64 {
	var n uint64
	for _, r := range runs {
		n += r.Pages
	}
	return n
}

// The lazy pages travel after the image on the same link, as records of
// their own: address (8 bytes), pages (4), CRC-32C of the data (4), data.
// A record of 0 pages ends them.
const lazyHeader = 16

// lazySet tracks, page by page, which lazy pages are done (sent, or
// copied into the process). Pages are numbered by their place in the runs.
type lazySet struct {
	runs  []LazyRun
	first []uint64 // number of each run's first page
	done  []uint64 // bitset
	left  uint64
}

func newLazySet(runs []LazyRun) *lazySet {
	s := &lazySet{runs: runs}
	var n uint64
	for _, r := range runs {
		s.first = append(s.first, n)
		n += r.Pages
	}
	s.done = make([]uint64, (n+63)/64)
	s.left = n
	return s
}

// find gives the run and page of address a, if a lazy page.
func (s *lazySet) find(a uint64) (run int, page uint64, ok bool) {
	i := sort.Search(len(s.runs), func(i int) bool { return s.runs[i].Addr+s.runs[i].Pages*pageSize > a })
	if i == len(s.runs) || a < s.runs[i].Addr {
		return 0, 0, false
	}
	return i, (a - s.runs[i].Addr) / pageSize, true
}

func (s *lazySet) isDone(run int, page uint64) bool {
	n := s.first[run] + page
	return s.done[n/64]&(1<<(n%64)) != 0
}

func (s *lazySet) mark(run int, page uint64) {
	n := s.first[run] + page
	if s.done[n/64]&(1<<(n%64)) == 0 {
		s.done[n/64] |= 1 << (n % 64)
		s.left--
	}
}

// LazyServer sends a frozen process's lazy pages (the source's side).
type LazyServer struct {
	f    *Frozen
	set  *lazySet
	mem  *procMem
	buf  []byte
	next int    // the run the background stream is at
	at   uint64 // and the page in it: every page before is sent
}

// NewLazyServer serves the pages img.Lazy lists (see MakeLazy).
func (f *Frozen) NewLazyServer(img *Image) (*LazyServer, error) {
	mem, err := openProcMem(f.pid)
	if err != nil {
		return nil, err
	}
	return &LazyServer{f: f, set: newLazySet(img.Lazy), mem: mem}, nil
}

// Serve writes every lazy page to w, those asked for on wants (addresses)
// ahead of the rest, and the end record; it returns when all are sent, or
// on the first error, or when ctx ends.
func (s *LazyServer) Serve(ctx context.Context, w io.Writer, wants <-chan uint64) error {
	defer s.mem.Close()
	const stream = 64 // pages per background record
	const asked = 16  // pages sent for a fault, from the faulting one on
	for s.set.left > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case a, ok := <-wants:
			if !ok {
				wants = nil
				continue
			}
			if run, page, ok := s.set.find(a); ok && !s.set.isDone(run, page) {
				if err := s.send(w, run, page, asked); err != nil {
					return err
				}
			}
			continue
		default:
		}
		for s.next < len(s.set.runs) {
			run := s.next
			// Pages only ever become sent: the stream's place moves on
			// (scanning from the run's start for each record is
			// quadratic: a gigabyte cost most of a second of CPU).
			for s.at < s.set.runs[run].Pages && s.set.isDone(run, s.at) {
				s.at++
			}
			if s.at == s.set.runs[run].Pages {
				s.next, s.at = s.next+1, 0
				continue
			}
			if err := s.send(w, run, s.at, stream); err != nil {
				return err
			}
			break
		}
	}
	var end [lazyHeader]byte
	_, err := w.Write(end[:])
	return err
}

// send writes up to most pages of run from page on that are not sent yet
// (stopping at the first one that is).
func (s *LazyServer) send(w io.Writer, run int, page, most uint64) error {
	r := s.set.runs[run]
	n := uint64(0)
	for page+n < r.Pages && n < most && !s.set.isDone(run, page+n) {
		n++
	}
	if n == 0 {
		return nil
	}
	size := lazyHeader + int(n)*pageSize
	if cap(s.buf) < size {
		s.buf = make([]byte, size)
	}
	b := s.buf[:size]
	addr := r.Addr + page*pageSize
	if _, err := s.mem.ReadAt(b[lazyHeader:], int64(addr)); err != nil {
		return fmt.Errorf("read lazy memory at %#x: %w", addr, err)
	}
	binary.LittleEndian.PutUint64(b[0:], addr)
	binary.LittleEndian.PutUint32(b[8:], uint32(n))
	binary.LittleEndian.PutUint32(b[12:], crc32.Checksum(b[lazyHeader:], castagnoli))
	if _, err := w.Write(b); err != nil {
		return err
	}
	for i := range n {
		s.set.mark(run, page+i)
	}
	return nil
}

// userfaultfd ABI (linux/userfaultfd.h).
const (
	uffdAPI            = 0xaa
	uffdioAPI          = 0xc018aa3f
	uffdioRegister     = 0xc020aa00
	uffdioCopy         = 0xc028aa03
	uffdioZeropage     = 0xc020aa04
	uffdioWake         = 0x8010aa02
	userfaultfdIocNew  = 0xaa00
	uffdRegMissing     = 1
	uffdEventPagefault = 0x12
	uffdEventFork      = 0x13
	uffdEventRemap     = 0x14
	uffdEventRemove    = 0x15
	uffdEventUnmap     = 0x16
	// The events that change the address space while pages are missing:
	// each must be seen, or a page could arrive where it no longer belongs.
	uffdFeatures = 0x2 | 0x4 | 0x8 | 0x40 // EVENT_FORK, _REMAP, _REMOVE, _UNMAP
	uffdMsgSize  = 32
)

// makeUserfaultfd creates, in the process being restored, a userfaultfd
// from the /dev/userfaultfd descriptor dev the process was started with
// (the process runs as its user, who may not create one with the system
// call: vm.unprivileged_userfaultfd is 0; the device's descriptor, opened
// by the daemon, may), takes it over, and closes both in the process.
func makeUserfaultfd(r *remote, pid, dev int) (int, error) {
	ufd, err := r.call(unix.SYS_IOCTL, uint64(dev), userfaultfdIocNew, unix.O_CLOEXEC|unix.O_NONBLOCK)
	if err != nil {
		return -1, fmt.Errorf("create a userfaultfd in the process: %w", err)
	}
	defer r.call(unix.SYS_CLOSE, ufd)
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1, fmt.Errorf("open a pidfd of %d: %w", pid, err)
	}
	defer unix.Close(pidfd)
	fd, err := unix.PidfdGetfd(pidfd, int(ufd), 0)
	if err != nil {
		return -1, fmt.Errorf("take the process's userfaultfd: %w", err)
	}
	unix.CloseOnExec(fd)
	return fd, nil
}

// registerLazy registers the lazy mappings with the userfaultfd fd and
// returns it as a file (pollable only once set up: before, it polls as an
// error, which Go's poller would keep).
func registerLazy(fd int, vmas []VMA) (*os.File, error) {
	if err := uffdEnable(fd, uffdFeatures); err != nil {
		return nil, err
	}
	for _, v := range vmas {
		if !v.Lazy {
			continue
		}
		if err := uffdRegister(fd, v); err != nil {
			return nil, fmt.Errorf("register %#x-%#x for lazy pages: %w", v.Start, v.End, err)
		}
	}
	return os.NewFile(uintptr(fd), "userfaultfd"), nil
}

// uffdEnable sets up the userfaultfd fd (UFFDIO_API) with features.
func uffdEnable(fd int, features uint64) error {
	api := [3]uint64{uffdAPI, features, 0}
	if err := rawIoctl(fd, uffdioAPI, unsafe.Pointer(&api)); err != nil {
		return fmt.Errorf("set up the userfaultfd: %w", err)
	}
	return nil
}

// uffdRegister registers mapping v with the userfaultfd fd for its
// missing pages.
func uffdRegister(fd int, v VMA) error {
	reg := [4]uint64{v.Start, v.End - v.Start, uffdRegMissing, 0}
	return rawIoctl(fd, uffdioRegister, unsafe.Pointer(&reg))
}

// rawIoctl is ioctl(2) on a descriptor that is not an *os.File.
func rawIoctl(fd int, req uintptr, arg unsafe.Pointer) error {
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), req, uintptr(arg)); e != 0 {
		return e
	}
	return nil
}

func uffdIoctl(f *os.File, req uintptr, arg unsafe.Pointer) error {
	var errno syscall.Errno
	err := withFd(f, func(fd uintptr) {
		_, _, errno = syscall.Syscall(syscall.SYS_IOCTL, fd, req, uintptr(arg))
	})
	if err != nil {
		return err
	}
	if errno != 0 {
		return errno
	}
	return nil
}

// withFd runs fn with f's descriptor, without os.File.Fd (which would make
// a pollable descriptor blocking).
func withFd(f *os.File, fn func(fd uintptr)) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	return rc.Control(fn)
}

// LazyMemory fills a restored process's lazy pages as they come (the
// target's side).
type LazyMemory struct {
	set    *lazySet
	spaces []*space
	// Stats, for logs and benchmarks: pages asked for on a fault, and
	// changes of the address space followed.
	Asked, Changes int

	// While Run runs.
	ctx   context.Context
	ready chan struct{} // a space has events to read
	watch func(*space)
	asked map[uint64]bool
	want  func(uint64) error
}

// space is one address space served: the process's, and those of
// children it forks before all pages are there (they miss the same pages).
type space struct {
	uffd *os.File
	// remaps are the process's mremaps of lazy memory, in order: a page
	// from the source goes where they took it.
	remaps []remap
	// dropped are ranges (as they are now) the process unmapped or
	// discarded: what was there must not come back.
	dropped [][2]uint64
	dead    bool
	// kick tells the space's watcher that its events were read: it may
	// wait for the next.
	kick chan struct{}
}

type remap struct{ from, to, len uint64 }

// to gives where the source's page a is in this space now.
func (sp *space) to(a uint64) uint64 {
	for _, m := range sp.remaps {
		if a >= m.from && a < m.from+m.len {
			a = m.to + (a - m.from)
		}
	}
	return a
}

// from gives the source address of the page at a in this space.
func (sp *space) from(a uint64) uint64 {
	for i := len(sp.remaps) - 1; i >= 0; i-- {
		m := sp.remaps[i]
		if a >= m.to && a < m.to+m.len {
			a = m.from + (a - m.to)
		}
	}
	return a
}

func (sp *space) isDropped(a uint64) bool {
	for _, d := range sp.dropped {
		if a >= d[0] && a < d[1] {
			return true
		}
	}
	return false
}

// Lazy is the restored process's memory still to come, or nil if none.
func (r *Restored) Lazy() *LazyMemory { return r.lazy }

// Pages is how many pages are still to come.
func (l *LazyMemory) Pages() uint64 { return l.set.left }

type uffdEvent struct {
	sp  *space
	msg [uffdMsgSize]byte
	err error
}

// Events are read only by the goroutine that copies pages, and followed
// before it copies again. The kernel holds a discarding or unmapping
// thread until its event is read, then lets it go on: an event read by
// another goroutine and not yet followed would leave a window in which a
// page copied into a range the process just discarded survives the
// discard, and the process reads stale memory where it expects zeros.
// Watchers only wait (poll) for events and say so.

// Run copies the pages read from r (the source's lazy records) into the
// process, asks (want) for a page the process waits for, and follows
// the process's changes to its address space. It returns nil when every
// page is in, an error when the stream fails first (the process cannot
// go on without its memory: the caller kills it).
func (l *LazyMemory) Run(ctx context.Context, r io.Reader, want func(addr uint64) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer l.close()
	ready := make(chan struct{}, 1)
	watch := func(sp *space) {
		sp.kick = make(chan struct{}, 1)
		var fd int
		if rc, err := sp.uffd.SyscallConn(); err == nil {
			rc.Control(func(f uintptr) { fd = int(f) })
		}
		go func() {
			for ctx.Err() == nil {
				pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
				n, err := unix.Poll(pfd, 100)
				if err != nil && !errors.Is(err, syscall.EINTR) {
					return
				}
				if n == 0 {
					continue
				}
				if pfd[0].Revents&unix.POLLNVAL != 0 {
					return // closed: Run is over
				}
				select {
				case ready <- struct{}{}:
				default:
				}
				select {
				case <-sp.kick:
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	type record struct {
		addr uint64
		data []byte
		err  error
	}
	records := make(chan record, 4)
	go func() {
		br, ok := r.(*bufio.Reader)
		if !ok {
			br = bufio.NewReaderSize(r, 1<<20)
		}
		for {
			var h [lazyHeader]byte
			var rec record
			if _, err := io.ReadFull(br, h[:]); err != nil {
				rec.err = fmt.Errorf("read lazy pages: %w", err)
			} else if n := binary.LittleEndian.Uint32(h[8:]); n == 0 {
				rec.err = io.EOF
			} else if n > 1<<16 {
				rec.err = fmt.Errorf("a lazy record of %d pages: %w", n, ErrCorrupt)
			} else {
				rec.addr = binary.LittleEndian.Uint64(h[:])
				rec.data = make([]byte, int(n)*pageSize)
				if _, err := io.ReadFull(br, rec.data); err != nil {
					rec.err = fmt.Errorf("read lazy pages: %w", err)
				} else if crc32.Checksum(rec.data, castagnoli) != binary.LittleEndian.Uint32(h[12:]) {
					rec.err = fmt.Errorf("lazy pages at %#x: %w", rec.addr, ErrCorrupt)
				}
			}
			select {
			case records <- rec:
			case <-ctx.Done():
				return
			}
			if rec.err != nil {
				return
			}
		}
	}()
	l.ctx, l.ready, l.watch, l.asked, l.want = ctx, ready, watch, map[uint64]bool{}, want
	// Every space has its watcher (forks add theirs as they come): a
	// space without one has its faults read only when a copy happens to
	// need it, and the process waits for the stream to reach its page.
	for _, sp := range l.spaces {
		watch(sp)
	}
	for l.set.left > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case rec := <-records:
			if rec.err != nil {
				if errors.Is(rec.err, io.EOF) {
					return fmt.Errorf("the source ended with %d lazy pages not sent", l.set.left)
				}
				return rec.err
			}
			if err := l.fill(rec.addr, rec.data); err != nil {
				return err
			}
		case <-ready:
			if _, err := l.readEvents(); err != nil {
				return err
			}
		}
	}
	return nil
}

// readEvents reads and follows every event waiting in every space, and
// says how many there were.
func (l *LazyMemory) readEvents() (int, error) {
	n := 0
	// By index: a fork adds a space, whose events are read too.
	for i := 0; i < len(l.spaces); i++ {
		sp := l.spaces[i]
		for !sp.dead {
			ev := uffdEvent{sp: sp}
			got, err := readEvent(sp.uffd, ev.msg[:])
			if errors.Is(err, syscall.EAGAIN) {
				break
			}
			if err == nil && got < len(ev.msg) {
				err = io.ErrUnexpectedEOF
			}
			ev.err = err
			n++
			if err := l.event(ev); err != nil {
				return n, err
			}
			if ev.err != nil {
				break
			}
		}
		select {
		case sp.kick <- struct{}{}:
		default:
		}
	}
	return n, nil
}

// readEvent reads one message without waiting (EAGAIN: none).
func readEvent(uffd *os.File, b []byte) (int, error) {
	rc, err := uffd.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var rerr error
	if err := rc.Read(func(fd uintptr) bool {
		n, rerr = unix.Read(int(fd), b)
		return true // one try: never wait here
	}); err != nil {
		return 0, err
	}
	return n, rerr
}

// event follows one event of a space: a fault (the page is asked for,
// or zero-filled), a fork (the child's space is served too), or a change
// of the address space.
func (l *LazyMemory) event(ev uffdEvent) error {
	if ev.err != nil {
		if ev.sp == l.spaces[0] {
			return fmt.Errorf("read the process's page faults: %w", ev.err)
		}
		ev.sp.dead = true
		return nil
	}
	sp, m := ev.sp, ev.msg
	arg := func(i int) uint64 { return binary.LittleEndian.Uint64(m[8+8*i:]) }
	switch m[0] {
	case uffdEventPagefault:
		at := arg(1) &^ (pageSize - 1)
		src := sp.from(at)
		run, page, ok := l.set.find(src)
		if !ok || l.set.isDone(run, page) || sp.isDropped(at) {
			// Never touched at the source, or discarded since: a
			// zero page; or copied meanwhile: wake the thread.
			err := l.retry(func() error { return zeroPage(sp.uffd, at) })
			if err != nil && !errors.Is(err, syscall.EEXIST) && !gone(err) {
				return fmt.Errorf("zero page at %#x: %w", at, err)
			}
			wake(sp.uffd, at)
			return nil
		}
		if !l.asked[src] {
			l.asked[src] = true
			l.Asked++
			if err := l.want(src); err != nil {
				return fmt.Errorf("ask for the page at %#x: %w", src, err)
			}
		}
	case uffdEventFork, uffdEventRemap, uffdEventRemove, uffdEventUnmap:
		l.Changes++
	}
	switch m[0] {
	case uffdEventFork:
		fd := int(binary.LittleEndian.Uint32(m[8:]))
		unix.CloseOnExec(fd)
		unix.SetNonblock(fd, true) // its events are read without waiting
		child := &space{uffd: os.NewFile(uintptr(fd), "userfaultfd"), remaps: slices.Clone(sp.remaps), dropped: slices.Clone(sp.dropped)}
		l.spaces = append(l.spaces, child)
		l.watch(child)
	case uffdEventRemap:
		sp.remaps = append(sp.remaps, remap{from: arg(0), to: arg(1), len: arg(2)})
	case uffdEventRemove, uffdEventUnmap:
		sp.dropped = append(sp.dropped, [2]uint64{arg(0), arg(1)})
	}
	return nil
}

// fill copies a record's pages into every space, where each page is now,
// skipping what is there already or was discarded: runs of pages that
// are all still to come, and sit unchanged in a space, in one call.
func (l *LazyMemory) fill(addr uint64, data []byte) error {
	for off := 0; off < len(data); {
		src := addr + uint64(off)
		run, page, ok := l.set.find(src)
		if !ok {
			return fmt.Errorf("lazy page at %#x, which the image does not list: %w", src, ErrCorrupt)
		}
		if l.set.isDone(run, page) {
			off += pageSize
			continue
		}
		n := uint64(1)
		for uint64(off)+(n+1)*pageSize <= uint64(len(data)) && page+n < l.set.runs[run].Pages && !l.set.isDone(run, page+n) {
			n++
		}
		content := data[off : off+int(n)*pageSize]
		// By index: a fork while a copy waits adds a space, which misses
		// these pages too.
		for i := 0; i < len(l.spaces); i++ {
			if err := l.fillSpace(l.spaces[i], src, content); err != nil {
				return err
			}
		}
		for k := range n {
			l.set.mark(run, page+k)
		}
		off += int(n) * pageSize
	}
	return nil
}

// fillSpace copies pages from the source's address src into one space.
func (l *LazyMemory) fillSpace(sp *space, src uint64, content []byte) error {
	for len(content) > 0 {
		if sp.dead {
			return nil
		}
		var at, copied uint64
		err := l.retry(func() error {
			// (Again after events: the pages may have moved or gone.)
			n := uint64(len(content))
			if len(sp.remaps) > 0 || len(sp.dropped) > 0 {
				n = pageSize // the space changed: page by page
			}
			if at = sp.to(src); sp.isDropped(at) {
				copied = pageSize
				return nil
			}
			var err error
			copied, err = copyPages(sp.uffd, at, content[:n])
			return err
		})
		switch {
		case err == nil:
		case errors.Is(err, syscall.EEXIST):
			copied += pageSize // that page was there: skip it
		case gone(err):
			copied = max(copied, pageSize)
		default:
			return fmt.Errorf("copy lazy pages to %#x: %w", at, err)
		}
		copied = min(copied, uint64(len(content)))
		src += copied
		content = content[copied:]
	}
	return nil
}

// retry makes a userfaultfd call, and while the kernel refuses it because
// the address space is changing (EAGAIN: an event is pending), follows
// the events first.
func (l *LazyMemory) retry(call func() error) error {
	for {
		err := call()
		if !errors.Is(err, syscall.EAGAIN) {
			return err
		}
		n, err := l.readEvents()
		if err != nil {
			return err
		}
		if n == 0 {
			// The change is announced but its event not queued yet.
			select {
			case <-time.After(100 * time.Microsecond):
			case <-l.ctx.Done():
				return l.ctx.Err()
			}
		}
	}
}

// gone says a userfaultfd call failed because its page or its space is
// gone (unmapped meanwhile; the process exited or ran another program).
func gone(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ESRCH) || errors.Is(err, syscall.EINVAL)
}

// copyPages copies b to at; it returns how many bytes it copied before an
// error (EEXIST: at the first page that was there already).
func copyPages(uffd *os.File, at uint64, b []byte) (n uint64, err error) {
	if werr := withFd(uffd, func(fd uintptr) { n, err = uffdCopy(fd, at, b) }); werr != nil {
		return 0, werr
	}
	return n, err
}

// uffdCopy is copyPages on the userfaultfd's descriptor.
func uffdCopy(fd uintptr, at uint64, b []byte) (uint64, error) {
	c := [5]uint64{at, uint64(uintptr(unsafe.Pointer(&b[0]))), uint64(len(b)), 0, 0}
	_, _, errno := syscall.Syscall(syscall.SYS_IOCTL, fd, uffdioCopy, uintptr(unsafe.Pointer(&c)))
	runtime.KeepAlive(b)
	if errno == 0 {
		return uint64(len(b)), nil
	}
	if n := int64(c[4]); n > 0 {
		return uint64(n), errno
	}
	return 0, errno
}

func zeroPage(uffd *os.File, at uint64) error {
	z := [4]uint64{at, pageSize, 0, 0}
	return uffdIoctl(uffd, uffdioZeropage, unsafe.Pointer(&z))
}

func wake(uffd *os.File, at uint64) {
	w := [2]uint64{at, pageSize}
	uffdIoctl(uffd, uffdioWake, unsafe.Pointer(&w))
}

// close lets go of the process's memory: with every page in, nothing is
// missing; closing earlier (a failure) leaves the rest to fault as zero
// pages, which is why the caller then kills the process.
func (l *LazyMemory) close() {
	for _, sp := range l.spaces {
		sp.uffd.Close()
	}
}
