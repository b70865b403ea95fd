// Package spawn starts the processes a node runs for mosaic: as their user,
// in the node's cgroup, with their umask and resource limits, from the first
// instruction on.
//
// Go cannot run code of ours between fork and exec, and a re-executed
// helper would cost milliseconds of Go start-up on every run. So the
// Spawner keeps one OS thread for all its work: the thread sits in the
// node's cgroup (a child forked by it starts there); the umask is set
// around the fork (it is per process, and the Spawner is the only code of
// the daemon that changes it); and resource limits are applied while the
// new program is stopped at its first instruction (PTRACE_TRACEME makes
// exec stop it; the Spawner sets the limits with prlimit and detaches).
package spawn

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mosaic-cluster/mosaic/internal/ioprio"
	"github.com/mosaic-cluster/mosaic/internal/nofile"
	"github.com/mosaic-cluster/mosaic/internal/timerslack"
)

// Rlimit is one resource limit.
type Rlimit struct {
	Resource int
	Cur, Max uint64
}

// Spec is a process to start.
type Spec struct {
	Argv    []string // Argv[0] is resolved with the PATH of Env
	Env     []string
	Dir     string
	UID     uint32
	GID     uint32
	Groups  []uint32
	Umask   uint32
	Rlimits []Rlimit
	// Nice is the program's nice value (-20 to 19) and IOPrio its I/O
	// priority (0: none set), from its first instruction.
	Nice   int
	IOPrio ioprio.Prio
	// SchedPolicy, if not 0, is the program's scheduling policy
	// (SCHED_BATCH, SCHED_IDLE), set while it is stopped at its exec:
	// not on this thread around the fork, which an idle policy could
	// starve on a busy node.
	SchedPolicy int
	// NoNewPrivs: the caller may not gain privileges by exec, nor may its
	// program: a set-user-ID or set-group-ID program, or one with file
	// capabilities, is refused (it is exec'd before AtExec can set the
	// flag; AtExec sets it for what the program executes in turn).
	NoNewPrivs bool
	// AtExec, if set, is called with the new process stopped at its exec,
	// before its program's first instruction, on the thread that traces
	// it (to change what only the process itself can, by ptrace).
	AtExec func(pid int) error
	// Files become the child's descriptors 0, 1, 2, ...
	Files []*os.File
	// Terminal: the child starts a session whose controlling terminal is
	// Files[0]. Otherwise it leads a process group of its own.
	Terminal bool
	// Namespace, if set, is where the child starts (see Namespace); it
	// must come from the same Spawner.
	Namespace *Namespace
}

// Kind classifies why a process did not start.
type Kind int

const (
	Other         Kind = iota
	NotFound           // no such program on this node
	NotExecutable      // the user may not run it
	NoDir              // no such working directory on this node
)

// Error is a failure to start, classified.
type Error struct {
	Kind Kind
	Err  error
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Spawner starts processes from one dedicated OS thread.
type Spawner struct {
	ignored []int // signals this process ignores: its children inherit them
	reqs    chan request
	done    chan struct{}

	// Owned by the Spawner's thread.
	self *nsSelf
	init *os.File

	once  sync.Once
	begun chan struct{} // closed once a thread other than the main one serves

	keepSpare atomic.Bool   // see KeepSpareNamespace
	wake      chan struct{} // tells the thread that keepSpare changed
}

// spareAfter is how long the Spawner's thread must have been idle before it
// makes a spare namespace: the request that takes one is followed at once
// by the one that starts the program in it, which must not wait for the
// next spare.
const spareAfter = time.Millisecond

// KeepSpareNamespace makes the Spawner keep one namespace ready, made while
// it has nothing else to do, so that a new process does not wait for its
// namespace (about a millisecond: an init's fork, exec and /proc mount).
// A spare is an idle init process; Close ends it.
func (s *Spawner) KeepSpareNamespace() {
	s.keepSpare.Store(true)
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *Spawner) started() chan struct{} {
	s.once.Do(func() { s.begun = make(chan struct{}) })
	return s.begun
}

func (s *Spawner) markStarted() { close(s.started()) }

type request struct {
	spec  Spec
	reply chan result
	// traced, when set, gets the new process stopped at its exec, on the
	// Spawner's thread (its tracer).
	traced func(p *os.Process) error
	// namespace asks for a new Namespace rather than a process.
	namespace bool
}

type result struct {
	p   *os.Process
	ns  *Namespace
	err error
}

// New starts a Spawner. place, if not nil, is called once on the
// Spawner's thread with its thread id, to move it into a cgroup. slack, if
// not 0, is the timer slack of the processes it starts (they inherit its
// thread's): the one the daemon was started with, where the daemon itself
// runs with another (internal/timerslack).
func New(place func(tid int) error, slack time.Duration) (*Spawner, error) {
	ignored, err := ignoredSignals()
	if err != nil {
		return nil, err
	}
	s := &Spawner{ignored: ignored, reqs: make(chan request), done: make(chan struct{}), wake: make(chan struct{}, 1)}
	ready := make(chan error)
	go s.loop(place, slack, ready)
	if err := <-ready; err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Spawner) loop(place func(int) error, slack time.Duration, ready chan<- error) {
	// The thread stays locked until the Spawner closes: it is the parent
	// of every process it started and their tracer while they stop at
	// exec.
	runtime.LockOSThread()
	if unix.Gettid() == os.Getpid() {
		// This is the main thread, whose cgroup decides where the whole
		// process's memory is charged. Hold it while another goroutine
		// (necessarily on another thread) becomes the Spawner.
		go s.loop(place, slack, ready)
		<-s.started()
		runtime.UnlockOSThread()
		return
	}
	s.markStarted()
	// From here on, returning lets the thread die rather than return it
	// to the scheduler in another cgroup or namespace.
	if place != nil {
		if err := place(unix.Gettid()); err != nil {
			ready <- fmt.Errorf("place the spawning thread: %w", err)
			return
		}
	}
	if slack != 0 {
		if err := timerslack.Set(slack); err != nil {
			ready <- fmt.Errorf("the spawning thread: %w", err)
			return
		}
	}
	var err error
	if s.self, err = enterSelf(); err != nil {
		ready <- err
		return
	}
	if s.init, err = loadInit(); err != nil {
		ready <- err
		return
	}
	defer func() {
		s.init.Close()
		s.self.pid.Close()
		s.self.mnt.Close()
		close(s.done)
	}()
	ready <- nil
	var spare *Namespace
	defer func() { spare.Close() }()
	idle := time.NewTimer(spareAfter)
	defer idle.Stop()
	for {
		var refill <-chan time.Time
		if spare == nil && s.keepSpare.Load() {
			idle.Reset(spareAfter)
			refill = idle.C
		}
		select {
		case r, ok := <-s.reqs:
			if !ok {
				// Returning while locked ends the thread (and takes it
				// out of the cgroup).
				return
			}
			var res result
			switch {
			case r.namespace:
				if spare != nil && spare.alive() {
					res.ns, spare = spare, nil
				} else {
					spare.Close()
					spare = nil
					res.ns, res.err = newNamespace(s.init)
				}
			case r.traced != nil:
				res.err = s.startTraced(r.spec, r.traced)
			default:
				res.p, res.err = s.start(r.spec)
			}
			r.reply <- res
		case <-refill:
			// On failure, the next request makes its own and tells why.
			spare, _ = newNamespace(s.init)
		case <-s.wake:
		}
	}
}

// startProcess starts spec's program, in its namespace if it has one (the
// thread is back in its own when it returns).
func (s *Spawner) startProcess(spec Spec, traced bool) (p *os.Process, err error) {
	if spec.Namespace == nil {
		return startProcess(spec, traced)
	}
	err = s.self.in(spec.Namespace, func() error {
		p, err = startProcess(spec, traced)
		return err
	})
	return p, err
}

// Ignored are the signals this process ignores, which its children start
// with ignored (Go sets only the ones it catches back to their default in
// a child): what a daemon's launcher ignored and Go leaves alone.
func (s *Spawner) Ignored() []int { return s.ignored }

// ignoredSignals reads this process's ignored signals from the kernel.
func ignoredSignals() ([]int, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return nil, fmt.Errorf("read this process's ignored signals: %w", err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "SigIgn:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return nil, fmt.Errorf("this process's ignored signals %q: %w", v, err)
			}
			var sigs []int
			for sig := 1; sig <= 64; sig++ {
				if mask&(1<<(sig-1)) != 0 {
					sigs = append(sigs, sig)
				}
			}
			return sigs, nil
		}
	}
	return nil, errors.New("no SigIgn in /proc/self/status")
}

// NewNamespace makes a PID and mount namespace for a process to start in
// (Spec.Namespace). The caller closes it when the process has ended.
func (s *Spawner) NewNamespace() (*Namespace, error) {
	r := request{namespace: true, reply: make(chan result, 1)}
	select {
	case s.reqs <- r:
	case <-s.done:
		return nil, errors.New("the node is shutting down")
	}
	res := <-r.reply
	return res.ns, res.err
}

// Start starts a process and returns once it runs the program, with its
// limits in place.
func (s *Spawner) Start(spec Spec) (*os.Process, error) {
	r := request{spec: spec, reply: make(chan result, 1)}
	select {
	case s.reqs <- r:
	case <-s.done:
		return nil, errors.New("the node is shutting down")
	}
	res := <-r.reply
	return res.p, res.err
}

// Traced starts a process that stops at its exec, before its program's
// first instruction, and calls fn with it on the Spawner's thread, which
// traces it: it is how a restore takes a fresh process over. fn must let
// the process go or kill it before it returns; the Spawner starts nothing
// else meanwhile. spec's Rlimits are not applied (see SetLimits).
func (s *Spawner) Traced(spec Spec, fn func(p *os.Process) error) error {
	r := request{spec: spec, traced: fn, reply: make(chan result, 1)}
	select {
	case s.reqs <- r:
	case <-s.done:
		return errors.New("the node is shutting down")
	}
	return (<-r.reply).err
}

func (s *Spawner) startTraced(spec Spec, fn func(p *os.Process) error) error {
	spec.Rlimits = nil
	p, err := s.startProcess(spec, true)
	if err != nil {
		return err
	}
	defer p.Release()
	return fn(p)
}

// Close stops the Spawner. Processes it started go on running; they are
// killed (PDEATHSIG) if the daemon's process dies.
func (s *Spawner) Close() {
	close(s.reqs)
	<-s.done
}

func (s *Spawner) start(spec Spec) (*os.Process, error) {
	limits := changedLimits(spec.Rlimits)
	stop := len(limits) > 0 || spec.AtExec != nil || spec.SchedPolicy != 0
	p, err := s.startProcess(spec, stop)
	if err != nil {
		return nil, err
	}
	if stop {
		if err := atExec(p.Pid, spec.UID, spec.GID, limits, spec.SchedPolicy, spec.AtExec); err != nil {
			p.Kill()
			var ws syscall.WaitStatus
			syscall.Wait4(p.Pid, &ws, 0, nil)
			p.Release()
			return nil, &Error{Other, err}
		}
	}
	return p, nil
}

// startProcess starts spec's program, stopped at its exec when traced.
func startProcess(spec Spec, traced bool) (*os.Process, error) {
	if len(spec.Argv) == 0 || spec.Argv[0] == "" {
		return nil, &Error{Other, errors.New("no program given")}
	}
	if st, err := os.Stat(spec.Dir); err != nil || !st.IsDir() {
		return nil, &Error{NoDir, fmt.Errorf("working directory %s does not exist here", spec.Dir)}
	}
	path, err := LookPath(spec.Argv[0], envPath(spec.Env), spec.Dir)
	if err != nil {
		return nil, err
	}
	if spec.NoNewPrivs {
		if err := gainsPrivileges(path); err != nil {
			return nil, err
		}
	}
	groups := make([]uint32, len(spec.Groups))
	copy(groups, spec.Groups)
	attr := &os.ProcAttr{
		Dir:   spec.Dir,
		Env:   spec.Env,
		Files: spec.Files,
		Sys: &syscall.SysProcAttr{
			Credential: &syscall.Credential{Uid: spec.UID, Gid: spec.GID, Groups: groups},
			Pdeathsig:  syscall.SIGKILL,
			Ptrace:     traced,
		},
	}
	if spec.Namespace != nil {
		// It dies with its namespace's init, which dies with the daemon.
		// (Go's check that the parent is still there after setting a
		// death signal reads getppid, 0 in the namespace, and would kill
		// the child.)
		attr.Sys.Pdeathsig = 0
	}
	if spec.Terminal {
		attr.Sys.Setsid, attr.Sys.Setctty, attr.Sys.Ctty = true, true, 0
	} else {
		attr.Sys.Setpgid = true
	}
	// The child starts with the umask of the process and the nice value
	// and I/O priority of the thread that forks it: this one, which forks
	// for no one else.
	tid := unix.Gettid()
	oldNice, err := threadNice(tid)
	if err != nil {
		return nil, &Error{Other, err}
	}
	if spec.Nice != oldNice {
		if err := unix.Setpriority(unix.PRIO_PROCESS, tid, spec.Nice); err != nil {
			return nil, &Error{Other, fmt.Errorf("nice value %d: %w", spec.Nice, err)}
		}
		defer unix.Setpriority(unix.PRIO_PROCESS, tid, oldNice)
	}
	oldIO, err := ioprio.Get(tid)
	if err != nil {
		return nil, &Error{Other, err}
	}
	if spec.IOPrio != oldIO {
		if err := ioprio.Set(tid, spec.IOPrio); err != nil {
			return nil, &Error{Other, err}
		}
		defer ioprio.Set(tid, oldIO)
	}
	old := syscall.Umask(int(spec.Umask & 0o777))
	p, err := os.StartProcess(path, spec.Argv, attr)
	syscall.Umask(old)
	if err != nil {
		if errors.Is(err, fs.ErrPermission) {
			return nil, &Error{NotExecutable, fmt.Errorf("%s: permission denied (to run it, or to enter %s)", spec.Argv[0], spec.Dir)}
		}
		return nil, &Error{Other, fmt.Errorf("start %s: %w", spec.Argv[0], err)}
	}
	return p, nil
}

// gainsPrivileges refuses a program that an exec would give privileges
// (set-user-ID, set-group-ID, file capabilities), for a caller under
// no_new_privs, whose own exec of it would not.
func gainsPrivileges(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return &Error{NotFound, fmt.Errorf("%s: %w", path, err)}
	}
	why := ""
	switch {
	case st.Mode()&fs.ModeSetuid != 0:
		why = "set-user-ID"
	case st.Mode()&fs.ModeSetgid != 0:
		why = "set-group-ID"
	default:
		if n, err := unix.Getxattr(path, "security.capability", nil); err == nil && n > 0 {
			why = "given file capabilities"
		}
	}
	if why == "" {
		return nil
	}
	return &Error{NotExecutable, fmt.Errorf("%s is %s, and you run with no_new_privs (a sandbox): mosaic does not start it for you (at home it would run without those privileges; here it cannot make sure of that)", path, why)}
}

// threadNice is a thread's nice value (getpriority(2) returns 20 - nice).
func threadNice(tid int) (int, error) {
	prio, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
	if err != nil {
		return 0, fmt.Errorf("read the spawning thread's nice value: %w", err)
	}
	return 20 - prio, nil
}

// changedLimits keeps the limits that differ from those a child of this
// process starts with: the others the child inherits as they are, and when
// none differs it need not stop at exec at all.
func changedLimits(limits []Rlimit) []Rlimit {
	var out []Rlimit
	for _, l := range limits {
		own, err := inheritedLimit(l.Resource)
		if err != nil || own.Cur != l.Cur || own.Max != l.Max {
			out = append(out, l)
		}
	}
	return out
}

// inheritedLimit is the limit a child of this process starts with: this
// process's own, but for the open-file limit, which Go raised for this
// process alone and sets back in its children (as syscall's
// forkAndExecInChild does, when this process has not changed it since).
func inheritedLimit(resource int) (unix.Rlimit, error) {
	var own unix.Rlimit
	if err := unix.Getrlimit(resource, &own); err != nil {
		return own, err
	}
	if resource == unix.RLIMIT_NOFILE {
		if orig, ok := nofile.Original(); ok && orig.Cur < orig.Max-1 && own.Cur == orig.Max-1 && own.Max == orig.Max {
			own.Cur = orig.Cur
		}
	}
	return own, nil
}

// atExec sets the limits of a child stopped at its exec and calls fn (if
// set), then lets it run. It runs on the thread that forked the child (its
// tracer).
//
// prlimit on another user's process needs CAP_SYS_RESOURCE, which root
// lacks in some containers; it is also allowed when the caller's real
// user and group IDs are the target's. So the thread (only this thread:
// raw setresuid/setresgid, not Go's process-wide wrappers) takes the user's
// real IDs for the call, keeping its effective root, and gives them back.
func atExec(pid int, uid, gid uint32, limits []Rlimit, policy int, fn func(pid int) error) error {
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(pid, &ws, syscall.WALL, nil); err != nil {
		return fmt.Errorf("wait for the new process to stop at exec: %w", err)
	}
	if !ws.Stopped() {
		return fmt.Errorf("the new process did not stop at exec (%v)", ws)
	}
	var errs []error
	if len(limits) > 0 {
		errs = append(errs, SetLimits(pid, uid, gid, limits))
	}
	if policy != 0 {
		errs = append(errs, setSchedPolicy(pid, policy))
	}
	if fn != nil {
		errs = append(errs, fn(pid))
	}
	if err := syscall.PtraceDetach(pid); err != nil {
		errs = append(errs, fmt.Errorf("let the new process run: %w", err))
	}
	return errors.Join(errs...)
}

// setSchedPolicy gives a process a scheduling policy, keeping its nice
// value (sched_setattr sets both).
func setSchedPolicy(pid, policy int) error {
	attr, err := unix.SchedGetAttr(pid, 0)
	if err == nil {
		attr.Policy, attr.Priority = uint32(policy), 0
		err = unix.SchedSetAttr(pid, attr, 0)
	}
	if err != nil {
		return fmt.Errorf("scheduling policy %d: %w", policy, err)
	}
	return nil
}

// SetLimits sets resource limits of a process of user uid (see
// atExec for how). It must run on a thread locked to its goroutine:
// in the function given to Traced, on the Spawner's thread.
func SetLimits(pid int, uid, gid uint32, limits []Rlimit) error {
	if err := setThreadRealIDs(uid, gid); err != nil {
		return err
	}
	var errs []error
	for _, l := range limits {
		if err := setLimit(pid, l); err != nil {
			errs = append(errs, err)
		}
	}
	if err := setThreadRealIDs(0, 0); err != nil {
		// The thread must not go on with another user's IDs.
		panic(fmt.Sprintf("spawn: cannot restore the spawning thread's IDs: %v", err))
	}
	return errors.Join(errs...)
}

// setLimit applies one limit. A hard limit above what the process has
// cannot be granted without CAP_SYS_RESOURCE: it keeps the one it has.
func setLimit(pid int, l Rlimit) error {
	var cur unix.Rlimit
	if err := unix.Prlimit(pid, l.Resource, nil, &cur); err != nil {
		return fmt.Errorf("read limit %d: %w", l.Resource, err)
	}
	lim := unix.Rlimit{Cur: l.Cur, Max: min(l.Max, cur.Max)}
	lim.Cur = min(lim.Cur, lim.Max)
	if lim == cur {
		return nil
	}
	if err := unix.Prlimit(pid, l.Resource, &lim, nil); err != nil {
		return fmt.Errorf("set limit %d to %d/%d: %w", l.Resource, lim.Cur, lim.Max, err)
	}
	return nil
}

// setThreadRealIDs sets the calling thread's real user and group IDs,
// keeping its effective and saved ones.
func setThreadRealIDs(uid, gid uint32) error {
	if _, _, e := syscall.RawSyscall(syscall.SYS_SETRESGID, uintptr(gid), ^uintptr(0), ^uintptr(0)); e != 0 {
		return fmt.Errorf("set the spawning thread's real group: %w", e)
	}
	if _, _, e := syscall.RawSyscall(syscall.SYS_SETRESUID, uintptr(uid), ^uintptr(0), ^uintptr(0)); e != 0 {
		return fmt.Errorf("set the spawning thread's real user: %w", e)
	}
	return nil
}

func envPath(env []string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if v, ok := strings.CutPrefix(env[i], "PATH="); ok {
			return v
		}
	}
	return "/usr/local/bin:/usr/bin:/bin"
}

// LookPath finds a program as a shell of the user would: a name with a
// slash is taken as it is (relative to dir), others are searched in path.
func LookPath(name, path, dir string) (string, error) {
	if strings.Contains(name, "/") {
		p := name
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		if err := executable(p); err != nil {
			return "", classify(name, err)
		}
		return p, nil
	}
	var firstErr error
	for _, d := range filepath.SplitList(path) {
		if d == "" {
			d = "."
		}
		p := filepath.Join(d, name)
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		err := executable(p)
		if err == nil {
			return p, nil
		}
		if firstErr == nil && !errors.Is(err, fs.ErrNotExist) {
			firstErr = err
		}
	}
	if firstErr != nil {
		return "", classify(name, firstErr)
	}
	return "", &Error{NotFound, fmt.Errorf("%s: command not found", name)}
}

func executable(p string) error {
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	if st.IsDir() || st.Mode()&0o111 == 0 {
		return fs.ErrPermission
	}
	return nil
}

func classify(name string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return &Error{NotFound, fmt.Errorf("%s: no such file", name)}
	}
	return &Error{NotExecutable, fmt.Errorf("%s: not an executable file", name)}
}

// KeepInheritedFromChildren marks every descriptor above 2 that this
// process holds close-on-exec. Go opens its own that way, but a daemon
// started by a shell or a supervisor may have inherited others, and every
// program it starts would inherit them in turn: a leak, and for a process
// that is to migrate, a pin (it would hold a pipe it knows nothing of).
func KeepInheritedFromChildren() error {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("list this process's descriptors: %w", err)
	}
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			unix.CloseOnExec(fd)
		}
	}
	return nil
}
