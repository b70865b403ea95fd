// Package daemon is the mosaic node: one process per node that serves its
// peers over mutual TLS, takes part in membership and load dissemination,
// runs or reaches the cluster store, and answers the local CLI.
//
// The daemon owns time, sockets and goroutines; the protocols it runs
// (internal/gossip, internal/load's Meter) are pure state machines it
// feeds.
package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"

	"github.com/mosaic-cluster/mosaic/internal/api"
	"github.com/mosaic-cluster/mosaic/internal/bufpool"
	"github.com/mosaic-cluster/mosaic/internal/cgroup"
	"github.com/mosaic-cluster/mosaic/internal/cluster"
	"github.com/mosaic-cluster/mosaic/internal/executor"
	"github.com/mosaic-cluster/mosaic/internal/gossip"
	"github.com/mosaic-cluster/mosaic/internal/home"
	"github.com/mosaic-cluster/mosaic/internal/load"
	"github.com/mosaic-cluster/mosaic/internal/peerpb"
	"github.com/mosaic-cluster/mosaic/internal/pidlock"
	"github.com/mosaic-cluster/mosaic/internal/procstream"
	"github.com/mosaic-cluster/mosaic/internal/spawn"
	"github.com/mosaic-cluster/mosaic/internal/store"
	"github.com/mosaic-cluster/mosaic/internal/timerslack"
	"github.com/mosaic-cluster/mosaic/internal/version"
)

// Config is how a daemon runs (its identity is in its data directory).
type Config struct {
	Dir    string // data directory
	Socket string // local API socket

	// Capacity caps the CPU time of the node's processes, in cores
	// (0.5 = half of one core); 0 = no cap.
	Capacity float64
	// Memory caps the memory the node offers, in bytes; 0 = the machine's.
	Memory uint64
	// Speed is the per-core speed relative to the reference; 0 = measure.
	Speed float64
	// Shared says several nodes share this machine: the node's load counts
	// only the processes in its own cgroup, not the machine's run queue.
	Shared bool

	Interval       time.Duration // gossip: probe and load dissemination period
	SampleInterval time.Duration // run-queue sampling period
	Window         int           // load reports sent per message
	LoadExpiry     time.Duration // load reports older than this are dropped

	// Policy places and moves processes (internal/policy), or is "off";
	// default leastload. Manual: the policy only recommends. NoGuests:
	// processes of other homes are refused.
	Policy   string
	Manual   bool
	NoGuests bool

	CgroupRoot string
	Seeds      []string // extra peer addresses to contact at start
	Log        *slog.Logger
}

func (c *Config) setDefaults() {
	if c.Interval <= 0 {
		c.Interval = time.Second
	}
	if c.SampleInterval <= 0 {
		c.SampleInterval = 250 * time.Millisecond
	}
	if c.Window <= 0 {
		c.Window = 16
	}
	if c.LoadExpiry <= 0 {
		c.LoadExpiry = 60 * c.Interval
	}
	if c.CgroupRoot == "" {
		c.CgroupRoot = cgroup.DefaultRoot
	}
	if c.Socket == "" {
		c.Socket = api.DefaultSocket
	}
	if c.Log == nil {
		c.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
}

// keptConnBuffers bounds the batch buffers a node keeps for its process
// connections: as many as send bulk data at once, often.
const keptConnBuffers = 8 * procstream.BatchSize

// newConnBuffers makes the pool of the connections' batch buffers, one
// warm already: a node's first image out needs it.
func newConnBuffers() *bufpool.Pool {
	p := bufpool.New(keptConnBuffers)
	p.Warm(1, procstream.BatchSize)
	return p
}

// Daemon is a running node.
type Daemon struct {
	cfg   Config
	node  *cluster.Node
	log   *slog.Logger
	start time.Time
	uid   int // the daemon's owner: may administer it like root

	mu   sync.Mutex // guards core and selfLoad
	core *gossip.Core
	self selfLoad

	pool     *peerPool
	sessions tls.ClientSessionCache // of process streams (dialProc)
	// connBuffers are the process connections' batch buffers, kept from
	// one connection to the next (up to keptConnBuffers).
	connBuffers *bufpool.Pool
	spares      *spares       // process connections dialed ahead
	group       *cgroup.Group // nil when the node has no cgroup
	spawner     *spawn.Spawner
	exec        *executor.Executor // runs processes here
	bal         *balancer          // the placement and migration policy
	home        *home.Home         // answers for the processes started here
	probe       load.Probe
	speed       float64
	cores       int

	admitMu sync.Mutex // serializes admissions of new nodes

	storeMu  sync.Mutex
	st       *store.Store
	member   *store.Member
	storeErr error // why the store is not usable yet

	gossipBytes atomic.Uint64 // bytes of gossip messages sent
	gossipMsgs  atomic.Uint64

	leave    chan struct{} // closed by the leave operation
	leaveOne sync.Once
	sends    sync.WaitGroup // outstanding gossip sends
}

// selfLoad is this node's latest measurement.
type selfLoad struct {
	export, local float64
	runQueue      int
	procs         int
	memTotal      uint64
	memFree       uint64
}

// Run starts the node in dir and serves until ctx ends (a graceful leave)
// or the leave operation is called. It returns only after everything it
// started has stopped.
func Run(ctx context.Context, cfg Config) (err error) {
	cfg.setDefaults()
	node, err := cluster.Load(cfg.Dir)
	if err != nil {
		return err
	}
	unlock, err := lockDir(node.Dir)
	if err != nil {
		return err
	}
	defer unlock()

	d := &Daemon{cfg: cfg, node: node, log: cfg.Log.With("node", node.Name), start: time.Now(), uid: os.Getuid(),
		pool: newPeerPool(node.ID), sessions: tls.NewLRUClientSessionCache(64), connBuffers: newConnBuffers(),
		leave: make(chan struct{}), cores: load.Cores()}
	defer d.pool.close()
	d.spares = newSpares(func(ctx context.Context, name, addr string) (net.Conn, net.Conn, error) {
		return dialProc(ctx, node.ID, d.sessions, d.connBuffers, name, addr)
	})
	defer d.spares.close()

	// Everything that can fail because of the environment comes first, in
	// the order a user can fix it, before anything is announced.
	ln, err := net.Listen("tcp", node.Addr)
	if err != nil {
		return listenError(node.Addr, err)
	}
	defer ln.Close()
	if err := checkSeeds(ctx, node.ID, node.ClusterID, d.seeds()); err != nil {
		return err
	}
	if err := d.setupCgroup(); err != nil {
		return err
	}
	if d.group != nil {
		defer func() {
			if err := d.group.Destroy(); err != nil {
				d.log.Warn("remove node cgroup", "err", err)
			}
		}()
	}
	if err := spawn.KeepInheritedFromChildren(); err != nil {
		return err
	}
	var place func(int) error
	if d.group != nil {
		place = d.group.AddThread
	}
	// What the node runs gets the timer slack the daemon was started
	// with, not the daemon's own.
	slack, err := timerslack.Original()
	if err != nil {
		return err
	}
	if d.spawner, err = spawn.New(place, slack); err != nil {
		return err
	}
	d.spawner.KeepSpareNamespace()
	// Before the group is removed: the spawning thread is in it.
	defer d.spawner.Close()
	// The restoring thread is in the node's memory group only: what it
	// restores is charged there from its first page, and comes under the
	// CPU quota once restored (executor.Quota).
	var placeMemory func(int) error
	var quota executor.Quota
	if d.group != nil {
		placeMemory, quota = d.group.AddThreadMemory, d.group
	}
	restorer, err := spawn.New(placeMemory, slack)
	if err != nil {
		return err
	}
	defer restorer.Close()
	d.exec = executor.New(executor.Config{
		Node: node.Name, Spawner: d.spawner, Restorer: restorer, Dial: d.dialNode, Log: d.log, Quota: quota,
	})
	if d.bal, err = newBalancer(cfg.Policy, cfg.Manual, cfg.NoGuests); err != nil {
		return err
	}
	d.exec.SetNoGuests(cfg.NoGuests)
	d.home = home.New(home.Config{
		Node: node.Name, Log: d.log, ReserveIDs: node.ReserveProcIDs, Connect: d.connect,
		Place: d.place, CheckNode: d.checkNode, DialImage: d.dialNode,
	})
	d.speed = cfg.Speed
	if d.speed <= 0 {
		d.speed = load.MeasureSpeed(100 * time.Millisecond)
	}
	if err := d.openStore(ctx); err != nil {
		return err
	}
	defer d.closeStore()

	inc, err := node.NextIncarnation()
	if err != nil {
		return err
	}
	total, free, err := d.probe.Memory()
	if err != nil {
		return err
	}
	d.self.memTotal, d.self.memFree = total, free
	core, err := gossip.New(gossip.Config{
		Name: node.Name, Addr: node.Addr, Meta: d.meta(), Incarnation: inc,
		Interval: cfg.Interval, WindowSize: cfg.Window, LoadExpiry: cfg.LoadExpiry,
		Seed: time.Now().UnixNano(),
	}, time.Now())
	if err != nil {
		return fmt.Errorf("start membership: %w", err)
	}
	d.core = core

	srv := newPeerServer()
	peerpb.RegisterJoinServer(srv, joinServer{d: d})
	peerpb.RegisterPeerServer(srv, gossipServer{d: d})
	apiSrv, err := api.Listen(cfg.Socket, d.handlers(), d.log)
	if err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	fatal := make(chan error, 1) // the first failure stops the node; later ones are logged
	goFn := func(name string, fn func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(); err != nil && ctx.Err() == nil {
				err = fmt.Errorf("%s: %w", name, err)
				select {
				case fatal <- err:
				default:
					d.log.Error("failure while stopping", "err", err)
				}
			}
		}()
	}
	pl := newPeerListener(ln, node.ID, d.connBuffers, d.serveProc)
	goFn("peer listener", pl.serve)
	goFn("peer server", func() error { return srv.Serve(pl.grpc) })
	goFn("local API", func() error { return apiSrv.Serve(ctx) })
	goFn("load sampler", func() error { return d.sampleLoop(ctx) })
	goFn("gossip", func() error { return d.gossipLoop(ctx) })
	goFn("store", func() error { return d.storeLoop(ctx) })
	goFn("balancer", func() error { return d.balanceLoop(ctx) })

	d.log.Info("node started", "cluster", node.ClusterID, "addr", node.Addr, "socket", cfg.Socket,
		"incarnation", inc, "cores", d.cores, "capacity", cfg.Capacity, "speed", fmt.Sprintf("%.2f", d.speed),
		"shared", cfg.Shared, "store_member", node.StoreMember, "version", version.Version)
	d.send(d.withCore(func(c *gossip.Core) []gossip.Message { return c.Join(time.Now(), d.seeds()) }))

	var runErr error
	select {
	case <-ctx.Done():
		d.log.Info("stopping: leaving the cluster")
	case <-d.leave:
		d.log.Info("leaving the cluster on request")
	case runErr = <-fatal:
		d.log.Error("stopping after a failure", "err", runErr)
	}
	d.goodbye()
	// The processes this node answers for die with it (their users'
	// clients are told), and so do the ones it runs for others.
	d.home.Close()
	d.exec.Close()
	d.spares.close()
	cancel()
	apiSrv.Close()
	pl.close()
	stopGRPC(srv)
	wg.Wait()
	d.sends.Wait()
	d.log.Info("node stopped")
	return runErr
}

// goodbye tells peers this node is leaving and records it in the registry.
func (d *Daemon) goodbye() {
	msgs := d.withCore(func(c *gossip.Core) []gossip.Message { return c.Leave(time.Now()) })
	var leaving sync.WaitGroup
	d.deliver(msgs, &leaving)
	done := make(chan struct{})
	go func() { leaving.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
	}
	if st := d.store(); st != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		err := st.UpdateNode(ctx, d.node.Name, func(n *store.Node) {
			n.State = "left"
			n.LastLeave = time.Now().UTC()
		})
		if err != nil {
			d.log.Warn("record leave in the registry", "err", err)
		}
	}
}

func stopGRPC(srv *grpc.Server) {
	done := make(chan struct{})
	go func() { srv.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		srv.Stop()
		<-done
	}
}

// withCore runs fn with the gossip core locked.
func (d *Daemon) withCore(fn func(*gossip.Core) []gossip.Message) []gossip.Message {
	d.mu.Lock()
	defer d.mu.Unlock()
	return fn(d.core)
}

// seeds are the peer addresses to contact at start: the ones saved in the
// data directory (the node it joined through, the members alive when it
// last ran) and any given on the command line.
func (d *Daemon) seeds() []string {
	var out []string
	for _, s := range append(slices.Clone(d.node.Seeds), d.cfg.Seeds...) {
		if s != d.node.Addr && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// meta is what this node announces about itself.
func (d *Daemon) meta() *peerpb.NodeMeta {
	m := &peerpb.NodeMeta{
		Cores: uint32(d.cores), Capacity: d.cfg.Capacity, Speed: d.speed, MemTotal: d.self.memTotal,
		Version: version.Version, Shared: d.cfg.Shared, Ca: d.node.CA.Key != nil,
	}
	if d.bal != nil {
		d.bal.mu.Lock()
		m.Policy, m.NoGuests = d.bal.name, d.bal.refusesGuests()
		d.bal.mu.Unlock()
	}
	if d.node.StoreMember {
		m.StoreClientUrl, _ = cluster.StoreURLs(d.node.Addr)
	}
	return m
}

func (d *Daemon) requestLeave() { d.leaveOne.Do(func() { close(d.leave) }) }

// lockDir makes sure only one daemon runs from a data directory.
func lockDir(dir string) (unlock func(), err error) {
	release, err := pidlock.Acquire(filepath.Join(dir, "daemon.lock"))
	var held *pidlock.HeldError
	switch {
	case errors.As(err, &held):
		return nil, fmt.Errorf("a mosaic daemon (pid %s) is already running from %s: stop it first (`mosaic node leave`), or use another --dir", held.PID, dir)
	case err != nil:
		return nil, fmt.Errorf("cannot write to data directory %s: %w", dir, err)
	}
	return release, nil
}

func listenError(addr string, err error) error {
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("cannot listen on %s: the port is in use (is another mosaic node running with this address?): stop it, or move this node", addr)
	}
	if errors.Is(err, syscall.EADDRNOTAVAIL) {
		return fmt.Errorf("cannot listen on %s: no network interface of this machine has that address", addr)
	}
	return fmt.Errorf("cannot listen on %s: %w", addr, err)
}

// setupCgroup creates the node's control group. Shared mode and a CPU cap
// need it; otherwise the node runs without one if cgroups are unusable.
func (d *Daemon) setupCgroup() error {
	rel := filepath.Join("mosaic", d.node.ClusterID, d.node.Name)
	need := d.cfg.Shared || d.cfg.Capacity > 0
	g, err := cgroup.Create(d.cfg.CgroupRoot, rel, d.cfg.Capacity)
	if err != nil {
		if need {
			return fmt.Errorf("node cgroup (needed for --capacity and shared mode): %w", err)
		}
		d.log.Warn("running without a node cgroup", "err", err)
		d.probe = load.MachineProbe{MemCap: d.cfg.Memory}
		return nil
	}
	d.group = g
	if d.cfg.Shared {
		d.probe = load.GroupProbe{Group: g, MemCap: d.cfg.Memory, Helper: spawn.IsInit}
	} else {
		d.probe = load.MachineProbe{MemCap: d.cfg.Memory}
	}
	return nil
}
