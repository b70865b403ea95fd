package ckpt

import (
	"bytes"
	"os"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// procMem must reach every page a debugger reaches: a write or read that
// crosses from a writable page into a read-only and then an inaccessible
// one moves all of it (process_vm_writev stops at the first, /proc/PID/mem
// goes on).
func TestProcMemCrossesProtections(t *testing.T) {
	const page = pageSize
	m, err := unix.Mmap(-1, 0, 3*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	if err := unix.Mprotect(m[page:2*page], unix.PROT_READ); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mprotect(m[2*page:], unix.PROT_NONE); err != nil {
		t.Fatal(err)
	}
	mem, err := openProcMem(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	want := make([]byte, 3*page-100)
	for i := range want {
		want[i] = byte(i*7 + 1)
	}
	addr := int64(uintptr(unsafe.Pointer(&m[0]))) + 100
	if n, err := mem.WriteAt(want, addr); err != nil || n != len(want) {
		t.Fatalf("write across protections: %d of %d bytes, %v", n, len(want), err)
	}
	got := make([]byte, len(want))
	if n, err := mem.ReadAt(got, addr); err != nil || n != len(got) {
		t.Fatalf("read across protections: %d of %d bytes, %v", n, len(got), err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("read back differs from what was written")
	}
	if err := unix.Mprotect(m[2*page:], unix.PROT_READ); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(m[100:], want) {
		t.Fatal("the mapping does not hold what was written")
	}
}
