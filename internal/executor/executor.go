// Package executor runs processes on this node for their home nodes (this
// one included) and supervises them: it starts each one as its user, relays
// its terminal or pipes over the stream its home opened, delivers the
// signals its home sends, and reports its stops, continues and exit.
//
// A process's stream is its lifeline: when the stream breaks, the home is
// gone, and the process is killed, so that no process outlives the node
// that answers for it.
package executor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mosaic-cluster/mosaic/internal/peerpb"
	"github.com/mosaic-cluster/mosaic/internal/procstream"
	"github.com/mosaic-cluster/mosaic/internal/spawn"
)

// chunk is the most bytes of output per message: large enough that a
// program writing fast is relayed in few messages.
const chunk = procstream.MaxData

// drainAfterExit is how long output is still relayed after the process
// exited while something it started keeps its pipes open. A shell reports a
// job done when its process exits, not when every descendant has let go of
// the terminal; this keeps that promptness without cutting off output that
// is still in the pipe.
const drainAfterExit = 200 * time.Millisecond

// ServerStream is the running node's end of a process's stream: the gRPC
// server stream of Exec.Run, or an in-process pipe (Local).
type ServerStream interface {
	Send(*peerpb.ExecOut) error
	Recv() (*peerpb.ExecIn, error)
	Context() context.Context
}

// Executor runs the processes of this node.
type Executor struct {
	node    string
	spawner *spawn.Spawner
	log     *slog.Logger

	mu     sync.Mutex
	procs  map[string]*guest
	closed bool
	wg     sync.WaitGroup
}

// New returns an executor that starts processes with spawner.
func New(node string, spawner *spawn.Spawner, log *slog.Logger) *Executor {
	return &Executor{node: node, spawner: spawner, log: log, procs: map[string]*guest{}}
}

// guest is one process this node runs.
type guest struct {
	start   *peerpb.ExecStart
	pid     int
	started time.Time

	mu sync.Mutex // guards pid, which is negated once the process is reaped
}

// Serve runs the process described by the stream's first message for the
// node called from (authenticated by the caller) and relays it until it
// exits or the stream breaks. It returns when the process has exited and
// been reaped.
func (e *Executor) Serve(from string, s ServerStream) error {
	first, err := s.Recv()
	if err != nil {
		return err
	}
	st := first.GetStart()
	if st == nil {
		return errors.New("the first message of a process stream must start it")
	}
	out := &sender{s: s}
	refuse := func(kind peerpb.FailureKind, format string, a ...any) error {
		return out.send(&peerpb.ExecOut{Msg: &peerpb.ExecOut_Failure{Failure: &peerpb.Failure{Kind: kind, Message: fmt.Sprintf(format, a...)}}})
	}
	// Only a process's home may start it, under an ID of its own.
	if st.Home != from || !strings.HasPrefix(st.Id, from+".") {
		return refuse(peerpb.FailureKind_REFUSED, "node %s may not start process %s for home %s", from, st.Id, st.Home)
	}
	if len(st.Argv) == 0 {
		return refuse(peerpb.FailureKind_FAILURE_OTHER, "no program given")
	}
	g := &guest{start: st, started: time.Now()}
	if !e.add(st.Id, g) {
		return refuse(peerpb.FailureKind_REFUSED, "node %s is shutting down", e.node)
	}
	defer e.remove(st.Id)

	std, err := newStdio(st)
	if err != nil {
		return refuse(peerpb.FailureKind_FAILURE_OTHER, "on %s: %v", e.node, err)
	}
	defer std.close()
	p, err := e.spawner.Start(spawn.Spec{
		Argv: st.Argv, Env: st.Env, Dir: st.Cwd, UID: st.Uid, GID: st.Gid, Groups: st.Groups,
		Umask: st.Umask, Rlimits: rlimits(st.Rlimits), Files: std.childFiles(), Terminal: st.Tty != nil,
	})
	std.closeChildEnds()
	if err != nil {
		kind := peerpb.FailureKind_FAILURE_OTHER
		var se *spawn.Error
		if errors.As(err, &se) {
			kind = map[spawn.Kind]peerpb.FailureKind{
				spawn.NotFound: peerpb.FailureKind_NOT_FOUND, spawn.NotExecutable: peerpb.FailureKind_NOT_EXECUTABLE,
				spawn.NoDir: peerpb.FailureKind_NO_CWD,
			}[se.Kind]
		}
		return refuse(kind, "%v (on node %s)", err, e.node)
	}
	defer p.Release()
	g.pid = p.Pid
	if err := out.send(&peerpb.ExecOut{Msg: &peerpb.ExecOut_Started{Started: int32(p.Pid)}}); err != nil {
		// The home is gone already.
		killJob(p.Pid)
	}
	e.log.Debug("started", "id", st.Id, "pid", p.Pid, "home", from, "argv", st.Argv)

	// Output relays.
	var relays sync.WaitGroup
	for _, r := range std.readers() {
		relays.Add(1)
		go func() {
			defer relays.Done()
			r.relay(out)
		}()
	}
	// Input and control from the home. When the stream breaks, the home is
	// gone: kill the process.
	homeGone := make(chan struct{})
	go func() {
		defer close(homeGone)
		e.control(s, g, std)
	}()

	status := g.wait(out)
	// Let the output that is in the pipes out, then cut what is left.
	relaysDone := make(chan struct{})
	go func() { relays.Wait(); close(relaysDone) }()
	select {
	case <-relaysDone:
	case <-time.After(drainAfterExit):
		std.cutReaders()
		<-relaysDone
	}
	out.send(&peerpb.ExecOut{Msg: &peerpb.ExecOut_Exit{Exit: status}})
	e.log.Debug("exited", "id", st.Id, "code", status.Code, "signal", status.Signal)
	select {
	case <-homeGone:
	case <-s.Context().Done():
	case <-time.After(time.Second):
		// The home did not close its side; the process is done anyway.
	}
	return nil
}

// control applies what the home sends until the stream ends. A broken
// stream (not a clean end after the exit) kills the process group.
func (e *Executor) control(s ServerStream, g *guest, std *stdio) {
	for {
		in, err := s.Recv()
		if err != nil {
			if pid := g.livePID(); pid > 0 {
				e.log.Info("home gone: killing its process", "id", g.start.Id, "pid", pid, "err", err)
				killJob(pid)
			}
			std.closeStdin()
			return
		}
		switch m := in.Msg.(type) {
		case *peerpb.ExecIn_Stdin:
			if err := std.writeStdin(m.Stdin); err != nil {
				std.closeStdin()
			}
		case *peerpb.ExecIn_StdinEof:
			std.stdinEOF()
		case *peerpb.ExecIn_Signal:
			pid := g.livePID()
			if pid <= 0 {
				break
			}
			signalJob(pid, syscall.Signal(m.Signal.GetNumber()), m.Signal.GetGroup())
		case *peerpb.ExecIn_Resize:
			std.resize(m.Resize)
		case *peerpb.ExecIn_StdoutClosed:
			std.cut(1)
		case *peerpb.ExecIn_StderrClosed:
			std.cut(2)
		}
	}
}

// wait reaps the process, reporting stops and continues as they happen.
func (g *guest) wait(out *sender) *peerpb.Exit {
	pid := g.livePID()
	for {
		var ws syscall.WaitStatus
		_, err := syscall.Wait4(pid, &ws, syscall.WUNTRACED|unix.WCONTINUED, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			return &peerpb.Exit{Code: 255}
		}
		switch {
		case ws.Exited():
			g.markExited()
			return &peerpb.Exit{Code: int32(ws.ExitStatus())}
		case ws.Signaled():
			g.markExited()
			return &peerpb.Exit{Signal: int32(ws.Signal()), CoreDumped: ws.CoreDump()}
		case ws.Stopped():
			out.send(&peerpb.ExecOut{Msg: &peerpb.ExecOut_Stopped{Stopped: int32(ws.StopSignal())}})
		case ws.Continued():
			out.send(&peerpb.ExecOut{Msg: &peerpb.ExecOut_Continued{Continued: true}})
		}
	}
}

func (g *guest) markExited() {
	g.mu.Lock()
	g.pid = -g.pid // keep the number for logs, but never signal it again
	g.mu.Unlock()
}

// killJob kills a process and its process group (what it started, unless
// it moved that elsewhere).
func killJob(pid int) {
	syscall.Kill(-pid, syscall.SIGKILL)
	syscall.Kill(pid, syscall.SIGKILL)
}

func rlimits(in []*peerpb.Rlimit) []spawn.Rlimit {
	out := make([]spawn.Rlimit, 0, len(in))
	for _, r := range in {
		out = append(out, spawn.Rlimit{Resource: int(r.Resource), Cur: r.Cur, Max: r.Max})
	}
	return out
}

func (e *Executor) add(id string, g *guest) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return false
	}
	e.procs[id] = g
	e.wg.Add(1)
	return true
}

func (e *Executor) remove(id string) {
	e.mu.Lock()
	delete(e.procs, id)
	e.mu.Unlock()
	e.wg.Done()
}

// HomeDown kills the processes whose home membership declared dead or
// gone: nobody is left to answer for them (their streams may take much
// longer to break, behind a partition).
func (e *Executor) HomeDown(home string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for id, g := range e.procs {
		if g.start.Home != home {
			continue
		}
		if pid := g.livePID(); pid > 0 {
			e.log.Info("home gone: killing its process", "id", id, "pid", pid, "home", home)
			killJob(pid)
		}
	}
}

// Close refuses new processes, kills the running ones and waits for them.
func (e *Executor) Close() {
	e.mu.Lock()
	e.closed = true
	for _, g := range e.procs {
		if pid := g.livePID(); pid > 0 {
			killJob(pid)
		}
	}
	e.mu.Unlock()
	e.wg.Wait()
}

func (g *guest) livePID() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.pid
}

// List describes the processes this node runs, for `mosaic ps`: all of
// them, or those of one user.
func (e *Executor) List(uid uint32, all bool) []*peerpb.ProcInfo {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []*peerpb.ProcInfo
	for id, g := range e.procs {
		st := g.start
		if !all && st.Uid != uid {
			continue
		}
		pid := g.livePID()
		pi := &peerpb.ProcInfo{
			Id: id, Uid: st.Uid, User: st.User, Home: st.Home, Node: e.node, Pid: int32(pid),
			StartedUnixMs: g.started.UnixMilli(), Argv: st.Argv, Cwd: st.Cwd, Tty: st.Tty != nil,
			State: "running",
		}
		if pid <= 0 {
			pi.State, pi.Pid = "exited", int32(-pid)
		} else {
			pi.CpuSeconds, pi.Rss, pi.ProcState = procStat(pid)
			if pi.ProcState == "T" {
				pi.State = "stopped"
			}
		}
		out = append(out, pi)
	}
	slices.SortFunc(out, func(a, b *peerpb.ProcInfo) int { return strings.Compare(a.Id, b.Id) })
	return out
}

// procStat reads a process's CPU time, resident memory and state from /proc.
func procStat(pid int) (cpu float64, rss uint64, state string) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, "?"
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return 0, 0, "?"
	}
	f := strings.Fields(s[i+2:])
	if len(f) < 22 {
		return 0, 0, "?"
	}
	utime, _ := strconv.ParseUint(f[11], 10, 64)
	stime, _ := strconv.ParseUint(f[12], 10, 64)
	pages, _ := strconv.ParseUint(f[21], 10, 64)
	return float64(utime+stime) / 100, pages * uint64(os.Getpagesize()), f[0]
}

// sender serializes sends on a stream (gRPC streams allow one sender at a
// time) and remembers the first failure.
type sender struct {
	mu  sync.Mutex
	s   ServerStream
	err error
}

// dataSender is a stream that sends output already in a buffer after a
// header's room, without copying it (procstream.Server).
type dataSender interface {
	SendData(fd int, buf []byte) error
}

// sendData sends output that is in buf[procstream.HeaderSize:]; buf may be
// reused once it returns.
func (o *sender) sendData(fd int, buf []byte) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.err != nil {
		return o.err
	}
	if ds, ok := o.s.(dataSender); ok {
		o.err = ds.SendData(fd, buf)
		return o.err
	}
	data := append([]byte(nil), buf[procstream.HeaderSize:]...)
	m := &peerpb.ExecOut{Msg: &peerpb.ExecOut_Stdout{Stdout: data}}
	if fd == 2 {
		m = &peerpb.ExecOut{Msg: &peerpb.ExecOut_Stderr{Stderr: data}}
	}
	o.err = o.s.Send(m)
	return o.err
}

func (o *sender) send(m *peerpb.ExecOut) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.err != nil {
		return o.err
	}
	o.err = o.s.Send(m)
	return o.err
}
