package pidlock

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	// Re-exec mode: try to take the lock from another process.
	if path := os.Getenv("PIDLOCK_TEST_PATH"); path != "" {
		_, err := Acquire(path)
		var held *HeldError
		if errors.As(err, &held) && held.PID == os.Getenv("PIDLOCK_TEST_HOLDER") {
			os.Exit(3)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestExclusiveAcrossProcesses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lock")
	release, err := Acquire(path)
	if err != nil {
		t.Fatal(err)
	}
	try := func() int {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), "PIDLOCK_TEST_PATH="+path, "PIDLOCK_TEST_HOLDER="+strconv.Itoa(os.Getpid()))
		err := cmd.Run()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	}
	if code := try(); code != 3 {
		t.Fatalf("another process took a held lock (exit %d), or was not told the holder's pid", code)
	}
	release()
	if code := try(); code != 0 {
		t.Fatalf("another process could not take a released lock (exit %d)", code)
	}
}

func TestAcquireRemoved(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lock")
	release, err := AcquireRemoved(path)
	if err != nil {
		t.Fatal(err)
	}
	var held *HeldError
	if _, err := Acquire(path); !errors.As(err, &held) || held.PID != strconv.Itoa(os.Getpid()) {
		t.Fatalf("second holder: %v, want held by pid %d", err, os.Getpid())
	}
	release()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("lock file after release: %v, want it removed", err)
	}
	release, err = AcquireRemoved(path)
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	release()
}

// Many takers of a lock whose file each release removes: never two holders
// at once (one could lock the file just removed, if Acquire did not check
// that the file it locked is still the one at the path).
func TestAcquireRemovedExclusive(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lock")
	var holders, most, taken atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 1000 {
				release, err := AcquireRemoved(path)
				if err != nil {
					continue // held: try again
				}
				taken.Add(1)
				n := holders.Add(1)
				for {
					m := most.Load()
					if n <= m || most.CompareAndSwap(m, n) {
						break
					}
				}
				time.Sleep(50 * time.Microsecond) // hold it a while: a second holder would overlap
				holders.Add(-1)
				release()
			}
		}()
	}
	wg.Wait()
	if most.Load() != 1 || taken.Load() == 0 {
		t.Fatalf("at most %d holders at once (want 1), %d takes", most.Load(), taken.Load())
	}
}
