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
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mosaic-cluster/mosaic/internal/bufpool"
	"github.com/mosaic-cluster/mosaic/internal/ckpt"
	"github.com/mosaic-cluster/mosaic/internal/cpufeat"
	"github.com/mosaic-cluster/mosaic/internal/ioprio"
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

// drainLimit bounds the wait for output after the process exited, for a
// descendant that keeps writing.
const drainLimit = 5 * time.Second

// ServerStream is the running node's end of a process's stream: the gRPC
// server stream of Exec.Run, or an in-process pipe (Local).
type ServerStream interface {
	Send(*peerpb.ExecOut) error
	Recv() (*peerpb.ExecIn, error)
	Context() context.Context
}

// Config wires an Executor to its node.
type Config struct {
	Node string
	// Spawner starts processes.
	Spawner *spawn.Spawner
	// Restorer starts the processes that migrate here: a thread of its
	// own, which a restore holds until the process runs.
	Restorer *spawn.Spawner
	// Dial opens a process connection to another node, for an image.
	Dial func(ctx context.Context, node string) (Conn, error)
	Log  *slog.Logger
	// Quota, if set, is the node's CPU quota. The Restorer's processes
	// are born outside it and come under it once restored; a process
	// leaves it for its freeze, and comes back if it goes on here.
	Quota Quota
	// CPU is this node's instruction-set extensions (cpufeat.Local, when
	// nil): a process that may use one it lacks is not taken.
	CPU []string
}

// Quota puts processes under the node's CPU quota (its cgroup) and takes
// them out. What the daemon does in a process, the system calls a freeze
// or a restore runs in it and its stops, is charged to the process's
// group: under the quota it waits behind the node's busy processes, up to
// a quota period at a time (a move between two busy quarter-core nodes
// froze an 8 MiB process for 370 ms where an idle one takes 12 ms).
type Quota interface {
	CapCPU(pid int) error
	UncapCPU(pid int) error
}

// outOfQuota takes a process about to freeze out of the node's CPU quota;
// back puts it under again, for when it goes on here (call it before the
// process is let go).
func (e *Executor) outOfQuota(id string, pid int) (back func()) {
	q := e.cfg.Quota
	if q == nil {
		return func() {}
	}
	// With its children, which move with it.
	for _, p := range append([]int{pid}, ckpt.Descendants(pid)...) {
		if err := q.UncapCPU(p); err != nil {
			// Slower, not wrong: the freeze waits for the quota.
			e.log.Warn("take a process out of the node's CPU quota for its freeze", "id", id, "pid", p, "err", err)
		}
	}
	return func() {
		// Those there now: a child made meanwhile is out with its parent.
		for _, p := range append([]int{pid}, ckpt.Descendants(pid)...) {
			if err := q.CapCPU(p); err != nil && p == pid {
				e.log.Error("put a process back under the node's CPU quota", "id", id, "err", err)
			}
		}
	}
}

// Executor runs the processes of this node.
type Executor struct {
	cfg  Config
	node string
	log  *slog.Logger

	mu        sync.Mutex
	procs     map[string]*guest
	adoptions map[string]*adoption // by token
	adopted   chan struct{}        // closed (and replaced) when one is added or refused
	// refusals are the adoptions this node refused, by token, so that
	// their image, which may come at the same time, is refused at once
	// and for the same reason.
	refusals map[string]refusal
	receipts map[string]*Receipt // by token
	// waiting are the streams that have not said yet what they are for
	// (a home dials one ahead of its next process): Close ends them.
	waiting map[*int]io.Closer
	closed  bool
	wg      sync.WaitGroup
	// noGuests: processes of other homes are refused (--no-guests, or
	// the node drains).
	noGuests atomic.Bool
	// buffers are those images stream through, kept warm from one move
	// to the next.
	buffers *bufpool.Pool
	// outputs are the buffers that processes' output is read into (by
	// their relays) and carried home in (by a Local stream).
	outputs *bufpool.Pool
}

// keptOutputs bounds the buffers a node keeps for output: what a local
// stream holds in flight (its channel's 16 chunks), and the relays' own
// (two a process) for a few processes at once.
const keptOutputs = 32 * chunk

// keptBuffers bounds the buffers a node keeps for images: enough for one
// move out and one in at once (a checkpoint's and a restore's buffers,
// ckpt's runs of a megabyte, and an image connection's frames).
const keptBuffers = 12 << 20

// SetNoGuests makes the node refuse (or take again) processes whose home
// is another node; those it runs stay.
func (e *Executor) SetNoGuests(no bool) { e.noGuests.Store(no) }

// refusesGuest says why a process from home cannot come here, or "".
func (e *Executor) refusesGuest(home string) string {
	if home != e.node && e.noGuests.Load() {
		return fmt.Sprintf("node %s takes no guests (it drains, or runs with --no-guests)", e.node)
	}
	return ""
}

// New returns an executor.
func New(cfg Config) *Executor {
	// Warm from the start: what a small process's move takes at each end
	// (a buffer to read its memory into, and one to decode it into,
	// should it come here). Fresh, they cost a node's first moves 3 to
	// 5 ms of page faults at each end (about 10 ms more frozen on a new
	// cluster's first move).
	buffers := bufpool.New(keptBuffers)
	buffers.Warm(2, ckpt.RunBuffer)
	if cfg.CPU == nil {
		cfg.CPU = cpufeat.Local()
	}
	return &Executor{cfg: cfg, node: cfg.Node, log: cfg.Log, procs: map[string]*guest{},
		adoptions: map[string]*adoption{}, refusals: map[string]refusal{}, receipts: map[string]*Receipt{}, waiting: map[*int]io.Closer{},
		adopted: make(chan struct{}), buffers: buffers, outputs: bufpool.New(keptOutputs)}
}

// guest is one process this node runs.
type guest struct {
	start   *peerpb.ExecStart
	started time.Time
	std     *stdio
	out     *sender
	// ns is the process's PID and mount namespace; closing it ends what
	// the process left running in it.
	ns *spawn.Namespace

	mu  sync.Mutex
	pid int // negated once the process is reaped
	// tracing is set while a migration traces the process: its stops are
	// the tracer's to collect, and the waiter holds off until it closes.
	tracing chan struct{}
	// decide carries the home's word on a migration under way.
	decide chan decision
	// moved: the process went on elsewhere; its end here is no exit.
	moved bool
	// cpuBefore is the CPU time the process used before it came here (on
	// the nodes it left), which the kernel's count here does not have.
	cpuBefore float64
	// cpuUsed is the instruction-set extensions of the nodes it ran on
	// before this one (nil: it started here), any of which its code may
	// use.
	cpuUsed []string
}

// cpuNeeds is what a node must have to take the process: the features of
// every node it ran on, this one included.
func (e *Executor) cpuNeeds(g *guest) []string { return cpufeat.Union(g.cpuUsed, e.cfg.CPU) }

// lacks says why this node cannot take a process that may use features,
// or "" if it can.
func (e *Executor) lacks(id string, features []string) string {
	missing := cpufeat.Missing(features, e.cfg.CPU)
	if len(missing) == 0 {
		return ""
	}
	return fmt.Sprintf("the CPU of %s lacks %s, which %s may use (a node it ran on has them): it would die of SIGILL here",
		e.node, strings.Join(missing, ", "), id)
}

// cpuSeconds is the CPU time the process, running here as pid, has used
// in all: before it came here and since.
func (g *guest) cpuSeconds(pid int) float64 {
	cpu, _, _, _ := treeStat(pid)
	return g.cpuBefore + cpu
}

// Serve serves a process stream for the node called from (authenticated
// by the caller): a process to start (its home asks), one to take over
// from another node (its home asks), or the image of one (the node it
// leaves sends it). It returns when the process has exited here, or left.
func (e *Executor) Serve(from string, s ServerStream) error {
	first, err := e.first(s)
	if err != nil {
		return err
	}
	out := &sender{s: s}
	switch m := first.Msg.(type) {
	case *peerpb.ExecIn_Start:
		return e.serveStart(from, s, out, m.Start)
	case *peerpb.ExecIn_Adopt:
		return e.serveAdopt(from, s, out, m.Adopt)
	case *peerpb.ExecIn_Image:
		return e.serveImage(from, s, out, m.Image)
	}
	return errors.New("the first message of a process stream must start, adopt or carry a process")
}

// first reads a stream's first message; a stream that can be closed is
// ended by Close meanwhile.
func (e *Executor) first(s ServerStream) (*peerpb.ExecIn, error) {
	c, ok := s.(io.Closer)
	if !ok {
		return s.Recv()
	}
	key := new(int)
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		c.Close()
		return nil, fmt.Errorf("node %s is shutting down", e.node)
	}
	e.waiting[key] = c
	e.mu.Unlock()
	m, err := s.Recv()
	e.mu.Lock()
	delete(e.waiting, key)
	e.mu.Unlock()
	return m, err
}

func refuse(out *sender, kind peerpb.FailureKind, format string, a ...any) error {
	return out.send(&peerpb.ExecOut{Msg: &peerpb.ExecOut_Failure{Failure: &peerpb.Failure{Kind: kind, Message: fmt.Sprintf(format, a...)}}})
}

// checkHome makes sure that only a process's home starts or moves it,
// under an ID of its own.
func checkHome(from string, st *peerpb.ExecStart) error {
	if st == nil {
		return errors.New("no process described")
	}
	if st.Home != from || !strings.HasPrefix(st.Id, from+".") {
		return fmt.Errorf("node %s may not start process %s for home %s", from, st.Id, st.Home)
	}
	return nil
}

func (e *Executor) serveStart(from string, s ServerStream, out *sender, st *peerpb.ExecStart) error {
	if err := checkHome(from, st); err != nil {
		return refuse(out, peerpb.FailureKind_REFUSED, "%v", err)
	}
	if len(st.Argv) == 0 {
		return refuse(out, peerpb.FailureKind_FAILURE_OTHER, "no program given")
	}
	if why := e.refusesGuest(from); why != "" {
		return refuse(out, peerpb.FailureKind_REFUSED, "%s", why)
	}
	g := &guest{start: st, started: time.Now(), out: out}
	took := newSteps(g.started)
	if !e.add(st.Id, g) {
		return refuse(out, peerpb.FailureKind_REFUSED, "node %s is shutting down", e.node)
	}
	defer e.remove(st.Id)

	std, err := newStdio(st, e.outputs)
	if err != nil {
		return refuse(out, peerpb.FailureKind_FAILURE_OTHER, "on %s: %v", e.node, err)
	}
	defer std.close()
	g.std = std
	took.mark("stdio")
	if g.ns, err = e.cfg.Spawner.NewNamespace(); err != nil {
		return refuse(out, peerpb.FailureKind_FAILURE_OTHER, "on %s: %v", e.node, err)
	}
	defer g.ns.Close()
	took.mark("namespace")
	spec := spawn.Spec{
		Argv: st.Argv, Env: st.Env, Dir: st.Cwd, UID: st.Uid, GID: st.Gid, Groups: st.Groups,
		Umask: st.Umask, Rlimits: rlimits(st.Rlimits), Nice: int(st.Nice), IOPrio: ioprio.Prio(st.Ioprio), SchedPolicy: int(st.SchedPolicy), Files: std.childFiles(), Terminal: st.Tty != nil,
		Namespace: g.ns,
	}
	// Its signals ignored as its caller had them (nohup, a background
	// job), not as this daemon has them, and no_new_privs if its caller
	// is under it (a sandbox): a step inside the new process before its
	// first instruction, where they differ from what it inherits.
	spec.NoNewPrivs = st.NoNewPrivs
	setup := ckpt.ExecSetup{NoNewPrivs: st.NoNewPrivs}
	inherited := e.cfg.Spawner.Ignored()
	for _, sig := range st.Ignored {
		if !slices.Contains(inherited, int(sig)) {
			setup.Ignore = append(setup.Ignore, int(sig))
		}
	}
	for _, sig := range inherited {
		if !slices.Contains(st.Ignored, int32(sig)) {
			setup.Default = append(setup.Default, sig)
		}
	}
	if len(setup.Ignore) > 0 || len(setup.Default) > 0 || setup.NoNewPrivs {
		spec.AtExec = setup.Apply
	}
	p, err := e.cfg.Spawner.Start(spec)
	std.closeChildEnds()
	if err != nil {
		return refuse(out, failureKind(err), "%v (on node %s)", err, e.node)
	}
	defer p.Release()
	g.setPID(p.Pid)
	took.mark("spawn")
	if err := out.send(&peerpb.ExecOut{Msg: &peerpb.ExecOut_Started{Started: int32(p.Pid)}}); err != nil {
		// The home is gone already.
		killJob(p.Pid)
	}
	took.mark("told")
	e.log.Debug("started", "id", st.Id, "pid", p.Pid, "home", from, "argv", st.Argv, "steps", took)
	e.supervise(s, g)
	return nil
}

// failureKind classifies a failure to start for the home.
func failureKind(err error) peerpb.FailureKind {
	var se *spawn.Error
	if errors.As(err, &se) {
		switch se.Kind {
		case spawn.NotFound:
			return peerpb.FailureKind_NOT_FOUND
		case spawn.NotExecutable:
			return peerpb.FailureKind_NOT_EXECUTABLE
		case spawn.NoDir:
			return peerpb.FailureKind_NO_CWD
		}
	}
	return peerpb.FailureKind_FAILURE_OTHER
}

// supervise relays a running process until it exits (or leaves for
// another node) and reaps it.
func (e *Executor) supervise(s ServerStream, g *guest) {
	std, out, st := g.std, g.out, g.start
	std.startRelays(out)
	// Input and control from the home. When the stream breaks, the home is
	// gone: kill the process.
	homeGone := make(chan struct{})
	go func() {
		defer close(homeGone)
		e.control(s, g)
	}()

	status := g.wait(out)
	// What it left running in its namespace ends with it (and so lets go
	// of its output pipes). The init is reaped (serveStart's Close) once
	// the exit is reported.
	if err := g.ns.End(); err != nil {
		e.log.Warn("end the process's namespace", "id", st.Id, "err", err)
	}
	if g.hasMoved() {
		// It runs elsewhere now; its relays were held when it froze.
		e.log.Debug("moved away", "id", st.Id)
		return
	}
	// Let the output out. If something the process started still holds
	// its pipes open, stop waiting for more after drainAfterExit, but only
	// once the pipes are empty: what is in them was written, and a busy
	// node (the relays not scheduled for a while) must not lose it.
	relaysDone := make(chan struct{})
	go func() { std.relays.Wait(); close(relaysDone) }()
	exited := time.Now()
	wait := time.After(drainAfterExit)
	for cut := false; !cut; {
		select {
		case <-relaysDone:
			cut = true
		case <-wait:
			if std.unread() && time.Since(exited) < drainLimit {
				wait = time.After(drainAfterExit / 10)
				continue
			}
			std.cutReaders()
			<-relaysDone
			cut = true
		}
	}
	out.send(&peerpb.ExecOut{Msg: &peerpb.ExecOut_Exit{Exit: status}})
	// Nothing follows the exit: the end of the stream from this side, so
	// that once the home's end comes too, the connection can carry the
	// home's next process (procstream's end frames).
	out.closeSend()
	e.log.Debug("exited", "id", st.Id, "code", status.Code, "signal", status.Signal)
	select {
	case <-homeGone:
	case <-s.Context().Done():
	case <-time.After(time.Second):
		// The home did not close its side; the process is done anyway.
	}
}

// control applies what the home sends until the stream ends. A broken
// stream (not a clean end after the exit) kills the process group.
func (e *Executor) control(s ServerStream, g *guest) {
	std := g.std
	for {
		in, err := s.Recv()
		if err != nil {
			if pid := g.livePID(); pid > 0 && !g.hasMoved() {
				e.log.Info("home gone: killing its process", "id", g.start.Id, "pid", pid, "err", err)
				killJob(pid)
			}
			g.tell(homeGone)
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
		case *peerpb.ExecIn_Migrate:
			go e.migrateOut(s, g, m.Migrate)
		case *peerpb.ExecIn_Checkpoint:
			go e.checkpointOut(s, g, m.Checkpoint)
		case *peerpb.ExecIn_Discard:
			g.tell(discard)
		case *peerpb.ExecIn_Resume:
			g.tell(resume)
		}
	}
}

// wait reaps the process, reporting stops and continues as they happen.
func (g *guest) wait(out *sender) *peerpb.Exit {
	pid := g.livePID()
	for {
		// Look before taking: while a migration traces the process, its
		// stops are the tracer's to collect, and a wait from any thread of
		// the daemon would take them.
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WSTOPPED|unix.WCONTINUED|unix.WNOWAIT, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			g.markExited()
			return &peerpb.Exit{Code: 255}
		}
		g.mu.Lock()
		if t := g.tracing; t != nil {
			g.mu.Unlock()
			<-t
			continue
		}
		var ws syscall.WaitStatus
		wpid, err := syscall.Wait4(pid, &ws, syscall.WNOHANG|syscall.WUNTRACED|unix.WCONTINUED, nil)
		if err == nil && wpid == pid && (ws.Exited() || ws.Signaled()) {
			g.pid = -pid // keep the number for logs, but never signal it again
		}
		g.mu.Unlock()
		switch {
		case errors.Is(err, syscall.EINTR), err == nil && wpid == 0:
			continue
		case err != nil:
			g.markExited()
			return &peerpb.Exit{Code: 255}
		case ws.Exited():
			return &peerpb.Exit{Code: int32(ws.ExitStatus())}
		case ws.Signaled():
			return &peerpb.Exit{Signal: int32(ws.Signal()), CoreDumped: ws.CoreDump()}
		case ws.Stopped():
			out.send(&peerpb.ExecOut{Msg: &peerpb.ExecOut_Stopped{Stopped: int32(ws.StopSignal())}})
		case ws.Continued():
			out.send(&peerpb.ExecOut{Msg: &peerpb.ExecOut_Continued{Continued: true}})
		}
	}
}

// homeStreams names the pipes to its home this node gave the process
// (none on a terminal). Read once its pid is set, after which they stay.
func (g *guest) homeStreams() ckpt.Stdio {
	if g.std == nil {
		return ckpt.Stdio{}
	}
	return g.std.home
}

func (g *guest) setPID(pid int) {
	g.mu.Lock()
	g.pid = pid
	g.mu.Unlock()
}

func (g *guest) markExited() {
	g.mu.Lock()
	if g.pid > 0 {
		g.pid = -g.pid
	}
	g.mu.Unlock()
}

func (g *guest) hasMoved() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.moved
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
	for _, c := range e.waiting {
		c.Close()
	}
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
		if pid == 0 {
			continue // not started yet (or arriving)
		}
		pi := &peerpb.ProcInfo{
			Id: id, Uid: st.Uid, User: st.User, Home: st.Home, Node: e.node, Pid: int32(pid),
			StartedUnixMs: g.started.UnixMilli(), Argv: st.Argv, Cwd: st.Cwd, Tty: st.Tty != nil,
			State: "running",
		}
		if pid < 0 {
			pi.State, pi.Pid = "exited", int32(-pid)
		} else {
			if err := ckpt.MovableWith(pid, g.homeStreams()); err != nil {
				pi.Pinned = pinnedReason(err)
			} else if st.Pinned {
				pi.Pinned = "its user pinned it (mosaic run --pin): policies do not move it"
			}
			var nice int
			pi.CpuSeconds, pi.Rss, pi.ProcState, nice = treeStat(pid)
			pi.CpuSeconds += g.cpuBefore
			pi.Nice = int32(nice)
			for _, d := range ckpt.Descendants(pid) {
				if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", d)); err == nil {
					pi.Children = append(pi.Children, fmt.Sprintf("%d %s", d, strings.TrimSpace(string(comm))))
				}
			}
			if pi.ProcState == "T" {
				pi.State = "stopped"
			}
		}
		out = append(out, pi)
	}
	slices.SortFunc(out, func(a, b *peerpb.ProcInfo) int { return strings.Compare(a.Id, b.Id) })
	return out
}

// PinnedByUser is Running.Pinned for a process its user pinned (mosaic run
// --pin) that could otherwise move.
const PinnedByUser = "pinned by its user (mosaic run --pin)"

// Running is a process that runs here, as the node's policy sees it.
type Running struct {
	ID, Home   string
	Since      time.Time // it started or arrived here
	CPUSeconds float64   // user and system time of all its threads, here and before it came
	RSS        uint64
	// Pinned says why a policy must not move it ("" = it may): its user
	// pinned it, or it holds what the engine cannot carry.
	Pinned string
}

// Running lists the processes that run here now (not starting, stopped,
// exited or leaving).
func (e *Executor) Running() []Running {
	e.mu.Lock()
	type entry struct {
		id  string
		g   *guest
		pid int
	}
	var gs []entry
	for id, g := range e.procs {
		if pid := g.livePID(); pid > 0 {
			gs = append(gs, entry{id, g, pid})
		}
	}
	e.mu.Unlock()
	var out []Running
	for _, x := range gs {
		cpu, rss, state, _ := treeStat(x.pid)
		if state == "T" || state == "Z" || state == "?" {
			continue
		}
		r := Running{ID: x.id, Home: x.g.start.Home, Since: x.g.started, CPUSeconds: x.g.cpuBefore + cpu, RSS: rss}
		if err := ckpt.MovableWith(x.pid, x.g.homeStreams()); err != nil {
			r.Pinned = pinnedReason(err)
		} else if x.g.start.Pinned {
			r.Pinned = PinnedByUser
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b Running) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// procStat reads a process's CPU time, resident memory, state and (its
// main thread's) nice value from /proc.
// treeStat is procStat of the process with its descendants (which move
// with it): CPU time and resident memory summed over them, each one's
// CPU time with that of the children it has waited for (so the sum goes
// on as they end), the state and nice value the process's.
func treeStat(pid int) (cpu float64, rss uint64, state string, nice int) {
	cpu, rss, state, nice = procStat(pid)
	for _, d := range ckpt.Descendants(pid) {
		c, r, _, _ := procStat(d)
		cpu += c
		rss += r
	}
	return cpu, rss, state, nice
}

// procStat reads the process's CPU time (its own and that of the children
// it has waited for), resident memory, state and nice value.
func procStat(pid int) (cpu float64, rss uint64, state string, nice int) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, "?", 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return 0, 0, "?", 0
	}
	f := strings.Fields(s[i+2:])
	if len(f) < 22 {
		return 0, 0, "?", 0
	}
	var ticks uint64
	for _, k := range []int{11, 12, 13, 14} { // utime, stime, cutime, cstime
		v, _ := strconv.ParseUint(f[k], 10, 64)
		ticks += v
	}
	nice, _ = strconv.Atoi(f[16])
	pages, _ := strconv.ParseUint(f[21], 10, 64)
	return float64(ticks) / 100, pages * uint64(os.Getpagesize()), f[0], nice
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

// closeSend ends the stream from this side, on streams that can (a
// process stream); any send after it fails.
func (o *sender) closeSend() {
	o.mu.Lock()
	defer o.mu.Unlock()
	cs, ok := o.s.(interface{ CloseSend() error })
	if o.err != nil || !ok {
		return
	}
	if o.err = cs.CloseSend(); o.err == nil {
		o.err = errStreamEnded
	}
}

var errStreamEnded = errors.New("the process's stream has ended")

func (o *sender) send(m *peerpb.ExecOut) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.err != nil {
		return o.err
	}
	o.err = o.s.Send(m)
	return o.err
}
