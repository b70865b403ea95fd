package executor

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Job control across nodes.
//
// A process started here is the leader of a process group whose parent
// (this daemon) belongs to another session: to the kernel its group is
// orphaned, and the stop signals of job control (SIGTSTP, SIGTTIN,
// SIGTTOU) are discarded for it when their action is the default, whether
// they come from kill or from its terminal's ^Z. At home the same program
// would stop. So a stop signal the user sends (or types, on a terminal
// that turns it into a signal) is delivered as itself when the program
// handles it (its handler runs, as at home: an editor restores the screen,
// then stops itself with SIGSTOP), and as SIGSTOP when it does not.

// isStopSignal reports whether sig is a job-control stop signal.
func isStopSignal(sig syscall.Signal) bool {
	return sig == syscall.SIGTSTP || sig == syscall.SIGTTIN || sig == syscall.SIGTTOU
}

// stopFor is the signal that stops pid as sig would at home.
func stopFor(pid int, sig syscall.Signal) syscall.Signal {
	if handles(pid, sig) {
		return sig
	}
	return syscall.SIGSTOP
}

// handles reports whether pid has a handler for sig (its SigCgt mask).
func handles(pid int, sig syscall.Signal) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return false
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "SigCgt:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && mask&(1<<(uint(sig)-1)) != 0
		}
	}
	return false
}

// signalJob delivers a signal the user sent to the process (or its group).
func signalJob(pid int, sig syscall.Signal, group bool) {
	if isStopSignal(sig) {
		sig = stopFor(pid, sig)
	}
	if group {
		syscall.Kill(-pid, sig)
	} else {
		syscall.Kill(pid, sig)
	}
}

// typedSuspend is called with input about to be written to a terminal's
// master: if it holds the terminal's suspend character (^Z) while the
// terminal makes signals of such characters, the terminal's foreground
// group gets its stop (the line discipline's own SIGTSTP is discarded for
// it, see above).
func typedSuspend(master *os.File, input []byte) {
	withFd(master, func(fd int) error {
		suspendFor(fd, input)
		return nil
	})
}

func suspendFor(fd int, input []byte) {
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS) // on a master: the slave's modes
	if err != nil || t.Lflag&unix.ISIG == 0 {
		return
	}
	susp := t.Cc[unix.VSUSP]
	if susp == 0 || bytes.IndexByte(input, susp) < 0 {
		return
	}
	pgrp, err := unix.IoctlGetInt(fd, unix.TIOCGPGRP)
	if err != nil || pgrp <= 0 {
		return
	}
	if sig := stopFor(pgrp, syscall.SIGTSTP); sig == syscall.SIGSTOP {
		syscall.Kill(-pgrp, sig)
	}
}
