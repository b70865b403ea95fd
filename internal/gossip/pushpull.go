package gossip

import (
	"time"

	"github.com/mosaic-cluster/mosaic/internal/peerpb"
)

// This file is anti-entropy: exchanges of the full member table. Piggybacking
// spreads each change a bounded number of times and can miss a member; a
// periodic push-pull with a random live member repairs that, a push-pull with a
// random DEAD member heals a partition (or tells a restarted node what we
// thought of it, so it refutes), an early push-pull fills a gap that a message
// revealed (repair), and a push-pull to a seed is how a node joins.

// Join sends our table to each seed address (our own skipped), asking for
// theirs. The seeds learn us from the table; we learn the cluster from their
// replies.
func (c *Core) Join(now time.Time, seedAddrs []string) []Message {
	seen := map[string]bool{c.cfg.Addr: true, "": true}
	for _, addr := range seedAddrs {
		if seen[addr] {
			continue
		}
		seen[addr] = true
		c.sendTable("", addr, peerpb.Kind_PUSH_PULL)
	}
	return c.flush()
}

// Preload merges a member table learnt out of band (the store's node registry,
// the simulator's set-up) exactly like a push-pull reply from nobody: members
// are learnt with their states and nothing is re-gossiped. Members that are in
// fact gone are found by probing, as any other failure. Like Step, it may keep
// the updates: the caller must not modify them afterwards.
func (c *Core) Preload(now time.Time, table []*peerpb.MemberUpdate) {
	for _, u := range table {
		c.apply(now, u, viaSync, "")
	}
}

// repair syncs early when a message shows that our table is missing members:
// it came from a node we do not know, or its load window names one. Such gaps
// open when piggybacked news runs out of retransmissions before reaching us
// (a node that joined early misses later joiners); the load windows reveal
// them within an interval or two, at no cost on the wire. The partner is the
// sender when we can reach it (it knows the names it sent), else a random
// alive member. Repairs are at most one a tenth of the push-pull period apart
// (and at least an interval), so a mass join cannot turn them into a storm.
func (c *Core) repair(now time.Time, sender string) {
	if c.cfg.PushPullInterval < 0 || c.leaving || now.Before(c.nextRepair) {
		return
	}
	partner := c.members[sender]
	if partner == nil || partner.state != peerpb.State_ALIVE {
		partner = nil
		for _, m := range c.randomMembers(1, peerpb.State_ALIVE, "") {
			partner = m
		}
	}
	if partner == nil {
		return
	}
	c.nextRepair = now.Add(max(c.cfg.Interval, c.cfg.pushPullPeriod(c.nonLeft)/10))
	c.sendTable(partner.name, partner.addr, peerpb.Kind_PUSH_PULL)
}

// syncTick runs the periodic push-pull and reconnect.
func (c *Core) syncTick(now time.Time) {
	if c.cfg.PushPullInterval > 0 && !now.Before(c.nextPushPull) {
		c.nextPushPull = now.Add(c.cfg.pushPullPeriod(c.nonLeft))
		for _, m := range c.randomMembers(1, peerpb.State_ALIVE, "") {
			c.sendTable(m.name, m.addr, peerpb.Kind_PUSH_PULL)
		}
	}
	if c.cfg.ReconnectInterval > 0 && !now.Before(c.nextReconnect) {
		c.nextReconnect = now.Add(c.cfg.ReconnectInterval)
		for _, m := range c.randomMembers(1, peerpb.State_DEAD, "") {
			c.sendTable(m.name, m.addr, peerpb.Kind_PUSH_PULL)
		}
	}
}

// sendTable sends our full table, every state included: a DEAD or LEFT entry
// is what lets the receiver refute, or stop probing a member it missed news of.
// The table replaces the piggyback: it holds every queued update and more.
func (c *Core) sendTable(to, addr string, kind peerpb.Kind) {
	table := make([]*peerpb.MemberUpdate, 0, len(c.order))
	for _, m := range c.order {
		table = append(table, m.record())
	}
	c.out = append(c.out, Message{To: to, Addr: addr, Env: &peerpb.Envelope{From: c.cfg.Name, Kind: kind, Updates: table}})
}
