package ckpt

import (
	"bufio"
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

// moveOnce runs argv, lets it print `before` lines, dumps it, kills the
// original, restores the image into a fresh process writing to the same
// pipe, and returns everything printed and the restored process's exit.
func moveOnce(t *testing.T, before int, argv ...string) (string, syscall.WaitStatus, *Image) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
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
	for range before {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("read from the original: %v", err)
		}
		out.WriteString(line)
	}
	img, frozen, err := Dump(orig.Pid)
	if err != nil {
		orig.Kill()
		orig.Wait()
		t.Fatalf("Dump: %v", err)
	}
	frozen.Kill()
	orig.Wait()

	stub, err := os.StartProcess(img.Exe, []string{img.Exe}, &os.ProcAttr{
		Files: []*os.File{devnull, w, os.Stderr},
		Sys:   &syscall.SysProcAttr{Ptrace: true},
	})
	if err != nil {
		t.Fatalf("start the stub: %v", err)
	}
	w.Close()
	if err := Restore(stub.Pid, img); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	rest, _ := io.ReadAll(br)
	out.Write(rest)
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(stub.Pid, &ws, 0, nil); err != nil {
		t.Fatal(err)
	}
	return out.String(), ws, img
}

func TestMoveCounter(t *testing.T) {
	needRoot(t)
	for _, prog := range []string{"counter", "counter-static"} {
		t.Run(prog, func(t *testing.T) {
			argv := []string{programs[prog], "40", "4000000"}
			want := reference(t, argv...)
			got, ws, img := moveOnce(t, 10, argv...)
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
