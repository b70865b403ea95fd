package ioprio

import (
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestEncoding(t *testing.T) {
	p := Make(ClassBestEffort, 7)
	if p.Class() != ClassBestEffort || p.Level() != 7 || !p.Valid() || int(p) != 2<<13|7 {
		t.Fatalf("Make(best effort, 7) = %#x: class %d level %d valid %v", int(p), p.Class(), p.Level(), p.Valid())
	}
	for _, bad := range []Prio{Make(ClassBestEffort, 8), Make(4, 0), Make(ClassNone, 3), -1} {
		if bad.Valid() {
			t.Errorf("%#x is valid", int(bad))
		}
	}
	if got := ForUser(Make(ClassRealtime, 2)); got != Make(ClassBestEffort, 2) {
		t.Errorf("ForUser(realtime 2) = %#x", int(got))
	}
	if got := ForUser(Make(ClassIdle, 0)); got != Make(ClassIdle, 0) {
		t.Errorf("ForUser(idle) = %#x", int(got))
	}
}

// What Set gives a thread, ionice sees in the programs it starts.
func TestSetIsWhatIoniceSees(t *testing.T) {
	if _, err := exec.LookPath("ionice"); err != nil {
		t.Skip("no ionice (util-linux) here")
	}
	runtime.LockOSThread() // a thread's own, and exec forks from it
	defer runtime.UnlockOSThread()
	old, err := Get(0)
	if err != nil {
		t.Fatal(err)
	}
	if err := Set(0, Make(ClassBestEffort, 6)); err != nil {
		t.Fatal(err)
	}
	defer Set(unix.Gettid(), old)
	cmd := exec.Command("ionice", "-p", "0")
	cmd.Env = os.Environ()
	out, err := cmd.Output()
	if err != nil || strings.TrimSpace(string(out)) != "best-effort: prio 6" {
		t.Fatalf("ionice says %q (%v)", out, err)
	}
	if p, err := Get(0); err != nil || p != Make(ClassBestEffort, 6) {
		t.Fatalf("Get = %#x, %v", int(p), err)
	}
}
