// Package home is the home side of mosaic processes: the deputy that keeps,
// at the node where a user started a program, everything of the program
// that belongs there. It holds the very descriptors the user's shell gave
// (terminal or pipes), relays them to wherever the program runs, passes on
// signals, window sizes and job control, and returns the exit status. It
// answers for the process cluster-wide: its ID, its owner, who may signal
// it, and what became of it when a node is lost.
package home

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mosaic-cluster/mosaic/internal/api"
	"github.com/mosaic-cluster/mosaic/internal/executor"
	"github.com/mosaic-cluster/mosaic/internal/ioprio"
	"github.com/mosaic-cluster/mosaic/internal/peerpb"
)

// Config wires a Home to its node.
type Config struct {
	Node string
	Log  *slog.Logger
	// ReserveIDs reserves n process numbers and returns the first.
	ReserveIDs func(n uint64) (uint64, error)
	// Connect opens the stream of a new process to the executor of node
	// (this node included).
	Connect func(ctx context.Context, node string) (executor.Conn, error)
	// Place ranks the nodes for a new process, best first.
	Place func() []string
	// CheckNode says why a process cannot be sent to a node (unknown,
	// dead), or nil.
	CheckNode func(name string) error
	// DialImage opens an image connection to node (this node included),
	// to send a process's image there.
	DialImage func(ctx context.Context, node string) (executor.Conn, error)
}

// lostRetention is how long a lost process stays listed.
const lostRetention = 10 * time.Minute

// Home is the home side of the processes started on this node.
type Home struct {
	cfg Config

	idMu    sync.Mutex
	nextID  uint64
	idLimit uint64

	mu     sync.Mutex
	procs  map[string]*proc
	closed bool
	wg     sync.WaitGroup
}

// New returns a Home.
func New(cfg Config) *Home {
	return &Home{cfg: cfg, procs: map[string]*proc{}}
}

// proc is a process this node is home of.
type proc struct {
	id      string
	uid     uint32
	user    string
	argv    []string
	cwd     string
	tty     bool
	started time.Time
	start   *peerpb.ExecStart

	mu         sync.Mutex
	node       string
	pid        int
	state      string // starting, running, stopped, lost
	lost       time.Time
	conn       *stream
	cancel     context.CancelFunc
	migrations uint32
	// arrived is when it came to the node it runs on; autoMoves counts
	// the moves policies made (each doubles the stay before the next).
	arrived   time.Time
	autoMoves int
	pump      *pump           // the user's input, while relayed
	ckpt      *checkpointWait // a checkpoint under way

	// sendMu orders what goes to the process: while a migration is under
	// way (mig), it is held back in queued, and goes to wherever the
	// process runs once the migration is over.
	sendMu sync.Mutex
	mig    *migration
	queued []*peerpb.ExecIn
}

// deliver sends m to the process, or holds it back while it moves.
func (p *proc) deliver(m *peerpb.ExecIn) error {
	p.sendMu.Lock()
	defer p.sendMu.Unlock()
	if p.mig != nil {
		p.queued = append(p.queued, m)
		return nil
	}
	p.mu.Lock()
	s := p.conn
	p.mu.Unlock()
	if s == nil {
		return errStreamClosed
	}
	return s.send(m)
}

// current is the stream to where the process runs now.
func (p *proc) current() *stream {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.conn
}

func (p *proc) info() *peerpb.ProcInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	return &peerpb.ProcInfo{
		Id: p.id, Uid: p.uid, User: p.user, Node: p.node, Pid: int32(p.pid), State: p.state,
		StartedUnixMs: p.started.UnixMilli(), Argv: p.argv, Cwd: p.cwd, Tty: p.tty, FromHome: true,
		Migrations: p.migrations,
	}
}

// newID hands out the next cluster-wide process ID: this node's name and a
// number never used before here.
func (h *Home) newID() (string, error) {
	h.idMu.Lock()
	defer h.idMu.Unlock()
	if h.nextID == h.idLimit {
		const block = 1000
		first, err := h.cfg.ReserveIDs(block)
		if err != nil {
			return "", fmt.Errorf("reserve process IDs: %w", err)
		}
		h.nextID, h.idLimit = first, first+block
	}
	id := h.cfg.Node + "." + strconv.FormatUint(h.nextID, 10)
	h.nextID++
	return id, nil
}

// runError ends a run before or instead of the program's exit.
type runError struct {
	msg    string
	status int
}

func (e *runError) Error() string { return e.msg }

func fail(status int, format string, a ...any) *runError {
	return &runError{msg: fmt.Sprintf(format, a...), status: status}
}

// Run runs a program for the caller of conn and serves conn until the
// program is over. fds are the caller's descriptors 0, 1 and 2; Run takes
// them over and closes them. It never changes their flags: they are
// shared with the caller's shell.
// peerTty is the caller's terminal (its modes and size) as the running
// node gets it, or nil.
func peerTty(t *api.TtyModes) *peerpb.Tty {
	if t == nil {
		return nil
	}
	return &peerpb.Tty{Rows: uint32(t.Rows), Cols: uint32(t.Cols), Iflag: t.Iflag, Oflag: t.Oflag, Cflag: t.Cflag,
		Lflag: t.Lflag, Cc: t.Cc, Ispeed: t.Ispeed, Ospeed: t.Ospeed, HasModes: true}
}

func (h *Home) Run(ctx context.Context, caller api.Caller, args api.RunArgs, conn *api.Conn, fds []int) {
	var image *os.File
	if args.Image && len(fds) == 4 {
		image = os.NewFile(uintptr(fds[3]), "image")
		defer image.Close()
		fds = fds[:3]
	}
	stdio := &userStdio{}
	if len(fds) == 3 && (image != nil || !args.Image) {
		stdio.in = fds[0]
		stdio.out = []*os.File{nil, os.NewFile(uintptr(fds[1]), "stdout"), os.NewFile(uintptr(fds[2]), "stderr")}
	} else {
		for _, fd := range fds {
			syscall.Close(fd)
		}
		stdio = nil
	}
	defer stdio.close()
	events := &eventWriter{conn: conn}
	var err error
	switch {
	case !args.Image:
		err = h.run(ctx, caller, args, conn, events, stdio)
	case stdio == nil:
		err = fail(api.StatusMosaicError, "the request did not carry stdin, stdout, stderr and the image")
	default:
		err = h.restore(ctx, caller, args, conn, events, stdio, image)
	}
	if err != nil {
		var re *runError
		if !errors.As(err, &re) {
			re = fail(api.StatusMosaicError, "%v", err)
		}
		events.send(api.RunEvent{Error: re.msg, Status: re.status})
	}
}

// userStdio are the user's descriptors as the home holds them. stdin stays
// a plain descriptor: wrapping it in an os.File could make Go switch it to
// blocking mode, which would change it for the user's shell too.
type userStdio struct {
	in  int
	out []*os.File // [1] stdout, [2] stderr; nil once closed
}

func (u *userStdio) close() {
	if u == nil {
		return
	}
	syscall.Close(u.in)
	for _, f := range u.out {
		if f != nil {
			f.Close()
		}
	}
}

func (h *Home) run(ctx context.Context, caller api.Caller, args api.RunArgs, conn *api.Conn, events *eventWriter, stdio *userStdio) error {
	if len(args.Argv) == 0 || args.Argv[0] == "" {
		return fail(api.StatusMosaicError, "no program given: mosaic run [--on NODE | --here] [--] PROG ARGS...")
	}
	if stdio == nil {
		return fail(api.StatusMosaicError, "the request did not carry stdin, stdout and stderr")
	}
	if !strings.HasPrefix(args.Cwd, "/") {
		return fail(api.StatusMosaicError, "working directory %q is not an absolute path", args.Cwd)
	}
	candidates, err := h.candidates(args)
	if err != nil {
		return err
	}
	id, err := h.newID()
	if err != nil {
		return err
	}
	name, gid, groups := account(caller)
	start := &peerpb.ExecStart{
		Id: id, Home: h.cfg.Node, Argv: args.Argv, Env: args.Env, Cwd: args.Cwd,
		Uid: caller.UID, Gid: gid, Groups: groups, Umask: args.Umask, User: name, Pinned: args.Pin,
		Nice: int32(niceFor(caller, args.Nice)), NoNewPrivs: args.NoNewPrivs || noNewPrivs(caller.PID),
	}
	switch args.SchedPolicy {
	case 0, unix.SCHED_BATCH, unix.SCHED_IDLE:
		start.SchedPolicy = int32(args.SchedPolicy)
	default:
		return fail(api.StatusMosaicError, "scheduling policy %d is not one a program takes along (only SCHED_BATCH and SCHED_IDLE are)", args.SchedPolicy)
	}
	if p := ioprio.Prio(args.IOPrio); !p.Valid() {
		return fail(api.StatusMosaicError, "I/O priority %#x is none the kernel knows", args.IOPrio)
	} else if !caller.IsRoot() {
		start.Ioprio = int32(ioprio.ForUser(p))
	} else {
		start.Ioprio = int32(p)
	}
	for _, sig := range args.Ignored {
		if sig <= 0 || sig >= 65 || sig == int(syscall.SIGKILL) || sig == int(syscall.SIGSTOP) {
			return fail(api.StatusMosaicError, "signal %d cannot be ignored", sig)
		}
		start.Ignored = append(start.Ignored, int32(sig))
	}
	for _, r := range args.Rlimits {
		start.Rlimits = append(start.Rlimits, &peerpb.Rlimit{Resource: int32(r.Resource), Cur: r.Cur, Max: r.Max})
	}
	start.Tty = peerTty(args.Tty)
	p := &proc{id: id, uid: caller.UID, user: name, argv: args.Argv, cwd: args.Cwd, tty: args.Tty != nil,
		started: time.Now(), arrived: time.Now(), state: "starting", start: start}
	if !h.add(p) {
		return fail(api.StatusLost, "node %s is shutting down", h.cfg.Node)
	}
	defer h.done(p)

	s, err := h.launch(ctx, p, start, candidates, args.On != "" || args.Here)
	if err != nil {
		return err
	}
	events.send(api.RunEvent{Started: &api.RunStarted{ID: id, Node: s.node, PID: s.pid}})
	h.cfg.Log.Debug("process started", "id", id, "node", s.node, "pid", s.pid, "uid", caller.UID)
	return h.follow(p, s, conn, events, stdio)
}

// follow relays a started process until it is over, then ends its stream
// (the one at the end, wherever the process moved meanwhile): after an
// exit cleanly, so that the connection can carry the next process.
func (h *Home) follow(p *proc, s *stream, conn *api.Conn, events *eventWriter, stdio *userStdio) error {
	err := h.relay(p, s, conn, events, stdio)
	if err == nil {
		p.current().finish()
	} else {
		p.current().close()
	}
	return err
}

// candidates are the nodes to try for a new process, best first: the one
// the user named, or placement's ranking.
func (h *Home) candidates(args api.RunArgs) ([]string, error) {
	switch {
	case args.On != "" && args.Here:
		return nil, fail(api.StatusMosaicError, "--on and --here contradict each other: give one")
	case args.Here:
		return []string{h.cfg.Node}, nil
	case args.On != "":
		if err := h.cfg.CheckNode(args.On); err != nil {
			return nil, fail(api.StatusMosaicError, "%v", err)
		}
		return []string{args.On}, nil
	}
	if c := h.cfg.Place(); len(c) > 0 {
		return c, nil
	}
	return []string{h.cfg.Node}, nil
}

// account is the caller's user name, primary group and groups, from its
// account on this node (the kernel told us its uid and gid).
func account(c api.Caller) (name string, gid uint32, groups []uint32) {
	name, gid, groups = strconv.Itoa(int(c.UID)), c.GID, []uint32{c.GID}
	u, err := user.LookupId(strconv.Itoa(int(c.UID)))
	if err != nil {
		return name, gid, groups
	}
	name = u.Username
	ids, err := u.GroupIds()
	if err != nil {
		return name, gid, groups
	}
	groups = groups[:0]
	for _, s := range ids {
		if v, err := strconv.ParseUint(s, 10, 32); err == nil {
			groups = append(groups, uint32(v))
		}
	}
	if !slices.Contains(groups, c.GID) {
		groups = append(groups, c.GID)
	}
	return name, gid, groups
}

// launch starts the process on the first candidate that can run it. With
// a node chosen by the user (fixed), its refusal is final; otherwise a
// node that lacks the program or the directory passes to the next.
func (h *Home) launch(ctx context.Context, p *proc, start *peerpb.ExecStart, candidates []string, fixed bool) (*stream, error) {
	var misses []string
	worst := api.StatusNotFound
	for _, node := range candidates {
		// Counted on node from now on (RunningSince), so that placements
		// made meanwhile see it; and a node found dead meanwhile, or the
		// home closing, ends the start (a connection dialed ahead to a
		// node that has since died silently would otherwise wait for TCP
		// to give up).
		sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		p.mu.Lock()
		p.node, p.cancel = node, cancel
		p.mu.Unlock()
		conn, err := h.cfg.Connect(sctx, node)
		if err != nil {
			cancel()
			misses = append(misses, fmt.Sprintf("%s: %v", node, err))
			worst = api.StatusMosaicError
			continue
		}
		s := &stream{conn: conn, cancel: cancel, node: node}
		if err := s.send(&peerpb.ExecIn{Msg: &peerpb.ExecIn_Start{Start: start}}); err != nil {
			s.close()
			misses = append(misses, fmt.Sprintf("%s: %v", node, err))
			worst = api.StatusMosaicError
			continue
		}
		first, err := conn.Recv()
		if err != nil {
			s.close()
			misses = append(misses, fmt.Sprintf("%s: %v", node, err))
			worst = api.StatusMosaicError
			continue
		}
		if f := first.GetFailure(); f != nil {
			s.close()
			misses = append(misses, f.Message)
			switch f.Kind {
			case peerpb.FailureKind_NOT_FOUND:
			case peerpb.FailureKind_NOT_EXECUTABLE, peerpb.FailureKind_NO_CWD:
				worst = api.StatusNotExecutable
			default:
				worst = api.StatusMosaicError
			}
			if fixed {
				return nil, fail(worst, "%s", f.Message)
			}
			continue
		}
		pid, ok := first.Msg.(*peerpb.ExecOut_Started)
		if !ok {
			s.close()
			misses = append(misses, fmt.Sprintf("%s: unexpected first message %T", node, first.Msg))
			continue
		}
		s.pid = int(pid.Started)
		p.mu.Lock()
		p.node, p.pid, p.state, p.conn, p.cancel = node, s.pid, "running", s, cancel
		p.mu.Unlock()
		return s, nil
	}
	if len(candidates) == 1 {
		return nil, fail(worst, "%s", strings.Join(misses, "; "))
	}
	return nil, fail(worst, "no node could run %s: %s", start.Argv[0], strings.Join(misses, "; "))
}

func (h *Home) add(p *proc) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return false
	}
	h.procs[p.id] = p
	h.wg.Add(1)
	return true
}

// done forgets a finished process; a lost one stays listed for a while.
func (h *Home) done(p *proc) {
	h.mu.Lock()
	p.mu.Lock()
	lost := p.state == "lost"
	p.conn = nil
	p.mu.Unlock()
	if !lost {
		delete(h.procs, p.id)
	}
	// Drop lost processes listed long enough.
	for id, q := range h.procs {
		q.mu.Lock()
		old := q.state == "lost" && time.Since(q.lost) > lostRetention
		q.mu.Unlock()
		if old {
			delete(h.procs, id)
		}
	}
	h.mu.Unlock()
	h.wg.Done()
}

// NodeDown breaks the streams of the processes running on a node that
// membership declared dead: they are lost.
func (h *Home) NodeDown(node string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, p := range h.procs {
		p.mu.Lock()
		if p.node == node && p.state != "lost" && p.cancel != nil {
			p.cancel()
		}
		p.mu.Unlock()
		p.sendMu.Lock()
		if p.mig != nil && p.mig.target == node {
			p.mig.next.cancel() // the move is off; the source says so
		}
		p.sendMu.Unlock()
	}
}

// RunningSince counts the processes this node started on node after t
// that still run: what placement adds to a node's gossiped load, which
// cannot show them yet.
func (h *Home) RunningSince(node string, t time.Time) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, p := range h.procs {
		p.mu.Lock()
		if p.node == node && (p.state == "running" || p.state == "starting") && p.started.After(t) {
			n++
		}
		p.mu.Unlock()
	}
	return n
}

// List describes the processes this node is home of: a user's, or all.
func (h *Home) List(uid uint32, all bool) []*peerpb.ProcInfo {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []*peerpb.ProcInfo
	for _, p := range h.procs {
		if all || p.uid == uid {
			out = append(out, p.info())
		}
	}
	slices.SortFunc(out, func(a, b *peerpb.ProcInfo) int { return strings.Compare(a.Id, b.Id) })
	return out
}

// Signal delivers sig to process id on behalf of uid, which must own it
// (or be root).
func (h *Home) Signal(id string, sig syscall.Signal, uid uint32) error {
	h.mu.Lock()
	p := h.procs[id]
	h.mu.Unlock()
	if p == nil {
		return fmt.Errorf("no process %s: `mosaic ps` lists yours", id)
	}
	if uid != 0 && uid != p.uid {
		return fmt.Errorf("process %s belongs to another user: you may signal only your own processes", id)
	}
	p.mu.Lock()
	s, state := p.conn, p.state
	p.mu.Unlock()
	if s == nil || state == "lost" {
		return fmt.Errorf("process %s is %s and cannot be signalled", id, state)
	}
	return p.deliver(&peerpb.ExecIn{Msg: &peerpb.ExecIn_Signal{Signal: &peerpb.Signal{Number: int32(sig)}}})
}

// Close kills every process this node is home of (by breaking its stream)
// and waits for their runs to end.
func (h *Home) Close() {
	h.mu.Lock()
	h.closed = true
	for _, p := range h.procs {
		p.mu.Lock()
		if p.cancel != nil {
			p.cancel()
		}
		p.mu.Unlock()
	}
	h.mu.Unlock()
	h.wg.Wait()
}

// stream is a process's stream, as the home holds it.
type stream struct {
	conn   executor.Conn
	cancel context.CancelFunc
	node   string
	pid    int

	mu     sync.Mutex
	closed bool
}

var errStreamClosed = errors.New("the process's stream is closed")

func (s *stream) send(m *peerpb.ExecIn) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errStreamClosed
	}
	return s.conn.Send(m)
}

// close ends the stream. The context goes first: it unblocks a send that
// waits for room (which holds the lock), and the process is over anyway.
func (s *stream) close() {
	s.cancel()
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		s.conn.CloseSend()
	}
	s.mu.Unlock()
}

// finisher is a stream to another node that can end cleanly, leaving its
// connection for the next stream there (see the daemon's spares).
type finisher interface{ Finish() }

// finish ends the stream of a process that exited. A stream that cannot
// end cleanly (a send under way, or none but a plain one) is closed.
func (s *stream) finish() {
	f, ok := s.conn.(finisher)
	if !ok || !s.mu.TryLock() {
		s.close()
		return
	}
	if !s.closed {
		s.closed = true
		f.Finish()
	}
	s.mu.Unlock()
	s.cancel()
}

// eventWriter sends events to the client, one at a time.
type eventWriter struct {
	mu   sync.Mutex
	conn *api.Conn
}

func (w *eventWriter) send(e api.RunEvent) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.conn.WriteJSON(e)
}

// niceFor is the nice value a caller's program runs with: the caller's,
// within the kernel's range, but never below 0 (more than the default
// share of the CPU) for anyone but root. The daemon that sets it is root,
// and what the client says of its own priority is only its word; a user
// whose shell runs at a negative nice gets 0.
func niceFor(caller api.Caller, nice int) int {
	nice = min(max(nice, -20), 19)
	if nice < 0 && !caller.IsRoot() {
		return 0
	}
	return nice
}

// noNewPrivs reports whether the caller's process (its pid from
// SO_PEERCRED) may not gain privileges by exec: the kernel's word, over
// the client's (a client that said otherwise would have the daemon start
// set-user-ID programs for a sandbox that forbids them).
func noNewPrivs(pid int32) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(int(pid)) + "/status")
	if err != nil {
		return false
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "NoNewPrivs:"); ok {
			return strings.TrimSpace(v) == "1"
		}
	}
	return false
}
