// Command mosaicd is the daemon of a mosaic node (`mosaic node` runs it).
// It is a binary of its own, apart from the mosaic CLI, because it carries
// the embedded store (etcd), whose packages take some 10 ms to initialize
// at every start of a process that links them. This file only parses flags;
// the daemon is internal/daemon.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/mosaic-cluster/mosaic/internal/api"
	"github.com/mosaic-cluster/mosaic/internal/bytesize"
	"github.com/mosaic-cluster/mosaic/internal/cluster"
	"github.com/mosaic-cluster/mosaic/internal/daemon"
	"github.com/mosaic-cluster/mosaic/internal/netns"
	"github.com/mosaic-cluster/mosaic/internal/policy"
	"github.com/mosaic-cluster/mosaic/internal/timerslack"
	"github.com/mosaic-cluster/mosaic/internal/version"
)

const defaultDir = "/var/lib/mosaic"

// main starts on the process's first thread, where a parent death signal
// set at the fork is (it is per thread): `mosaic up` gives its daemons one,
// and a daemon that re-executes itself in a network namespace does so from
// another thread (netns.ExecIn), which must be told. A daemon first
// executes itself again from this thread, which keeps the signal, with its
// own timer slack (see internal/timerslack).
func init() { runtime.LockOSThread() }

func main() {
	if len(os.Args) > 1 && os.Args[1] == "node" {
		if err := timerslack.Reexec(timerslack.Daemon); err != nil {
			fmt.Fprintln(os.Stderr, "mosaic:", err, "(the daemon runs on with the slack it has)")
		}
	}
	death, err := netns.MainThreadParentDeath()
	runtime.UnlockOSThread()
	if err != nil {
		fmt.Fprintln(os.Stderr, "mosaic:", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := &cobra.Command{
		Use:   "mosaicd",
		Short: "The mosaic daemon and the tools that start daemons (mosaic node, up, init, bench run these)",
		Long: `mosaicd is the daemon of a mosaic node, and the commands that start
daemons or whole clusters. The mosaic CLI hands 'node', 'up', 'init',
'bench' and 'sim' over to it; the rest of the CLI talks to a running daemon.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version.String(),
	}
	root.AddCommand(newNodeCmd(death), newUpCmd(), newInitCmd(), newBenchCmd(), newSimCmd())
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "mosaic:", err)
		os.Exit(1)
	}
}

type nodeFlags struct {
	death    netns.ParentDeath // to keep over a re-exec in a network namespace
	cfg      daemon.Config
	join     string
	token    string
	name     string
	listen   string
	memory   string
	netns    string
	logLevel string
}

func newNodeCmd(death netns.ParentDeath) *cobra.Command {
	f := &nodeFlags{death: death}
	cmd := &cobra.Command{
		Use:   "node [--dir DIR] [--join IP:PORT --token TOKEN]",
		Short: "Run this machine's mosaic daemon in the foreground",
		Long: `Run the daemon of a node in the foreground until it is told to leave
(SIGINT, SIGTERM or 'mosaic node leave'), which it then does gracefully.

A new machine joins with a token from 'mosaic token create':
  mosaic node --dir DIR --join IP:PORT --token TOKEN [--name NAME] [--listen IP:PORT]
It gets its certificate from the cluster and keeps it in DIR; from then on
'mosaic node --dir DIR' starts it again and it rejoins by itself.

--capacity and --memory cap what the node offers, to emulate a smaller
machine: its processes get a cgroup CPU quota of that many cores, and the
node reports at most that much memory. --shared is for several nodes on one
machine ('mosaic up' uses it): each node then counts only the processes in
its own cgroup, not the machine's run queue.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return runNode(cmd, f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.cfg.Dir, "dir", defaultDir, "data directory of this node")
	fl.StringVar(&f.join, "join", "", "IP:PORT of a node of the cluster (to join, or as a first contact)")
	fl.StringVar(&f.token, "token", "", "join token (only to join for the first time)")
	fl.StringVar(&f.name, "name", cluster.DefaultName(), "this node's name when joining")
	fl.StringVar(&f.listen, "listen", cluster.DefaultAddr(), "IP:PORT to listen on when joining")
	fl.Float64Var(&f.cfg.Capacity, "capacity", 0, "CPU the node's processes may use, in cores (0.5 = half a core); 0 = no cap")
	fl.StringVar(&f.memory, "memory", "", "memory the node offers (e.g. 2GiB); default: the machine's")
	fl.Float64Var(&f.cfg.Speed, "speed", 0, "per-core speed relative to the reference; default: measured at start")
	fl.BoolVar(&f.cfg.Shared, "shared", false, "several nodes share this machine: count only this node's cgroup")
	fl.DurationVar(&f.cfg.Interval, "interval", time.Second, "gossip period: each period the node sends its load window to one random node")
	fl.IntVar(&f.cfg.Window, "window", 16, "load reports per gossip message (the MOSIX window)")
	fl.StringVar(&f.netns, "netns", "", "run inside this network namespace (a path such as /run/netns/NAME)")
	fl.StringVar(&f.cfg.Policy, "policy", "leastload", "placement and migration policy: "+strings.Join(policy.Names(), ", ")+", or off (run where started, never move)")
	fl.BoolVar(&f.cfg.Manual, "manual", false, "the policy only recommends moves (mosaic recommend); it moves nothing by itself")
	fl.BoolVar(&f.cfg.NoGuests, "no-guests", false, "take no processes from other nodes")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fl.StringVar(&f.cfg.Socket, "socket", "", "local API socket (default $"+api.SocketEnv+" or "+api.DefaultSocket+")")
	return cmd
}

func runNode(cmd *cobra.Command, f *nodeFlags) error {
	if f.netns != "" {
		// Re-execute inside the namespace, without the flag. ExecIn does
		// not return on success.
		argv := withoutFlag(os.Args, "--netns")
		self, err := os.Executable()
		if err != nil {
			return err
		}
		return netns.ExecIn(f.netns, self, argv, os.Environ(), f.death)
	}
	if signal.Ignored(syscall.SIGHUP) {
		// Started with hangups ignored (nohup): they stay without effect,
		// but caught, not ignored, as a signal ignored here would be
		// ignored by every program the node starts (Go sets the ones it
		// catches back to their default in its children).
		signal.Notify(make(chan os.Signal, 1), syscall.SIGHUP)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return fmt.Errorf("--log-level %q: use debug, info, warn or error", f.logLevel)
	}
	f.cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	f.cfg.Socket = api.SocketPath(f.cfg.Socket)
	if f.memory != "" {
		m, err := bytesize.Parse(f.memory)
		if err != nil {
			return fmt.Errorf("--memory: %w", err)
		}
		f.cfg.Memory = m
	}
	if f.cfg.Capacity < 0 {
		return errors.New("--capacity must be positive (cores, e.g. 0.5)")
	}
	if f.cfg.Policy != daemon.PolicyOff {
		if _, err := policy.New(f.cfg.Policy); err != nil {
			return fmt.Errorf("--policy: %w, or off", err)
		}
	}
	if f.cfg.Window < 2 {
		return errors.New("--window must be at least 2")
	}
	if f.cfg.Interval < 10*time.Millisecond {
		return errors.New("--interval must be at least 10ms")
	}
	ctx := cmd.Context()
	_, err := os.Stat(f.cfg.Dir + "/" + cluster.ConfigFile)
	if err == nil && f.token != "" {
		f.cfg.Log.Info("this node has joined already; --token is not needed", "dir", f.cfg.Dir)
	}
	if err != nil && f.token != "" {
		if f.join == "" {
			return errors.New("--token needs --join IP:PORT (a node of the cluster)")
		}
		n, err := cluster.Join(ctx, cluster.JoinParams{Dir: f.cfg.Dir, Name: f.name, Addr: f.listen, Via: f.join, Token: f.token})
		if err != nil {
			return err
		}
		f.cfg.Log.Info("joined the cluster", "cluster", n.ClusterID, "node", n.Name, "via", f.join)
	}
	if f.join != "" {
		f.cfg.Seeds = []string{f.join}
	}
	return daemon.Run(ctx, f.cfg)
}

// withoutFlag removes a flag and its value from an argument list.
func withoutFlag(args []string, flag string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		switch {
		case args[i] == flag:
			i++ // and its value
		case strings.HasPrefix(args[i], flag+"="):
		default:
			out = append(out, args[i])
		}
	}
	return out
}
