package main

import (
	"github.com/spf13/cobra"

	"github.com/mosaic-cluster/mosaic/internal/runclient"
)

// newRunCmd is `mosaic run` as cobra parses it. The mosaic binary parses
// and runs the usual command lines itself (runclient.Parse) and hands this
// one the rest: --help, a mistake to explain, --here=false.
func newRunCmd(g *globals) *cobra.Command {
	var o runclient.Options
	cmd := &cobra.Command{
		Use:   "run [--on NODE | --here] [--] PROG [ARGS...]",
		Short: "Run a program on the cluster, as if it ran here",
		Long: `Run a program on the best node of the cluster (the least loaded with enough
memory), or on NODE with --on, or here with --here. It runs as you, with
your environment, working directory, umask and resource limits; its input,
output and terminal stay here, signals (Ctrl-C, Ctrl-\, Ctrl-Z, kill) reach
it, and mosaic run exits with its status (or dies of its signal).

When stdin and stdout are a terminal, the program gets a terminal of its
own with the same modes and size, and follows resizes.

Exit status: the program's own; or 125 when mosaic could not run it (bad
input, no daemon, no such node), 126 when the program or the directory
cannot be used, 127 when the program is not found, and 255 when the
process was lost (the node running it, or the home node, died).`,
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, argv []string) error {
			o.Socket = g.socket
			return exitError{runclient.Run(cmd.Context(), o, argv)}
		},
	}
	cmd.SetFlagErrorFunc(runFlagError)
	fs := cmd.Flags()
	fs.SetInterspersed(false) // flags after PROG are PROG's
	fs.StringVar(&o.On, "on", "", "run on this node")
	fs.BoolVar(&o.Here, "here", false, "run on this node (the home)")
	fs.BoolVar(&o.Pin, "pin", false, "never let a policy move it (mosaic migrate still can)")
	fs.BoolVarP(&o.Verbose, "verbose", "v", false, "say where the program runs, on stderr")
	return cmd
}

// runFlagError reports a mistake in the flags of run or restore: bad input
// to mosaic, not the program's failure, so 125, as for the others (docker
// run's rule).
func runFlagError(c *cobra.Command, err error) error {
	return exitError{runclient.Complain("%v (mosaic %s --help shows the flags)", err, c.Name())}
}
