package gossip

import (
	"fmt"
	"testing"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/peerpb"
)

func TestProbesVisitEveryMemberOncePerPass(t *testing.T) {
	c := newTestCore(t)
	var table []*peerpb.MemberUpdate
	for i := range 6 {
		table = append(table, upd(fmt.Sprintf("m%d", i), alive, 1))
	}
	table = append(table, upd("gone", dead, 1), upd("quit", left, 1))
	c.Preload(epoch, table)
	now := epoch
	for pass := range 3 {
		seen := map[string]bool{}
		for range 6 {
			var pings []Message
			for _, m := range c.Tick(now) {
				if m.Env.Kind == peerpb.Kind_PING {
					pings = append(pings, m)
				}
			}
			if len(pings) != 1 {
				t.Fatalf("pass %d: %d PINGs in one interval, want 1", pass, len(pings))
			}
			p := pings[0]
			if seen[p.To] {
				t.Fatalf("pass %d: %s probed twice", pass, p.To)
			}
			seen[p.To] = true
			// Answer, so nobody is suspected.
			c.Step(now, &peerpb.Envelope{From: p.To, Kind: peerpb.Kind_ACK, Seq: p.Env.Seq})
			now = now.Add(time.Second)
		}
		if seen["gone"] || seen["quit"] {
			t.Errorf("pass %d probed a DEAD or LEFT member: %v", pass, seen)
		}
	}
}

func TestUnansweredProbeGoesIndirectThenSuspects(t *testing.T) {
	c := newTestCore(t)
	c.Preload(epoch, []*peerpb.MemberUpdate{upd("t", alive, 1), upd("h1", alive, 1), upd("h2", alive, 1), upd("h3", alive, 1), upd("h4", alive, 1)})
	var ping Message
	for _, m := range c.Tick(epoch) {
		if m.Env.Kind == peerpb.Kind_PING {
			ping = m
		}
	}
	target := ping.To
	if out := c.Tick(epoch.Add(400 * time.Millisecond)); len(out) != 0 {
		t.Fatalf("sent %v before PingTimeout", out)
	}
	reqs := c.Tick(epoch.Add(500 * time.Millisecond))
	if len(reqs) != 3 {
		t.Fatalf("sent %d PING_REQs, want IndirectChecks = 3", len(reqs))
	}
	for _, m := range reqs {
		if m.Env.Kind != peerpb.Kind_PING_REQ || m.Env.Target != target || m.Env.Seq != ping.Env.Seq || m.To == target {
			t.Errorf("indirect probe = %v", m)
		}
	}
	c.Tick(epoch.Add(time.Second))
	if st := c.members[target].state; st != suspect {
		t.Errorf("unanswered target is %v, want SUSPECT", st)
	}
}

func TestPingReqIsRelayedWithTheOriginalSeq(t *testing.T) {
	c := newTestCore(t)
	c.Preload(epoch, []*peerpb.MemberUpdate{upd("req", alive, 1), {Name: "tgt", Addr: "10.0.0.8:1", State: alive, Incarnation: 1}})
	out := c.Step(epoch, &peerpb.Envelope{From: "req", Kind: peerpb.Kind_PING_REQ, Seq: 77, Target: "tgt", TargetAddr: "10.0.0.8:1"})
	if len(out) != 1 || out[0].Env.Kind != peerpb.Kind_PING || out[0].Addr != "10.0.0.8:1" || len(out[0].Env.Loads) != 0 {
		t.Fatalf("relay = %v, want one PING to the target without loads", out)
	}
	ours := out[0].Env.Seq
	out = c.Step(epoch.Add(time.Millisecond), &peerpb.Envelope{From: "tgt", Kind: peerpb.Kind_ACK, Seq: ours})
	if len(out) != 1 || out[0].To != "req" || out[0].Env.Kind != peerpb.Kind_ACK || out[0].Env.Seq != 77 {
		t.Fatalf("forwarded ACK = %v, want ACK seq 77 to req", out)
	}
	// A second ACK, or one after expiry, goes nowhere.
	if out := c.Step(epoch.Add(2*time.Millisecond), &peerpb.Envelope{From: "tgt", Kind: peerpb.Kind_ACK, Seq: ours}); len(out) != 0 {
		t.Errorf("duplicate ACK forwarded: %v", out)
	}
	out = c.Step(epoch, &peerpb.Envelope{From: "req", Kind: peerpb.Kind_PING_REQ, Seq: 78, Target: "tgt", TargetAddr: "10.0.0.8:1"})
	c.Tick(epoch.Add(2 * time.Second))
	if out := c.Step(epoch.Add(2*time.Second), &peerpb.Envelope{From: "tgt", Kind: peerpb.Kind_ACK, Seq: out[0].Env.Seq}); len(out) != 0 {
		t.Errorf("ACK forwarded after the relay expired: %v", out)
	}
}

func TestLoneNodeDoesNothing(t *testing.T) {
	c := newTestCore(t)
	for i := range 100 {
		if out := c.Tick(epoch.Add(time.Duration(i) * time.Second)); len(out) != 0 {
			t.Fatalf("a node alone sent %v", out)
		}
	}
}

func TestLeaveTellsAliveMembersDirectly(t *testing.T) {
	c := newTestCore(t)
	var table []*peerpb.MemberUpdate
	for i := range 6 {
		table = append(table, upd(fmt.Sprintf("m%d", i), alive, 1))
	}
	c.Preload(epoch, append(table, upd("d", dead, 1)))
	out := c.Leave(epoch)
	if len(out) != 3 {
		t.Fatalf("Leave sent %d messages, want max(3, IndirectChecks) = 3", len(out))
	}
	for _, m := range out {
		u := m.Env.Updates[0]
		if m.Env.Kind != peerpb.Kind_PING || m.To == "d" || u.Name != "me" || u.State != left || u.Incarnation != 5 {
			t.Errorf("leave message = %v", m)
		}
	}
	if out := c.Tick(epoch.Add(time.Minute)); len(out) != 0 {
		t.Errorf("a node that left still ticks: %v", out)
	}
}
