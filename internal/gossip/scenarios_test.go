package gossip

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/peerpb"
)

// Whole-cluster scenarios on the in-memory harness: each test states one
// property of SWIM as the paper and memberlist describe it.

func TestNodesJoiningThroughOneSeedConvergeToAllAlive(t *testing.T) {
	for n := 3; n <= 8; n++ {
		t.Run(fmt.Sprintf("n=%d", n), func(t *testing.T) {
			// Whether piggybacked news reaches everyone depends on the
			// random probe orders; the load windows and repair syncs must
			// close any gap within a few intervals whatever they are.
			var worst time.Duration
			for seed := range int64(20) {
				h := newHarness(t, n, func(c *Config) { c.Seed += seed * 101 })
				worst = max(worst, h.runUntil(6*h.interval, fmt.Sprintf("seed %d: all ALIVE everywhere", seed), h.converged))
			}
			t.Logf("converged within %v after the last join, over 20 seeds", worst)

			h := newHarness(t, n, nil)
			h.runUntil(6*h.interval, "all ALIVE everywhere", h.converged)
			// And it stays so: nobody is suspected without a failure.
			h.run(30 * h.interval)
			if !h.converged() {
				t.Fatal("membership diverged without failures")
			}
			for _, o := range h.order {
				for _, e := range h.nodes[o].events {
					if e.New != peerpb.State_ALIVE {
						t.Errorf("%s saw %s become %v without a failure", o, e.Name, e.New)
					}
				}
			}
		})
	}
}

// detectionBound is DeadBound, the longest a crash can go undeclared, plus the
// harness's tick and delivery granularity.
func detectionBound(cfg Config, n int, step time.Duration) time.Duration {
	return DeadBound(cfg, n) + 2*step
}

func TestCrashedNodeBecomesSuspectThenDeadEverywhereWithinBound(t *testing.T) {
	for _, n := range []int{3, 5, 8} {
		t.Run(fmt.Sprintf("n=%d", n), func(t *testing.T) {
			h := newHarness(t, n, nil)
			h.runUntil(10*h.interval, "converged", h.converged)
			h.run(3 * h.interval)
			victim := "n2"
			h.crash(victim)
			bound := detectionBound(h.config(victim, 1), n, h.step)
			took := h.runUntil(bound, "DEAD everywhere", func() bool { return h.allSee(victim, peerpb.State_DEAD) })
			t.Logf("declared DEAD everywhere %v after the crash (bound %v)", took, bound)
			for _, o := range h.order {
				if o == victim {
					continue
				}
				got := h.transitions(o, victim)
				i := slices.Index(got, peerpb.State_SUSPECT)
				if i < 0 || i+1 >= len(got) || got[i+1] != peerpb.State_DEAD {
					t.Errorf("%s: %s went through %v, want ... SUSPECT, DEAD", o, victim, got)
				}
			}
			// The others stay ALIVE to each other.
			for _, o := range h.order {
				if o != victim && !h.allSee(o, peerpb.State_ALIVE) {
					t.Errorf("%s is not ALIVE everywhere", o)
				}
			}
		})
	}
}

func TestSuspectedLiveNodeRefutesAndStaysAlive(t *testing.T) {
	h := newHarness(t, 5, nil)
	h.runUntil(10*h.interval, "converged", h.converged)
	victim := "n3"
	// n3's ACKs are lost, so its probers suspect it; everything else flows,
	// so n3 hears the suspicion and refutes.
	h.drop = func(from string, m Message) bool { return from == victim && m.Env.Kind == peerpb.Kind_ACK }
	h.runUntil(20*h.interval, "someone suspects n3", func() bool {
		for _, o := range h.order {
			if v, _ := h.view(o, victim); v.State == peerpb.State_SUSPECT {
				return true
			}
		}
		return false
	})
	h.drop = nil
	cfg, _ := h.config(victim, 1).withDefaults()
	h.run(3 * cfg.suspicionTimeout(5))
	if !h.allSee(victim, peerpb.State_ALIVE) {
		t.Fatal("n3 is not ALIVE everywhere after refuting")
	}
	if inc := h.nodes[victim].core.Incarnation(); inc < 2 {
		t.Errorf("n3 incarnation = %d, want > 1 after a refutation", inc)
	}
	for _, o := range h.order {
		if slices.Contains(h.transitions(o, victim), peerpb.State_DEAD) {
			t.Errorf("%s declared the live n3 DEAD", o)
		}
	}
}

func TestIndirectProbeKeepsNodeBehindBrokenLinkAlive(t *testing.T) {
	h := newHarness(t, 5, nil)
	h.runUntil(10*h.interval, "converged", h.converged)
	broken := func(a, b string) bool { return (a == "n1" && b == "n2") || (a == "n2" && b == "n1") }
	h.drop = func(from string, m Message) bool { return broken(from, h.byAddr[m.Addr]) }
	h.run(40 * h.interval)
	for _, o := range h.order {
		for _, e := range h.nodes[o].events {
			if e.New != peerpb.State_ALIVE {
				t.Errorf("%s saw %s become %v though only the n1-n2 link is broken", o, e.Name, e.New)
			}
		}
	}
}

func TestRestartedNodeComesBackAlive(t *testing.T) {
	tests := []struct {
		name      string
		waitDead  bool   // restart only after the cluster declared it DEAD
		restartAt uint64 // incarnation of the new life
	}{
		{"after being declared dead, higher incarnation", true, 2},
		{"before anyone noticed, higher incarnation", false, 2},
		{"after being declared dead, same incarnation (refutes)", true, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, 5, nil)
			h.runUntil(10*h.interval, "converged", h.converged)
			h.crash("n4")
			if tt.waitDead {
				h.runUntil(detectionBound(h.config("n4", 1), 5, h.step), "DEAD everywhere", func() bool { return h.allSee("n4", peerpb.State_DEAD) })
			} else {
				h.run(h.interval / 4)
			}
			h.start("n4", tt.restartAt)
			h.join("n4", "n1")
			h.runUntil(10*h.interval, "n4 ALIVE everywhere again", h.converged)
			for _, o := range h.order {
				if v, _ := h.view(o, "n4"); v.Incarnation <= 1 && tt.waitDead {
					t.Errorf("%s holds n4 at incarnation %d, want above its previous life", o, v.Incarnation)
				}
			}
			h.run(20 * h.interval)
			if !h.converged() {
				t.Fatal("diverged after the restart")
			}
		})
	}
}

func TestLeftNodeIsLeftEverywhereAndNoLongerProbed(t *testing.T) {
	h := newHarness(t, 6, nil)
	h.runUntil(10*h.interval, "converged", h.converged)
	h.emit("n5", h.now, h.nodes["n5"].core.Leave(h.now))
	h.runUntil(5*h.interval, "LEFT everywhere", func() bool { return h.allSee("n5", peerpb.State_LEFT) })
	h.crash("n5") // the daemon stops
	var probes int
	h.sent = func(from string, m Message) {
		if m.To == "n5" || m.Env.Target == "n5" {
			probes++
		}
	}
	h.run(40 * h.interval)
	if probes > 0 {
		t.Errorf("%d messages were sent to or about n5 after it left", probes)
	}
	for _, o := range h.order {
		if o != "n5" && slices.Contains(h.transitions(o, "n5"), peerpb.State_DEAD) {
			t.Errorf("%s declared the departed n5 DEAD", o)
		}
	}
	if !h.allSee("n5", peerpb.State_LEFT) {
		t.Error("n5 is no longer LEFT everywhere")
	}
}

func TestPartitionHealsThroughReconnect(t *testing.T) {
	h := newHarness(t, 6, nil)
	h.runUntil(10*h.interval, "converged", h.converged)
	side := func(name string) bool { return name <= "n3" }
	h.drop = func(from string, m Message) bool { return side(from) != side(h.byAddr[m.Addr]) }
	h.runUntil(detectionBound(h.config("n1", 1), 6, h.step), "each side holds the other DEAD", func() bool {
		for _, o := range h.order {
			for _, x := range h.order {
				if v, _ := h.view(o, x); side(o) != side(x) && v.State != peerpb.State_DEAD {
					return false
				}
			}
		}
		return true
	})
	h.drop = nil
	cfg, _ := h.config("n1", 1).withDefaults()
	took := h.runUntil(4*cfg.ReconnectInterval, "healed", h.converged)
	t.Logf("healed %v after the partition ended (ReconnectInterval %v)", took, cfg.ReconnectInterval)
}

// The bound is a worst case over probe orders, so try many of them.
func TestCrashDetectionBoundHoldsAcrossSeeds(t *testing.T) {
	const n = 6
	var worst time.Duration
	for seed := range int64(40) {
		h := newHarness(t, n, func(c *Config) { c.Seed += seed * 101 })
		h.runUntil(10*h.interval, "converged", h.converged)
		h.run(time.Duration(seed%7) * h.step) // crash at varied phases
		victim := fmt.Sprintf("n%d", 1+seed%n)
		h.crash(victim)
		bound := detectionBound(h.config(victim, 1), n, h.step)
		took := h.runUntil(bound, fmt.Sprintf("seed %d: %s DEAD everywhere", seed, victim), func() bool { return h.allSee(victim, peerpb.State_DEAD) })
		worst = max(worst, took)
	}
	t.Logf("worst detection over 40 runs: %v (bound %v)", worst, detectionBound(Config{Interval: time.Second}, n, time.Second/20))
}
