package ckpt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const pageSize = 4096

// pagemap bits (proc(5)).
const (
	pmPresent = 1 << 63
	pmSwapped = 1 << 62
	pmFile    = 1 << 61 // file page or shared anonymous
)

// vmaKind classifies a mapping for the image.
func vmaKind(v vma) string {
	switch v.Path {
	case "[vdso]", "[vvar]", "[vvar_vclock]":
		return VMAVDSO
	case "[vsyscall]":
		return VMAVsyscall
	}
	if strings.HasPrefix(v.Path, "/") && v.Inode != 0 && !strings.HasSuffix(v.Path, " (deleted)") {
		return VMAFile
	}
	return VMAAnon
}

// imageVMAs turns /proc's mappings into the image's.
func imageVMAs(vs []vma) ([]VMA, error) {
	out := make([]VMA, 0, len(vs))
	for _, v := range vs {
		iv := VMA{
			Start: v.Start, End: v.End, Prot: v.prot(), Shared: v.Shared, Kind: vmaKind(v),
			Name: v.Path, Offset: v.Offset, GrowsDown: v.Path == "[stack]",
		}
		if iv.Kind == VMAFile {
			st, err := os.Stat(v.Path)
			if err != nil {
				return nil, fmt.Errorf("look at the mapped file %s: %w", v.Path, err)
			}
			iv.FileSize, iv.FileMtime = st.Size(), st.ModTime().UnixNano()
		}
		out = append(out, iv)
	}
	return out, nil
}

// checkFiles makes sure that the files the image maps are, on this node,
// the files it mapped: another copy of a library would be garbage under
// the process's pointers.
func checkFiles(vs []VMA) error {
	seen := map[string]bool{}
	for _, v := range vs {
		if v.Kind != VMAFile || seen[v.Name] {
			continue
		}
		seen[v.Name] = true
		st, err := os.Stat(v.Name)
		if err != nil {
			return fmt.Errorf("the process maps %s, which this node lacks: %w", v.Name, err)
		}
		if st.Size() != v.FileSize || st.ModTime().UnixNano() != v.FileMtime {
			return fmt.Errorf("the process maps %s, and this node's copy differs (size %d, modified %s; the process's: size %d, modified %s): run it where the files are the same",
				v.Name, st.Size(), st.ModTime().Format(time.RFC3339), v.FileSize, time.Unix(0, v.FileMtime).Format(time.RFC3339))
		}
	}
	return nil
}

// ReadMemory reads the frozen process's memory and gives it to fn in runs
// of at most runBytes; a run's data is valid until fn returns. It carries
// every page of anonymous memory that was ever touched and the pages of
// private file mappings that the process changed: pages that equal their
// file are mapped again from it, pages never touched are zero again.
// The first aheadAfter bytes are read between fn's calls; after that,
// reading and fn overlap: a goroutine reads ahead into free buffers while
// fn consumes.
func (f *Frozen) ReadMemory(fn func(PageRun) error) error {
	// Memory its processes share goes once, with the first that maps it.
	var seen sharedPages
	if len(f.children) > 0 {
		seen = sharedPages{}
	}
	if err := f.readMemory(fn, seen); err != nil {
		return err
	}
	// Then its descendants', each run marked whose.
	for i, c := range f.children {
		proc := i + 1
		if err := c.readMemory(func(p PageRun) error {
			p.Proc = proc
			return fn(p)
		}, seen); err != nil {
			return fmt.Errorf("its child %d: %w", c.pid, err)
		}
	}
	return nil
}

// sharedPages are the pages of a tree's shared memory (VMA.SharedMem) a
// checkpoint has carried, by object and page in it: each goes once,
// written at the restore through whichever process maps it.
type sharedPages map[int][]uint64 // bit sets

// first says whether page of shared memory object k is not carried yet,
// and marks it carried.
func (s sharedPages) first(k int, page uint64) bool {
	bits := s[k]
	if w := page/64 + 1; uint64(len(bits)) < w {
		bits = append(bits, make([]uint64, w-uint64(len(bits)))...)
		s[k] = bits
	}
	if bits[page/64]&(1<<(page%64)) != 0 {
		return false
	}
	bits[page/64] |= 1 << (page % 64)
	return true
}

// readMemory reads the process's own memory, as ReadMemory does, but
// for the shared pages seen (if not nil) says were carried already.
func (f *Frozen) readMemory(fn func(PageRun) error, seen sharedPages) error {
	pm, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", f.pid))
	if err != nil {
		return fmt.Errorf("open the page map: %w", err)
	}
	defer pm.Close()
	mem, err := openProcMem(f.pid)
	if err != nil {
		return err
	}
	defer mem.Close()

	scan := &spanScan{pid: f.pid, vmas: f.vmas, pm: pm, seen: seen}
	read := func(s span, buf []byte) (PageRun, error) {
		data := buf[:s.pages*pageSize]
		if _, err := mem.ReadAt(data, int64(s.addr)); err != nil {
			return PageRun{}, fmt.Errorf("read memory at %#x (%d pages of %s): %w", s.addr, s.pages, s.name, err)
		}
		sum := crc32.Update(pageSumStart(s.addr, len(data)), castagnoli, data)
		return PageRun{Addr: s.addr, Data: data, sum: sum, summed: true}, nil
	}

	// Most processes are small: read in this goroutine, one buffer.
	buf := f.buffers.Get(runBytes)
	for sent := 0; sent < aheadAfter; {
		s, ok, err := scan.next()
		if err != nil || !ok {
			f.buffers.Put(buf)
			return err
		}
		run, err := read(s, buf)
		if err == nil {
			err = fn(run)
		}
		if err != nil {
			f.buffers.Put(buf)
			return err
		}
		sent += len(run.Data)
	}

	// The rest read ahead.
	const depth = 3
	free := make(chan []byte, depth)
	free <- buf
	for range depth - 1 {
		free <- f.buffers.Get(runBytes)
	}
	type result struct {
		run PageRun
		err error
	}
	full := make(chan result, depth)
	stop := make(chan struct{})
	reader := make(chan struct{})
	defer func() {
		// The buffers go back once the reader is done with them.
		close(stop)
		<-reader
		for len(free) > 0 {
			f.buffers.Put(<-free)
		}
		for r := range full {
			f.buffers.Put(r.run.Data)
		}
	}()
	go func() {
		defer close(reader)
		defer close(full)
		for {
			s, ok, err := scan.next()
			if err != nil {
				select {
				case full <- result{err: err}:
				case <-stop:
				}
				return
			}
			if !ok {
				return
			}
			var buf []byte
			select {
			case buf = <-free:
			case <-stop:
				return
			}
			run, err := read(s, buf)
			if err != nil {
				free <- buf
				select {
				case full <- result{err: err}:
				case <-stop:
				}
				return
			}
			select {
			case full <- result{run: run}:
			case <-stop:
				free <- buf
				return
			}
		}
	}()
	for r := range full {
		if r.err != nil {
			return r.err
		}
		err := fn(r.run)
		free <- r.run.Data[:cap(r.run.Data)]
		if err != nil {
			return err
		}
	}
	return nil
}

// RunBuffer is the size of the buffers a checkpoint and a restore take
// from a pool (Frozen.UseBuffers, RestoreOptions.Buffers): a run of
// memory, with its record's head.
const RunBuffer = runHead + runBytes

// aheadAfter is how much of a process's memory is read before a
// goroutine starts reading ahead (on the target, decoding ahead): below
// it, handing each run between two goroutines costs more than the overlap
// gains (a wake-up of another thread, often on the other CPU, per run).
const aheadAfter = 2 << 20

// runBytes bounds a run of memory as a checkpoint reads and sends it: a
// megabyte keeps the buffers it passes through few and warm (see
// bufpool), while the per-run costs (a record, a frame, a system call or
// two) stay small beside the copy.
const runBytes = 1 << 20

// span is a run of pages ReadMemory carries.
type span struct {
	addr, pages uint64
	name        string
}

// spanScan finds the spans of a frozen process's memory, one at a time
// (from any goroutine, one at a time): each at most runBytes.
type spanScan struct {
	pid     int
	vmas    []VMA
	seen    sharedPages // a tree's shared pages carried already, or nil
	pm      *os.File
	v       int    // the mapping being scanned
	i, n    uint64 // its next page, its pages
	entries []byte // its page map, once read
}

// next returns the next span, or false at the end.
func (s *spanScan) next() (span, bool, error) {
	const most = runBytes / pageSize // pages per run
	for {
		if s.entries == nil || s.i >= s.n {
			if s.entries != nil {
				s.v++
			}
			for s.v < len(s.vmas) && !carried(s.vmas[s.v]) {
				s.v++
			}
			if s.v >= len(s.vmas) {
				return span{}, false, nil
			}
			v := s.vmas[s.v]
			s.i, s.n = 0, (v.End-v.Start)/pageSize
			if uint64(cap(s.entries)) < 8*s.n {
				s.entries = make([]byte, 8*s.n)
			}
			s.entries = s.entries[:8*s.n]
			if _, err := s.pm.ReadAt(s.entries, int64(v.Start/pageSize*8)); err != nil {
				return span{}, false, fmt.Errorf("read the page map of %#x-%#x: %w", v.Start, v.End, err)
			}
			if v.Shared && v.Kind == VMAAnon {
				if err := s.markObjectData(v); err != nil {
					return span{}, false, err
				}
			}
		}
		v := s.vmas[s.v]
		for s.i < s.n && !s.wanted(v, s.i) {
			s.i++
		}
		if s.i == s.n {
			continue
		}
		j := s.i + 1
		for j < s.n && j-s.i < most && s.wanted(v, j) {
			j++
		}
		sp := span{addr: v.Start + s.i*pageSize, pages: j - s.i, name: v.Name}
		s.i = j
		return sp, true, nil
	}
}

// markObjectData marks as wanted every page of shared memory v that
// holds data in its object, whether or not this process has touched it
// since: the page map shows only the pages the process has mapped, and a
// POSIX semaphore's page, written with write(2) when it was made, or
// memory a child filled after a fork, may be mapped by none, but is in
// the object, and must move. (Reading the object's pages through the
// process, as ReadMemory does, maps them; holes stay holes.)
func (s *spanScan) markObjectData(v VMA) error {
	obj, err := os.Open(fmt.Sprintf("/proc/%d/map_files/%x-%x", s.pid, v.Start, v.End))
	if errors.Is(err, fs.ErrPermission) {
		return nil // not root: what the page map shows
	}
	if err != nil {
		return fmt.Errorf("open the shared memory at %#x: %w", v.Start, err)
	}
	defer obj.Close()
	lo, hi := int64(v.Offset), int64(v.Offset+v.End-v.Start)
	for off := lo; off < hi; {
		data, err := unix.Seek(int(obj.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) || err == nil && data >= hi {
			return nil
		}
		if err != nil {
			return fmt.Errorf("find the data of the shared memory at %#x: %w", v.Start, err)
		}
		hole, err := unix.Seek(int(obj.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("find the data of the shared memory at %#x: %w", v.Start, err)
		}
		for p := max(data, lo) &^ (pageSize - 1); p < min(hole, hi); p += pageSize {
			i := (p - lo) / pageSize
			e := binary.LittleEndian.Uint64(s.entries[8*i:])
			binary.LittleEndian.PutUint64(s.entries[8*i:], e|pmPresent)
		}
		off = hole
	}
	return nil
}

// carried says whether ReadMemory reads v's pages at all.
func carried(v VMA) bool {
	return !(v.Kind == VMAVDSO || v.Kind == VMAVsyscall || (v.Kind == VMAFile && v.Shared) || v.Lazy)
}

// wanted says whether page i of v goes in the image: touched, and in a
// file mapping, a private copy.
func (s *spanScan) wanted(v VMA, i uint64) bool {
	e := binary.LittleEndian.Uint64(s.entries[8*i:])
	if e&(pmPresent|pmSwapped) == 0 {
		return false
	}
	if v.Kind == VMAFile {
		return e&pmFile == 0 // a private copy of a file page
	}
	if v.SharedMem != 0 && s.seen != nil {
		// (Asked once of each page that is wanted: next asks again only
		// of one that was not.)
		return s.seen.first(v.SharedMem, v.Offset/pageSize+i)
	}
	return true
}

// mapVMAs creates the image's mappings in the tracee, in two batches:
// the files to map are opened first, then everything is mapped and the
// files closed again.
func mapVMAs(r *remote, vs []VMA) error {
	// The files, their names in the scratch memory (as many batches as
	// it takes to fit them).
	type file struct {
		name  string
		flags int
	}
	fds := map[file]uint64{}
	var pending []file
	var names []byte
	open := func() error {
		if len(pending) == 0 {
			return nil
		}
		if err := r.write(r.scratch, names); err != nil {
			return err
		}
		var calls []sysCall
		at := r.scratch
		for _, f := range pending {
			calls = append(calls, sc(unix.SYS_OPENAT, atFDCWD, at, uint64(f.flags), 0))
			at += uint64(len(f.name) + 1)
		}
		errs, rets, err := r.batch(calls)
		if err != nil {
			return err
		}
		for i, f := range pending {
			if errs[i] != nil {
				return fmt.Errorf("open %s to map it: %w", f.name, errs[i])
			}
			fds[f] = rets[i]
		}
		pending, names = pending[:0], names[:0]
		return nil
	}
	for _, v := range vs {
		f := file{v.Name, openFlags(v)}
		if v.Kind != VMAFile || slices.Contains(pending, f) {
			continue
		}
		if _, ok := fds[f]; ok {
			continue
		}
		if len(v.Name)+1 > scratchSize {
			return fmt.Errorf("the path %.60s... is too long to map", v.Name)
		}
		if len(names)+len(v.Name)+1 > scratchSize {
			if err := open(); err != nil {
				return err
			}
		}
		pending = append(pending, f)
		names = append(names, cString(v.Name)...)
	}
	if err := open(); err != nil {
		return err
	}

	var calls []sysCall
	var mapped []VMA
	for _, v := range vs {
		if v.Kind == VMAVDSO || v.Kind == VMAVsyscall {
			continue
		}
		flags := uint64(unix.MAP_FIXED)
		if v.Shared {
			flags |= unix.MAP_SHARED
		} else {
			flags |= unix.MAP_PRIVATE
		}
		if v.GrowsDown {
			flags |= unix.MAP_GROWSDOWN
		}
		if v.Kind == VMAFile {
			calls = append(calls, sc(unix.SYS_MMAP, v.Start, v.End-v.Start, uint64(v.Prot), flags, fds[file{v.Name, openFlags(v)}], v.Offset))
		} else {
			calls = append(calls, sc(unix.SYS_MMAP, v.Start, v.End-v.Start, uint64(v.Prot), flags|unix.MAP_ANONYMOUS, ^uint64(0), 0))
		}
		mapped = append(mapped, v)
	}
	for _, fd := range fds {
		calls = append(calls, sc(unix.SYS_CLOSE, fd))
	}
	errs, _, err := r.batch(calls)
	if err != nil {
		return err
	}
	for i, v := range mapped {
		if errs[i] == nil {
			continue
		}
		if v.Kind == VMAFile {
			return fmt.Errorf("map %s at %#x: %w", v.Name, v.Start, errs[i])
		}
		return fmt.Errorf("map %d bytes of anonymous memory (%s) at %#x: %w", v.End-v.Start, v.Name, v.Start, errs[i])
	}
	return nil
}

// openFlags opens a file for a mapping: writable only for a shared
// writable one (a private mapping's writes never reach the file).
func openFlags(v VMA) int {
	if v.Shared && v.Prot&unix.PROT_WRITE != 0 {
		return unix.O_RDWR
	}
	return unix.O_RDONLY
}

// atFDCWD is AT_FDCWD (-100) as a system call argument.
const atFDCWD = ^uint64(99)

// adviceFlags are the VmFlags of /proc/PID/smaps that say what a process
// asked of its memory, by the Advice bit each is.
var adviceFlags = map[string]uint32{
	"lo": AdviceLocked, "lf": AdviceLockOnFault, "dc": AdviceDontFork, "wf": AdviceWipeOnFork,
	"dd": AdviceDontDump, "hg": AdviceHugePage, "nh": AdviceNoHugePage,
}

// readAdvice sets each of vs's Advice from /proc/PID/smaps (its VmFlags:
// cheap to read, 0.07 ms for a process of 1 GiB here). Only the
// process's own memory: the kernel sets some of these on [vdso] and kin.
func readAdvice(pid int, vs []VMA) error {
	b, err := procRead(fmt.Sprintf("/proc/%d/smaps", pid), make([]byte, 64<<10))
	if err != nil {
		return fmt.Errorf("read the memory flags of %d: %w", pid, err)
	}
	byStart := map[uint64]*VMA{}
	for i := range vs {
		if vs[i].Kind == VMAAnon || vs[i].Kind == VMAFile {
			byStart[vs[i].Start] = &vs[i]
		}
	}
	var cur *VMA
	for line := range strings.Lines(string(b)) {
		if flags, ok := strings.CutPrefix(line, "VmFlags:"); ok {
			if cur != nil {
				for _, f := range strings.Fields(flags) {
					cur.Advice |= adviceFlags[f]
				}
			}
			continue
		}
		// A mapping's first line: "7f12a000-7f12b000 rw-p ...".
		if dash := strings.IndexByte(line, '-'); dash > 0 && !strings.Contains(line[:dash], ":") {
			if start, err := strconv.ParseUint(line[:dash], 16, 64); err == nil {
				cur = byStart[start]
			}
		}
	}
	return nil
}

// adviseCalls are the madvise calls that give the memory of vs what the
// process had asked of it (not mlock: see Restored.LockMemory).
func adviseCalls(vs []VMA) []sysCall {
	var calls []sysCall
	for _, v := range vs {
		for _, a := range []struct {
			bit    uint32
			advice uint64
		}{{AdviceDontFork, unix.MADV_DONTFORK}, {AdviceWipeOnFork, unix.MADV_WIPEONFORK}, {AdviceDontDump, unix.MADV_DONTDUMP},
			{AdviceHugePage, unix.MADV_HUGEPAGE}, {AdviceNoHugePage, unix.MADV_NOHUGEPAGE}} {
			if v.Advice&a.bit != 0 {
				calls = append(calls, sc(unix.SYS_MADVISE, v.Start, v.End-v.Start, a.advice))
			}
		}
	}
	return calls
}
