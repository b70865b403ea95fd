// Package pidlock is a lock file that says who holds it: one process at a
// time may hold it (flock), and the holder writes its pid into it so that
// whoever is refused can be told which process to stop.
package pidlock

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// HeldError says the lock is held by another process.
type HeldError struct {
	Path string
	PID  string // as the holder wrote it; "?" if unreadable
}

func (e *HeldError) Error() string { return fmt.Sprintf("%s is held by pid %s", e.Path, e.PID) }

// Acquire takes the lock at path, creating the file if needed. The lock is
// released by calling release or when the process exits.
func Acquire(path string) (release func(), err error) {
	for range 100 {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return nil, err
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			b, _ := os.ReadFile(path)
			f.Close()
			if !errors.Is(err, syscall.EWOULDBLOCK) {
				return nil, fmt.Errorf("lock %s: %w", path, err)
			}
			pid := strings.TrimSpace(string(b))
			if pid == "" {
				pid = "?"
			}
			return nil, &HeldError{Path: path, PID: pid}
		}
		// The file may have been removed (AcquireRemoved's release)
		// between our open and our lock: that lock guards nothing, as the
		// next one opens a new file. Try again with the file now there.
		if st, err := os.Stat(path); err != nil || !sameFile(f, st) {
			f.Close()
			continue
		}
		f.Truncate(0)
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
		return func() {
			f.Truncate(0)
			f.Close()
		}, nil
	}
	return nil, fmt.Errorf("lock %s: it was removed and made again under us 100 times", path)
}

// AcquireRemoved is Acquire for a lock file that its release removes (one
// named after something, in a shared directory, that would otherwise pile
// up). It is removed while still locked, and Acquire checks that the file
// it locked is still the one at path, so no two holders can both succeed.
func AcquireRemoved(path string) (release func(), err error) {
	unlock, err := Acquire(path)
	if err != nil {
		return nil, err
	}
	return func() {
		os.Remove(path)
		unlock()
	}, nil
}

func sameFile(f *os.File, st os.FileInfo) bool {
	fst, err := f.Stat()
	return err == nil && os.SameFile(fst, st)
}
