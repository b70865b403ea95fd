// Package up runs a whole mosaic cluster on one machine: N real daemon
// processes on distinct loopback addresses (or, as root, each in a network
// namespace of its own on a bridge), with their CA, tokens and data under
// one directory. `mosaic up` and the multi-node tests use it.
package up

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/api"
	"github.com/mosaic-cluster/mosaic/internal/cgroup"
	"github.com/mosaic-cluster/mosaic/internal/cluster"
	"github.com/mosaic-cluster/mosaic/internal/load"
	"github.com/mosaic-cluster/mosaic/internal/netns"
	"github.com/mosaic-cluster/mosaic/internal/pidlock"
)

// Config describes a local cluster.
type Config struct {
	Dir        string
	Nodes      int
	Capacities []float64 // per node, in cores; one value applies to all; default 1 each
	Memories   []uint64  // per node, in bytes; one value applies to all; default none
	NetNS      bool      // each node in its own network namespace (root only)
	Binary     string    // the daemon binary (mosaicd); default: the running one
	Speed      float64   // per-core speed all nodes report; 0 = measure once here
	Interval   time.Duration
	Window     int
	Port       int // peer port of every node; default cluster.DefaultPort
	// Base is the first loopback address to use; the nodes get consecutive
	// addresses from it. Zero: pick a free /24 in 127.77.0.0/16.
	Base netip.Addr
	Out  io.Writer // progress messages; nil = discard
	// ExtraArgs are appended to every daemon's command line.
	ExtraArgs []string
}

// layout is D/up.json: what must stay the same when the cluster in D is
// started again (the addresses are in the nodes' certificates).
type layout struct {
	Nodes   int      `json:"nodes"`
	NetNS   bool     `json:"netns"`
	Addrs   []string `json:"addrs"`
	Prefix  string   `json:"netns_prefix,omitempty"`
	Subnet  string   `json:"netns_subnet,omitempty"`
	Created string   `json:"created"`
}

// Node is one daemon of the cluster.
type Node struct {
	Name   string
	Dir    string
	Addr   string
	Socket string
	Log    string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when the process exited
	err  error         // its exit status
}

// Cluster is a running local cluster.
type Cluster struct {
	cfg    Config
	lay    layout
	Nodes  []*Node
	net    *netns.Network
	hosts  map[string]*netns.Host
	unlock func()
	speed  float64
	id     string // the cluster's ID, once its first node exists
	// Exited receives a node's name when its daemon exits unexpectedly.
	Exited chan string
	stop   sync.Once
}

func (c *Config) defaults() error {
	if c.Nodes < 1 || c.Nodes > 200 {
		return fmt.Errorf("--nodes %d: start between 1 and 200 nodes", c.Nodes)
	}
	if c.Dir == "" {
		return errors.New("no directory given: use --dir")
	}
	abs, err := filepath.Abs(c.Dir)
	if err != nil {
		return err
	}
	c.Dir = abs
	if c.Port == 0 {
		c.Port = cluster.DefaultPort
	}
	if c.Out == nil {
		c.Out = io.Discard
	}
	if c.Binary == "" {
		if c.Binary, err = DaemonBinary(); err != nil {
			return err
		}
	}
	if len(c.Capacities) == 0 {
		c.Capacities = []float64{1}
	}
	if len(c.Capacities) != 1 && len(c.Capacities) != c.Nodes {
		return fmt.Errorf("--capacity has %d values for %d nodes: give one value for all, or one per node", len(c.Capacities), c.Nodes)
	}
	for _, v := range c.Capacities {
		if v < 0.01 || v > float64(load.Cores()) {
			return fmt.Errorf("capacity %g is out of range: use 0.01 to %d (cores of this machine)", v, load.Cores())
		}
	}
	if len(c.Memories) > 1 && len(c.Memories) != c.Nodes {
		return fmt.Errorf("--memory has %d values for %d nodes: give one value for all, or one per node", len(c.Memories), c.Nodes)
	}
	if c.NetNS && os.Geteuid() != 0 {
		return errors.New("--netns needs root (it creates network namespaces and a bridge)")
	}
	return nil
}

func (c *Config) capacity(i int) float64 {
	if len(c.Capacities) == 1 {
		return c.Capacities[0]
	}
	return c.Capacities[i]
}

func (c *Config) memory(i int) uint64 {
	switch len(c.Memories) {
	case 0:
		return 0
	case 1:
		return c.Memories[0]
	}
	return c.Memories[i]
}

// Start brings the cluster up and returns once every node sees every other
// node alive. On failure it stops what it started.
func Start(ctx context.Context, cfg Config) (_ *Cluster, err error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", cfg.Dir, err)
	}
	unlock, err := lock(cfg.Dir)
	if err != nil {
		return nil, err
	}
	c := &Cluster{cfg: cfg, unlock: unlock, hosts: map[string]*netns.Host{}, Exited: make(chan string, cfg.Nodes)}
	defer func() {
		if err != nil {
			c.Stop()
		}
	}()
	if err := c.loadLayout(); err != nil {
		return nil, err
	}
	if cfg.NetNS {
		if err := c.makeNetwork(); err != nil {
			return nil, err
		}
	}
	c.speed = cfg.Speed
	if c.speed <= 0 {
		c.speed = load.MeasureSpeed(200 * time.Millisecond)
	}
	for i := range cfg.Nodes {
		name := "n" + strconv.Itoa(i+1)
		dir := filepath.Join(cfg.Dir, name)
		c.Nodes = append(c.Nodes, &Node{Name: name, Dir: dir, Addr: c.lay.Addrs[i],
			Socket: filepath.Join(dir, "mosaic.sock"), Log: filepath.Join(cfg.Dir, name+".log")})
	}
	start := time.Now()
	first := c.Nodes[0]
	if !exists(filepath.Join(first.Dir, cluster.ConfigFile)) {
		storeSize := 1
		if cfg.Nodes >= 3 {
			storeSize = 3
		}
		err := c.inNetns(first, func() error {
			_, err := cluster.Init(cluster.InitParams{Dir: first.Dir, Name: first.Name, Addr: first.Addr, StoreSize: storeSize})
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("create the cluster's first node: %w", err)
		}
	}
	// The cluster's cgroups are named after its ID: kept now, so that Stop
	// removes this cluster's, whatever becomes of the directory.
	if c.id, err = readClusterID(first.Dir); err != nil {
		return nil, err
	}
	// Nodes that exist already start first, all together: a store that
	// has several members needs a quorum of them before it answers.
	var joiners []*Node
	for _, n := range c.Nodes {
		if n != first && !exists(filepath.Join(n.Dir, cluster.ConfigFile)) {
			joiners = append(joiners, n)
			continue
		}
		if err := c.startNode(n, nil); err != nil {
			return nil, err
		}
	}
	if len(joiners) > 0 {
		if err := c.waitStore(ctx, first); err != nil {
			return nil, err
		}
		var tok api.TokenCreated
		if err := api.Call(ctx, first.Socket, api.OpTokenCreate, api.TokenCreateArgs{TTL: 10 * time.Minute, MaxUses: len(joiners), Note: "mosaic up"}, &tok); err != nil {
			return nil, fmt.Errorf("create a join token on %s: %w", first.Name, err)
		}
		for _, n := range joiners {
			if err := c.startNode(n, []string{"--name", n.Name, "--listen", n.Addr, "--join", first.Addr, "--token", tok.Token}); err != nil {
				return nil, err
			}
		}
	}
	if err := c.writeEnv(); err != nil {
		return nil, err
	}
	if err := c.WaitAlive(ctx, 90*time.Second); err != nil {
		return nil, err
	}
	fmt.Fprintf(c.cfg.Out, "cluster up: %d nodes alive after %.1fs\n", cfg.Nodes, time.Since(start).Seconds())
	return c, nil
}

// Dir is the cluster's directory.
func (c *Cluster) Dir() string { return c.cfg.Dir }

// ID is the cluster's ID, which names its cgroups (mosaic/ID/NODE).
func (c *Cluster) ID() string { return c.id }

// Node returns the node with that name, or nil.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// Host returns a node's network namespace host (nil without --netns).
func (c *Cluster) Host(name string) *netns.Host { return c.hosts[name] }

// DaemonBinary is the daemon to start: mosaicd, which is what runs this
// package (`mosaic up` hands over to `mosaicd up`).
func DaemonBinary() (string, error) {
	p, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find the mosaicd binary: %w", err)
	}
	return p, nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// lock makes sure one `mosaic up` runs per directory. It takes two locks:
// D/up.lock, and one named after D's path outside it (pathLock), which
// holds even when D is removed and made again under a running cluster: a
// second cluster there would take the same addresses' namespace names
// (derived from the path) and its cgroups would be stopped with the first.
func lock(dir string) (func(), error) {
	held := func(pid string) error {
		return fmt.Errorf("a cluster is already running from %s (mosaic up, pid %s): stop it with Ctrl-C in its terminal, or use another --dir", dir, pid)
	}
	releasePath, err := pidlock.AcquireRemoved(pathLock(dir))
	var h *pidlock.HeldError
	switch {
	case errors.As(err, &h):
		return nil, held(h.PID)
	case err != nil:
		return nil, fmt.Errorf("take the lock of %s: %w", dir, err)
	}
	release, err := pidlock.Acquire(filepath.Join(dir, "up.lock"))
	switch {
	case errors.As(err, &h):
		releasePath()
		return nil, held(h.PID)
	case err != nil:
		releasePath()
		return nil, fmt.Errorf("cannot write to %s: %w", dir, err)
	}
	return func() {
		release()
		releasePath()
	}, nil
}

// pathLock is the lock file named after a cluster directory's path, in a
// directory only root may write to when root runs `mosaic up` (so that
// nobody else can hold it), in the user's temporary directory otherwise.
func pathLock(dir string) string {
	sum := sha256.Sum256([]byte(dir))
	name := "up-" + hex.EncodeToString(sum[:8]) + ".lock"
	if os.Geteuid() == 0 {
		if os.MkdirAll("/run/mosaic", 0o755) == nil {
			return filepath.Join("/run/mosaic", name)
		}
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("mosaic-%d-%s", os.Geteuid(), name))
}

// loadLayout reads D/up.json, or makes a new layout for an empty D.
func (c *Cluster) loadLayout() error {
	path := filepath.Join(c.cfg.Dir, "up.json")
	b, err := os.ReadFile(path)
	if err == nil {
		if err := json.Unmarshal(b, &c.lay); err != nil {
			return fmt.Errorf("%s is corrupt (%v): remove %s to start a new cluster there", path, err, c.cfg.Dir)
		}
		if c.lay.Nodes != c.cfg.Nodes || len(c.lay.Addrs) != c.lay.Nodes {
			return fmt.Errorf("%s holds a cluster of %d nodes: start it with --nodes %d, or use another --dir", c.cfg.Dir, c.lay.Nodes, c.lay.Nodes)
		}
		if c.lay.NetNS != c.cfg.NetNS {
			return fmt.Errorf("%s holds a cluster made with netns=%v: start it the same way, or use another --dir", c.cfg.Dir, c.lay.NetNS)
		}
		return nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read %s: %w", path, err)
	}
	ents, err := os.ReadDir(c.cfg.Dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.Name() != "up.lock" {
			return fmt.Errorf("%s is not empty and was not made by `mosaic up`: use an empty or new --dir", c.cfg.Dir)
		}
	}
	lay := layout{Nodes: c.cfg.Nodes, NetNS: c.cfg.NetNS, Created: time.Now().UTC().Format(time.RFC3339)}
	if c.cfg.NetNS {
		var err error
		if lay.Prefix, lay.Subnet, err = c.netnsNames(); err != nil {
			return err
		}
		subnet := netip.MustParsePrefix(lay.Subnet)
		a := subnet.Addr()
		for range c.cfg.Nodes {
			a = a.Next()
			lay.Addrs = append(lay.Addrs, netip.AddrPortFrom(a, uint16(c.cfg.Port)).String())
		}
	} else {
		addrs, err := c.freeLoopback()
		if err != nil {
			return err
		}
		lay.Addrs = addrs
	}
	c.lay = lay
	out, _ := json.MarshalIndent(lay, "", "  ")
	return os.WriteFile(path, append(out, '\n'), 0o644)
}

// netnsNames derives the namespace prefix and subnet from the directory,
// so that two clusters in two directories do not collide. The subnet is
// the first free one from the directory's own: a bridge left over by a
// killed run, or another live cluster, may already hold that one.
func (c *Cluster) netnsNames() (prefix, subnet string, err error) {
	sum := sha256.Sum256([]byte(c.cfg.Dir))
	prefix = "mo" + hex.EncodeToString(sum[:])[:5]
	var first error
	for i := range 256 {
		s := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 77, sum[3] + byte(i), 0}), 24)
		err := netns.CheckFree(s)
		if err == nil {
			return prefix, s.String(), nil
		}
		if first == nil {
			first = err
		}
	}
	return "", "", fmt.Errorf("no free subnet in 10.77.0.0/16 for the cluster's network (the first tried: %w): stop other clusters or sweep their leftovers (ip link show | grep -- -br)", first)
}

// freeLoopback picks N consecutive loopback addresses whose ports are free.
func (c *Cluster) freeLoopback() ([]string, error) {
	try := func(base netip.Addr) ([]string, bool) {
		var addrs []string
		a := base
		for range c.cfg.Nodes {
			addr := netip.AddrPortFrom(a, uint16(c.cfg.Port)).String()
			if cluster.CheckPortsFree(addr, true) != nil {
				return nil, false
			}
			addrs = append(addrs, addr)
			a = a.Next()
		}
		return addrs, true
	}
	if c.cfg.Base.IsValid() {
		if addrs, ok := try(c.cfg.Base); ok {
			return addrs, nil
		}
		return nil, fmt.Errorf("the ports of %d nodes from %s are not all free: choose another base address", c.cfg.Nodes, c.cfg.Base)
	}
	for third := range 256 {
		if addrs, ok := try(netip.AddrFrom4([4]byte{127, 77, byte(third), 1})); ok {
			return addrs, nil
		}
	}
	return nil, errors.New("no free block of loopback addresses in 127.77.0.0/16")
}

func (c *Cluster) makeNetwork() error {
	if err := netns.Sweep(c.lay.Prefix); err != nil {
		return fmt.Errorf("clean up the namespaces of an earlier run: %w", err)
	}
	nw, err := netns.Create(c.lay.Prefix, netip.MustParsePrefix(c.lay.Subnet))
	if err != nil {
		return err
	}
	c.net = nw
	for i, a := range c.lay.Addrs {
		ap := netip.MustParseAddrPort(a)
		h, err := nw.AddHost("n"+strconv.Itoa(i+1), ap.Addr())
		if err != nil {
			return err
		}
		c.hosts[h.Name] = h
	}
	return nil
}

// inNetns runs fn inside a node's namespace (or here without --netns).
func (c *Cluster) inNetns(n *Node, fn func() error) error {
	if h := c.hosts[n.Name]; h != nil {
		return netns.Do(h.Path, fn)
	}
	return fn()
}

// command is the daemon's command line, without the one-time join flags.
func (c *Cluster) command(n *Node) []string {
	i := slices.Index(c.Nodes, n)
	args := []string{"node", "--dir", n.Dir, "--socket", n.Socket, "--shared",
		"--capacity", strconv.FormatFloat(c.cfg.capacity(i), 'g', -1, 64),
		"--speed", strconv.FormatFloat(c.speed, 'f', 3, 64)}
	if m := c.cfg.memory(i); m > 0 {
		args = append(args, "--memory", strconv.FormatUint(m, 10))
	}
	if c.cfg.Interval > 0 {
		args = append(args, "--interval", c.cfg.Interval.String())
	}
	if c.cfg.Window > 0 {
		args = append(args, "--window", strconv.Itoa(c.cfg.Window))
	}
	if h := c.hosts[n.Name]; h != nil {
		args = append(args, "--netns", h.Path)
	}
	return append(args, c.cfg.ExtraArgs...)
}

// RestartCommand is how a user restarts a node of this cluster by hand.
func (c *Cluster) RestartCommand(name string) string {
	n := c.Node(name)
	if n == nil {
		return ""
	}
	return c.cfg.Binary + " " + strings.Join(c.command(n), " ")
}

// startNode starts a node's daemon and waits until its socket answers.
func (c *Cluster) startNode(n *Node, extra []string) error {
	logf, err := os.OpenFile(n.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open log of %s: %w", n.Name, err)
	}
	defer logf.Close()
	cmd := exec.Command(c.cfg.Binary, append(c.command(n), extra...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group: Ctrl-C reaches `mosaic up`, which stops the
	// daemons in order. Pdeathsig: if up dies, the daemons leave too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", n.Name, err)
	}
	done := make(chan struct{})
	n.mu.Lock()
	n.cmd, n.done, n.err = cmd, done, nil
	n.mu.Unlock()
	go func() {
		err := cmd.Wait()
		n.mu.Lock()
		n.err = err
		n.mu.Unlock()
		close(done)
		select {
		case c.Exited <- n.Name:
		default:
		}
	}()
	deadline := time.After(60 * time.Second)
	for {
		var st api.Status
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := api.Call(ctx, n.Socket, api.OpStatus, nil, &st)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("node %s exited at start (%v): %s", n.Name, n.exitErr(), lastLines(n.Log, 5))
		case <-deadline:
			return fmt.Errorf("node %s did not answer on %s within 60s: see %s", n.Name, n.Socket, n.Log)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (n *Node) exitErr() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.err
}

// PID is the daemon's process id (0 when not running).
func (n *Node) PID() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil || n.cmd.Process == nil {
		return 0
	}
	select {
	case <-n.done:
		return 0
	default:
	}
	return n.cmd.Process.Pid
}

// Done is closed when the node's daemon has exited.
func (n *Node) Done() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.done
}

func lastLines(path string, k int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > k {
		lines = lines[len(lines)-k:]
	}
	return strings.Join(lines, "\n")
}

// waitStore waits until the first node's store answers (it must, before
// tokens can be made).
func (c *Cluster) waitStore(ctx context.Context, n *Node) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		var st api.Status
		if err := api.Call(ctx, n.Socket, api.OpStatus, nil, &st); err == nil && st.StoreOK {
			return nil
		} else if time.Now().After(deadline) {
			return fmt.Errorf("the store on %s did not come up within 60s (%v): see %s", n.Name, st.StoreError, filepath.Join(n.Dir, cluster.StoreLog))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-n.Done():
			return fmt.Errorf("node %s exited: %s", n.Name, lastLines(n.Log, 5))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// WaitAlive waits until every running node sees every running node alive.
func (c *Cluster) WaitAlive(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		missing := c.notAlive(ctx)
		if len(missing) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not every node sees every other alive after %s: %s", timeout, strings.Join(missing, "; "))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *Cluster) notAlive(ctx context.Context) []string {
	var running []*Node
	for _, n := range c.Nodes {
		if n.PID() != 0 {
			running = append(running, n)
		}
	}
	var missing []string
	for _, n := range running {
		var view []api.NodeInfo
		if err := api.Call(ctx, n.Socket, api.OpNodes, nil, &view); err != nil {
			missing = append(missing, n.Name+": "+err.Error())
			continue
		}
		for _, m := range running {
			if !slices.ContainsFunc(view, func(v api.NodeInfo) bool { return v.Name == m.Name && v.State == "alive" }) {
				missing = append(missing, n.Name+" does not see "+m.Name+" alive")
			}
		}
	}
	return missing
}

// writeEnv writes D/env, which points the CLI at the nodes.
func (c *Cluster) writeEnv() error {
	var b strings.Builder
	fmt.Fprintf(&b, "# mosaic up: %d nodes in %s. `source` this file to point the CLI at %s;\n", len(c.Nodes), c.cfg.Dir, c.Nodes[0].Name)
	fmt.Fprintf(&b, "# reach another node with: mosaic --socket $MOSAIC_SOCKET_N2 nodes\n")
	fmt.Fprintf(&b, "export MOSAIC_SOCKET=%s\n", c.Nodes[0].Socket)
	for _, n := range c.Nodes {
		fmt.Fprintf(&b, "export MOSAIC_SOCKET_%s=%s\n", strings.ToUpper(n.Name), n.Socket)
	}
	return os.WriteFile(filepath.Join(c.cfg.Dir, "env"), []byte(b.String()), 0o644)
}

// Kill sends SIGKILL to a node's daemon and waits for it to die: a crash.
func (c *Cluster) Kill(name string) error {
	n := c.Node(name)
	if n == nil || n.PID() == 0 {
		return fmt.Errorf("node %s is not running", name)
	}
	n.mu.Lock()
	p, done := n.cmd.Process, n.done
	n.mu.Unlock()
	if err := p.Kill(); err != nil {
		return err
	}
	<-done
	return nil
}

// Restart starts a stopped node again from its data directory.
func (c *Cluster) Restart(name string) error {
	n := c.Node(name)
	if n == nil {
		return fmt.Errorf("no node %s", name)
	}
	if n.PID() != 0 {
		return fmt.Errorf("node %s is running", name)
	}
	return c.startNode(n, nil)
}

// Stop stops every daemon (gracefully, then by force), and removes what
// the cluster made outside its directory: cgroups and namespaces. The
// directory itself is kept, so the same cluster can be started again.
func (c *Cluster) Stop() error {
	var errs []error
	c.stop.Do(func() {
		var running []*Node
		for _, n := range c.Nodes {
			if pid := n.PID(); pid != 0 {
				syscall.Kill(pid, syscall.SIGTERM)
				running = append(running, n)
			}
		}
		timeout := time.After(20 * time.Second)
		for _, n := range running {
			select {
			case <-n.Done():
			case <-timeout:
				if pid := n.PID(); pid != 0 {
					syscall.Kill(pid, syscall.SIGKILL)
				}
				<-n.Done()
				errs = append(errs, fmt.Errorf("node %s did not stop within 20s and was killed", n.Name))
			}
		}
		errs = append(errs, c.cleanCgroups())
		if c.net != nil {
			errs = append(errs, c.net.Destroy())
		}
		for _, n := range c.Nodes {
			os.Remove(n.Socket)
		}
		c.unlock()
	})
	return errors.Join(errs...)
}

// readClusterID reads the cluster's ID from a node's directory.
func readClusterID(dir string) (string, error) {
	n, err := cluster.Load(dir)
	if err != nil {
		return "", err
	}
	return n.ClusterID, nil
}

// cleanCgroups removes the node cgroups a killed daemon could not.
func (c *Cluster) cleanCgroups() error {
	if c.id == "" {
		return nil // no daemon was started
	}
	var errs []error
	for _, n := range c.Nodes {
		errs = append(errs, cgroup.Open(cgroup.DefaultRoot, filepath.Join("mosaic", c.id, n.Name)).Destroy())
	}
	return errors.Join(errs...)
}
