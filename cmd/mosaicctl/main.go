// Command mosaicctl is mosaic's command line, all of it: the mosaic binary
// runs programs itself (`mosaic run`, which must start fast) and hands
// every other command line to this one, as typed; users type `mosaic`. The
// commands that start daemons or clusters go on to mosaicd (delegate.go).
// This file and its siblings only parse flags and print; the work is done
// in internal/.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/mosaic-cluster/mosaic/internal/api"
	"github.com/mosaic-cluster/mosaic/internal/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRoot()
	if err := root.ExecuteContext(ctx); err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		if ctx.Err() != nil && errors.Is(err, context.Canceled) {
			// Ctrl-C or SIGTERM while the daemon was at work: say so,
			// rather than "context canceled", and that it may go on.
			fmt.Fprintln(os.Stderr, "mosaic: interrupted before the daemon answered: what it was asked may still be done (`mosaic ps` shows where processes are)")
			os.Exit(130)
		}
		fmt.Fprintln(os.Stderr, "mosaic:", err)
		os.Exit(1)
	}
}

// exitError makes the command exit with a status without printing more.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// globals are the flags every client command shares.
type globals struct {
	socket string
}

func (g *globals) sock() string { return api.SocketPath(g.socket) }

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "mosaic",
		Short: "A single-system-image cluster: many Linux machines used as one",
		Long: `mosaic makes a handful of Linux machines feel like one big computer.

Each machine runs one daemon (mosaic node). Nodes join a cluster with a
token, find each other and learn how loaded every node is by gossip, and
talk to each other only over mutual TLS.

Start here:
  mosaic up --nodes 4                  a whole cluster on this machine (root)
  source /tmp/mosaic-up/env            point the CLI at it
  mosaic nodes                         who is there, how loaded, how fresh

On real machines:
  mosaic init --dir /var/lib/mosaic    first node: creates the cluster and its CA
  mosaic node --dir /var/lib/mosaic    run it
  mosaic token create                  a join token for the next machine
  mosaic node --dir /var/lib/mosaic --join FIRST:7700 --token TOKEN   on the next machine

The CLI talks to the daemon of its node through a Unix socket
(` + api.DefaultSocket + `, or --socket, or $` + api.SocketEnv + `).`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version.String(),
	}
	root.PersistentFlags().StringVar(&g.socket, "socket", "", "the daemon's socket (default $"+api.SocketEnv+" or "+api.DefaultSocket+")")
	root.AddCommand(
		delegate(g, "init", "--dir DIR [--name NAME] [--listen IP:PORT]", "Create a new cluster: its CA and its first node",
			"Create a new cluster in DIR: its CA, its ID and its first node's certificate (mosaicd init).\n'mosaic init --help' shows the flags."),
		newNodeCmd(g),
		newTokenCmd(g),
		newNodesCmd(g),
		newStatusCmd(g),
		newRunCmd(g),
		newPsCmd(g),
		newKillCmd(g),
		newMigrateCmd(g),
		newCheckpointCmd(g),
		newRestoreCmd(g),
		delegate(g, "sim", "[--runs N] [--policies a,b] [--json] [--plot FILE]",
			"Compare the placement and migration policies in a simulated cluster",
			"Run the job assignment study of Amir et al. (2000) with mosaic's own policies (mosaicd sim).\n'mosaic sim --help' shows the flags."),
		newPolicyCmd(g),
		newRecommendCmd(g),
		newDrainCmd(g),
		delegate(g, "up", "--nodes N [--capacity 1,1,0.5,0.25] [--dir DIR] [--netns]",
			"Run a whole cluster on this machine, in the foreground (root)",
			"Start N real daemons on this machine and keep them running until Ctrl-C (mosaicd up).\n'mosaic up --help' shows the flags."),
		delegate(g, "bench", "dissemination|live|up|failure|relay|start|jobs|migrate|balance [flags]",
			"Benchmarks whose figures are in docs/BENCHMARKS.md",
			"Run a benchmark (mosaicd bench). 'mosaic bench --help' lists them."),
		&cobra.Command{
			Use:   "version",
			Short: "Print the version of this mosaic",
			Args:  cobra.NoArgs,
			Run: func(cmd *cobra.Command, args []string) {
				fmt.Fprintln(cmd.OutOrStdout(), "mosaic", version.String())
			},
		},
	)
	return root
}
