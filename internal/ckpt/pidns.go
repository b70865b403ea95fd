package ckpt

import (
	"errors"
	"fmt"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// pidSetter chooses the number the next thread gets in a PID namespace,
// so that a restored thread has the id it had (gettid, and the ids glibc
// keeps in memory and in futex words). The kernel takes it from the
// namespace's ns_last_pid, which only a process inside the namespace with
// privilege over it may write: its init, not the restored process (it
// runs as its user). So the init is traced and made to write it.
type pidSetter struct {
	init int
	r    *remote
	fd   uint64
	buf  uint64 // a place on the init's stack, below what it uses
}

func attachInit(init int) (p *pidSetter, err error) {
	if err := ptrace(unix.PTRACE_SEIZE, init, 0, unix.PTRACE_O_TRACESYSGOOD); err != nil {
		return nil, fmt.Errorf("attach to the namespace's init %d: %w", init, err)
	}
	p = &pidSetter{init: init}
	defer func() {
		if err != nil {
			p.detach()
		}
	}()
	if err := unix.PtraceInterrupt(init); err != nil {
		return nil, fmt.Errorf("stop the namespace's init: %w", err)
	}
	if _, err := waitStop(init); err != nil {
		return nil, err
	}
	if p.r, err = newRemote(init); err != nil {
		return nil, err
	}
	p.buf = p.r.saved.Rsp - 1024
	if err := p.r.write(p.buf, cString("/proc/sys/kernel/ns_last_pid")); err != nil {
		return nil, err
	}
	atFdcwd := int64(unix.AT_FDCWD)
	if p.fd, err = p.r.call(unix.SYS_OPENAT, uint64(atFdcwd), p.buf, unix.O_WRONLY|unix.O_CLOEXEC); err != nil {
		return nil, fmt.Errorf("open the namespace's ns_last_pid: %w", err)
	}
	return p, nil
}

// next makes n the number the namespace gives next (if it is free).
func (p *pidSetter) next(n int) error {
	s := []byte(strconv.Itoa(n - 1))
	if err := p.r.write(p.buf, s); err != nil {
		return err
	}
	if _, err := p.r.call(unix.SYS_PWRITE64, p.fd, p.buf, uint64(len(s)), 0); err != nil {
		return fmt.Errorf("set the namespace's next id to %d: %w", n, err)
	}
	return nil
}

// detach lets the init go on as it was.
func (p *pidSetter) detach() error {
	var errs []error
	if p.r != nil {
		if p.fd != 0 {
			if _, err := p.r.call(unix.SYS_CLOSE, p.fd); err != nil {
				errs = append(errs, err)
			}
		}
		errs = append(errs, p.r.close())
	}
	if err := ptrace(unix.PTRACE_DETACH, p.init, 0, 0); err != nil && !errors.Is(err, syscall.ESRCH) {
		errs = append(errs, fmt.Errorf("let the namespace's init go: %w", err))
	}
	return errors.Join(errs...)
}

// withPidSetter runs fn with a pidSetter on the namespace's init, detached
// after; nil when init is 0 (a restore outside a namespace: ids are not
// chosen).
func withPidSetter(init int, fn func(ids *pidSetter) error) (err error) {
	var ids *pidSetter
	if init != 0 {
		if ids, err = attachInit(init); err != nil {
			return err
		}
		defer func() {
			if e := ids.detach(); e != nil && err == nil {
				err = e
			}
		}()
	}
	return fn(ids)
}
