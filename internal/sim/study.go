package sim

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/policy"
)

// This file reproduces the study of Amir, Awerbuch, Barak, Borgstrom and
// Keren, "An Opportunity Cost Approach for Job Assignment in a Scalable
// Computing Cluster" (IEEE TPDS 11(7), 2000): a stream of jobs with
// heavy-tailed CPU demand and known memory needs arrives at a small
// heterogeneous cluster, and each policy of internal/policy places (and
// perhaps moves) them; the measure is the jobs' slowdown. The policies are
// the daemon's own code, and each simulated node decides on what the real
// gossip cores would have told it (an AgeTrace), unless Omniscient.

// Machine is one simulated node.
type Machine struct {
	Speed float64 // relative to the fastest (1)
	MemMB float64
}

// PaperMachines is the cluster of the study: 3 Pentium Pro 200 MHz with
// 64 MB, 2 Pentium 133 MHz with 32 MB, a 90 MHz laptop with 24 MB.
func PaperMachines() []Machine {
	return []Machine{{1, 64}, {1, 64}, {1, 64}, {133.0 / 200, 32}, {133.0 / 200, 32}, {90.0 / 200, 24}}
}

// StudyConfig describes a study. Zero values take the study's figures.
type StudyConfig struct {
	Machines []Machine // default PaperMachines
	Policies []string  // default policy.Names()
	Runs     int       // scenarios (default 3,000)
	Seed     uint64
	Horizon  float64 // seconds during which jobs arrive (default 10,000)
	// Arrival is the mean time between jobs, exponentially distributed
	// (default 10 s).
	Arrival float64
	// Parallel is the share of jobs that are parallel (default 0.05; a
	// negative value means none).
	Parallel float64
	// MaxCPU bounds a job's (component's) CPU demand in seconds; 0 leaves
	// it unbounded as in the paper (its mean is then infinite).
	MaxCPU float64
	// MaxMem bounds a job's memory need in MB; 0 leaves it unbounded as
	// in the paper (1% of jobs then need more than the largest machine).
	MaxMem float64
	// Thrash is how much slower every job of a machine runs while their
	// memory exceeds the machine's (default 10).
	Thrash float64
	// MoveCost is the seconds a migrating job spends in transit, running
	// nowhere (default 0, as in the study).
	MoveCost float64
	// LOfView has the opportunity-cost policies take L from the loads in
	// the node's view of the moment, instead of the largest load it has
	// seen since the run began (the paper's rule, the default): a
	// departure, for comparison (docs/BENCHMARKS.md).
	LOfView bool
	// Omniscient gives every node the true current state of every node,
	// instead of what gossip would have told it.
	Omniscient bool
	// Interval is the load dissemination interval (default 1 s), Period
	// the time between a node's balancing decisions (default 1 s).
	Interval, Period time.Duration
	Workers          int // parallel runs (default GOMAXPROCS)
}

// PolicyResult is one policy's figures over all runs.
type PolicyResult struct {
	Policy string `json:"policy"`
	// MeanSlowdown is the mean over all jobs of all runs (the paper's
	// "by job"); CI95 its 95% confidence half-width.
	MeanSlowdown float64 `json:"mean_slowdown"`
	CI95         float64 `json:"ci95"`
	// ByRun is the mean of the runs' mean slowdowns, with its half-width.
	ByRun     float64 `json:"by_run"`
	ByRunCI95 float64 `json:"by_run_ci95"`
	Jobs      int     `json:"jobs"`
	// MovesPerJob is the mean number of migrations of a job.
	MovesPerJob float64 `json:"moves_per_job"`
	// VsMosix is the mean over runs of this policy's mean slowdown minus
	// mosix's on the same run (the job streams are the same), with its
	// 95% half-width: a paired comparison, much tighter than the two
	// CIs side by side. Absent when mosix did not run.
	VsMosix     *float64 `json:"vs_mosix,omitempty"`
	VsMosixCI95 *float64 `json:"vs_mosix_ci95,omitempty"`
	// Runs holds each run's mean slowdown, in run order.
	Runs []float64 `json:"-"`
}

// StudyResult is a whole study.
type StudyResult struct {
	Config   StudyConfig
	Policies []PolicyResult
	MaxAge   time.Duration // the oldest load report a node decided on (0 when omniscient)
	Elapsed  time.Duration
}

func (c StudyConfig) withDefaults() (StudyConfig, error) {
	if c.Machines == nil {
		c.Machines = PaperMachines()
	}
	if c.Policies == nil {
		c.Policies = policy.Names()
	}
	if c.Runs == 0 {
		c.Runs = 3000
	}
	if c.Horizon == 0 {
		c.Horizon = 10000
	}
	if c.Arrival == 0 {
		c.Arrival = 10
	}
	if c.Parallel == 0 {
		c.Parallel = 0.05
	} else if c.Parallel < 0 {
		c.Parallel = 0
	}
	if c.Thrash == 0 {
		c.Thrash = 10
	}
	if c.Interval == 0 {
		c.Interval = time.Second
	}
	if c.Period == 0 {
		c.Period = time.Second
	}
	if c.Workers <= 0 {
		c.Workers = runtime.GOMAXPROCS(0)
	}
	switch {
	case len(c.Machines) < 2:
		return c, errors.New("study: give at least 2 machines")
	case c.Runs < 1:
		return c, fmt.Errorf("study: %d runs; run at least 1", c.Runs)
	case c.Horizon < 0 || c.Arrival < 0 || c.MaxCPU < 0 || c.MaxMem < 0 || c.MoveCost < 0 || c.Thrash < 1 || c.Parallel > 1:
		return c, errors.New("study: horizon, arrival, CPU bound and move cost must not be negative, thrash at least 1, parallel share at most 1")
	case c.Interval < time.Millisecond || c.Period < time.Millisecond:
		return c, errors.New("study: interval and period must be at least a millisecond")
	}
	for i, m := range c.Machines {
		if m.Speed <= 0 || m.MemMB <= 0 {
			return c, fmt.Errorf("study: machine %d has speed %v and %v MB; both must be positive", i, m.Speed, m.MemMB)
		}
	}
	for _, name := range c.Policies {
		if _, err := policy.New(name); err != nil {
			return c, err
		}
	}
	return c, nil
}

// traces is how many gossip traces a study records; runs use them in turn,
// each from a random step.
const traces = 4

// RunStudy runs every policy over the same Runs job streams and returns
// their figures. It is a pure function of cfg (Workers aside, which only
// changes how long it takes).
func RunStudy(cfg StudyConfig) (StudyResult, error) {
	start := time.Now()
	cfg, err := cfg.withDefaults()
	if err != nil {
		return StudyResult{}, err
	}
	var ts []*AgeTrace
	res := StudyResult{Config: cfg}
	if !cfg.Omniscient {
		for i := range traces {
			tr, err := RecordAges(DisseminationConfig{Nodes: len(cfg.Machines), Interval: cfg.Interval, Intervals: 1000, Seed: int64(cfg.Seed)*traces + int64(i)})
			if err != nil {
				return StudyResult{}, err
			}
			ts = append(ts, tr)
			res.MaxAge = max(res.MaxAge, tr.MaxAge())
		}
	}
	type runOut struct {
		sum   []float64 // per policy: sum of slowdowns
		moves []int
		jobs  int
	}
	outs := make([]runOut, cfg.Runs)
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(cfg.Workers, cfg.Runs) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var s study
			for r := range next {
				jobs := cfg.jobStream(r)
				ids := make([]string, len(jobs))
				for i := range ids {
					ids[i] = strconv.Itoa(i)
				}
				o := runOut{jobs: len(jobs), sum: make([]float64, len(cfg.Policies)), moves: make([]int, len(cfg.Policies))}
				for pi, name := range cfg.Policies {
					p, _ := policy.New(name)
					var tr *AgeTrace
					if ts != nil {
						tr = ts[r%traces]
					}
					o.sum[pi], o.moves[pi] = s.run(cfg, p, jobs, ids, tr, cfg.Seed*1_000_003+uint64(r))
				}
				outs[r] = o
			}
		}()
	}
	// The runs of one trace go together: the workers then share it in
	// cache (each run sweeps its trace ten times). Each run's result has
	// its place, whatever the order.
	for k := range traces {
		for r := k; r < cfg.Runs; r += traces {
			next <- r
		}
	}
	close(next)
	wg.Wait()

	for pi, name := range cfg.Policies {
		pr := PolicyResult{Policy: name, Runs: make([]float64, cfg.Runs)}
		var sum float64
		var moves int
		for r, o := range outs {
			sum += o.sum[pi]
			pr.Jobs += o.jobs
			moves += o.moves[pi]
			pr.Runs[r] = o.sum[pi] / float64(o.jobs)
		}
		pr.MeanSlowdown = sum / float64(pr.Jobs)
		pr.MovesPerJob = float64(moves) / float64(pr.Jobs)
		pr.ByRun, pr.ByRunCI95 = meanCI(pr.Runs)
		// The by-job mean is a ratio of sums over runs: its variance by
		// the delta method on the runs.
		if n := float64(cfg.Runs); n > 1 {
			meanJobs := float64(pr.Jobs) / n
			var ss float64
			for _, o := range outs {
				d := o.sum[pi] - pr.MeanSlowdown*float64(o.jobs)
				ss += d * d
			}
			pr.CI95 = 1.96 * math.Sqrt(ss/(n-1)/n) / meanJobs
		}
		res.Policies = append(res.Policies, pr)
	}
	if m := slices.IndexFunc(res.Policies, func(p PolicyResult) bool { return p.Policy == "mosix" }); m >= 0 {
		for i := range res.Policies {
			d := make([]float64, cfg.Runs)
			for r := range d {
				d[r] = res.Policies[i].Runs[r] - res.Policies[m].Runs[r]
			}
			mean, ci := meanCI(d)
			res.Policies[i].VsMosix, res.Policies[i].VsMosixCI95 = &mean, &ci
		}
	}
	res.Elapsed = time.Since(start)
	return res, nil
}

func meanCI(xs []float64) (mean, ci float64) {
	for _, x := range xs {
		mean += x
	}
	n := float64(len(xs))
	mean /= n
	if len(xs) < 2 {
		return mean, 0
	}
	var ss float64
	for _, x := range xs {
		ss += (x - mean) * (x - mean)
	}
	return mean, 1.96 * math.Sqrt(ss/(n-1)/n)
}

// job is one process of the stream (a parallel job is several).
type job struct {
	arrive float64
	home   int32   // the node it is started from
	cpu    float64 // seconds on the fastest machine
	mem    float64 // MB
}

// jobStream is run r's jobs, in arrival order: the same for every policy.
func (c StudyConfig) jobStream(r int) []job {
	rng := rand.New(rand.NewPCG(c.Seed, uint64(r)))
	// open draws from (0, 1): r and m must not be 0.
	open := func() float64 {
		for {
			if x := rng.Float64(); x > 0 {
				return x
			}
		}
	}
	bound := func(x float64) float64 {
		if c.MaxCPU > 0 {
			return min(x, c.MaxCPU)
		}
		return x
	}
	var jobs []job
	for t := rng.ExpFloat64() * c.Arrival; t < c.Horizon; t += rng.ExpFloat64() * c.Arrival {
		home := int32(rng.IntN(len(c.Machines)))
		mem := 64 / (100 * open()) // (1/m)% of 64 MB
		if c.MaxMem > 0 {
			mem = min(mem, c.MaxMem)
		}
		if rng.Float64() < c.Parallel {
			parts := 1 + rng.IntN(20)
			cpu := bound(20 / open() / float64(parts))
			for range parts {
				jobs = append(jobs, job{arrive: t, home: home, cpu: cpu, mem: mem})
			}
			continue
		}
		jobs = append(jobs, job{arrive: t, home: home, cpu: bound(2 / open()), mem: mem})
	}
	return jobs
}
