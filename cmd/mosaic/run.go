package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
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
			return exitError{runCommand(cmd.Context(), g, f, argv)}
		},
	}
	f.define(cmd.Flags())
	return cmd
}

// define puts run's flags in fs: cobra's command and runFast share them.
func (f *runFlags) define(fs *pflag.FlagSet) {
	fs.SetInterspersed(false) // flags after PROG are PROG's
	fs.StringVar(&f.on, "on", "", "run on this node")
	fs.BoolVar(&f.here, "here", false, "run on this node (the home)")
	fs.BoolVar(&f.pin, "pin", false, "never let a policy move it (mosaic migrate still can)")
	fs.BoolVarP(&f.verbose, "verbose", "v", false, "say where the program runs, on stderr")
}

// runFast runs `mosaic run ...` without building cobra's command tree.
// Starting a program elsewhere costs the CLI's own start plus the daemons'
// part, and the tree (twenty commands, their flags, the version from the
// build info) was about 2 ms of the CLI's 10 on this machine. Only a command
// line that parseRun takes goes this way; anything else (--help, a bad
// flag, another command) is left to cobra, which reports it as always.
func runFast(argv []string) (status int, ok bool) {
	g, f, prog, ok := parseRun(argv)
	if !ok {
		return 0, false
	}
	// One P: the client mostly waits, and a second one only has idle
	// threads spin and wake on the CPUs the daemons and the program need
	// (0.5-1 ms less CPU per run on two cores).
	runtime.GOMAXPROCS(1)
	return runCommand(context.Background(), g, f, prog), true
}

// parseRun parses `mosaic [--socket S] run [FLAGS] [--] PROG [ARGS...]`
// with run's own flags; ok is false for any other command line.
func parseRun(argv []string) (g *globals, f *runFlags, prog []string, ok bool) {
	g, f = &globals{}, &runFlags{}
	if len(argv) >= 2 && argv[0] == "--socket" {
		g.socket, argv = argv[1], argv[2:]
	} else if len(argv) >= 1 && strings.HasPrefix(argv[0], "--socket=") {
		g.socket, argv = strings.TrimPrefix(argv[0], "--socket="), argv[1:]
	}
	if len(argv) == 0 || argv[0] != "run" {
		return nil, nil, nil, false
	}
	fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&g.socket, "socket", g.socket, "")
	f.define(fs)
	if fs.Parse(argv[1:]) != nil || fs.NArg() == 0 {
		return nil, nil, nil, false
	}
	return g, f, fs.Args(), true
}

// runCommand is `mosaic run ARGV...`: it returns the status to exit with.
func runCommand(ctx context.Context, g *globals, f *runFlags, argv []string) int {
	if len(argv) == 0 {
		return complain("no program given: mosaic run [--on NODE | --here] [--] PROG ARGS...")
	}
	sigs := catchSignals()
	args, err := runArgs(argv)
	if err != nil {
		return complain("%v", err)
	}
	return runProgram(ctx, g, f, args, sigs)
}

// complain says what went wrong and returns the status for it.
func complain(format string, a ...any) int {
	fmt.Fprintf(os.Stderr, "mosaic: "+format+"\n", a...)
	return api.StatusMosaicError
}

// runProgram runs a program (or restores one: args.Image, and the image's
// descriptor in image) and returns the status to exit with. It dies of the
// program's signal itself when the program died of one.
func runProgram(ctx context.Context, g *globals, f *runFlags, args api.RunArgs, sigs *signals, image ...int) int {
	stderr := os.Stderr
	args.On, args.Here, args.Pin = f.on, f.here, f.pin

	req, err := api.EncodeRequest(api.OpRun, args)
	if err != nil {
		return complain("%v", err)
	}
	conn, err := api.Dial(ctx, g.sock())
	if err != nil {
		return complain("%v", err)
	}
	defer conn.Close()
	// Every signal is caught before the program can start, so that none is
	// lost in between.
	<-sigs.ready
	if err := conn.SendEncoded(api.OpRun, req, append([]int{0, 1, 2}, image...)...); err != nil {
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
			err := conn.ReadRunEvent(&e)
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
				if ctx.Err() != nil || sigs.interrupted() {
					// The user stopped it, and the daemon with it.
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
		case s := <-sigs.c:
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

// umask reads this process's umask. umask(2) only reads it by setting it:
// it is set back at once, and nothing in this client creates a file in
// between. (/proc/self/status has it without a change, at ten times the
// cost.)
func umask() uint32 {
	old := syscall.Umask(0o22)
	syscall.Umask(old)
	return uint32(old)
}

// signals are the signals that reach this client: they are its program's.
type signals struct {
	c     chan os.Signal
	ready chan struct{} // closed once all are caught
}

// catchSignals starts catching the program's signals. os/signal enables
// each signal with a round trip to a thread of its own (about 1 ms for these
// eleven on this machine), so this runs while the client gathers the
// program's environment and dials its daemon; runProgram waits for it before
// the request leaves. Never stopped: the CLI exits when its program does, and
// signal.Stop waits for the signal machinery to settle.
func catchSignals() *signals {
	s := &signals{c: make(chan os.Signal, 16), ready: make(chan struct{})}
	go func() {
		signal.Notify(s.c, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGUSR1,
			syscall.SIGUSR2, syscall.SIGALRM, syscall.SIGWINCH, syscall.SIGTSTP, syscall.SIGCONT, syscall.SIGPIPE)
		close(s.ready)
	}()
	return s
}

// interrupted reports whether one of the signals waiting to be passed on
// would end the program (Ctrl-C, kill, hangup): the connection to the
// daemon ending after one is no surprise.
func (s *signals) interrupted() bool {
	for {
		select {
		case sig := <-s.c:
			if sig == syscall.SIGINT || sig == syscall.SIGTERM || sig == syscall.SIGHUP {
				return true
			}
		default:
			return false
		}
	}
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
