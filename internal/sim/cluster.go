package sim

import (
	"cmp"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/policy"
)

// The job study's cluster model: each machine shares its CPU equally among
// its jobs (a job progresses at speed / jobs fastest-machine seconds per
// second), and all of them run Thrash times slower while their memory
// exceeds the machine's. A machine keeps one counter of the work each of
// its jobs has received (all receive the same), so a job's completion is
// the counter reaching a mark, and a change to a machine costs a scan of
// its jobs, not of the cluster.

// study is the state of one run of one policy; its slices are reused from
// run to run.
type study struct {
	cfg    StudyConfig
	pol    policy.Policy
	trace  *AgeTrace
	offset int     // the run's first trace step
	quiet  float64 // how far back a report may look: history and sends older are dropped
	period float64 // between a node's balancing decisions, in seconds
	step   float64 // of the age trace, in seconds
	// q holds the jobs in transit. A machine's next completion and a
	// node's next decision are slots instead: only the latest of each
	// counts, and queued, the superseded ones made most of a deep heap.
	// slots[x] is machine x's completion, slots[len(ms)+o] node o's
	// decision.
	q     eventQueue[float64, landing]
	slots []slot
	ms    []machine
	ns    []nodeState
	tasks []task
	ids   []string
	names []string
	sum   float64 // of the slowdowns of finished jobs
	moves int
	// order is the jobs' indices by arrival: arrivals are taken in turn,
	// not queued.
	order []int32
	// views[o] is node o's view, its fixed fields set once a run; procs
	// is scratch for the processes offered.
	views [][]policy.Node
	procs []policy.Proc
}

type machine struct {
	speed, mem float64
	memBytes   uint64
	thrash     float64
	jobs       []int32
	memUsed    float64
	work, at   float64 // work each job has received, as of at
	hist       []snapshot
}

// snapshot is a machine's state from t on: what its load report says when
// measured then (computed once, not in every view that shows it).
type snapshot struct {
	t       float64
	load    float64 // jobs per unit of speed
	memUsed uint64  // bytes
}

type nodeState struct {
	placed   int
	peak     float64
	sleeping bool
	decided  uint64 // decisions so far: varies the policy's seed
	// idleSig is the signature of the last view on which balancing moved
	// nothing: the same view would move nothing again.
	idleSig uint64
	// sent are the jobs this node placed or moved elsewhere recently:
	// until the load reports show them, they count as pending there.
	sent []sending
}

type sending struct {
	t  float64
	to int32
}

type task struct {
	job
	memB  uint64  // mem in bytes
	left  float64 // work it still needs, as of when it last left a machine
	mark  float64 // its machine's work counter at which it is done
	since float64 // when it came to its machine
}

// slot is an event kept outside the queue, ordered with the queued ones by
// time and then by the queue's sequence numbers.
type slot struct {
	at  float64
	seq uint64
}

// noSlot is an empty slot: it sorts after any event.
func noSlot() slot { return slot{at: math.Inf(1), seq: math.MaxUint64} }

func (s *study) schedule(i int, at float64) {
	s.slots[i] = slot{at: at, seq: s.q.nextSeq()}
}

// before says whether a is due before b.
func (a *slot) before(b *slot) bool {
	return a.at < b.at || (a.at == b.at && a.seq < b.seq)
}

// landing is a migrating job reaching its node.
type landing struct {
	node, task int32
}

// run simulates jobs under p and returns the sum of their slowdowns and
// the number of migrations.
func (s *study) run(cfg StudyConfig, p policy.Policy, jobs []job, ids []string, tr *AgeTrace, seed uint64) (float64, int) {
	*s = study{
		cfg: cfg, pol: p, trace: tr, ids: ids, names: s.names,
		q:     eventQueue[float64, landing]{items: s.q.items[:0]},
		slots: s.slots[:0], ms: s.ms[:0], ns: s.ns[:0], tasks: s.tasks[:0], order: s.order[:0], views: s.views, procs: s.procs[:0],
	}
	rng := rand.New(rand.NewPCG(seed, 0x7374756479))
	s.period = cfg.Period.Seconds()
	s.quiet = 5 + s.period
	if tr != nil {
		s.step = tr.Step.Seconds()
		s.offset = rng.IntN(tr.Steps())
		s.quiet += tr.MaxAge().Seconds()
	}
	for i, m := range cfg.Machines {
		s.ms = append(s.ms, machine{speed: m.Speed, mem: m.MemMB, memBytes: bytesOf(m.MemMB), thrash: cfg.Thrash, hist: []snapshot{{t: math.Inf(-1)}}})
		s.ns = append(s.ns, nodeState{placed: i, sleeping: true})
		if len(s.names) <= i {
			s.names = append(s.names, "m"+strconv.Itoa(i))
		}
	}
	for range 2 * len(s.ms) {
		s.slots = append(s.slots, noSlot())
	}
	for len(s.views) < len(s.ms) {
		s.views = append(s.views, nil)
	}
	for o := range s.ms {
		s.views[o] = s.views[o][:0]
		for x, m := range s.ms {
			s.views[o] = append(s.views[o], policy.Node{Name: s.names[x], Capacity: 1, Speed: m.speed, MemTotal: m.memBytes, Self: x == o})
		}
	}
	for i, j := range jobs {
		s.tasks = append(s.tasks, task{job: j, memB: bytesOf(j.mem), left: j.cpu})
		s.order = append(s.order, int32(i))
	}
	byArrival := func(a, b int32) int { return cmp.Compare(jobs[a].arrive, jobs[b].arrive) }
	if !slices.IsSortedFunc(s.order, byArrival) {
		slices.SortStableFunc(s.order, byArrival)
	}
	for next := 0; ; {
		i := s.firstSlot()
		first := &s.slots[i]
		if first.seq == math.MaxUint64 {
			first = nil
		}
		at, seq, queued := s.q.peek()
		// An arrival goes before the other events of its instant, as
		// when all were queued first.
		if next < len(s.order) {
			i := s.order[next]
			if a := jobs[i].arrive; (first == nil || a <= first.at) && (!queued || a <= at) {
				next++
				s.arrive(a, int(i))
				continue
			}
		}
		if queued && (first == nil || at < first.at || (at == first.at && seq < first.seq)) {
			t, l, _ := s.q.pop()
			s.add(t, int(l.node), int(l.task))
			s.changed(t)
			continue
		}
		if first == nil {
			break
		}
		t := first.at
		*first = noSlot()
		if i < len(s.ms) {
			s.finish(t, i)
		} else {
			s.balance(t, i-len(s.ms))
		}
	}
	return s.sum, s.moves
}

// firstSlot is the index of the earliest slot (empty if all are).
func (s *study) firstSlot() int {
	first := 0
	for i := 1; i < len(s.slots); i++ {
		if s.slots[i].before(&s.slots[first]) {
			first = i
		}
	}
	return first
}

// arrive places a new job from its home node.
func (s *study) arrive(t float64, i int) {
	home := int(s.tasks[i].home)
	v := s.viewOf(t, home, false)
	v.Placed = s.ns[home].placed
	s.ns[home].placed++
	to := home
	if ranked := s.pol.Place(v, policy.Request{Mem: bytesOf(s.tasks[i].mem)}); len(ranked) > 0 {
		to = s.index(ranked[0])
	}
	if to != home {
		s.sent(t, home, to)
	}
	s.add(t, to, i)
	s.changed(t)
}

// balance asks node o's policy what to move, moves it, and schedules the
// next decision (or lets the node sleep until something changes).
func (s *study) balance(t float64, o int) {
	v := s.viewOf(t, o, true)
	ns := &s.ns[o]
	var moves []policy.Move
	if sig := signature(v); sig != ns.idleSig {
		if moves = s.pol.Balance(v); len(moves) == 0 {
			ns.idleSig = sig
		}
	}
	for _, mv := range moves {
		i, err := strconv.Atoi(mv.Proc)
		if err != nil || i < 0 || i >= len(s.tasks) {
			continue
		}
		to := s.index(mv.To)
		if to == o || to < 0 || !slices.Contains(s.ms[o].jobs, int32(i)) {
			continue
		}
		s.remove(t, o, i)
		s.sent(t, o, to)
		s.moves++
		if s.cfg.MoveCost > 0 {
			s.q.push(t+s.cfg.MoveCost, landing{node: int32(to), task: int32(i)})
		} else {
			s.add(t, to, i)
		}
	}
	if len(moves) > 0 {
		ns.idleSig = 0
		s.changed(t)
	}
	if len(s.ms[o].jobs) == 0 {
		ns.sleeping = true
		return
	}
	if len(moves) == 0 && s.current(t, o) {
		// Its view shows every machine as it is, and nothing moved: it
		// would decide the same until something changes, or one of its
		// processes has stayed long enough to be movable.
		if wake := s.residentAt(t, o); wake > t {
			s.schedule(len(s.ms)+o, math.Max(wake, t+s.period))
			return
		}
		ns.sleeping = true
		return
	}
	s.schedule(len(s.ms)+o, t+s.period)
}

// minResident is how long a process stays before the policies of the
// study may move it (policy.DefaultMosix and DefaultEMosix; a test checks
// they agree).
const minResident = 2.0

// current says whether node o's view at t shows every machine in its
// latest state (each report measured after the machine last changed).
func (s *study) current(t float64, o int) bool {
	if s.trace == nil {
		return true
	}
	ages := s.trace.row(o, int(t/s.step)+s.offset)
	for x := range s.ms {
		if x == o {
			continue
		}
		if ages[x] < 0 || t-float64(ages[x])/1000 < s.ms[x].hist[len(s.ms[x].hist)-1].t {
			return false
		}
	}
	return true
}

// residentAt is the next time after t one of node o's processes becomes
// movable, or 0.
func (s *study) residentAt(t float64, o int) float64 {
	next := 0.0
	for _, j := range s.ms[o].jobs[:min(len(s.ms[o].jobs), maxOffered)] {
		if at := s.tasks[j].since + minResident; at > t && (next == 0 || at < next) {
			next = at
		}
	}
	return next
}

// changed wakes the nodes that sleep with jobs to move: what they know is
// about to change.
func (s *study) changed(t float64) {
	if !s.pol.Migrates() {
		return
	}
	for o := range s.ns {
		if ns := &s.ns[o]; ns.sleeping && len(s.ms[o].jobs) > 0 {
			ns.sleeping = false
			s.schedule(len(s.ms)+o, t+s.period)
		}
	}
}

func (s *study) sent(t float64, from, to int) {
	ns := &s.ns[from]
	keep := t - s.quiet
	k := 0
	for k < len(ns.sent) && ns.sent[k].t < keep {
		k++
	}
	ns.sent = append(ns.sent[:0], ns.sent[k:]...)
	ns.sent = append(ns.sent, sending{t: t, to: int32(to)})
}

func (s *study) index(name string) int {
	return slices.Index(s.names[:len(s.ms)], name)
}

// advance brings machine m's work counter to t.
func (m *machine) advance(t float64) {
	if len(m.jobs) > 0 {
		m.work += m.rate() * (t - m.at)
	}
	m.at = t
}

// rate is the work per second each job of m receives.
func (m *machine) rate() float64 {
	r := m.speed / float64(len(m.jobs))
	if m.memUsed > m.mem {
		r /= m.thrash
	}
	return r
}

func (s *study) add(t float64, o, i int) {
	m, k := &s.ms[o], &s.tasks[i]
	m.advance(t)
	k.mark = m.work + k.left
	k.since = t
	m.jobs = append(m.jobs, int32(i))
	m.memUsed += k.mem
	s.settle(t, o)
}

// remove takes job i off machine o, keeping the work it still needs.
func (s *study) remove(t float64, o, i int) {
	m, k := &s.ms[o], &s.tasks[i]
	m.advance(t)
	k.left = max(k.mark-m.work, 0)
	m.jobs = slices.DeleteFunc(m.jobs, func(j int32) bool { return j == int32(i) })
	m.memUsed -= k.mem
	if len(m.jobs) == 0 {
		m.memUsed = 0 // no rounding left behind
	}
	s.settle(t, o)
}

// finish ends the jobs of machine o that are done at t: the one scheduled,
// and those within rounding of it.
func (s *study) finish(t float64, o int) {
	m := &s.ms[o]
	m.advance(t)
	first := s.next(m)
	if first < 0 {
		return
	}
	until := max(s.tasks[first].mark, m.work)
	eps := 1e-9 * max(1, math.Abs(until))
	kept := m.jobs[:0]
	for _, j := range m.jobs {
		k := &s.tasks[j]
		if j == int32(first) || k.mark <= until+eps {
			s.sum += (t - k.arrive) / k.cpu
			m.memUsed -= k.mem
			continue
		}
		kept = append(kept, j)
	}
	m.jobs = kept
	if len(m.jobs) == 0 {
		m.memUsed = 0
	}
	s.settle(t, o)
	s.changed(t)
}

// next is the job of m that finishes first, or -1.
func (s *study) next(m *machine) int {
	first, mark := -1, math.Inf(1)
	for _, j := range m.jobs {
		if k := s.tasks[j].mark; k < mark {
			first, mark = int(j), k
		}
	}
	return first
}

// settle records machine o's new state and schedules its next completion.
func (s *study) settle(t float64, o int) {
	m := &s.ms[o]
	s.slots[o] = noSlot()
	m.hist = append(m.hist, snapshot{t: t, load: float64(len(m.jobs)) / m.speed, memUsed: bytesOf(m.memUsed)})
	// Keep what a report of the last quiet seconds may show.
	if len(m.hist) >= 64 {
		keep := t - s.quiet
		k := 0
		for k+1 < len(m.hist) && m.hist[k+1].t <= keep {
			k++
		}
		m.hist = append(m.hist[:0], m.hist[k:]...)
	}
	if len(m.jobs) == 0 {
		return
	}
	first := s.tasks[s.next(m)].mark
	s.schedule(o, t+math.Max(first-m.work, 0)/m.rate())
}

// stateAt is machine x's state as measured at time at. Reports are
// seconds old and the history is short: the scan from the end stops
// after a step or two.
func (m *machine) stateAt(at float64) *snapshot {
	for i := len(m.hist) - 1; i > 0; i-- {
		if m.hist[i].t <= at {
			return &m.hist[i]
		}
	}
	return &m.hist[0]
}

// viewOf is node o's view at t: itself as it is, the others as its load
// reports say (or as they are, when omniscient).
func (s *study) viewOf(t float64, o int, withProcs bool) policy.View {
	ns := &s.ns[o]
	var ages []int32 // o's report ages, in ms
	if s.trace != nil {
		ages = s.trace.row(o, int(t/s.step)+s.offset)
	}
	view := s.views[o]
	for x := range s.ms {
		m, nd := &s.ms[x], &view[x]
		nd.HasLoad, nd.Age, nd.Pending = true, 0, 0
		// Every change to a machine is settled: its last snapshot is
		// its state now.
		st := &m.hist[len(m.hist)-1]
		if x != o {
			measured := t
			if ages != nil {
				if ages[x] < 0 {
					nd.HasLoad, nd.Load, nd.MemUsed, nd.FreeMem = false, 0, 0, 0
					continue
				}
				age := float64(ages[x]) / 1000
				nd.Age = seconds(age)
				measured = t - age
				st = m.stateAt(measured)
			}
			for i := len(ns.sent) - 1; i >= 0 && ns.sent[i].t > measured; i-- {
				if int(ns.sent[i].to) == x {
					nd.Pending++
				}
			}
		}
		nd.Load = st.load
		nd.MemUsed = st.memUsed
		nd.FreeMem = nd.MemTotal - min(nd.MemTotal, nd.MemUsed)
		ns.peak = max(ns.peak, nd.Load)
	}
	v := policy.View{Nodes: view, PeakLoad: ns.peak}
	if s.cfg.LOfView {
		v.PeakLoad = 0 // the view's own loads set L
	}
	ns.decided++
	v.Seed = ns.decided*1_000_003 + uint64(o)
	if withProcs {
		s.procs = s.procs[:0]
		// The balancer is offered the processes that have been here
		// longest (a machine's jobs are kept in their order of arrival),
		// at most maxOffered: in a thrashing machine's backlog of
		// hundreds, the rest would only cost time.
		for _, j := range s.ms[o].jobs[:min(len(s.ms[o].jobs), maxOffered)] {
			k := &s.tasks[j]
			s.procs = append(s.procs, policy.Proc{ID: s.ids[j], Demand: 1, Mem: k.memB, Age: seconds(t - k.arrive), Resident: seconds(t - k.since)})
		}
		v.Procs = s.procs
	}
	return v
}

// maxOffered is how many of its processes a node's balancer considers at a
// time.
const maxOffered = 16

// signature hashes what a balancing decision depends on in the study's
// views (FNV-1a over the nodes' loads, memory and pending counts, and the
// processes' memory and whether they may move yet). It leaves out the
// seed: a node whose view has not changed since it last found nothing to
// move does not ask again (E-Mosix's random set then waits for the next
// change to be drawn anew).
func signature(v policy.View) uint64 {
	h := uint64(14695981039346656037)
	mix := func(x uint64) {
		h ^= x
		h *= 1099511628211
	}
	for _, n := range v.Nodes {
		mix(math.Float64bits(n.Load))
		mix(n.MemUsed)
		mix(uint64(n.Pending))
	}
	for _, p := range v.Procs {
		mix(p.Mem)
		if p.Resident >= minResident*time.Second {
			mix(1)
		}
	}
	return h | 1 // never 0, which means "none"
}

// bytesOf converts megabytes to bytes, bounded where uint64 ends (the
// heavy tail of memory needs reaches beyond it).
// (A comparison, not math.Min, which is not inlined: the same result for
// any number, NaN and infinities included.)
func bytesOf(mb float64) uint64 {
	b := mb * (1 << 20)
	if b > 1<<62 {
		b = 1 << 62
	}
	return uint64(b)
}

// seconds converts to a Duration, bounded at a century.
func seconds(x float64) time.Duration {
	if x > 100*365*24*3600 {
		x = 100 * 365 * 24 * 3600
	}
	return time.Duration(x * float64(time.Second))
}
