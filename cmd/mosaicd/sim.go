package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mosaic-cluster/mosaic/internal/policy"
	"github.com/mosaic-cluster/mosaic/internal/sim"
)

func newSimCmd() *cobra.Command {
	var (
		cfg        sim.StudyConfig
		machines   string
		policies   string
		asJSON     bool
		plot       string
		seed       uint64
		omniscient bool
	)
	cmd := &cobra.Command{
		Use:   "sim [flags]",
		Short: "Compare the placement and migration policies in a simulated cluster",
		Long: `Run the job assignment study of Amir, Awerbuch, Barak, Borgstrom and Keren
(IEEE TPDS 11(7), 2000) with mosaic's own policies: the same stream of jobs
(heavy-tailed CPU demand, known memory needs) arrives at a simulated cluster
under each policy, and each node decides on the load reports the real gossip
cores would have given it. Prints each policy's mean slowdown with its 95%
confidence interval, beside the published figure.

Policies: ` + strings.Join(policy.Names(), ", ") + `.
Machines: SPEED:MEMORY_MB,... (speed relative to the fastest); the default is
the paper's 3 x 1:64, 2 x 0.665:32, 1 x 0.45:24.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if machines != "" {
				ms, err := parseMachines(machines)
				if err != nil {
					return err
				}
				cfg.Machines = ms
			}
			if policies != "" {
				cfg.Policies = strings.Split(policies, ",")
			}
			cfg.Seed, cfg.Omniscient = seed, omniscient
			switch {
			case cfg.Runs < 1:
				return fmt.Errorf("--runs %d: run at least one scenario", cfg.Runs)
			case cfg.Horizon <= 0 || cfg.Arrival <= 0:
				return errors.New("--horizon and --arrival must be positive (seconds)")
			case cfg.Thrash < 1:
				return errors.New("--thrash must be at least 1 (1: no slowdown when memory is exceeded)")
			}
			// The plot's file first: a bad path is said before minutes of
			// simulation, not after.
			var plotFile *os.File
			if plot != "" {
				f, err := os.Create(plot)
				if err != nil {
					return fmt.Errorf("write the plot: %w", err)
				}
				plotFile = f
			}
			res, err := sim.RunStudy(cfg)
			if err == nil && plotFile != nil {
				err = sim.WriteSVG(plotFile, res)
				if cerr := plotFile.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					err = fmt.Errorf("write the plot %s: %w", plot, err)
				}
			}
			if err != nil {
				if plotFile != nil {
					plotFile.Close()
					os.Remove(plot)
				}
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				for _, p := range res.Policies {
					if err := enc.Encode(p); err != nil {
						return err
					}
				}
				return nil
			}
			info := "gossip (real cores, oldest report used " + res.MaxAge.Round(time.Millisecond).String() + ")"
			if res.Config.Omniscient {
				info = "omniscient"
			}
			fmt.Fprintf(out, "%d runs, %d machines, load information: %s, %v\n\n", res.Config.Runs, len(res.Config.Machines), info, res.Elapsed.Round(time.Millisecond))
			var mosix float64
			for _, p := range res.Policies {
				if p.Policy == "mosix" {
					mosix = p.MeanSlowdown
				}
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintln(tw, "policy\tslowdown by job\t95% CI\tby run\t/ mosix\t- mosix, paired by run\tmoves/job\tpublished\tpublished / mosix\t")
			pubMosix, _ := sim.Published("mosix", false)
			for _, p := range res.Policies {
				ratio, pub, pubRatio := "-", "-", "-"
				if mosix > 0 {
					ratio = fmt.Sprintf("%.3f", p.MeanSlowdown/mosix)
				}
				if v, ok := sim.Published(p.Policy, false); ok {
					pub, pubRatio = fmt.Sprintf("%.3f", v), fmt.Sprintf("%.3f", v/pubMosix)
				}
				diff := "-"
				if p.VsMosix != nil {
					diff = fmt.Sprintf("%+.3f ±%.3f", *p.VsMosix, *p.VsMosixCI95)
				}
				fmt.Fprintf(tw, "%s\t%.3f\t±%.3f\t%.3f\t%s\t%s\t%.2f\t%s\t%s\t\n", p.Policy, p.MeanSlowdown, p.CI95, p.ByRun, ratio, diff, p.MovesPerJob, pub, pubRatio)
			}
			return tw.Flush()
		},
	}
	f := cmd.Flags()
	f.IntVar(&cfg.Runs, "runs", 3000, "scenarios; every policy runs the same ones")
	f.Uint64Var(&seed, "seed", 1, "seed of the job streams and of every random choice")
	f.StringVar(&machines, "machines", "", "the cluster as SPEED:MEMORY_MB,... (default: the paper's)")
	f.StringVar(&policies, "policies", "", "comma-separated policies (default: all)")
	f.Float64Var(&cfg.Horizon, "horizon", 10000, "seconds during which jobs arrive")
	f.Float64Var(&cfg.Arrival, "arrival", 10, "mean seconds between jobs (exponential)")
	f.Float64Var(&cfg.Parallel, "parallel", 0.05, "share of jobs that are parallel (negative: none)")
	f.Float64Var(&cfg.MaxCPU, "max-cpu", 0, "bound a job's CPU demand, in seconds (0: unbounded, as published)")
	f.Float64Var(&cfg.MaxMem, "max-mem", 0, "bound a job's memory need, in MB (0: unbounded, as published)")
	f.Float64Var(&cfg.Thrash, "thrash", 10, "how much slower a machine's jobs run while their memory exceeds it")
	f.Float64Var(&cfg.MoveCost, "move-cost", 0, "seconds a migrating job spends in transit (0 as published)")
	f.DurationVar(&cfg.Period, "period", time.Second, "time between a node's balancing decisions")
	f.BoolVar(&omniscient, "omniscient", false, "every node knows every node's current state (no gossip delay)")
	f.BoolVar(&cfg.LOfView, "l-of-view", false, "epvm and emosix take L from the loads in the node's view now, not the largest seen (a departure from the paper)")
	f.BoolVar(&asJSON, "json", false, "one JSON object per policy")
	f.StringVar(&plot, "plot", "", "write an SVG plot of the slowdowns to this file")
	return cmd
}

// parseMachines reads SPEED:MEMORY_MB,...
func parseMachines(s string) ([]sim.Machine, error) {
	var out []sim.Machine
	for _, part := range strings.Split(s, ",") {
		sp, mem, ok := strings.Cut(strings.TrimSpace(part), ":")
		speed, err1 := strconv.ParseFloat(sp, 64)
		mb, err2 := strconv.ParseFloat(mem, 64)
		if !ok || err1 != nil || err2 != nil {
			return nil, fmt.Errorf("--machines: %q is not SPEED:MEMORY_MB (for example 1:64,0.5:32)", part)
		}
		out = append(out, sim.Machine{Speed: speed, MemMB: mb})
	}
	return out, nil
}
