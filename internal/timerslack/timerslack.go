// Package timerslack gives the daemon a timer slack of its own, and the
// programs it starts the one it was started with.
//
// Why: the Go runtime's monitor thread (sysmon) polls every 20 µs for a
// few milliseconds each time a sleeping process wakes, then backs off. On
// a daemon that wakes for every remote start, that is some 50 wake-ups of
// a thread per start on each node, each taking a CPU from the work at hand
// (`perf sched` of a remote start of /bin/true on the 2-vCPU test machine:
// the home's monitor woke 40 times, preempting the CLI on the CPU it used).
// Its sleeps are timed sleeps, so the kernel may stretch them by the
// thread's timer slack (50 µs by default): with a slack of 1 ms they come
// a twelfth as often, and nothing the daemon does waits on a timer finer
// than a millisecond. The runtime makes that thread before any code of
// ours runs, and a thread's slack is fixed by the thread that made it, so
// the daemon sets its slack and executes itself again: every thread then
// has it from the start (docs/BENCHMARKS.md, "Start latency").
//
// The programs a node runs must not notice: the threads that start them
// (spawn) take back the slack the daemon was started with, which
// Original reads from the environment of the new execution.
package timerslack

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Daemon is the slack a daemon runs with.
const Daemon = time.Millisecond

// originalEnv carries the slack the daemon was started with over its
// execution of itself.
const originalEnv = "MOSAICD_ORIGINAL_TIMER_SLACK_NS"

// Get returns the calling thread's timer slack.
func Get() (time.Duration, error) {
	ns, err := unix.PrctlRetInt(unix.PR_GET_TIMERSLACK, 0, 0, 0, 0)
	if err != nil {
		return 0, fmt.Errorf("read the timer slack: %w", err)
	}
	return time.Duration(ns), nil
}

// Set sets the calling thread's timer slack; threads and processes it
// makes from then on start with it. The caller keeps its goroutine on its
// thread (runtime.LockOSThread) for as long as that matters.
func Set(d time.Duration) error {
	if d <= 0 {
		// 0 would mean "the thread's default", whatever its parent had.
		return fmt.Errorf("timer slack %v: must be positive", d)
	}
	if err := unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(d.Nanoseconds()), 0, 0, 0); err != nil {
		return fmt.Errorf("set the timer slack to %v: %w", d, err)
	}
	return nil
}

// Reexec executes this program again, with the same arguments and
// environment, with slack d on every thread, unless the calling thread has
// it already; it returns only when it does not execute (nil: nothing to
// do). Call it on the process's main thread before anything else: the
// execution keeps what the calling thread has (such as a parent death
// signal), and nothing else of this process's state.
func Reexec(d time.Duration) error {
	// The slack is the thread's: set and execute on the same one.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cur, err := Get()
	if err != nil || cur == d {
		return err
	}
	if _, again := os.LookupEnv(originalEnv); again {
		// This is the new execution, and it did not get the slack (a
		// realtime thread has none): run on rather than loop.
		return nil
	}
	if err := Set(d); err != nil {
		return err
	}
	env := append(os.Environ(), originalEnv+"="+strconv.FormatInt(cur.Nanoseconds(), 10))
	// By its path, so that the process keeps its name (ps, pgrep: the
	// kernel names it after the file executed); by /proc/self/exe, the
	// very binary that runs, if that path is gone.
	if self, perr := os.Executable(); perr == nil {
		err = syscall.Exec(self, os.Args, env)
	}
	if err == nil || errors.Is(err, syscall.ENOENT) {
		err = syscall.Exec("/proc/self/exe", os.Args, env)
	}
	return errors.Join(fmt.Errorf("execute mosaicd again with a timer slack of %v: %w", d, err), Set(cur))
}

// Original returns the slack this process was started with: the one
// Reexec replaced, else the calling thread's.
func Original() (time.Duration, error) {
	if s, ok := os.LookupEnv(originalEnv); ok {
		ns, err := strconv.ParseInt(s, 10, 64)
		if err != nil || ns <= 0 {
			return 0, fmt.Errorf("%s=%q: not a timer slack in nanoseconds", originalEnv, s)
		}
		return time.Duration(ns), nil
	}
	return Get()
}
