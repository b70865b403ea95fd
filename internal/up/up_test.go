package up

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/mosaic-cluster/mosaic/internal/pidlock"
)

// One `mosaic up` per directory, even when the directory is removed and
// made again under a running cluster: a second cluster there would share
// the first's namespace names, and stopping the first would stop it.
func TestLockHoldsWhenItsDirectoryIsReplaced(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cluster")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	release, err := lock(dir)
	if err != nil {
		t.Fatal(err)
	}
	refused := func(when string) {
		t.Helper()
		r, err := lock(dir)
		if err == nil {
			r()
			t.Fatalf("%s: a second lock of %s was taken", when, dir)
		}
		if want := "pid " + strconv.Itoa(os.Getpid()); !strings.Contains(err.Error(), "already running") || !strings.Contains(err.Error(), want) {
			t.Fatalf("%s: %v, want it to say a cluster runs there (%s)", when, err, want)
		}
	}
	refused("held")
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	refused("directory made again")
	release()
	r, err := lock(dir)
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	r()
}

// A refusal by the directory's own lock gives back the path's lock it took
// first.
func TestRefusedLockHoldsNothing(t *testing.T) {
	dir := t.TempDir()
	releaseDir, err := pidlock.Acquire(filepath.Join(dir, "up.lock"))
	if err != nil {
		t.Fatal(err)
	}
	if r, err := lock(dir); err == nil {
		r()
		t.Fatal("lock taken while up.lock is held")
	}
	releaseDir()
	r, err := lock(dir)
	if err != nil {
		t.Fatalf("after the holder of up.lock let go: %v", err)
	}
	r()
}

func TestPathLockDependsOnThePath(t *testing.T) {
	if pathLock("/a/b") == pathLock("/a/c") {
		t.Fatal("two directories share a lock")
	}
	if pathLock("/a/b") != pathLock("/a/b") {
		t.Fatal("one directory has two locks")
	}
}
