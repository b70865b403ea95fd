package daemon

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/executor"
	"github.com/mosaic-cluster/mosaic/internal/peerpb"
	"github.com/mosaic-cluster/mosaic/internal/policy"
)

// This file runs the node's policy (internal/policy) live: placement of
// new processes, and, for the policies that migrate, a balancing round
// every interval that asks the homes of this node's processes to move the
// ones the policy chose. The policy is pure; what it needs to remember
// (the round-robin turn, the peak load, what this node sent where and
// when) is kept here and handed to it in the view.

// PolicyOff runs every process where it is started and never moves one.
const PolicyOff = "off"

// targetBackoff is how long a node that failed a move is not offered to
// the policy again: a dead or refusing node must not draw a retry every
// round from every node.
const targetBackoff = 30 * time.Second

// peakWindow is how long a live node remembers the largest load it saw,
// for the opportunity-cost policies' L. The study's "largest load seen so
// far" is over one run of jobs; a daemon's life has no such end, and one
// burst would set L for good: then load/L stays near 0, where n^x is
// nearly a straight line, and the CPU term stops telling a busy node from
// an idle one (docs/BENCHMARKS.md, "Why the cost policies place badly").
const peakWindow = 10 * time.Minute

// peakLoad is the largest load seen since the policy was chosen, within
// peakWindow: once that long has passed without a load as high, it is
// the largest of the moment again (L then doubles back up as loads rise).
type peakLoad struct {
	value float64
	at    time.Time // when it was last reached
}

func (p *peakLoad) see(load float64, now time.Time) {
	if load >= p.value || now.Sub(p.at) > peakWindow {
		p.value, p.at = load, now
	}
}

// processBackoff is how long a process whose move failed is not offered
// again: most such failures pass (it held a file or a child for a moment,
// it had just arrived).
const processBackoff = 5 * time.Second

// unfitFor is how long a node whose CPU refused a process is not offered
// for it again (a node of that name may come back on other hardware).
const unfitFor = time.Hour

// balancer is the node's policy state.
type balancer struct {
	mu       sync.Mutex
	name     string        // policy name, or PolicyOff
	pol      policy.Policy // nil when off
	manual   bool          // recommend only: never move by itself
	noGuests bool          // the node's own wish (--no-guests, mosaic policy --no-guests)
	draining bool          // mosaic drain: no guests, and the guests leave
	peak     peakLoad
	placed   int
	rounds   uint64
	cpu      map[string]cpuSample // by process ID: the last CPU reading
	sent     []sentTo             // the last moves this node's policy made (its placements: home.RunningSince)
	failed   map[string]time.Time // node -> not offered before
	held     map[string]time.Time // process -> not offered before (a move of it failed)
	// unfit are the nodes each process may not go to, and until when:
	// their CPU lacks an extension it may use (executor, cpufeat).
	unfit map[string]map[string]time.Time
	// expelled are the guests a drain sent away, and when: their copy
	// here lingers a moment after the home switched, and must not be
	// sent away again (the home would move it on from where it went).
	expelled map[string]time.Time
}

type cpuSample struct {
	seconds float64
	at      time.Time
	demand  float64
}

type sentTo struct {
	at   time.Time
	node string
}

func newBalancer(name string, manual, noGuests bool) (*balancer, error) {
	b := &balancer{cpu: map[string]cpuSample{}, failed: map[string]time.Time{}, held: map[string]time.Time{}, unfit: map[string]map[string]time.Time{},
		expelled: map[string]time.Time{}, manual: manual, noGuests: noGuests}
	return b, b.set(name)
}

// set changes the policy.
func (b *balancer) set(name string) error {
	if name == "" {
		name = "leastload"
	}
	var p policy.Policy
	if name != PolicyOff {
		var err error
		if p, err = policy.New(name); err != nil {
			return fmt.Errorf("%w, or %s", err, PolicyOff)
		}
		p = policy.Live(p)
	}
	if name != b.name {
		b.peak = peakLoad{} // the policy's "so far" starts now
	}
	b.name, b.pol = name, p
	return nil
}

// refusesGuests says whether the node takes no processes of other homes.
func (b *balancer) refusesGuests() bool { return b.noGuests || b.draining }

// setPolicy changes the node's policy and modes at run time (root).
func (d *Daemon) setPolicy(name string, manual, noGuests *bool) error {
	b := d.bal
	b.mu.Lock()
	if name != "" {
		if err := b.set(name); err != nil {
			b.mu.Unlock()
			return err
		}
	}
	if manual != nil {
		b.manual = *manual
	}
	if noGuests != nil {
		b.noGuests = *noGuests
	}
	name, refuses := b.name, b.refusesGuests()
	b.mu.Unlock()
	d.exec.SetNoGuests(refuses)
	d.announce()
	d.log.Info("policy", "policy", name, "no_guests", refuses)
	return nil
}

// announce tells the cluster this node's policy and whether it takes
// guests.
func (d *Daemon) announce() {
	d.mu.Lock()
	d.core.SetMeta(d.meta())
	d.mu.Unlock()
}

// view is what the policy sees from this node now: every alive node
// (what gossip says of it, and what this node sent there since), and, if
// withProcs, the processes running here.
func (d *Daemon) view(now time.Time, withProcs bool) policy.View {
	d.mu.Lock()
	members := d.core.Members()
	loads := d.core.Loads(now)
	self := d.self
	d.mu.Unlock()
	byNode := map[string]int{}
	for i, l := range loads {
		byNode[l.Report.GetNode()] = i
	}
	// What this node runs and its memory as they are now, read before the
	// balancer's lock is taken (placement waits on it).
	var running []executor.Running
	if withProcs {
		running = d.exec.Running()
		// Its memory now, not as last published: ushering must act
		// before the node runs out.
		if total, free, err := d.probe.Memory(); err == nil {
			self.memTotal, self.memFree = total, free
		}
	}
	b := d.bal
	b.mu.Lock()
	defer b.mu.Unlock()
	var v policy.View
	// This node's own load, for balancing: its processes' demand now.
	// The load meter's figure decays slowly after a process leaves (as
	// MOSIX's does, so that others do not rush in), which would have this
	// node send away more than it should.
	ownLoad := -1.0
	if withProcs {
		v.Procs = b.procs(now, running, d.capacity())
		ownLoad = 0
		for _, p := range v.Procs {
			ownLoad += p.Demand
		}
		ownLoad /= d.capacity() * max(d.speed, 0.01)
	}
	for _, m := range members {
		if m.State != peerpb.State_ALIVE {
			continue
		}
		n := policy.Node{Name: m.Name, Capacity: m.Meta.GetCapacity(), Speed: m.Meta.GetSpeed(), MemTotal: m.Meta.GetMemTotal(),
			Self: m.Name == d.node.Name, NoGuests: m.Meta.GetNoGuests()}
		if n.Capacity <= 0 {
			n.Capacity = float64(m.Meta.GetCores())
		}
		if i, ok := byNode[m.Name]; ok {
			r := loads[i]
			n.HasLoad, n.Load, n.FreeMem, n.Age = true, r.Report.GetLoad(), r.Report.GetFreeMem(), r.Age
		}
		if n.Self {
			n.HasLoad, n.Load, n.FreeMem, n.Age, n.MemTotal = true, self.export, self.memFree, 0, self.memTotal
			if ownLoad >= 0 {
				n.Load = ownLoad
			}
			n.NoGuests = b.refusesGuests()
		}
		if n.MemTotal > 0 {
			n.MemUsed = n.MemTotal - min(n.FreeMem, n.MemTotal)
		}
		if until, ok := b.failed[m.Name]; ok && now.Before(until) && !n.Self {
			n.NoGuests = true
		}
		// A report shows the processes that ran during the period it
		// averages (one interval) before it was measured: those sent
		// there since it cannot show. (This node's own load, when
		// balancing, is counted now: nothing is pending.)
		if !n.Self || ownLoad < 0 {
			measured := now.Add(-n.Age - d.cfg.Interval)
			n.Pending = d.home.RunningSince(m.Name, measured)
			for _, s := range b.sent {
				if s.node == m.Name && s.at.After(measured) {
					n.Pending++
				}
			}
		}
		v.Nodes = append(v.Nodes, n)
	}
	// The largest of the moment first: a peak past its window gives way
	// to it, not to whichever node came first.
	highest := 0.0
	for _, n := range v.Nodes {
		highest = max(highest, n.Load)
	}
	b.peak.see(highest, now)
	v.PeakLoad, v.Placed = b.peak.value, b.placed
	b.rounds++
	v.Seed = b.rounds
	return v
}

// procs turns the processes running here into the policy's terms. A
// process's demand is its CPU use over the last round against the share
// it could have had: 1 for one that is always runnable.
func (b *balancer) procs(now time.Time, running []executor.Running, capacity float64) []policy.Proc {
	seen := map[string]bool{}
	active := 0
	for _, r := range running {
		if prev, ok := b.cpu[r.ID]; ok && now.Sub(prev.at) > 0 && (r.CPUSeconds-prev.seconds)/now.Sub(prev.at).Seconds() > 0.05 {
			active++
		}
	}
	share := math.Min(1, capacity/math.Max(1, float64(active)))
	var out []policy.Proc
	for _, r := range running {
		seen[r.ID] = true
		// Until its demand is measured (a round after it is first seen) a
		// process counts as CPU-bound, as placement counts it, and does
		// not move: it may be anything.
		demand, measured := 1.0, false
		if prev, ok := b.cpu[r.ID]; ok {
			measured = true
			demand = prev.demand
			if dt := now.Sub(prev.at).Seconds(); dt > 0.2 {
				demand = math.Min(1, (r.CPUSeconds-prev.seconds)/dt/share)
				b.cpu[r.ID] = cpuSample{seconds: r.CPUSeconds, at: now, demand: demand}
			}
		} else {
			b.cpu[r.ID] = cpuSample{seconds: r.CPUSeconds, at: now, demand: demand}
		}
		held := now.Before(b.held[r.ID])
		// Age: how long it has run here (the node knows no more; a moved
		// process starts again from its arrival).
		resident := now.Sub(r.Since)
		if !measured {
			resident = 0
		}
		var avoid []string
		for node, until := range b.unfit[r.ID] {
			if now.Before(until) {
				avoid = append(avoid, node)
			}
		}
		out = append(out, policy.Proc{ID: r.ID, Demand: demand, Mem: r.RSS, Age: now.Sub(r.Since), Resident: resident, Pinned: r.Pinned != "" || held, Avoid: avoid})
	}
	for id := range b.cpu {
		if !seen[id] {
			delete(b.cpu, id)
			delete(b.held, id)
			delete(b.unfit, id)
		}
	}
	return out
}

// moveFailed remembers a move that failed: the process waits before it
// is offered again; the target too, when it was the target that failed
// (unreachable, refusing, dying); and a target whose CPU lacks what the
// process may use is not offered for it again, though it may go
// elsewhere at once.
func (b *balancer) moveFailed(id, to string, err error, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	msg := err.Error()
	switch {
	case strings.Contains(msg, "the CPU of "+to+" lacks"):
		if b.unfit[id] == nil {
			b.unfit[id] = map[string]time.Time{}
		}
		b.unfit[id][to] = now.Add(unfitFor)
	case strings.Contains(msg, "reach "+to) || strings.Contains(msg, "takes no guests") || strings.Contains(msg, "node "+to+" is"):
		b.failed[to] = now.Add(targetBackoff)
		b.held[id] = now.Add(processBackoff)
	default:
		b.held[id] = now.Add(processBackoff)
	}
}

func (d *Daemon) capacity() float64 {
	if d.cfg.Capacity > 0 {
		return d.cfg.Capacity
	}
	return float64(d.cores)
}

// place ranks the alive nodes for a new process with the node's policy
// (just this node when it is off).
func (d *Daemon) place() []string {
	v := d.view(time.Now(), false)
	b := d.bal
	b.mu.Lock()
	pol := b.pol
	b.placed++
	b.mu.Unlock()
	if pol == nil {
		return []string{d.node.Name}
	}
	return pol.Place(v, policy.Request{})
}

// recommend is what the node's policy (or the named one) would move now.
func (d *Daemon) recommend(name string) (string, []policy.Move, error) {
	b := d.bal
	b.mu.Lock()
	pol, polName := b.pol, b.name
	b.mu.Unlock()
	if name != "" {
		p, err := policy.New(name)
		if err != nil {
			return "", nil, err
		}
		pol, polName = policy.Live(p), name
	}
	if pol == nil || !pol.Migrates() {
		return polName, nil, nil
	}
	return polName, pol.Balance(d.view(time.Now(), true)), nil
}

// balanceLoop runs a balancing round every interval.
func (d *Daemon) balanceLoop(ctx context.Context) error {
	t := time.NewTicker(d.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			d.balanceRound(ctx)
		}
	}
}

// balanceRound asks the policy what to move and has it moved, one
// process at a time, each through its home.
func (d *Daemon) balanceRound(ctx context.Context) {
	b := d.bal
	b.mu.Lock()
	pol, manual, draining := b.pol, b.manual, b.draining
	b.mu.Unlock()
	if draining {
		d.drainRound(ctx)
		return
	}
	if pol == nil || !pol.Migrates() {
		return
	}
	now := time.Now()
	v := d.view(now, true)
	if len(v.Procs) == 0 {
		return
	}
	moves := pol.Balance(v)
	if manual {
		return
	}
	for _, mv := range moves {
		d.autoMove(ctx, mv.Proc, mv.To, mv.Reason)
	}
}

// autoMove has a process's home move it for this node's policy.
func (d *Daemon) autoMove(ctx context.Context, id, to, reason string) error {
	home, err := parseID(id)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, migrateTimeout)
	defer cancel()
	b := d.bal
	began := time.Now()
	if home == d.node.Name {
		_, err = d.home.MigrateAuto(ctx, id, to, d.node.Name)
	} else {
		var pc peerpb.PeerClient
		if pc, err = d.homeOfProcess(id, home); err == nil {
			_, err = pc.Migrate(ctx, &peerpb.MigrateRequest{Id: id, Target: to, Auto: true})
		}
	}
	if err != nil {
		d.log.Info("policy move failed", "id", id, "to", to, "reason", reason, "err", err)
		if !errors.Is(err, context.Canceled) {
			b.moveFailed(id, to, err, time.Now())
		}
		return err
	}
	// Pending at the target from when it began to arrive, until its
	// load report shows it.
	b.mu.Lock()
	b.sent = append(b.sent, sentTo{at: began, node: to})
	if len(b.sent) > 64 {
		b.sent = b.sent[len(b.sent)-64:]
	}
	b.mu.Unlock()
	d.log.Info("policy moved a process", "id", id, "to", to, "reason", reason)
	return nil
}

// drainTimeout bounds how long a drain waits for guests that fail to move.
const drainTimeout = 2 * time.Minute

// expellable says whether a guest can be sent away by a drain: anything the
// engine can carry, pinned by its user or not (--pin opts out of policies,
// not out of an administrator's drain).
func expellable(r executor.Running) bool {
	return r.Pinned == "" || r.Pinned == executor.PinnedByUser
}

// drainRound, while the node drains, sends away a guest that could not
// move before (it held something it has since let go of).
func (d *Daemon) drainRound(ctx context.Context) {
	for _, r := range d.exec.Running() {
		if r.Home == d.node.Name || !expellable(r) || d.expelledRecently(r.ID) {
			continue
		}
		if to := d.drainTarget(); to != "" {
			d.expel(ctx, r.ID, to)
		}
		return
	}
}

// drainTarget is where a draining node's guests go: the best node that
// takes guests by leastload placement.
func (d *Daemon) drainTarget() string {
	v := d.view(time.Now(), false)
	var others []policy.Node
	for _, n := range v.Nodes {
		if !n.Self {
			others = append(others, n)
		}
	}
	if c := policy.Place(others, policy.Request{}); len(c) > 0 {
		return c[0].Node
	}
	return ""
}

// expel has a guest's home move it to another node, as root asks: the
// rules of automatic moves (the stay, the user's pin) do not hold back a
// drain.
func (d *Daemon) expel(ctx context.Context, id, to string) error {
	home, err := parseID(id)
	if err != nil {
		return err
	}
	pc, err := d.homeOfProcess(id, home)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, migrateTimeout)
	defer cancel()
	if _, err := pc.Migrate(ctx, &peerpb.MigrateRequest{Id: id, Target: to, Uid: 0}); err != nil {
		d.log.Info("drain: a guest did not move", "id", id, "to", to, "err", err)
		return err
	}
	d.log.Info("drain: a guest moved", "id", id, "to", to)
	b := d.bal
	b.mu.Lock()
	now := time.Now()
	for x, at := range b.expelled {
		if now.Sub(at) > expelledFor {
			delete(b.expelled, x)
		}
	}
	b.expelled[id] = now
	b.mu.Unlock()
	return nil
}

// expelledFor is how long a guest a drain sent away is known as gone
// (much longer than its copy here takes to end).
const expelledFor = time.Minute

// expelledRecently says whether a drain sent the process away lately.
func (d *Daemon) expelledRecently(id string) bool {
	b := d.bal
	b.mu.Lock()
	defer b.mu.Unlock()
	at, ok := b.expelled[id]
	return ok && time.Since(at) < expelledFor
}

// drain makes the node refuse guests and send those it has away, one at a
// time (undo: take guests again). It returns once every guest that can
// move has moved, or drainTimeout after the last move if some keep
// failing; what stayed, and why, is in stayed.
func (d *Daemon) drain(ctx context.Context, undo bool) (moved, stayed []*peerpb.Recommendation, err error) {
	b := d.bal
	b.mu.Lock()
	b.draining = !undo
	if undo {
		clear(b.expelled)
	}
	refuses := b.refusesGuests()
	b.mu.Unlock()
	d.exec.SetNoGuests(refuses)
	d.announce()
	if undo {
		d.log.Info("drain ended: guests are welcome again")
		return nil, nil, nil
	}
	d.log.Info("draining: guests leave, no new ones")
	failed := map[string]error{}
	deadline := time.Now().Add(drainTimeout)
	for {
		stayed = stayed[:0]
		var left []executor.Running
		for _, r := range d.exec.Running() {
			switch {
			case r.Home == d.node.Name, d.expelledRecently(r.ID):
			case !expellable(r):
				stayed = append(stayed, &peerpb.Recommendation{Id: r.ID, From: d.node.Name, Reason: r.Pinned})
			default:
				left = append(left, r)
			}
		}
		if len(left) == 0 {
			return moved, stayed, nil
		}
		if time.Now().After(deadline) {
			for _, r := range left {
				stayed = append(stayed, &peerpb.Recommendation{Id: r.ID, From: d.node.Name, Reason: fmt.Sprintf("it did not move: %v", failed[r.ID])})
			}
			return moved, stayed, nil
		}
		progress := false
		for _, r := range left {
			to := d.drainTarget()
			if to == "" {
				return moved, stayed, errors.New("no other node takes guests: the guests stay")
			}
			if err := d.expel(ctx, r.ID, to); err != nil {
				failed[r.ID] = err
				continue
			}
			moved = append(moved, &peerpb.Recommendation{Id: r.ID, From: d.node.Name, To: to})
			progress = true
			deadline = time.Now().Add(drainTimeout)
		}
		if !progress {
			select {
			case <-ctx.Done():
				return moved, stayed, fmt.Errorf("drain: %w", ctx.Err())
			case <-time.After(time.Second):
			}
		}
	}
}
