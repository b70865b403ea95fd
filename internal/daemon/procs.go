package daemon

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mosaic-cluster/mosaic/internal/api"
	"github.com/mosaic-cluster/mosaic/internal/executor"
	"github.com/mosaic-cluster/mosaic/internal/peerpb"
	"github.com/mosaic-cluster/mosaic/internal/pki"
	"github.com/mosaic-cluster/mosaic/internal/procstream"
)

// This file connects the process machinery (internal/home, the home side;
// internal/executor, the running side) to the daemon: the local API
// operations run, ps and kill, the peer RPCs that carry them between nodes,
// and placement from the gossiped view.

// serveProc serves a process stream: a home (the TLS peer) runs a process
// here.
func (d *Daemon) serveProc(tc *tls.Conn) {
	state := tc.ConnectionState()
	from := pki.PeerName(&state)
	if from == "" {
		tc.Close() // no node certificate: nothing for it here
		return
	}
	// One stream after another: a stream that ended cleanly at both ends
	// leaves the connection to the home's next process.
	for {
		s := procstream.NewServer(context.Background(), tc)
		if err := d.exec.Serve(from, s); err != nil {
			d.log.Debug("process stream", "from", from, "err", err)
		}
		if !s.Release() {
			s.Close()
			return
		}
	}
}

// connect opens the stream of a new process to node's executor.
func (d *Daemon) connect(ctx context.Context, node string) (executor.Conn, error) {
	if node == d.node.Name {
		return d.exec.Local(ctx, d.node.Name), nil
	}
	return d.dialNode(ctx, node)
}

// dialNode opens a process connection to another node.
func (d *Daemon) dialNode(ctx context.Context, node string) (executor.Conn, error) {
	m, ok := d.peer(node)
	if !ok {
		return nil, fmt.Errorf("node %s is not known", node)
	}
	dial := func() (net.Conn, net.Conn, error) {
		c, raw, err := dialProc(ctx, d.node.ID, d.sessions, d.connBuffers, node, m.Addr)
		if err != nil {
			return nil, nil, fmt.Errorf("node %s: %w", node, err)
		}
		return c, raw, nil
	}
	r := &reusable{ctx: ctx, spares: d.spares, node: node, addr: m.Addr}
	c, raw := d.spares.take(node, m.Addr)
	if c != nil {
		r.redial = dial
	} else {
		var err error
		if c, raw, err = dial(); err != nil {
			return nil, err
		}
	}
	r.Client, r.raw = procstream.NewClient(ctx, c), raw
	return r, nil
}

// reusable is a process stream whose connection is kept for the next
// stream to the same node when its process is over (home's stream.finish).
//
// A stream on a kept connection starts over once on a new one if the
// connection fails before anything came back: the node at the other end
// may have restarted since (a crash sends no FIN that the peek in
// spares.usable would see), and then it never saw the first message. As
// HTTP clients do with a request on a kept-alive connection, the first
// message is sent again; the other end ran nothing for it (a node that
// dies kills what it runs with it).
type reusable struct {
	procstream.Client
	ctx        context.Context
	spares     *spares
	node, addr string
	raw        net.Conn

	mu     sync.Mutex
	redial func() (c, raw net.Conn, err error) // set until the first message came back, on a kept connection
	first  *peerpb.ExecIn                      // the first message sent
	sent   int                                 // messages sent (more than one: it cannot start over)
}

// Send sends m. Only the first message on a kept connection is sent
// under r.mu (nothing runs beside it yet); the others must not hold it: a
// send can wait for the other end to read, while the other end waits for
// Recv, which takes r.mu, to read what it sends (cat's input and output).
func (r *reusable) Send(m *peerpb.ExecIn) error {
	r.mu.Lock()
	if r.sent++; r.sent > 1 || r.redial == nil {
		c := r.Client
		r.mu.Unlock()
		return c.Send(m)
	}
	defer r.mu.Unlock()
	r.first = m
	err := r.Client.Send(m)
	if err != nil && r.startOver() {
		return nil
	}
	return err
}

// SendData sends bulk data (an image); the stream cannot start over after.
func (r *reusable) SendData(b []byte) error {
	r.mu.Lock()
	r.sent += 2
	c := r.Client
	r.mu.Unlock()
	return c.SendData(b)
}

func (r *reusable) Recv() (*peerpb.ExecOut, error) {
	r.mu.Lock()
	c, fresh := r.Client, r.redial != nil
	r.mu.Unlock()
	m, err := c.Recv()
	if !fresh {
		return m, err
	}
	r.mu.Lock()
	again := err != nil && r.startOver()
	r.redial, r.first = nil, nil
	c = r.Client
	r.mu.Unlock()
	if again {
		m, err = c.Recv()
	}
	return m, err
}

// startOver sends the first message again on a new connection, when the
// stream may (see reusable); r.mu is held.
func (r *reusable) startOver() bool {
	redial := r.redial
	r.redial = nil
	if redial == nil || r.sent != 1 || r.ctx.Err() != nil {
		return false
	}
	c, raw, err := redial()
	if err != nil {
		return false
	}
	r.Client.Close()
	r.Client, r.raw = procstream.NewClient(r.ctx, c), raw
	return r.Client.Send(r.first) == nil
}

func (r *reusable) Finish() {
	r.mu.Lock()
	c, raw := r.Client, r.raw
	r.mu.Unlock()
	r.spares.finish(r.node, r.addr, c, raw)
}

// checkNode says why a process cannot be sent to a node the user named.
func (d *Daemon) checkNode(name string) error {
	m, ok := d.peer(name)
	if !ok {
		var names []string
		for _, m := range d.members() {
			names = append(names, m.Name)
		}
		return fmt.Errorf("node %q is not known: the cluster has %s", name, strings.Join(names, ", "))
	}
	if m.State != peerpb.State_ALIVE {
		return fmt.Errorf("node %q is %s: choose another with --on, or omit --on", name, stateName(m.State))
	}
	return nil
}

func (d *Daemon) members() []gossipMember {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []gossipMember
	for _, m := range d.core.Members() {
		out = append(out, gossipMember{Name: m.Name, Addr: m.Addr, State: m.State})
	}
	return out
}

type gossipMember struct {
	Name, Addr string
	State      peerpb.State
}

func (d *Daemon) peer(name string) (gossipMember, bool) {
	for _, m := range d.members() {
		if m.Name == name {
			return m, true
		}
	}
	return gossipMember{}, false
}

func (d *Daemon) opRun(ctx context.Context, c api.Caller, args json.RawMessage, conn *api.Conn) (any, error) {
	fds := conn.TakeFDs()
	var a api.RunArgs
	if err := decode(args, &a); err != nil {
		for _, fd := range fds {
			syscall.Close(fd)
		}
		return nil, err
	}
	d.home.Run(ctx, c, a, conn, fds)
	return nil, nil // the run wrote its own frames
}

// homeOfProcess is a client of the peer that is home of process id
// (home, another node), or why there is none to ask.
func (d *Daemon) homeOfProcess(id, home string) (peerpb.PeerClient, error) {
	m, ok := d.peer(home)
	switch {
	case !ok:
		return nil, fmt.Errorf("no process %s: its home node %s is not known", id, home)
	case m.State != peerpb.State_ALIVE:
		return nil, fmt.Errorf("no process %s: its home node %s is %s, and its processes died with it", id, home, stateName(m.State))
	}
	conn, err := d.pool.conn(m.Name, m.Addr)
	if err != nil {
		return nil, err
	}
	return peerpb.NewPeerClient(conn), nil
}

// listProcs is this node's part of `mosaic ps`: what it is home of and
// what it runs.
func (d *Daemon) listProcs(uid uint32, all bool) []*peerpb.ProcInfo {
	return append(d.home.List(uid, all), d.exec.List(uid, all)...)
}

func (d *Daemon) opPs(ctx context.Context, c api.Caller, args json.RawMessage, _ *api.Conn) (any, error) {
	var a api.PsArgs
	if err := decode(args, &a); err != nil {
		return nil, err
	}
	all := c.IsRoot()
	if a.All && !all {
		return nil, errors.New("permission denied: only root may list every user's processes")
	}
	if a.ID != "" {
		if _, err := parseID(a.ID); err != nil {
			return nil, err
		}
	}
	entries := d.listProcs(c.UID, all)
	// Ask every other live node, at once.
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, m := range d.members() {
		if m.Name == d.node.Name || m.State != peerpb.State_ALIVE {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := d.pool.conn(m.Name, m.Addr)
			if err != nil {
				return
			}
			cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			resp, err := peerpb.NewPeerClient(conn).ListProcs(cctx, &peerpb.ListProcsRequest{Uid: c.UID, All: all})
			if err != nil {
				d.log.Debug("list processes", "node", m.Name, "err", err)
				return
			}
			mu.Lock()
			entries = append(entries, resp.Procs...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	procs := mergeProcs(entries, time.Now())
	if a.ID != "" {
		for _, p := range procs {
			if p.ID == a.ID {
				return []api.ProcInfo{p}, nil
			}
		}
		return nil, fmt.Errorf("no process %s among yours: `mosaic ps` lists them", a.ID)
	}
	return procs, nil
}

// mergeProcs joins what homes and running nodes say of each process: the
// home knows who and what, the running node how it is doing.
func mergeProcs(entries []*peerpb.ProcInfo, now time.Time) []api.ProcInfo {
	byID := map[string]*api.ProcInfo{}
	var order []string
	get := func(id string) *api.ProcInfo {
		p := byID[id]
		if p == nil {
			p = &api.ProcInfo{ID: id}
			byID[id] = p
			order = append(order, id)
		}
		return p
	}
	// Where the home says a process runs: a report from another node is
	// of a copy it is discarding (the process just moved away from it).
	homeSays := map[string]string{}
	for _, e := range entries {
		if e.FromHome {
			homeSays[e.Id] = e.Node
		}
	}
	for _, e := range entries {
		if n, ok := homeSays[e.Id]; ok && !e.FromHome && n != "" && e.Node != n {
			continue
		}
		p := get(e.Id)
		if e.FromHome {
			p.UID, p.User, p.Argv, p.Cwd, p.Tty = e.Uid, e.User, e.Argv, e.Cwd, e.Tty
			p.Home, p.Started, p.State = homeOf(e.Id), time.UnixMilli(e.StartedUnixMs), e.State
			p.Migrations = int(e.Migrations)
			if p.Node == "" {
				p.Node, p.PID = e.Node, int(e.Pid)
			}
			continue
		}
		// The running node's view: measured, authoritative for where and how.
		p.Node, p.PID, p.CPUSeconds, p.RSS, p.ProcState, p.Nice = e.Node, int(e.Pid), e.CpuSeconds, e.Rss, e.ProcState, int(e.Nice)
		p.Pinned, p.Children = e.Pinned, e.Children
		if p.User == "" { // the home did not answer (yet)
			p.UID, p.User, p.Argv, p.Cwd, p.Tty, p.Home = e.Uid, e.User, e.Argv, e.Cwd, e.Tty, e.Home
			p.Started, p.State = time.UnixMilli(e.StartedUnixMs), e.State
		}
		if e.State == "stopped" {
			p.State = "stopped"
		}
	}
	out := make([]api.ProcInfo, 0, len(order))
	for _, id := range order {
		p := byID[id]
		if el := now.Sub(p.Started).Seconds(); el > 0 {
			p.CPUPercent = 100 * p.CPUSeconds / el
		}
		out = append(out, *p)
	}
	slices.SortFunc(out, func(a, b api.ProcInfo) int {
		if c := strings.Compare(a.Home, b.Home); c != 0 {
			return c
		}
		return cmpIDNum(a.ID, b.ID)
	})
	return out
}

var idRE = regexp.MustCompile(`^([a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?)\.([0-9]+)$`)

// parseID checks a process ID (home.number) and returns its home.
func parseID(id string) (string, error) {
	m := idRE.FindStringSubmatch(id)
	if m == nil {
		return "", fmt.Errorf("%q is not a process ID: IDs look like n1.4121 (node, dot, number); `mosaic ps` lists them", id)
	}
	return m[1], nil
}

func homeOf(id string) string {
	h, _ := parseID(id)
	return h
}

func cmpIDNum(a, b string) int {
	na, nb := a[strings.LastIndexByte(a, '.')+1:], b[strings.LastIndexByte(b, '.')+1:]
	if len(na) != len(nb) {
		return len(na) - len(nb)
	}
	return strings.Compare(na, nb)
}

func (d *Daemon) opKill(ctx context.Context, c api.Caller, args json.RawMessage, _ *api.Conn) (any, error) {
	var a api.KillArgs
	if err := decode(args, &a); err != nil {
		return nil, err
	}
	home, err := parseID(a.ID)
	if err != nil {
		return nil, err
	}
	if a.Signal < 0 || a.Signal > 64 {
		return nil, fmt.Errorf("signal %d is not a signal number (1 to 64)", a.Signal)
	}
	if home == d.node.Name {
		if err := d.home.Signal(a.ID, syscall.Signal(a.Signal), c.UID); err != nil {
			return nil, err
		}
		return map[string]string{"signalled": a.ID}, nil
	}
	pc, err := d.homeOfProcess(a.ID, home)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err = pc.Signal(cctx, &peerpb.SignalRequest{Id: a.ID, Signal: int32(a.Signal), Uid: c.UID})
	if err != nil {
		if st, ok := status.FromError(err); ok && st.Code() == codes.FailedPrecondition {
			return nil, errors.New(st.Message())
		}
		return nil, fmt.Errorf("signal %s through its home %s: %w", a.ID, home, err)
	}
	return map[string]string{"signalled": a.ID}, nil
}

// migrateTimeout bounds a migration as the CLI asked it: time enough to
// send gigabytes.
const migrateTimeout = 5 * time.Minute

func (d *Daemon) opMigrate(ctx context.Context, c api.Caller, args json.RawMessage, _ *api.Conn) (any, error) {
	var a api.MigrateArgs
	if err := decode(args, &a); err != nil {
		return nil, err
	}
	home, err := parseID(a.ID)
	if err != nil {
		return nil, err
	}
	if a.Node == "" {
		return nil, errors.New("no node given: mosaic migrate ID NODE (or home)")
	}
	if a.Node != "home" {
		if err := d.checkNode(a.Node); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, migrateTimeout)
	defer cancel()
	var res *peerpb.MigrateResponse
	if home == d.node.Name {
		res, err = d.migrate(ctx, a.ID, a.Node, c.UID, a.Lazy)
	} else {
		pc, err := d.homeOfProcess(a.ID, home)
		if err != nil {
			return nil, err
		}
		res, err = pc.Migrate(ctx, &peerpb.MigrateRequest{Id: a.ID, Target: a.Node, Uid: c.UID, Lazy: a.Lazy})
		if err != nil {
			if st, ok := status.FromError(err); ok && st.Code() == codes.FailedPrecondition {
				return nil, errors.New(st.Message())
			}
			return nil, fmt.Errorf("migrate %s through its home %s: %w", a.ID, home, err)
		}
	}
	if err != nil {
		return nil, err
	}
	return api.MigrateResult{ID: a.ID, Node: res.Node, PID: int(res.Pid), FrozenMs: float64(res.FreezeUs) / 1000,
		TotalMs: float64(res.TotalUs) / 1000, ImageBytes: res.ImageBytes, LazyBytes: res.LazyBytes}, nil
}

// migrate moves a process this node is home of.
func (d *Daemon) migrate(ctx context.Context, id, target string, uid uint32, lazy bool) (*peerpb.MigrateResponse, error) {
	m, err := d.home.Migrate(ctx, id, target, uid, lazy)
	if err != nil {
		return nil, err
	}
	return &peerpb.MigrateResponse{Node: m.Node, Pid: int32(m.PID), FreezeUs: m.Frozen.Microseconds(),
		TotalUs: m.Total.Microseconds(), ImageBytes: m.ImageBytes, LazyBytes: m.LazyBytes}, nil
}

func (d *Daemon) opCheckpoint(ctx context.Context, c api.Caller, args json.RawMessage, conn *api.Conn) (any, error) {
	fds := conn.TakeFDs()
	for _, fd := range fds[min(1, len(fds)):] {
		syscall.Close(fd)
	}
	if len(fds) == 0 {
		return nil, errors.New("the request did not carry the image file")
	}
	file := os.NewFile(uintptr(fds[0]), "image")
	defer file.Close()
	var a api.CheckpointArgs
	if err := decode(args, &a); err != nil {
		return nil, err
	}
	home, err := parseID(a.ID)
	if err != nil {
		return nil, err
	}
	token, err := randomToken()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, migrateTimeout)
	defer cancel()
	receipt := d.exec.ExpectImage(token, file)
	defer receipt.Cancel()
	// A client that goes away (or is interrupted, and says so) calls the
	// checkpoint off: with --stop, a process must not end for an image
	// nobody will put in place. What it waits for below is the outcome,
	// whichever it is.
	hung, stopWatch := conn.Hangup(ctx)
	defer stopWatch()
	stopCallOff := context.AfterFunc(hung, receipt.CallOff)
	defer stopCallOff()
	if home == d.node.Name {
		_, err = d.home.Checkpoint(ctx, a.ID, c.UID, d.node.Name, token, a.Stop)
	} else {
		pc, err2 := d.homeOfProcess(a.ID, home)
		if err2 != nil {
			return nil, err2
		}
		_, err = pc.Checkpoint(ctx, &peerpb.CheckpointRequest{Id: a.ID, Uid: c.UID, Token: token, Stop: a.Stop})
		if st, ok := status.FromError(err); ok && err != nil && st.Code() == codes.FailedPrecondition {
			err = errors.New(st.Message())
		}
	}
	if err != nil {
		// The receipt ends before the sender's word comes back through
		// the home: if it failed, its reason is the one to give.
		if why := receipt.Failed(); why != nil {
			return nil, why
		}
		return nil, err
	}
	n, err := receipt.Wait(ctx)
	if err != nil {
		return nil, err
	}
	return api.CheckpointResult{ID: a.ID, ImageBytes: n, Stopped: a.Stop}, nil
}

func randomToken() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", errors.New("no randomness for a token")
	}
	return hex.EncodeToString(b), nil
}

// ListProcs and Signal of the Peer service: a caller node asks on behalf of
// one of its users, whose uid its kernel told it (nodes trust each other's
// word on their own users, as they trust each other's certificates).
func (s gossipServer) ListProcs(ctx context.Context, req *peerpb.ListProcsRequest) (*peerpb.ListProcsResponse, error) {
	return &peerpb.ListProcsResponse{Procs: s.d.listProcs(req.Uid, req.All)}, nil
}

func (s gossipServer) Signal(ctx context.Context, req *peerpb.SignalRequest) (*peerpb.Empty, error) {
	if err := s.d.home.Signal(req.Id, syscall.Signal(req.Signal), req.Uid); err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	return &peerpb.Empty{}, nil
}

func (s gossipServer) Migrate(ctx context.Context, req *peerpb.MigrateRequest) (*peerpb.MigrateResponse, error) {
	if req.Auto {
		// The node the process runs on moves it by its policy: the home
		// checks that the caller is that node.
		m, err := s.d.home.MigrateAuto(ctx, req.Id, req.Target, peerName(ctx))
		if err != nil {
			return nil, status.Error(codes.FailedPrecondition, err.Error())
		}
		return &peerpb.MigrateResponse{Node: m.Node, Pid: int32(m.PID), FreezeUs: m.Frozen.Microseconds(), TotalUs: m.Total.Microseconds(), ImageBytes: m.ImageBytes}, nil
	}
	res, err := s.d.migrate(ctx, req.Id, req.Target, req.Uid, req.Lazy)
	if err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	return res, nil
}

func (s gossipServer) Checkpoint(ctx context.Context, req *peerpb.CheckpointRequest) (*peerpb.CheckpointResponse, error) {
	// The image goes to the node that asks, and only there.
	n, err := s.d.home.Checkpoint(ctx, req.Id, req.Uid, peerName(ctx), req.Token, req.Stop)
	if err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	return &peerpb.CheckpointResponse{ImageBytes: n}, nil
}

func (s gossipServer) Recommend(ctx context.Context, req *peerpb.RecommendRequest) (*peerpb.RecommendResponse, error) {
	name, moves, err := s.d.recommend(req.Policy)
	if err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	res := &peerpb.RecommendResponse{Policy: name}
	for _, m := range moves {
		res.Moves = append(res.Moves, &peerpb.Recommendation{Id: m.Proc, From: s.d.node.Name, To: m.To, Reason: m.Reason})
	}
	return res, nil
}

func (s gossipServer) Drain(ctx context.Context, req *peerpb.DrainRequest) (*peerpb.DrainResponse, error) {
	if req.Uid != 0 {
		return nil, status.Error(codes.FailedPrecondition, "permission denied: only root may drain a node")
	}
	moved, stayed, err := s.d.drain(ctx, req.Undo)
	if err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	return &peerpb.DrainResponse{Moved: moved, Stayed: stayed}, nil
}
