package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mosaic-cluster/mosaic/internal/bench"
	"github.com/mosaic-cluster/mosaic/internal/bytesize"
	"github.com/mosaic-cluster/mosaic/internal/daemon"
	"github.com/mosaic-cluster/mosaic/internal/policy"
)

func newBenchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Benchmarks whose figures are in docs/BENCHMARKS.md",
	}
	var d bench.DisseminationConfig
	var sizes string
	diss := &cobra.Command{
		Use:   "dissemination [--nodes 16,64,256,1024]",
		Short: "Age of load information vs cluster size, simulated with the real gossip core",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if d.Sizes, err = parseList(sizes, strconv.Atoi); err != nil {
				return err
			}
			return bench.Dissemination(cmd.OutOrStdout(), d)
		},
	}
	diss.Flags().StringVar(&sizes, "nodes", "16,64,256,1024", "cluster sizes")
	diss.Flags().IntVar(&d.Window, "window", 16, "load reports per message")
	diss.Flags().IntVar(&d.Intervals, "intervals", 200, "intervals measured after warm-up")
	diss.Flags().Int64Var(&d.Seed, "seed", 1, "random seed")
	diss.Flags().BoolVar(&d.JSON, "json", false, "print JSON")

	var l bench.LiveConfig
	live := &cobra.Command{
		Use:   "live [--nodes 8]",
		Short: "A real local cluster at rest: daemon CPU, RSS, gossip traffic, age of load information (root)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := rootAndSelf(); err != nil {
				return err
			}
			return bench.Live(cmd.Context(), cmd.OutOrStdout(), l)
		},
	}
	live.Flags().IntVar(&l.Nodes, "nodes", 8, "nodes")
	live.Flags().BoolVar(&l.NetNS, "netns", true, "each node in its own network namespace")
	live.Flags().DurationVar(&l.Idle, "idle", 30*time.Second, "idle period for CPU and traffic")
	live.Flags().DurationVar(&l.Sample, "sample", 30*time.Second, "period of sampling the views")

	var u bench.UpConfig
	upc := &cobra.Command{
		Use:   "up [--nodes 4] [--runs 5]",
		Short: "Time from `mosaic up` to every node alive (root)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if u.Binary, err = rootAndSelf(); err != nil {
				return err
			}
			return bench.Up(cmd.Context(), cmd.OutOrStdout(), u)
		},
	}
	upc.Flags().IntVar(&u.Nodes, "nodes", 4, "nodes")
	upc.Flags().IntVar(&u.Runs, "runs", 5, "runs")
	upc.Flags().BoolVar(&u.NetNS, "netns", false, "each node in its own network namespace")

	var f bench.FailureConfig
	fail := &cobra.Command{
		Use:   "failure [--nodes 4] [--runs 5]",
		Short: "Time from SIGKILL of a daemon to dead at every node, and from restart to alive (root)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := rootAndSelf(); err != nil {
				return err
			}
			return bench.Failure(cmd.Context(), cmd.OutOrStdout(), f)
		},
	}
	fail.Flags().IntVar(&f.Nodes, "nodes", 4, "nodes")
	fail.Flags().IntVar(&f.Runs, "runs", 5, "runs")
	fail.Flags().BoolVar(&f.NetNS, "netns", true, "each node in its own network namespace")

	var r bench.RelayConfig
	var size string
	relay := &cobra.Command{
		Use:   "relay [--bytes 1GiB]",
		Short: "Throughput of a program's stdout through the home relay vs a local pipe (root)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := rootAndSelf(); err != nil {
				return err
			}
			b, err := bytesize.Parse(size)
			if err != nil {
				return fmt.Errorf("--bytes: %w", err)
			}
			r.Bytes = int64(b)
			return bench.Relay(cmd.Context(), cmd.OutOrStdout(), r)
		},
	}
	relay.Flags().StringVar(&size, "bytes", "1GiB", "bytes the program writes")
	relay.Flags().IntVar(&r.Runs, "runs", 5, "runs of each path")

	var st bench.StartConfig
	start := &cobra.Command{
		Use:   "start [--runs 150] [--pause 30ms]",
		Short: "The daemons' part of starting a program, here and on another node, without the CLI's own start (root)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := rootAndSelf(); err != nil {
				return err
			}
			return bench.Start(cmd.Context(), cmd.OutOrStdout(), st)
		},
	}
	start.Flags().IntVar(&st.Runs, "runs", 150, "runs of each")
	start.Flags().DurationVar(&st.Pause, "pause", 30*time.Millisecond, "pause between runs")

	var j bench.JobsConfig
	jobs := &cobra.Command{
		Use:   "jobs [--jobs 1000] [--nodes 4]",
		Short: "Many short jobs launched from one node: total time and where they ran (root)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := rootAndSelf(); err != nil {
				return err
			}
			return bench.Jobs(cmd.Context(), cmd.OutOrStdout(), j)
		},
	}
	jobs.Flags().IntVar(&j.Jobs, "jobs", 1000, "jobs")
	jobs.Flags().IntVar(&j.Nodes, "nodes", 4, "nodes")
	jobs.Flags().IntVar(&j.Parallel, "parallel", 32, "jobs launched at a time")
	jobs.Flags().StringVar(&j.Work, "work", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done", "each job: a shell command line")

	var m bench.MigrateConfig
	var migSizes string
	mig := &cobra.Command{
		Use:   "migrate [--sizes 1,64,256,1024] [--runs 5] [--lazy] [--children N]",
		Short: "Live migration between two nodes: freeze and total time by memory size, vs a raw TCP copy (root, gcc)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := rootAndSelf(); err != nil {
				return err
			}
			if m.Children < 0 || m.Children > 64 {
				return fmt.Errorf("--children: %d; give 0 to 64", m.Children)
			}
			for _, f := range strings.Split(migSizes, ",") {
				n, err := strconv.Atoi(strings.TrimSpace(f))
				if err != nil || n < 1 {
					return fmt.Errorf("--sizes: %q is not a size in MiB", f)
				}
				m.SizesMiB = append(m.SizesMiB, n)
			}
			return bench.Migrate(cmd.Context(), cmd.OutOrStdout(), m)
		},
	}
	mig.Flags().StringVar(&migSizes, "sizes", "1,64,256,1024", "touched memory of the workload, MiB, comma-separated")
	mig.Flags().BoolVar(&m.Lazy, "lazy", false, "post-copy moves (mosaic migrate --lazy)")
	mig.Flags().IntVar(&m.Runs, "runs", 5, "migrations per size")
	mig.Flags().IntVar(&m.Children, "children", 0, "idle child processes the workload starts first, which move with it")

	var bal bench.BalanceConfig
	var balCaps, balPolicies string
	balance := &cobra.Command{
		Use:   "balance [--capacity 1,1,0.5,0.5] [--jobs 24] [--policies off,roundrobin,epvm,mosix,emosix]",
		Short: "Live load balancing: makespan and slowdown of a batch started on one node, by policy, vs the ideal (root)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if bal.Capacities, err = parseList(balCaps, func(s string) (float64, error) { return strconv.ParseFloat(s, 64) }); err != nil || len(bal.Capacities) < 2 {
				return fmt.Errorf("--capacity %q: give two or more capacities in cores, e.g. 1,1,0.5,0.5", balCaps)
			}
			bal.Policies = strings.Split(balPolicies, ",")
			for _, p := range bal.Policies {
				if _, err := policy.New(p); err != nil && p != daemon.PolicyOff {
					return fmt.Errorf("--policies: %w, or off", err)
				}
			}
			if bal.Jobs < 1 || bal.Unit <= 0 {
				return errors.New("--jobs and --unit must be positive")
			}
			return bench.Balance(cmd.Context(), cmd.OutOrStdout(), bal)
		},
	}
	balance.Flags().StringVar(&balCaps, "capacity", "1,1,0.5,0.5", "CPU of each node, in cores")
	balance.Flags().IntVar(&bal.Jobs, "jobs", 24, "jobs")
	balance.Flags().StringVar(&balPolicies, "policies", "off,roundrobin,epvm,mosix,emosix", "policies to compare")
	balance.Flags().DurationVar(&bal.Unit, "unit", time.Second, "CPU time of the shortest job on a whole core (jobs take 1 to 3.5 units)")

	mem := bench.MemoryConfig{Nodes: 4, Jobs: 3}
	var memOffer, memGrow, memPolicies string
	memory := &cobra.Command{
		Use:   "memory [--memory 400MiB] [--jobs 3] [--grow 160MiB] [--policies off,mosix,emosix]",
		Short: "Memory ushering: jobs that outgrow the node they run on, by policy: its peak memory and time over what it offers (root)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if mem.Memory, err = bytesize.Parse(memOffer); err != nil || mem.Memory < 64<<20 {
				return fmt.Errorf("--memory %q: give what n1 offers, 64MiB or more, e.g. 400MiB", memOffer)
			}
			if mem.Grow, err = bytesize.Parse(memGrow); err != nil || mem.Grow < 8<<20 {
				return fmt.Errorf("--grow %q: give each job's final size, 8MiB or more, e.g. 160MiB", memGrow)
			}
			if mem.Jobs < 1 || mem.Nodes < 2 {
				return errors.New("--jobs must be positive and --nodes 2 or more")
			}
			if uint64(mem.Jobs)*mem.Grow <= mem.Memory {
				return fmt.Errorf("%d jobs of %s fit in n1's %s: nothing to usher (raise --jobs or --grow)", mem.Jobs, memGrow, memOffer)
			}
			mem.Policies = strings.Split(memPolicies, ",")
			for _, p := range mem.Policies {
				if _, err := policy.New(p); err != nil && p != daemon.PolicyOff {
					return fmt.Errorf("--policies: %w, or off", err)
				}
			}
			return bench.Memory(cmd.Context(), cmd.OutOrStdout(), mem)
		},
	}
	memory.Flags().StringVar(&memOffer, "memory", "400MiB", "memory n1 offers (the others offer the machine's)")
	memory.Flags().StringVar(&memGrow, "grow", "160MiB", "memory each job grows to")
	memory.Flags().IntVar(&mem.Jobs, "jobs", 3, "jobs, all started on n1")
	memory.Flags().IntVar(&mem.Nodes, "nodes", 4, "nodes")
	memory.Flags().StringVar(&memPolicies, "policies", "off,mosix,emosix", "policies to compare")

	cmd.AddCommand(diss, live, upc, fail, relay, start, jobs, mig, balance, memory)
	return cmd
}

// rootAndSelf checks that a cluster benchmark may run and returns the
// binary to start the daemons with: this one.
func rootAndSelf() (string, error) {
	if os.Geteuid() != 0 {
		return "", errors.New("this benchmark starts a local cluster and needs root")
	}
	return os.Executable()
}
