package bench

import (
	"context"
	"fmt"
	"github.com/mosaic-cluster/mosaic/internal/up"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"
)

// RelayConfig describes the stdout-throughput benchmark.
type RelayConfig struct {
	Bytes int64
	Runs  int
}

// cliBinary is the mosaic CLI, installed beside mosaicd (which runs this).
func cliBinary() (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	p := filepath.Join(filepath.Dir(self), "mosaic")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("the mosaic CLI is not beside %s: %w", self, err)
	}
	return p, nil
}

// Relay measures how fast a program's stdout comes home: a program writing
// Bytes as fast as it can (head -c N /dev/zero), its output going to
// /dev/null at home, run here through the relay and on another node, beside
// the same bytes through a local pipe (head | cat > /dev/null).
func Relay(ctx context.Context, w io.Writer, cfg RelayConfig) error {
	cli, err := cliBinary()
	if err != nil {
		return err
	}
	c, stop, err := startCluster(ctx, up.Config{Nodes: 2, Out: w})
	if err != nil {
		return err
	}
	defer stop()
	n := fmt.Sprint(cfg.Bytes)
	cases := []struct {
		name string
		argv []string
	}{
		{"local pipe (head | cat)", []string{"sh", "-c", "head -c " + n + " /dev/zero | cat > /dev/null"}},
		{"mosaic run --here", []string{cli, "--socket", c.Nodes[0].Socket, "run", "--here", "--", "head", "-c", n, "/dev/zero"}},
		{"mosaic run --on n2", []string{cli, "--socket", c.Nodes[0].Socket, "run", "--on", "n2", "--", "head", "-c", n, "/dev/zero"}},
	}
	fmt.Fprintf(w, "%-26s %12s %12s\n", "path", "median MB/s", "best MB/s")
	// Runs take turns, one of each path a round, so that a change in this
	// shared machine's speed falls on every path alike.
	rates := make([][]float64, len(cases))
	for range cfg.Runs {
		for i, tc := range cases {
			cmd := exec.CommandContext(ctx, tc.argv[0], tc.argv[1:]...)
			devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			cmd.Stdout = devnull
			start := time.Now()
			err = cmd.Run()
			el := time.Since(start)
			devnull.Close()
			if err != nil {
				return fmt.Errorf("%s: %w", tc.name, err)
			}
			rates[i] = append(rates[i], float64(cfg.Bytes)/el.Seconds()/1e6)
		}
	}
	var local float64
	for i, tc := range cases {
		r := rates[i]
		slices.Sort(r)
		med := r[len(r)/2]
		if local == 0 {
			local = med
		}
		fmt.Fprintf(w, "%-26s %12.0f %12.0f   %3.0f%% of the local pipe\n", tc.name, med, r[len(r)-1], 100*med/local)
	}
	return nil
}
