package gossip

import (
	"time"

	"github.com/mosaic-cluster/mosaic/internal/peerpb"
)

// This file is SWIM's failure detector. Each interval the node PINGs one member,
// chosen round-robin from a list shuffled at every pass: random enough that
// failures are found by someone quickly, yet every member is probed by every
// other within two passes, which bounds detection time. A PING unanswered after
// PingTimeout is retried through IndirectChecks other members (PING_REQ), which
// tells a dead member from a lossy path between two live ones; if still
// unanswered when the next probe is due, the target becomes SUSPECT.

// prober is the failure detector's state, embedded in Core.
type prober struct {
	probeList []string // this pass's order
	probeNext int      // index of the next target in probeList
	probe     *probe   // the probe in flight, if any
	nextProbe time.Time
	seq       uint64
	relays    map[uint64]relay // our seq of a PING sent for a PING_REQ
}

// probe is one probe in flight.
type probe struct {
	target   string
	seq      uint64
	sent     time.Time
	acked    bool
	indirect bool // PING_REQs sent
}

// relay remembers a PING we sent on someone's behalf, to route its ACK back.
type relay struct {
	requester string
	seq       uint64 // the requester's seq, echoed in the ACK we send it
	expires   time.Time
}

// maxRelays caps pending relays, so a flood of PING_REQs cannot grow memory.
const maxRelays = 1024

func newProber() prober {
	return prober{relays: make(map[uint64]relay)}
}

func probeable(m *member) bool {
	return m.state == peerpb.State_ALIVE || m.state == peerpb.State_SUSPECT
}

// probeTick runs the probe schedule: indirect probes after PingTimeout,
// suspicion and the next probe at each interval.
func (c *Core) probeTick(now time.Time) {
	if p := c.probe; p != nil && !p.acked && !p.indirect && !now.Before(p.sent.Add(c.cfg.PingTimeout)) {
		p.indirect = true
		c.sendPingReqs(p)
	}
	if now.Before(c.nextProbe) {
		return
	}
	if p := c.probe; p != nil && !p.acked {
		c.suspectUnanswered(now, p.target)
	}
	c.probe = nil
	// Keep the schedule on its grid (late ticks do not drift it), but never
	// catch up with a burst after a long pause.
	if c.nextProbe.IsZero() || now.Sub(c.nextProbe) >= c.cfg.Interval {
		c.nextProbe = now.Add(c.cfg.Interval)
	} else {
		c.nextProbe = c.nextProbe.Add(c.cfg.Interval)
	}
	m := c.nextTarget()
	if m == nil {
		return
	}
	c.seq++
	c.probe = &probe{target: m.name, seq: c.seq, sent: now}
	env := &peerpb.Envelope{Kind: peerpb.Kind_PING, Seq: c.seq, Loads: c.loads.windowFor(now, m.name, c.cfg.WindowSize)}
	c.send(m.name, m.addr, env, nil)
}

// nextTarget returns the next ALIVE or SUSPECT member of the round-robin, or nil
// when there is none. Members that died or left since the shuffle are skipped.
func (c *Core) nextTarget() *member {
	for range 2 {
		for c.probeNext < len(c.probeList) {
			m := c.members[c.probeList[c.probeNext]]
			c.probeNext++
			if m != nil && m != c.self && probeable(m) {
				return m
			}
		}
		c.reshuffle()
		if len(c.probeList) == 0 {
			return nil
		}
	}
	return nil
}

// reshuffle starts a new pass over the members that can be probed.
func (c *Core) reshuffle() {
	list := c.probeList[:0]
	for _, m := range c.order {
		if m != c.self && probeable(m) {
			list = append(list, m.name)
		}
	}
	c.rng.Shuffle(len(list), func(i, j int) { list[i], list[j] = list[j], list[i] })
	c.probeList, c.probeNext = list, 0
}

// addProbeTarget puts a newly learnt member at a random place in the rest of
// this pass, so that it is probed soon. It appends and swaps (the inside-out
// Fisher-Yates step), which keeps the rest of the pass a uniformly random
// order at O(1) a member: learning a thousand members at once stays cheap.
func (c *Core) addProbeTarget(name string) {
	c.probeList = append(c.probeList, name)
	last := len(c.probeList) - 1
	i := c.probeNext + c.rng.IntN(last-c.probeNext+1)
	c.probeList[i], c.probeList[last] = c.probeList[last], c.probeList[i]
}

// suspectUnanswered marks the target of a failed probe SUSPECT at the
// incarnation we know, and gossips it so that the target can refute.
func (c *Core) suspectUnanswered(now time.Time, name string) {
	m := c.members[name]
	if m == nil || m.state != peerpb.State_ALIVE {
		return
	}
	c.apply(now, &peerpb.MemberUpdate{Name: m.name, Addr: m.addr, Incarnation: m.inc, State: peerpb.State_SUSPECT, From: c.cfg.Name}, viaGossip, "")
}

// sendPingReqs asks IndirectChecks random alive members to probe p's target.
func (c *Core) sendPingReqs(p *probe) {
	t := c.members[p.target]
	if t == nil {
		return
	}
	for _, m := range c.randomMembers(c.cfg.IndirectChecks, peerpb.State_ALIVE, p.target) {
		c.send(m.name, m.addr, &peerpb.Envelope{Kind: peerpb.Kind_PING_REQ, Seq: p.seq, Target: t.name, TargetAddr: t.addr}, nil)
	}
}

// handlePingReq probes a target for a requester with a seq of our own; the ACK
// will be forwarded with the requester's seq. The relayed PING carries no load
// window: it is a liveness check, not our regular probe.
func (c *Core) handlePingReq(now time.Time, env *peerpb.Envelope) {
	if env.Target == "" || env.Target == c.cfg.Name || len(c.relays) >= maxRelays {
		return
	}
	addr := env.TargetAddr
	if addr == "" {
		addr = c.addrOf(env.Target)
	}
	if addr == "" {
		return
	}
	c.seq++
	c.relays[c.seq] = relay{requester: env.From, seq: env.Seq, expires: now.Add(c.cfg.Interval)}
	c.send(env.Target, addr, &peerpb.Envelope{Kind: peerpb.Kind_PING, Seq: c.seq, Target: env.From}, nil)
}

// handleAck completes our probe or forwards the ACK of a relayed one.
func (c *Core) handleAck(env *peerpb.Envelope) {
	if r, ok := c.relays[env.Seq]; ok {
		delete(c.relays, env.Seq)
		c.sendTo(r.requester, &peerpb.Envelope{Kind: peerpb.Kind_ACK, Seq: r.seq})
		return
	}
	if p := c.probe; p != nil && p.seq == env.Seq {
		p.acked = true
	}
}

// expireRelays forgets relays whose ACK did not come in time.
func (c *Core) expireRelays(now time.Time) {
	for seq, r := range c.relays {
		if !now.Before(r.expires) {
			delete(c.relays, seq)
		}
	}
}
