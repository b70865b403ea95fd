package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"time"
)

// UpConfig describes the start-up benchmark.
type UpConfig struct {
	Nodes  int
	Runs   int
	NetNS  bool
	Binary string // the mosaic CLI
}

// Up times `mosaic up --nodes N` as a user sees it: from starting the
// command to its "cluster up" line, which it prints once every node sees
// every node alive. Each run makes a fresh cluster and stops it.
func Up(ctx context.Context, w io.Writer, cfg UpConfig) error {
	var times []time.Duration
	for i := range cfg.Runs {
		dir, err := os.MkdirTemp("", "mosaic-bench-up-")
		if err != nil {
			return err
		}
		args := []string{"up", "--nodes", fmt.Sprint(cfg.Nodes), "--dir", dir}
		if cfg.NetNS {
			args = append(args, "--netns")
		}
		cmd := exec.CommandContext(ctx, cfg.Binary, args...)
		out, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		start := time.Now()
		if err := cmd.Start(); err != nil {
			return err
		}
		var took time.Duration
		sc := bufio.NewScanner(out)
		var lines []string
		for sc.Scan() {
			lines = append(lines, sc.Text())
			if strings.HasPrefix(sc.Text(), "cluster up") {
				took = time.Since(start)
				break
			}
		}
		cmd.Process.Signal(syscall.SIGINT)
		go io.Copy(io.Discard, out)
		werr := cmd.Wait()
		os.RemoveAll(dir)
		if took == 0 {
			return fmt.Errorf("run %d: mosaic up did not come up (%v): %s", i+1, werr, strings.Join(lines, "\n"))
		}
		fmt.Fprintf(w, "run %d: %d nodes alive after %s\n", i+1, cfg.Nodes, took.Round(time.Millisecond))
		times = append(times, took)
	}
	slices.Sort(times)
	fmt.Fprintf(w, "mosaic up --nodes %d to all alive: median %s, min %s, max %s over %d runs\n",
		cfg.Nodes, times[len(times)/2].Round(time.Millisecond), times[0].Round(time.Millisecond), times[len(times)-1].Round(time.Millisecond), len(times))
	return nil
}
