package ckpt

import (
	"bufio"
	"bytes"
	"context"
	"encoding/gob"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mosaic-cluster/mosaic/internal/bufpool"
	"github.com/mosaic-cluster/mosaic/internal/ioprio"
	"github.com/mosaic-cluster/mosaic/internal/spawn"
)

// programs are the C test programs of testdata/, built once.
var programs = map[string]string{}

func TestMain(m *testing.M) {
	// Descriptors this test binary inherited without close-on-exec (from
	// whatever started it) would leak into the programs and pin them.
	if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
		for _, e := range ents {
			if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
				unix.CloseOnExec(fd)
			}
		}
	}
	if os.Geteuid() == 0 {
		dir, err := os.MkdirTemp("", "mosaic-ckpt-test-")
		if err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		os.Chmod(dir, 0o755)
		srcs, _ := filepath.Glob("testdata/*.c")
		for _, src := range srcs {
			name := strings.TrimSuffix(filepath.Base(src), ".c")
			for _, variant := range []struct{ suffix, flag string }{{"", ""}, {"-static", "-static"}} {
				out := filepath.Join(dir, name+variant.suffix)
				args := []string{"-O1", "-o", out, src, "-lpthread"}
				if variant.flag != "" {
					args = append([]string{variant.flag}, args...)
				}
				if b, err := exec.Command("gcc", args...).CombinedOutput(); err != nil {
					fmt.Printf("build %s: %v\n%s", src, err, b)
					os.Exit(1)
				}
				programs[name+variant.suffix] = out
			}
		}
		// A Go program, built by the toolchain running these tests.
		goprog := filepath.Join(dir, "goprog")
		if b, err := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", goprog, "./testdata/goprog").CombinedOutput(); err != nil {
			fmt.Printf("build testdata/goprog: %v\n%s", err, b)
			os.Exit(1)
		}
		programs["goprog"] = goprog
		code := m.Run()
		os.RemoveAll(dir)
		os.Exit(code)
	}
	os.Exit(m.Run())
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: traces other processes")
	}
}

// reference runs a program undisturbed and returns its output.
func reference(t *testing.T, argv ...string) string {
	t.Helper()
	out, err := exec.Command(argv[0], argv[1:]...).Output()
	if err != nil {
		t.Fatalf("%v: %v", argv, err)
	}
	return string(out)
}

// move describes one checkpoint-and-restore of a test program.
type move struct {
	argv   []string
	before int          // lines to read from the original before dumping it
	stdin  *os.File     // the program's standard input; nil: /dev/null
	after  func(*Image) // runs once the copy is restored (feed it input)
	// pools, if set, are the buffers of the checkpoint and of the
	// restore, which then goes into a stub prepared ahead (as a node
	// does); else the restore is RestoreFrom's.
	pools *[2]*bufpool.Pool
	// layout, with pools, gives the layout the prepared stub makes
	// ahead (Premap) before the checkpoint; check, if set, looks at the
	// restored process before it runs.
	layout func(t *testing.T, pid int) []byte
	check  func(t *testing.T, s *Stub, img *Image)
	// device, with pools: the stub gets /dev/userfaultfd as its fd 3, as
	// a node's stubs do (RestoreOptions.Userfaultfd).
	device bool
	// dumping, if set, sees the original before its checkpoint (after
	// m.before lines), and restored the copy before it runs.
	dumping, restored func(t *testing.T, pid int)
	// done, if set, sees the restore's result before the copy runs.
	done func(t *testing.T, r *Restored)
}

// run starts m.argv, lets it print m.before lines, checkpoints it into a
// pipe while restoring it from the other end into a fresh process writing
// to the same output, kills the original once the copy is ready, lets the
// copy go, and returns everything printed and the copy's exit.
func (m move) run(t *testing.T) (string, syscall.WaitStatus, *Image) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	stdin := m.stdin
	if stdin == nil {
		devnull, _ := os.Open(os.DevNull)
		defer devnull.Close()
		stdin = devnull
	}
	orig, err := os.StartProcess(m.argv[0], m.argv, &os.ProcAttr{Files: []*os.File{stdin, w, os.Stderr}})
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(r)
	var out strings.Builder
	for range m.before {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("read from the original: %v", err)
		}
		out.WriteString(line)
	}
	if m.dumping != nil {
		m.dumping(t, orig.Pid)
	}
	// The stub runs the image's program (what /proc/PID/exe shows), so
	// the header comes first; a prepared stub runs it, before the header.
	var prepared *Stub
	var opt RestoreOptions
	if m.pools != nil {
		files := []*os.File{stdin, w, os.Stderr}
		if m.device {
			dev, err := os.OpenFile("/dev/userfaultfd", os.O_RDWR|syscall.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer dev.Close()
			files, opt.Userfaultfd = append(files, dev), 3
		}
		s, err := os.StartProcess(m.argv[0], m.argv[:1], &os.ProcAttr{
			Files: files,
			Sys:   &syscall.SysProcAttr{Ptrace: true},
		})
		if err != nil {
			t.Fatalf("start the stub: %v", err)
		}
		if prepared, err = PrepareStub(s.Pid); err != nil {
			t.Fatalf("PrepareStub: %v", err)
		}
		if m.layout != nil {
			if err := prepared.Premap(m.layout(t, orig.Pid)); err != nil {
				t.Fatalf("Premap: %v", err)
			}
		}
	}
	// The original is checkpointed into a pipe by a thread of its own
	// (its tracer), while this one restores from the other end of it.
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	decided := make(chan bool, 1) // not waited for if the checkpoint fails
	dumped := make(chan error, 1)
	killed := make(chan struct{})
	go func() {
		defer close(killed)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var frozen *Frozen
		var err error
		if m.pools == nil {
			_, frozen, err = Checkpoint(orig.Pid, pw)
		} else {
			frozen, err = checkpointWith(orig.Pid, pw, m.pools[0])
		}
		pw.Close()
		dumped <- err
		if err != nil {
			orig.Kill()
			orig.Wait()
			return
		}
		if <-decided {
			frozen.Kill()
			orig.Wait()
		} else {
			frozen.Resume()
		}
	}()
	d, derr := NewDecoder(pr)
	if derr != nil {
		cerr := <-dumped
		decided <- false
		t.Fatalf("NewDecoder: %v (the checkpoint: %v)", derr, cerr)
	}
	img := d.Image()
	var restored *Restored
	var stubPid int
	if prepared != nil {
		w.Close()
		stubPid = prepared.Pid()
		opt.Buffers = m.pools[1]
		restored, err = RestoreInto(prepared, d, opt)
		if err == nil && m.check != nil {
			m.check(t, prepared, img)
		}
	} else {
		stub, serr := os.StartProcess(img.Exe, []string{img.Exe}, &os.ProcAttr{
			Files: []*os.File{stdin, w, os.Stderr},
			Sys:   &syscall.SysProcAttr{Ptrace: true},
		})
		if serr != nil {
			t.Fatalf("start the stub: %v", serr)
		}
		w.Close()
		stubPid = stub.Pid
		restored, err = RestoreFrom(stub.Pid, d, RestoreOptions{})
	}
	if err := <-dumped; err != nil {
		t.Fatalf("Checkpoint: %v", err)
	}
	if err != nil {
		decided <- false
		t.Fatalf("RestoreFrom: %v", err)
	}
	decided <- true
	<-killed
	if m.restored != nil {
		m.restored(t, stubPid)
	}
	if m.done != nil {
		m.done(t, restored)
	}
	if err := restored.Go(); err != nil {
		t.Fatal(err)
	}
	if m.after != nil {
		m.after(img)
	}
	rest, _ := io.ReadAll(br)
	out.Write(rest)
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(stubPid, &ws, 0, nil); err != nil {
		t.Fatal(err)
	}
	return out.String(), ws, img
}

// statusField returns a field of /proc/PID/status.
func statusField(pid int, name string) (string, error) {
	st, err := readStatus(pid)
	if err != nil {
		return "", err
	}
	return st.field(name)
}

// checkpointWith is Checkpoint, reading memory through pool's buffers.
func checkpointWith(pid int, w io.Writer, pool *bufpool.Pool) (*Frozen, error) {
	img, f, err := Freeze(pid)
	if err != nil {
		return nil, err
	}
	f.UseBuffers(pool)
	e, err := NewEncoder(w, img)
	if err == nil {
		err = f.ReadMemory(e.Pages)
	}
	if err == nil {
		err = e.Close()
	}
	if err != nil {
		f.Resume()
		return nil, err
	}
	return f, nil
}

// checkMove moves argv once, both dynamically and statically linked, and
// wants exactly the output of an undisturbed run and a clean exit.
func checkMove(t *testing.T, prog string, before int, args ...string) {
	moveCase{prog: prog, before: before, args: func(*testing.T) []string { return args }}.check(t)
}

// moveCase is a test program moved once, both dynamically and statically
// linked, which must write exactly what an undisturbed run writes and
// exit cleanly.
type moveCase struct {
	prog   string
	before int                               // lines it writes before the move
	args   func(*testing.T) []string         // its arguments, made for each variant
	expect string                            // what its undisturbed output must contain: it did what the test is about
	reset  func(t *testing.T, args []string) // between the undisturbed run and the moved one
	image  func(t *testing.T, img *Image)    // looks at the image
	// normalize, if set, is applied to both outputs before they are
	// compared (several processes' lines interleave as they will).
	normalize func(string) string
}

func (c moveCase) check(t *testing.T) {
	needRoot(t)
	for _, variant := range []string{c.prog, c.prog + "-static"} {
		t.Run(variant, func(t *testing.T) {
			args := c.args(t)
			argv := append([]string{programs[variant]}, args...)
			want := reference(t, argv...)
			if !strings.Contains(want, c.expect) {
				t.Fatalf("the program alone printed %q", want)
			}
			if c.reset != nil {
				c.reset(t, args)
			}
			got, ws, img := move{argv: argv, before: c.before}.run(t)
			if c.normalize != nil {
				got, want = c.normalize(got), c.normalize(want)
			}
			if got != want {
				t.Fatalf("output after a move differs:\n got %q\nwant %q", got, want)
			}
			if !ws.Exited() || ws.ExitStatus() != 0 {
				t.Fatalf("restored process ended with %v", ws)
			}
			if c.image != nil {
				c.image(t, img)
			}
			t.Logf("image: %d mappings, %d descriptors", len(img.VMAs), len(img.Files))
		})
	}
}

// fileKinds counts the image's descriptors by kind.
func fileKinds(img *Image) map[string]int {
	kinds := map[string]int{}
	for _, f := range img.Files {
		kinds[f.Kind]++
	}
	return kinds
}

func TestMoveCounter(t *testing.T) { checkMove(t, "counter", 10, "40", "4000000") }

// A process with more private anonymous memory than fillMin, restored
// by a stub that has /dev/userfaultfd (as a node's have), gets it
// written through a userfaultfd (fill.go), all of it: the output of the
// counter, which sums its heap, says whether it came back right.
// Without the device it is written as before (process_vm_writev).
func TestMoveFillsThroughUserfaultfd(t *testing.T) {
	needRoot(t)
	argv := []string{programs["counter"], "30", "40000000"}
	want := reference(t, argv...)
	for _, device := range []bool{true, false} {
		pools := [2]*bufpool.Pool{bufpool.New(64 << 20), bufpool.New(64 << 20)}
		var filled uint64
		got, ws, _ := move{argv: argv, before: 10, pools: &pools, device: device,
			done: func(t *testing.T, r *Restored) { filled = r.Filled() }}.run(t)
		if got != want {
			t.Fatalf("output after a move (device %v) differs:\n got %q\nwant %q", device, got, want)
		}
		if !ws.Exited() || ws.ExitStatus() != 0 {
			t.Fatalf("restored process ended with %v", ws)
		}
		if device && filled < 40000000 {
			t.Fatalf("%d bytes written through the userfaultfd, want the heap's 40 MB at least", filled)
		}
		if !device && filled != 0 {
			t.Fatalf("%d bytes written through a userfaultfd without the device", filled)
		}
	}
}

// A move into a stub prepared ahead, with buffers from pools (as the
// daemon does it) works, and gives every buffer back: the next move takes
// them again and makes none.
func TestMoveReusesBuffers(t *testing.T) {
	needRoot(t)
	argv := []string{programs["counter"], "40", "4000000"}
	want := reference(t, argv...)
	pools := [2]*bufpool.Pool{bufpool.New(64 << 20), bufpool.New(64 << 20)}
	var held [2]int
	for i := range 2 {
		got, ws, _ := move{argv: argv, before: 10, pools: &pools}.run(t)
		if got != want {
			t.Fatalf("output after move %d differs:\n got %q\nwant %q", i+1, got, want)
		}
		if !ws.Exited() || ws.ExitStatus() != 0 {
			t.Fatalf("restored process ended with %v", ws)
		}
		src, dst := pools[0].Held(), pools[1].Held()
		// The checkpoint reads into one to three buffers of a run each,
		// the restore decodes into one to three of a run's record.
		if src == 0 || src > 3*runBytes || src%runBytes != 0 || dst == 0 || dst > 3*(runHead+runBytes) || dst%(runHead+runBytes) != 0 {
			t.Fatalf("after move %d the pools hold %d and %d bytes; want 1 to 3 buffers of %d, and of %d", i+1, src, dst, runBytes, runHead+runBytes)
		}
		if i == 1 && (src != held[0] || dst != held[1]) {
			t.Fatalf("the second move made buffers: the pools held %d and %d, now %d and %d", held[0], held[1], src, dst)
		}
		held = [2]int{src, dst}
	}
}

// Signal handlers, an alternate stack, an interval timer and raised
// signals survive.
func TestMoveSignals(t *testing.T) { checkMove(t, "signals", 12, "40") }

// The extended (AVX) register state survives, even mid-system-call.
func TestMoveAVX(t *testing.T) { checkMove(t, "avx", 10, "30") }

// Regular files come back at their offsets, with O_APPEND kept; also
// into a stub prepared as a node prepares it, whose userfaultfd device
// sits at the descriptor the program's first file had (3).
func TestMoveFiles(t *testing.T) {
	needRoot(t)
	for _, variant := range []string{"files", "files-static"} {
		for _, node := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/node=%v", variant, node), func(t *testing.T) {
				dir := t.TempDir()
				argv := []string{programs[variant], "30", filepath.Join(dir, "log"), filepath.Join(dir, "data")}
				want := reference(t, argv...)
				m := move{argv: argv, before: 11}
				if node {
					m.pools = &[2]*bufpool.Pool{bufpool.New(64 << 20), bufpool.New(64 << 20)}
					m.device = true
				}
				got, ws, _ := m.run(t)
				if got != want {
					t.Fatalf("output after a move differs:\n got %q\nwant %q", got, want)
				}
				if !ws.Exited() || ws.ExitStatus() != 0 {
					t.Fatalf("restored process ended with %v", ws)
				}
			})
		}
	}
}

// A process blocked reading its standard input resumes the read on the
// restored copy's input and sees everything written to it, then its end.
func TestMoveReader(t *testing.T) {
	needRoot(t)
	for _, variant := range []string{"reader", "reader-static"} {
		t.Run(variant, func(t *testing.T) {
			in, feed, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer in.Close()
			lines := []string{"one\n", "two two\n", "three three three\n", "four\n", "five\n"}
			for _, l := range lines[:3] {
				feed.WriteString(l)
			}
			got, ws, _ := move{argv: []string{programs[variant]}, before: 3, stdin: in, after: func(*Image) {
				for _, l := range lines[3:] {
					feed.WriteString(l)
				}
				feed.Close()
			}}.run(t)
			want := "1 4\n2 12\n3 30\n4 35\n5 40\neof 5 40\n"
			if got != want {
				t.Fatalf("output after a move differs:\n got %q\nwant %q", got, want)
			}
			if !ws.Exited() || ws.ExitStatus() != 0 {
				t.Fatalf("restored process ended with %v", ws)
			}
		})
	}
}

// A process that made itself not dumpable (as ssh-agent and gpg-agent do)
// stays so: its user may not trace it or read its memory after a move
// either.
func TestMoveKeepsNotDumpable(t *testing.T) {
	needRoot(t)
	script := `import ctypes, time
libc = ctypes.CDLL(None)
assert libc.prctl(4, 0, 0, 0, 0) == 0  # PR_SET_DUMPABLE
for i in range(20):
    time.sleep(0.02)
    print(i, libc.prctl(3, 0, 0, 0, 0), flush=True)  # PR_GET_DUMPABLE
`
	// Every line after the move says what the restored process is.
	got, ws, img := move{argv: []string{"/usr/bin/python3", "-S", "-c", script}, before: 5}.run(t)
	if !img.NotDumpable || !ws.Exited() || ws.ExitStatus() != 0 || !strings.HasSuffix(got, "19 0\n") {
		t.Fatalf("image not dumpable %v; restored process ended with %v, output %q", img.NotDumpable, ws, got)
	}
}

// A program started under `setarch -R` (no address randomization) keeps
// that personality, its threads too.
func TestMoveKeepsPersonality(t *testing.T) {
	needRoot(t)
	script := `import ctypes, threading, time
libc = ctypes.CDLL(None)
for i in range(20):
    time.sleep(0.02)
    seen = []
    th = threading.Thread(target=lambda: seen.append(libc.personality(0xffffffff)))
    th.start(); th.join()
    print(i, hex(libc.personality(0xffffffff)), hex(seen[0]), flush=True)
`
	got, ws, img := move{argv: []string{"/usr/bin/setarch", "-R", "/usr/bin/python3", "-S", "-c", script}, before: 5}.run(t)
	const addrNoRandomize = 0x0040000
	if img.Personality != addrNoRandomize || !ws.Exited() || ws.ExitStatus() != 0 || !strings.HasSuffix(got, "19 0x40000 0x40000\n") {
		t.Fatalf("image personality %#x; restored process ended with %v, output %q", img.Personality, ws, got)
	}
}

// A process that may not gain privileges by exec (no_new_privs: a sandbox
// of the simplest kind) keeps that after a move: without it, the copy
// could run set-user-ID programs the original could not.
func TestMoveKeepsNoNewPrivs(t *testing.T) {
	needRoot(t)
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal("this test needs python3 (apt-get install python3)")
	}
	script := `import ctypes, time
assert ctypes.CDLL(None).prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
for i in range(20):
    time.sleep(0.02)
    print(i, flush=True)
`
	m := move{argv: []string{python, "-S", "-c", script}, before: 5}
	m.restored = func(t *testing.T, pid int) {
		if v, err := statusField(pid, "NoNewPrivs"); err != nil || v != "1" {
			t.Errorf("the restored process has NoNewPrivs %q (%v), want 1", v, err)
		}
	}
	got, ws, img := m.run(t)
	if !img.NoNewPrivs || !ws.Exited() || ws.ExitStatus() != 0 || !strings.HasSuffix(got, "19\n") {
		t.Fatalf("image no_new_privs %v; restored process ended with %v, output %q", img.NoNewPrivs, ws, got)
	}
}

// An interpreter, with its heap of objects and its shared libraries,
// moves like any other program.
func TestMovePython(t *testing.T) {
	needRoot(t)
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal("this test needs python3 (apt-get install python3)")
	}
	script := `import hashlib, time, sys
h = hashlib.sha256()
d = {}
for i in range(40):
    d[i] = [i] * (i + 1)
    h.update(repr(d[i]).encode())
    time.sleep(0.02)
    print(i, h.hexdigest()[:16], flush=True)
`
	argv := []string{python, "-S", "-c", script}
	want := reference(t, argv...)
	got, ws, img := move{argv: argv, before: 10}.run(t)
	if got != want {
		t.Fatalf("output after a move differs:\n got %q\nwant %q", got, want)
	}
	if !ws.Exited() || ws.ExitStatus() != 0 {
		t.Fatalf("restored process ended with %v", ws)
	}
	t.Logf("image: %d mappings, %d bytes of memory", len(img.VMAs), img.MemoryBytes())
}

// failAfter is a writer that breaks after n bytes, as a link to a node
// that dies mid-transfer.
type failAfter struct{ n int }

func (f *failAfter) Write(b []byte) (int, error) {
	if len(b) > f.n {
		n := f.n
		f.n = 0
		return n, errors.New("the link broke")
	}
	f.n -= len(b)
	return len(b), nil
}

// watched is a test program running on its own, its output read.
type watched struct {
	cmd *exec.Cmd
	out *bufio.Reader
	got strings.Builder
}

// watch starts argv and reads its first lines.
func watch(t *testing.T, argv []string, lines int) *watched {
	t.Helper()
	w := &watched{cmd: exec.Command(argv[0], argv[1:]...)}
	out, err := w.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.out = bufio.NewReader(out)
	for range lines {
		line, _ := w.out.ReadString('\n')
		w.got.WriteString(line)
	}
	return w
}

// finish reads the rest of its output and wants it to end cleanly, having
// written want in all, after what happened to it (for the message).
func (w *watched) finish(t *testing.T, want, after string) {
	t.Helper()
	rest, _ := io.ReadAll(w.out)
	w.got.Write(rest)
	if err := w.cmd.Wait(); err != nil {
		t.Fatalf("the process after %s: %v", after, err)
	}
	if w.got.String() != want {
		t.Fatalf("output differs after %s:\n got %q\nwant %q", after, w.got.String(), want)
	}
}

// A checkpoint that fails half-way leaves the process running as if
// nothing happened.
func TestFailedCheckpointResumes(t *testing.T) {
	needRoot(t)
	argv := []string{programs["counter"], "30", "8000000"}
	want := reference(t, argv...)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	w := watch(t, argv, 5)
	if _, _, err := Checkpoint(w.cmd.Process.Pid, &failAfter{n: 3 << 20}); err == nil {
		t.Fatal("Checkpoint into a broken link succeeded")
	}
	w.finish(t, want, "a failed checkpoint")
}

// A restore refuses an image whose mapped files differ here, before the
// process runs.
func TestRestoreRefusesChangedFiles(t *testing.T) {
	needRoot(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	prog := filepath.Join(t.TempDir(), "counter")
	b, err := os.ReadFile(programs["counter-static"])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(prog, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(prog, "1000")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	img, frozen, err := Dump(cmd.Process.Pid)
	if err != nil {
		cmd.Process.Kill()
		t.Fatal(err)
	}
	frozen.Kill()
	later := time.Now().Add(time.Hour)
	os.Chtimes(prog, later, later)
	stub, err := os.StartProcess(prog, []string{prog}, &os.ProcAttr{Sys: &syscall.SysProcAttr{Ptrace: true}})
	if err != nil {
		t.Fatal(err)
	}
	err = Restore(stub.Pid, img)
	if err == nil || !strings.Contains(err.Error(), "differs") {
		t.Fatalf("Restore with a changed executable = %v, want an error saying it differs", err)
	}
	if syscall.Kill(stub.Pid, 0) == nil {
		t.Fatal("the stub of a refused restore is still there")
	}
}

// Threads: each with its registers, stack, TLS and futex waits (a barrier,
// a condition variable, a long sleep) come back, under new thread ids.
func TestMoveThreads(t *testing.T) { checkMove(t, "threads", 10, "40") }

// In PID namespaces of their own (as mosaic runs programs), a moved
// process keeps what it sees of its identity: getpid, every thread's
// gettid (with gaps between them), getppid and /proc/self; run as an
// ordinary user, whose restore cannot choose ids itself.
func TestMoveKeepsIDs(t *testing.T) {
	needRoot(t)
	s, err := spawn.New(nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	devnull, _ := os.Open(os.DevNull)
	defer devnull.Close()
	same := func(s string) string { return s }
	// A directory the user may write in, for a file its processes share.
	shared, err := os.MkdirTemp("", "mosaic-ckpt-test-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(shared)
	if err := os.Chmod(shared, 0o777); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(shared, "out")
	for _, c := range []struct {
		name, expect string
		argv         []string
		normalize    func(string) string
	}{
		{"ids", "pid 2 tids 2 3 5 ppid 0 /proc/self 2 same", []string{programs["ids"], "30"}, same},
		{"ids-static", "pid 2 tids 2 3 5 ppid 0 /proc/self 2 same", []string{programs["ids-static"], "30"}, same},
		// With its children: each keeps its id and its parent's, and
		// each parent waits for its child by its id.
		{"tree", "grandchild 0 27136 pid 4 ppid 3 pgid 3", []string{programs["tree"], "40", "ids"}, byProcess},
		{"tree-static", "grandchild 0 27136 pid 4 ppid 3 pgid 3", []string{programs["tree-static"], "40", "ids"}, byProcess},
		// A shell with the program it runs and waits for (the shell
		// finds its job by the child's id).
		{"sh", "39 4490532\nsh: 0\n", []string{"/bin/sh", "-c", programs["counter"] + ` 40 4000000; echo "sh: $?"`}, same},
		// A pipeline: the pipe between its two programs moves with
		// them, with what it held.
		{"sh pipeline", "39 4490532\nsh: 0\n", []string{"/bin/sh", "-c", programs["counter"] + ` 40 4000000 | cat; echo "sh: $?"`}, same},
		// A file the shell opened and its program writes through: one
		// open file, one offset, which the shell writes on after it.
		{"sh redirection", "4\n0 3914\n", []string{"/bin/sh", "-c", "{ " + programs["counter"] + " 40 4000000 >&3 & sleep 0.2; for i in 0 1 2 3 4; do echo $i; done; wait $!; echo \"sh: $?\" >&3; } 3>" + out + "; cat " + out}, same},
		// Memory a parent and its child share, which each takes turns
		// through, and a note in shared memory neither has touched.
		{"shared memory", "child 39\nchild: written before the fork\nparent: child exited 0\n", []string{programs["shared"], "40"}, same},
		{"shared memory-static", "child 39\nchild: written before the fork\nparent: child exited 0\n", []string{programs["shared-static"], "40"}, same},
		// A multiprocessing pool: pipes between the processes, and the
		// locks on them in memory they all map (a POSIX semaphore).
		{"python multiprocessing", "11 ", []string{"/usr/bin/python3", "-c", `import multiprocessing as mp, hashlib
def work(i):
    h = hashlib.sha256()
    for k in range(40000): h.update(b'%d' % (i * k))
    return i, h.hexdigest()[:16]
if __name__ == '__main__':
    with mp.Pool(2) as p:
        for i, d in p.imap(work, range(30)): print(i, d, flush=True)`}, same},
		// A socket pair between a process and its child (a duplex
		// multiprocessing.Pipe), messages in flight both ways.
		{"python socket pair", "39 1521 1079521\nexit 0\n", []string{"/usr/bin/python3", "-c", `import multiprocessing as mp, time
def child(conn):
    while True:
        x = conn.recv()
        if x is None: break
        conn.send(x * x)
if __name__ == '__main__':
    a, b = mp.Pipe()
    p = mp.Process(target=child, args=(b,)); p.start()
    for i in range(40):
        a.send(i); a.send(i + 1000)
        time.sleep(0.01)
        print(i, a.recv(), a.recv(), flush=True)
    a.send(None); p.join(); print('exit', p.exitcode)`}, same},
		// Two eventfds a process and its child wake each other with,
		// one count in flight at times: each made once, its count
		// carried (two of each would leave both waiting for ever).
		{"python eventfd", "40 1600\nexit\n", []string{"/usr/bin/python3", "-c", `import os, time
ping, pong = os.eventfd(0), os.eventfd(0)
pid = os.fork()
if pid == 0:
    while True:
        x = os.eventfd_read(ping)
        if x == 1000000: os._exit(0)
        os.eventfd_write(pong, x * x)
for i in range(1, 41):
    os.eventfd_write(ping, i)
    time.sleep(0.01)
    print(i, os.eventfd_read(pong), flush=True)
os.eventfd_write(ping, 1000000); os.waitpid(pid, 0); print('exit')`}, same},
		// A child that leads a session of its own (setsid).
		// (Each line one write: the two share the pipe. The parent waits
		// for the child's setsid.)
		{"python setsid", "child 39 True True\n", []string{"/usr/bin/python3", "-c", `import os, time
def say(*a): os.write(1, (' '.join(map(str, a)) + '\n').encode())
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.setsid(); os.close(r); os.write(w, b'x'); os.close(w)
    for i in range(40):
        say('child', i, os.getsid(0) == os.getpid(), os.getpgid(0) == os.getpid())
        time.sleep(0.02)
    os._exit(0)
os.close(w); os.read(r, 1); os.close(r)
for i in range(20):
    say('parent', i, os.getsid(pid) == pid)
    time.sleep(0.02)
os.waitpid(pid, 0)
say('parent: done')`}, byProcess},
		// A child's output its parent reads through a pipe.
		{"python subprocess", "39 4490532\nrc 0\n", []string{"/usr/bin/python3", "-c", "import subprocess, sys\np = subprocess.Popen(['" + programs["counter"] + "', '40', '4000000'], stdout=subprocess.PIPE)\nfor l in p.stdout:\n    sys.stdout.write(l.decode()); sys.stdout.flush()\nprint('rc', p.wait())"}, same},
	} {
		t.Run(c.name, func(t *testing.T) {
			spec := spawn.Spec{Argv: c.argv, Dir: "/", UID: 65534, GID: 65534}
			// start runs spec in a namespace of its own, its output into
			// the returned pipe.
			start := func() (*os.Process, *spawn.Namespace, *os.File) {
				ns, err := s.NewNamespace()
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { ns.Close() })
				r, w, err := os.Pipe()
				if err != nil {
					t.Fatal(err)
				}
				sp := spec
				sp.Files, sp.Namespace = []*os.File{devnull, w, os.Stderr}, ns
				p, err := s.Start(sp)
				w.Close()
				if err != nil {
					t.Fatal(err)
				}
				return p, ns, r
			}
			p, _, r := start()
			want, _ := io.ReadAll(r)
			if ws := waitFor(t, p.Pid); ws.ExitStatus() != 0 || !strings.Contains(string(want), c.expect) {
				t.Fatalf("undisturbed run: %v\n%s", ws, want)
			}

			orig, _, r := start()
			br := bufio.NewReader(r)
			var out strings.Builder
			for range 5 {
				line, err := br.ReadString('\n')
				if err != nil {
					t.Fatal(err)
				}
				out.WriteString(line)
			}
			pr, pw, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer pr.Close()
			decided := make(chan bool, 1) // not waited for if the checkpoint fails
			dumped := make(chan error, 1)
			go func() {
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				_, frozen, err := Checkpoint(orig.Pid, pw)
				pw.Close()
				dumped <- err
				if err != nil {
					return
				}
				if <-decided {
					frozen.Kill()
				} else {
					frozen.Resume()
				}
				decided <- true
			}()
			d, err := NewDecoder(pr)
			if err != nil {
				t.Fatal(err)
			}
			ns, err := s.NewNamespace()
			if err != nil {
				t.Fatal(err)
			}
			defer ns.Close()
			// The restored copy writes into the same pipe.
			stdout, err := os.OpenFile(fmt.Sprintf("/proc/%d/fd/1", orig.Pid), os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			var pid int
			sp := spec
			sp.Argv, sp.Files, sp.Namespace = []string{d.Image().Exe}, []*os.File{devnull, stdout, os.Stderr}, ns
			err = s.Traced(sp, func(p *os.Process) error {
				pid = p.Pid
				restored, err := RestoreFrom(p.Pid, d, RestoreOptions{Init: ns.Init.Pid})
				if err != nil {
					pr.Close() // the dump may still be writing
				}
				derr := <-dumped
				if err != nil || derr != nil {
					if derr == nil {
						decided <- false
						<-decided
					} else if restored != nil {
						restored.Abort()
					}
					return fmt.Errorf("restore: %v; checkpoint: %v", err, derr)
				}
				decided <- true
				<-decided
				return restored.Go()
			})
			stdout.Close()
			if err != nil {
				t.Fatalf("restore: %v", err)
			}
			waitFor(t, orig.Pid)
			rest, _ := io.ReadAll(br)
			out.Write(rest)
			if ws := waitFor(t, pid); ws.ExitStatus() != 0 || c.normalize(out.String()) != c.normalize(string(want)) {
				t.Fatalf("after a move: %v\n got %s\nwant %s", ws, out.String(), want)
			}
		})
	}
}

func waitFor(t *testing.T, pid int) syscall.WaitStatus {
	t.Helper()
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(pid, &ws, 0, nil); err != nil {
		t.Fatal(err)
	}
	return ws
}

// Signals waiting while blocked (for a thread, for the process, queued
// real-time ones with their values) and POSIX timers (signalling the
// process, a thread, or no one) are all there after a move.
// threadNices lists a process's threads' scheduling policies, nice values
// and I/O priorities (as policy*10^7 + (20-nice)*10^5 + ioprio), the main
// thread's first, the others' in order.
// threadNames are the names of pid's threads, the main thread's first.
func threadNames(t *testing.T, pid int) []string {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	var main, others []string
	for _, e := range ents {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/comm", pid, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if e.Name() == strconv.Itoa(pid) {
			main = append(main, strings.TrimSpace(string(b)))
		} else {
			others = append(others, strings.TrimSpace(string(b)))
		}
	}
	slices.Sort(others)
	return append(main, others...)
}

func threadNices(t *testing.T, pid int) []int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	var main []int
	var others []int
	for _, e := range ents {
		tid, _ := strconv.Atoi(e.Name())
		prio, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
		if err != nil {
			t.Fatal(err)
		}
		io, err := ioprio.Get(tid)
		if err != nil {
			t.Fatal(err)
		}
		attr, err := unix.SchedGetAttr(tid, 0)
		if err != nil {
			t.Fatal(err)
		}
		slack, err := os.ReadFile(fmt.Sprintf("/proc/%d/timerslack_ns", tid))
		if err != nil {
			t.Fatal(err)
		}
		slackNs, _ := strconv.Atoi(strings.TrimSpace(string(slack)))
		v := slackNs*1_000_000_000 + int(attr.Policy)*10000000 + (20-prio)*100000 + int(io)
		if tid == pid {
			main = append(main, v)
		} else {
			others = append(others, v)
		}
	}
	slices.Sort(others)
	return append(main, others...)
}

// Every thread keeps its name, nice value, I/O priority, scheduling policy
// and timer slack: the main thread 7, idle I/O, SCHED_IDLE and 207 us, the
// others 3, 4, ..., best effort 3, 4, ..., SCHED_BATCH and 203, 204, ...
// us, as set before the checkpoint.
func TestMoveKeepsPriorities(t *testing.T) {
	needRoot(t)
	var want []int
	var wantNames []string
	m := move{argv: []string{programs["threads"], "40"}, before: 10}
	m.dumping = func(t *testing.T, pid int) {
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil || len(ents) < 2 {
			t.Fatalf("the threads of %d: %d, %v", pid, len(ents), err)
		}
		nice := 3
		for _, e := range ents {
			tid, _ := strconv.Atoi(e.Name())
			n, io := 7, ioprio.Make(ioprio.ClassIdle, 0)
			if tid != pid {
				n, io, nice = nice, ioprio.Make(ioprio.ClassBestEffort, nice), nice+1
			}
			if err := unix.Setpriority(unix.PRIO_PROCESS, tid, n); err != nil {
				t.Fatal(err)
			}
			if err := ioprio.Set(tid, io); err != nil {
				t.Fatal(err)
			}
			policy := uint32(unix.SCHED_BATCH) // and the main thread idle
			if tid == pid {
				policy = unix.SCHED_IDLE
			}
			attr := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: policy, Nice: int32(n)}
			if err := unix.SchedSetAttr(tid, &attr, 0); err != nil {
				t.Fatal(err)
			}
			// And a timer slack of its own, as prctl sets it.
			if err := os.WriteFile(fmt.Sprintf("/proc/%d/timerslack_ns", tid), []byte(strconv.Itoa(200_000+1000*n)), 0); err != nil {
				t.Fatal(err)
			}
		}
		want = threadNices(t, pid)
		wantNames = threadNames(t, pid)
	}
	m.restored = func(t *testing.T, pid int) {
		if got := threadNices(t, pid); !slices.Equal(got, want) {
			t.Fatalf("restored threads' timer slacks, policies, nice values and I/O priorities %v, want %v", got, want)
		}
		if got := threadNames(t, pid); !slices.Equal(got, wantNames) {
			t.Fatalf("restored threads' names %q, want %q", got, wantNames)
		}
	}
	if _, ws, _ := m.run(t); !ws.Exited() || ws.ExitStatus() != 0 {
		t.Fatalf("restored process ended with %v", ws)
	}
}

// A negative nice value and the realtime I/O class come back for root's
// processes only: a user's image is the user's to write.
func TestRaisedPrioritiesOnlyForRoot(t *testing.T) {
	rt, be := int(ioprio.Make(ioprio.ClassRealtime, 3)), int(ioprio.Make(ioprio.ClassBestEffort, 3))
	idle := int(ioprio.Make(ioprio.ClassIdle, 0))
	for _, c := range []struct {
		uid  uint32
		want []Thread
	}{
		{0, []Thread{{Nice: -4, IOPrio: rt, SchedPolicy: unix.SCHED_FIFO, SchedPriority: 5}, {Nice: 3, IOPrio: idle, SchedPolicy: unix.SCHED_IDLE}, {Nice: -20}}},
		{1000, []Thread{{Nice: 0, IOPrio: be}, {Nice: 3, IOPrio: idle, SchedPolicy: unix.SCHED_IDLE}, {Nice: 0}}},
	} {
		img := &Image{UID: c.uid, Threads: []Thread{
			{Nice: -4, IOPrio: rt, SchedPolicy: unix.SCHED_FIFO, SchedPriority: 5}, {Nice: 3, IOPrio: idle, SchedPolicy: unix.SCHED_IDLE}, {Nice: -20},
		}}
		limitPriorities(img)
		if !reflect.DeepEqual(img.Threads, c.want) {
			t.Errorf("uid %d: %+v, want %+v", c.uid, img.Threads, c.want)
		}
	}
}

func TestMovePendingSignalsAndTimers(t *testing.T) { checkMove(t, "pending", 10, "40") }

// Post-copy: the large mappings come after the process, on the same
// stream, the pages it touches first on request; it discards, moves and
// forks memory while pages are still missing, and its output is that of
// an undisturbed run.
func TestMoveLazy(t *testing.T) {
	needRoot(t)
	for _, variant := range []string{"lazymem", "lazymem-static"} {
		t.Run(variant, func(t *testing.T) {
			argv := []string{programs[variant], "10"}
			want := reference(t, argv...)
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			devnull, _ := os.Open(os.DevNull)
			defer devnull.Close()
			orig, err := os.StartProcess(argv[0], argv, &os.ProcAttr{Files: []*os.File{devnull, w, os.Stderr}})
			if err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(r)
			var out strings.Builder
			for range 3 {
				line, err := br.ReadString('\n')
				if err != nil {
					t.Fatal(err)
				}
				out.WriteString(line)
			}
			pr, pw, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer pr.Close()
			restored := make(chan bool)
			served := make(chan error, 1)
			wants := make(chan uint64, 64)
			var lazyCount uint64
			var lazyStats *LazyMemory
			go func() {
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				defer pw.Close()
				err := func() error {
					img, frozen, err := Freeze(orig.Pid)
					if err != nil {
						return err
					}
					if err := frozen.MakeLazy(img); err != nil {
						frozen.Resume()
						return err
					}
					lazyCount = lazyPages(img.Lazy)
					enc, err := NewEncoder(pw, img)
					if err == nil {
						err = frozen.ReadMemory(enc.Pages)
					}
					if err == nil {
						err = enc.Close()
					}
					if err == nil && !<-restored {
						err = errors.New("not restored")
					}
					if err != nil {
						frozen.Resume()
						return err
					}
					srv, err := frozen.NewLazyServer(img)
					if err == nil {
						err = srv.Serve(context.Background(), pw, wants)
					}
					frozen.Kill()
					return err
				}()
				served <- err
			}()
			d, err := NewDecoder(pr)
			if err != nil {
				t.Fatal(err)
			}
			dev, err := os.OpenFile("/dev/userfaultfd", os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			// The thread that starts the stub traces it: it restores it.
			runtime.LockOSThread()
			stub, err := os.StartProcess(d.Image().Exe, []string{d.Image().Exe}, &os.ProcAttr{
				Files: []*os.File{devnull, w, os.Stderr, dev},
				Sys:   &syscall.SysProcAttr{Ptrace: true},
			})
			dev.Close()
			w.Close()
			if err != nil {
				t.Fatal(err)
			}
			var ran chan error
			func() {
				defer runtime.UnlockOSThread()
				rs, err := RestoreFrom(stub.Pid, d, RestoreOptions{Userfaultfd: 3})
				if err != nil {
					restored <- false
					t.Fatalf("RestoreFrom: %v (source: %v)", err, <-served)
				}
				restored <- true
				lazy := rs.Lazy()
				lazyStats = lazy
				if lazy == nil || lazy.Pages() == 0 {
					t.Fatalf("nothing came lazily")
				}
				ran = make(chan error, 1)
				go func() {
					ran <- lazy.Run(context.Background(), d.Rest(), func(a uint64) error { wants <- a; return nil })
				}()
				if err := rs.Go(); err != nil {
					t.Fatal(err)
				}
			}()
			if err := <-ran; err != nil {
				t.Fatalf("lazy pages: %v", err)
			}
			if err := <-served; err != nil {
				t.Fatalf("source: %v", err)
			}
			orig.Wait()
			rest, _ := io.ReadAll(br)
			out.Write(rest)
			ws := waitFor(t, stub.Pid)
			if out.String() != want || ws.ExitStatus() != 0 {
				t.Fatalf("after a lazy move (%v):\n got %s\nwant %s", ws, out.String(), want)
			}
			t.Logf("%d pages came lazily; %d asked for on faults, %d changes of the address space followed", lazyCount, lazyStats.Asked, lazyStats.Changes)
			// It reads all of its memory at once: pages the stream has
			// not brought yet are asked for, not waited for.
			if lazyStats.Asked == 0 {
				t.Fatal("no page was asked for on a fault: the process waited for the stream to reach its pages")
			}
		})
	}
}

// File locks: the moved copy holds the process's POSIX locks (the frozen
// one let them go), and a process that holds an flock is pinned.
func TestMoveLocks(t *testing.T) {
	needRoot(t)
	path := filepath.Join(t.TempDir(), "locked")
	argv := []string{programs["locker"], path, "40"}
	want := "round 0\n"
	for r := 1; r < 40; r++ {
		want += fmt.Sprintf("round %d\n", r)
	}
	want += "unlock 0\n"
	got, ws, _ := move{argv: argv, before: 5, after: func(img *Image) {
		if len(img.Locks) != 2 {
			t.Errorf("image locks: %+v", img.Locks)
		}
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		fl := unix.Flock_t{Type: unix.F_RDLCK, Whence: 0, Start: 0, Len: 10}
		if err := unix.FcntlFlock(f.Fd(), unix.F_GETLK, &fl); err != nil {
			t.Fatal(err)
		}
		if fl.Type != unix.F_WRLCK || fl.Pid == 0 {
			t.Errorf("after the move nobody holds the write lock: %+v", fl)
		} else if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", fl.Pid)); exe != programs["locker"] {
			t.Errorf("the write lock is held by %d (%s), not the moved process", fl.Pid, exe)
		}
	}}.run(t)
	if got != want || !ws.Exited() || ws.ExitStatus() != 0 {
		t.Fatalf("after a move: %v\n got %q\nwant %q", ws, got, want)
	}
}

// A failed checkpoint gives the process back every lock it let go at the
// freeze: its POSIX record locks, its flock and its OFD lock.
func TestFailedCheckpointKeepsLocks(t *testing.T) {
	needRoot(t)
	path := filepath.Join(t.TempDir(), "locked")
	argv := []string{programs["locker"], path, "40", "all"}
	want := reference(t, argv...)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	w := watch(t, argv, 5)
	if _, _, err := Checkpoint(w.cmd.Process.Pid, &failAfter{n: 64 << 10}); err == nil {
		t.Fatal("Checkpoint into a broken link succeeded")
	}
	f, err := os.OpenFile(path+".flock", os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); !errors.Is(err, unix.EWOULDBLOCK) {
		t.Errorf("after a failed checkpoint a shared flock was %v, want EWOULDBLOCK", err)
	}
	g, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	for _, c := range []struct {
		cmd        int
		start      int64
		typ, owner int
	}{{unix.F_GETLK, 10, unix.F_WRLCK, w.cmd.Process.Pid}, {unix.F_OFD_GETLK, 125, unix.F_WRLCK, -1}} {
		fl := unix.Flock_t{Type: unix.F_RDLCK, Start: c.start, Len: 1}
		if err := unix.FcntlFlock(g.Fd(), c.cmd, &fl); err != nil {
			t.Fatal(err)
		}
		if int(fl.Type) != c.typ || int(fl.Pid) != c.owner {
			t.Errorf("after a failed checkpoint, byte %d: %+v, want a write lock of %d", c.start, fl, c.owner)
		}
	}
	w.finish(t, want, "a failed checkpoint")
}

// flock and open-file-description locks move with the open files that
// hold them: after the move the copy holds them (the original is gone),
// once each though two descriptors share the flock's open file.
func TestMoveFlockAndOFDLocks(t *testing.T) {
	needRoot(t)
	path := filepath.Join(t.TempDir(), "locked")
	argv := []string{programs["locker"], path, "40", "all"}
	want := reference(t, argv...)
	if !strings.HasSuffix(want, "unlock 0\nunlock flock 0, ofd 0\n") {
		t.Fatalf("the program alone printed %q", want)
	}
	got, ws, _ := move{argv: argv, before: 5, after: func(img *Image) {
		kinds := map[string]int{}
		for _, l := range img.Locks {
			kinds[l.Kind]++
		}
		if kinds[LockPOSIX] != 2 || kinds[LockFlock] != 1 || kinds[LockOFD] != 1 {
			t.Errorf("image locks: %+v", img.Locks)
		}
		f, err := os.OpenFile(path+".flock", os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); !errors.Is(err, unix.EWOULDBLOCK) {
			t.Errorf("after the move a shared flock was %v, want EWOULDBLOCK (the copy holds it)", err)
		}
		g, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer g.Close()
		fl := unix.Flock_t{Type: unix.F_RDLCK, Whence: 0, Start: 125, Len: 1}
		if err := unix.FcntlFlock(g.Fd(), unix.F_OFD_GETLK, &fl); err != nil {
			t.Fatal(err)
		}
		if fl.Type != unix.F_WRLCK || fl.Pid != -1 {
			t.Errorf("after the move nobody holds the OFD lock: %+v", fl)
		}
	}}.run(t)
	if got != want || !ws.Exited() || ws.ExitStatus() != 0 {
		t.Fatalf("after a move: %v\n got %q\nwant %q", ws, got, want)
	}
}

// Anonymous memory mapped shared (within the process) comes back with
// its contents.
func TestMoveSharedAnonymous(t *testing.T) { checkMove(t, "shmem", 10, "40") }

// A process with memory where a stub's trampoline goes (the stub is made
// ready before its image is known) gets it back all the same.
func TestMoveMemoryAtTrampoline(t *testing.T) { checkMove(t, "fixedmap", 10, "40") }

// Open /dev/null, /dev/zero and /dev/urandom come back open, with their
// flags.
func TestMoveDevices(t *testing.T) { checkMove(t, "devices", 10, "40") }

// An open directory comes back at its position (the next entry it reads
// is the one it would have read), usable for the *at calls and fsync.
func TestMoveDirectory(t *testing.T) {
	dir := t.TempDir()
	checkMove(t, "dirs", 8, "30", dir)
}

// Files in no directory (deleted while open, made with O_TMPFILE, memory
// files) come back with their content, holes, modes and seals, and a
// descriptor that shared an open file with another (dup) shares it again:
// one offset between them, the standard output's copy still the output.
func TestMoveGhostFiles(t *testing.T) {
	moveCase{prog: "ghosts", before: 10, args: func(t *testing.T) []string { return []string{"40", t.TempDir()} },
		expect: "deleted 310 bytes, sum 10902944087086836852, mode 640, offsets 310 310\ntmpfile 1048886 bytes, 1 blocks under 1 MiB, sum 10902944087086836852\nmemfd 632 bytes, sum 17482358355423781578, seals 2, shrink refused 1\n", image: func(t *testing.T, img *Image) {
			// del and again, tmp; mem; dup1 and out.
			if k := fileKinds(img); k[FileDeleted] != 3 || k[FileMemfd] != 1 || k[FileDup] != 2 {
				t.Fatalf("the image's descriptors are %v, want 3 deleted, 1 memfd, 2 dup", k)
			}
		}}.check(t)
}

// Kernel event descriptors come back with their state: an eventfd's count
// and semaphore mode, a signalfd's signals (and the pending one it
// reads), a timerfd's period and expirations, an epoll set's watches with
// their events and data.
func TestMoveEventDescriptors(t *testing.T) {
	moveCase{prog: "events", before: 10, args: func(*testing.T) []string { return []string{"30"} },
		expect: "ready 4, mask f\neventfd 8 7\nsemaphore 8 1 0\nsemaphore 8 1 0\nsemaphore -1 0 1\nsignalfd 128 10\ntimerfd 1\ntimerfd period 40 ms, armed 1\n",
		image: func(t *testing.T, img *Image) {
			if k := fileKinds(img); k[FileEventfd] != 2 || k[FileSignalfd] != 1 || k[FileTimerfd] != 1 || k[FileEpoll] != 1 {
				t.Fatalf("the image's descriptors are %v", k)
			}
		}}.check(t)
}

// Pipes and socket pairs whose every end the process holds come back with
// what they held, their sizes, flags and shut-down directions.
func TestMoveChannels(t *testing.T) {
	moveCase{prog: "chans", before: 10, args: func(*testing.T) []string { return []string{"30"} },
		expect: "self-pipe size 131072, non-blocking 1\nself-pipe: 1 w\nself-pipe again: -1 \nclosed pipe: 10 last words\nclosed pipe, at its end: 0 \nstream: 12 hello stream\nstream, shut: 0 \nstream, the other way: 4 back\npacket 1: 3 one\npacket 2: 4 two2\ndatagram: 8 datagram\npeer gone: 3 bye\npeer gone, at its end: 0 \npeer gone, send -1 1\nnever connected, send -1 1\n",
		image: func(t *testing.T, img *Image) {
			if len(img.Channels) != 7 {
				t.Fatalf("the image has %d channels, want 7: %+v", len(img.Channels), img.Channels)
			}
		}}.check(t)
}

// An inotify descriptor comes back watching the same files under the same
// watch numbers (a gap left by a removed watch included), so the events
// after the move name what they named before (tail -f watches so).
func TestMoveInotify(t *testing.T) {
	moveCase{prog: "watcher", before: 11, args: func(t *testing.T) []string { return []string{"30", t.TempDir()} },
		expect: "watches 1 3 2\n0: wd 3 mask 100 f0\n0: wd 2 mask 2 -\n",
		reset: func(t *testing.T, args []string) {
			os.RemoveAll(args[1])
			if err := os.Mkdir(args[1], 0o755); err != nil {
				t.Fatal(err)
			}
		},
		image: func(t *testing.T, img *Image) {
			if i := slices.IndexFunc(img.Files, func(f File) bool { return f.Kind == FileInotify }); i < 0 || len(img.Files[i].Watches) != 2 {
				t.Fatalf("the image's descriptors: %+v", img.Files)
			}
		}}.check(t)
}

// What a process asked of its memory stays asked after a move: locked
// (mlock, and as touched), not copied to children, wiped in them, left
// out of core dumps; and the memory is what it was.
func TestMoveKeepsMemoryAdvice(t *testing.T) {
	moveCase{prog: "advice", before: 10, args: func(*testing.T) []string { return []string{"30"} },
		expect: "dontdump: yes, intact\nwipeonfork: yes, intact\ndontfork: yes, intact\nlocked on fault: yes, intact\nlocked: yes, intact\n",
		image: func(t *testing.T, img *Image) {
			var all uint32
			for _, v := range img.VMAs {
				all |= v.Advice
			}
			if want := uint32(AdviceLocked | AdviceLockOnFault | AdviceDontFork | AdviceWipeOnFork | AdviceDontDump); all&want != want {
				t.Fatalf("the image's memory advice: %b, want %b", all, want)
			}
		}}.check(t)
}

// An ordinary Go program moves: its runtime's threads and signals, and
// the epoll set and eventfd of its poller.
func TestMoveGoProgram(t *testing.T) {
	needRoot(t)
	argv := []string{programs["goprog"], "60"}
	want := reference(t, argv...)
	got, ws, _ := move{argv: argv, before: 20}.run(t)
	if got != want {
		t.Fatalf("output after a move differs:\n got %q\nwant %q", got, want)
	}
	if !ws.Exited() || ws.ExitStatus() != 0 {
		t.Fatalf("restored process ended with %v", ws)
	}
}

// What cannot move is refused, with the reason in words, and the process
// goes on untouched.
// seccompAllowAll is Python that puts the process under a seccomp filter
// that allows everything (a sandbox in form only).
const seccompAllowAll = `import ctypes, struct
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
insn = ctypes.create_string_buffer(struct.pack('HBBI', 0x06, 0, 0, 0x7fff0000))  # BPF_RET|BPF_K, SECCOMP_RET_ALLOW
prog = ctypes.create_string_buffer(struct.pack('H6xQ', 1, ctypes.addressof(insn)))
assert libc.prctl(22, 2, ctypes.c_void_p(ctypes.addressof(prog)), 0, 0) == 0  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER`

func TestPinned(t *testing.T) {
	needRoot(t)
	lockFile := filepath.Join(t.TempDir(), "lock")
	for _, c := range []struct {
		name, code, reason string
		freezeOnly         bool // Movable does not look for it
	}{
		{"socket", "import socket; s = socket.socket()", "a network or local socket", false},
		{"pipe half another process's", "import os; r, w = os.pipe(); os.set_inheritable(r, True); os.system('sleep 60 <&%d &' % r); os.close(r)", "a pipe process", true},
		{"socket pair half another process's", "import os, socket; a, b = socket.socketpair(); os.set_inheritable(b.fileno(), True); os.system('sleep 60 <&%d &' % b.fileno())", "another process holds", true},
		{"lease", "import fcntl; f = open('" + lockFile + "', 'w'); fcntl.fcntl(f, fcntl.F_SETLEASE, fcntl.F_WRLCK)", "lease", false},
		{"seccomp", seccompAllowAll, "seccomp filter", false},
		{"deleted file with another name", "import os; f = open('" + lockFile + ".1', 'w'); os.link(f.name, f.name + '.2'); os.unlink(f.name)", "lives on under another", false},
		{"deleted file mapped shared", "import os, mmap; f = open('" + lockFile + ".3', 'w+b'); f.write(b'x' * 4096); f.flush(); m = mmap.mmap(f.fileno(), 4096); os.unlink(f.name)", "maps shared", false},
		{"deleted files too large", "import tempfile; f = tempfile.TemporaryFile(); f.write(b'x' * (65 << 20)); f.flush()", "more than the 64 MiB", false},
		// A grandchild whose parent ended is no descendant of the process:
		// what they share would come back as the moved copy's own.
		{"memory another process maps", "import mmap, os\nm = mmap.mmap(-1, 4096)\n" + orphan, "shares memory (anonymous shared memory) with process", false},
		{"memory file another process maps", "import ctypes, os\nlibc = ctypes.CDLL(None)\nlibc.mmap.restype = ctypes.c_void_p\nfd = os.memfd_create('pool')\nos.ftruncate(fd, 4096)\nlibc.mmap(None, 4096, 3, 1, fd, 0)\nos.close(fd)\n" + orphan, "(the memory file pool) with process", false},
		{"memory file another process holds", "import ctypes, os\nlibc = ctypes.CDLL(None)\nlibc.mmap.restype = ctypes.c_void_p\nfd = os.memfd_create('pool')\nos.ftruncate(fd, 4096)\na = libc.mmap(None, 4096, 3, 1, fd, 0)\nr, w = os.pipe()\nif os.fork() == 0:\n    if os.fork() == 0:\n        libc.munmap(ctypes.c_void_p(a), 4096)\n        os.write(w, b'x')\n        import time\n        time.sleep(60)\n    os._exit(0)\nos.wait()\nos.read(r, 1)\nos.close(fd)", "(the memory file pool) that process", false},
		{"file another process maps shared", "import mmap, os\nf = open('" + lockFile + ".4', 'w+b')\nf.write(b'x' * 4096)\nf.flush()\nm = mmap.mmap(f.fileno(), 4096)\n" + orphan, ".4, mapped shared) with process", false},
		{"System V shared memory", "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.shmat.restype = ctypes.c_void_p\nid = libc.shmget(0, 4096, 0o1600)\nassert libc.shmat(id, None, 0) != ctypes.c_void_p(-1).value\nlibc.shmctl(id, 0, None)", "System V shared memory", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			cmd := startReady(t, c.code)
			var pe *PinnedError
			if err := Movable(cmd.Process.Pid); c.freezeOnly && err != nil {
				t.Fatalf("Movable: %v, want nil (the freeze looks for it)", err)
			} else if !c.freezeOnly && (!errors.As(err, &pe) || !strings.Contains(pe.Reason, c.reason)) {
				t.Fatalf("Movable: %v, want pinned for %q", err, c.reason)
			}
			runtime.LockOSThread()
			_, _, err := Freeze(cmd.Process.Pid)
			runtime.UnlockOSThread()
			if !errors.As(err, &pe) || !strings.Contains(pe.Reason, c.reason) {
				t.Fatalf("Freeze: %v, want pinned for %q", err, c.reason)
			}
			st, _ := statusField(cmd.Process.Pid, "State")
			if tracer, _ := statusField(cmd.Process.Pid, "TracerPid"); tracer != "0" || strings.HasPrefix(st, "t") || strings.HasPrefix(st, "T") {
				t.Fatalf("after a refused freeze the process is %q, traced by %s", st, tracer)
			}
		})
	}
}

// orphan is python code that leaves a grandchild running, its parent
// ended: a process that is not a descendant of the one that made it.
const orphan = "if os.fork() == 0:\n    if os.fork() == 0:\n        import time\n        time.sleep(60)\n    os._exit(0)\nos.wait()"

// A process that maps a file shared and writable gets no layout ahead
// (its stub would map the file, and on one machine be taken for another
// process sharing it); one that maps it read-only does.
func TestLayoutLeavesWritableSharedFiles(t *testing.T) {
	needRoot(t)
	name := filepath.Join(t.TempDir(), "shared")
	if err := os.WriteFile(name, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		mode, prot string
		ahead      bool
	}{{"r+b", "mmap.PROT_READ | mmap.PROT_WRITE", false}, {"rb", "mmap.PROT_READ", true}} {
		cmd := startReady(t, "import mmap\nf = open('"+name+"', '"+c.mode+"')\nm = mmap.mmap(f.fileno(), 4096, prot="+c.prot+")")
		layout, err := Layout(cmd.Process.Pid)
		if err != nil {
			t.Fatal(err)
		}
		if (layout != nil) != c.ahead {
			t.Errorf("a file mapped shared with %s: a layout of %d bytes, want one: %v", c.prot, len(layout), c.ahead)
		}
	}
}

// A file mapped shared by a process and by one that does not move with
// it, neither writable, does not pin: nothing to keep in step.
func TestSharedReadOnlyFileMoves(t *testing.T) {
	needRoot(t)
	name := filepath.Join(t.TempDir(), "ro")
	if err := os.WriteFile(name, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := startReady(t, "import mmap, os\nf = open('"+name+"', 'rb')\nm = mmap.mmap(f.fileno(), 4096, prot=mmap.PROT_READ)\n"+orphan)
	if err := Movable(cmd.Process.Pid); err != nil {
		t.Fatalf("Movable: %v, want nil", err)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	_, frozen, err := Freeze(cmd.Process.Pid)
	if err != nil {
		t.Fatalf("Freeze: %v", err)
	}
	if err := frozen.Resume(); err != nil {
		t.Fatal(err)
	}
}

// startReady starts python3 running code, then printing "ready" and
// waiting a minute, in a process group of its own (killed with whatever
// it started at the test's end), and returns once it is ready.
func startReady(t *testing.T, code string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("/usr/bin/python3", "-c", code+"\nimport time\nprint('ready', flush=True)\ntime.sleep(60)")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() })
	if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	return cmd
}

// A child forked by a thread other than the main one is found (each
// thread has children of its own), and moves with the process.
func TestChildOfAThread(t *testing.T) {
	needRoot(t)
	cmd := startReady(t, "import os, threading, time\ndef f():\n    if os.fork() == 0:\n        time.sleep(60)\n        os._exit(0)\n    time.sleep(60)\nthreading.Thread(target=f, daemon=True).start()\ntime.sleep(0.2)")
	if err := Movable(cmd.Process.Pid); err != nil {
		t.Fatalf("Movable: %v", err)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	img, frozen, err := Freeze(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	defer frozen.Resume()
	if len(img.Children) != 1 || img.Children[0].Parent != img.Pid {
		t.Fatalf("the image has %d children, want the one a thread forked", len(img.Children))
	}
}

// An inotify descriptor with events not yet read pins its process for
// that moment: the refusal says so (Momentary), and FreezeSoon waits it
// out; the process, let go again, goes on as if nothing happened.
func TestPinnedForAMoment(t *testing.T) {
	needRoot(t)
	argv := []string{programs["notifier"], "6", filepath.Join(t.TempDir(), "watched")}
	want := reference(t, argv...)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	w := watch(t, argv, 1) // "pending 0": 100 ms of an event not yet read
	var pe *PinnedError
	if _, _, err := Freeze(w.cmd.Process.Pid); !errors.As(err, &pe) || !pe.Momentary || !strings.Contains(pe.Reason, "events not yet read") {
		t.Fatalf("Freeze with an event not read: %v, want a momentary pin", err)
	}
	_, frozen, err := FreezeSoon(w.cmd.Process.Pid, FreezeOptions{}, 20, 20*time.Millisecond)
	if err != nil {
		t.Fatalf("FreezeSoon: %v", err)
	}
	if err := frozen.Resume(); err != nil {
		t.Fatal(err)
	}
	w.finish(t, want, "a freeze that waited")
}

// A layout made ahead (Premap, before the freeze) that is the image's
// own is what the process is restored into; one the process no longer
// has (here: a mapping more, at a free address, and one less) is taken
// back, and the image's mappings made as ever. Either way the process
// runs on as if undisturbed, both dynamically and statically linked.
func TestMovePremapped(t *testing.T) {
	needRoot(t)
	for _, variant := range []string{"counter", "counter-static"} {
		argv := []string{programs[variant], "40", "4000000"}
		want := reference(t, argv...)
		var extra VMA // the mapping the changed layout has and the process does not
		layouts := map[string]func(t *testing.T, pid int) []byte{
			"the same": func(t *testing.T, pid int) []byte {
				b, err := Layout(pid)
				if err != nil {
					t.Fatal(err)
				}
				return b
			},
			"changed": func(t *testing.T, pid int) []byte {
				b, err := Layout(pid)
				if err != nil {
					t.Fatal(err)
				}
				vs, err := decodeLayout(b)
				if err != nil {
					t.Fatal(err)
				}
				at, err := freeRange(vs, nil, 16*pageSize)
				if err != nil {
					t.Fatal(err)
				}
				extra = VMA{Start: at, End: at + 16*pageSize, Prot: unix.PROT_READ | unix.PROT_WRITE, Kind: VMAAnon}
				// One of its anonymous mappings less, one more.
				i := slices.IndexFunc(vs, func(v VMA) bool { return v.Kind == VMAAnon && v.Name == "" })
				if i < 0 {
					i = slices.IndexFunc(vs, func(v VMA) bool { return v.Name == "[heap]" || v.Name == "[stack]" })
				}
				vs = append(slices.Delete(vs, i, i+1), extra)
				var enc bytes.Buffer
				if err := gob.NewEncoder(&enc).Encode(vs); err != nil {
					t.Fatal(err)
				}
				return enc.Bytes()
			},
		}
		for name, layout := range layouts {
			t.Run(variant+"/"+name, func(t *testing.T) {
				pools := [2]*bufpool.Pool{bufpool.New(64 << 20), bufpool.New(64 << 20)}
				check := func(t *testing.T, s *Stub, img *Image) {
					if premade := sameLayout(s.premapped, img.VMAs); premade != (name == "the same") {
						t.Errorf("restored into the layout made ahead: %v, want %v", premade, name == "the same")
					}
					if _, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/3", s.pid)); err == nil {
						t.Error("the restored process holds the userfaultfd device the restore had")
					}
					maps, err := readMaps(s.pid)
					if err != nil {
						t.Fatal(err)
					}
					var got []VMA
					for _, v := range maps {
						if v.Start < s.tramp+workPages*pageSize && s.tramp < v.End {
							continue // the trampoline, gone once it runs
						}
						got = append(got, VMA{Start: v.Start, End: v.End})
						if name == "changed" && v.Start < extra.End && extra.Start < v.End {
							t.Errorf("the restored process has the mapping only the layout made ahead had: %+v", v)
						}
					}
					var wantMaps []VMA
					for _, v := range img.VMAs {
						wantMaps = append(wantMaps, VMA{Start: v.Start, End: v.End})
					}
					// (The kernel merges neighbours made alike: compare what is mapped.)
					if !slices.Equal(coalesce(got), coalesce(wantMaps)) {
						t.Errorf("the restored process's mappings:\n%v\nthe image's:\n%v", got, wantMaps)
					}
				}
				got, ws, _ := move{argv: argv, before: 10, pools: &pools, layout: layout, check: check, device: true}.run(t)
				if got != want {
					t.Fatalf("output after a move differs:\n got %q\nwant %q", got, want)
				}
				if !ws.Exited() || ws.ExitStatus() != 0 {
					t.Fatalf("restored process ended with %v", ws)
				}
			})
		}
	}
}

// A layout that no process can have is refused before anything is made.
func TestPremapRefusesBadLayout(t *testing.T) {
	for _, b := range [][]byte{nil, []byte("not a layout"), func() []byte {
		var enc bytes.Buffer
		gob.NewEncoder(&enc).Encode([]VMA{{Start: 0x1001, End: 0x3000, Kind: VMAAnon}})
		return enc.Bytes()
	}()} {
		if _, err := decodeLayout(b); err == nil {
			t.Errorf("decodeLayout(%q) took it", b)
		}
	}
}

// coalesce joins ranges that touch.
func coalesce(vs []VMA) []VMA {
	var out []VMA
	for _, v := range vs {
		if k := len(out) - 1; k >= 0 && out[k].End == v.Start {
			out[k].End = v.End
			continue
		}
		out = append(out, v)
	}
	return out
}

// A process set up at its exec ignores the signals asked for from its
// first instruction and through the execs of its program (sh runs grep),
// besides what it would ignore anyway (inherited from this test), and is
// under no_new_privs when asked.
func TestExecSetup(t *testing.T) {
	needRoot(t)
	s, err := spawn.New(nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// status is the line of /proc/self/status called field, as a program
	// started with setup sees it.
	status := func(field string, setup *ExecSetup) string {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		devnull, _ := os.Open(os.DevNull)
		defer devnull.Close()
		spec := spawn.Spec{
			Argv: []string{"sh", "-c", "grep " + field + " /proc/self/status"}, Env: []string{"PATH=/bin:/usr/bin"}, Dir: "/",
			UID: 65534, GID: 65534, Files: []*os.File{devnull, w, w},
		}
		if setup != nil {
			spec.AtExec = setup.Apply
		}
		p, err := s.Start(spec)
		w.Close()
		if err != nil {
			t.Fatal(err)
		}
		out, _ := io.ReadAll(r)
		if ws := waitFor(t, p.Pid); ws.ExitStatus() != 0 {
			t.Fatalf("output %q (%v)", out, ws)
		}
		v, _ := strings.CutPrefix(strings.TrimSpace(string(out)), field+":\t")
		return v
	}
	sigIgn := func(setup *ExecSetup) uint64 {
		mask, err := strconv.ParseUint(status("SigIgn", setup), 16, 64)
		if err != nil {
			t.Fatal(err)
		}
		return mask
	}
	base := sigIgn(nil)
	got := sigIgn(&ExecSetup{Ignore: []int{int(syscall.SIGHUP), int(syscall.SIGINT)}})
	if want := base | 1<<(syscall.SIGHUP-1) | 1<<(syscall.SIGINT-1); got != want {
		t.Fatalf("ignored signals %#x, want %#x", got, want)
	}
	if v := status("NoNewPrivs", &ExecSetup{NoNewPrivs: true}); v != "1" {
		t.Fatalf("with no_new_privs set at exec: NoNewPrivs %q", v)
	}
	if v := status("NoNewPrivs", nil); v != "0" {
		t.Fatalf("without: NoNewPrivs %q", v)
	}
}

// A process with a child and a grandchild moves whole: each comes back with
// its memory, as the child of its parent, which waits for it by its id.
func TestMoveTree(t *testing.T) {
	moveCase{prog: "tree", before: 6, args: func(*testing.T) []string { return []string{"40"} },
		expect: "parent: child exited 7", normalize: byProcess,
		image: func(t *testing.T, img *Image) {
			if len(img.Children) != 2 || img.Version != treeVersion {
				t.Fatalf("image of version %d with %d children, want 2 in version %d", img.Version, len(img.Children), treeVersion)
			}
		}}.check(t)
}

// A timerfd and a signalfd a process and its child share (made before
// the fork) come back as one open file each: the timer goes on ticking
// for the child, the parent takes the child's queued signals from the
// signalfd.
func TestMoveTreeSharedEvents(t *testing.T) {
	moveCase{prog: "treeevents", before: 8, args: func(*testing.T) []string { return []string{"30"} },
		expect: "parent: child exited 0", normalize: byProcess,
		image: func(t *testing.T, img *Image) {
			var kinds []string
			for _, f := range img.SharedFiles {
				kinds = append(kinds, f.Kind)
			}
			slices.Sort(kinds)
			if !slices.Equal(kinds, []string{FileSignalfd, FileTimerfd}) {
				t.Fatalf("the tree's shared open files are %v, want its signalfd and timerfd", kinds)
			}
		}}.check(t)
}

// byProcess orders the lines of an output by their first word (the
// process that wrote them), each process's in the order it wrote them.
func byProcess(out string) string {
	lines := strings.SplitAfter(out, "\n")
	first := func(l string) string { w, _, _ := strings.Cut(l, " "); return w }
	slices.SortStableFunc(lines, func(a, b string) int { return strings.Compare(first(a), first(b)) })
	return strings.Join(lines, "")
}

// A child made by vfork that has not executed a program yet shares its
// parent's memory: the tree cannot move until it has (a momentary pin).
func TestVforkPins(t *testing.T) {
	needRoot(t)
	cmd := exec.Command(programs["vforker"])
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Process.Kill(); cmd.Wait() }()
	if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	var pe *PinnedError
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := Movable(cmd.Process.Pid)
		if errors.As(err, &pe) && pe.Momentary && strings.Contains(pe.Reason, "vfork") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Movable of a process whose child shares its memory: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, d := range Descendants(cmd.Process.Pid) {
		syscall.Kill(d, syscall.SIGKILL)
	}
}

// What a tree cannot carry pins it, with the reason, and it goes on as
// it was: a child in a group whose leader has ended, an open file other
// than a regular file or directory shared between two processes, a shared
// file with a lock taken through it. Movable finds the first without
// stopping anything.
func TestTreePins(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	for _, c := range []struct {
		name, prog, reason string
		movable            bool // Movable says so too
	}{
		{"a group whose leader does not move", `a = os.fork()
if a == 0:
    os.setpgid(0, 0); time.sleep(0.5); os._exit(0)
b = os.fork()
if b == 0: time.sleep(100)
while os.getpgid(a) != a: time.sleep(0.01)
os.setpgid(b, a); os.waitpid(a, 0)`, "whose first process is not one of those that move", true},
		{"a shared epoll set", `import select; e = select.epoll()
if os.fork() == 0: time.sleep(100)`, "share an open file (epoll", false},
		{"a shared file with a lock", `f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX)
if os.fork() == 0: time.sleep(100)`, "with locks taken through it", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			cmd, in, br := startPython(t, "import fcntl, os, sys, time\n"+c.prog+"\nprint('ready', flush=True); sys.stdin.read(); print('done')", filepath.Join(dir, "locked"))
			kids := Descendants(cmd.Process.Pid)
			var pe *PinnedError
			if c.movable {
				// Found without stopping it, as `mosaic ps` shows it.
				if err := Movable(cmd.Process.Pid); !errors.As(err, &pe) || !strings.Contains(pe.Reason, c.reason) {
					t.Fatalf("Movable: %v, want pinned: %s", err, c.reason)
				}
			}
			runtime.LockOSThread()
			_, _, err := Dump(cmd.Process.Pid)
			runtime.UnlockOSThread()
			if !errors.As(err, &pe) || !strings.Contains(pe.Reason, c.reason) {
				t.Fatalf("Dump: %v, want pinned: %s", err, c.reason)
			}
			if again := Descendants(cmd.Process.Pid); !slices.Equal(again, kids) || len(kids) != 1 {
				t.Fatalf("children %v before the refused freeze, %v after", kids, again)
			}
			in.Close()
			if l, _ := br.ReadString('\n'); l != "done\n" {
				t.Fatalf("the program, let go, wrote %q", l)
			}
		})
	}
}

// A tree frozen, its memory read, and let go again (a move that failed)
// goes on as if nothing happened, every process of it.
func TestTreeResumes(t *testing.T) {
	needRoot(t)
	argv := []string{programs["tree"], "40"}
	want := reference(t, argv...)
	cmd := exec.Command(argv[0], argv[1:]...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(out)
	var got strings.Builder
	for range 6 {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		got.WriteString(line)
	}
	runtime.LockOSThread()
	img, frozen, err := Freeze(cmd.Process.Pid)
	if err == nil {
		err = frozen.ReadMemory(func(PageRun) error { return nil })
		if rerr := frozen.Resume(); err == nil {
			err = rerr
		}
	}
	runtime.UnlockOSThread()
	if err != nil {
		cmd.Process.Kill()
		t.Fatal(err)
	}
	if len(img.Children) != 2 {
		t.Fatalf("%d children frozen, want 2", len(img.Children))
	}
	rest, _ := io.ReadAll(br)
	got.Write(rest)
	if err := cmd.Wait(); err != nil || byProcess(got.String()) != byProcess(want) {
		t.Fatalf("after a freeze let go (%v):\n got %q\nwant %q", err, got.String(), want)
	}
}

// A tree whose child cannot be made again (its program is gone, its image
// names a process group none of the tree leads) is not restored, and
// nothing of it is left: neither the stub nor the children made before.
func TestTreeRestoreFailsWhole(t *testing.T) {
	needRoot(t)
	cmd := exec.Command(programs["tree"], "200")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	br := bufio.NewReader(out)
	for range 6 {
		if _, err := br.ReadString('\n'); err != nil {
			t.Fatal(err)
		}
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	img, frozen, err := Dump(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	frozen.Kill()
	// The child leads a process group, which the grandchild is in.
	child, grandchild := img.Children[0], img.Children[1]
	if child.Group != child.Pid || grandchild.Group != child.Pid || img.Foreground != 0 {
		t.Fatalf("groups recorded: child %d in %d, grandchild in %d, foreground %d", child.Pid, child.Group, grandchild.Group, img.Foreground)
	}
	for _, c := range []struct {
		name, want string
		damage     func() (undo func())
	}{
		{"the grandchild's program is gone", "/nonexistent/tree", func() func() {
			exe := grandchild.Exe
			grandchild.Exe = "/nonexistent/tree"
			return func() { grandchild.Exe = exe }
		}},
		{"the grandchild is in a group nobody leads", "a process group 999999 that none of its child processes leads", func() func() {
			grandchild.Group = 999999
			return func() { grandchild.Group = child.Pid }
		}},
		{"the terminal is given to a group that is not", "a terminal's foreground group 999999", func() func() {
			img.Foreground = 999999
			return func() { img.Foreground = 0 }
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			runtime.LockOSThread() // the stub's tracer
			defer runtime.UnlockOSThread()
			defer c.damage()()
			stub, err := os.StartProcess(img.Exe, []string{img.Exe}, &os.ProcAttr{Sys: &syscall.SysProcAttr{Ptrace: true}})
			if err != nil {
				t.Fatal(err)
			}
			err = Restore(stub.Pid, img)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Restore of a tree where %s: %v", c.name, err)
			}
			if syscall.Kill(stub.Pid, 0) == nil {
				t.Fatal("the stub of a refused restore is still there")
			}
			if kids := Descendants(stub.Pid); len(kids) > 0 {
				t.Fatalf("children of a refused restore left: %v", kids)
			}
		})
	}
}

// Memory a process and its child share goes once in the image, however
// many of them map it.
func TestSharedMemoryCarriedOnce(t *testing.T) {
	needRoot(t)
	const size = 8 << 20
	cmd, _, _ := startPython(t, `import mmap, os, sys, time
m = mmap.mmap(-1, 8 << 20)  # MAP_SHARED, of no file
m.write(bytes(range(256)) * (32 << 10))
if os.fork() == 0:
    time.sleep(100)
print('ready', flush=True); sys.stdin.read()`)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	img, frozen, err := Freeze(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	defer frozen.Resume()
	if len(img.SharedMem) != 1 || img.SharedMem[0] != size {
		t.Fatalf("shared memory recorded: %v, want one object of %d bytes", img.SharedMem, size)
	}
	var region [2]VMA // the parent's and the child's mapping of it
	for i, im := range []*Image{img, img.Children[0]} {
		for _, v := range im.VMAs {
			if v.SharedMem == 1 {
				region[i] = v
			}
		}
	}
	carried := [2]int{}
	if err := frozen.ReadMemory(func(p PageRun) error {
		if v := region[p.Proc]; p.Addr >= v.Start && p.Addr < v.End {
			carried[p.Proc] += len(p.Data)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if carried[0]+carried[1] != size {
		t.Fatalf("shared memory carried: %d bytes with the parent, %d with the child, want %d in all", carried[0], carried[1], size)
	}
}

// startPython runs a python program that says "ready" once it has made
// what a test looks at, with pipes to its input and from its output;
// when the test ends, it and its descendants are killed.
func startPython(t *testing.T, prog string, args ...string) (*exec.Cmd, io.WriteCloser, *bufio.Reader) {
	t.Helper()
	cmd := exec.Command("/usr/bin/python3", append([]string{"-c", prog}, args...)...)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, k := range Descendants(cmd.Process.Pid) {
			syscall.Kill(k, syscall.SIGKILL)
		}
		in.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	br := bufio.NewReader(out)
	if l, err := br.ReadString('\n'); l != "ready\n" {
		t.Fatalf("the program said %q (%v)", l, err)
	}
	return cmd, in, br
}
