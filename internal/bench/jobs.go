package bench

import (
	"context"
	"fmt"
	"github.com/mosaic-cluster/mosaic/internal/up"
	"io"
	"os/exec"
	"regexp"
	"sync"
	"time"
)

// JobsConfig describes the many-short-jobs benchmark.
type JobsConfig struct {
	Jobs     int
	Nodes    int
	Parallel int
	Work     string // the job: a shell command line
}

var runsOn = regexp.MustCompile(`runs on (\S+) `)

// Jobs launches many short jobs from one node of a local cluster, at most
// Parallel at a time, and reports the total time and where they ran; then
// the same jobs all on the home node (--here) and with plain sh, for
// comparison.
func Jobs(ctx context.Context, w io.Writer, cfg JobsConfig) error {
	cli, err := cliBinary()
	if err != nil {
		return err
	}
	c, stop, err := startCluster(ctx, up.Config{Nodes: cfg.Nodes, Out: w})
	if err != nil {
		return err
	}
	defer stop()
	sock := c.Nodes[0].Socket
	batch := func(argv func(i int) []string) (time.Duration, map[string]int, error) {
		var mu sync.Mutex
		where := map[string]int{}
		var firstErr error
		sem := make(chan struct{}, cfg.Parallel)
		var wg sync.WaitGroup
		start := time.Now()
		for i := range cfg.Jobs {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				a := argv(i)
				out, err := exec.CommandContext(ctx, a[0], a[1:]...).CombinedOutput()
				mu.Lock()
				defer mu.Unlock()
				if err != nil && firstErr == nil {
					firstErr = fmt.Errorf("job %d: %v: %s", i, err, out)
				}
				if m := runsOn.FindSubmatch(out); m != nil {
					where[string(m[1])]++
				}
			}()
		}
		wg.Wait()
		return time.Since(start), where, firstErr
	}
	report := func(name string, d time.Duration, where map[string]int) {
		fmt.Fprintf(w, "%-22s %4d jobs in %6.2fs  (%5.1f jobs/s)", name, cfg.Jobs, d.Seconds(), float64(cfg.Jobs)/d.Seconds())
		if len(where) > 0 {
			fmt.Fprint(w, "  ran on: ", perNode(where))
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "job: sh -c %q, %d at a time, launched from n1\n", cfg.Work, cfg.Parallel)
	d, where, err := batch(func(int) []string { return []string{cli, "--socket", sock, "run", "-v", "--", "sh", "-c", cfg.Work} })
	if err != nil {
		return err
	}
	report("mosaic run (placed)", d, where)
	d, where, err = batch(func(int) []string {
		return []string{cli, "--socket", sock, "run", "-v", "--here", "--", "sh", "-c", cfg.Work}
	})
	if err != nil {
		return err
	}
	report("mosaic run --here", d, where)
	d, _, err = batch(func(int) []string { return []string{"sh", "-c", cfg.Work} })
	if err != nil {
		return err
	}
	report("sh, no mosaic", d, nil)
	return nil
}
