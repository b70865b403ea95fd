package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/mosaic-cluster/mosaic/internal/api"
)

// newNodeCmd runs the daemon: `mosaic node ARGS` is `mosaicd node ARGS`.
func newNodeCmd(g *globals) *cobra.Command {
	cmd := delegate(g, "node", "[--dir DIR] [--join IP:PORT --token TOKEN] [flags]",
		"Run this machine's mosaic daemon (mosaicd); or: node leave, node remove",
		`Run the daemon of a node in the foreground until it is told to leave.
'mosaic node --help' shows the daemon's flags. The subcommands leave and
remove act on a running cluster.`)
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
