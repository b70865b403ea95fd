package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mosaic-cluster/mosaic/internal/bytesize"
	"github.com/mosaic-cluster/mosaic/internal/daemon"
	"github.com/mosaic-cluster/mosaic/internal/policy"
	"github.com/mosaic-cluster/mosaic/internal/up"
)

func newUpCmd() *cobra.Command {
	var cfg up.Config
	var capacities, memories, base, pol, logLevel string
	cmd := &cobra.Command{
		Use:   "up --nodes N [--capacity 1,1,0.5,0.25] [--dir DIR] [--netns]",
		Short: "Run a whole cluster on this machine, in the foreground (root)",
		Long: `Start N real mosaic daemons on this machine, one per node, and keep them
running until Ctrl-C or SIGTERM; then stop them all and remove every cgroup
and namespace they made. Their CA, tokens, data and logs stay in DIR, so the
same cluster can be started again with the same command.

Nodes get consecutive addresses in 127.77.0.0/16, or with --netns each runs
in a network namespace of its own on a bridge (10.77.x.0/24), so that they
fail as separate machines do. Each node confines its processes to a cgroup
with --capacity cores of CPU (default 1 each), to emulate a heterogeneous
cluster; give one value for all or one per node.

Point the CLI at the nodes with 'source DIR/env' (node n1) or
--socket DIR/<node>/mosaic.sock.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if cfg.Capacities, err = parseList(capacities, func(s string) (float64, error) { return strconv.ParseFloat(s, 64) }); err != nil {
				return fmt.Errorf("--capacity: %w", err)
			}
			if cfg.Memories, err = parseList(memories, bytesize.Parse); err != nil {
				return fmt.Errorf("--memory: %w", err)
			}
			if base != "" {
				if cfg.Base, err = netip.ParseAddr(base); err != nil || !cfg.Base.IsLoopback() {
					return fmt.Errorf("--base %q: give a loopback address such as 127.77.3.1", base)
				}
			}
			if pol != "" {
				if pol != daemon.PolicyOff {
					if _, err := policy.New(pol); err != nil {
						return fmt.Errorf("--policy: %w, or off", err)
					}
				}
				cfg.ExtraArgs = append(cfg.ExtraArgs, "--policy", pol)
			}
			if logLevel != "" {
				var level slog.Level
				if err := level.UnmarshalText([]byte(logLevel)); err != nil {
					return fmt.Errorf("--log-level %q: use debug, info, warn or error", logLevel)
				}
				cfg.ExtraArgs = append(cfg.ExtraArgs, "--log-level", logLevel)
			}
			return runUp(cmd.Context(), cmd, cfg)
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&cfg.Nodes, "nodes", 4, "number of nodes")
	fl.StringVar(&cfg.Dir, "dir", "/tmp/mosaic-up", "directory for the cluster's CA, data and logs")
	fl.StringVar(&capacities, "capacity", "", "CPU of each node in cores, e.g. 1,1,0.5,0.25 (default 1 each)")
	fl.StringVar(&memories, "memory", "", "memory each node offers, e.g. 2GiB or 2GiB,1GiB,... (default: the machine's)")
	fl.BoolVar(&cfg.NetNS, "netns", false, "run each node in its own network namespace (root)")
	fl.DurationVar(&cfg.Interval, "interval", 0, "gossip period of the daemons (default 1s)")
	fl.IntVar(&cfg.Window, "window", 0, "load reports per gossip message (default 16)")
	fl.Float64Var(&cfg.Speed, "speed", 0, "per-core speed every node reports (default: measured once)")
	fl.StringVar(&base, "base", "", "first loopback address (default: the first free block in 127.77.0.0/16)")
	fl.StringVar(&logLevel, "log-level", "", "log level of every daemon (its log: DIR/<node>.log): debug, info, warn or error (default info)")
	fl.StringVar(&pol, "policy", "", "placement and migration policy of every node (see mosaic node --help; default leastload)")
	return cmd
}

func parseList[T any](s string, parse func(string) (T, error)) ([]T, error) {
	if s == "" {
		return nil, nil
	}
	var out []T
	for _, f := range strings.Split(s, ",") {
		v, err := parse(strings.TrimSpace(f))
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

func runUp(ctx context.Context, cmd *cobra.Command, cfg up.Config) error {
	out := cmd.OutOrStdout()
	cfg.Out = out
	if os.Geteuid() != 0 {
		return errors.New("mosaic up needs root: its daemons confine their processes in cgroups (run it with sudo)")
	}
	fmt.Fprintf(out, "starting %d nodes in %s ...\n", cfg.Nodes, cfg.Dir)
	c, err := up.Start(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() {
		fmt.Fprintln(out, "stopping the cluster ...")
		if err := c.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "mosaic up:", err)
		}
		fmt.Fprintln(out, "stopped; no daemon, cgroup or namespace is left. Data and logs stay in", c.Dir())
	}()
	fmt.Fprintln(out)
	for _, n := range c.Nodes {
		fmt.Fprintf(out, "  %-4s %-18s socket %s  log %s\n", n.Name, n.Addr, n.Socket, n.Log)
	}
	fmt.Fprintf(out, "\nIn another shell:\n  source %s/env\n  mosaic nodes\n  mosaic --socket $MOSAIC_SOCKET_N2 nodes\n\nCtrl-C stops the cluster.\n", c.Dir())
	for {
		select {
		case <-ctx.Done():
			return nil
		case name := <-c.Exited:
			n := c.Node(name)
			fmt.Fprintf(out, "%s: node %s exited (%s); restart it with:\n  %s\n", time.Now().Format(time.TimeOnly), name, lastLine(n.Log), c.RestartCommand(name))
		}
	}
}

func lastLine(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "no log"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	l := lines[len(lines)-1]
	if len(l) > 160 {
		l = l[:160] + "..."
	}
	return l
}
