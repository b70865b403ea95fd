//go:build cluster

package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/api"
	"github.com/mosaic-cluster/mosaic/internal/cgroup"
)

// cPrograms builds the C test programs of internal/ckpt/testdata into a
// directory every user may read, and returns their paths by name.
func cPrograms(t *testing.T) map[string]string {
	t.Helper()
	dir := publicDir(t)
	srcs, err := filepath.Glob("../internal/ckpt/testdata/*.c")
	if err != nil || len(srcs) == 0 {
		t.Fatalf("no C test programs: %v", err)
	}
	out := map[string]string{}
	for _, src := range srcs {
		name := strings.TrimSuffix(filepath.Base(src), ".c")
		path := filepath.Join(dir, name)
		if b, err := exec.Command("gcc", "-O1", "-o", path, src, "-lpthread").CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", src, err, b)
		}
		out[name] = path
	}
	// And an ordinary Go program, built by the toolchain running the tests.
	path := filepath.Join(dir, "goprog")
	if b, err := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", path, "../internal/ckpt/testdata/goprog").CombinedOutput(); err != nil {
		t.Fatalf("build the Go test program: %v\n%s", err, b)
	}
	out["goprog"] = path
	return out
}

// background is a `mosaic run` the test reads from as it goes.
type background struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout *bufio.Reader
	stderr *syncBuffer
	got    strings.Builder
}

func startBackground(t *testing.T, sock string, cred *userCred, args ...string) *background {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"--socket", sock, "run", "-v"}, args...)...)
	cmd.Dir = "/"
	if cred != nil {
		cmd.SysProcAttr = cred.attr()
	}
	b := &background{t: t, cmd: cmd, stderr: &syncBuffer{}}
	var err error
	if b.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	b.stdout = bufio.NewReader(out)
	cmd.Stderr = b.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return b
}

// lines reads n lines of output.
func (b *background) lines(n int) {
	b.t.Helper()
	for range n {
		line, err := b.stdout.ReadString('\n')
		b.got.WriteString(line)
		if err != nil {
			b.t.Fatalf("read from the program: %v (so far %q; stderr %q)", err, b.got.String(), b.stderr.String())
		}
	}
}

// id is the process's cluster ID, from -v's report.
func (b *background) id() string {
	b.t.Helper()
	var id string
	eventually(b.t, 10*time.Second, "the run reports its ID", func() (bool, string) {
		for _, f := range strings.Fields(b.stderr.String()) {
			if strings.Count(f, ".") == 1 && strings.HasPrefix(f, "n") {
				id = f
				return true, ""
			}
		}
		return false, b.stderr.String()
	})
	return id
}

// finish reads the rest and waits for the CLI's exit status.
func (b *background) finish() (string, int) {
	b.t.Helper()
	rest, _ := io.ReadAll(b.stdout)
	b.got.Write(rest)
	err := b.cmd.Wait()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		ws := ee.Sys().(syscall.WaitStatus)
		code = ws.ExitStatus()
		if ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
	} else if err != nil {
		b.t.Fatal(err)
	}
	return b.got.String(), code
}

// migrateFrozen starts moving process id (pid on this machine) to node
// and returns once it is frozen for the move (traced), its image on the
// way; the move's outcome comes on the channel.
func migrateFrozen(t *testing.T, sock, id string, pid int, node string) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := migrate(t, sock, nil, id, node)
		done <- err
	}()
	eventually(t, 20*time.Second, "the process is frozen for the move", func() (bool, string) {
		st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		f := strings.Fields(string(st[strings.LastIndexByte(string(st), ')')+1:]))
		return len(f) > 0 && f[0] == "t", string(st)
	})
	return done
}

// listener is Python that listens on a TCP port (something no move
// carries), says "ready" and waits.
const listener = "import socket, time\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\ns.listen()\nprint('ready', flush=True)\ntime.sleep(30)"

func migrate(t *testing.T, sock string, cred *userCred, id, node string, flags ...string) (api.MigrateResult, error) {
	t.Helper()
	cmd := exec.Command(bin, append(append([]string{"--socket", sock, "migrate", "--json"}, flags...), id, node)...)
	if cred != nil {
		cmd.SysProcAttr = cred.attr()
	}
	cmd.Dir = "/"
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return api.MigrateResult{}, fmt.Errorf("%v: %s", err, stderr.String())
	}
	var res api.MigrateResult
	if err := json.Unmarshal(out, &res); err != nil {
		return res, err
	}
	return res, nil
}

func TestMigrate(t *testing.T) {
	c := startPublicCluster(t, 3)
	progs := cPrograms(t)
	sock := func(n string) string { return c.Node(n).Socket }
	clusterID := readClusterID(t, c)

	t.Run("a program moves three times and its output goes on unchanged", func(t *testing.T) {
		argv := []string{progs["counter"], "60", "4000000"}
		want, err := exec.Command(argv[0], argv[1:]...).Output()
		if err != nil {
			t.Fatal(err)
		}
		b := startBackground(t, sock("n1"), nil, append([]string{"--on", "n2", "--"}, argv...)...)
		b.lines(5)
		id := b.id()
		// From any node: n3 asks n1 (the home), n2 asks too.
		for i, step := range []struct{ from, to string }{{"n3", "n3"}, {"n2", "home"}, {"n1", "n2"}} {
			// The CPU time it used before a move still counts after it
			// (the kernel's count starts again with the restored copy).
			cpuBefore := psOne(t, sock("n1"), id).CPUSeconds
			res, err := migrate(t, sock(step.from), nil, id, step.to)
			if err != nil {
				t.Fatalf("migration %d to %s: %v", i+1, step.to, err)
			}
			where := step.to
			if where == "home" {
				where = "n1"
			}
			if res.Node != where {
				t.Fatalf("migration %d: runs on %s, want %s", i+1, res.Node, where)
			}
			p := psOne(t, sock("n1"), id)
			if p.Node != where || p.Migrations != i+1 {
				t.Fatalf("after migration %d: ps says node %s, %d migrations", i+1, p.Node, p.Migrations)
			}
			if p.CPUSeconds < cpuBefore {
				t.Fatalf("after migration %d: ps says %.2f s of CPU, %.2f s before the move", i+1, p.CPUSeconds, cpuBefore)
			}
			// Under its new node's CPU quota, its memory charged there.
			group := fmt.Sprintf("/mosaic/%s/%s", clusterID, where)
			for _, controller := range []string{"cpu", "memory"} {
				if got := cgroupOf(t, p.PID, controller); got != group {
					t.Fatalf("after migration %d: in %s group %s, want %s", i+1, controller, got, group)
				}
			}
			b.lines(5)
		}
		got, code := b.finish()
		if code != 0 || got != string(want) {
			t.Fatalf("exit %d; output after three moves differs:\n got %q\nwant %q\nstderr %s", code, got, want, b.stderr)
		}
	})

	t.Run("it keeps the process and thread ids it sees", func(t *testing.T) {
		// Threads 3 and 5 (4 ended): a restore that did not give them
		// their ids back would make them 3 and 4.
		b := startBackground(t, sock("n1"), nil, "--on", "n2", "--", progs["ids"], "40")
		b.lines(3)
		id := b.id()
		for i, to := range []string{"n3", "home"} {
			if _, err := migrate(t, sock("n1"), nil, id, to); err != nil {
				t.Fatalf("migration %d to %s: %v", i+1, to, err)
			}
			b.lines(3)
		}
		got, code := b.finish()
		lines := strings.Split(strings.TrimSpace(got), "\n")
		ids := func(l string) string { // "round N " left out
			f := strings.SplitN(l, " ", 3)
			return f[len(f)-1]
		}
		for _, l := range lines {
			if !strings.HasSuffix(l, " same") || ids(l) != ids(lines[0]) {
				t.Fatalf("exit %d; the ids it sees changed:\n%s", code, got)
			}
		}
		if code != 0 || len(lines) != 40 {
			t.Fatalf("exit %d, %d lines:\n%s", code, len(lines), got)
		}
	})

	t.Run("a program that exec'd another moves as the one it runs", func(t *testing.T) {
		// The target starts a stub of the program the process started
		// with (sh) ahead of its image; the image says counter.
		argv := []string{progs["counter"], "30", "4000000"}
		want, err := exec.Command(argv[0], argv[1:]...).Output()
		if err != nil {
			t.Fatal(err)
		}
		b := startBackground(t, sock("n1"), nil, "--on", "n2", "--", "/bin/sh", "-c", "exec "+strings.Join(argv, " "))
		b.lines(5)
		id := b.id()
		for i, to := range []string{"n3", "home"} {
			if _, err := migrate(t, sock("n1"), nil, id, to); err != nil {
				t.Fatalf("migration %d to %s: %v", i+1, to, err)
			}
			b.lines(5)
		}
		got, code := b.finish()
		if code != 0 || got != string(want) {
			t.Fatalf("exit %d; output after two moves differs:\n got %q\nwant %q\nstderr %s", code, got, want, b.stderr)
		}
	})

	t.Run("a shell script moves with the programs it runs, as its user", func(t *testing.T) {
		// sh runs one pipeline after another and waits for each: moved
		// while one runs, its programs and the pipe between them go too
		// (each with the id it had, which sh waits for), or while sh is
		// between them, sh alone.
		script := fmt.Sprintf(`for i in 1 2 3; do %s 25 4000000 | cat || exit 9; echo "step $i"; done; echo "sh: done"`, progs["counter"])
		want, err := exec.Command("sh", "-c", script).Output()
		if err != nil {
			t.Fatal(err)
		}
		user := &userCred{1, 1}
		b := startBackground(t, sock("n1"), user, "--on", "n2", "--", "sh", "-c", script)
		b.lines(5)
		id := b.id()
		// mosaic ps says what moves with it.
		if p := psOne(t, sock("n1"), id); len(p.Children) != 2 || !strings.HasSuffix(p.Children[1], " cat") {
			t.Fatalf("ps of a shell running a pipeline: children %q, want its two programs", p.Children)
		}
		for i, to := range []string{"n3", "home", "n2"} {
			res, err := migrate(t, sock("n1"), user, id, to)
			if err != nil {
				t.Fatalf("migration %d to %s: %v", i+1, to, err)
			}
			// Its children under the new node's CPU quota, as it is.
			group := fmt.Sprintf("/mosaic/%s/%s", clusterID, res.Node)
			for _, c := range psOne(t, sock("n1"), id).Children {
				var pid int
				fmt.Sscan(c, &pid)
				if got, err := cgroup.Of(pid, "cpu"); err == nil && got != group {
					t.Fatalf("after migration %d: its child %s in cpu group %s, want %s", i+1, c, got, group)
				}
			}
			b.lines(15)
		}
		got, code := b.finish()
		if code != 0 || got != string(want) {
			t.Fatalf("exit %d; output after three moves differs:\n got %q\nwant %q\nstderr %s", code, got, want, b.stderr)
		}
	})

	t.Run("its children keep their own resource limits", func(t *testing.T) {
		// The subshell lowers its limit and executes python: the child
		// has 77 open files at most, its parent the limit it was given.
		prog := "import resource, time\nfor i in range(40):\n    print(i, resource.getrlimit(resource.RLIMIT_NOFILE)[0], flush=True)\n    time.sleep(0.03)"
		b := startBackground(t, sock("n1"), nil, "--on", "n2", "--", "sh", "-c", `(ulimit -Sn 77; exec python3 -c "$0"); ulimit -Sn`, prog)
		b.lines(3)
		id := b.id()
		if _, err := migrate(t, sock("n1"), nil, id, "n3"); err != nil {
			t.Fatal(err)
		}
		got, code := b.finish()
		lines := strings.Split(strings.TrimSpace(got), "\n")
		if code != 0 || len(lines) != 41 || lines[39] != "39 77" || lines[40] == "77" {
			t.Fatalf("exit %d; output:\n%s", code, got)
		}
	})

	t.Run("its output and error output stay apart, wherever it holds them", func(t *testing.T) {
		// Descriptor 1 on the error output (dup2(2, 1): both share it),
		// the output held only at 5. Before mosaic knew its streams, the
		// first pinned it, and a process with only the second moved with
		// descriptor 1 on the output, which the home had closed: what it
		// wrote after the move was lost.
		const prog = `import os, time
os.dup2(1, 5)
os.dup2(2, 1)
for i in range(60):
    os.write(5, b"out %d\n" % i)
    os.write(1, b"err %d\n" % i)
    time.sleep(0.02)
`
		b := startBackground(t, sock("n1"), nil, "--on", "n2", "--", "python3", "-c", prog)
		b.lines(5)
		id := b.id()
		for i, to := range []string{"n3", "home"} {
			if _, err := migrate(t, sock("n1"), nil, id, to); err != nil {
				t.Fatalf("migration %d to %s: %v", i+1, to, err)
			}
			b.lines(5)
		}
		got, code := b.finish()
		var wantOut, wantErr strings.Builder
		for i := range 60 {
			fmt.Fprintf(&wantOut, "out %d\n", i)
			fmt.Fprintf(&wantErr, "err %d\n", i)
		}
		var gotErr strings.Builder
		for _, l := range strings.SplitAfter(b.stderr.String(), "\n") {
			if strings.HasPrefix(l, "err ") {
				gotErr.WriteString(l)
			}
		}
		if code != 0 || got != wantOut.String() || gotErr.String() != wantErr.String() {
			t.Fatalf("exit %d after two moves; output:\n%s\nerror output:\n%s", code, got, b.stderr)
		}
	})

	t.Run("post-copy: a process of 64 MiB runs at the target first, its memory follows; three times", func(t *testing.T) {
		// It discards, moves and forks memory while pages are missing
		// (see internal/ckpt/testdata/lazymem.c), as user alice.
		argv := []string{progs["lazymem"], "200"}
		alice := &userCred{1, 1}
		want, err := exec.Command(argv[0], argv[1:]...).Output()
		if err != nil {
			t.Fatal(err)
		}
		b := startBackground(t, sock("n1"), alice, append([]string{"--on", "n2", "--"}, argv...)...)
		b.lines(2)
		id := b.id()
		for i, to := range []string{"n3", "home", "n2"} {
			res, err := migrate(t, sock("n1"), alice, id, to, "--lazy")
			if err != nil {
				t.Fatalf("lazy migration %d to %s: %v", i+1, to, err)
			}
			if res.LazyBytes < 48<<20 || res.ImageBytes > 8<<20 {
				t.Fatalf("lazy migration %d: %d bytes before the switch and %d after; want the bulk after", i+1, res.ImageBytes, res.LazyBytes)
			}
			// Round 5's child prints the sixth line and then exits: the
			// third move waits for the parent's line after it, as a
			// process with a child is (rightly) refused.
			b.lines(2 + i%2)
		}
		got, code := b.finish()
		if code != 0 || got != string(want) {
			t.Fatalf("exit %d; output after three lazy moves differs:\n got %q\nwant %q\nstderr %s", code, got, want, b.stderr)
		}
	})

	t.Run("input goes with it, even while it waits for input", func(t *testing.T) {
		b := startBackground(t, sock("n1"), nil, "--on", "n3", "--", progs["reader"])
		io.WriteString(b.stdin, "one\n")
		b.lines(1)
		id := b.id()
		// Blocked in read(): moved, and its next read gets what comes.
		if _, err := migrate(t, sock("n2"), nil, id, "n2"); err != nil {
			t.Fatal(err)
		}
		io.WriteString(b.stdin, "two two\n")
		b.lines(1)
		// Input written while it moves is held and delivered in order.
		done := make(chan error, 1)
		go func() {
			_, err := migrate(t, sock("n1"), nil, id, "home")
			done <- err
		}()
		for _, l := range []string{"three three three\n", "four\n"} {
			io.WriteString(b.stdin, l)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		b.stdin.Close()
		got, code := b.finish()
		want := "1 4\n2 12\n3 30\n4 35\neof 4 35\n"
		if code != 0 || got != want {
			t.Fatalf("exit %d, output %q, want %q; stderr %s", code, got, want, b.stderr)
		}
	})

	t.Run("the end of its input goes with it, and so does what it did not read", func(t *testing.T) {
		b := startBackground(t, sock("n1"), nil, "--on", "n2", "--", "/usr/bin/python3", "-c",
			"import sys, time\nprint('waiting', flush=True)\ntime.sleep(1.5)\nprint(len(sys.stdin.read()))")
		b.lines(1)
		id := b.id()
		io.WriteString(b.stdin, strings.Repeat("abc\n", 100))
		b.stdin.Close()
		time.Sleep(300 * time.Millisecond) // the end reaches n2 first
		if _, err := migrate(t, sock("n1"), nil, id, "n3"); err != nil {
			t.Fatal(err)
		}
		type result struct {
			out  string
			code int
		}
		done := make(chan result, 1)
		go func() {
			out, code := b.finish()
			done <- result{out, code}
		}()
		select {
		case r := <-done:
			if r.code != 0 || r.out != "waiting\n400\n" {
				t.Fatalf("exit %d, output %q; stderr %s", r.code, r.out, b.stderr)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("after the move it still waits for input that ended before it")
		}
	})

	t.Run("signals reach it where it moved", func(t *testing.T) {
		b := startBackground(t, sock("n1"), nil, "--on", "n2", "--", progs["reader"])
		id := b.id()
		if _, err := migrate(t, sock("n1"), nil, id, "n3"); err != nil {
			t.Fatal(err)
		}
		if r := mosaic(t, "--socket", sock("n2"), "kill", id); r.code != 0 {
			t.Fatal(r)
		}
		if _, code := b.finish(); code != 128+int(syscall.SIGTERM) {
			t.Fatalf("exit %d after kill, want %d", code, 128+int(syscall.SIGTERM))
		}
	})

	t.Run("a user's process keeps exactly its credentials", func(t *testing.T) {
		alice := &userCred{1, 1}
		b := startBackground(t, sock("n1"), alice, "--on", "n2", "--", progs["reader"])
		id := b.id()
		before := psOne(t, sock("n1"), id)
		creds := func(node string, pid int) string {
			st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
			if err != nil {
				t.Fatalf("%s pid %d: %v", node, pid, err)
			}
			var keep []string
			for line := range strings.Lines(string(st)) {
				for _, f := range []string{"Uid:", "Gid:", "Groups:", "CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:", "NoNewPrivs:", "Seccomp:"} {
					if strings.HasPrefix(line, f) {
						keep = append(keep, strings.Join(strings.Fields(line), " "))
					}
				}
			}
			return strings.Join(keep, "\n")
		}
		orig := creds("n2", before.PID)
		res, err := migrate(t, sock("n1"), alice, id, "n3")
		if err != nil {
			t.Fatal(err)
		}
		if now := creds("n3", res.PID); now != orig {
			t.Fatalf("credentials changed in the move:\nbefore\n%s\nafter\n%s", orig, now)
		}
		if !strings.Contains(orig, "Uid: 1 1 1 1") || !strings.Contains(orig, "CapEff: 0000000000000000") {
			t.Fatalf("the process did not run as its user to begin with:\n%s", orig)
		}
		// Someone else may not move it, nor see it.
		if _, err := migrate(t, sock("n1"), nobody, id, "n1"); err == nil || !strings.Contains(err.Error(), "no process") && !strings.Contains(err.Error(), "another user") {
			t.Fatalf("another user moved alice's process: %v", err)
		}
		b.stdin.Close()
		if out, code := b.finish(); code != 0 || out != "eof 0 0\n" {
			t.Fatalf("exit %d, output %q", code, out)
		}
	})

	t.Run("what cannot move stays, and says why", func(t *testing.T) {
		// A listening network socket.
		b := startBackground(t, sock("n1"), nil, "--on", "n2", "--", "python3", "-c", listener)
		b.lines(1)
		id := b.id()
		_, err := migrate(t, sock("n1"), nil, id, "n3")
		if err == nil || !strings.Contains(err.Error(), "a network or local socket") {
			t.Fatalf("migrating a process with a network socket: %v", err)
		}
		p := psOne(t, sock("n1"), id)
		if p.Node != "n2" || p.State != "running" {
			t.Fatalf("after a refused move: %+v", p)
		}
		if got, group := cgroupOf(t, p.PID, "cpu"), fmt.Sprintf("/mosaic/%s/n2", clusterID); got != group {
			t.Fatalf("after a refused move: in cpu group %s, want %s", got, group)
		}
		mosaic(t, "--socket", sock("n1"), "kill", id)
		b.finish()

		// Two programs that meet in a POSIX shared memory object
		// (/dev/shm): the one asked to move would come back mapping
		// the target's file, and the other would not see its writes.
		shm := fmt.Sprintf("/dev/shm/mosaic-e2e-%d", os.Getpid())
		t.Cleanup(func() { os.Remove(shm) })
		mapper := func(create string) string {
			return "import mmap, os, time\nfd = os.open('" + shm + "', os.O_RDWR" + create + ", 0o600)\nos.ftruncate(fd, 4096)\nm = mmap.mmap(fd, 4096)\nm[0] = 1\nprint('ready', flush=True)\ntime.sleep(30)"
		}
		owner := startBackground(t, sock("n1"), nil, "--on", "n2", "--", "python3", "-c", mapper(" | os.O_CREAT"))
		owner.lines(1)
		other := startBackground(t, sock("n1"), nil, "--on", "n2", "--", "python3", "-c", mapper(""))
		other.lines(1)
		ownerID, otherPID := owner.id(), psOne(t, sock("n1"), other.id()).PID
		why := fmt.Sprintf("shares memory (the file %s, mapped shared) with process %d", shm, otherPID)
		if _, err := migrate(t, sock("n1"), nil, ownerID, "n3"); err == nil || !strings.Contains(err.Error(), why) {
			t.Fatalf("migrating a process that shares memory with another: %v, want %q", err, why)
		}
		if p := psOne(t, sock("n1"), ownerID); p.Node != "n2" || p.State != "running" || !strings.Contains(p.Pinned, why) {
			t.Fatalf("after a refused move: %+v, want it running on n2, pinned for %q", p, why)
		}
		mosaic(t, "--socket", sock("n1"), "kill", other.id())
		other.finish()
		// Alone with it, it moves.
		eventually(t, 10*time.Second, "it is no longer pinned", func() (bool, string) {
			p := psOne(t, sock("n1"), ownerID)
			return p.Pinned == "", p.Pinned
		})
		if _, err := migrate(t, sock("n1"), nil, ownerID, "n3"); err != nil {
			t.Fatalf("migrating it once the other has gone: %v", err)
		}
		mosaic(t, "--socket", sock("n1"), "kill", ownerID)
		owner.finish()
	})

	t.Run("bad requests get clear errors", func(t *testing.T) {
		b := startBackground(t, sock("n1"), nil, "--on", "n2", "--", progs["reader"])
		id := b.id()
		for _, c := range []struct {
			id, node, want string
		}{
			{id, "n9", `node "n9" is not known`},
			{id, "n2", "runs on n2 already"},
			{"n1.999999", "n3", "no process n1.999999"},
			{"n7.3", "n3", "home node n7 is not known"},
			{"bogus", "n3", "is not a process ID"},
		} {
			_, err := migrate(t, sock("n1"), nil, c.id, c.node)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("migrate %s %s: %v, want an error with %q", c.id, c.node, err, c.want)
			}
		}
		if p := psOne(t, sock("n1"), id); p.Node != "n2" {
			t.Fatalf("bad requests moved it: %+v", p)
		}
		b.stdin.Close()
		b.finish()
	})

	t.Run("the target dies mid-transfer: the process goes on where it was", func(t *testing.T) {
		argv := []string{progs["counter"], "40", fmt.Sprint(768 << 20)}
		want, err := exec.Command(argv[0], argv[1:]...).Output()
		if err != nil {
			t.Fatal(err)
		}
		b := startBackground(t, sock("n1"), nil, append([]string{"--on", "n2", "--"}, argv...)...)
		b.lines(3)
		id := b.id()
		pid := psOne(t, sock("n1"), id).PID
		// Once it is frozen, its image is on the way: kill n3.
		done := migrateFrozen(t, sock("n1"), id, pid, "n3")
		if err := c.Kill("n3"); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err == nil {
			t.Fatal("the migration to a node killed mid-transfer succeeded")
		} else {
			t.Logf("migration error: %v", err)
		}
		if p := psOne(t, sock("n1"), id); p.Node != "n2" {
			t.Fatalf("after the failed move: %+v", p)
		}
		// Out of n2's CPU quota for its freeze, back under it.
		if got, group := cgroupOf(t, pid, "cpu"), fmt.Sprintf("/mosaic/%s/n2", clusterID); got != group {
			t.Fatalf("after the failed move: in cpu group %s, want %s", got, group)
		}
		got, code := b.finish()
		if code != 0 || got != string(want) {
			t.Fatalf("exit %d; output differs after a failed move:\n got %q\nwant %q", code, got, want)
		}
		restartAndWait(t, c, "n3")
	})

	t.Run("the home dies mid-transfer: no copy is left on either node", func(t *testing.T) {
		size := fmt.Sprint(768<<20 + 4096) // names its processes, wherever they are
		b := startBackground(t, sock("n2"), nil, "--on", "n1", "--", progs["counter"], "400", size)
		b.lines(3)
		id := b.id()
		pid := psOne(t, sock("n2"), id).PID
		done := migrateFrozen(t, sock("n2"), id, pid, "n3")
		if err := c.Kill("n2"); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err == nil {
			t.Fatal("a migration whose home was killed mid-transfer succeeded")
		}
		if _, code := b.finish(); code != api.StatusLost {
			t.Fatalf("the client ended %d, want %d (lost)", code, api.StatusLost)
		}
		eventually(t, 15*time.Second, "no copy of the process is left", func() (bool, string) {
			pids := withArg(size)
			return len(pids) == 0, fmt.Sprint("still running: ", pids)
		})
		restartAndWait(t, c, "n2")
	})
}

func TestCheckpointRestore(t *testing.T) {
	c := startPublicCluster(t, 3)
	progs := cPrograms(t)
	sock := func(n string) string { return c.Node(n).Socket }
	dir := publicDir(t)
	argv := []string{progs["counter"], "50", "3000000"}
	want, err := exec.Command(argv[0], argv[1:]...).Output()
	if err != nil {
		t.Fatal(err)
	}
	wantLines := strings.SplitAfter(string(want), "\n")
	img := filepath.Join(dir, "counter.img")

	t.Run("saved, stopped, and brought back elsewhere, it goes on where it stopped", func(t *testing.T) {
		b := startBackground(t, sock("n1"), nil, append([]string{"--on", "n2", "--"}, argv...)...)
		b.lines(5)
		id := b.id()
		// A checkpoint from another node: the process goes on, under its
		// node's CPU quota again.
		if r := mosaic(t, "--socket", sock("n3"), "checkpoint", id, filepath.Join(dir, "first.img")); r.code != 0 {
			t.Fatal(r)
		}
		if got, group := cgroupOf(t, psOne(t, sock("n1"), id).PID, "cpu"), fmt.Sprintf("/mosaic/%s/n2", readClusterID(t, c)); got != group {
			t.Fatalf("after a checkpoint: in cpu group %s, want %s", got, group)
		}
		b.lines(5)
		if r := mosaic(t, "--socket", sock("n3"), "checkpoint", "--stop", id, img); r.code != 0 || !strings.Contains(r.out, "stopped") {
			t.Fatal(r)
		}
		before, code := b.finish()
		if code != 254 || !strings.Contains(b.stderr.String(), "stopped after its checkpoint") {
			t.Fatalf("the run of a process stopped by its checkpoint: exit %d, stderr %s", code, b.stderr)
		}
		if st, err := os.Stat(img); err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("the image file: %v %v", st, err)
		}
		if left, _ := filepath.Glob(filepath.Join(dir, ".*partial*")); len(left) > 0 {
			t.Fatalf("partial files left: %v", left)
		}
		r := runOn(t, sock("n3"), nil, nil, "restore", "-v", "--on", "n1", img)
		if r.code != 0 || !strings.Contains(r.stderr, "runs on n1") {
			t.Fatalf("restore: %s", r)
		}
		if got := before + r.stdout; got != string(want) {
			t.Fatalf("output across checkpoint and restore differs:\n got %q\nwant %q", got, want)
		}
		// The first image, taken earlier, restores too: from where it was.
		r = runOn(t, sock("n2"), nil, nil, "restore", filepath.Join(dir, "first.img"))
		if r.code != 0 || !strings.HasSuffix(string(want), r.stdout) || len(r.stdout) == 0 {
			t.Fatalf("restore of the first image: %s", r)
		}
		// It was taken after the fifth line, before the second image
		// (after the tenth): the process may have printed a line or two
		// more before it froze.
		if n, total := strings.Count(r.stdout, "\n"), len(wantLines)-1; n > total-5 || n <= total-10 {
			t.Fatalf("the first image resumed at the wrong place (%d lines of %d): %q", n, total, r.stdout)
		}
		// And on the restoring node itself.
		r = runOn(t, sock("n3"), nil, nil, "restore", "-v", "--here", img)
		if r.code != 0 || !strings.Contains(r.stderr, "runs on n3") || before+r.stdout != string(want) {
			t.Fatalf("restore on the restoring node: %s", r)
		}
	})

	t.Run("a shell pipeline is saved and brought back whole", func(t *testing.T) {
		script := `for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo "$i"; sleep 0.1; done | cat; echo end`
		want, err := exec.Command("sh", "-c", script).Output()
		if err != nil {
			t.Fatal(err)
		}
		b := startBackground(t, sock("n1"), nil, "--on", "n2", "--", "sh", "-c", script)
		b.lines(3)
		id := b.id()
		tree := filepath.Join(dir, "pipeline.img")
		if r := mosaic(t, "--socket", sock("n1"), "checkpoint", "--stop", id, tree); r.code != 0 {
			t.Fatal(r)
		}
		before, _ := b.finish()
		r := runOn(t, sock("n3"), nil, nil, "restore", "--on", "n3", tree)
		if r.code != 0 || before+r.stdout != string(want) {
			t.Fatalf("restore of a pipeline: %s\nbefore it %q", r, before)
		}
	})

	t.Run("damaged, foreign or missing images are refused before anything runs", func(t *testing.T) {
		good, err := os.ReadFile(img)
		if err != nil {
			t.Fatal(err)
		}
		write := func(name string, b []byte) string {
			p := filepath.Join(dir, name)
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
			return p
		}
		flipped := append([]byte(nil), good...)
		flipped[len(flipped)/2] ^= 0x40
		cases := []struct {
			path, want string
			cred       *userCred
		}{
			{write("flipped.img", flipped), "damaged", nil},
			{write("short.img", good[:len(good)/3]), "damaged", nil},
			{write("script.img", []byte("#!/bin/sh\necho hi\n")), "not a mosaic process image", nil},
			{filepath.Join(dir, "missing.img"), "no image file", nil},
			{write("foreign.img", good), "you may restore only your own", nobody},
		}
		for _, tc := range cases {
			before := countProcs(t, progs["counter"])
			r := runOn(t, sock("n1"), nil, tc.cred, "restore", "--on", "n2", tc.path)
			if r.code != 125 || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("restore %s: want status 125 and %q:\n%s", filepath.Base(tc.path), tc.want, r)
			}
			if after := countProcs(t, progs["counter"]); after != before {
				t.Errorf("restore %s left %d processes of the program running", filepath.Base(tc.path), after-before)
			}
		}
	})

	t.Run("a large image: a full disk or damage is reported for what it is, while the rest is on its way", func(t *testing.T) {
		// 64 MiB the process has written: more than a connection between
		// two nodes holds, so the receiver fails (a full disk; damage an
		// eighth in) while the sender still sends, and drops the link.
		script := "import time\nb = bytes(range(256)) * (1 << 18)\nprint('ready', flush=True)\ntime.sleep(60)\n"
		b := startBackground(t, sock("n1"), nil, "--on", "n2", "--", "python3", "-c", script)
		b.lines(1)
		full := t.TempDir()
		if err := syscall.Mount("tmpfs", full, "tmpfs", 0, "size=4m,mode=0755"); err != nil {
			t.Fatal(err)
		}
		defer syscall.Unmount(full, syscall.MNT_DETACH)
		r := mosaic(t, "--socket", sock("n3"), "checkpoint", b.id(), filepath.Join(full, "big.img"))
		expectFail(t, r, "no space left on device")
		if left, _ := os.ReadDir(full); len(left) > 0 {
			t.Fatalf("a failed checkpoint left %v", left)
		}
		if p := psOne(t, sock("n1"), b.id()); p.State != "running" {
			t.Fatalf("after a checkpoint that could not be saved: %+v", p)
		}
		big := filepath.Join(dir, "big.img")
		if r := mosaic(t, "--socket", sock("n1"), "checkpoint", "--stop", b.id(), big); r.code != 0 {
			t.Fatal(r)
		}
		b.finish()
		damaged, err := os.ReadFile(big)
		if err != nil || len(damaged) < 64<<20 {
			t.Fatalf("the image: %d bytes, %v", len(damaged), err)
		}
		damaged[len(damaged)/8] ^= 0x40
		if err := os.WriteFile(big, damaged, 0o644); err != nil {
			t.Fatal(err)
		}
		rr := runOn(t, sock("n1"), nil, nil, "restore", "--on", "n2", big)
		if rr.code != 125 || !strings.Contains(rr.stderr, "damaged") {
			t.Fatalf("restore of a damaged 64 MiB image: want status 125 and the target's reason, %q:\n%s", "damaged", rr)
		}
	})

	t.Run("an interrupted checkpoint --stop either saves the process or leaves it running", func(t *testing.T) {
		// 256 MiB: the transfer takes long enough for the interrupt to
		// fall in it, most times. Either outcome is right; a process
		// stopped without its image in place, or a partial file, is not.
		script := "import time\nb = bytes(range(256)) * (1 << 20)\nprint('ready', flush=True)\ntime.sleep(60)\n"
		b := startBackground(t, sock("n1"), nil, "--on", "n2", "--", "python3", "-c", script)
		b.lines(1)
		id := b.id()
		file := filepath.Join(dir, "interrupted.img")
		cmd := exec.Command(bin, "--socket", sock("n3"), "checkpoint", "--stop", id, file)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := interruptAfter(t, cmd, 150*time.Millisecond)
		if left, _ := filepath.Glob(filepath.Join(dir, ".interrupted.img.partial*")); len(left) > 0 {
			t.Fatalf("an interrupted checkpoint left %v", left)
		}
		if _, serr := os.Stat(file); serr == nil {
			t.Logf("the checkpoint was done before the interrupt (%v): the image is in place", err)
			if _, code := b.finish(); code != 254 {
				t.Fatalf("the image is saved but the process was not stopped: exit %d", code)
			}
			return
		}
		if err == nil || !strings.Contains(stderr.String(), "called off") {
			t.Fatalf("no image, and the checkpoint says: %v %s", err, stderr.String())
		}
		if p := psOne(t, sock("n1"), id); p.State != "running" {
			t.Fatalf("the checkpoint was called off, and the process is %+v", p)
		}
		t.Logf("called off: %s", strings.TrimSpace(stderr.String()))
		mosaic(t, "--socket", sock("n1"), "kill", id)
		b.finish()
	})

	t.Run("what cannot be saved is refused, and goes on", func(t *testing.T) {
		b := startBackground(t, sock("n1"), nil, "--on", "n2", "--", "python3", "-c", listener)
		b.lines(1)
		id := b.id()
		r := mosaic(t, "--socket", sock("n1"), "checkpoint", "--stop", id, filepath.Join(dir, "sh.img"))
		expectFail(t, r, "a network or local socket")
		if _, err := os.Stat(filepath.Join(dir, "sh.img")); err == nil {
			t.Fatal("a refused checkpoint left an image")
		}
		if p := psOne(t, sock("n1"), id); p.State != "running" {
			t.Fatalf("after a refused checkpoint: %+v", p)
		}
		mosaic(t, "--socket", sock("n1"), "kill", id)
		b.finish()
	})
}

// countProcs counts the processes running exe.
func countProcs(t *testing.T, exe string) int {
	t.Helper()
	ents, _ := os.ReadDir("/proc")
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink("/proc/" + e.Name() + "/exe"); err == nil && l == exe {
			n++
		}
	}
	return n
}

// cgroupOf is a process's group in one cgroup v1 controller.
func cgroupOf(t *testing.T, pid int, controller string) string {
	t.Helper()
	g, err := cgroup.Of(pid, controller)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// The migration benchmark itself works end to end (its figures are the
// issue's): a row of figures for the size asked, with the copies beside
// the moves, and nothing of its cluster left running.
func TestBenchMigrate(t *testing.T) {
	out, err := exec.Command(daemonBin, "bench", "migrate", "--sizes", "1", "--runs", "2").CombinedOutput()
	if err != nil {
		t.Fatalf("mosaicd bench migrate: %v\n%s", err, out)
	}
	var row []string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == "1M" {
			row = f
		}
	}
	// touched image frozen gap stall total rate TCP TLS vs-TCP vs-TLS
	if len(row) != 11 || !strings.HasSuffix(row[7], "MB/s") || !strings.HasSuffix(row[10], "%") {
		t.Fatalf("no row of figures for 1 MiB:\n%s", out)
	}
	if !strings.Contains(string(out), "CPU of the copies") {
		t.Fatalf("no CPU of the copies:\n%s", out)
	}
	if n, _ := exec.Command("pgrep", "-f", "mosaic-bench-migrate-").Output(); len(n) > 0 {
		t.Fatalf("processes of the benchmark left: %s", n)
	}
}
