// Package runclient is the client's side of `mosaic run`: it parses the
// command line, gathers what the program inherits from the user's shell
// (environment, working directory, umask, limits, terminal), hands the
// daemon the shell's stdin, stdout and stderr, passes signals on, and ends
// as the program ended.
//
// The mosaic binary runs it before anything else and links nothing heavier
// (no cobra, pflag, net or log/slog: every package a binary links is
// initialized at each start, and `mosaic run` starts for every program a
// user runs; see internal/runproto); a test in cmd/mosaic keeps it so.
package runclient

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/mosaic-cluster/mosaic/internal/ioprio"
	"github.com/mosaic-cluster/mosaic/internal/nofile"
	"github.com/mosaic-cluster/mosaic/internal/pty"
	"github.com/mosaic-cluster/mosaic/internal/runproto"
)

// Options are run's flags (and the socket, a flag of every command).
type Options struct {
	Socket  string // the daemon's socket; empty: runproto.SocketPath's default
	On      string // run on this node
	Here    bool   // run on this node, the home
	Pin     bool   // never moved by a policy
	Verbose bool   // say where it runs, on stderr
}

// Flags are the long names of the flags Parse knows, after "run" (cobra's
// run command in mosaicctl must define the same; a test there checks it).
func Flags() []string { return []string{"on", "here", "pin", "verbose", "socket"} }

// Parse parses `[--socket S] run [FLAGS] [--] PROG [ARGS...]` by hand: the
// flags are few, and pflag links net. Flags end at the program (or at --),
// whose own arguments are its own. ok is false for any other command line,
// and for anything here it does not take (--help, a flag it does not know,
// --here=false, no program): the full CLI then parses it as always and
// says what is wrong.
func Parse(argv []string) (o Options, prog []string, ok bool) {
	if len(argv) >= 2 && argv[0] == "--socket" {
		o.Socket, argv = argv[1], argv[2:]
	} else if len(argv) >= 1 && strings.HasPrefix(argv[0], "--socket=") {
		o.Socket, argv = strings.TrimPrefix(argv[0], "--socket="), argv[1:]
	}
	if len(argv) == 0 || argv[0] != "run" {
		return Options{}, nil, false
	}
	argv = argv[1:]
	for len(argv) > 0 {
		a := argv[0]
		if a == "--" {
			argv = argv[1:]
			break
		}
		if len(a) < 2 || a[0] != '-' {
			break // the program
		}
		var name, value string
		var hasValue bool
		switch {
		case a == "-v":
			name = "verbose"
		case strings.HasPrefix(a, "--"):
			name, value, hasValue = strings.Cut(a[2:], "=")
		default:
			return Options{}, nil, false
		}
		switch name {
		case "on", "socket":
			if !hasValue {
				if len(argv) < 2 {
					return Options{}, nil, false
				}
				value, argv = argv[1], argv[1:]
			}
			if name == "on" {
				o.On = value
			} else {
				o.Socket = value
			}
		case "here", "pin", "verbose":
			if hasValue {
				return Options{}, nil, false
			}
			switch name {
			case "here":
				o.Here = true
			case "pin":
				o.Pin = true
			default:
				o.Verbose = true
			}
		default:
			return Options{}, nil, false
		}
		argv = argv[1:]
	}
	if len(argv) == 0 {
		return Options{}, nil, false
	}
	return o, argv, true
}

// Run is `mosaic run PROG ARGS...` with o: it returns the status to exit
// with, and dies of the program's signal itself when the program died of
// one.
func Run(ctx context.Context, o Options, prog []string) int {
	if len(prog) == 0 {
		return Complain("no program given: mosaic run [--on NODE | --here] [--] PROG ARGS...")
	}
	sigs := CatchSignals()
	args, err := Gather(prog)
	if err != nil {
		return Complain("%v", err)
	}
	return Start(ctx, o, args, sigs)
}

// Complain says what went wrong and returns the status for it.
func Complain(format string, a ...any) int {
	fmt.Fprintf(os.Stderr, "mosaic: "+format+"\n", a...)
	return runproto.StatusMosaicError
}

// Start runs a program (or restores one: args.Image, and the image's
// descriptor in image) and returns the status to exit with. It dies of the
// program's signal itself when the program died of one.
func Start(ctx context.Context, o Options, args runproto.RunArgs, sigs *Signals, image ...int) int {
	stderr := os.Stderr
	args.On, args.Here, args.Pin = o.On, o.Here, o.Pin

	req := runproto.EncodeRequest(runproto.OpRun, args)
	conn, err := runproto.Dial(runproto.SocketPath(o.Socket))
	if err != nil {
		return Complain("%v", err)
	}
	defer conn.Close()
	// Every signal is caught before the program can start, so that none is
	// lost in between.
	<-sigs.ready
	if err := conn.Send(runproto.OpRun, req, append([]int{0, 1, 2}, image...)...); err != nil {
		return Complain("%v", err)
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
		e   runproto.RunEvent
		err error
	}
	events := make(chan eventOrEnd, 16)
	go func() {
		for {
			var e runproto.RunEvent
			err := conn.ReadEvent(&e)
			events <- eventOrEnd{e, err}
			if err != nil {
				return
			}
		}
	}()
	ctl := func(c runproto.RunControl) { conn.WriteControl(c) }

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
					return runproto.StatusLost
				}
				fmt.Fprintf(stderr, "mosaic: lost the connection to the node's daemon (%v): the program was killed with it\n", err)
				return runproto.StatusLost
			}
			e := ev.e
			switch {
			case e.Started != nil:
				if o.Verbose {
					fmt.Fprintf(stderr, "mosaic: %s runs on %s (pid %d there)\n", e.Started.ID, e.Started.Node, e.Started.PID)
				}
				if fg {
					term.raw()
				} else {
					ctl(runproto.RunControl{Foreground: &fg})
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
					return runproto.StatusMosaicError
				}
				return e.Status
			}
		case s := <-sigs.c:
			sig := s.(syscall.Signal)
			switch sig {
			case syscall.SIGWINCH:
				if m, err := pty.Get(0); err == nil && args.Tty != nil {
					ctl(runproto.RunControl{Resize: &runproto.TtyModes{Rows: m.Rows, Cols: m.Cols}})
				}
			case syscall.SIGCONT:
				// Back from a stop (fg or bg): the program goes on too.
				fg = foreground(0)
				ctl(runproto.RunControl{Foreground: &fg})
				if fg {
					term.raw()
				}
				ctl(runproto.RunControl{Signal: int(syscall.SIGCONT), Group: true})
			case syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTSTP:
				// From the terminal: to the program's whole job, as the
				// terminal would have done.
				ctl(runproto.RunControl{Signal: int(sig), Group: true})
			default:
				ctl(runproto.RunControl{Signal: int(sig)})
			}
		case <-poll.C:
			if now := foreground(0); now != fg {
				fg = now
				ctl(runproto.RunControl{Foreground: &fg})
				if fg {
					term.raw()
				} else {
					term.restore()
				}
			}
		}
	}
}

// Gather gathers what the program argv inherits from this shell.
func Gather(argv []string) (runproto.RunArgs, error) {
	cwd, err := os.Getwd()
	if err != nil {
		// The directory was removed under us: it is still the shell's
		// idea of where we are, and the node will say it is not there.
		if pwd := os.Getenv("PWD"); strings.HasPrefix(pwd, "/") {
			cwd = pwd
		} else {
			return runproto.RunArgs{}, fmt.Errorf("the working directory: %w", err)
		}
	}
	a := runproto.RunArgs{Argv: argv, Env: os.Environ(), Cwd: cwd, Umask: umask()}
	a.Ignored = ignoredSignals()
	for r := range unix.RLIMIT_RTTIME + 1 {
		var l unix.Rlimit
		if unix.Getrlimit(r, &l) == nil {
			if r == unix.RLIMIT_NOFILE {
				// Go raised this client's soft limit; the program gets
				// the one the shell gave.
				if orig, ok := nofile.Original(); ok && orig.Max == l.Max {
					l.Cur = orig.Cur
				}
			}
			a.Rlimits = append(a.Rlimits, runproto.Rlimit{Resource: r, Cur: l.Cur, Max: l.Max})
		}
	}
	// getpriority(2) returns 20 - nice, which is never negative.
	if prio, err := unix.Getpriority(unix.PRIO_PROCESS, 0); err == nil {
		a.Nice = 20 - prio
	}
	if p, err := ioprio.Get(0); err == nil {
		a.IOPrio = int(p)
	}
	if attr, err := unix.SchedGetAttr(0, 0); err == nil && (attr.Policy == unix.SCHED_BATCH || attr.Policy == unix.SCHED_IDLE) {
		a.SchedPolicy = int(attr.Policy)
	}
	if nnp, err := unix.PrctlRetInt(unix.PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0); err == nil {
		a.NoNewPrivs = nnp == 1
	}
	if pty.IsTerminal(0) && pty.IsTerminal(1) {
		m, err := pty.Get(0)
		if err != nil {
			return a, fmt.Errorf("read the terminal's modes: %w", err)
		}
		a.Tty = &runproto.TtyModes{Rows: m.Rows, Cols: m.Cols, Iflag: m.Iflag, Oflag: m.Oflag, Cflag: m.Cflag, Lflag: m.Lflag,
			Cc: m.Cc, Ispeed: m.Ispeed, Ospeed: m.Ospeed}
	}
	return a, nil
}

// ignoredSignals are the signals this client was started with ignored,
// which its program starts with ignored too (see CatchSignals): of those
// the Go runtime catches whatever they were, SIGHUP and SIGINT, whose
// inherited SIG_IGN it keeps; and the two it leaves alone, 32 and 33
// (glibc's own), read from the kernel.
func ignoredSignals() []int {
	var sigs []int
	for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGINT} {
		if signal.Ignored(sig) {
			sigs = append(sigs, int(sig))
		}
	}
	for _, sig := range []int{32, 33} {
		var act [4]uint64 // struct kernel_sigaction: handler, flags, restorer, mask
		if _, _, e := unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(sig), 0, uintptr(unsafe.Pointer(&act)), 8, 0, 0); e == 0 && act[0] == 1 {
			sigs = append(sigs, sig) // SIG_IGN
		}
	}
	return sigs
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

// Signals are the signals that reach this client: they are its program's.
type Signals struct {
	c     chan os.Signal
	ready chan struct{} // closed once all are caught
}

// CatchSignals starts catching the program's signals. os/signal enables
// each signal with a round trip to a thread of its own (about 1 ms for these
// eleven on this machine), so this runs while the client gathers the
// program's environment and dials its daemon; Start waits for it before
// the request leaves. Never stopped: the CLI exits when its program does, and
// signal.Stop waits for the signal machinery to settle.
//
// A signal this client was started with ignored stays ignored, and is not
// passed on: `nohup mosaic run ...` survives a hangup and a job a script
// runs in the background (`mosaic run ... &`: the shell ignores SIGINT for
// it) survives the Ctrl-C that ends the script's foreground, as a local
// program would. Of the signals a shell ignores, Go lets a program see only
// SIGHUP and SIGINT as ignored; it catches SIGQUIT whatever it inherited.
// The program starts with them ignored too (RunArgs.Ignored).
func CatchSignals() *Signals {
	s := &Signals{c: make(chan os.Signal, 16), ready: make(chan struct{})}
	go func() {
		var caught []os.Signal
		for _, sig := range []os.Signal{syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGUSR1,
			syscall.SIGUSR2, syscall.SIGALRM, syscall.SIGWINCH, syscall.SIGTSTP, syscall.SIGCONT, syscall.SIGPIPE} {
			if !signal.Ignored(sig) {
				caught = append(caught, sig)
			}
		}
		signal.Notify(s.c, caught...)
		close(s.ready)
	}()
	return s
}

// interrupted reports whether one of the signals waiting to be passed on
// would end the program (Ctrl-C, kill, hangup): the connection to the
// daemon ending after one is no surprise.
func (s *Signals) interrupted() bool {
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
func exitLike(e *runproto.RunExit) int {
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
