//go:build cluster

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/api"
	"github.com/mosaic-cluster/mosaic/internal/pty"
	"github.com/mosaic-cluster/mosaic/internal/spawn"
	"github.com/mosaic-cluster/mosaic/internal/up"
)

// startPublicCluster is startCluster in a directory other users may enter
// (their CLIs must reach the sockets).
func startPublicCluster(t *testing.T, n int) *up.Cluster {
	t.Helper()
	dir, err := os.MkdirTemp("", "mosaic-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return startClusterIn(t, dir, n)
}

// runCLI runs `mosaic run` (or any mosaic command) with a socket, stdin and
// an optional shell prefix, and returns its output and how it ended.
type runResult struct {
	stdout, stderr string
	code           int
	signal         syscall.Signal
}

func (r runResult) String() string {
	return fmt.Sprintf("code %d signal %v\nstdout: %q\nstderr: %q", r.code, r.signal, r.stdout, r.stderr)
}

func runOn(t *testing.T, sock string, stdin io.Reader, cred *userCred, args ...string) runResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"--socket", sock}, args...)...)
	cmd.Stdin = stdin
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if cred != nil {
		cmd.SysProcAttr = cred.attr()
	}
	err := cmd.Run()
	r := runResult{stdout: o.String(), stderr: e.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		ws := ee.Sys().(syscall.WaitStatus)
		r.code, r.signal = ws.ExitStatus(), ws.Signal()
		if ws.Signaled() {
			r.code = 128 + int(ws.Signal())
		}
	case err != nil:
		t.Fatalf("mosaic %v: %v", args, err)
	}
	return r
}

func TestRun(t *testing.T) {
	c := startPublicCluster(t, 3)
	n1 := c.Node("n1").Socket
	clusterID := readClusterID(t, c)

	t.Run("output, errors and status come home", func(t *testing.T) {
		r := runOn(t, n1, nil, nil, "run", "--on", "n2", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
		if r.code != 7 || r.stdout != "out\n" || r.stderr != "err\n" {
			t.Fatal(r)
		}
	})

	t.Run("it runs where it was sent, in that node's cgroup", func(t *testing.T) {
		for _, node := range []string{"n1", "n2", "n3"} {
			r := runOn(t, n1, nil, nil, "run", "-v", "--on", node, "--", "cat", "/proc/self/cgroup")
			want := fmt.Sprintf(":cpu:/mosaic/%s/%s\n", clusterID, node)
			if r.code != 0 || !strings.Contains(r.stdout, want) {
				t.Fatalf("--on %s: want %q in\n%s", node, want, r)
			}
			if !regexp.MustCompile(`mosaic: n1\.[0-9]+ runs on ` + node + ` \(pid [0-9]+ there\)`).MatchString(r.stderr) {
				t.Fatalf("-v did not say where it ran: %s", r)
			}
		}
	})

	t.Run("binary-safe pipes with end of file both ways", func(t *testing.T) {
		data := make([]byte, 24<<20)
		rand.Read(data)
		sum := sha256.Sum256(data)
		r := runOn(t, n1, bytes.NewReader(data), nil, "run", "--on", "n3", "--", "sha256sum")
		if r.code != 0 || !strings.HasPrefix(r.stdout, hex.EncodeToString(sum[:])) {
			t.Fatalf("sha256sum of stdin through n3: %s", r)
		}
		// `cat` back: the output is the input, byte for byte.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, "--socket", n1, "run", "--on", "n2", "--", "cat")
		cmd.Stdin = bytes.NewReader(data)
		out, err := cmd.Output()
		if err != nil || !bytes.Equal(out, data) {
			t.Fatalf("cat through n2: %v, %d bytes back of %d", err, len(out), len(data))
		}
	})

	t.Run("a slow reader slows the writer down: nothing piles up in between", func(t *testing.T) {
		// 400 MB written on n2 into a pipe at home that nobody reads for
		// two seconds: the daemons must not buffer it.
		cmd := exec.Command("sh", "-c", fmt.Sprintf("%s --socket %s run --on n2 -- head -c 400000000 /dev/zero | (sleep 2; wc -c)", bin, n1))
		done := make(chan []byte, 1)
		go func() {
			out, _ := cmd.Output()
			done <- out
		}()
		time.Sleep(1500 * time.Millisecond)
		for _, n := range []string{"n1", "n2"} {
			if rss := rssOf(t, c.Node(n).PID()); rss > 150<<20 {
				t.Errorf("%s's daemon holds %d MiB while the reader sleeps", n, rss>>20)
			}
		}
		if out := <-done; strings.TrimSpace(string(out)) != "400000000" {
			t.Fatalf("the reader got %q bytes", out)
		}
	})

	t.Run("a reader that goes away gives the writer SIGPIPE", func(t *testing.T) {
		// As `yes | head -1` at home: yes dies of SIGPIPE, and so does the job.
		cmd := exec.Command("bash", "-c", fmt.Sprintf("%s --socket %s run --on n2 -- yes | head -1; echo ${PIPESTATUS[0]}", bin, n1))
		out, err := cmd.Output()
		if err != nil || string(out) != "y\n141\n" {
			t.Fatalf("yes | head -1 through n2: %q, %v", out, err)
		}
	})

	t.Run("environment, directory, umask, limits and priorities come along", func(t *testing.T) {
		dir, _ := os.MkdirTemp("", "mosaic-cwd-")
		defer os.RemoveAll(dir)
		cmd := exec.Command("sh", "-c", fmt.Sprintf(`cd %s && umask 027 && ulimit -Sn 321 && ulimit -Hn 400 && GREETING=hi nice -n 5 ionice -c 3 chrt -b 0 %s --socket %s run --on n3 -- sh -c 'pwd; umask; ulimit -Sn; ulimit -Hn; echo $GREETING; cat /proc/self/timerslack_ns; cut -d" " -f19 /proc/self/stat; ionice -p $$; chrt -p $$ | head -1 | grep -o "SCHED_[A-Z]*"'`, dir, bin, n1))
		out, err := cmd.Output()
		// The timer slack too: the daemons run with one of their own
		// (internal/timerslack), their programs with the one the daemons
		// were started with, this test's.
		slack, _ := os.ReadFile("/proc/self/timerslack_ns")
		// A soft open-file limit under the hard one, as shells have: the
		// client, a Go program, runs with its own raised (internal/nofile).
		if want := fmt.Sprintf("%s\n0027\n321\n400\nhi\n%s5\nidle\nSCHED_BATCH\n", dir, slack); err != nil || string(out) != want {
			t.Fatalf("got %q (%v), want %q", out, err, want)
		}
		if d, err := os.ReadFile(fmt.Sprintf("/proc/%d/timerslack_ns", c.Node("n3").PID())); err != nil || string(d) != "1000000\n" {
			t.Fatalf("n3's daemon has a timer slack of %q (%v), want 1 ms", d, err)
		}
	})

	t.Run("it runs as the caller, with its account's groups", func(t *testing.T) {
		// The client runs as uid 1 with an extra group (27) its account
		// does not have: the program must get the account's groups only.
		cred := &userCred{uid: 1, gid: 1}
		attr := cred.attr()
		attr.Credential.Groups = []uint32{1, 27}
		cmd := exec.Command(bin, "--socket", n1, "run", "--on", "n2", "--", "id")
		cmd.SysProcAttr = attr
		cmd.Dir = "/"
		out, err := cmd.Output()
		if err != nil || strings.TrimSpace(string(out)) != "uid=1(daemon) gid=1(daemon) groups=1(daemon)" {
			t.Fatalf("id through n2 as daemon: %q, %v", out, err)
		}
	})

	t.Run("death by signal looks the same at home", func(t *testing.T) {
		r := runOn(t, n1, nil, nil, "run", "--on", "n2", "--", "sh", "-c", "kill -SEGV $$")
		if r.signal != syscall.SIGSEGV {
			t.Fatalf("want death by SIGSEGV: %s", r)
		}
	})

	t.Run("what the program leaves running ends with it", func(t *testing.T) {
		// The background sleep holds the output pipes too: the run ends
		// when its namespace does, and takes the sleep with it.
		r := runOn(t, n1, nil, nil, "run", "--on", "n2", "--", "sh", "-c", "sleep 1234.5 & echo started")
		if r.code != 0 || r.stdout != "started\n" {
			t.Fatal(r)
		}
		eventually(t, 5*time.Second, "the background sleep is gone", func() (bool, string) {
			pids := withArg("1234.5")
			return len(pids) == 0, fmt.Sprint("still running: ", pids)
		})
	})

	t.Run("signals to the client reach the program", func(t *testing.T) {
		for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTERM, syscall.SIGUSR1} {
			cmd := exec.Command(bin, "--socket", n1, "run", "-v", "--on", "n3", "--", "sleep", "100")
			var stderr syncBuffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			eventually(t, 10*time.Second, "started", func() (bool, string) {
				return strings.Contains(stderr.String(), "runs on n3"), stderr.String()
			})
			cmd.Process.Signal(sig)
			err := cmd.Wait()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != sig {
				t.Fatalf("after %v the client ended with %v", sig, err)
			}
		}
	})

	t.Run("a signal the client was started with ignored stays ignored", func(t *testing.T) {
		// As `nohup mosaic run ...` and a script's `mosaic run ... &`:
		// SIGHUP and SIGINT ignored by the shell that starts the client.
		cmd := exec.Command("sh", "-c", `trap "" HUP INT; exec "$0" "$@"`, bin, "--socket", n1, "run", "-v", "--on", "n3", "--",
			"sh", "-c", "grep SigIgn /proc/self/status; read line; echo survived $line")
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stdout, stderr syncBuffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "started", func() (bool, string) {
			return strings.Contains(stderr.String(), "runs on n3"), stderr.String()
		})
		cmd.Process.Signal(syscall.SIGHUP)
		cmd.Process.Signal(syscall.SIGINT)
		// And the program ignores them itself, as it would at home.
		id := strings.Fields(stderr.String())[1]
		for _, sig := range []string{"-HUP", "-INT"} {
			if r := mosaic(t, "--socket", n1, "kill", sig, id); r.code != 0 {
				t.Fatalf("mosaic kill %s %s: %v", sig, id, r)
			}
		}
		time.Sleep(200 * time.Millisecond) // what would have ended it has arrived
		io.WriteString(stdin, "both\n")
		stdin.Close()
		if err := cmd.Wait(); err != nil || !strings.HasSuffix(stdout.String(), "\nsurvived both\n") {
			t.Fatalf("client: %v, output %q, stderr %q", err, stdout.String(), stderr.String())
		}
		// SIGHUP and SIGINT among them (what else the daemon was started
		// with ignored comes along: GNU make leaves glibc's signals 32 and
		// 33 ignored).
		hex, _ := strings.CutPrefix(strings.SplitN(stdout.String(), "\n", 2)[0], "SigIgn:\t")
		if mask, err := strconv.ParseUint(hex, 16, 64); err != nil || mask&3 != 3 {
			t.Fatalf("the program ignores %q, want SIGHUP and SIGINT among them", hex)
		}
	})

	t.Run("a caller under no_new_privs: its program is too, and set-user-ID programs are refused", func(t *testing.T) {
		out, err := exec.Command("setpriv", "--no-new-privs", bin, "--socket", n1, "run", "--on", "n2", "--",
			"grep", "NoNewPrivs", "/proc/self/status").CombinedOutput()
		if err != nil || string(out) != "NoNewPrivs:\t1\n" {
			t.Fatalf("grep NoNewPrivs under setpriv --no-new-privs: %q (%v)", out, err)
		}
		out, err = exec.Command("setpriv", "--no-new-privs", bin, "--socket", n1, "run", "--on", "n2", "--", "passwd", "--help").CombinedOutput()
		if err == nil || !strings.Contains(string(out), "is set-user-ID") || !strings.Contains(string(out), "no_new_privs") {
			t.Fatalf("passwd under setpriv --no-new-privs: %q (%v), want refused", out, err)
		}
		// Without it, the same program starts.
		if r := runOn(t, n1, nil, nil, "run", "--on", "n2", "--", "passwd", "--help"); r.code != 0 {
			t.Fatalf("passwd --help: %v", r)
		}
	})

	t.Run("a killed client takes its program with it", func(t *testing.T) {
		cmd := exec.Command(bin, "--socket", n1, "run", "-v", "--on", "n2", "--", "sleep", "100")
		var stderr syncBuffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "started", func() (bool, string) {
			return strings.Contains(stderr.String(), "runs on n2"), stderr.String()
		})
		pid := pidOf(t, stderr.String())
		cmd.Process.Kill()
		cmd.Wait()
		eventually(t, 10*time.Second, "the program on n2 is gone", func() (bool, string) {
			return !alive(pid), fmt.Sprint("pid ", pid, " still runs")
		})
	})

	t.Run("ps and kill work from any node", func(t *testing.T) {
		cmd := exec.Command("nice", "-n", "3", bin, "--socket", n1, "run", "-v", "--on", "n2", "--", "sleep", "100")
		var stderr syncBuffer
		cmd.Stderr = &stderr
		cmd.Start()
		eventually(t, 10*time.Second, "started", func() (bool, string) {
			return strings.Contains(stderr.String(), "runs on n2"), stderr.String()
		})
		id := regexp.MustCompile(`n1\.[0-9]+`).FindString(stderr.String())
		for _, n := range c.Nodes {
			var procs []api.ProcInfo
			if err := api.Call(context.Background(), n.Socket, api.OpPs, api.PsArgs{}, &procs); err != nil {
				t.Fatal(err)
			}
			found := false
			for _, p := range procs {
				if p.ID == id {
					found = p.Node == "n2" && p.Home == "n1" && p.User == "root" && p.State == "running" && p.PID > 0 && p.Argv[0] == "sleep" && p.Nice == 3
				}
			}
			if !found {
				t.Fatalf("ps on %s does not show %s running on n2: %s", n.Name, id, jsonString(procs))
			}
		}
		r := runOn(t, c.Node("n3").Socket, nil, nil, "ps", id)
		if r.code != 0 || !strings.Contains(r.stdout, "runs on    n2") || !strings.Contains(r.stdout, "nice       3\n") {
			t.Fatalf("ps ID: %s", r)
		}
		r = runOn(t, c.Node("n3").Socket, nil, nil, "kill", "-KILL", id)
		if r.code != 0 {
			t.Fatalf("kill from n3: %s", r)
		}
		err := cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("after mosaic kill -KILL the client ended with %v", err)
		}
	})

	t.Run("users see and signal only their own processes", func(t *testing.T) {
		alice, bob := &userCred{1, 1}, nobody
		cmd := exec.Command(bin, "--socket", n1, "run", "-v", "--on", "n3", "--", "sleep", "100")
		cmd.SysProcAttr = alice.attr()
		cmd.Dir = "/"
		var stderr syncBuffer
		cmd.Stderr = &stderr
		cmd.Start()
		defer func() { cmd.Process.Kill(); cmd.Wait() }()
		eventually(t, 10*time.Second, "started", func() (bool, string) {
			return strings.Contains(stderr.String(), "runs on n3"), stderr.String()
		})
		id := regexp.MustCompile(`n1\.[0-9]+`).FindString(stderr.String())
		if r := runOn(t, n1, nil, alice, "ps"); !strings.Contains(r.stdout, id) {
			t.Fatalf("alice does not see her process: %s", r)
		}
		if r := runOn(t, c.Node("n2").Socket, nil, bob, "ps"); strings.Contains(r.stdout, id) {
			t.Fatalf("bob sees alice's process: %s", r)
		}
		r := runOn(t, c.Node("n2").Socket, nil, bob, "kill", id)
		if r.code == 0 || !strings.Contains(r.stderr, "belongs to another user") {
			t.Fatalf("bob killing alice's process: %s", r)
		}
		r = runOn(t, n1, nil, bob, "ps", "--json", id)
		if r.code == 0 {
			t.Fatalf("bob reading alice's process in detail: %s", r)
		}
		if r := runOn(t, c.Node("n2").Socket, nil, alice, "kill", id); r.code != 0 {
			t.Fatalf("alice killing her own process from n2: %s", r)
		}
	})

	t.Run("bad input", func(t *testing.T) {
		gone, _ := os.MkdirTemp("", "mosaic-gone-")
		os.Remove(gone)
		cases := []struct {
			args []string
			dir  string
			code int
			want string
		}{
			{[]string{"run"}, "", 125, "no program given"},
			{[]string{"run", "--"}, "", 125, "no program given"},
			{[]string{"run", "--on"}, "", 125, "flag needs an argument: --on"},
			{[]string{"run", "--bogus", "true"}, "", 125, "unknown flag: --bogus"},
			{[]string{"restore", "--bogus", "x"}, "", 125, "unknown flag: --bogus"},
			{[]string{"run", "--on", "n9", "--", "true"}, "", 125, `node "n9" is not known`},
			{[]string{"run", "--on", "n2", "--here", "--", "true"}, "", 125, "contradict"},
			{[]string{"run", "--on", "n2", "--", "no-such-program-anywhere"}, "", 127, "no-such-program-anywhere: command not found (on node n2)"},
			{[]string{"run", "--", "/no/such/program"}, "", 127, "no node could run /no/such/program"},
			{[]string{"kill", "n1.999999"}, "", 1, "no process n1.999999"},
			{[]string{"kill", "nonsense"}, "", 1, "is not a process ID"},
			{[]string{"kill", "-NOPE", "n1.1"}, "", 1, "is not a signal"},
			{[]string{"ps", "n2.424242"}, "", 1, "no process n2.424242"},
		}
		for _, tc := range cases {
			r := runOn(t, n1, nil, nil, tc.args...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("mosaic %v: want code %d and %q: %s", tc.args, tc.code, tc.want, r)
			}
		}
		// A working directory that no node has.
		cmd := exec.Command("sh", "-c", fmt.Sprintf("mkdir %s && cd %s && rmdir %s && %s --socket %s run -- true", gone, gone, gone, bin, n1))
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 126 || !strings.Contains(string(out), "does not exist here") {
			t.Errorf("missing working directory: %v: %s", err, out)
		}
	})
}

// TestRunTerminal drives programs on a terminal: a real pseudo-terminal
// plays the user's, with an interactive bash for job control.
func TestRunTerminal(t *testing.T) {
	c := startPublicCluster(t, 2)
	n1 := c.Node("n1").Socket

	t.Run("the program gets a terminal like the user's, and follows resizes", func(t *testing.T) {
		term := newTerm(t, 30, 90, bin, "--socket", n1, "run", "--on", "n2", "--", "sh", "-c", `stty size; tty; stty -a | grep -o "icanon"; read x; stty size`)
		term.expect("30 90")
		term.expect("/dev/pts/")
		term.expect("icanon")
		term.resize(40, 100)
		time.Sleep(300 * time.Millisecond)
		term.send("\r")
		term.expect("40 100")
		if code := term.wait(); code != 0 {
			t.Fatalf("exit %d", code)
		}
	})

	t.Run("on a terminal, it moves and keeps its terminal", func(t *testing.T) {
		// (This hung until 2026-12-07: the terminal's master side was
		// made blocking, and the move waited to drain it.)
		prog := "import os, time\nfor i in range(30):\n    print('line', i, os.get_terminal_size().lines, flush=True)\n    time.sleep(0.05)\nx = input('name? ')\nprint('got', x)"
		term := newTerm(t, 24, 80, bin, "--socket", n1, "run", "-v", "--on", "n2", "--", "python3", "-c", prog)
		term.expect("line 3 24")
		id := regexp.MustCompile(`n1\.[0-9]+`).FindString(term.output())
		for _, to := range []string{"home", "n2"} {
			if _, err := migrate(t, n1, nil, id, to); err != nil {
				t.Fatalf("moving a process on a terminal to %s: %v", to, err)
			}
		}
		term.expect("line 29 24")
		term.expect("name? ")
		term.send("mosaic\r")
		term.expect("got mosaic")
		if code := term.wait(); code != 0 {
			t.Fatalf("exit %d", code)
		}
	})

	t.Run("an interactive shell moves with its jobs, Ctrl-C still stops the one in front", func(t *testing.T) {
		// bash with job control runs each job in a process group of its
		// own and gives the terminal to the one in the foreground: both
		// move with it.
		term := newTerm(t, 24, 80, bin, "--socket", n1, "run", "-v", "--on", "n2", "--", "bash", "--norc", "--noprofile", "-i")
		term.expect("runs on n2")
		id := regexp.MustCompile(`n1\.[0-9]+`).FindString(term.output())
		term.send("PS1='$ '\r")
		term.send("sleep 200 &\r")
		term.send("sleep 100\r")
		eventually(t, 5*time.Second, "bash with its two jobs", func() (bool, string) {
			p := psOne(t, n1, id)
			return len(p.Children) == 2, jsonString(p)
		})
		for _, to := range []string{"home", "n2"} {
			if _, err := migrate(t, n1, nil, id, to); err != nil {
				t.Fatalf("moving an interactive shell with its jobs to %s: %v", to, err)
			}
		}
		if p := psOne(t, n1, id); p.Node != "n2" || len(p.Children) != 2 {
			t.Fatalf("after the moves: %s", jsonString(p))
		}
		term.send("\x03") // Ctrl-C: to the job in the foreground, which bash ignores
		term.send("echo fg=$?\r")
		term.expect("fg=130")
		term.send("kill %1; wait %1; echo bg=$?\r")
		term.expect("bg=143")
		term.send("exit 3\r")
		if code := term.wait(); code != 3 {
			t.Fatalf("bash exited %d, want 3", code)
		}
	})

	t.Run("interactive python, line editing and Ctrl-C", func(t *testing.T) {
		if _, err := exec.LookPath("python3"); err != nil {
			t.Skip("needs python3")
		}
		term := newTerm(t, 24, 80, bin, "--socket", n1, "run", "--on", "n2", "--", "python3", "-q", "-i")
		term.expect(">>> ")
		term.send("6*7\r")
		term.expect("42")
		// Line editing: type a typo, erase it, finish the line.
		term.send("1+2x\x7f\r")
		term.expect("3")
		term.send("import time; time.sleep(30)\r")
		time.Sleep(500 * time.Millisecond)
		term.send("\x03") // Ctrl-C
		term.expect("KeyboardInterrupt")
		term.send("exit(5)\r")
		if code := term.wait(); code != 5 {
			t.Fatalf("python exited %d, want 5", code)
		}
	})

	t.Run("Ctrl-Z stops it, fg continues it", func(t *testing.T) {
		term := newTerm(t, 24, 80, "bash", "--norc", "--noprofile", "-i")
		term.send("PS1='$ '\r")
		term.send(fmt.Sprintf("%s --socket %s run -v --on n2 -- sleep 100\r", bin, n1))
		term.expect("runs on n2")
		time.Sleep(300 * time.Millisecond)
		id := regexp.MustCompile(`n1\.[0-9]+`).FindString(term.output())
		term.send("\x1a") // Ctrl-Z
		term.expect("Stopped")
		eventually(t, 5*time.Second, "stopped on n2", func() (bool, string) {
			p := psOne(t, n1, id)
			return p.State == "stopped" && p.ProcState == "T", jsonString(p)
		})
		term.send("fg\r")
		eventually(t, 5*time.Second, "running again", func() (bool, string) {
			p := psOne(t, n1, id)
			return p.State == "running" && p.ProcState == "S", jsonString(p)
		})
		term.send("\x03") // Ctrl-C
		eventually(t, 5*time.Second, "the program is gone", func() (bool, string) {
			var procs []api.ProcInfo
			err := api.Call(context.Background(), n1, api.OpPs, api.PsArgs{}, &procs)
			return err == nil && len(procs) == 0, jsonString(procs)
		})
		time.Sleep(200 * time.Millisecond) // the client restores the terminal and exits
		term.send("echo status=$?\r")
		term.expect("status=130")
		term.send("exit\r")
		term.wait()
	})
}

// restartAndWait restarts a node's daemon and waits until every node sees
// every node alive.
func restartAndWait(t *testing.T, c *up.Cluster, name string) {
	t.Helper()
	if err := c.Restart(name); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitAlive(context.Background(), 30*time.Second); err != nil {
		t.Fatal(err)
	}
}

func psOne(t *testing.T, sock, id string) api.ProcInfo {
	t.Helper()
	var procs []api.ProcInfo
	if err := api.Call(context.Background(), sock, api.OpPs, api.PsArgs{ID: id}, &procs); err != nil || len(procs) != 1 {
		t.Fatalf("ps %s: %v %v", id, procs, err)
	}
	return procs[0]
}

// term is a program running on a pseudo-terminal that the test types into.
type term struct {
	t    *testing.T
	m    *os.File
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	seen int
	done chan struct{}
}

func newTerm(t *testing.T, rows, cols uint16, argv ...string) *term {
	t.Helper()
	m, s, err := pty.Open(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	pty.SetSize(int(m.Fd()), rows, cols)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = s, s, s
	cmd.Env = append(os.Environ(), "TERM=xterm")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	tm := &term{t: t, m: m, cmd: cmd, done: make(chan struct{})}
	go func() {
		defer close(tm.done)
		r := bufio.NewReader(m)
		buf := make([]byte, 4096)
		for {
			n, err := r.Read(buf)
			tm.mu.Lock()
			tm.out.Write(buf[:n])
			tm.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		m.Close()
		<-tm.done
	})
	return tm
}

func (tm *term) output() string {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	return tm.out.String()
}

func (tm *term) send(s string) {
	tm.t.Helper()
	if _, err := tm.m.WriteString(s); err != nil {
		tm.t.Fatal(err)
	}
}

// expect waits for want to appear after what earlier expects consumed.
func (tm *term) expect(want string) {
	tm.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		tm.mu.Lock()
		rest := tm.out.String()[tm.seen:]
		if i := strings.Index(rest, want); i >= 0 {
			tm.seen += i + len(want)
			tm.mu.Unlock()
			return
		}
		tm.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
	tm.t.Fatalf("terminal never showed %q; it shows:\n%s", want, tm.output())
}

func (tm *term) resize(rows, cols uint16) {
	pty.SetSize(int(tm.m.Fd()), rows, cols)
	// The kernel signals the terminal's foreground group (the client).
}

func (tm *term) wait() int {
	tm.t.Helper()
	done := make(chan error, 1)
	go func() { done <- tm.cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		return 0
	case <-time.After(30 * time.Second):
		tm.t.Fatalf("program on the terminal did not end; it shows:\n%s", tm.output())
		return -1
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func pidOf(t *testing.T, verbose string) int {
	t.Helper()
	m := regexp.MustCompile(`\(pid ([0-9]+) there\)`).FindStringSubmatch(verbose)
	if m == nil {
		t.Fatalf("no pid in %q", verbose)
	}
	var pid int
	fmt.Sscan(m[1], &pid)
	return pid
}

// alive reports whether a process exists and is not a zombie.
// withArg lists the processes of this machine that have arg among their
// arguments.
func withArg(arg string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		for _, a := range bytes.Split(cmdline, []byte{0}) {
			if string(a) == arg {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return err == nil && !strings.Contains(string(b), ") Z ")
}

// TestRunFailures: what becomes of a process when the node running it, or
// its home, fails.
func TestRunFailures(t *testing.T) {
	c := startPublicCluster(t, 3)
	n1 := c.Node("n1").Socket

	start := func(t *testing.T, sock, node string) (*exec.Cmd, *syncBuffer, string, int) {
		t.Helper()
		cmd := exec.Command(bin, "--socket", sock, "run", "-v", "--on", node, "--", "sleep", "1000")
		var stderr syncBuffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "started", func() (bool, string) {
			return strings.Contains(stderr.String(), "runs on "+node), stderr.String()
		})
		return cmd, &stderr, regexp.MustCompile(`n[0-9]+\.[0-9]+`).FindString(stderr.String()), pidOf(t, stderr.String())
	}
	exitOf := func(t *testing.T, cmd *exec.Cmd) int {
		t.Helper()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				return ee.ExitCode()
			}
			return 0
		case <-time.After(60 * time.Second):
			cmd.Process.Kill()
			t.Fatal("the client did not end")
			return -1
		}
	}

	t.Run("the running node dies: the process is lost, the client says so", func(t *testing.T) {
		cmd, stderr, id, pid := start(t, n1, "n3")
		if err := c.Kill("n3"); err != nil {
			t.Fatal(err)
		}
		if code := exitOf(t, cmd); code != api.StatusLost || !strings.Contains(stderr.String(), "is lost: node n3, where it ran") {
			t.Fatalf("client ended %d: %s", code, stderr.String())
		}
		if p := psOne(t, n1, id); p.State != "lost" {
			t.Fatalf("ps shows %s as %s, want lost", id, p.State)
		}
		// The program died with its node's daemon, not orphaned.
		eventually(t, 5*time.Second, "the program on n3 is gone", func() (bool, string) {
			return !alive(pid), fmt.Sprint("pid ", pid, " runs")
		})
		restartAndWait(t, c, "n3")
	})

	t.Run("the home dies: the process dies with it, no orphan", func(t *testing.T) {
		cmd, stderr, _, pid := start(t, c.Node("n2").Socket, "n3")
		if err := c.Kill("n2"); err != nil {
			t.Fatal(err)
		}
		if code := exitOf(t, cmd); code != api.StatusLost || !strings.Contains(stderr.String(), "lost the connection to the node's daemon") {
			t.Fatalf("client ended %d: %s", code, stderr.String())
		}
		eventually(t, 10*time.Second, "the program on n3 is gone", func() (bool, string) {
			return !alive(pid), fmt.Sprint("pid ", pid, " runs")
		})
		restartAndWait(t, c, "n2")
	})

	t.Run("a partition: each side gives up on the other", func(t *testing.T) {
		cmd, stderr, _, pid := start(t, n1, "n3")
		if err := c.Host("n3").SetLinkUp(false); err != nil {
			t.Fatal(err)
		}
		defer c.Host("n3").SetLinkUp(true)
		// n1 declares n3 dead: the process is lost for its user...
		if code := exitOf(t, cmd); code != api.StatusLost || !strings.Contains(stderr.String(), "is lost") {
			t.Fatalf("client ended %d: %s", code, stderr.String())
		}
		// ...and n3, which declares its home dead, kills it.
		eventually(t, 30*time.Second, "the program on n3 is gone", func() (bool, string) {
			return !alive(pid), fmt.Sprint("pid ", pid, " runs")
		})
		c.Host("n3").SetLinkUp(true)
		if err := c.WaitAlive(context.Background(), 60*time.Second); err != nil {
			t.Fatal(err)
		}
	})
}

// TestManyRuns starts 200 programs at once from every node of a 4-node
// cluster and checks every output and status, then that the daemons kept
// no descriptor or process of theirs.
func TestManyRuns(t *testing.T) {
	c := startPublicCluster(t, 4)
	// What a daemon keeps between runs is made by the first ones: a gRPC
	// connection to each peer (made on first use: ps asks every node), a
	// spare process connection each way between every two nodes, a spare
	// namespace. Make them all, wait until the count holds still, and
	// count from there.
	for _, n := range c.Nodes {
		if r := runOn(t, n.Socket, nil, nil, "ps"); r.code != 0 {
			t.Fatalf("ps on %s: %s", n.Name, r)
		}
		for _, m := range c.Nodes {
			if r := runOn(t, n.Socket, nil, nil, "run", "--on", m.Name, "--", "true"); r.code != 0 {
				t.Fatalf("run from %s on %s: %s", n.Name, m.Name, r)
			}
		}
	}
	fdsBefore, connsBefore := map[string]int{}, map[string]int{}
	eventually(t, 10*time.Second, "descriptors settled", func() (bool, string) {
		settled := true
		for _, n := range c.Nodes {
			now, conns := daemonFDs(t, n)
			settled = settled && now == fdsBefore[n.Name] && conns == connsBefore[n.Name]
			fdsBefore[n.Name], connsBefore[n.Name] = now, conns
		}
		time.Sleep(200 * time.Millisecond)
		return settled, fmt.Sprint(fdsBefore, connsBefore)
	})
	const runs = 200
	type outcome struct {
		i    int
		r    runResult
		node string
	}
	results := make(chan outcome, runs)
	var wg sync.WaitGroup
	for i := range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			home := c.Nodes[i%len(c.Nodes)]
			r := runOn(t, home.Socket, strings.NewReader(fmt.Sprintf("input-%d\n", i)), nil,
				"run", "-v", "--", "sh", "-c", `read line; echo "$line from $1"; echo "err $1" >&2; exit $(($1 % 7))`, "sh", fmt.Sprint(i))
			node := ""
			if m := regexp.MustCompile(`runs on (n[0-9]+)`).FindStringSubmatch(r.stderr); m != nil {
				node = m[1]
			}
			results <- outcome{i, r, node}
		}()
	}
	wg.Wait()
	close(results)
	where := map[string]int{}
	for o := range results {
		want := fmt.Sprintf("input-%d from %d\n", o.i, o.i)
		if o.r.stdout != want || o.r.code != o.i%7 || !strings.Contains(o.r.stderr, fmt.Sprintf("err %d\n", o.i)) {
			t.Errorf("run %d: want %q and exit %d: %s", o.i, want, o.i%7, o.r)
		}
		where[o.node]++
	}
	t.Logf("200 runs went to %v", where)
	if len(where) < 2 {
		t.Errorf("200 runs all went to one node: %v", where)
	}
	// Nothing left behind: no process in any node's group, no process in
	// ps, the daemons' descriptors back to where they were.
	clusterID := readClusterID(t, c)
	eventually(t, 10*time.Second, "no process left", func() (bool, string) {
		for _, n := range c.Nodes {
			b, _ := os.ReadFile(filepath.Join("/sys/fs/cgroup/cpu/mosaic", clusterID, n.Name, "cgroup.procs"))
			for _, f := range strings.Fields(string(b)) {
				// The daemon, and the init of the namespace it keeps
				// ready for the next process, are not left behind.
				if pid, _ := strconv.Atoi(f); pid != n.PID() && !spawn.IsInit(pid) {
					return false, n.Name + " still runs pid " + f
				}
			}
		}
		var procs []api.ProcInfo
		api.Call(context.Background(), c.Nodes[0].Socket, api.OpPs, api.PsArgs{}, &procs)
		return len(procs) == 0, jsonString(procs)
	})
	eventually(t, 10*time.Second, "descriptors released", func() (bool, string) {
		for _, n := range c.Nodes {
			// The spare namespace is made again after use: back to where
			// it was once it is. Process connections that ended cleanly
			// are kept for the next processes, a few to each other node
			// (the daemon's spares: maxIdle), at both ends.
			now, conns := daemonFDs(t, n)
			if now > fdsBefore[n.Name] {
				return false, fmt.Sprintf("%s has %d descriptors open besides its peer connections, %d before", n.Name, now, fdsBefore[n.Name])
			}
			if most := connsBefore[n.Name] + 2*keptConns*(len(c.Nodes)-1); conns > most {
				return false, fmt.Sprintf("%s has %d peer connections open, more than %d", n.Name, conns, most)
			}
		}
		return true, ""
	})
}

// keptConns is how many process connections a daemon keeps for reuse to
// each other node (internal/daemon's spares.maxIdle).
const keptConns = 8

// rssOf is a process's resident memory in bytes.
func rssOf(t *testing.T, pid int) uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/statm", pid))
	if err != nil {
		t.Fatal(err)
	}
	var size, resident uint64
	fmt.Sscan(string(b), &size, &resident)
	return resident * uint64(os.Getpagesize())
}

// daemonFDs counts a daemon's open descriptors but its TCP connections,
// and apart its connections on its peer port (those it dialed to other
// nodes' and those they dialed to its own). The others are its store's
// (etcd keeps a varying number of HTTP connections between members, as its
// own traffic needs).
func daemonFDs(t *testing.T, n *up.Node) (fds, peerConns int) {
	t.Helper()
	_, port, err := net.SplitHostPort(n.Addr)
	if err != nil {
		t.Fatal(err)
	}
	peerPort, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		t.Fatal(err)
	}
	others := map[string]bool{} // socket inodes
	peers := map[string]bool{}
	for _, table := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", n.PID(), table))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 10 {
				continue
			}
			local, remote := hexPort(f[1]), hexPort(f[2])
			switch {
			case local != peerPort && remote != peerPort:
				others[f[9]] = true
			case remote != 0: // not the listener
				peers[f[9]] = true
			}
		}
	}
	dir := fmt.Sprintf("/proc/%d/fd", n.PID())
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		link, _ := os.Readlink(filepath.Join(dir, e.Name()))
		inode, _ := strings.CutPrefix(link, "socket:[")
		inode = strings.TrimSuffix(inode, "]")
		switch {
		case others[inode]:
		case peers[inode]:
			peerConns++
		default:
			fds++
		}
	}
	return fds, peerConns
}

// hexPort is the port of an address as /proc/net/tcp writes it
// ("0100007F:1E14").
func hexPort(addr string) uint64 {
	_, h, _ := strings.Cut(addr, ":")
	p, _ := strconv.ParseUint(h, 16, 16)
	return p
}

// The relay benchmark works end to end (its figures are the issue's): a
// line of figures for each path, the local pipe first.
func TestBenchRelay(t *testing.T) {
	out, err := exec.Command(daemonBin, "bench", "relay", "--bytes", "4MiB", "--runs", "2").CombinedOutput()
	if err != nil {
		t.Fatalf("mosaicd bench relay: %v\n%s", err, out)
	}
	for _, path := range []string{"local pipe", "mosaic run --here", "mosaic run --on n2"} {
		if !regexp.MustCompile(regexp.QuoteMeta(path) + `.* \d+ +\d+ +\d+% of the local pipe`).Match(out) {
			t.Fatalf("no figures for %s:\n%s", path, out)
		}
	}
}
