package sim

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/gossip"
	"github.com/mosaic-cluster/mosaic/internal/peerpb"
	"google.golang.org/protobuf/proto"
)

// This file simulates MOSIX load dissemination with the real gossip cores:
// how old is what each node knows about the others' load, how much traffic
// does knowing it cost, and how fast does news travel, as the cluster grows.

// DisseminationConfig describes one dissemination run. Zero values take the
// defaults noted.
type DisseminationConfig struct {
	Nodes     int           // cluster size, at least 2
	Window    int           // load entries per PING, own included (default 16)
	Interval  time.Duration // probe and report period (default 1s)
	Intervals int           // intervals measured (default 200)
	Warmup    int           // intervals run before measuring; 0 = max(30, 6*(Nodes-1)/Window)
	Latency   time.Duration // one-way message latency (default 200µs)
	Loss      float64       // probability that a message is lost, in [0, 1)
	Observers int           // nodes whose views are sampled (default min(Nodes, 64))
	Seed      int64
}

// DisseminationResult is what a run measured, next to what the analysis of
// the MOSIX scheme predicts.
type DisseminationResult struct {
	Nodes, Window         int
	Interval              time.Duration
	Warmup, Intervals     int
	Observers             int
	MeanAge, P99Age       time.Duration // of the report an observer holds about another node, sampled once an interval at a random instant
	MaxAge                time.Duration
	Missing               float64       // fraction of (observer, node, sample) with no report at all; not in the ages
	MeanWindowAge         time.Duration // mean age of the entries in the windows actually sent, own entries included
	BytesPerNodePerSec    float64       // proto.Size of every envelope sent, all kinds, lost ones included
	BytesByKind           map[peerpb.Kind]float64
	MessagesPerNodePerSec float64
	// SpreadIntervals is the mean, over trials started at random nodes during
	// the first half of the measured period, of the intervals until a fresh
	// report has reached every other node (each holds it or a newer one).
	SpreadIntervals  float64
	SpreadTrials     int // trials that completed
	SpreadUnfinished int // trials still spreading when the run ended (their time is not in the mean)

	// The analysis: a node hears a given other node's report with probability
	// about w/(n-1) per interval, so it holds news (n-1)/w intervals older than
	// the window's; all n-1 are seen after about (n-1)(ln n + γ)/w intervals
	// (coupon collector); push gossip reaches all in about log2 n + ln n rounds.
	// The spread figure assumes every PING forwards the news, true when the
	// window covers the cluster; with w < n a report stops travelling once
	// fresher ones crowd it out of the windows, and the measured spread drifts
	// from log n towards the age of the oldest news.
	ExpectedMeanAge time.Duration // (n-1)/w * Interval + MeanWindowAge
	ExpectedMaxAge  time.Duration // (n-1)(ln n + 0.5772)/w * Interval
	ExpectedSpread  float64       // (1 + ln 2) log2 n intervals
}

// ticksPerInterval is the resolution at which cores are ticked: PingTimeout
// (Interval/2) and the probe period fall exactly on ticks, and a tick between
// deadlines costs a core a few comparisons.
const ticksPerInterval = 10

func (c DisseminationConfig) withDefaults() (DisseminationConfig, error) {
	if c.Nodes < 2 {
		return c, fmt.Errorf("dissemination: %d nodes; simulate at least 2", c.Nodes)
	}
	if c.Loss < 0 || c.Loss >= 1 || math.IsNaN(c.Loss) {
		return c, fmt.Errorf("dissemination: loss %v is not a probability below 1", c.Loss)
	}
	if c.Window < 0 || c.Interval < 0 || c.Intervals < 0 || c.Warmup < 0 || c.Latency < 0 || c.Observers < 0 {
		return c, errors.New("dissemination: negative window, interval, count or latency; use 0 for the default")
	}
	if c.Window == 0 {
		c.Window = 16
	}
	if c.Interval == 0 {
		c.Interval = time.Second
	}
	if c.Intervals == 0 {
		c.Intervals = 200
	}
	if c.Warmup == 0 {
		c.Warmup = max(30, 6*(c.Nodes-1)/c.Window)
	}
	if c.Latency == 0 {
		c.Latency = 200 * time.Microsecond
	}
	if c.Interval < time.Millisecond {
		return c, fmt.Errorf("dissemination: interval %v is below a millisecond, the resolution of report ages", c.Interval)
	}
	switch {
	case c.Observers == 0:
		c.Observers = min(c.Nodes, 64)
	case c.Observers > c.Nodes:
		c.Observers = c.Nodes
	}
	return c, nil
}

// simEvent is one thing that happens at a virtual instant.
type simEvent struct {
	kind eventKind
	node int32
	env  *peerpb.Envelope // evDeliver
}

type eventKind uint8

const (
	evTick    eventKind = iota // a node's tick; every ticksPerInterval-th also sets its load
	evDeliver                  // a message arrives at node
	evSample                   // observers' views are sampled
	evSpread                   // a spread trial picks its source
)

// dissemination is the state of one run.
type dissemination struct {
	cfg    DisseminationConfig
	rng    *rand.Rand
	base   time.Time
	step   time.Duration
	start  time.Duration // measurement begins
	end    time.Duration // and ends
	q      eventQueue[time.Duration, simEvent]
	nodes  []simNode
	byAddr map[string]int32

	ages       durationStats
	missing    uint64
	windowSum  float64 // milliseconds
	windowN    uint64
	bytes      map[peerpb.Kind]float64
	messages   uint64
	trials     []*spreadTrial // pending and running
	spreadSum  float64
	spreadDone int

	// record, when set, replaces the sampling of ages: it is called at
	// each evSample with the sample's index.
	record func(now time.Time, k int)
}

type simNode struct {
	name  string
	core  *gossip.Core
	ticks int
	// loadTick is the tick of each interval at which the node measures its
	// load. As in the daemon, where the load meter and the probe schedule
	// run on independent clocks, it is random relative to the probes: a
	// node's own report is on average half an interval old when it is sent.
	loadTick int
}

// spreadTrial follows one fresh report from source until every other node
// holds it or a newer one. It is pending until the source sets its next report.
type spreadTrial struct {
	source  int32
	running bool
	since   time.Duration // when source measured the report
	reached []bool
	left    int
}

// spreadTrials is about how many trials a run starts; they start at even
// spacing in the first half of the measured period, so that each has at least
// half of it to finish.
const spreadTrials = 20

// newDissemination is a run of cfg with its nodes started, its measured
// period set and nothing scheduled beyond the nodes' first ticks.
func newDissemination(cfg DisseminationConfig) (*dissemination, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	d := &dissemination{
		cfg:    cfg,
		rng:    rand.New(rand.NewPCG(uint64(cfg.Seed), 0x64697373)),
		base:   time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		step:   cfg.Interval / ticksPerInterval,
		byAddr: make(map[string]int32, cfg.Nodes),
		ages:   newDurationStats(cfg.Interval / 1000),
		bytes:  make(map[peerpb.Kind]float64),
	}
	d.start = time.Duration(1+cfg.Warmup) * cfg.Interval
	d.end = d.start + time.Duration(cfg.Intervals)*cfg.Interval
	if err := d.startNodes(); err != nil {
		return nil, err
	}
	return d, nil
}

// RunDissemination simulates cfg.Nodes nodes running the gossip core, each
// setting its own load report every interval just before its tick, at phases
// spread at random over the first interval. Membership is pre-seeded (every
// core starts knowing every node ALIVE, via gossip.Core.Preload), so the run
// measures steady-state dissemination rather than a thousand simultaneous
// joins. Reports never expire. The result is a pure function of cfg.
func RunDissemination(cfg DisseminationConfig) (DisseminationResult, error) {
	d, err := newDissemination(cfg)
	if err != nil {
		return DisseminationResult{}, err
	}
	d.scheduleSamples()
	d.run()
	return d.result(), nil
}

func (d *dissemination) startNodes() error {
	n := d.cfg.Nodes
	table := make([]*peerpb.MemberUpdate, n)
	d.nodes = make([]simNode, n)
	for i := range n {
		name := fmt.Sprintf("n%d", i)
		addr := fmt.Sprintf("10.%d.%d.%d:4460", i>>16&255, i>>8&255, i&255)
		meta := &peerpb.NodeMeta{Cores: 8, Speed: 1, MemTotal: 32 << 30, Version: "sim"}
		table[i] = &peerpb.MemberUpdate{Name: name, Addr: addr, Incarnation: 1, State: peerpb.State_ALIVE, Meta: meta}
		d.nodes[i].name = name
		d.byAddr[addr] = int32(i)
	}
	for i := range d.nodes {
		u := table[i]
		core, err := gossip.New(gossip.Config{
			Name: u.Name, Addr: u.Addr, Meta: u.Meta, Incarnation: 1,
			Interval: d.cfg.Interval, WindowSize: d.cfg.Window,
			Seed: d.cfg.Seed*1_000_003 + int64(i),
		}, d.base)
		if err != nil {
			return fmt.Errorf("dissemination: start node %s: %w", u.Name, err)
		}
		core.Preload(d.base, table)
		core.Events() // membership changes are not measured here; drop them
		d.nodes[i].core = core
		d.nodes[i].loadTick = d.rng.IntN(ticksPerInterval)
		// A node's phase is its first tick; its reports, probes and
		// timeouts then fall on its own grid of ticks.
		phase := time.Duration(d.rng.Int64N(int64(d.cfg.Interval)))
		d.q.push(phase, simEvent{kind: evTick, node: int32(i)})
	}
	return nil
}

// scheduleSamples puts one sample at a random instant of each measured
// interval: a fixed instant would see every node at the same phase of its
// sawtooth.
func (d *dissemination) scheduleSamples() {
	for k := range d.cfg.Intervals {
		at := d.start + time.Duration(k)*d.cfg.Interval + time.Duration(d.rng.Int64N(int64(d.cfg.Interval)))
		d.q.push(at, simEvent{kind: evSample})
	}
	every := max(1, d.cfg.Intervals/2/spreadTrials)
	for k := 0; k < max(1, d.cfg.Intervals/2); k += every {
		d.q.push(d.start+time.Duration(k)*d.cfg.Interval, simEvent{kind: evSpread})
	}
}

func (d *dissemination) run() {
	for {
		at, ev, ok := d.q.pop()
		if !ok || at >= d.end {
			return
		}
		now := d.base.Add(at)
		switch ev.kind {
		case evTick:
			n := &d.nodes[ev.node]
			if n.ticks%ticksPerInterval == n.loadTick {
				n.core.SetLocalLoad(now, &peerpb.LoadReport{
					Load:    d.rng.Float64() * 4,
					FreeMem: uint64(d.rng.Int64N(32 << 30)),
					Procs:   uint32(d.rng.IntN(16)),
				})
				d.startSpread(ev.node, at)
			}
			n.ticks++
			d.send(at, n.core.Tick(now))
			n.core.Events()
			d.q.push(at+d.step, ev)
		case evDeliver:
			d.send(at, d.nodes[ev.node].core.Step(now, ev.env))
			if ev.env.Kind == peerpb.Kind_PING && len(ev.env.Loads) > 0 {
				d.checkSpread(ev.node, at)
			}
		case evSample:
			if d.record != nil {
				d.record(now, int(ev.node))
			} else {
				d.sample(now)
			}
		case evSpread:
			d.trials = append(d.trials, &spreadTrial{source: int32(d.rng.IntN(d.cfg.Nodes)), reached: make([]bool, d.cfg.Nodes)})
		}
	}
}

// send accounts for messages sent at virtual time at and schedules their
// delivery, unless lost.
func (d *dissemination) send(at time.Duration, msgs []gossip.Message) {
	measuring := at >= d.start && at < d.end
	for _, m := range msgs {
		if measuring {
			d.bytes[m.Env.Kind] += float64(proto.Size(m.Env))
			d.messages++
			if m.Env.Kind == peerpb.Kind_PING {
				for _, r := range m.Env.Loads {
					d.windowSum += float64(r.AgeMs)
					d.windowN++
				}
			}
		}
		if d.cfg.Loss > 0 && d.rng.Float64() < d.cfg.Loss {
			continue
		}
		to, ok := d.byAddr[m.Addr]
		if !ok {
			continue
		}
		d.q.push(at+d.cfg.Latency, simEvent{kind: evDeliver, node: to, env: m.Env})
	}
}

// sample records the age of every report each observer holds about every
// other node. Observers are the first Observers nodes: their phases and probe
// orders are random, so any subset is as good as another.
func (d *dissemination) sample(now time.Time) {
	for o := range d.cfg.Observers {
		core := d.nodes[o].core
		for x := range d.nodes {
			if x == o {
				continue
			}
			age, ok := core.LoadAge(now, d.nodes[x].name)
			if !ok {
				d.missing++
				continue
			}
			d.ages.add(age)
		}
	}
}

// startSpread starts the pending trials whose source just set a fresh report.
func (d *dissemination) startSpread(node int32, at time.Duration) {
	for _, t := range d.trials {
		if !t.running && t.source == node {
			t.running, t.since, t.left = true, at, d.cfg.Nodes-1
			t.reached[node] = true
		}
	}
}

// checkSpread notes, for each running trial, whether node, which just merged a
// load window, now holds the trial's report (or a newer one).
func (d *dissemination) checkSpread(node int32, at time.Duration) {
	finished := false
	for _, t := range d.trials {
		if !t.running || t.reached[node] {
			continue
		}
		age, ok := d.nodes[node].core.LoadAge(d.base.Add(at), d.nodes[t.source].name)
		if !ok || age > at-t.since { // measured before the trial's report
			continue
		}
		t.reached[node] = true
		t.left--
		if t.left == 0 {
			d.spreadSum += float64(at-t.since) / float64(d.cfg.Interval)
			d.spreadDone++
			finished = true
		}
	}
	if finished {
		d.trials = slices.DeleteFunc(d.trials, func(t *spreadTrial) bool { return t.running && t.left == 0 })
	}
}

func (d *dissemination) result() DisseminationResult {
	cfg := d.cfg
	n, w := float64(cfg.Nodes), float64(cfg.Window)
	secs := float64(cfg.Intervals) * cfg.Interval.Seconds()
	r := DisseminationResult{
		Nodes: cfg.Nodes, Window: cfg.Window, Interval: cfg.Interval,
		Warmup: cfg.Warmup, Intervals: cfg.Intervals, Observers: cfg.Observers,
		MeanAge: d.ages.mean(), P99Age: d.ages.quantile(0.99), MaxAge: d.ages.max,
		BytesByKind:           make(map[peerpb.Kind]float64, len(d.bytes)),
		MessagesPerNodePerSec: float64(d.messages) / n / secs,
		SpreadTrials:          d.spreadDone,
		SpreadUnfinished:      len(d.trials),
		ExpectedMaxAge:        time.Duration((n - 1) * (math.Log(n) + 0.5772) / w * float64(cfg.Interval)),
		ExpectedSpread:        (1 + math.Ln2) * math.Log2(n),
	}
	if total := float64(d.ages.count + d.missing); total > 0 {
		r.Missing = float64(d.missing) / total
	}
	if d.windowN > 0 {
		r.MeanWindowAge = time.Duration(d.windowSum / float64(d.windowN) * float64(time.Millisecond))
	}
	// In kind order, not map order: a float sum depends on its order, and the
	// result must be a pure function of the configuration.
	for k := peerpb.Kind_PING; k <= peerpb.Kind_PUSH_PULL_REPLY; k++ {
		if b, ok := d.bytes[k]; ok {
			r.BytesByKind[k] = b / n / secs
			r.BytesPerNodePerSec += b / n / secs
		}
	}
	if d.spreadDone > 0 {
		r.SpreadIntervals = d.spreadSum / float64(d.spreadDone)
	}
	r.ExpectedMeanAge = time.Duration((n-1)/w*float64(cfg.Interval)) + r.MeanWindowAge
	return r
}

// AgeTrace is what the gossip cores of a cluster knew of each other over a
// stretch of time: for each observer, node and step, how old the report
// the observer held was. The study replays it against the loads its own
// simulation produces, so that every simulated node decides on what the
// real dissemination would have told it, with its real delays.
type AgeTrace struct {
	Nodes int
	Step  time.Duration
	// ages[(k*Nodes+o)*Nodes+x] is the age in milliseconds, at step k,
	// of o's report about x; -1 when o held none. Own entries (o == x)
	// are 0. An observer's view at a step is one run of memory, and the
	// whole trace small enough to stay in cache.
	ages   []int32
	steps  int
	maxAge time.Duration
}

// Age is how old observer o's report about node x was at step k (taken
// modulo the trace's length), in seconds; ok is false when o held none.
func (a *AgeTrace) Age(o, x, k int) (float64, bool) {
	ms := a.ages[((k%a.steps)*a.Nodes+o)*a.Nodes+x]
	return float64(ms) / 1000, ms >= 0
}

// row is observer o's ages (ms, -1 for none) of every node at step k
// (modulo the length): one division for a whole view.
func (a *AgeTrace) row(o, k int) []int32 {
	i := ((k%a.steps)*a.Nodes + o) * a.Nodes
	return a.ages[i : i+a.Nodes]
}

// Steps is the trace's length.
func (a *AgeTrace) Steps() int { return a.steps }

// MaxAge is the oldest report any observer used.
func (a *AgeTrace) MaxAge() time.Duration { return a.maxAge }

// RecordAges runs the gossip cores of cfg (as RunDissemination does) and
// records, every tenth of an interval of the measured period, the age of
// every report every node holds.
func RecordAges(cfg DisseminationConfig) (*AgeTrace, error) {
	d, err := newDissemination(cfg)
	if err != nil {
		return nil, err
	}
	n := d.cfg.Nodes
	tr := &AgeTrace{Nodes: n, Step: d.step, steps: d.cfg.Intervals * ticksPerInterval}
	tr.ages = make([]int32, n*n*tr.steps)
	for k := range tr.steps {
		d.q.push(d.start+time.Duration(k)*d.step, simEvent{kind: evSample, node: int32(k)})
	}
	d.record = func(now time.Time, k int) {
		for o := range n {
			for x := range n {
				age := time.Duration(0)
				if o != x {
					var ok bool
					if age, ok = d.nodes[o].core.LoadAge(now, d.nodes[x].name); !ok {
						age = -1
					}
				}
				tr.ages[(k*n+o)*n+x] = int32(age.Milliseconds())
				if age < 0 {
					tr.ages[(k*n+o)*n+x] = -1
				}
				tr.maxAge = max(tr.maxAge, age)
			}
		}
	}
	d.run()
	return tr, nil
}
