package ckpt

import (
	"bytes"
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// Restored memory in huge pages.
//
// Every page written into the new process is a page fault, and in a
// virtual machine a costly one (2–3 µs here: most of a second per GiB).
// Where a run of the image fills whole aligned 2 MiB blocks of private
// anonymous memory, the restore writes one page of each block and asks
// the kernel to collapse the blocks into huge pages (MADV_COLLAPSE, Linux
// 6.1): one fault and one allocation per 2 MiB, and the rest of the writes
// find their pages there. Only blocks the image fills whole are
// collapsed, so the process has the memory it had; MADV_COLLAPSE changes
// no flag of the mapping, so the process goes on as before, its memory in
// larger pages (as khugepaged makes them). It is best effort: where the
// kernel says no (no huge page free, a mapping marked MADV_NOHUGEPAGE),
// the pages are written one by one, as without it. Nothing is collapsed
// where the administrator turned transparent huge pages off.

// hugePages is the number of pages in a huge page (2 MiB on x86-64).
const (
	hugePages = 512
	hugeSize  = hugePages * pageSize
)

// hugeRestore collapses the blocks a restore fills whole.
type hugeRestore struct {
	r    *remote
	vmas []VMA // the private anonymous mappings to collapse in, in address order
	at   int   // the mapping the last run was in
}

func newHugeRestore(r *remote, vmas []VMA) *hugeRestore {
	if !hugePagesAllowed() {
		return &hugeRestore{r: r}
	}
	h := &hugeRestore{r: r}
	for _, v := range vmas {
		if v.Kind == VMAAnon && !v.Shared && !v.Lazy && v.Prot&unix.PROT_WRITE != 0 && v.End-v.Start >= hugeSize {
			h.vmas = append(h.vmas, v)
		}
	}
	return h
}

// hugePagesAllowed says whether transparent huge pages are on.
func hugePagesAllowed() bool {
	b, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	return err == nil && !bytes.Contains(b, []byte("[never]"))
}

// prepare makes the whole huge blocks of p present as huge pages, before
// p is written.
func (h *hugeRestore) prepare(mem *procMem, p PageRun) error {
	lo := (p.Addr + hugeSize - 1) &^ (hugeSize - 1)
	hi := (p.Addr + uint64(len(p.Data))) &^ (hugeSize - 1)
	if hi <= lo {
		return nil
	}
	for h.at < len(h.vmas) && h.vmas[h.at].End <= lo {
		h.at++
	}
	if h.at == len(h.vmas) {
		return nil
	}
	v := &h.vmas[h.at]
	lo, hi = max(lo, (v.Start+hugeSize-1)&^(hugeSize-1)), min(hi, v.End&^(hugeSize-1))
	if hi <= lo {
		return nil
	}
	for b := lo; b < hi; b += hugeSize {
		off := b - p.Addr
		if _, err := mem.WriteAt(p.Data[off:off+pageSize], int64(b)); err != nil {
			return err
		}
	}
	if _, err := h.r.call(unix.SYS_MADVISE, lo, hi-lo, unix.MADV_COLLAPSE); err != nil {
		var errno unix.Errno
		if errors.As(err, &errno) && (errno == unix.EINVAL || errno == unix.EPERM) {
			// The kernel will not, for this mapping (MADV_NOHUGEPAGE,
			// or no MADV_COLLAPSE at all): no more asking.
			h.vmas = append(h.vmas[:h.at], h.vmas[h.at+1:]...)
		}
	}
	return nil
}
