package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/mosaic-cluster/mosaic/internal/api"
	"github.com/mosaic-cluster/mosaic/internal/pty"
)

type runFlags struct {
	on      string
	here    bool
	pin     bool
	verbose bool
}

func newRunCmd(g *globals) *cobra.Command {
	f := &runFlags{}
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
			if len(argv) == 0 {
				return exitError{complain("no program given: mosaic run [--on NODE | --here] [--] PROG ARGS...")}
			}
			args, err := runArgs(argv)
			if err != nil {
				return exitError{complain("%v", err)}
			}
			return exitError{runProgram(cmd.Context(), g, f, args)}
		},
	}
	cmd.Flags().SetInterspersed(false) // flags after PROG are PROG's
	cmd.Flags().StringVar(&f.on, "on", "", "run on this node")
	cmd.Flags().BoolVar(&f.here, "here", false, "run on this node (the home)")
	cmd.Flags().BoolVar(&f.pin, "pin", false, "never let a policy move it (mosaic migrate still can)")
	cmd.Flags().BoolVarP(&f.verbose, "verbose", "v", false, "say where the program runs, on stderr")
	return cmd
}

// complain says what went wrong and returns the status for it.
func complain(format string, a ...any) int {
	fmt.Fprintf(os.Stderr, "mosaic: "+format+"\n", a...)
	return api.StatusMosaicError
}

// runProgram runs a program (or restores one: args.Image, and the image's
// descriptor in image) and returns the status to exit with. It dies of the
// program's signal itself when the program died of one.
func runProgram(ctx context.Context, g *globals, f *runFlags, args api.RunArgs, image ...int) int {
	stderr := os.Stderr
	args.On, args.Here, args.Pin = f.on, f.here, f.pin

	// Signals that reach this client are the program's. Catch them before
	// the program starts, so that none is lost in between.
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGUSR1,
		syscall.SIGUSR2, syscall.SIGALRM, syscall.SIGWINCH, syscall.SIGTSTP, syscall.SIGCONT, syscall.SIGPIPE)
	// Never stopped: the CLI exits when this returns, and signal.Stop
	// waits for the signal machinery to settle (0.2-0.5 ms of every run).

	conn, err := api.Dial(ctx, g.sock())
	if err != nil {
		return complain("%v", err)
	}
	defer conn.Close()
	if err := conn.Send(api.OpRun, args, append([]int{0, 1, 2}, image...)...); err != nil {
		return complain("%v", err)
	}
	// The daemon holds our stdin, stdout and stderr now. Let go of stdout
	// (keeping stderr for our own messages) so that the program closing its
	// stdout is an end of file for whoever reads ours.
	if devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0); err == nil {
		unix.Dup3(int(devnull.Fd()), 1, 0)
		devnull.Close()
	}

	// Events and the end of the connection come in one channel, in the
	// order they happened: an exit followed by the daemon closing must read
	// as an exit.
	type eventOrEnd struct {
		e   api.RunEvent
		err error
	}
	events := make(chan eventOrEnd, 16)
	go func() {
		for {
			var e api.RunEvent
			err := conn.ReadJSON(&e)
			events <- eventOrEnd{e, err}
			if err != nil {
				return
			}
		}
	}()
	ctl := func(c api.RunControl) { conn.WriteJSON(c) }

	var term *terminal
	if args.Tty != nil {
		term = &terminal{fd: 0}
	}
	defer term.restore()
	fg := foreground(0)
	poll := time.NewTicker(250 * time.Millisecond)
	defer poll.Stop()
	for {
		select {
		case ev := <-events:
			if err := ev.err; err != nil {
				term.restore()
				if ctx.Err() != nil {
					return api.StatusLost
				}
				fmt.Fprintf(stderr, "mosaic: lost the connection to the node's daemon (%v): the program was killed with it\n", err)
				return api.StatusLost
			}
			e := ev.e
			switch {
			case e.Started != nil:
				if f.verbose {
					fmt.Fprintf(stderr, "mosaic: %s runs on %s (pid %d there)\n", e.Started.ID, e.Started.Node, e.Started.PID)
				}
				if fg {
					term.raw()
				} else {
					ctl(api.RunControl{Foreground: &fg})
				}
			case e.Stopped != 0:
				// The program stopped (Ctrl-Z): so does this job, and the
				// shell takes the terminal back.
				term.restore()
				syscall.Kill(os.Getpid(), syscall.SIGSTOP)
			case e.Continued:
			case e.Exit != nil:
				term.restore()
				return exitLike(e.Exit)
			case e.Error != "":
				term.restore()
				fmt.Fprintf(stderr, "mosaic: %s\n", e.Error)
				if e.Status == 0 {
					return api.StatusMosaicError
				}
				return e.Status
			}
		case s := <-sigs:
			sig := s.(syscall.Signal)
			switch sig {
			case syscall.SIGWINCH:
				if m, err := pty.Get(0); err == nil && args.Tty != nil {
					ctl(api.RunControl{Resize: &api.TtyModes{Rows: m.Rows, Cols: m.Cols}})
				}
			case syscall.SIGCONT:
				// Back from a stop (fg or bg): the program goes on too.
				fg = foreground(0)
				ctl(api.RunControl{Foreground: &fg})
				if fg {
					term.raw()
				}
				ctl(api.RunControl{Signal: int(syscall.SIGCONT), Group: true})
			case syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTSTP:
				// From the terminal: to the program's whole job, as the
				// terminal would have done.
				ctl(api.RunControl{Signal: int(sig), Group: true})
			default:
				ctl(api.RunControl{Signal: int(sig)})
			}
		case <-poll.C:
			if now := foreground(0); now != fg {
				fg = now
				ctl(api.RunControl{Foreground: &fg})
				if fg {
					term.raw()
				} else {
					term.restore()
				}
			}
		}
	}
}

// runArgs gathers what the program inherits from this shell.
func runArgs(argv []string) (api.RunArgs, error) {
	cwd, err := os.Getwd()
	if err != nil {
		// The directory was removed under us: it is still the shell's
		// idea of where we are, and the node will say it is not there.
		if pwd := os.Getenv("PWD"); strings.HasPrefix(pwd, "/") {
			cwd = pwd
		} else {
			return api.RunArgs{}, fmt.Errorf("the working directory: %w", err)
		}
	}
	a := api.RunArgs{Argv: argv, Env: os.Environ(), Cwd: cwd, Umask: umask()}
	for r := range unix.RLIMIT_RTTIME + 1 {
		var l unix.Rlimit
		if unix.Getrlimit(r, &l) == nil {
			a.Rlimits = append(a.Rlimits, api.Rlimit{Resource: r, Cur: l.Cur, Max: l.Max})
		}
	}
	if pty.IsTerminal(0) && pty.IsTerminal(1) {
		m, err := pty.Get(0)
		if err != nil {
			return a, fmt.Errorf("read the terminal's modes: %w", err)
		}
		a.Tty = &api.TtyModes{Rows: m.Rows, Cols: m.Cols, Iflag: m.Iflag, Oflag: m.Oflag, Cflag: m.Cflag, Lflag: m.Lflag,
			Cc: m.Cc, Ispeed: m.Ispeed, Ospeed: m.Ospeed}
	}
	return a, nil
}

// umask reads this process's umask without changing it (Linux 4.7+).
func umask() uint32 {
	b, err := os.ReadFile("/proc/self/status")
	if err == nil {
		for line := range strings.Lines(string(b)) {
			if v, ok := strings.CutPrefix(line, "Umask:"); ok {
				if u, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32); err == nil {
					return uint32(u)
				}
			}
		}
	}
	old := syscall.Umask(0o22)
	syscall.Umask(old)
	return uint32(old)
}

// foreground reports whether this process's group owns the terminal fd
// (true when fd is no terminal: nothing to share).
func foreground(fd int) bool {
	pgrp, err := unix.IoctlGetInt(fd, unix.TIOCGPGRP)
	if err != nil {
		return true
	}
	return pgrp == syscall.Getpgrp()
}

// exitLike exits as the program did: with its status, or by its signal.
func exitLike(e *api.RunExit) int {
	if e.Signal == 0 {
		return e.Code
	}
	dieOf(syscall.Signal(e.Signal))
	// Signals whose default is not to end a process (SIGCHLD, SIGCONT...):
	// the shell's code for a death by signal.
	time.Sleep(100 * time.Millisecond)
	return 128 + e.Signal
}

// terminal is the user's terminal while the program runs on a terminal of
// its own: raw, so that every key travels to the program's terminal.
type terminal struct {
	fd    int
	saved *unix.Termios
}

func (t *terminal) raw() {
	if t == nil || t.saved != nil {
		return
	}
	saved, err := pty.MakeRaw(t.fd)
	if err == nil {
		t.saved = saved
	}
}

func (t *terminal) restore() {
	if t == nil || t.saved == nil {
		return
	}
	pty.Restore(t.fd, t.saved)
	t.saved = nil
}
