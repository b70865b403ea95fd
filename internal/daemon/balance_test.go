package daemon

import (
	"testing"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/executor"
)

// A process's demand is its CPU use against the share it could have had;
// until measured it counts as CPU-bound and does not move.
func TestBalancerDemand(t *testing.T) {
	b, err := newBalancer("mosix", false, false)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	since := t0.Add(-time.Minute)
	run := func(cpu ...float64) []executor.Running {
		var rs []executor.Running
		for i, c := range cpu {
			rs = append(rs, executor.Running{ID: []string{"n1.1", "n1.2", "n1.3", "n1.4", "n1.5"}[i], Since: since, CPUSeconds: c})
		}
		return rs
	}
	first := b.procs(t0, run(0, 0, 0, 0, 0), 1)
	for _, p := range first {
		if p.Demand != 1 || p.Resident != 0 {
			t.Fatalf("unmeasured: %+v, want demand 1 and not movable yet", p)
		}
	}
	// One second later: four shared one core (a quarter each), one slept.
	second := b.procs(t0.Add(time.Second), run(0.25, 0.25, 0.25, 0.25, 0), 1)
	for _, p := range second[:4] {
		if p.Demand < 0.99 || p.Resident < time.Minute {
			t.Errorf("CPU-bound under sharing: %+v, want demand 1", p)
		}
	}
	if p := second[4]; p.Demand != 0 {
		t.Errorf("sleeper: demand %v, want 0", p.Demand)
	}
	// A process that is gone is forgotten.
	b.procs(t0.Add(2*time.Second), run(0.5), 1)
	if len(b.cpu) != 1 {
		t.Errorf("the balancer remembers %d processes, want 1", len(b.cpu))
	}
	if _, err := newBalancer("fastest", false, false); err == nil {
		t.Error("an unknown policy was accepted")
	}
	if b, err := newBalancer(PolicyOff, false, true); err != nil || b.pol != nil || !b.refusesGuests() {
		t.Errorf("off with no guests: %+v, %v", b, err)
	}
}
