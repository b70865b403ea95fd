package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/mosaic-cluster/mosaic/internal/api"
	"github.com/mosaic-cluster/mosaic/internal/cluster"
	"github.com/mosaic-cluster/mosaic/internal/up"
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
			if p.Name == "" {
				p.Name = cluster.DefaultName()
			}
			if p.Addr == "" {
				p.Addr = cluster.DefaultAddr()
			}
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
	cmd.Flags().StringVar(&p.Name, "name", "", "this node's name (default: the host name)")
	cmd.Flags().StringVar(&p.Addr, "listen", "", "IP:PORT this node listens on for its peers (default: this machine's first address, port 7700)")
	cmd.Flags().IntVar(&p.StoreSize, "store-size", cluster.DefaultStoreSize, "how many of the first nodes run a member of the cluster store (1, 3 or 5)")
	return cmd
}

// newNodeCmd runs the daemon: `mosaic node ARGS` is `mosaicd ARGS`. The
// daemon is a binary of its own because it carries the embedded store,
// whose packages take some 10 ms to initialize: every `mosaic run` would
// pay them.
func newNodeCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "node [--dir DIR] [--join IP:PORT --token TOKEN] [flags]",
		Short: "Run this machine's mosaic daemon (mosaicd); or: node leave, node remove",
		Long: `Run the daemon of a node (the mosaicd binary, installed beside mosaic) in
the foreground until it is told to leave. 'mosaic node --help' shows the
daemon's flags. The subcommands leave and remove act on a running cluster.`,
		DisableFlagParsing: true, // the daemon's flags are the daemon's
		RunE: func(cmd *cobra.Command, args []string) error {
			path, err := up.DaemonBinary()
			if err != nil {
				return err
			}
			if g.socket != "" && !slices.Contains(args, "--socket") {
				args = append(args, "--socket", g.socket)
			}
			return syscall.Exec(path, append([]string{"mosaicd"}, args...), os.Environ())
		},
	}
	cmd.AddCommand(newLeaveCmd(g), newRemoveCmd(g))
	return cmd
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
