package gossip

import (
	"testing"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/peerpb"
)

// MOSIX load dissemination on the in-memory harness.

func loadAge(h *harness, observer, node string) (time.Duration, bool) {
	return h.nodes[observer].core.LoadAge(h.now, node)
}

func TestLoadReportsReachEveryNode(t *testing.T) {
	const n = 6
	h := newHarness(t, n, nil)
	h.runUntil(10*h.interval, "converged", h.converged)
	h.run(5 * h.interval)
	var sum time.Duration
	var count int
	for range 10 * int(h.interval/h.step) {
		h.tick()
		for _, o := range h.order {
			views := h.nodes[o].core.Loads(h.now)
			if len(views) != n {
				t.Fatalf("%s holds %d load reports, want %d (own included)", o, len(views), n)
			}
			for _, v := range views {
				// Every member pings every other directly, with its own
				// report, at least once in two passes of n-1 probes.
				if v.Age > time.Duration(2*(n-1))*h.interval {
					t.Errorf("%s: report about %s is %v old", o, v.Report.Node, v.Age)
				}
				if v.Report.AgeMs != uint32(v.Age.Milliseconds()) {
					t.Errorf("%s: report about %s says AgeMs %d, Age %v", o, v.Report.Node, v.Report.AgeMs, v.Age)
				}
				sum += v.Age
				count++
			}
		}
	}
	// With a window larger than the cluster every PING carries every report
	// and each node is pinged about once an interval: news is about an
	// interval old on average.
	mean := sum / time.Duration(count)
	t.Logf("mean age of reports: %v", mean)
	if mean > 2*h.interval {
		t.Errorf("mean age of reports %v, want under two intervals", mean)
	}
}

func TestLoadAgesGrowBetweenReceiptsAndResetOnFreshReports(t *testing.T) {
	h := newHarness(t, 4, nil)
	h.runUntil(10*h.interval, "converged", h.converged)
	h.run(5 * h.interval)

	// In steady state the age n1 holds about n2 is a sawtooth: it grows with
	// the clock between receipts and drops when a fresher report arrives.
	prev, _ := loadAge(h, "n1", "n2")
	var drops int
	for range 20 * int(h.interval/h.step) {
		h.tick()
		age, _ := loadAge(h, "n1", "n2")
		switch {
		case age == prev+h.step:
		case age < prev:
			drops++
		default:
			t.Fatalf("age went from %v to %v in a step of %v", prev, age, h.step)
		}
		prev = age
	}
	if drops < 5 {
		t.Errorf("n1's view of n2 was refreshed only %d times in 20 intervals", drops)
	}

	// n2 stops reporting. Once n1 holds n2's last report, the age only grows:
	// copies of that report relayed back do not pass for news.
	h.nodes["n2"].reporting = false
	h.runUntil(10*h.interval, "n1 holds n2's last report", func() bool {
		own, _ := loadAge(h, "n2", "n2")
		seen, _ := loadAge(h, "n1", "n2")
		return seen-own < 10*time.Millisecond
	})
	prev, _ = loadAge(h, "n1", "n2")
	for range 5 * int(h.interval/h.step) {
		h.tick()
		age, _ := loadAge(h, "n1", "n2")
		if age != prev+h.step {
			t.Fatalf("age went from %v to %v in a step of %v with no new report", prev, age, h.step)
		}
		prev = age
	}

	// n2 reports again: n1's view is fresh within a few intervals.
	h.nodes["n2"].reporting = true
	h.nodes["n2"].nextReport = h.now
	h.runUntil(6*h.interval, "fresh report about n2 at n1", func() bool {
		age, _ := loadAge(h, "n1", "n2")
		return age < h.interval
	})
}

func TestLoadReportsExpire(t *testing.T) {
	h := newHarness(t, 4, func(c *Config) { c.LoadExpiry = 3 * time.Second })
	h.runUntil(10*h.interval, "converged", h.converged)
	h.run(5 * h.interval)
	h.nodes["n2"].reporting = false
	stopped := h.now
	h.runUntil(5*time.Second, "n2's report expired everywhere", func() bool {
		for _, o := range h.order {
			if _, ok := loadAge(h, o, "n2"); ok {
				return false
			}
		}
		return true
	})
	if waited := h.now.Sub(stopped); waited < 2*time.Second {
		t.Errorf("reports expired %v after the last one, before LoadExpiry", waited)
	}
	if !h.allSee("n2", peerpb.State_ALIVE) {
		t.Error("expiry of a report touched membership")
	}
	for _, o := range []string{"n1", "n3", "n4"} {
		if _, ok := loadAge(h, o, o); !ok {
			t.Errorf("%s lost its own fresh report", o)
		}
	}
}

func TestDeadMembersLoadsVanishAndStayAway(t *testing.T) {
	h := newHarness(t, 5, nil)
	h.runUntil(10*h.interval, "converged", h.converged)
	h.run(3 * h.interval)
	if _, ok := loadAge(h, "n1", "n3"); !ok {
		t.Fatal("n1 holds no report about n3 before the crash")
	}
	h.crash("n3")
	h.runUntil(detectionBound(h.config("n3", 1), 5, h.step), "DEAD everywhere", func() bool { return h.allSee("n3", peerpb.State_DEAD) })
	for _, o := range h.order {
		if _, ok := loadAge(h, o, "n3"); ok && o != "n3" {
			t.Errorf("%s still holds a report about the dead n3", o)
		}
	}
	// A late window that still carries n3 (its sender had not heard) is ignored.
	h.nodes["n1"].core.Step(h.now, &peerpb.Envelope{From: "n2", Kind: peerpb.Kind_PING, Seq: 99,
		Loads: []*peerpb.LoadReport{{Node: "n3", Load: 1, AgeMs: 10}}})
	if _, ok := loadAge(h, "n1", "n3"); ok {
		t.Error("n1 took a report about the dead n3 from a window")
	}
	h.run(5 * h.interval)
	for _, o := range h.order {
		if _, ok := loadAge(h, o, "n3"); ok && o != "n3" {
			t.Errorf("%s holds a report about the dead n3 again", o)
		}
	}
}

func TestPingWindowRespectsSizeTargetAndDeadMembers(t *testing.T) {
	const window = 4
	h := newHarness(t, 10, func(c *Config) { c.WindowSize = window })
	var pings, full int
	h.sent = func(from string, m Message) {
		env := m.Env
		if env.Kind != peerpb.Kind_PING || env.Target != "" || len(env.Loads) == 0 {
			if env.Kind != peerpb.Kind_PING && len(env.Loads) > 0 {
				t.Errorf("%v from %s carries loads", env.Kind, from)
			}
			return
		}
		pings++
		if len(env.Loads) > window {
			t.Errorf("PING from %s carries %d loads, window is %d", from, len(env.Loads), window)
		}
		if len(env.Loads) == window {
			full++
		}
		if env.Loads[0].Node != from {
			t.Errorf("PING from %s starts with %s's report, want its own", from, env.Loads[0].Node)
		}
		core := h.nodes[from].core
		for i, r := range env.Loads {
			if r.Node == m.To {
				t.Errorf("PING from %s to %s carries the target's own report", from, m.To)
			}
			if m := core.members[r.Node]; m == nil || gone(m.state) {
				t.Errorf("PING from %s carries a report about %s, which it holds gone", from, r.Node)
			}
			if i > 1 && r.AgeMs < env.Loads[i-1].AgeMs {
				t.Errorf("PING from %s: window not freshest first: %v", from, env.Loads)
			}
		}
	}
	h.runUntil(10*h.interval, "converged", h.converged)
	h.run(10 * h.interval)
	h.crash("n7")
	h.runUntil(detectionBound(h.config("n7", 1), 10, h.step), "DEAD everywhere", func() bool { return h.allSee("n7", peerpb.State_DEAD) })
	h.run(10 * h.interval)
	if pings == 0 || full < pings/2 {
		t.Errorf("%d PINGs, %d with a full window: the window is not being filled", pings, full)
	}
}
