package netns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// RunDir is where named network namespaces are bind-mounted, the same
// directory `ip netns` uses.
const RunDir = "/run/netns"

// Do runs fn on an OS thread that has been switched into the network
// namespace at nsPath (a file under RunDir or /proc/PID/ns/net), then
// switches the thread back. Sockets fn creates belong to that namespace for
// their whole life, so a listener opened inside Do keeps accepting there
// after Do returns.
//
// fn runs on a goroutine of its own, locked to its thread; goroutines fn
// starts run on other threads, in the namespace of the process. A panic in
// fn is re-raised in the caller; t.FailNow (runtime.Goexit) in fn ends only
// fn, and Do reports it as an error. If the thread cannot be switched back
// it is never unlocked, so the Go runtime discards it rather than let other
// goroutines run in the wrong namespace (see onOwnThread).
func Do(nsPath string, fn func() error) error {
	target, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w%s", nsPath, err, hint(err))
	}
	defer unix.Close(target)

	type result struct {
		err      error
		panicked bool
		panicVal any
	}
	done := make(chan result, 1)
	go func() {
		var res result
		returned := false
		defer func() {
			if !returned {
				if p := recover(); p != nil {
					res.panicked, res.panicVal = true, p
				} else {
					res.err = fmt.Errorf("in network namespace %s: fn called runtime.Goexit (t.FailNow?); return an error instead", nsPath)
				}
			}
			done <- res
		}()
		res.err = onOwnThread(func() error {
			if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
				return fmt.Errorf("enter network namespace %s: %w%s", nsPath, err, setnsHint(err))
			}
			return fn()
		})
		returned = true
	}()
	res := <-done
	if res.panicked {
		panic(res.panicVal)
	}
	return res.err
}

// ExecIn replaces the calling process with argv0 (run with argv and env, as
// syscall.Exec does) running entirely inside the network namespace at
// nsPath. It never returns on success; on failure it returns an error and
// the caller's own namespace is untouched, but the caller should exit, as
// it meant to be replaced.
//
// Why this works: setns(2) changes the network namespace of the calling
// thread only (each thread has its own nsproxy), which is why a Go program
// cannot simply switch: its goroutines hop between threads. So ExecIn locks
// a goroutine to its OS thread, calls setns(CLONE_NEWNET) on that thread and
// calls execve(2) from that same thread. execve first kills every other
// thread of the process, makes the caller the only thread (keeping the
// process ID), and the new program starts with that thread's namespaces.
// Nothing of the new image ever ran in the old namespace, and its children
// inherit the new one.
//
// If the exec fails, ExecIn returns the thread to its own namespace before
// unlocking it, or, if that fails too, leaves it locked so that the Go
// runtime discards it.
//
// A parent death signal (prctl PR_SET_PDEATHSIG) is per thread, and a new
// thread starts without one: a process that was given one at its fork
// would lose it by exec'ing from this thread, which is not its first, and
// outlive its parent. death says what to give the new program (see
// MainThreadParentDeath); the zero value gives nothing.
func ExecIn(nsPath string, argv0 string, argv []string, env []string, death ParentDeath) error {
	fd, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w%s", nsPath, err, hint(err))
	}
	defer unix.Close(fd)
	errc := make(chan error, 1)
	go func() {
		errc <- onOwnThread(func() error {
			if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
				return fmt.Errorf("enter network namespace %s: %w%s", nsPath, err, setnsHint(err))
			}
			if err := death.set(); err != nil {
				return err
			}
			err := syscall.Exec(argv0, argv, env)
			return fmt.Errorf("exec %s in network namespace %s: %w%s", argv0, nsPath, err, hint(err))
		})
	}()
	return <-errc
}

// ParentDeath is a parent death signal to carry over an exec from another
// thread: the signal, and the parent it is about.
type ParentDeath struct {
	Signal syscall.Signal
	Parent int
}

// MainThreadParentDeath reads the calling thread's parent death signal and
// the process's parent. Call it on the process's first thread (from main,
// with init having locked it there), where the fork set it.
func MainThreadParentDeath() (ParentDeath, error) {
	var sig int32
	if err := unix.Prctl(unix.PR_GET_PDEATHSIG, uintptr(unsafe.Pointer(&sig)), 0, 0, 0); err != nil {
		return ParentDeath{}, fmt.Errorf("read the parent death signal: %w", err)
	}
	return ParentDeath{Signal: syscall.Signal(sig), Parent: os.Getppid()}, nil
}

// set gives the calling thread the signal. If the parent died before
// (the signal would then never come), it fails: the caller, meant to end
// with its parent, then exits instead of running on.
func (d ParentDeath) set() error {
	if d.Signal == 0 {
		return nil
	}
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(d.Signal), 0, 0, 0); err != nil {
		return fmt.Errorf("keep the parent death signal: %w", err)
	}
	if os.Getppid() != d.Parent {
		return fmt.Errorf("the parent (pid %d) is gone", d.Parent)
	}
	return nil
}

// onOwnThread runs fn, which may change the network namespace of its
// thread, with the calling goroutine locked to its thread, then puts the
// thread back in the namespace it started in. If that fails the thread
// stays locked, so the runtime discards it when the goroutine exits.
//
// Restoring matters even though the thread could simply be discarded: when
// the goroutine happens to run on the process's main thread, the runtime
// cannot end that thread and parks it forever instead, and then
// /proc/PID/ns/net, which names the main thread's namespace, would report
// the wrong one for the whole process.
func onOwnThread(fn func() error) (err error) {
	runtime.LockOSThread()
	origin, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open this thread's network namespace: %w", err)
	}
	defer func() { // deferred, so that it runs on panics and Goexit too
		rerr := unix.Setns(origin, unix.CLONE_NEWNET)
		unix.Close(origin)
		if rerr != nil {
			err = errors.Join(err, fmt.Errorf("return to the original network namespace: %w (the thread was discarded)", rerr))
			return
		}
		runtime.UnlockOSThread()
	}()
	return fn()
}

// createNamed makes a new network namespace and bind-mounts it at
// RunDir/name, as `ip netns add name` does. The process's own threads stay
// where they were.
func createNamed(name string) (string, error) {
	if err := prepareRunDir(); err != nil {
		return "", err
	}
	path := filepath.Join(RunDir, name)
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0)
	if err != nil {
		return "", fmt.Errorf("create network namespace %s: %w%s", path, err, hint(err))
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		errc <- onOwnThread(func() error {
			if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
				return err
			}
			self := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
			return unix.Mount(self, path, "none", unix.MS_BIND, "")
		})
	}()
	if err := <-errc; err != nil {
		os.Remove(path)
		return "", fmt.Errorf("create network namespace %s: %w%s", path, err, hint(err))
	}
	return path, nil
}

// prepareRunDir makes RunDir a shared mount, like iproute2 does, so that
// unmounting a namespace there also unmounts it in mount namespaces that
// `ip netns exec` creates; otherwise those copies would keep it alive.
func prepareRunDir() error {
	if err := os.MkdirAll(RunDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w%s", RunDir, err, hint(err))
	}
	dir, err := os.Open(RunDir)
	if err != nil {
		return fmt.Errorf("open %s: %w%s", RunDir, err, hint(err))
	}
	defer dir.Close()
	// Serialise with other mosaic processes so that two of them do not
	// both bind-mount the directory onto itself.
	if err := unix.Flock(int(dir.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s: %w", RunDir, err)
	}
	defer unix.Flock(int(dir.Fd()), unix.LOCK_UN)
	err = unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) { // not a mount point yet
		if err := unix.Mount(RunDir, RunDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind-mount %s onto itself: %w%s", RunDir, err, hint(err))
		}
		err = unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("make %s a shared mount: %w%s", RunDir, err, hint(err))
	}
	return nil
}

// removeNamed unmounts and removes a named namespace. A namespace that is
// already gone is not an error. Processes still inside keep it alive until
// they exit, but it no longer has a name.
func removeNamed(path string) error {
	err := unix.Unmount(path, unix.MNT_DETACH)
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount network namespace %s: %w%s", path, err, hint(err))
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove network namespace %s: %w%s", path, err, hint(err))
	}
	return nil
}

// namedWithPrefix lists the namespaces under RunDir whose names start with
// prefix, as full paths.
func namedWithPrefix(prefix string) ([]string, error) {
	entries, err := os.ReadDir(RunDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w%s", RunDir, err, hint(err))
	}
	var paths []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			paths = append(paths, filepath.Join(RunDir, e.Name()))
		}
	}
	return paths, nil
}

// hint says what to do about the errors a user can fix.
func hint(err error) string {
	switch {
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return ": run as root (needs CAP_NET_ADMIN and CAP_SYS_ADMIN)"
	case errors.Is(err, unix.EEXIST):
		return ": left over from an earlier run or in use by another; sweep leftovers (netns.Sweep) or choose another name"
	}
	return ""
}

func setnsHint(err error) string {
	if errors.Is(err, unix.EINVAL) {
		return ": not a network namespace; give a path under " + RunDir + " or /proc/PID/ns/net"
	}
	return hint(err)
}
