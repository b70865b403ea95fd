package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/mosaic-cluster/mosaic/internal/api"
	"github.com/mosaic-cluster/mosaic/internal/bytesize"
	"github.com/mosaic-cluster/mosaic/internal/runclient"
)

func newCheckpointCmd(g *globals) *cobra.Command {
	var stop, asJSON bool
	cmd := &cobra.Command{
		Use:   "checkpoint ID FILE [--stop]",
		Short: "Save a running mosaic process to a file (and let it go on, or stop it)",
		Long: `Save a running process, wherever it runs, to FILE on this node: its memory,
registers, open files and signal state, in a checked image that
'mosaic restore FILE' brings back to life, on any node, later. The process
goes on running; with --stop it ends once it is saved (its 'mosaic run'
exits with status 254), and the image is all that is left of it.

FILE is written as you, readable only by you (it holds the process's
memory); it appears only once the image is complete and checked. A process
that holds something that cannot be saved (a socket, a child process...)
is refused, with the reason. You may checkpoint only your own processes.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, path := args[0], args[1]
			// Interrupted, it calls the checkpoint off and waits for the
			// outcome (a process stopped by --stop has its image put in
			// place even so); killed, its daemon calls it off as it sees
			// the connection close.
			sigs := make(chan os.Signal, 1)
			signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
			defer signal.Stop(sigs)
			dir := filepath.Dir(path)
			tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".partial-*")
			if err != nil {
				return fmt.Errorf("create the image file in %s: %w", dir, err)
			}
			defer func() {
				tmp.Close()
				os.Remove(tmp.Name()) // gone already when it became FILE
			}()
			var res api.CheckpointResult
			if err := callOffable(cmd.Context(), g.sock(), sigs, api.OpCheckpoint, api.CheckpointArgs{ID: id, Stop: stop}, &res, int(tmp.Fd())); err != nil {
				return err
			}
			if err := tmp.Sync(); err != nil {
				return fmt.Errorf("write %s: %w", path, err)
			}
			if err := os.Rename(tmp.Name(), path); err != nil {
				return fmt.Errorf("put the image in place: %w", err)
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return json.NewEncoder(out).Encode(res)
			}
			fmt.Fprintf(out, "%s saved to %s (%s)", id, path, bytesize.Format(res.ImageBytes))
			if res.Stopped {
				fmt.Fprintf(out, "; it is stopped: 'mosaic restore %s' brings it back", path)
			}
			fmt.Fprintln(out)
			return nil
		},
	}
	cmd.Flags().BoolVar(&stop, "stop", false, "end the process once it is saved")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON, for scripts")
	return cmd
}

// callOffable is api.Call for an operation that a signal calls off: on
// the first of sigs it tells the daemon so (CloseWrite) and goes on waiting
// for the answer, which says what became of it.
func callOffable(ctx context.Context, sock string, sigs <-chan os.Signal, op string, args, out any, fds ...int) error {
	c, err := api.Dial(ctx, sock)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Send(op, args, fds...); err != nil {
		return err
	}
	answered := make(chan struct{})
	defer close(answered)
	go func() {
		select {
		case <-sigs:
			c.CloseWrite()
		case <-answered:
		}
	}()
	return c.Receive(ctx, out)
}

func newRestoreCmd(g *globals) *cobra.Command {
	var o runclient.Options
	cmd := &cobra.Command{
		Use:   "restore [--on NODE | --here] [-v] FILE",
		Short: "Bring a process saved by 'mosaic checkpoint' back to life",
		Long: `Restore the process saved in FILE (by 'mosaic checkpoint') on the best
node, or on NODE with --on, or here with --here, and go on with it as with
'mosaic run': its input, output and terminal are this command's, signals
reach it, and this command exits with its status. It gets a new process ID
(this node is its home now) and runs as the user it ran as: you may
restore only your own processes (root: anyone's). A damaged or foreign
file is refused before anything runs.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, argv []string) error {
			img, err := os.Open(argv[0])
			if err != nil {
				if errors.Is(err, os.ErrNotExist) {
					return exitError{runclient.Complain("no image file %s", argv[0])}
				}
				return exitError{runclient.Complain("%v", err)}
			}
			defer img.Close()
			sigs := runclient.CatchSignals()
			args, err := runclient.Gather(nil)
			if err != nil {
				return exitError{runclient.Complain("%v", err)}
			}
			args.Image = true
			o.Socket = g.socket
			return exitError{runclient.Start(cmd.Context(), o, args, sigs, int(img.Fd()))}
		},
	}
	cmd.SetFlagErrorFunc(runFlagError)
	cmd.Flags().StringVar(&o.On, "on", "", "restore on this node")
	cmd.Flags().BoolVar(&o.Here, "here", false, "restore on this node (the home)")
	cmd.Flags().BoolVarP(&o.Verbose, "verbose", "v", false, "say where it runs, on stderr")
	return cmd
}
