package ckpt

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// A file is reopened by the name its descriptor's link gave only while
// that name still leads to it: one deleted or replaced meanwhile (sqlite3
// deletes its journal while holding it) pins for a moment instead.
func TestByPathFollowsTheFile(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	for _, p := range []string{a, b} {
		if err := os.WriteFile(p, []byte(p), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	idOf := func(p string) fileID {
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		return fileID{st.Dev, st.Ino}
	}
	idA, idB := idOf(a), idOf(b)
	self := os.Getpid()
	if st, why := byPath(self, a, idA); st == nil || why != "" {
		t.Fatalf("byPath(a, a's id) = %v, %q; want a's file", st, why)
	}
	if st, why := byPath(self, a, idB); st != nil || why == "" {
		t.Fatalf("byPath(a, b's id) = %v, %q; want a reason (its name leads to another file)", st, why)
	}
	os.Remove(a)
	if st, why := byPath(self, a, idA); st != nil || why == "" {
		t.Fatalf("byPath of a deleted name = %v, %q; want a reason", st, why)
	}
	// A name that is not a file of its (no id: a descriptor not stat'able)
	// is no reason by itself.
	if st, why := byPath(self, a, fileID{}); st != nil || why != "" {
		t.Fatalf("byPath without an id = %v, %q; want nothing", st, why)
	}
}
