//go:build cluster

package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/api"
)

type userCred struct{ uid, gid uint32 }

func (u *userCred) attr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: u.uid, Gid: u.gid}}
}

var nobody = &userCred{65534, 65534}

// publicDir is a temporary directory other users may enter.
func publicDir(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	for p := d; p != "/" && p != os.TempDir(); p = filepath.Dir(p) {
		os.Chmod(p, 0o755)
	}
	return d
}

func TestNoDaemon(t *testing.T) {
	r := mosaic(t, "nodes")
	expectFail(t, r, "no mosaic daemon is running at /nonexistent/mosaic.sock", "mosaic node --dir", "MOSAIC_SOCKET")
	r = mosaic(t, "--socket", filepath.Join(t.TempDir(), "x.sock"), "token", "create")
	expectFail(t, r, "no mosaic daemon is running")
}

// mosaic installed without mosaicctl still runs programs itself, and for
// every other command says what is missing.
func TestMosaicWithoutMosaicctl(t *testing.T) {
	dir := t.TempDir()
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	alone := filepath.Join(dir, "mosaic")
	if err := os.WriteFile(alone, b, 0o755); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) result {
		cmd := exec.Command(alone, args...)
		cmd.Env = []string{"PATH=" + dir + ":/usr/bin:/bin", "MOSAIC_SOCKET=/nonexistent/mosaic.sock"}
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		cmd.Run()
		return result{out: stdout.String(), err: stderr.String(), code: cmd.ProcessState.ExitCode()}
	}
	r := run("ps")
	expectFail(t, r, "cannot find mosaicctl", "install mosaic, mosaicctl and mosaicd together")
	if r = run("run", "--", "true"); r.code != api.StatusMosaicError || !strings.Contains(r.err, "no mosaic daemon is running") {
		t.Fatalf("mosaic run without mosaicctl: want %d and no daemon:\n%s", api.StatusMosaicError, r)
	}
}

// Ctrl-C while the daemon works says what it means, not "context
// canceled", and exits as an interrupted command does.
func TestInterruptedWhileTheDaemonWorks(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "slow.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // a daemon that takes the request and never answers
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	cmd := exec.Command(bin, "--socket", sock, "migrate", "n1.1", "n2")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	interruptAfter(t, cmd, 300*time.Millisecond)
	if code := cmd.ProcessState.ExitCode(); code != 130 || !strings.Contains(stderr.String(), "interrupted") {
		t.Fatalf("exit %d, stderr %q: want 130 and that it was interrupted", code, stderr.String())
	}
}

func TestBadDataDirs(t *testing.T) {
	t.Run("missing", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "nope")
		r := mosaic(t, "node", "--dir", dir)
		expectFail(t, r, "does not exist", "mosaic init --dir "+dir)
		if _, err := os.Stat(dir); err == nil {
			t.Fatal("mosaic node created the missing directory")
		}
	})
	t.Run("empty", func(t *testing.T) {
		r := mosaic(t, "node", "--dir", t.TempDir())
		expectFail(t, r, "holds no mosaic node")
	})
	t.Run("unwritable", func(t *testing.T) {
		parent := publicDir(t) // root's, mode 0755: nobody cannot create in it
		dir := filepath.Join(parent, "d")
		r := mosaicAs(t, nobody, "init", "--dir", dir, "--listen", freeLoopback(t))
		expectFail(t, r, dir, "permission denied")
		if _, err := os.Stat(dir); err == nil {
			t.Fatal("a failed init left its directory behind")
		}
	})
	t.Run("not empty", func(t *testing.T) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "precious"), []byte("x"), 0o644)
		r := mosaic(t, "init", "--dir", dir, "--listen", freeLoopback(t))
		expectFail(t, r, "not empty")
		if _, err := os.Stat(filepath.Join(dir, "precious")); err != nil {
			t.Fatal("init touched a file it did not make")
		}
	})
	t.Run("corrupt config", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "n")
		if r := mosaic(t, "init", "--dir", dir, "--name", "a1", "--listen", freeLoopback(t)); r.code != 0 {
			t.Fatal(r)
		}
		os.WriteFile(filepath.Join(dir, "node.json"), []byte("{\"version\": 1, \"name\": "), 0o644)
		r := mosaic(t, "node", "--dir", dir, "--socket", filepath.Join(dir, "s.sock"))
		expectFail(t, r, "node.json is corrupt", "restore it from a backup")
	})
	t.Run("corrupt certificate", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "n")
		if r := mosaic(t, "init", "--dir", dir, "--name", "a1", "--listen", freeLoopback(t)); r.code != 0 {
			t.Fatal(r)
		}
		os.WriteFile(filepath.Join(dir, "node.crt"), []byte("garbage"), 0o644)
		r := mosaic(t, "node", "--dir", dir, "--socket", filepath.Join(dir, "s.sock"))
		expectFail(t, r, "node identity", "unusable")
	})
}

func TestBadArguments(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "n")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"init", "--dir", dir, "--name", "Bad_Name", "--listen", "127.0.0.1:7700"}, "invalid node name"},
		{[]string{"init", "--dir", dir, "--name", "a", "--listen", "localhost"}, "invalid address"},
		{[]string{"init", "--dir", dir, "--name", "a", "--listen", "0.0.0.0:7700"}, "other nodes must be able to reach it"},
		{[]string{"init", "--dir", dir, "--name", "a", "--listen", "127.0.0.1:7700", "--store-size", "2"}, "use 1, 3 or 5"},
		{[]string{"node", "--dir", dir, "--token", "mt1_x", "--name", "a"}, "--token needs --join"},
		{[]string{"up", "--nodes", "0"}, "between 1 and 200"},
		{[]string{"up", "--nodes", "2", "--capacity", "1,1,1"}, "3 values for 2 nodes"},
		{[]string{"up", "--nodes", "2", "--memory", "lots"}, "is not a size"},
		{[]string{"token", "create", "--ttl", "1000h", "--socket", "/nonexistent"}, "no mosaic daemon"},
	} {
		r := mosaic(t, tc.args...)
		expectFail(t, r, tc.want)
		if _, err := os.Stat(dir); err == nil {
			t.Fatalf("%v left %s behind", tc.args, dir)
		}
	}
}

func TestPortInUse(t *testing.T) {
	addr := freeLoopback(t)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "n")
	r := mosaic(t, "init", "--dir", dir, "--name", "a1", "--listen", addr)
	expectFail(t, r, "cannot listen on "+addr, "in use", "--listen")
	if _, err := os.Stat(dir); err == nil {
		t.Fatal("a failed init left its directory behind")
	}
	ln.Close()

	// A node whose port was taken after it was created.
	if r := mosaic(t, "init", "--dir", dir, "--name", "a1", "--listen", addr); r.code != 0 {
		t.Fatal(r)
	}
	ln, err = net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	r = mosaic(t, "node", "--dir", dir, "--socket", filepath.Join(dir, "s.sock"))
	expectFail(t, r, "cannot listen on "+addr, "in use")
}

// TestSingleNode runs one daemon by hand: init, node, token, leave; a
// second daemon on the same directory is refused; users other than root
// may look but not administer.
// withSignals is Python that sets two signals' actions (1: ignored, 0:
// default) by the raw system call (glibc refuses 32 and 33, its own), then
// executes its arguments.
func withSignals(a syscall.Signal, aIgnored int, b syscall.Signal, bIgnored int) string {
	return fmt.Sprintf(`import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
for sig, handler in ((%d, %d), (%d, %d)):
    assert libc.syscall(13, sig, struct.pack("QQQQ", handler, 0, 0, 0), None, 8) == 0  # rt_sigaction
os.execv(sys.argv[1], sys.argv[1:])`, a, aIgnored, b, bIgnored)
}

func TestSingleNode(t *testing.T) {
	dir := filepath.Join(publicDir(t), "n")
	addr := freeLoopback(t)
	if r := mosaic(t, "init", "--dir", dir, "--name", "solo", "--listen", addr); r.code != 0 || !strings.Contains(r.out, "created cluster") {
		t.Fatal(r)
	}
	for f, mode := range map[string]os.FileMode{"ca.key": 0o600, "node.key": 0o600} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil || st.Mode().Perm() != mode {
			t.Fatalf("%s: %v %v, want mode %v", f, st.Mode(), err, mode)
		}
	}
	sock := filepath.Join(dir, "mosaic.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Started as under nohup, and with signal 32 ignored (as GNU make
	// leaves it; Go leaves it so): the daemon survives hangups, and its
	// programs inherit neither (checked below).
	daemon := exec.CommandContext(ctx, "python3", "-c", withSignals(syscall.SIGHUP, 1, 32, 1), bin, "node", "--dir", dir, "--socket", sock)
	daemon.Cancel = func() error { return daemon.Process.Signal(syscall.SIGTERM) }
	logf, _ := os.Create(filepath.Join(t.TempDir(), "log"))
	daemon.Stdout, daemon.Stderr = logf, logf
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- daemon.Wait() }()
	eventually(t, 20*time.Second, "store up", func() (bool, string) {
		var st api.Status
		err := api.Call(context.Background(), sock, api.OpStatus, nil, &st)
		return err == nil && st.StoreOK, jsonString(st)
	})

	r := mosaic(t, "node", "--dir", dir, "--socket", filepath.Join(dir, "other.sock"))
	expectFail(t, r, "already running from "+dir)

	daemon.Process.Signal(syscall.SIGHUP)
	// A client with both at their default: so they are in its program.
	out, err := exec.Command("python3", "-c", withSignals(syscall.SIGHUP, 0, 32, 0), bin, "--socket", sock, "run", "--",
		"grep", "SigIgn", "/proc/self/status").CombinedOutput()
	hex, _ := strings.CutPrefix(strings.TrimSpace(string(out)), "SigIgn:\t")
	if mask, perr := strconv.ParseUint(hex, 16, 64); err != nil || perr != nil || mask&(1<<(syscall.SIGHUP-1)|1<<31) != 0 {
		t.Fatalf("a program of a daemon started with SIGHUP and 32 ignored: %q (%v), want both at their default", out, err)
	}

	// Any user may look.
	r = mosaicAs(t, nobody, "--socket", sock, "nodes", "--json")
	if r.code != 0 || !strings.Contains(r.out, `"name": "solo"`) {
		t.Fatal(r)
	}
	// Only root administers.
	r = mosaicAs(t, nobody, "--socket", sock, "token", "create")
	expectFail(t, r, "permission denied", "only root")
	r = mosaicAs(t, nobody, "--socket", sock, "node", "leave")
	expectFail(t, r, "permission denied")

	r = mosaic(t, "--socket", sock, "token", "create", "--ttl", "10m", "--uses", "2", "--note", "for a test")
	if r.code != 0 || !strings.Contains(r.out, "mosaic node --dir") || !strings.Contains(r.out, "--join "+addr) {
		t.Fatal(r)
	}
	r = mosaic(t, "--socket", sock, "token", "revoke", "ffffffff")
	expectFail(t, r, "no join token with id")

	r = mosaic(t, "--socket", sock, "node", "leave")
	if r.code != 0 {
		t.Fatal(r)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("daemon exited with %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("daemon did not exit after leave")
	}
	if _, err := os.Stat(sock); err == nil {
		t.Fatal("socket left behind")
	}
}

// TestUpTwice starts `mosaic up`, refuses a second one on the same
// directory, stops the first, and starts the same cluster again from its
// directory (a restart needs a quorum of the three store members at once).
func TestUpTwice(t *testing.T) {
	dir := t.TempDir()
	for round := range 2 {
		up := exec.Command(bin, "up", "--nodes", "3", "--dir", dir)
		logf, _ := os.Create(filepath.Join(t.TempDir(), "up.log"))
		up.Stdout, up.Stderr = logf, logf
		if err := up.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- up.Wait() }()
		eventually(t, 60*time.Second, fmt.Sprintf("cluster up (round %d)", round+1), func() (bool, string) {
			b, _ := os.ReadFile(logf.Name())
			return strings.Contains(string(b), "Ctrl-C stops the cluster"), string(b)
		})
		if round == 0 {
			r := mosaic(t, "up", "--nodes", "3", "--dir", dir)
			expectFail(t, r, "already running from "+dir)
		}
		up.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Fatalf("mosaic up exited with %v", err)
			}
		case <-time.After(40 * time.Second):
			t.Fatal("mosaic up did not stop")
		}
		b, _ := os.ReadFile(logf.Name())
		if !strings.Contains(string(b), "stopped") {
			t.Fatalf("mosaic up output:\n%s", b)
		}
		out, _ := exec.Command("pgrep", "-f", "mosaic node --dir "+dir).Output()
		if len(strings.TrimSpace(string(out))) > 0 {
			t.Fatalf("daemons left running: %s", out)
		}
	}
	r := mosaic(t, "up", "--nodes", "2", "--dir", dir)
	expectFail(t, r, "holds a cluster of 3 nodes")
}
