package gossip

import (
	"math"
	"slices"
	"strings"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/peerpb"
	"google.golang.org/protobuf/proto"
)

// This file holds the member table and SWIM's rules for merging news into it.
// Every piece of news, piggybacked or from a full push-pull table, goes through
// apply, so the precedence between states lives in one place (accepts).

// member is what this node believes about one cluster member.
type member struct {
	name  string
	addr  string
	state peerpb.State
	inc   uint64
	meta  *peerpb.NodeMeta
	from  string    // who declared it SUSPECT or DEAD
	since time.Time // when the state last changed
	rec   *peerpb.MemberUpdate
}

// record is the member as a MemberUpdate, built once per change: the same value
// is piggybacked and put in every full table until the member changes again, so
// it must never be modified once built.
func (m *member) record() *peerpb.MemberUpdate {
	if m.rec == nil {
		m.rec = &peerpb.MemberUpdate{Name: m.name, Addr: m.addr, Incarnation: m.inc, State: m.state, From: m.from}
		if m.state == peerpb.State_ALIVE {
			m.rec.Meta = m.meta
		}
	}
	return m.rec
}

// adopt makes u, which describes m exactly, m's record, instead of building an
// identical one: news is forwarded as the very value that brought it, and a
// table merged by many cores (the simulator's Preload) is stored once.
func (m *member) adopt(u *peerpb.MemberUpdate) {
	wantMeta := m.meta
	if m.state != peerpb.State_ALIVE {
		wantMeta = nil
	}
	if u.Name == m.name && u.Addr == m.addr && u.Incarnation == m.inc && u.State == m.state && u.From == m.from && u.Meta == wantMeta {
		m.rec = u
	}
}

// MemberView is a read-only snapshot of one member, for the daemon's API.
type MemberView struct {
	Name        string
	Addr        string
	State       peerpb.State
	Incarnation uint64
	Meta        *peerpb.NodeMeta // a copy; nil when the member never announced one
	Since       time.Time        // when State last changed (or the member was learnt)
}

// Event is one change of a member's state, for logs.
type Event struct {
	Name        string
	Old, New    peerpb.State
	Discovered  bool // the member was unknown until now; Old is meaningless
	Incarnation uint64
	From        string // who declared a SUSPECT or DEAD, when known
	At          time.Time
}

// maxEvents bounds the event log so that a caller that never drains it cannot
// grow it without bound; the oldest events are dropped first.
const maxEvents = 4096

// origin says how an update reached us, which decides whether we gossip it on.
type origin int

const (
	// viaGossip: piggybacked news. Whatever we accept is news to others too.
	viaGossip origin = iota
	// viaSync: one entry of a full table (push-pull, Preload). A member we learn
	// of this way is old news to the table's owner and, most likely, to the
	// members it gossips with, so it is not re-gossiped; changes to members we
	// already knew, and the owner's entry about itself, are. Re-gossiping whole
	// tables would make every join cost each node O(n) retransmissions.
	viaSync
)

// accepts is SWIM's precedence: does an update (st, inc) override what we know
// (known, knownInc) about a member? Higher incarnations win; at equal
// incarnation SUSPECT beats ALIVE, DEAD beats both, LEFT beats DEAD. Only the
// member itself issues a higher incarnation, by refuting or restarting, so an
// ALIVE needs a strictly higher one.
func accepts(known peerpb.State, knownInc uint64, st peerpb.State, inc uint64) bool {
	switch st {
	case peerpb.State_ALIVE:
		return inc > knownInc
	case peerpb.State_SUSPECT:
		return (known == peerpb.State_ALIVE && knownInc <= inc) || (known == peerpb.State_SUSPECT && knownInc < inc)
	case peerpb.State_DEAD:
		return known != peerpb.State_DEAD && known != peerpb.State_LEFT && knownInc <= inc
	case peerpb.State_LEFT:
		return known != peerpb.State_LEFT && knownInc <= inc
	}
	return false
}

func validState(s peerpb.State) bool {
	return s >= peerpb.State_ALIVE && s <= peerpb.State_LEFT
}

// gone reports whether a state means the member is out of the cluster.
func gone(s peerpb.State) bool {
	return s == peerpb.State_DEAD || s == peerpb.State_LEFT
}

// apply merges one update. sender is the node whose table it came from (for
// viaSync), so that its entry about itself is still gossiped on.
func (c *Core) apply(now time.Time, u *peerpb.MemberUpdate, o origin, sender string) {
	if u == nil || u.Name == "" || !validState(u.State) {
		return
	}
	if u.Name == c.cfg.Name {
		c.applySelf(u)
		return
	}
	m := c.members[u.Name]
	if m == nil {
		if u.Addr == "" { // a member we cannot reach is no use to us
			return
		}
		m = &member{name: u.Name, addr: u.Addr, state: u.State, inc: u.Incarnation, meta: u.Meta, from: u.From, since: now}
		m.adopt(u)
		c.members[m.name] = m
		c.order = append(c.order, m)
		if m.state != peerpb.State_LEFT {
			c.nonLeft++
		}
		if m.state == peerpb.State_SUSPECT {
			c.startSuspicion(now, m)
		}
		if !gone(m.state) {
			c.addProbeTarget(m.name)
		}
		c.event(Event{Name: m.name, New: m.state, Discovered: true, Incarnation: m.inc, From: m.from, At: now})
		if o == viaGossip || u.Name == sender {
			c.broadcasts.push(m.record())
		}
		return
	}
	if !accepts(m.state, m.inc, u.State, u.Incarnation) {
		return
	}
	old := m.state
	m.inc = u.Incarnation
	if u.Addr != "" {
		m.addr = u.Addr
	}
	if u.State == peerpb.State_ALIVE {
		m.meta = u.Meta
	}
	m.from = u.From
	m.rec = nil
	c.setState(now, m, u.State)
	m.adopt(u)
	if old == m.state && m.state == peerpb.State_SUSPECT {
		c.startSuspicion(now, m) // a suspicion at a higher incarnation starts afresh
	}
	c.broadcasts.push(m.record())
}

// setState moves a member to state st and keeps everything that depends on its
// state in step: the count, suspicion timers, load entries and the event log.
func (c *Core) setState(now time.Time, m *member, st peerpb.State) {
	old := m.state
	if old == st {
		return
	}
	m.state = st
	m.since = now
	m.rec = nil
	if old == peerpb.State_LEFT {
		c.nonLeft++
	}
	if st == peerpb.State_LEFT {
		c.nonLeft--
	}
	if st == peerpb.State_SUSPECT {
		c.startSuspicion(now, m)
	} else {
		delete(c.suspects, m.name)
	}
	if gone(st) && m != c.self {
		c.loads.remove(m.name)
	}
	c.event(Event{Name: m.name, Old: old, New: st, Incarnation: m.inc, From: m.from, At: now})
}

// applySelf handles news about ourselves: anything that says we are not alive,
// at our incarnation or above, is refuted with a higher incarnation, unless we
// are leaving; an ALIVE above our incarnation is an echo of a previous life, and
// we move above it so that our current ALIVE wins everywhere.
func (c *Core) applySelf(u *peerpb.MemberUpdate) {
	if c.leaving || u.Incarnation < c.self.inc || u.Incarnation == math.MaxUint64 {
		return // (an incarnation we could not go above is nonsense)
	}
	switch u.State {
	case peerpb.State_ALIVE:
		if u.Incarnation > c.self.inc {
			c.bumpIncarnation(u.Incarnation + 1)
		}
	case peerpb.State_SUSPECT, peerpb.State_DEAD, peerpb.State_LEFT:
		c.bumpIncarnation(max(u.Incarnation, c.self.inc) + 1)
	}
}

// bumpIncarnation announces ourselves ALIVE at incarnation inc.
func (c *Core) bumpIncarnation(inc uint64) {
	c.self.inc = inc
	c.self.from = ""
	c.self.rec = nil
	c.broadcasts.push(c.self.record())
}

// startSuspicion (re)arms the timer after which a SUSPECT member is declared DEAD.
func (c *Core) startSuspicion(now time.Time, m *member) {
	deadline := now.Add(c.cfg.suspicionTimeout(c.nonLeft))
	c.suspects[m.name] = deadline
	if c.suspectMin.IsZero() || deadline.Before(c.suspectMin) {
		c.suspectMin = deadline
	}
}

// expireSuspicions declares DEAD every suspect whose timer ran out. suspectMin
// is a lower bound on the deadlines, so most ticks cost one comparison.
func (c *Core) expireSuspicions(now time.Time) {
	if len(c.suspects) == 0 || now.Before(c.suspectMin) {
		return
	}
	var due []string
	var next time.Time
	for name, deadline := range c.suspects {
		if !now.Before(deadline) {
			due = append(due, name)
		} else if next.IsZero() || deadline.Before(next) {
			next = deadline
		}
	}
	c.suspectMin = next
	slices.Sort(due) // map order must not leak into the messages
	for _, name := range due {
		m := c.members[name]
		c.apply(now, &peerpb.MemberUpdate{Name: m.name, Addr: m.addr, Incarnation: m.inc, State: peerpb.State_DEAD, From: c.cfg.Name}, viaGossip, "")
	}
}

func (c *Core) event(e Event) {
	if len(c.events) >= maxEvents {
		c.events = slices.Delete(c.events, 0, len(c.events)-maxEvents+1)
	}
	c.events = append(c.events, e)
}

// Members returns every known member, this node included, sorted by name.
func (c *Core) Members() []MemberView {
	out := make([]MemberView, 0, len(c.order))
	for _, m := range c.order {
		v := MemberView{Name: m.name, Addr: m.addr, State: m.state, Incarnation: m.inc, Since: m.since}
		if m.meta != nil {
			v.Meta = proto.CloneOf(m.meta)
		}
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b MemberView) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Events drains the member state changes seen since the last call, oldest first.
func (c *Core) Events() []Event {
	out := c.events
	c.events = nil
	return out
}

// Incarnation is this node's current incarnation. The caller persists it (or a
// value above it) so that the next start can begin higher.
func (c *Core) Incarnation() uint64 { return c.self.inc }
