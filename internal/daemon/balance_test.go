package daemon

import (
	"errors"
	"slices"
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

// The peak load behind the cost policies' L is the largest seen since the
// policy was chosen, and within peakWindow: one burst does not set L for
// the daemon's life.
func TestBalancerPeak(t *testing.T) {
	b, err := newBalancer("epvm", false, false)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	b.peak.see(48, t0) // a burst
	b.peak.see(3, t0.Add(time.Minute))
	if b.peak.value != 48 {
		t.Fatalf("peak %v a minute after a load of 48, want 48", b.peak.value)
	}
	b.peak.see(5, t0.Add(peakWindow+time.Second))
	if b.peak.value != 5 {
		t.Fatalf("peak %v once the burst is older than the window, want the load of the moment, 5", b.peak.value)
	}
	b.peak.see(4, t0.Add(peakWindow+2*time.Second))
	if b.peak.value != 5 {
		t.Fatalf("peak %v, want 5 still", b.peak.value)
	}
	// A peak reached again is remembered from then.
	b.peak.see(5, t0.Add(2*peakWindow))
	b.peak.see(1, t0.Add(2*peakWindow+time.Minute))
	if b.peak.value != 5 {
		t.Fatalf("peak %v after 5 was reached again, want 5", b.peak.value)
	}
	// Another policy starts afresh; the same one keeps its peak.
	if err := b.set("epvm"); err != nil || b.peak.value != 5 {
		t.Fatalf("set to the same policy: peak %v, %v", b.peak.value, err)
	}
	if err := b.set("emosix"); err != nil || b.peak.value != 0 {
		t.Fatalf("set to another policy: peak %v, want 0 (%v)", b.peak.value, err)
	}
}

// A node whose CPU refused a process is not offered for it again, and
// the process may go elsewhere at once; other failures hold the process
// a while, and a failed target is kept from every process a while.
func TestBalancerMoveFailed(t *testing.T) {
	b, err := newBalancer("mosix", false, false)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	running := []executor.Running{{ID: "n1.1", Since: t0.Add(-time.Minute)}, {ID: "n1.2", Since: t0.Add(-time.Minute)}}
	b.procs(t0, running, 1)
	b.moveFailed("n1.1", "n3", errors.New("n1.1 stays on n1: n3 did not take it: the CPU of n3 lacks avx512f, which n1.1 may use"), t0)
	b.moveFailed("n1.2", "n2", errors.New("n1.2 stays on n1: it holds a socket"), t0)
	procs := b.procs(t0.Add(time.Second), running, 1)
	if p := procs[0]; p.Pinned || !slices.Equal(p.Avoid, []string{"n3"}) {
		t.Errorf("after its CPU refusal: %+v, want movable, avoiding n3", p)
	}
	if p := procs[1]; !p.Pinned || len(p.Avoid) != 0 {
		t.Errorf("after another failure: %+v, want held a while, avoiding nothing", p)
	}
	if _, failed := b.failed["n3"]; failed {
		t.Error("a node that refused one process for its CPU is kept from all")
	}
	later := b.procs(t0.Add(unfitFor+time.Second), running, 1)
	if len(later[0].Avoid) != 0 {
		t.Errorf("after %v: still avoiding %v", unfitFor, later[0].Avoid)
	}
	b.procs(t0.Add(unfitFor+2*time.Second), running[1:], 1)
	if len(b.unfit) != 0 {
		t.Errorf("a process that is gone is still remembered: %v", b.unfit)
	}
}
