package bench

import (
	"context"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/api"
	"github.com/mosaic-cluster/mosaic/internal/gossip"
	"github.com/mosaic-cluster/mosaic/internal/up"
)

// FailureConfig describes the failure-detection benchmark.
type FailureConfig struct {
	Nodes  int
	Runs   int
	NetNS  bool
	Binary string // the daemon binary; default: up.DaemonBinary
}

// Failure kills a node's daemon with SIGKILL and times until every other
// node declares it dead, then restarts it and times until every node sees
// it alive again; it prints both beside the bound the protocol guarantees.
func Failure(ctx context.Context, w io.Writer, cfg FailureConfig) error {
	c, stop, err := startCluster(ctx, up.Config{Nodes: cfg.Nodes, NetNS: cfg.NetNS, Binary: cfg.Binary, Out: w})
	if err != nil {
		return err
	}
	defer stop()
	bound := gossip.DeadBound(gossip.Config{}, cfg.Nodes)
	var deads, backs []time.Duration
	for i := range cfg.Runs {
		victim := c.Nodes[1+i%(len(c.Nodes)-1)]
		if err := sleep(ctx, 2*time.Second); err != nil { // let probing settle at a random phase
			return err
		}
		if err := c.Kill(victim.Name); err != nil {
			return err
		}
		took, err := waitState(ctx, c, victim.Name, "dead", 3*bound)
		if err != nil {
			return err
		}
		deads = append(deads, took)
		start := time.Now()
		if err := c.Restart(victim.Name); err != nil {
			return err
		}
		if _, err := waitState(ctx, c, victim.Name, "alive", time.Minute); err != nil {
			return err
		}
		back := time.Since(start)
		backs = append(backs, back)
		fmt.Fprintf(w, "run %d: %s dead everywhere after %s; alive everywhere %s after restart\n", i+1, victim.Name, took.Round(10*time.Millisecond), back.Round(10*time.Millisecond))
	}
	slices.Sort(deads)
	slices.Sort(backs)
	fmt.Fprintf(w, "SIGKILL to dead at every node (%d nodes, 1s interval): median %s, max %s (bound %s); restart to alive: median %s\n",
		cfg.Nodes, deads[len(deads)/2].Round(10*time.Millisecond), deads[len(deads)-1].Round(10*time.Millisecond), bound,
		backs[len(backs)/2].Round(10*time.Millisecond))
	return nil
}

// waitState waits until every other running node sees name in state.
func waitState(ctx context.Context, c *up.Cluster, name, state string, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	for time.Since(start) < timeout {
		all := true
		for _, n := range c.Nodes {
			if n.Name == name || n.PID() == 0 {
				continue
			}
			var view []api.NodeInfo
			if err := api.Call(ctx, n.Socket, api.OpNodes, nil, &view); err != nil {
				return 0, err
			}
			if !slices.ContainsFunc(view, func(v api.NodeInfo) bool { return v.Name == name && v.State == state }) {
				all = false
				break
			}
		}
		if all {
			return time.Since(start), nil
		}
		if err := sleep(ctx, 20*time.Millisecond); err != nil {
			return 0, err
		}
	}
	return 0, fmt.Errorf("%s not %s everywhere within %s", name, state, timeout)
}
