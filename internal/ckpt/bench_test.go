package ckpt

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/bufpool"
)

// The engine's own costs, without a network: a process with N MiB of
// touched memory dumped into a stream (discarded, or kept), and restored
// from a stream in memory. `go test -run X -bench . ./internal/ckpt`.

func benchWorkload(b *testing.B, mib int) *exec.Cmd {
	b.Helper()
	if os.Geteuid() != 0 {
		b.Skip("needs root: traces other processes")
	}
	cmd := exec.Command(filepath.Join(benchDir(b), "workload"), fmt.Sprint(mib))
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 6)
	if _, err := io.ReadFull(out, buf); err != nil {
		b.Fatal(err)
	}
	return cmd
}

// benchDir builds the migration benchmark's workload once.
func benchDir(b *testing.B) string {
	dir := filepath.Join(os.TempDir(), "mosaic-ckpt-bench")
	if _, err := os.Stat(filepath.Join(dir, "workload")); err == nil {
		return dir
	}
	os.MkdirAll(dir, 0o755)
	if out, err := exec.Command("gcc", "-O1", "-o", filepath.Join(dir, "workload"), "../bench/workload/migrate.c").CombinedOutput(); err != nil {
		b.Fatalf("%v: %s", err, out)
	}
	return dir
}

func BenchmarkCheckpoint(b *testing.B) {
	for _, mib := range []int{1, 256} {
		b.Run(fmt.Sprintf("%dMiB", mib), func(b *testing.B) {
			cmd := benchWorkload(b, mib)
			defer func() { cmd.Process.Kill(); cmd.Wait() }()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			b.SetBytes(int64(mib) << 20)
			pool := bufpool.New(16 << 20) // as a node's, warm after the first
			var frozen time.Duration      // all but the memory
			for b.Loop() {
				start := time.Now()
				img, f, err := Freeze(cmd.Process.Pid)
				if err != nil {
					b.Fatal(err)
				}
				frozen += time.Since(start)
				f.UseBuffers(pool)
				e, err := NewEncoder(io.Discard, img)
				if err != nil {
					b.Fatal(err)
				}
				if err := f.ReadMemory(e.Pages); err != nil {
					b.Fatal(err)
				}
				if err := e.Close(); err != nil {
					b.Fatal(err)
				}
				f.Resume()
			}
			b.ReportMetric(float64(frozen.Microseconds())/float64(b.N)/1000, "ms-freeze/op")
		})
	}
}

func BenchmarkRestore(b *testing.B) {
	for _, mib := range []int{1, 256} {
		b.Run(fmt.Sprintf("%dMiB", mib), func(b *testing.B) {
			cmd := benchWorkload(b, mib)
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			var stream bytes.Buffer
			img, f, err := Checkpoint(cmd.Process.Pid, &stream)
			if err != nil {
				b.Fatal(err)
			}
			f.Kill()
			cmd.Wait()
			b.SetBytes(int64(mib) << 20)
			pool := bufpool.New(16 << 20) // as a node's, warm after the first
			var freeze time.Duration
			for b.Loop() {
				p, err := os.StartProcess(img.Exe, []string{img.Exe}, &os.ProcAttr{
					Files: []*os.File{nil, nil, nil}, Sys: &syscall.SysProcAttr{Ptrace: true}})
				if err != nil {
					b.Fatal(err)
				}
				stub, err := PrepareStub(p.Pid)
				if err != nil {
					b.Fatal(err)
				}
				start := time.Now()
				d, err := NewDecoder(bytes.NewReader(stream.Bytes()))
				if err != nil {
					b.Fatal(err)
				}
				r, err := RestoreInto(stub, d, RestoreOptions{Buffers: pool})
				if err != nil {
					b.Fatal(err)
				}
				freeze += time.Since(start)
				r.Abort()
			}
			// The stub's start and preparation are no part of a move (the
			// target does both ahead): what counts is from the stream's
			// first byte.
			b.ReportMetric(float64(freeze.Microseconds())/float64(b.N)/1000, "ms-restore/op")
		})
	}
}

// BenchmarkMovable is what `mosaic ps` and the policies pay to learn
// whether a process can move: for a plain program, and for one with a
// socket pair of its own (asyncio's), whose check reads every process's
// descriptors to make sure nobody else holds an end, and for one with
// shared memory, whose check reads every process's mappings to make sure
// nobody else maps it.
func BenchmarkMovable(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root: reads other processes' descriptors")
	}
	for _, c := range []struct{ name, code string }{
		{"plain", "import time"},
		{"socketpair", "import socket, time; a, b = socket.socketpair(); a.send(b'x')"},
		{"shared memory", "import mmap, time; m = mmap.mmap(-1, 4096)"},
	} {
		b.Run(c.name, func(b *testing.B) {
			cmd := exec.Command("/usr/bin/python3", "-c", c.code+"\nprint('ready', flush=True)\ntime.sleep(600)")
			out, _ := cmd.StdoutPipe()
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			defer func() { cmd.Process.Kill(); cmd.Wait() }()
			if _, err := io.ReadFull(out, make([]byte, 6)); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				if err := Movable(cmd.Process.Pid); err != nil {
					b.Fatal(err)
				}
			}
			procs, _ := filepath.Glob("/proc/[0-9]*")
			b.ReportMetric(float64(len(procs)), "processes")
		})
	}
}

// BenchmarkFreezeTree is the engine's freeze of a process with children
// (`sh` waiting for K `sleep`s; a lone `sleep` for none), let go again:
// what each child adds, and how much of it is the tracer's CPU (its
// thread's).
func BenchmarkFreezeTree(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root: traces other processes")
	}
	for _, k := range []int{0, 4} {
		b.Run(fmt.Sprintf("%dchildren", k), func(b *testing.B) {
			script := "exec sleep 600"
			if k > 0 {
				script = strings.Repeat("sleep 600 & ", k) + "wait"
			}
			cmd := exec.Command("/bin/sh", "-c", script)
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			defer func() {
				for _, d := range Descendants(cmd.Process.Pid) {
					syscall.Kill(d, syscall.SIGKILL)
				}
				cmd.Process.Kill()
				cmd.Wait()
			}()
			for len(Descendants(cmd.Process.Pid)) < k {
				time.Sleep(10 * time.Millisecond)
			}
			time.Sleep(100 * time.Millisecond) // each has executed sleep
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			var before, after syscall.Rusage
			syscall.Getrusage(syscall.RUSAGE_THREAD, &before)
			for b.Loop() {
				_, f, err := Freeze(cmd.Process.Pid)
				if err != nil {
					b.Fatal(err)
				}
				if err := f.Resume(); err != nil {
					b.Fatal(err)
				}
			}
			syscall.Getrusage(syscall.RUSAGE_THREAD, &after)
			cpu := after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano()
			b.ReportMetric(float64(cpu)/float64(b.N)/1e6, "ms-cpu/op")
		})
	}
}
