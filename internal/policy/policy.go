package policy

import (
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"
)

// View is what one node knows when it decides.
type View struct {
	Nodes []Node // every node it may use, itself included (Self set)
	Procs []Proc // the processes it runs that a policy may move
	// PeakLoad is the largest node load this node has seen so far: E-PVM
	// scales its CPU cost by the power of two above it.
	PeakLoad float64
	// Placed counts the processes this node has placed so far: round
	// robin's turn.
	Placed int
	// Seed makes the random choices of this decision (E-Mosix's
	// candidate set); the caller varies it from one decision to the next.
	Seed uint64
}

// Proc is a process this node runs.
type Proc struct {
	ID string
	// Demand is the share of one core the process would use if it had
	// the core alone: 1 for a CPU-bound process, less for one that waits.
	Demand float64
	Mem    uint64        // bytes it uses
	Age    time.Duration // since it started
	// Resident is the time since it came to this node (started or moved
	// here): processes that arrived recently do not move again.
	Resident time.Duration
	Pinned   bool // it must not move (the user said so, or it cannot)
	// Avoid are nodes it must not move to: they refused it for good
	// (their CPU lacks an extension it may use).
	Avoid []string
}

// avoids says whether p must not move to node.
func (p *Proc) avoids(node string) bool { return len(p.Avoid) > 0 && slices.Contains(p.Avoid, node) }

// Move is a migration a policy proposes.
type Move struct {
	Proc   string
	To     string
	Reason string // in words, for `mosaic recommend` and the logs
}

// Policy is a placement and migration policy.
type Policy interface {
	Name() string
	// Place ranks the nodes for a new process, best first. An empty
	// result means no node can take it.
	Place(v View, r Request) []string
	// Balance proposes migrations of this node's processes; nil when
	// nothing should move. A policy that never migrates returns nil.
	Balance(v View) []Move
	// Migrates says whether Balance can ever propose a move.
	Migrates() bool
}

// Names lists the policies New accepts, in the order of the study: the
// static baselines, then the dynamic ones.
func Names() []string { return []string{"roundrobin", "leastload", "epvm", "mosix", "emosix"} }

// New returns the named policy with its published constants.
func New(name string) (Policy, error) {
	switch name {
	case "roundrobin":
		return RoundRobin{}, nil
	case "leastload":
		return LeastLoad{}, nil
	case "mosix":
		return DefaultMosix(), nil
	case "epvm":
		return EPVM{}, nil
	case "emosix":
		return DefaultEMosix(), nil
	}
	return nil, fmt.Errorf("no policy %q: choose one of %s", name, strings.Join(Names(), ", "))
}

// self is the view's own node.
func (v View) self() (Node, bool) {
	for _, n := range v.Nodes {
		if n.Self {
			return n, true
		}
	}
	return Node{}, false
}

// RoundRobin is PVM's default: new processes go to the nodes in turn,
// whatever their load, and never move.
type RoundRobin struct{}

func (RoundRobin) Name() string { return "roundrobin" }

func (RoundRobin) Place(v View, _ Request) []string {
	var ns []string
	for _, n := range v.Nodes {
		if takes(n) {
			ns = append(ns, n.Name)
		}
	}
	if len(ns) == 0 {
		return nil
	}
	slices.Sort(ns)
	k := v.Placed % len(ns)
	return append(ns[k:], ns[:k]...)
}

func (RoundRobin) Balance(View) []Move { return nil }
func (RoundRobin) Migrates() bool      { return false }

// LeastLoad places a new process where the expected load is least (Place)
// and never moves it.
type LeastLoad struct{}

func (LeastLoad) Name() string { return "leastload" }

func (LeastLoad) Place(v View, r Request) []string { return choiceNames(Place(v.Nodes, r)) }

func (LeastLoad) Balance(View) []Move { return nil }
func (LeastLoad) Migrates() bool      { return false }

func choiceNames(cs []Choice) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.Node
	}
	return out
}

// Mosix is the MOSIX load balancer with memory ushering. A new process is
// placed as by LeastLoad (MOSIX starts it at home and its balancer moves it
// at once; placing it there directly saves the move). Then, each time it is
// asked:
//
//   - Memory ushering: when the node's processes use more than
//     (1 - UsherFree) of its memory, the largest movable process that
//     fits goes to the least loaded node that can hold it and stay below
//     that mark.
//   - Load balancing: a movable process p goes to node t when
//     load(t) + Factor × demand(p) × unit(t) < load(self), where unit(t)
//     is the load one process adds to t; Factor > 1 pays for the move and
//     keeps two nodes from trading a process back and forth. Among the
//     candidates the most CPU-bound and then the oldest goes first, to the
//     node where its expected load is least.
//
// A process moves only after MinResident on its node, and one process at a
// time moves from a node. A process whose demand is below MinDemand (it
// mostly waits) does not move for load: it would gain nothing.
type Mosix struct {
	Factor      float64
	MinResident time.Duration
	UsherFree   float64
	MinDemand   float64
}

// DefaultMosix has Kerrighed's factor of 1.3, ushering at 10% free, and
// moves for load only processes that want at least a fifth of a core.
func DefaultMosix() Mosix {
	return Mosix{Factor: 1.3, MinResident: 2 * time.Second, UsherFree: 0.1, MinDemand: 0.2}
}

func (Mosix) Name() string   { return "mosix" }
func (Mosix) Migrates() bool { return true }

func (Mosix) Place(v View, r Request) []string { return choiceNames(Place(v.Nodes, r)) }

func (m Mosix) Balance(v View) []Move {
	self, ok := v.self()
	if !ok || len(v.Procs) == 0 {
		return nil
	}
	full := self.MemTotal > 0 && float64(self.MemUsed) > (1-m.UsherFree)*float64(self.MemTotal)
	// Is any node light enough to take even the least demanding process
	// worth moving? Most rounds end here, before the processes are sorted.
	possible := false
	for _, t := range v.Nodes {
		if !t.Self && t.HasLoad && !t.NoGuests {
			unit := unitLoad(t)
			if t.Load+float64(t.Pending)*unit+m.Factor*m.MinDemand*unit < self.Load {
				possible = true
				break
			}
		}
	}
	if !full && !possible {
		return nil
	}
	var buf [16]Proc // no allocation for the first 16
	movable := movableProcs(buf[:0], v.Procs, m.MinResident)
	if len(movable) == 0 {
		return nil
	}
	if full {
		if mv, ok := m.usher(v, self, movable); ok {
			return []Move{mv}
		}
		if !possible {
			return nil
		}
	}
	// Most CPU-bound first, then oldest: they gain most and, having run
	// long, are likely to run on.
	slices.SortStableFunc(movable, func(a, b Proc) int {
		if c := cmp.Compare(b.Demand, a.Demand); c != 0 {
			return c
		}
		if c := cmp.Compare(b.Age, a.Age); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	for _, p := range movable {
		if p.Demand < m.MinDemand {
			continue
		}
		best, bestLoad := "", math.Inf(1)
		for _, t := range v.Nodes {
			if t.Self || !t.HasLoad || t.NoGuests || (t.MemTotal > 0 && t.FreeMem < p.Mem) || p.avoids(t.Name) {
				continue
			}
			unit := unitLoad(t)
			there := t.Load + float64(t.Pending)*unit
			if there+m.Factor*p.Demand*unit >= self.Load {
				continue
			}
			if after := there + p.Demand*unit; after < bestLoad || (after == bestLoad && t.Name < best) {
				best, bestLoad = t.Name, after
			}
		}
		if best != "" {
			return []Move{{Proc: p.ID, To: best, Reason: "load " + strconv.FormatFloat(self.Load, 'f', 2, 64) + " here, " + strconv.FormatFloat(bestLoad, 'f', 2, 64) + " there with it"}}
		}
	}
	return nil
}

// usher proposes the move that takes the node, over its memory mark, back
// under it.
func (m Mosix) usher(v View, self Node, movable []Proc) (Move, bool) {
	// Largest first: fewest moves to get back under the mark.
	slices.SortStableFunc(movable, func(a, b Proc) int {
		if c := cmp.Compare(b.Mem, a.Mem); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	for _, p := range movable {
		best, bestLoad := "", math.Inf(1)
		for _, t := range v.Nodes {
			if t.Self || !t.HasLoad || t.NoGuests || t.MemTotal == 0 || p.avoids(t.Name) {
				continue
			}
			if float64(t.MemUsed+p.Mem) > (1-m.UsherFree)*float64(t.MemTotal) {
				continue
			}
			if l := t.Load + float64(t.Pending)*unitLoad(t); l < bestLoad || (l == bestLoad && t.Name < best) {
				best, bestLoad = t.Name, l
			}
		}
		if best != "" {
			return Move{Proc: p.ID, To: best, Reason: fmt.Sprintf("memory %d%% used here", 100*self.MemUsed/self.MemTotal)}, true
		}
	}
	return Move{}, false
}

// movableProcs appends to out the processes that may move now.
func movableProcs(out, ps []Proc, minResident time.Duration) []Proc {
	for _, p := range ps {
		if !p.Pinned && p.Resident >= minResident {
			out = append(out, p)
		}
	}
	return out
}

// The opportunity-cost policies (Amir, Awerbuch, Barak, Borgstrom, Keren,
// IEEE TPDS 11(7), 2000). A node's cost is the sum over its resources of
// n^utilization, n the number of nodes: for memory, used / total; for
// CPU, load / L, L the smallest power of two not below the largest load
// seen (at least 1). A process costs, on a node, the marginal cost of
// adding it there.

// costModel is what the cost of a view needs.
type costModel struct {
	lnN, l float64
}

func newCostModel(v View) costModel {
	peak := v.PeakLoad
	for _, n := range v.Nodes {
		if n.HasLoad {
			peak = max(peak, n.Load)
		}
	}
	l := 1.0
	for l < peak {
		l *= 2
	}
	return costModel{lnN: math.Log(float64(max(len(v.Nodes), 2))), l: l}
}

// maxExponent is where n^x stops growing exponentially and goes on as its
// tangent: a machine far over its memory (the study's heavy tail reaches
// utilizations of 10^10) would otherwise cost +Inf, and a marginal cost of
// Inf - Inf is NaN, which sorts anywhere.
const maxExponent = 60

// pow is n^x, continued linearly beyond maxExponent.
func (c costModel) pow(x float64) float64 {
	if x <= maxExponent {
		return math.Exp(c.lnN * x)
	}
	return math.Exp(c.lnN*maxExponent) * (1 + c.lnN*(x-maxExponent))
}

// E-Mosix bounds its memory terms before it pays for exponentials: below
// maxExponent by the Taylor polynomials of e^z (1 - e^-z <= z - z²/2 +
// z³/6 and e^z - 1 >= z + z²/2 + z³/6 for z >= 0), elsewhere by tangents
// (pow is convex). slack is their relative margin, far above the rounding
// of pow (below 1e-13): a bound never rules out what the exact
// computation would choose.
const slack = 1e-9

// dropAtMost bounds pow(x) - pow(x2) from above, for x2 <= x and fx =
// pow(x).
func (c costModel) dropAtMost(x, x2, fx float64) float64 {
	z := c.lnN * (x - x2)
	if x <= maxExponent {
		return fx*(z-z*z/2+z*z*z/6)*(1+slack) + slack*fx*(1+z+z*z/2+z*z*z/6)
	}
	return c.lnN*c.pow(maxExponent)*(x-x2)*(1+slack) + slack*fx
}

// riseAtLeast bounds pow(x2) - pow(x) from below, for x2 >= x and fx =
// pow(x).
func (c costModel) riseAtLeast(x, x2, fx float64) float64 {
	z := c.lnN * (x2 - x)
	switch {
	case x2 <= maxExponent:
		return fx*(z+z*z/2+z*z*z/6)*(1-slack) - slack*fx
	case x <= maxExponent:
		return fx*z*(1-slack) - slack*fx
	}
	return c.lnN*c.pow(maxExponent)*(x2-x)*(1-slack) - slack*fx
}

// cost is a node's cost with extra load and memory added (negative:
// taken away).
func (c costModel) cost(t Node, load float64, mem float64) float64 {
	x := c.pow((t.Load + load) / c.l)
	if t.MemTotal > 0 {
		x += c.pow((float64(t.MemUsed) + mem) / float64(t.MemTotal))
	}
	return x
}

// marginal is what adding a process of the given demand and memory to t
// costs.
func (c costModel) marginal(t Node, demand float64, mem uint64) float64 {
	return c.cpuMarginal(t, demand) + c.memMarginal(t, mem)
}

// cpuMarginal is the CPU part of marginal.
func (c costModel) cpuMarginal(t Node, demand float64) float64 {
	unit := unitLoad(t)
	pending := float64(t.Pending) * unit
	return c.pow((t.Load+pending+demand*unit)/c.l) - c.pow((t.Load+pending)/c.l)
}

// memMarginal is the memory part of marginal: what adding mem to t's
// memory costs.
func (c costModel) memMarginal(t Node, mem uint64) float64 {
	if t.MemTotal == 0 {
		return 0
	}
	used := float64(t.MemUsed) / float64(t.MemTotal)
	return c.pow(used+float64(mem)/float64(t.MemTotal)) - c.pow(used)
}

// EPVM places a new process where its marginal cost is least, and never
// moves it. A process's demand is unknown at start: it counts as one
// CPU-bound process.
type EPVM struct{}

func (EPVM) Name() string { return "epvm" }

func (EPVM) Place(v View, r Request) []string { return placeByCost(v, r) }

func (EPVM) Balance(View) []Move { return nil }
func (EPVM) Migrates() bool      { return false }

func placeByCost(v View, r Request) []string {
	c := newCostModel(v)
	// Indices into v.Nodes, in a buffer on the stack (as in Place).
	type scored struct {
		i    int
		cost float64
	}
	var buf [16]scored
	cands := buf[:0]
	for i := range v.Nodes {
		n := &v.Nodes[i]
		if !takes(*n) || (!n.HasLoad && !n.Self) {
			continue
		}
		cands = append(cands, scored{i, c.marginal(*n, 1, r.Mem)})
	}
	slices.SortStableFunc(cands, func(x, y scored) int {
		if d := cmp.Compare(x.cost, y.cost); d != 0 {
			return d
		}
		a, b := &v.Nodes[x.i], &v.Nodes[y.i]
		if a.Self != b.Self {
			if a.Self {
				return -1
			}
			return 1
		}
		return cmp.Compare(a.Name, b.Name)
	})
	out := make([]string, len(cands))
	for i, s := range cands {
		out[i] = v.Nodes[s.i].Name
	}
	return out
}

// EMosix places as EPVM, then reassigns: a movable process goes to a node
// of a random set of SetSize others when its marginal cost there is below
// what it costs here by more than Margin (what a move costs, in cost
// units). As the paper's E-Mosix, it does not remember what a process
// cost when it was placed; it greedily lowers the cluster's cost now,
// under MOSIX's limits on moving (MinResident, one move at a time).
//
// Live, a move must also pay for itself (MoveFixed, MoveRate set): a
// process's lifetime is heavy-tailed, so one that has run for its age a is
// expected to run about a more; the move is made when the cost it saves
// over that time exceeds what the process costs here for as long as the
// move takes (MoveFixed + its memory at MoveRate bytes a second):
// gain × a > here × moveTime.
type EMosix struct {
	SetSize     int
	Margin      float64
	MinResident time.Duration
	MoveFixed   time.Duration
	MoveRate    float64 // bytes a second; 0: moves cost nothing (the study)
}

// DefaultEMosix: a set of 3 (the paper gives no figure), no margin (the
// study ignores the cost of a move), the residence of Mosix.
func DefaultEMosix() EMosix { return EMosix{SetSize: 3, MinResident: 2 * time.Second} }

// Live returns p as the daemon runs it: E-Mosix with the cost of a move
// measured here (docs/BENCHMARKS.md: about 12 ms frozen plus the memory
// at ~500 MB/s); the other policies as they are.
func Live(p Policy) Policy {
	if e, ok := p.(EMosix); ok {
		e.MoveFixed, e.MoveRate = 15*time.Millisecond, 500e6
		return e
	}
	return p
}

// pays says whether moving p, which costs here, for a gain, pays for the
// move.
func (e EMosix) pays(p Proc, here, gain float64) bool {
	if e.MoveRate <= 0 {
		return true
	}
	move := e.MoveFixed.Seconds() + float64(p.Mem)/e.MoveRate
	return gain*p.Age.Seconds() > here*move
}

func (EMosix) Name() string   { return "emosix" }
func (EMosix) Migrates() bool { return true }

func (EMosix) Place(v View, r Request) []string { return placeByCost(v, r) }

func (e EMosix) Balance(v View) []Move {
	self, ok := v.self()
	if !ok {
		return nil
	}
	movable := 0
	for _, p := range v.Procs {
		if !p.Pinned && p.Resident >= e.MinResident {
			movable++
		}
	}
	if movable == 0 {
		return nil
	}
	var buf [16]int // indices into v.Nodes: no copies, no allocation up to 16 nodes
	others := buf[:0]
	for i, t := range v.Nodes {
		if !t.Self && t.HasLoad && !t.NoGuests {
			others = append(others, i)
		}
	}
	if len(others) == 0 {
		return nil
	}
	// The random set: a seeded Fisher-Yates shuffle, so the decision is a
	// function of the view.
	pcg := rand.NewPCG(v.Seed, 0x656d6f736978)
	for i := len(others) - 1; i > 0; i-- {
		j := int(pcg.Uint64() % uint64(i+1))
		others[i], others[j] = others[j], others[i]
	}
	if e.SetSize > 0 && len(others) > e.SetSize {
		others = others[:e.SetSize]
	}
	c := newCostModel(v)
	// The terms that do not depend on the process, once per node: a
	// process's CPU term depends only on its demand (1 for most), its
	// memory term on its size.
	type target struct {
		node                       int
		cpu1, used, total, memBase float64 // the CPU marginal of demand 1; memory used and total, and its cost
		frac                       float64 // used / total
	}
	var tbuf [16]target
	ts := tbuf[:0]
	for _, i := range others {
		t := &v.Nodes[i]
		x := target{node: i, cpu1: c.cpuMarginal(*t, 1), used: float64(t.MemUsed), total: float64(t.MemTotal)}
		if t.MemTotal > 0 {
			x.frac = x.used / x.total
			x.memBase = c.pow(x.frac)
		}
		ts = append(ts, x)
	}
	unit := unitLoad(self)
	selfCPU1 := c.pow(self.Load/c.l) - c.pow((self.Load-unit)/c.l)
	selfFrac, selfMemBase := 0.0, 0.0
	if self.MemTotal > 0 {
		selfFrac = float64(self.MemUsed) / float64(self.MemTotal)
		selfMemBase = c.pow(selfFrac)
	}
	// No process can gain more than the most a CPU-bound one frees here
	// (the biggest one's memory included) minus the cheapest CPU there
	// (memory only adds): most rounds end here.
	var maxMem uint64
	allUnit := true
	for _, p := range v.Procs {
		if !p.Pinned && p.Resident >= e.MinResident {
			maxMem = max(maxMem, p.Mem)
			allUnit = allUnit && p.Demand == 1
		}
	}
	if allUnit {
		cheapest := math.Inf(1)
		for _, t := range ts {
			cheapest = min(cheapest, t.cpu1)
		}
		memTerm := 0.0 // of the biggest one, taken away
		if self.MemTotal > 0 {
			memTerm = c.pow((float64(self.MemUsed)-float64(maxMem))/float64(self.MemTotal)) - selfMemBase
		}
		if selfCPU1-memTerm-cheapest <= e.Margin {
			return nil
		}
	}
	// The bounds below (a gain is at most hereUp - cpu - memLow) need no
	// exponential; what they rule out could not beat the best so far,
	// so the move chosen is the same. A NaN rules nothing out.
	var best Move
	bestGain := e.Margin
	var buf2 [2][16]float64
	cpus, memLows := buf2[0][:0], buf2[1][:0]
	for range ts {
		cpus, memLows = append(cpus, 0), append(memLows, 0)
	}
	for _, p := range v.Procs {
		if p.Pinned || p.Resident < e.MinResident {
			continue
		}
		// What p costs here: the cost saved by taking it away.
		cpuHere := selfCPU1
		if p.Demand != 1 {
			cpuHere = c.pow(self.Load/c.l) - c.pow((self.Load-p.Demand*unit)/c.l)
		}
		hereUp := cpuHere
		if self.MemTotal > 0 {
			hereUp += c.dropAtMost(selfFrac, (float64(self.MemUsed)-float64(p.Mem))/float64(self.MemTotal), selfMemBase)
		}
		promising := false
		for k, t := range ts {
			cpus[k] = t.cpu1
			if p.Demand != 1 {
				cpus[k] = c.cpuMarginal(v.Nodes[t.node], p.Demand)
			}
			memLows[k] = 0
			if t.total > 0 {
				memLows[k] = c.riseAtLeast(t.frac, (t.used+float64(p.Mem))/t.total, t.memBase)
			}
			if !(hereUp-cpus[k]-memLows[k] <= bestGain) {
				promising = true
			}
		}
		if !promising {
			continue
		}
		here := cpuHere
		if self.MemTotal > 0 {
			here += selfMemBase - c.pow((float64(self.MemUsed)-float64(p.Mem))/float64(self.MemTotal))
		}
		for k, t := range ts {
			cpu := cpus[k]
			if here-cpu <= bestGain || here-cpu-memLows[k] <= bestGain {
				continue // memory only adds (as above), at least memLows
			}
			if p.avoids(v.Nodes[t.node].Name) {
				continue
			}
			mem := 0.0
			if t.total > 0 {
				mem = c.pow((t.used+float64(p.Mem))/t.total) - t.memBase
			}
			if gain := here - cpu - mem; gain > bestGain && e.pays(p, here, gain) {
				best, bestGain = Move{Proc: p.ID, To: v.Nodes[t.node].Name}, gain
			}
		}
	}
	if best.Proc == "" {
		return nil
	}
	// As %.3g, without fmt's cost: the simulator makes millions of moves.
	best.Reason = "moving it lowers the cluster's cost by " + strconv.FormatFloat(bestGain, 'g', 3, 64)
	return []Move{best}
}
