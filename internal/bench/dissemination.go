// Package bench measures the claims in docs/BENCHMARKS.md: each function
// runs one benchmark and prints its table. `mosaic bench ...` calls them.
package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/sim"
)

// DisseminationConfig selects the simulated cluster sizes.
type DisseminationConfig struct {
	Sizes     []int
	Window    int
	Intervals int
	Seed      int64
	JSON      bool
}

// Dissemination runs the real gossip core in the simulator for each size
// and prints the measured ages of load information beside the analysis.
func Dissemination(w io.Writer, cfg DisseminationConfig) error {
	var results []sim.DisseminationResult
	for _, n := range cfg.Sizes {
		start := time.Now()
		r, err := sim.RunDissemination(sim.DisseminationConfig{Nodes: n, Window: cfg.Window, Intervals: cfg.Intervals, Seed: cfg.Seed})
		if err != nil {
			return fmt.Errorf("simulate %d nodes: %w", n, err)
		}
		if !cfg.JSON {
			fmt.Fprintf(w, "simulated %d nodes × %d intervals in %.1fs\n", n, r.Warmup+r.Intervals, time.Since(start).Seconds())
		}
		results = append(results, r)
	}
	if cfg.JSON {
		return json.NewEncoder(w).Encode(results)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "nodes\twindow\tmean age\tp99 age\tmax age\tmissing\texpected mean\texpected max\tspread (int.)\texpected spread\tB/node/s\tmsgs/node/s\t")
	for _, r := range results {
		// With a window smaller than the cluster, news can be crowded out
		// of the windows before it reaches everyone; say so rather than
		// print a mean of the few trials that finished.
		spread := fmt.Sprintf("%.1f", r.SpreadIntervals)
		if r.SpreadUnfinished > 0 {
			spread = fmt.Sprintf("%d/%d unfinished", r.SpreadUnfinished, r.SpreadTrials+r.SpreadUnfinished)
		}
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%.1f%%\t%s\t%s\t%s\t%.1f\t%.0f\t%.1f\t\n",
			r.Nodes, r.Window, secs(r.MeanAge), secs(r.P99Age), secs(r.MaxAge), 100*r.Missing,
			secs(r.ExpectedMeanAge), secs(r.ExpectedMaxAge), spread, r.ExpectedSpread,
			r.BytesPerNodePerSec, r.MessagesPerNodePerSec)
	}
	return tw.Flush()
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2fs", d.Seconds()) }
