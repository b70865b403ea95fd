package ckpt

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// This file writes a restored process's private anonymous memory through
// a userfaultfd (UFFDIO_COPY) instead of process_vm_writev. A write into
// a page never touched faults one in, zeroes it and then copies; the
// userfaultfd's copy puts the page it filled in place at once, without
// zeroing it first. In a profile of a 1 GiB move the target's
// clear_page was a tenth of the CPU of both daemons, and the target is
// the slower end of the stream.

// fillMin is the private anonymous memory (the size of its mappings)
// from which a restore writes it through a userfaultfd: below, making
// one (two system calls run in the process) costs more than it saves.
const fillMin = 16 << 20

// fillable says whether a mapping's pages can be written through a
// userfaultfd: private anonymous memory (its MISSING mode takes no
// private file mappings), not left for later (post-copy has its own).
func fillable(v VMA) bool {
	return v.Kind == VMAAnon && !v.Shared && v.SharedMem == 0 && !v.Lazy
}

// fillSize is the size of the image's fillable mappings.
func fillSize(vs []VMA) uint64 {
	var n uint64
	for _, v := range vs {
		if fillable(v) {
			n += v.End - v.Start
		}
	}
	return n
}

// registerFill registers the image's fillable mappings, made already,
// with the userfaultfd fd, and says which it could (by index in vs): one
// the kernel refuses is written as any other.
func registerFill(fd int, vs []VMA) ([]bool, error) {
	if err := uffdEnable(fd, 0); err != nil {
		return nil, err
	}
	filling := make([]bool, len(vs))
	for k, v := range vs {
		filling[k] = fillable(v) && uffdRegister(fd, v) == nil
	}
	return filling, nil
}

// fill writes a run of memory, all of it in one registered mapping,
// through the userfaultfd; a page that is there already (EEXIST: one of
// a layout made ahead that was touched) is written through the process's
// memory instead.
func (rs *restoring) fill(p PageRun) error {
	at, data := p.Addr, p.Data
	for len(data) > 0 {
		n, err := uffdCopy(uintptr(rs.fillFD), at, data)
		at, data = at+n, data[n:]
		rs.restored.filled += n
		switch {
		case err == nil:
		case errors.Is(err, unix.EAGAIN):
			// The address space changed under the copy (it does not
			// here: the process is stopped); again.
		case errors.Is(err, unix.EEXIST) && len(data) >= pageSize:
			if _, err := rs.mem.WriteAt(data[:pageSize], int64(at)); err != nil {
				return fmt.Errorf("write a page of memory at %#x: %w", at, err)
			}
			at, data = at+pageSize, data[pageSize:]
		default:
			return fmt.Errorf("write %d bytes of memory at %#x through a userfaultfd: %w", len(data), at, err)
		}
	}
	return nil
}

// endFill closes the userfaultfd, which unregisters the mappings: pages
// not written are zero again at their first touch, as they were.
// Nothing may run in the process before, or it would wait for a page
// nobody writes.
func (rs *restoring) endFill() {
	if rs.fillFD >= 0 {
		unix.Close(rs.fillFD)
		rs.fillFD = -1
	}
	rs.filling = nil
}
