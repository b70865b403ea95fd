package bench

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/api"
	"github.com/mosaic-cluster/mosaic/internal/up"
)

// BalanceConfig describes the live balancing benchmark.
type BalanceConfig struct {
	Capacities []float64 // per node, in cores
	Jobs       int
	Policies   []string
	// Unit is the CPU time of the shortest job on a whole core; job i
	// needs (1 + i mod 6 / 2) units: uneven lengths, 1 to 3.5 units.
	Unit time.Duration
}

// jobProgram is a CPU-bound job of a fixed amount of work (iterations, not
// time: a moved process must not start its clock again).
const jobProgram = "import sys\nx = 0\nfor i in range(int(sys.argv[1])): x += i\nprint(x)"

// Balance starts a cluster of the given capacities, then for each policy
// starts Jobs CPU-bound jobs of uneven lengths from n1 at once and reports
// the makespan, the mean slowdown (time taken / time alone on a core) and
// the moves, beside the ideal makespan (total work / total capacity).
func Balance(ctx context.Context, w io.Writer, cfg BalanceConfig) error {
	cli, err := cliBinary()
	if err != nil {
		return err
	}
	rate, err := calibrate(ctx)
	if err != nil {
		return err
	}
	c, stop, err := startCluster(ctx, up.Config{Nodes: len(cfg.Capacities), Capacities: cfg.Capacities, Out: io.Discard})
	if err != nil {
		return err
	}
	defer stop()
	sock := c.Nodes[0].Socket

	// A job's work is a number of iterations, fixed from the first
	// calibration; what it costs in seconds is measured again around each
	// batch (see batchRate).
	iters := make([]int64, cfg.Jobs)
	var total, capacity float64
	for i := range iters {
		secs := cfg.Unit.Seconds() * (1 + float64(i%6)/2)
		iters[i] = int64(secs * rate)
		total += secs
	}
	for _, cp := range cfg.Capacities {
		capacity += cp
	}
	usable := min(capacity, float64(runtime.NumCPU()))
	fmt.Fprintf(w, "%d jobs of %.1f to %.1f s of CPU (%.0f s in all), started from n1 at once; nodes of %v cores (%.2g in all, %d CPUs here)\n",
		cfg.Jobs, float64(iters[0])/rate, float64(iters[5%len(iters)])/rate, total, cfg.Capacities, capacity, runtime.NumCPU())
	fmt.Fprintf(w, "ideal makespan: total work / min(capacity, CPUs), the work timed on a whole core before and after each batch\n")
	fmt.Fprintf(w, "(speed: how that timing changed from before the batch to after it; the machine's own drift)\n\n")
	fmt.Fprintf(w, "%-11s %9s %9s %9s %9s %7s %7s  %s\n", "policy", "makespan", "ideal", "/ ideal", "slowdown", "moves", "speed", "where they started")
	for _, pol := range cfg.Policies {
		if err := setPolicy(ctx, c, pol); err != nil {
			return err
		}
		if err := sleep(ctx, 4*time.Second); err != nil { // loads back to idle
			return err
		}
		before, err := calibrate(ctx)
		if err != nil {
			return err
		}
		r, err := balanceRun(ctx, cli, sock, iters)
		if err != nil {
			return fmt.Errorf("policy %s: %w", pol, err)
		}
		after, err := calibrate(ctx)
		if err != nil {
			return err
		}
		br := batchRate(before, after)
		var work, slowdown float64 // work: seconds on a whole core, at this batch's speed
		for i, e := range r.ends {
			secs := float64(iters[i]) / br
			work += secs
			slowdown += e.Seconds() / secs
		}
		slowdown /= float64(len(iters))
		ideal := work / usable
		fmt.Fprintf(w, "%-11s %8.1fs %8.1fs %9.2f %9.2f %7d %+6.0f%%  %s\n", pol, r.makespan.Seconds(), ideal, r.makespan.Seconds()/ideal, slowdown, r.moves, 100*(after/before-1), r.started)
	}
	return nil
}

// batchRate is the job program's speed (iterations a second on a whole
// core) for a batch timed between two calibrations: their mean. The
// virtual machines mosaic is measured on change speed by up to half
// within minutes (a job of 20 million iterations took 1.5 s, then 2.7 s
// a minute later, on 12-07), so one calibration at the start made the
// later batches' ideal wrong by as much.
func batchRate(before, after float64) float64 { return (before + after) / 2 }

type balanceResult struct {
	makespan time.Duration
	ends     []time.Duration // each job's, from the batch's start
	moves    int
	started  string
}

func balanceRun(ctx context.Context, cli, sock string, iters []int64) (balanceResult, error) {
	var res balanceResult
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	where := map[string]int{}
	ends := make([]time.Duration, len(iters))
	start := time.Now()
	for i, it := range iters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := strconv.FormatInt(it, 10)
			out, err := exec.CommandContext(ctx, cli, "--socket", sock, "run", "-v", "--", "python3", "-c", jobProgram, n).CombinedOutput()
			mu.Lock()
			defer mu.Unlock()
			ends[i] = time.Since(start)
			if err != nil && firstErr == nil {
				firstErr = fmt.Errorf("job %d: %v: %s", i, err, out)
			}
			if m := runsOn.FindSubmatch(out); m != nil {
				where[string(m[1])]++
			}
		}()
	}
	// The moves: each process's count of migrations, the last seen.
	done := make(chan struct{})
	moves := map[string]int{}
	go func() {
		defer close(done)
		for {
			var ps []api.ProcInfo
			if api.Call(ctx, sock, api.OpPs, api.PsArgs{All: true}, &ps) == nil {
				mu.Lock()
				for _, p := range ps {
					moves[p.ID] = max(moves[p.ID], p.Migrations)
				}
				mu.Unlock()
			}
			if finished(&mu, ends) {
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
	}()
	wg.Wait()
	<-done
	if firstErr != nil {
		return res, firstErr
	}
	for _, e := range ends {
		res.makespan = max(res.makespan, e)
	}
	res.ends = ends
	for _, m := range moves {
		res.moves += m
	}
	res.started = perNode(where)
	return res, nil
}

// perNode says how many each node has, in node order ("n1 3, n2 1"),
// leaving out those with none.
func perNode(count map[string]int) string {
	var names []string
	for n, k := range count {
		if k > 0 {
			names = append(names, n)
		}
	}
	// n2 before n10.
	slices.SortFunc(names, func(a, b string) int { return cmp.Or(cmp.Compare(len(a), len(b)), strings.Compare(a, b)) })
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = fmt.Sprintf("%s %d", n, count[n])
	}
	return strings.Join(parts, ", ")
}

// setPolicy switches every node of c to a policy.
func setPolicy(ctx context.Context, c *up.Cluster, pol string) error {
	for _, n := range c.Nodes {
		if err := api.Call(ctx, n.Socket, api.OpPolicy, api.PolicyArgs{Policy: pol}, nil); err != nil {
			return fmt.Errorf("set policy %s on %s: %w", pol, n.Name, err)
		}
	}
	return nil
}

func finished(mu *sync.Mutex, ends []time.Duration) bool {
	mu.Lock()
	defer mu.Unlock()
	for _, e := range ends {
		if e == 0 {
			return false
		}
	}
	return true
}

// calibrate measures the job program's iterations per second on a whole
// core here: the median of three runs of about a second.
func calibrate(ctx context.Context) (float64, error) {
	const n = 10_000_000
	var rates [3]float64
	for i := range rates {
		start := time.Now()
		if out, err := exec.CommandContext(ctx, "python3", "-c", jobProgram, strconv.Itoa(n)).CombinedOutput(); err != nil {
			return 0, fmt.Errorf("calibrate the job (python3): %v: %s", err, out)
		}
		rates[i] = n / time.Since(start).Seconds()
	}
	slices.Sort(rates[:])
	return rates[1], nil
}
