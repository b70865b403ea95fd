package ckpt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// File locks. A process's POSIX record locks (fcntl F_SETLK, as sqlite
// takes them) belong to the process, flock and open-file-description
// locks (F_OFD_SETLK) to one of its open files: the copy restored
// elsewhere must hold them, and the frozen copy must not, or the restored
// one would find its own files locked against it. So a freeze lets them go
// (the process is stopped: nobody notices), the restore takes them again,
// on the files it opened anew, before the process runs (failing, and so
// leaving the process where it was, if someone else took one meanwhile),
// and a process that stays takes them back on resume.

// Lock kinds.
const (
	LockPOSIX = ""      // fcntl F_SETLK: the process's
	LockFlock = "flock" // flock(2): its open file's, the whole file
	LockOFD   = "ofd"   // fcntl F_OFD_SETLK: its open file's
)

// Lock is a file lock a process holds.
type Lock struct {
	Fd         int // a descriptor of the file (for a POSIX lock, any will do)
	Kind       string
	Write      bool  // F_WRLCK (LOCK_EX), else F_RDLCK (LOCK_SH)
	Start, Len int64 // Len 0: to the end of the file, however long
}

// parseLocks gives the locks process pid holds through descriptor fd,
// from its fdinfo's lock lines (which list the locks taken through that
// open file: a POSIX lock only if the process took it, a flock or OFD
// lock whoever did); a lock of a kind that cannot move pins it. (Not
// /proc/locks: reading that takes a lock of the whole kernel's that waits
// for an RCU grace period, ~10 ms.)
func parseLocks(pid, fd int, lines []string) ([]Lock, error) {
	own := strconv.Itoa(pid)
	var out []Lock
	for _, line := range lines {
		// "1: POSIX  ADVISORY  WRITE 18174 fe:00:9995360 0 EOF"
		f := strings.Fields(line)
		if len(f) < 8 || f[1] == "->" {
			continue
		}
		kind, mode, holder := f[1], f[3], f[4]
		l := Lock{Fd: fd, Write: mode == "WRITE"}
		switch {
		case kind == "POSIX" && holder != own:
			continue
		case kind == "POSIX":
		case kind == "FLOCK":
			l.Kind = LockFlock
		case kind == "OFDLCK":
			l.Kind = LockOFD
		default:
			return nil, &PinnedError{Reason: fmt.Sprintf("it holds a %s on descriptor %d, which does not move", strings.ToLower(kind), fd)}
		}
		var err error
		if l.Start, err = strconv.ParseInt(f[6], 10, 64); err != nil {
			continue
		}
		if f[7] != "EOF" {
			end, err := strconv.ParseInt(f[7], 10, 64)
			if err != nil {
				continue
			}
			l.Len = end - l.Start + 1
		}
		out = append(out, l)
	}
	return out, nil
}

// lockCalls are the fcntl calls that take (or, with unlock, let go of) the
// locks, each with its struct flock at out+32*i in the scratch memory,
// whose contents they return.
func lockCalls(ls []Lock, out uint64, unlock bool) ([]sysCall, []byte) {
	var calls []sysCall
	data := make([]byte, 32*len(ls))
	for i, l := range ls {
		typ := uint16(unix.F_RDLCK)
		switch {
		case unlock:
			typ = unix.F_UNLCK
		case l.Write:
			typ = unix.F_WRLCK
		}
		if l.Kind == LockFlock {
			op := uint64(unix.LOCK_SH | unix.LOCK_NB)
			switch {
			case unlock:
				op = unix.LOCK_UN
			case l.Write:
				op = unix.LOCK_EX | unix.LOCK_NB
			}
			calls = append(calls, sc(unix.SYS_FLOCK, uint64(l.Fd), op))
			continue
		}
		cmd := uint64(unix.F_SETLK)
		if l.Kind == LockOFD {
			cmd = unix.F_OFD_SETLK // l_pid stays 0, as it must
		}
		fl := data[32*i:]
		binary.LittleEndian.PutUint16(fl[0:], typ)
		binary.LittleEndian.PutUint16(fl[2:], 0) // SEEK_SET
		binary.LittleEndian.PutUint64(fl[8:], uint64(l.Start))
		binary.LittleEndian.PutUint64(fl[16:], uint64(l.Len))
		calls = append(calls, sc(unix.SYS_FCNTL, uint64(l.Fd), cmd, out+32*uint64(i)))
	}
	return calls, data
}

// setLocks takes (or lets go of) the locks, from inside the process.
func setLocks(r *remote, ls []Lock, unlock bool) error {
	if len(ls) == 0 {
		return nil
	}
	if 32*len(ls) > scratchSize {
		return fmt.Errorf("%d file locks are more than this version moves", len(ls))
	}
	calls, data := lockCalls(ls, r.scratch, unlock)
	errs, _, err := r.batchWith(data, calls)
	if err != nil {
		return err
	}
	for i, e := range errs {
		if e == nil {
			continue
		}
		if !unlock && (errors.Is(e, syscall.EAGAIN) || errors.Is(e, syscall.EACCES)) { // EWOULDBLOCK is EAGAIN
			return fmt.Errorf("another process locked the file of descriptor %d meanwhile: %w", ls[i].Fd, e)
		}
		return fmt.Errorf("file lock on descriptor %d: %w", ls[i].Fd, e)
	}
	return nil
}

// relock takes the frozen process's locks back (it stays), from inside it.
func (f *Frozen) relock() error {
	if len(f.locks) == 0 {
		return nil
	}
	r, err := newRemote(f.pid)
	if err != nil {
		return err
	}
	work, err := r.call(unix.SYS_MMAP, 0, workPages*pageSize, unix.PROT_READ|unix.PROT_WRITE|unix.PROT_EXEC,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS, ^uint64(0), 0)
	if err != nil {
		r.close()
		return fmt.Errorf("map a work area in the process: %w", err)
	}
	err = r.useWorkArea(work)
	if err == nil {
		err = setLocks(r, f.locks, false)
	}
	r.call(unix.SYS_MUNMAP, work, workPages*pageSize)
	if e := r.close(); e != nil && err == nil {
		err = e
	}
	if err != nil {
		return fmt.Errorf("take its file locks back: %w", err)
	}
	return nil
}
