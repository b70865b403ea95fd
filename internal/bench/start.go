package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/api"
	"github.com/mosaic-cluster/mosaic/internal/up"
)

// StartConfig describes the daemons' start-latency benchmark.
type StartConfig struct {
	Runs  int
	Pause time.Duration // between runs, as a user's commands come
}

// Start measures the daemons' part of starting a program, without the CLI
// process's own start: a client in this process sends `run /bin/true`
// (--here, then --on n2) to n1 of a 2-node cluster, with the descriptors a
// CLI would pass, and times the request to the program's start and to its
// exit (medians).
func Start(ctx context.Context, w io.Writer, cfg StartConfig) error {
	if cfg.Runs < 1 {
		return fmt.Errorf("--runs %d: run at least once", cfg.Runs)
	}
	c, stop, err := startCluster(ctx, up.Config{Nodes: 2, Out: w})
	if err != nil {
		return err
	}
	defer stop()
	cwd, err := os.Getwd()
	if err != nil {
		return err
	}
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer devnull.Close()
	fd := int(devnull.Fd())
	fmt.Fprintf(w, "%-20s %12s %12s  (%d runs, %v apart)\n", "run /bin/true", "to started", "to exit", cfg.Runs, cfg.Pause)
	for _, on := range []string{"", "n2"} {
		args := api.RunArgs{Argv: []string{"/bin/true"}, Env: os.Environ(), Cwd: cwd, Umask: 0o022, Here: on == "", On: on}
		var started, exited []time.Duration
		for range cfg.Runs {
			select {
			case <-time.After(cfg.Pause):
			case <-ctx.Done():
				return ctx.Err()
			}
			s, e, err := startOnce(ctx, c.Nodes[0].Socket, args, fd)
			if err != nil {
				return err
			}
			started, exited = append(started, s), append(exited, e)
		}
		slices.Sort(started)
		slices.Sort(exited)
		name := "--here"
		if on != "" {
			name = "--on " + on
		}
		fmt.Fprintf(w, "%-20s %12v %12v\n", name, started[len(started)/2].Round(10*time.Microsecond), exited[len(exited)/2].Round(10*time.Microsecond))
	}
	return nil
}

// startOnce runs the program once and returns how long it took to start
// and to exit, from the request.
func startOnce(ctx context.Context, socket string, args api.RunArgs, fd int) (started, exited time.Duration, err error) {
	conn, err := api.Dial(ctx, socket)
	if err != nil {
		return 0, 0, err
	}
	defer conn.Close()
	t := time.Now()
	if err := conn.Send(api.OpRun, args, fd, fd, fd); err != nil {
		return 0, 0, err
	}
	for {
		var e api.RunEvent
		if err := conn.ReadJSON(&e); err != nil {
			return 0, 0, fmt.Errorf("run /bin/true: %w", err)
		}
		switch {
		case e.Error != "":
			return 0, 0, fmt.Errorf("run /bin/true: %s", e.Error)
		case e.Started != nil:
			started = time.Since(t)
		case e.Exit != nil:
			if e.Exit.Code != 0 || e.Exit.Signal != 0 {
				return 0, 0, fmt.Errorf("/bin/true ended %+v", *e.Exit)
			}
			return started, time.Since(t), nil
		}
	}
}
