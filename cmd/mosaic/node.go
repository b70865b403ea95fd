package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mosaic-cluster/mosaic/internal/api"
	"github.com/mosaic-cluster/mosaic/internal/cluster"
	"github.com/mosaic-cluster/mosaic/internal/daemon"
	"github.com/mosaic-cluster/mosaic/internal/netns"
)

const defaultDir = "/var/lib/mosaic"

func newInitCmd() *cobra.Command {
	var p cluster.InitParams
	cmd := &cobra.Command{
		Use:   "init --dir DIR [--name NAME] [--listen IP:PORT]",
		Short: "Create a new cluster: its CA and its first node",
		Long: `Create a new cluster in DIR: a certificate authority, a cluster ID, and the
certificate of the cluster's first node. The CA key stays in DIR (mode 0600)
and never leaves it. Start the node afterwards with 'mosaic node --dir DIR'.

The node listens for its peers on IP:PORT and runs a member of the cluster
store on the next two ports.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := cluster.Init(p)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "created cluster %s with its first node %s (%s) in %s\n", n.ClusterID, n.Name, n.Addr, n.Dir)
			fmt.Fprintf(out, "next: start it with   mosaic node --dir %s\n", n.Dir)
			fmt.Fprintf(out, "then: make a token    mosaic token create\n")
			return nil
		},
	}
	cmd.Flags().StringVar(&p.Dir, "dir", defaultDir, "data directory to create")
	cmd.Flags().StringVar(&p.Name, "name", defaultName(), "this node's name")
	cmd.Flags().StringVar(&p.Addr, "listen", cluster.DefaultAddr(), "IP:PORT this node listens on for its peers")
	cmd.Flags().IntVar(&p.StoreSize, "store-size", cluster.DefaultStoreSize, "how many of the first nodes run a member of the cluster store (1, 3 or 5)")
	return cmd
}

// defaultName is the host name, made a valid node name if possible.
func defaultName() string {
	h, err := os.Hostname()
	if err != nil {
		return "node1"
	}
	h = strings.ToLower(strings.SplitN(h, ".", 2)[0])
	if cluster.CheckName(h) != nil {
		return "node1"
	}
	return h
}

type nodeFlags struct {
	cfg      daemon.Config
	join     string
	token    string
	name     string
	listen   string
	memory   string
	netns    string
	logLevel string
}

func newNodeCmd(g *globals) *cobra.Command {
	f := &nodeFlags{}
	cmd := &cobra.Command{
		Use:   "node [--dir DIR] [--join IP:PORT --token TOKEN]",
		Short: "Run this machine's mosaic daemon (or: node leave, node remove)",
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
		RunE: func(cmd *cobra.Command, args []string) error { return runNode(cmd, g, f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.cfg.Dir, "dir", defaultDir, "data directory of this node")
	fl.StringVar(&f.join, "join", "", "IP:PORT of a node of the cluster (to join, or as a first contact)")
	fl.StringVar(&f.token, "token", "", "join token (only to join for the first time)")
	fl.StringVar(&f.name, "name", defaultName(), "this node's name when joining")
	fl.StringVar(&f.listen, "listen", cluster.DefaultAddr(), "IP:PORT to listen on when joining")
	fl.Float64Var(&f.cfg.Capacity, "capacity", 0, "CPU the node's processes may use, in cores (0.5 = half a core); 0 = no cap")
	fl.StringVar(&f.memory, "memory", "", "memory the node offers (e.g. 2GiB); default: the machine's")
	fl.Float64Var(&f.cfg.Speed, "speed", 0, "per-core speed relative to the reference; default: measured at start")
	fl.BoolVar(&f.cfg.Shared, "shared", false, "several nodes share this machine: count only this node's cgroup")
	fl.DurationVar(&f.cfg.Interval, "interval", time.Second, "gossip period: each period the node sends its load window to one random node")
	fl.IntVar(&f.cfg.Window, "window", 16, "load reports per gossip message (the MOSIX window)")
	fl.StringVar(&f.netns, "netns", "", "run inside this network namespace (a path such as /run/netns/NAME)")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	cmd.AddCommand(newLeaveCmd(g), newRemoveCmd(g))
	return cmd
}

func runNode(cmd *cobra.Command, g *globals, f *nodeFlags) error {
	if f.netns != "" {
		// Re-execute inside the namespace, without the flag. ExecIn does
		// not return on success.
		argv := withoutFlag(os.Args, "--netns")
		self, err := os.Executable()
		if err != nil {
			return err
		}
		return netns.ExecIn(f.netns, self, argv, os.Environ())
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return fmt.Errorf("--log-level %q: use debug, info, warn or error", f.logLevel)
	}
	f.cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	f.cfg.Socket = g.sock()
	if f.memory != "" {
		m, err := parseBytes(f.memory)
		if err != nil {
			return fmt.Errorf("--memory: %w", err)
		}
		f.cfg.Memory = m
	}
	if f.cfg.Capacity < 0 {
		return errors.New("--capacity must be positive (cores, e.g. 0.5)")
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

func newLeaveCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "leave",
		Short: "Make the node leave the cluster gracefully and its daemon exit",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var st api.Status
			if err := api.Call(cmd.Context(), g.sock(), api.OpLeave, nil, &st); err != nil {
				return err
			}
			// Wait for the daemon to be gone, so that scripts can go on.
			deadline := time.Now().Add(30 * time.Second)
			for time.Now().Before(deadline) {
				ctx, cancel := context.WithTimeout(cmd.Context(), time.Second)
				err := api.Call(ctx, g.sock(), api.OpStatus, nil, nil)
				cancel()
				if err != nil && !api.IsDaemonError(err) {
					fmt.Fprintf(cmd.OutOrStdout(), "node %s left the cluster\n", st.Name)
					return nil
				}
				time.Sleep(100 * time.Millisecond)
			}
			return fmt.Errorf("node %s was told to leave but its daemon (pid %d) still answers after 30s", st.Name, st.PID)
		},
	}
}

func newRemoveCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "remove NAME",
		Short: "Remove a node that is gone for good from the cluster's registry",
		Long: `Remove a dead or departed node from the cluster registry (and from the
store, if it ran a store member), so that its name can be used again.
The node must not be running.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := api.Call(cmd.Context(), g.sock(), api.OpNodeRemove, api.NodeRemoveArgs{Name: args[0]}, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed node %s\n", args[0])
			return nil
		},
	}
}
