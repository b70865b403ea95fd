package nofile_test

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/mosaic-cluster/mosaic/internal/nofile"
)

const childEnv = "MOSAIC_NOFILE_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		lim, ok := nofile.Original()
		var now syscall.Rlimit
		syscall.Getrlimit(syscall.RLIMIT_NOFILE, &now)
		fmt.Printf("original %d/%d %v, now %d/%d", lim.Cur, lim.Max, ok, now.Cur, now.Max)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// nofile is initialized before syscall only if its own files import
// nothing: this test is a package of its own (nofile_test) for that.

// A Go program started with a soft limit well under its hard one runs
// with the soft limit raised (Go's doing), and Original still has the one
// it was started with.
func TestOriginalIsFromBeforeGoRaisedIt(t *testing.T) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Max < 100 {
		t.Skipf("a hard limit of %d open files: too low to start a child under it", lim.Max)
	}
	cmd := exec.Command("sh", "-c", `ulimit -Sn 77 && exec "$0" -test.run='^$'`, os.Args[0])
	cmd.Env = append(os.Environ(), childEnv+"=1")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v: %s", err, out)
	}
	want := fmt.Sprintf("original 77/%d true, now %d/%d", lim.Max, lim.Max-1, lim.Max)
	if got := strings.TrimSpace(string(out)); got != want {
		t.Fatalf("child: %q, want %q", got, want)
	}
}
