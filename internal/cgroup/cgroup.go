// Package cgroup is a node's control group: where the processes a node runs
// live, so that their CPU can be capped (to emulate a slower machine) and
// their run queue and memory counted apart from other nodes on the same
// machine.
//
// It drives cgroup v1 directly because on the machines mosaic targets first
// the cpu and memory controllers are mounted only as v1 (the v2 hierarchy
// there has only freeze and kill). The files touched are few and stable;
// a library would add more than it saves.
package cgroup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// DefaultRoot is where cgroup v1 controllers are mounted.
const DefaultRoot = "/sys/fs/cgroup"

// controllers a node group spans: cpu for the quota and run queue, memory
// for what the node's processes use.
var controllers = [...]string{"cpu", "memory"}

// cfsPeriod is the CFS bandwidth period used with quotas (the kernel default).
const cfsPeriod = 100_000 // µs

// Group is one control group present in every controller of controllers.
type Group struct {
	root string
	rel  string // e.g. mosaic/<cluster>/<node>
}

// Available reports whether cgroup v1 cpu and memory controllers are mounted
// and writable at root.
func Available(root string) error {
	for _, c := range controllers {
		dir := filepath.Join(root, c)
		if _, err := os.Stat(filepath.Join(dir, "cgroup.procs")); err != nil {
			return fmt.Errorf("cgroup v1 %s controller not mounted at %s: %w", c, dir, err)
		}
		if err := syscall.Access(dir, 2 /* W_OK */); err != nil {
			return fmt.Errorf("cgroup %s is not writable (run the daemon as root): %w", dir, err)
		}
	}
	return nil
}

// Open names an existing or future group without touching the file system.
func Open(root, rel string) *Group { return &Group{root: root, rel: filepath.Clean(rel)} }

// Create makes the group in every controller. quota is in cores' worth of
// CPU time (0.5 = half of one core); 0 leaves it unlimited.
func Create(root, rel string, quota float64) (*Group, error) {
	g := Open(root, rel)
	if err := Available(root); err != nil {
		return nil, err
	}
	for _, c := range controllers {
		if err := os.MkdirAll(g.dir(c), 0o755); err != nil {
			g.Destroy()
			return nil, fmt.Errorf("create cgroup %s: %w", g.dir(c), err)
		}
	}
	if err := g.SetQuota(quota); err != nil {
		g.Destroy()
		return nil, err
	}
	return g, nil
}

func (g *Group) dir(controller string) string { return filepath.Join(g.root, controller, g.rel) }

// CPUPath is the group's directory in the cpu controller.
func (g *Group) CPUPath() string { return g.dir("cpu") }

// SetQuota caps the group's CPU time (cores; 0 = unlimited).
func (g *Group) SetQuota(cores float64) error {
	quota := int64(-1)
	if cores > 0 {
		quota = int64(cores * cfsPeriod)
		if quota < 1000 {
			return fmt.Errorf("capacity %.4g is too small: the kernel needs at least 0.01 cores", cores)
		}
	}
	dir := g.dir("cpu")
	if err := writeFile(filepath.Join(dir, "cpu.cfs_period_us"), strconv.Itoa(cfsPeriod)); err != nil {
		return err
	}
	return writeFile(filepath.Join(dir, "cpu.cfs_quota_us"), strconv.FormatInt(quota, 10))
}

// AddProc moves a process (all its threads) into the group.
func (g *Group) AddProc(pid int) error {
	for _, c := range controllers {
		if err := writeFile(filepath.Join(g.dir(c), "cgroup.procs"), strconv.Itoa(pid)); err != nil {
			return err
		}
	}
	return nil
}

// AddThread moves one thread into the group. A process forked by that
// thread starts in the group: this is how a daemon places the processes it
// starts without a window in which they run outside it (cgroup v1 has no
// CLONE_INTO_CGROUP).
func (g *Group) AddThread(tid int) error {
	for _, c := range controllers {
		if err := writeFile(filepath.Join(g.dir(c), "tasks"), strconv.Itoa(tid)); err != nil {
			return err
		}
	}
	return nil
}

// AddThreadMemory moves one thread into the group's memory controller
// only: a process it forks has its memory charged to the group from its
// first page, but runs outside the group's CPU quota until CapCPU. That
// is how a daemon restores a process: its own work on it (writing the
// image's memory, the system calls it runs in it) must not wait behind
// the node's busy processes for the quota, up to a period at a time.
func (g *Group) AddThreadMemory(tid int) error {
	return writeFile(filepath.Join(g.dir("memory"), "tasks"), strconv.Itoa(tid))
}

// CapCPU puts a process, all its threads, under the group's CPU quota.
func (g *Group) CapCPU(pid int) error {
	return writeFile(filepath.Join(g.dir("cpu"), "cgroup.procs"), strconv.Itoa(pid))
}

// UncapCPU takes a process, all its threads, out of the group's CPU
// quota, into the CPU group of the caller (the daemon's own: its main
// thread's, see AddThread); its memory stays charged to the group.
func (g *Group) UncapCPU(pid int) error {
	own, err := Of(os.Getpid(), "cpu")
	if err != nil {
		return err
	}
	return writeFile(filepath.Join(g.root, "cpu", own, "cgroup.procs"), strconv.Itoa(pid))
}

// Of is the group of process pid in one cgroup v1 controller, from
// /proc/PID/cgroup.
func Of(pid int, controller string) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", fmt.Errorf("read the cgroups of process %d: %w", pid, err)
	}
	// v1 lines: hierarchy-ID:controller,controller:path
	for line := range strings.Lines(string(b)) {
		f := strings.SplitN(strings.TrimSpace(line), ":", 3)
		if len(f) == 3 && slices.Contains(strings.Split(f[1], ","), controller) {
			return f[2], nil
		}
	}
	return "", fmt.Errorf("process %d is in no cgroup v1 %s controller", pid, controller)
}

// Procs lists the processes in the group, other than the caller's (a
// thread of which may be in it, see AddThread).
func (g *Group) Procs() ([]int, error) {
	pids, err := readIDs(filepath.Join(g.dir("cpu"), "cgroup.procs"))
	self := os.Getpid()
	return slices.DeleteFunc(pids, func(p int) bool { return p == self }), err
}

// Tasks lists the threads in the group.
func (g *Group) Tasks() ([]int, error) { return readIDs(filepath.Join(g.dir("cpu"), "tasks")) }

// MemoryUsage is what the group's processes use, page cache included.
func (g *Group) MemoryUsage() (uint64, error) {
	b, err := os.ReadFile(filepath.Join(g.dir("memory"), "memory.usage_in_bytes"))
	if err != nil {
		return 0, fmt.Errorf("read memory usage of cgroup %s: %w", g.rel, err)
	}
	return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
}

// Destroy kills whatever still runs in the group and removes it, then
// removes the now-empty parents up to (not including) the controller root.
// It is idempotent and keeps going on errors, returning them joined.
func (g *Group) Destroy() error {
	var errs []error
	for _, c := range controllers {
		dir := g.dir(c)
		if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err := killAll(dir); err != nil {
			errs = append(errs, err)
		}
		if err := rmdirRetry(dir); err != nil {
			errs = append(errs, err)
			continue
		}
		for p := filepath.Dir(g.rel); p != "." && p != "/"; p = filepath.Dir(p) {
			if os.Remove(filepath.Join(g.root, c, p)) != nil {
				break // not empty: another node still uses it
			}
		}
	}
	return errors.Join(errs...)
}

// killAll sends SIGKILL to every process in dir (and its child groups)
// until none is left, so that the group can be removed.
func killAll(dir string) error {
	deadline := time.Now().Add(5 * time.Second)
	self := os.Getpid()
	for {
		pids, err := readIDs(filepath.Join(dir, "cgroup.procs"))
		if err != nil {
			return err
		}
		// A thread of the caller may be in the group (see AddThread): it
		// leaves by itself; the caller is not one of the group's processes.
		pids = slices.DeleteFunc(pids, func(p int) bool { return p == self })
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v in cgroup %s did not die", pids, dir)
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// rmdirRetry removes a cgroup directory; the kernel refuses (EBUSY) for a
// moment after its last task exited.
func rmdirRetry(dir string) error {
	var err error
	for range 100 {
		if err = os.Remove(dir); err == nil || errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("remove cgroup %s: %w", dir, err)
}

func readIDs(path string) ([]int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	var ids []int
	for _, f := range strings.Fields(string(b)) {
		id, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("read %s: bad id %q", path, f)
		}
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids, nil
}

func writeFile(path, v string) error {
	if err := os.WriteFile(path, []byte(v), 0o644); err != nil {
		return fmt.Errorf("write %s to %s: %w", v, path, err)
	}
	return nil
}
