package load

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/cgroup"
)

// Probe reads a node's instantaneous state from the system.
type Probe interface {
	// RunQueue is the number of runnable tasks that count for this node.
	RunQueue() (int, error)
	// Procs is the number of processes the node runs.
	Procs() (int, error)
	// Memory returns the memory the node offers and how much of it is free.
	Memory() (total, free uint64, err error)
}

// MachineProbe counts the whole machine, as MOSIX does for a node that has
// a machine to itself.
type MachineProbe struct {
	MemCap uint64 // if set, offer at most this much memory
}

// RunQueue reads procs_running from /proc/stat, less the reading thread.
func (p MachineProbe) RunQueue() (int, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, fmt.Errorf("read run queue: %w", err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "procs_running "); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				return 0, fmt.Errorf("parse procs_running %q: %w", v, err)
			}
			return max(n-1, 0), nil
		}
	}
	return 0, fmt.Errorf("no procs_running in /proc/stat")
}

// Procs counts every process on the machine.
func (p MachineProbe) Procs() (int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, fmt.Errorf("count processes: %w", err)
	}
	n := 0
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err == nil {
			n++
		}
	}
	return n, nil
}

// Memory is MemAvailable of /proc/meminfo, capped.
func (p MachineProbe) Memory() (uint64, uint64, error) {
	total, avail, err := meminfo()
	if err != nil {
		return 0, 0, err
	}
	if p.MemCap > 0 && p.MemCap < total {
		used := total - avail
		total = p.MemCap
		avail = 0
		if used < total {
			avail = total - used
		}
	}
	return total, avail, nil
}

// GroupProbe counts only the processes in the node's control group: the
// mode for several nodes sharing one machine, where the machine's run
// queue would make every node report the same load.
type GroupProbe struct {
	Group  *cgroup.Group
	MemCap uint64 // memory the node offers; 0 = the machine's
	// Helper, if set, tells the node's own helper processes (the idle
	// init of each process's PID namespace), which Procs leaves out.
	Helper func(pid int) bool
}

// RunQueue counts the group's threads that are runnable.
func (p GroupProbe) RunQueue() (int, error) {
	tids, err := p.Group.Tasks()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, tid := range tids {
		if runnable(tid) {
			n++
		}
	}
	return n, nil
}

// Procs counts the processes in the group, but for helpers.
func (p GroupProbe) Procs() (int, error) {
	pids, err := p.Group.Procs()
	n := 0
	for _, pid := range pids {
		if p.Helper == nil || !p.Helper(pid) {
			n++
		}
	}
	return n, err
}

// Memory offers MemCap (or the machine's memory) less what the group uses,
// and never more than the machine has available.
func (p GroupProbe) Memory() (uint64, uint64, error) {
	total, avail, err := meminfo()
	if err != nil {
		return 0, 0, err
	}
	if p.MemCap == 0 {
		return total, avail, nil
	}
	used, err := p.Group.MemoryUsage()
	if err != nil {
		return 0, 0, err
	}
	free := uint64(0)
	if used < p.MemCap {
		free = p.MemCap - used
	}
	return p.MemCap, min(free, avail), nil
}

// runnable reports whether a thread is in state R. A thread that vanished
// meanwhile is not.
func runnable(tid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(tid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses and may
	// itself contain spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && b[i+2] == 'R'
}

func meminfo() (total, avail uint64, err error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, 0, fmt.Errorf("read memory: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		v, err := strconv.ParseUint(fields[1], 10, 64)
		if err != nil {
			continue
		}
		switch fields[0] {
		case "MemTotal:":
			total = v * 1024
		case "MemAvailable:":
			avail = v * 1024
		}
	}
	if total == 0 {
		return 0, 0, fmt.Errorf("no MemTotal in /proc/meminfo")
	}
	return total, avail, sc.Err()
}

// Cores is the number of CPUs this process may run on.
func Cores() int { return runtime.NumCPU() }

// referenceOpsPerSec calibrates MeasureSpeed: the rate of the loop below on
// one core of the machine mosaic was first measured on (an Intel Xeon VM,
// 2026) is speed 1.0.
const referenceOpsPerSec = 4.6e8

// MeasureSpeed runs a fixed integer workload on one core for about d and
// returns its speed relative to the reference. It measures scalar integer
// throughput only, which is what MOSIX's speed did; configure --speed where
// another measure suits better.
func MeasureSpeed(d time.Duration) float64 {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var ops uint64
	x := uint64(88172645463325252)
	start := time.Now()
	for time.Since(start) < d {
		for range 1 << 16 {
			// xorshift64: a dependent chain the compiler cannot fold.
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
		}
		ops += 1 << 16
	}
	el := time.Since(start)
	if x == 0 { // keep x live
		ops++
	}
	return float64(ops) / el.Seconds() / referenceOpsPerSec
}
