package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/api"
	"github.com/mosaic-cluster/mosaic/internal/up"
)

// LiveConfig describes a measurement of a real local cluster.
type LiveConfig struct {
	Nodes  int
	NetNS  bool
	Idle   time.Duration // untouched period over which CPU and traffic are measured
	Sample time.Duration // period over which ages are sampled through the API
	Binary string        // the daemon binary; default: up.DaemonBinary
}

// Live starts a real cluster with `mosaic up`'s machinery, leaves it idle to
// measure each daemon's CPU, memory and gossip traffic, then samples every
// node's view to measure the age of load information, as the simulator
// does.
func Live(ctx context.Context, w io.Writer, cfg LiveConfig) error {
	c, stop, err := startCluster(ctx, up.Config{Nodes: cfg.Nodes, NetNS: cfg.NetNS, Binary: cfg.Binary, Out: w})
	if err != nil {
		return err
	}
	defer stop()
	fmt.Fprintln(w, "warming up for 10s ...")
	if err := sleep(ctx, 10*time.Second); err != nil {
		return err
	}

	// Idle phase: nobody talks to the daemons.
	type snap struct {
		cpuTicks uint64
		bytes    uint64
		msgs     uint64
	}
	take := func() (map[string]snap, error) {
		out := map[string]snap{}
		for _, n := range c.Nodes {
			var st api.Status
			if err := api.Call(ctx, n.Socket, api.OpStatus, nil, &st); err != nil {
				return nil, err
			}
			t, err := cpuTicks(n.PID())
			if err != nil {
				return nil, err
			}
			out[n.Name] = snap{t, st.GossipBytes, st.GossipMsgs}
		}
		return out, nil
	}
	before, err := take()
	if err != nil {
		return err
	}
	t0 := time.Now()
	fmt.Fprintf(w, "idle for %s ...\n", cfg.Idle)
	if err := sleep(ctx, cfg.Idle); err != nil {
		return err
	}
	after, err := take()
	if err != nil {
		return err
	}
	el := time.Since(t0).Seconds()

	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "node\tstore\tCPU % of a core\tRSS MiB\tgossip B/s\tgossip msgs/s\t")
	var totalBytes float64
	for _, n := range c.Nodes {
		var st api.Status
		if err := api.Call(ctx, n.Socket, api.OpStatus, nil, &st); err != nil {
			return err
		}
		rss, err := rssMiB(n.PID())
		if err != nil {
			return err
		}
		b, a := before[n.Name], after[n.Name]
		cpu := float64(a.cpuTicks-b.cpuTicks) / clockTicks / el * 100
		bps := float64(a.bytes-b.bytes) / el
		totalBytes += bps
		role := "client"
		if st.StoreMember {
			role = "member"
		}
		fmt.Fprintf(tw, "%s\t%s\t%.2f\t%.1f\t%.0f\t%.2f\t\n", n.Name, role, cpu, rss, bps, float64(a.msgs-b.msgs)/el)
	}
	tw.Flush()
	fmt.Fprintf(w, "mean gossip traffic: %.0f B/node/s (protobuf payload; TLS and HTTP/2 framing not counted)\n\n", totalBytes/float64(len(c.Nodes)))

	// Sampling phase: ages of what each node knows about the others.
	var ages []time.Duration
	missing, samples := 0, 0
	fmt.Fprintf(w, "sampling every node's view for %s ...\n", cfg.Sample)
	end := time.Now().Add(cfg.Sample)
	for time.Now().Before(end) {
		for _, n := range c.Nodes {
			var view []api.NodeInfo
			if err := api.Call(ctx, n.Socket, api.OpNodes, nil, &view); err != nil {
				return err
			}
			for _, v := range view {
				if v.Self {
					continue
				}
				samples++
				if !v.HasLoad {
					missing++
					continue
				}
				ages = append(ages, time.Duration(v.AgeMs)*time.Millisecond)
			}
		}
		if err := sleep(ctx, 250*time.Millisecond); err != nil {
			return err
		}
	}
	if len(ages) == 0 {
		return fmt.Errorf("no load information was seen")
	}
	slices.Sort(ages)
	var sum time.Duration
	for _, a := range ages {
		sum += a
	}
	fmt.Fprintf(w, "%d nodes, live: mean age %s, p99 age %s, max age %s, missing %.1f%% (%d samples)\n",
		cfg.Nodes, secs(sum/time.Duration(len(ages))), secs(ages[len(ages)*99/100]), secs(ages[len(ages)-1]),
		100*float64(missing)/float64(samples), samples)
	return nil
}

// startCluster starts a throw-away cluster as cfg says, in a directory of
// its own; stop stops it and removes the directory.
func startCluster(ctx context.Context, cfg up.Config) (_ *up.Cluster, stop func(), err error) {
	dir, err := os.MkdirTemp("", "mosaic-bench-")
	if err != nil {
		return nil, nil, err
	}
	cfg.Dir = dir
	c, err := up.Start(ctx, cfg)
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	return c, func() {
		c.Stop()
		os.RemoveAll(dir)
	}, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times (100 on Linux).
const clockTicks = 100

func cpuTicks(pid int) (uint64, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, fmt.Errorf("read CPU time of pid %d: %w", pid, err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	// Fields after the command: state is 0; utime is 11, stime 12.
	u, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	return u + st, nil
}

func rssMiB(pid int) (float64, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, fmt.Errorf("read memory of pid %d: %w", pid, err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}
