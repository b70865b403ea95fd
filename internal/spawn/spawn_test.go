package spawn

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mosaic-cluster/mosaic/internal/cgroup"
	"github.com/mosaic-cluster/mosaic/internal/ioprio"
	"github.com/mosaic-cluster/mosaic/internal/pty"
)

// newSpawner starts a Spawner for the test, closed when it ends.
func newSpawner(t *testing.T) *Spawner {
	t.Helper()
	s, err := New(nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: starts processes as another user")
	}
}

func wait(t *testing.T, p *os.Process) syscall.WaitStatus {
	t.Helper()
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(p.Pid, &ws, 0, nil); err != nil {
		t.Fatal(err)
	}
	p.Release()
	return ws
}

// run starts spec with a pipe as stdout and stderr and returns the output.
func run(t *testing.T, s *Spawner, spec Spec) (string, syscall.WaitStatus) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	devnull, _ := os.Open(os.DevNull)
	defer devnull.Close()
	spec.Files = []*os.File{devnull, w, w}
	p, err := s.Start(spec)
	w.Close()
	if err != nil {
		r.Close()
		t.Fatalf("Start: %v", err)
	}
	out, _ := io.ReadAll(r)
	r.Close()
	return string(out), wait(t, p)
}

func TestStartAsUserWithLimitsAndUmask(t *testing.T) {
	needRoot(t)
	s := newSpawner(t)
	dir, err := os.MkdirTemp("", "mosaic-spawn-test-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o777)
	out, ws := run(t, s, Spec{
		Argv: []string{"sh", "-c", `umask; ulimit -Sn; ulimit -Hn; id -u; id -g; id -G; pwd; echo "$GREETING"; exit 3`},
		Env:  []string{"PATH=/usr/bin:/bin", "GREETING=hello"},
		Dir:  dir, UID: 65534, GID: 65534, Groups: []uint32{65534, 100},
		Umask:   0o027,
		Rlimits: []Rlimit{{Resource: unix.RLIMIT_NOFILE, Cur: 100, Max: 200}},
	})
	want := fmt.Sprintf("0027\n100\n200\n65534\n65534\n65534 100\n%s\nhello\n", dir)
	if out != want {
		t.Fatalf("output:\n%q\nwant:\n%q", out, want)
	}
	if ws.ExitStatus() != 3 {
		t.Fatalf("exit status %v, want 3", ws)
	}
}

func TestStartFailures(t *testing.T) {
	needRoot(t)
	s := newSpawner(t)
	dir := t.TempDir()
	notExec := filepath.Join(dir, "data")
	os.WriteFile(notExec, []byte("x"), 0o644)
	cases := []struct {
		spec Spec
		kind Kind
		want string
	}{
		{Spec{Argv: []string{"no-such-program-here"}, Dir: dir}, NotFound, "command not found"},
		{Spec{Argv: []string{"/no/such/program"}, Dir: dir}, NotFound, "no such file"},
		{Spec{Argv: []string{notExec}, Dir: dir}, NotExecutable, "not an executable"},
		{Spec{Argv: []string{"true"}, Dir: filepath.Join(dir, "gone")}, NoDir, "does not exist here"},
		{Spec{Argv: nil, Dir: dir}, Other, "no program"},
	}
	for _, c := range cases {
		c.spec.Env = []string{"PATH=/usr/bin:/bin"}
		_, err := s.Start(c.spec)
		var se *Error
		if !errors.As(err, &se) || se.Kind != c.kind || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Start(%v in %s) = %v, want kind %d with %q", c.spec.Argv, c.spec.Dir, err, c.kind, c.want)
		}
	}
}

func TestStartsInTheThreadsCgroup(t *testing.T) {
	needRoot(t)
	if err := cgroup.Available(cgroup.DefaultRoot); err != nil {
		t.Skipf("no cgroup v1: %v", err)
	}
	g, err := cgroup.Create(cgroup.DefaultRoot, fmt.Sprintf("mosaic-test-spawn-%d", os.Getpid()), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Destroy()
	s, err := New(g.AddThread, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	out, _ := run(t, s, Spec{Argv: []string{"cat", "/proc/self/cgroup"}, Env: []string{"PATH=/bin:/usr/bin"}, Dir: "/"})
	for _, ctl := range []string{"cpu", "memory"} {
		if !strings.Contains(out, ":"+ctl+":/mosaic-test-spawn-") {
			t.Errorf("child is not in the %s group:\n%s", ctl, out)
		}
	}
	// The daemon itself stays where it was.
	self, _ := os.ReadFile("/proc/self/cgroup")
	if strings.Contains(string(self), "mosaic-test-spawn") {
		t.Errorf("placing the spawning thread moved the whole process:\n%s", self)
	}
}

func TestTerminal(t *testing.T) {
	needRoot(t)
	s := newSpawner(t)
	m, sl, err := pty.Open(65534, 65534)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := pty.SetSize(int(m.Fd()), 33, 77); err != nil {
		t.Fatal(err)
	}
	p, err := s.Start(Spec{
		Argv: []string{"sh", "-c", "stty size; tty; test -t 0 && echo isatty"}, Env: []string{"PATH=/bin:/usr/bin"},
		Dir: "/", UID: 65534, GID: 65534, Files: []*os.File{sl, sl, sl}, Terminal: true,
	})
	sl.Close()
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(m) // EIO once the slave is closed everywhere
	wait(t, p)
	if !strings.Contains(string(out), "33 77") || !strings.Contains(string(out), "/dev/pts/") || !strings.Contains(string(out), "isatty") {
		t.Fatalf("on a terminal the child saw:\n%s", out)
	}
}

// TestChildrenDieWithTheDaemon starts a process from a Spawner in another
// process (this test binary, re-executed), kills that process with
// SIGKILL, and checks that the child died too: a daemon that crashes leaves
// no process of a user behind.
func TestChildrenDieWithTheDaemon(t *testing.T) {
	needRoot(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "SPAWN_TEST_DAEMON=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// One child as it is, one in a namespace of its own.
	var pids [2]int
	if _, err := fmt.Fscan(out, &pids[0], &pids[1]); err != nil {
		t.Fatalf("read the children's pids: %v", err)
	}
	for _, pid := range pids {
		if syscall.Kill(pid, 0) != nil {
			t.Fatalf("child %d is not running", pid)
		}
	}
	cmd.Process.Kill()
	cmd.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for _, pid := range pids {
		for syscall.Kill(pid, 0) == nil {
			// It is a zombie until init reaps it; it is dead either way.
			if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && strings.Contains(string(st), ") Z") {
				break
			}
			if time.Now().After(deadline) {
				syscall.Kill(pid, syscall.SIGKILL)
				t.Fatalf("child %d outlived the process that started it", pid)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func TestMain(m *testing.M) {
	if os.Getenv("SPAWN_TEST_NOFILE") != "" {
		nofileChild()
	}
	if os.Getenv("SPAWN_TEST_DAEMON") != "" {
		s, err := New(nil, 0)
		if err != nil {
			os.Exit(2)
		}
		devnull, _ := os.Open(os.DevNull)
		spec := Spec{Argv: []string{"sleep", "60"}, Env: []string{"PATH=/bin:/usr/bin"}, Dir: "/", Files: []*os.File{devnull, devnull, devnull}}
		p, err := s.Start(spec)
		if err != nil {
			os.Exit(3)
		}
		if spec.Namespace, err = s.NewNamespace(); err != nil {
			os.Exit(4)
		}
		q, err := s.Start(spec)
		if err != nil {
			os.Exit(5)
		}
		fmt.Println(p.Pid, q.Pid)
		time.Sleep(time.Hour)
	}
	os.Exit(m.Run())
}

// A program in a Namespace is PID 2 there, its /proc shows the
// namespace, what it leaves behind is reaped and, at Close, killed; the
// node's own /proc and mounts are untouched.
func TestNamespace(t *testing.T) {
	needRoot(t)
	s := newSpawner(t)
	mountsBefore, _ := os.ReadFile("/proc/self/mountinfo")
	ns, err := s.NewNamespace()
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	script := `echo $$ $PPID; readlink /proc/self; ls /proc | grep -c '^[0-9]'; ` +
		`sleep 0.1 >/dev/null 2>&1 & sleep 1000 >/dev/null 2>&1 & ` +
		`grep -c . /proc/2/cmdline >/dev/null && cat /proc/2/comm`
	out, ws := run(t, s, Spec{Argv: []string{"sh", "-c", script}, Env: []string{"PATH=/bin:/usr/bin"}, Dir: "/", UID: 65534, GID: 65534, Namespace: ns})
	if !ws.Exited() || ws.ExitStatus() != 0 {
		t.Fatalf("exit %v, output %q", ws, out)
	}
	// sh is PID 2 with no parent in the namespace; readlink, its first
	// child, is 3; ls and grep (4, 5) see init, sh and themselves.
	if want := "2 0\n3\n4\nsh\n"; out != want {
		t.Fatalf("output %q, want %q", out, want)
	}
	children := func() string {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", ns.Init.Pid, ns.Init.Pid))
		return strings.TrimSpace(string(b))
	}
	// The short sleep ends and is reaped; the long one is still there.
	deadline := time.Now().Add(5 * time.Second)
	for len(strings.Fields(children())) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("init's children: %q, want the long sleep only", children())
		}
		time.Sleep(10 * time.Millisecond)
	}
	left, _ := strconv.Atoi(children())
	if err := ns.Close(); err != nil {
		t.Fatal(err)
	}
	if syscall.Kill(left, 0) == nil {
		if st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", left)); !strings.Contains(string(st), ") Z") {
			t.Fatalf("process %d left in the namespace outlived it", left)
		}
	}
	if mountsAfter, _ := os.ReadFile("/proc/self/mountinfo"); string(mountsAfter) != string(mountsBefore) {
		t.Fatalf("the node's mounts changed:\nbefore %s\nafter %s", mountsBefore, mountsAfter)
	}
}

// The cost a namespace adds to every start: making it (its init execs and
// mounts /proc) and ending it.
func BenchmarkNamespace(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	s, err := New(nil, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	for b.Loop() {
		ns, err := s.NewNamespace()
		if err != nil {
			b.Fatal(err)
		}
		ns.Close()
	}
}

// inits lists the namespace inits that are children of this test process
// (of the Spawner's thread).
func inits(t *testing.T) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || !IsInit(pid) {
			continue
		}
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		f := strings.Fields(string(st[strings.LastIndexByte(string(st), ')')+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(os.Getpid()) && f[0] != "Z" {
			out = append(out, pid)
		}
	}
	return out
}

// A Spawner that keeps a spare namespace makes it while idle, hands it out
// (a new one follows), replaces one that died meanwhile, and ends it at
// Close.
func TestSpareNamespace(t *testing.T) {
	needRoot(t)
	s, err := New(nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			s.Close()
		}
	}()
	spare := func() int {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			if l := inits(t); len(l) == 1 {
				return l[0]
			} else if len(l) > 1 {
				t.Fatalf("%d spare inits, want one", len(l))
			}
			if time.Now().After(deadline) {
				t.Fatal("no spare namespace made while the Spawner was idle")
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if l := inits(t); len(l) != 0 {
		t.Fatalf("inits before any namespace was asked for or kept: %v", l)
	}
	s.KeepSpareNamespace()
	first := spare()
	ns, err := s.NewNamespace()
	if err != nil {
		t.Fatal(err)
	}
	if ns.Init.Pid != first {
		t.Fatalf("got a namespace with init %d, want the spare %d", ns.Init.Pid, first)
	}
	out, ws := run(t, s, Spec{Argv: []string{"sh", "-c", "echo $$"}, Env: []string{"PATH=/bin:/usr/bin"}, Dir: "/", Namespace: ns})
	ns.Close()
	if !ws.Exited() || ws.ExitStatus() != 0 || out != "2\n" {
		t.Fatalf("in the spare namespace: exit %v, output %q, want 2", ws, out)
	}

	second := spare()
	if second == first {
		t.Fatal("the spare handed out is still counted as the spare")
	}
	syscall.Kill(second, syscall.SIGKILL)
	for deadline := time.Now().Add(5 * time.Second); slices.Contains(inits(t), second); {
		if time.Now().After(deadline) {
			t.Fatalf("init %d still runs after SIGKILL", second)
		}
		time.Sleep(time.Millisecond)
	}
	ns, err = s.NewNamespace()
	if err != nil {
		t.Fatal(err)
	}
	if ns.Init.Pid == second {
		t.Fatal("a spare whose init was killed was handed out")
	}
	out, ws = run(t, s, Spec{Argv: []string{"sh", "-c", "echo $$"}, Env: []string{"PATH=/bin:/usr/bin"}, Dir: "/", Namespace: ns})
	ns.Close()
	if out != "2\n" {
		t.Fatalf("in a namespace made after the spare died: exit %v, output %q", ws, out)
	}
	third := spare()
	s.Close()
	closed = true
	if syscall.Kill(third, 0) == nil {
		t.Fatalf("the spare init %d outlived the Spawner", third)
	}
}

// The programs started, and their namespace's init, get the Spawner's
// slack, not the caller's (the daemon runs with a slack of its own).
func TestStartsWithTheGivenTimerSlack(t *testing.T) {
	needRoot(t)
	const slack = 7 * time.Millisecond
	s, err := New(nil, slack)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	want := strconv.FormatInt(slack.Nanoseconds(), 10) + "\n"
	spec := Spec{Argv: []string{"cat", "/proc/self/timerslack_ns"}, Env: []string{"PATH=/bin:/usr/bin"}, Dir: "/", UID: 65534, GID: 65534}
	if out, ws := run(t, s, spec); out != want || ws.ExitStatus() != 0 {
		t.Fatalf("a program's timer slack: %q (%v), want %q", out, ws, want)
	}
	if spec.Namespace, err = s.NewNamespace(); err != nil {
		t.Fatal(err)
	}
	defer spec.Namespace.Close()
	if out, ws := run(t, s, spec); out != want || ws.ExitStatus() != 0 {
		t.Fatalf("a program's timer slack in a namespace: %q (%v), want %q", out, ws, want)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/timerslack_ns", spec.Namespace.Init.Pid))
	if err != nil || string(b) != want {
		t.Fatalf("the namespace's init's timer slack: %q (%v), want %q", b, err, want)
	}
	// And the caller's own is untouched.
	if own, _ := os.ReadFile("/proc/self/timerslack_ns"); string(own) == want {
		t.Fatalf("the caller's timer slack became the Spawner's (%q)", own)
	}
}

// nofileChild is a daemon started with a soft open-file limit of 77 (Go
// raised its own): it says whether that limit counts as changed for a
// program that wants 77, and what programs that want 77 and 50 get.
func nofileChild() {
	var own unix.Rlimit
	unix.Getrlimit(unix.RLIMIT_NOFILE, &own)
	s, err := New(nil, 0)
	if err != nil {
		os.Exit(2)
	}
	fmt.Printf("own %d, changed %d", own.Cur, len(changedLimits([]Rlimit{{unix.RLIMIT_NOFILE, 77, own.Max}})))
	for _, soft := range []uint64{77, 50} {
		r, w, _ := os.Pipe()
		p, err := s.Start(Spec{Argv: []string{"sh", "-c", "echo $(ulimit -Sn)/$(ulimit -Hn)"}, Env: []string{"PATH=/bin:/usr/bin"}, Dir: "/",
			Rlimits: []Rlimit{{unix.RLIMIT_NOFILE, soft, own.Max}}, Files: []*os.File{w, w, w}})
		w.Close()
		if err != nil {
			os.Exit(3)
		}
		out, _ := io.ReadAll(r)
		var ws syscall.WaitStatus
		syscall.Wait4(p.Pid, &ws, 0, nil)
		fmt.Print(" " + strings.TrimSpace(string(out)))
	}
	os.Exit(0)
}

// A daemon's open-file limit is raised by Go and set back in its
// children: a program that wants the daemon's original limit needs no
// change (no stop at exec), and gets it; one that wants another gets that.
func TestOpenFileLimitAsChildrenInheritIt(t *testing.T) {
	needRoot(t)
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil || lim.Max < 100 {
		t.Skipf("a hard limit of %d open files (%v): too low to start a child under 77", lim.Max, err)
	}
	cmd := exec.Command("sh", "-c", `ulimit -Sn 77 && exec "$0" -test.run='^$'`, os.Args[0])
	cmd.Env = append(os.Environ(), "SPAWN_TEST_NOFILE=1")
	out, err := cmd.Output()
	want := fmt.Sprintf("own %d, changed 0 77/%d 50/%d", lim.Max-1, lim.Max, lim.Max)
	if err != nil || string(out) != want {
		t.Fatalf("child: %q (%v), want %q", out, err, want)
	}
}

// A program starts with the nice value, I/O priority and scheduling
// policy asked for, and the next one, which asks for none, with the
// defaults again.
func TestStartsWithThePriorities(t *testing.T) {
	needRoot(t)
	s := newSpawner(t)
	if _, err := exec.LookPath("ionice"); err != nil {
		t.Skip("no ionice (util-linux) here")
	}
	for _, c := range []struct {
		nice, policy int
		io           ioprio.Prio
		want         string
	}{
		{6, unix.SCHED_IDLE, ioprio.Make(ioprio.ClassIdle, 0), "6\nidle\nSCHED_IDLE\n"},
		{-3, unix.SCHED_BATCH, ioprio.Make(ioprio.ClassBestEffort, 5), "-3\nbest-effort: prio 5\nSCHED_BATCH\n"},
		{0, 0, 0, "0\nnone: prio 0\nSCHED_OTHER\n"},
	} {
		out, ws := run(t, s, Spec{Argv: []string{"sh", "-c", `cut -d " " -f 19 /proc/self/stat; ionice -p $$; chrt -p $$ | head -1 | grep -o "SCHED_[A-Z]*"`},
			Env: []string{"PATH=/bin:/usr/bin"}, Dir: "/", UID: 65534, GID: 65534, Nice: c.nice, IOPrio: c.io, SchedPolicy: c.policy})
		if out != c.want || ws.ExitStatus() != 0 {
			t.Fatalf("nice %d, I/O priority %#x, policy %d: the program says %q (%v), want %q", c.nice, int(c.io), c.policy, out, ws, c.want)
		}
	}
}

// Under no_new_privs a program that would gain privileges at exec is
// refused, and says why; others run.
func TestNoNewPrivsRefusesSetuidPrograms(t *testing.T) {
	needRoot(t)
	s := newSpawner(t)
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755) // for the other user to reach it
	setuid := filepath.Join(dir, "true-setuid")
	b, err := os.ReadFile("/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(setuid, b, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(setuid, 0o755|fs.ModeSetuid)
	_, err = s.Start(Spec{Argv: []string{setuid}, Dir: "/", UID: 65534, GID: 65534, NoNewPrivs: true})
	var se *Error
	if !errors.As(err, &se) || se.Kind != NotExecutable || !strings.Contains(err.Error(), "set-user-ID") || !strings.Contains(err.Error(), "no_new_privs") {
		t.Fatalf("Start of a set-user-ID program under no_new_privs: %v", err)
	}
	for _, spec := range []Spec{
		{Argv: []string{setuid}, Dir: "/", UID: 65534, GID: 65534},                        // without no_new_privs
		{Argv: []string{"/bin/true"}, Dir: "/", UID: 65534, GID: 65534, NoNewPrivs: true}, // not set-user-ID
	} {
		if out, ws := run(t, s, spec); ws.ExitStatus() != 0 {
			t.Fatalf("%v (no_new_privs %v): %v %q", spec.Argv, spec.NoNewPrivs, ws, out)
		}
	}
}
