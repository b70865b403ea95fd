package gossip

import (
	"fmt"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/peerpb"
)

// harness is a deterministic in-memory cluster: it delivers Messages between
// cores after a fixed latency, on a virtual clock advanced in steps, and can
// crash a node (it neither sends nor receives) or drop chosen messages.
type harness struct {
	t        testing.TB
	now      time.Time
	step     time.Duration // Tick resolution
	latency  time.Duration
	interval time.Duration
	mod      func(*Config)

	nodes    map[string]*testNode
	order    []string          // tick order
	byAddr   map[string]string // address -> node name
	inflight []flight
	seq      uint64

	// drop, when set, loses the messages it returns true for.
	drop func(from string, m Message) bool
	// sent, when set, sees every message as it leaves its sender (before drop).
	sent func(from string, m Message)
}

type testNode struct {
	name       string
	core       *Core
	down       bool
	reporting  bool
	nextReport time.Time
	events     []Event
}

type flight struct {
	at   time.Time
	seq  uint64
	from string
	msg  Message
}

var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// newHarness makes n nodes n1..nn; each starts, reports its load every
// interval and joins through n1. mod adjusts each node's config.
func newHarness(t testing.TB, n int, mod func(*Config)) *harness {
	t.Helper()
	h := &harness{
		t: t, now: epoch, latency: time.Millisecond, interval: time.Second, mod: mod,
		nodes: map[string]*testNode{}, byAddr: map[string]string{},
	}
	h.step = h.interval / 20
	// Nodes start one after another, spread over an interval, so that their
	// probes (and load reports) are not in lockstep: real nodes start at
	// arbitrary phases.
	gap := max(1, int(h.interval/h.step)/n)
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("n%d", i)
		h.start(name, 1)
		if i > 1 {
			h.join(name, "n1")
		}
		for range gap {
			h.tick()
		}
	}
	return h
}

func (h *harness) config(name string, inc uint64) Config {
	cfg := Config{
		Name: name, Addr: addrOf(name), Incarnation: inc, Interval: h.interval,
		Meta: &peerpb.NodeMeta{Cores: 4, Version: "test"},
		Seed: int64(len(name)*7919 + int(name[len(name)-1])),
	}
	if h.mod != nil {
		h.mod(&cfg)
	}
	return cfg
}

func addrOf(name string) string { return "10.0.0." + name[1:] + ":7946" }

// start creates (or restarts, replacing the old core) node name.
func (h *harness) start(name string, inc uint64) *testNode {
	h.t.Helper()
	c, err := New(h.config(name, inc), h.now)
	if err != nil {
		h.t.Fatalf("New(%s): %v", name, err)
	}
	n := h.nodes[name]
	if n == nil {
		n = &testNode{name: name}
		h.nodes[name] = n
		h.order = append(h.order, name)
	}
	// The first Tick (one step on) probes; the report comes just before it.
	n.core, n.down, n.reporting, n.nextReport, n.events = c, false, true, h.now.Add(h.step), nil
	h.byAddr[c.cfg.Addr] = name
	return n
}

func (h *harness) join(name, seed string) {
	h.emit(name, h.now, h.nodes[name].core.Join(h.now, []string{addrOf(seed)}))
}

// emit puts messages sent at time at in flight, keeping the queue ordered by
// arrival time, then by sending order.
func (h *harness) emit(from string, at time.Time, msgs []Message) {
	for _, m := range msgs {
		if h.sent != nil {
			h.sent(from, m)
		}
		if h.drop != nil && h.drop(from, m) {
			continue
		}
		h.seq++
		f := flight{at: at.Add(h.latency), seq: h.seq, from: from, msg: m}
		i := sort.Search(len(h.inflight), func(i int) bool { return h.inflight[i].at.After(f.at) })
		h.inflight = slices.Insert(h.inflight, i, f)
	}
}

// tick advances the clock by one step: deliveries due, then loads and ticks.
func (h *harness) tick() {
	h.now = h.now.Add(h.step)
	for len(h.inflight) > 0 && !h.inflight[0].at.After(h.now) {
		f := h.inflight[0]
		h.inflight = h.inflight[1:]
		to := h.nodes[h.byAddr[f.msg.Addr]]
		if to == nil || to.down || h.nodes[f.from].down {
			continue
		}
		h.emit(to.name, f.at, to.core.Step(f.at, f.msg.Env))
	}
	for _, name := range h.order {
		n := h.nodes[name]
		if n.down {
			continue
		}
		if n.reporting && !h.now.Before(n.nextReport) {
			n.core.SetLocalLoad(h.now, &peerpb.LoadReport{Load: float64(len(name)), FreeMem: 1 << 30, Procs: 1})
			n.nextReport = n.nextReport.Add(h.interval)
		}
		h.emit(name, h.now, n.core.Tick(h.now))
		n.events = append(n.events, n.core.Events()...)
	}
}

func (h *harness) run(d time.Duration) {
	for end := h.now.Add(d); h.now.Before(end); {
		h.tick()
	}
}

// runUntil ticks until cond holds or limit passes; it returns the time taken.
func (h *harness) runUntil(limit time.Duration, what string, cond func() bool) time.Duration {
	h.t.Helper()
	start := h.now
	for !cond() {
		if h.now.Sub(start) > limit {
			h.t.Fatalf("%s: not reached within %v", what, limit)
		}
		h.tick()
	}
	return h.now.Sub(start)
}

func (h *harness) crash(name string) { h.nodes[name].down = true }

// view returns what observer believes about name.
func (h *harness) view(observer, name string) (MemberView, bool) {
	for _, v := range h.nodes[observer].core.Members() {
		if v.Name == name {
			return v, true
		}
	}
	return MemberView{}, false
}

// allSee reports whether every live node other than name holds it in state st.
func (h *harness) allSee(name string, st peerpb.State) bool {
	for _, o := range h.order {
		if o == name || h.nodes[o].down {
			continue
		}
		if v, ok := h.view(o, name); !ok || v.State != st {
			return false
		}
	}
	return true
}

// converged reports whether every live node holds every live node ALIVE.
func (h *harness) converged() bool {
	for _, name := range h.order {
		if !h.nodes[name].down && !h.allSee(name, peerpb.State_ALIVE) {
			return false
		}
	}
	return true
}

// transitions lists the states observer's events gave name, in order.
func (h *harness) transitions(observer, name string) []peerpb.State {
	var out []peerpb.State
	for _, e := range h.nodes[observer].events {
		if e.Name == name {
			out = append(out, e.New)
		}
	}
	return out
}
