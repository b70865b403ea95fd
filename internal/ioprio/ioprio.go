// Package ioprio reads and sets a thread's I/O scheduling priority
// (ioprio_get(2), ioprio_set(2); what `ionice` shows and sets): golang.org/x/sys
// has the system calls' numbers but not their constants.
package ioprio

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Prio is an I/O priority as the kernel encodes it: a class in the top
// bits, a level (0 highest to 7 lowest) in the low ones. 0 is none set:
// the thread's I/O goes by its nice value.
type Prio int

// Classes.
const (
	ClassNone       = 0
	ClassRealtime   = 1 // needs CAP_SYS_ADMIN
	ClassBestEffort = 2
	ClassIdle       = 3
)

const (
	classShift = 13
	whoProcess = 1 // IOPRIO_WHO_PROCESS: a thread, by id (0: the caller)
)

// Make is the priority of a class and level.
func Make(class, level int) Prio { return Prio(class<<classShift | level) }

// Class is p's class.
func (p Prio) Class() int { return int(p) >> classShift }

// Level is p's level within its class.
func (p Prio) Level() int { return int(p) & (1<<classShift - 1) }

// Valid reports whether p is a priority the kernel takes.
func (p Prio) Valid() bool {
	switch p.Class() {
	case ClassNone:
		return p.Level() == 0
	case ClassRealtime, ClassBestEffort:
		return p.Level() <= 7
	case ClassIdle:
		return true // the kernel ignores an idle priority's level
	}
	return false
}

// Get returns thread tid's priority (0: the caller).
func Get(tid int) (Prio, error) {
	r, _, e := unix.Syscall(unix.SYS_IOPRIO_GET, whoProcess, uintptr(tid), 0)
	if e != 0 {
		return 0, fmt.Errorf("read the I/O priority of thread %d: %w", tid, e)
	}
	return Prio(r), nil
}

// Set sets thread tid's priority (0: the caller).
func Set(tid int, p Prio) error {
	if _, _, e := unix.Syscall(unix.SYS_IOPRIO_SET, whoProcess, uintptr(tid), uintptr(p)); e != 0 {
		return fmt.Errorf("set the I/O priority of thread %d to class %d level %d: %w", tid, p.Class(), p.Level(), e)
	}
	return nil
}

// ForUser is the priority a program of a user who is not root gets for p:
// p, but best effort at the same level for the realtime class, which only
// root may give (the daemon that sets it is root: it must not grant what
// the user could not take).
func ForUser(p Prio) Prio {
	if p.Class() == ClassRealtime {
		return Make(ClassBestEffort, p.Level())
	}
	return p
}
