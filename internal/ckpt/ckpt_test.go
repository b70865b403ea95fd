package ckpt

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
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
}

// run starts m.argv, lets it print m.before lines, dumps it, kills the
// original, sends the image through the stream format, restores it into a
// fresh process writing to the same pipe, and returns everything printed
// and the restored process's exit.
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
	dumped, frozen, err := Dump(orig.Pid)
	if err != nil {
		orig.Kill()
		orig.Wait()
		t.Fatalf("Dump: %v", err)
	}
	frozen.Kill()
	orig.Wait()

	var stream bytes.Buffer
	if err := Encode(&stream, dumped); err != nil {
		t.Fatalf("Encode: %v", err)
	}
	img, err := Decode(&stream)
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}

	stub, err := os.StartProcess(img.Exe, []string{img.Exe}, &os.ProcAttr{
		Files: []*os.File{stdin, w, os.Stderr},
		Sys:   &syscall.SysProcAttr{Ptrace: true},
	})
	if err != nil {
		t.Fatalf("start the stub: %v", err)
	}
	w.Close()
	if err := Restore(stub.Pid, img); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if m.after != nil {
		m.after(img)
	}
	rest, _ := io.ReadAll(br)
	out.Write(rest)
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(stub.Pid, &ws, 0, nil); err != nil {
		t.Fatal(err)
	}
	return out.String(), ws, img
}

// checkMove moves argv once, both dynamically and statically linked, and
// wants exactly the output of an undisturbed run and a clean exit.
func checkMove(t *testing.T, prog string, before int, args ...string) {
	needRoot(t)
	for _, variant := range []string{prog, prog + "-static"} {
		t.Run(variant, func(t *testing.T) {
			argv := append([]string{programs[variant]}, args...)
			want := reference(t, argv...)
			got, ws, img := move{argv: argv, before: before}.run(t)
			if got != want {
				t.Fatalf("output after a move differs:\n got %q\nwant %q", got, want)
			}
			if !ws.Exited() || ws.ExitStatus() != 0 {
				t.Fatalf("restored process ended with %v", ws)
			}
			t.Logf("image: %d mappings, %d bytes of memory", len(img.VMAs), img.MemoryBytes())
		})
	}
}

func TestMoveCounter(t *testing.T) { checkMove(t, "counter", 10, "40", "4000000") }

// Signal handlers, an alternate stack, an interval timer and raised
// signals survive.
func TestMoveSignals(t *testing.T) { checkMove(t, "signals", 12, "40") }

// The extended (AVX) register state survives, even mid-system-call.
func TestMoveAVX(t *testing.T) { checkMove(t, "avx", 10, "30") }

// Regular files come back at their offsets, with O_APPEND kept.
func TestMoveFiles(t *testing.T) {
	needRoot(t)
	for _, variant := range []string{"files", "files-static"} {
		t.Run(variant, func(t *testing.T) {
			dir := t.TempDir()
			argv := []string{programs[variant], "30", filepath.Join(dir, "log"), filepath.Join(dir, "data")}
			want := reference(t, argv...)
			got, ws, _ := move{argv: argv, before: 11}.run(t)
			if got != want {
				t.Fatalf("output after a move differs:\n got %q\nwant %q", got, want)
			}
			if !ws.Exited() || ws.ExitStatus() != 0 {
				t.Fatalf("restored process ended with %v", ws)
			}
		})
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
