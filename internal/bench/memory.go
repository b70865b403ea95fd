package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/api"
	"github.com/mosaic-cluster/mosaic/internal/cgroup"
	"github.com/mosaic-cluster/mosaic/internal/up"
)

// MemoryConfig describes the memory ushering benchmark.
type MemoryConfig struct {
	Nodes    int
	Memory   uint64 // what n1 offers; the others offer the machine's
	Jobs     int
	Grow     uint64 // each job's memory once grown
	Policies []string
}

// growStep is how a job grows: this much every growEvery, then it holds
// what it has for holdFor and ends.
const (
	growStep  = 4 << 20
	growEvery = 500 * time.Millisecond
	holdFor   = 3 * time.Second
)

// growProgram grows to argv[1] bytes in steps, touching every page, holds
// it, and says how much it had.
const growProgram = `import sys, time
target, step, every, hold = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
held = []
while len(held) * step < target:
    held.append(bytearray(step))
    time.sleep(every)
time.sleep(hold)
print("held", len(held) * step, flush=True)`

// Memory starts a cluster whose first node offers cfg.Memory, then for
// each policy starts jobs on that node (--here: placement cannot see how
// much they will grow to) that together outgrow it, and reports the
// node's peak memory against what it offers, how long its processes held
// more than it offers (where a real node of that size would page), the
// moves, and when the first came.
func Memory(ctx context.Context, w io.Writer, cfg MemoryConfig) error {
	cli, err := cliBinary()
	if err != nil {
		return err
	}
	mems := make([]uint64, cfg.Nodes)
	mems[0] = cfg.Memory
	c, stop, err := startCluster(ctx, up.Config{Nodes: cfg.Nodes, Memories: mems, Out: io.Discard})
	if err != nil {
		return err
	}
	defer stop()
	sock := c.Nodes[0].Socket
	group := cgroup.Open(cgroup.DefaultRoot, filepath.Join("mosaic", c.ID(), c.Nodes[0].Name))

	fmt.Fprintf(w, "%d jobs started on n1 (--here), each growing by %d MiB every %v to %d MiB (%d MiB in all), then holding it %v;\n",
		cfg.Jobs, growStep>>20, growEvery, cfg.Grow>>20, uint64(cfg.Jobs)*cfg.Grow>>20, holdFor)
	fmt.Fprintf(w, "n1 offers %d MiB, the %d others the machine's; n1's use is its memory group's, sampled every 20 ms\n", cfg.Memory>>20, cfg.Nodes-1)
	fmt.Fprintf(w, "(moves: all the policy made; for memory: MOSIX's ushering, the first at that time from the start, with n1's use as the policy read it)\n\n")
	fmt.Fprintf(w, "%-8s %10s %8s %10s %6s %7s %18s %9s  %s\n", "policy", "n1 peak", "/ offer", "over it", "moves", "memory", "first for memory", "makespan", "ended on")
	for _, pol := range cfg.Policies {
		if err := setPolicy(ctx, c, pol); err != nil {
			return err
		}
		if err := sleep(ctx, 3*time.Second); err != nil { // what the batch before left is gone
			return err
		}
		logs := make([]int64, len(c.Nodes))
		for i, n := range c.Nodes {
			if st, err := os.Stat(n.Log); err == nil {
				logs[i] = st.Size()
			}
		}
		start := time.Now()
		r, err := memoryRun(ctx, cli, sock, group, cfg)
		if err != nil {
			return fmt.Errorf("policy %s: %w", pol, err)
		}
		var why policyMoves
		for i, n := range c.Nodes {
			why.read(n.Log, logs[i], start)
		}
		ushered := "-"
		if why.memory > 0 {
			ushered = fmt.Sprintf("%.1fs, %s", why.firstMemory.Seconds(), why.firstMemoryUse)
		}
		fmt.Fprintf(w, "%-8s %7d MiB %7.0f%% %9.1fs %6d %7d %18s %8.1fs  %s\n", pol, r.peak>>20, 100*float64(r.peak)/float64(cfg.Memory),
			r.over.Seconds(), r.moves, why.memory, ushered, r.makespan.Seconds(), r.endedOn)
	}
	return nil
}

type memoryResult struct {
	peak     uint64        // n1's most used
	over     time.Duration // how long n1 held more than it offers
	moves    int
	makespan time.Duration
	endedOn  string
}

func memoryRun(ctx context.Context, cli, sock string, group *cgroup.Group, cfg MemoryConfig) (memoryResult, error) {
	var res memoryResult
	args := []string{strconv.FormatUint(cfg.Grow, 10), strconv.Itoa(growStep), strconv.FormatFloat(growEvery.Seconds(), 'f', -1, 64),
		strconv.FormatFloat(holdFor.Seconds(), 'f', -1, 64)}
	want := fmt.Sprintf("held %d\n", (cfg.Grow+growStep-1)/growStep*growStep)
	var wg sync.WaitGroup
	errs := make([]error, cfg.Jobs)
	start := time.Now()
	for i := range cfg.Jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := exec.CommandContext(ctx, cli, append([]string{"--socket", sock, "run", "--here", "--", "python3", "-c", growProgram}, args...)...).CombinedOutput()
			switch {
			case err != nil:
				errs[i] = fmt.Errorf("job %d: %v: %s", i, err, out)
			case string(out) != want:
				errs[i] = fmt.Errorf("job %d said %q, want %q", i, out, want)
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()

	moves, where := map[string]int{}, map[string]string{}
	sample := time.NewTicker(20 * time.Millisecond)
	defer sample.Stop()
	last, nextPs := time.Now(), time.Now()
	for running := true; running; {
		select {
		case <-done:
			running = false
		case <-ctx.Done():
			<-done
			return res, ctx.Err()
		case now := <-sample.C:
			used, err := group.MemoryUsage()
			if err == nil {
				res.peak = max(res.peak, used)
				if used > cfg.Memory {
					res.over += now.Sub(last)
				}
			}
			last = now
			if now.Before(nextPs) {
				continue
			}
			nextPs = now.Add(200 * time.Millisecond)
			var ps []api.ProcInfo
			if api.Call(ctx, sock, api.OpPs, api.PsArgs{All: true}, &ps) != nil {
				continue
			}
			for _, p := range ps {
				moves[p.ID] = max(moves[p.ID], p.Migrations)
				where[p.ID] = p.Node
			}
		}
	}
	res.makespan = time.Since(start)
	for _, err := range errs {
		if err != nil {
			return res, err
		}
	}
	for _, m := range moves {
		res.moves += m
	}
	count := map[string]int{}
	for _, n := range where {
		count[n]++
	}
	res.endedOn = perNode(count)
	return res, nil
}

// policyMoves counts the moves the nodes' policies logged, and when the
// first for memory came.
type policyMoves struct {
	memory         int
	firstMemory    time.Duration // since the batch began
	firstMemoryUse string        // n1's use then, as the policy read it
}

// movedLine is a daemon's log line for a policy's move (slog's text form).
var movedLine = regexp.MustCompile(`^time=(\S+) .*msg="policy moved a process" .*reason="memory (\d+%) used here"`)

// read counts the moves for memory in a node's log from offset on.
func (m *policyMoves) read(log string, offset int64, start time.Time) {
	f, err := os.Open(log)
	if err != nil {
		return
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		sub := movedLine.FindStringSubmatch(sc.Text())
		if sub == nil {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, sub[1])
		if err != nil {
			continue
		}
		m.memory++
		if d := at.Sub(start); m.memory == 1 || d < m.firstMemory {
			m.firstMemory, m.firstMemoryUse = d, sub[2]
		}
	}
}
