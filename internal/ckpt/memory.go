package ckpt

import (
	"encoding/binary"
	"fmt"
	"os"
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
// of at most a record's worth; a run's data is valid until fn returns.
// It carries every page of anonymous memory that was ever touched and the
// pages of private file mappings that the process changed: pages that
// equal their file are mapped again from it, pages never touched are zero
// again.
func (f *Frozen) ReadMemory(fn func(PageRun) error) error {
	pm, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", f.pid))
	if err != nil {
		return fmt.Errorf("open the page map: %w", err)
	}
	defer pm.Close()
	mem, err := memFile(f.pid)
	if err != nil {
		return err
	}
	defer mem.Close()
	const most = (maxRecord - 8) / pageSize // pages per run given to fn
	buf := make([]byte, most*pageSize)
	var entries []byte
	for _, v := range f.vmas {
		if v.Kind == VMAVDSO || v.Kind == VMAVsyscall || (v.Kind == VMAFile && v.Shared) {
			continue
		}
		n := (v.End - v.Start) / pageSize
		if uint64(cap(entries)) < 8*n {
			entries = make([]byte, 8*n)
		}
		entries = entries[:8*n]
		if _, err := pm.ReadAt(entries, int64(v.Start/pageSize*8)); err != nil {
			return fmt.Errorf("read the page map of %#x-%#x: %w", v.Start, v.End, err)
		}
		wanted := func(i uint64) bool {
			e := binary.LittleEndian.Uint64(entries[8*i:])
			if e&(pmPresent|pmSwapped) == 0 {
				return false
			}
			if v.Kind == VMAFile {
				return e&pmFile == 0 // a private copy of a file page
			}
			return true
		}
		for i := uint64(0); i < n; {
			if !wanted(i) {
				i++
				continue
			}
			j := i + 1
			for j < n && j-i < most && wanted(j) {
				j++
			}
			addr := v.Start + i*pageSize
			data := buf[:(j-i)*pageSize]
			if _, err := mem.ReadAt(data, int64(addr)); err != nil {
				return fmt.Errorf("read memory at %#x (%d pages of %s): %w", addr, j-i, v.Name, err)
			}
			if err := fn(PageRun{Addr: addr, Data: data}); err != nil {
				return err
			}
			i = j
		}
	}
	return nil
}

// mapVMA creates one of the image's mappings in the tracee.
func mapVMA(r *remote, v VMA) error {
	flags := uint64(unix.MAP_FIXED)
	if v.Shared {
		flags |= unix.MAP_SHARED
	} else {
		flags |= unix.MAP_PRIVATE
	}
	if v.GrowsDown {
		flags |= unix.MAP_GROWSDOWN
	}
	size := v.End - v.Start
	if v.Kind == VMAFile {
		fd, err := r.callScratch(unix.SYS_OPENAT, cString(v.Name), 0, nil, atFDCWD, r.scratch, uint64(openFlags(v)), 0)
		if err != nil {
			return fmt.Errorf("open %s to map it: %w", v.Name, err)
		}
		_, err = r.call(unix.SYS_MMAP, v.Start, size, uint64(v.Prot), flags, fd, v.Offset)
		r.call(unix.SYS_CLOSE, fd)
		if err != nil {
			return fmt.Errorf("map %s at %#x: %w", v.Name, v.Start, err)
		}
		return nil
	}
	flags |= unix.MAP_ANONYMOUS
	if _, err := r.call(unix.SYS_MMAP, v.Start, size, uint64(v.Prot), flags, ^uint64(0), 0); err != nil {
		return fmt.Errorf("map %d bytes of anonymous memory (%s) at %#x: %w", size, v.Name, v.Start, err)
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
