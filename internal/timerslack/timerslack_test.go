package timerslack

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// childEnv makes the test binary a program that calls Reexec with the
// slack it names and says what it then has.
const childEnv = "MOSAIC_TIMERSLACK_TEST_REEXEC"

func init() {
	// Reexec is called on the main thread, as mosaicd does.
	runtime.LockOSThread()
}

func TestMain(m *testing.M) {
	if v, ok := os.LookupEnv(childEnv); ok {
		d, _ := time.ParseDuration(v)
		err := Reexec(d)
		cur, _ := Get()
		orig, oerr := Original()
		own, _ := os.ReadFile("/proc/self/timerslack_ns")
		comm, _ := os.ReadFile("/proc/self/comm")
		fmt.Printf("%sslack=%v original=%v (%v) process=%s err=%v", comm, cur, orig, oerr, own, err)
		os.Exit(0)
	}
	runtime.UnlockOSThread()
	os.Exit(m.Run())
}

func child(t *testing.T, slack string, env ...string) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append(env, childEnv+"="+slack)...)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v: %s", err, out)
	}
	// The first line is the process's name, which an execution of
	// /proc/self/exe would have changed to "exe".
	name, rest, _ := strings.Cut(string(out), "\n")
	if want := filepath.Base(os.Args[0]); name != want[:min(len(want), 15)] {
		t.Fatalf("the child's name is %q, want %q", name, want)
	}
	return strings.TrimSpace(rest)
}

func TestReexec(t *testing.T) {
	runtime.LockOSThread() // the child inherits this thread's slack
	defer runtime.UnlockOSThread()
	own, err := Get()
	if err != nil {
		t.Fatal(err)
	}
	if own == 3*time.Millisecond {
		t.Skip("this test's thread has the slack the test sets already")
	}
	want := fmt.Sprintf("slack=3ms original=%v (<nil>) process=3000000\n err=<nil>", own)
	if got := child(t, "3ms"); got != want {
		t.Fatalf("after Reexec(3ms): %q, want %q", got, want)
	}
	// With the slack it wants already: no execution, Original is its own.
	want = fmt.Sprintf("slack=%v original=%v (<nil>) process=%d\n err=<nil>", own, own, own.Nanoseconds())
	if got := child(t, own.String()); got != want {
		t.Fatalf("Reexec(%v) with that slack already: %q, want %q", own, got, want)
	}
	// An execution that did not get the slack (the variable set) runs on
	// rather than executing again and again.
	want = fmt.Sprintf("slack=%v original=123µs (<nil>) process=%d\n err=<nil>", own, own.Nanoseconds())
	if got := child(t, "3ms", originalEnv+"=123000"); got != want {
		t.Fatalf("Reexec after an execution: %q, want %q", got, want)
	}
}

func TestBadInput(t *testing.T) {
	if err := Set(0); err == nil || !strings.Contains(err.Error(), "must be positive") {
		t.Fatalf("Set(0) = %v", err)
	}
	t.Setenv(originalEnv, "soon")
	if _, err := Original(); err == nil || !strings.Contains(err.Error(), "not a timer slack") {
		t.Fatalf("Original with %s=soon: %v", originalEnv, err)
	}
}
