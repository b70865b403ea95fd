package sim

import (
	"bytes"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/policy"
)

// runJobs runs the study's cluster model over the given jobs, omniscient.
func runJobs(t *testing.T, machines []Machine, name string, jobs []job) (sum float64, moves int) {
	t.Helper()
	cfg, err := StudyConfig{Machines: machines, Omniscient: true}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	p, err := policy.New(name)
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]string, len(jobs))
	for i := range ids {
		ids[i] = strconv.Itoa(i)
	}
	var s study
	return s.run(cfg, p, jobs, ids, nil, 1)
}

// A single job on an idle fastest machine has slowdown 1; on a machine of
// half the speed, 2; over its memory, Thrash times that.
func TestStudySingleJob(t *testing.T) {
	for _, c := range []struct {
		speed, mem float64
		want       float64
	}{{1, 64, 1}, {0.5, 64, 2}, {1, 8, 10}} {
		sum, _ := runJobs(t, []Machine{{c.speed, c.mem}, {c.speed, c.mem}}, "leastload", []job{{arrive: 3, cpu: 40, mem: 16}})
		if math.Abs(sum-c.want) > 1e-9 {
			t.Errorf("speed %v, %v MB: slowdown %v, want %v", c.speed, c.mem, sum, c.want)
		}
	}
}

// Identical jobs on identical machines share equally.
func TestStudyEqualShares(t *testing.T) {
	jobs := []job{{cpu: 10, mem: 1}, {cpu: 10, mem: 1}, {cpu: 10, mem: 1}, {cpu: 10, mem: 1}}
	// Round robin from one home over two machines: two jobs each, each
	// job half a machine: slowdown 2 each.
	sum, moves := runJobs(t, []Machine{{1, 64}, {1, 64}}, "roundrobin", jobs)
	if math.Abs(sum/4-2) > 1e-9 || moves != 0 {
		t.Fatalf("mean slowdown %v with %d moves, want 2 and none", sum/4, moves)
	}
	// Four machines: one each, slowdown 1.
	sum, _ = runJobs(t, []Machine{{1, 64}, {1, 64}, {1, 64}, {1, 64}}, "leastload", jobs)
	if math.Abs(sum/4-1) > 1e-9 {
		t.Fatalf("one job per machine: mean slowdown %v, want 1", sum/4)
	}
	// Unequal lengths on one machine (processor sharing): 10 and 30 s
	// together finish at 20 and 40 s: slowdowns 2 and 4/3.
	sum, _ = runJobs(t, []Machine{{1, 64}, {0.001, 0.001}}, "leastload", []job{{cpu: 10, mem: 1}, {cpu: 30, mem: 1}})
	if want := 2 + 40.0/30; math.Abs(sum-want) > 1e-9 {
		t.Fatalf("processor sharing: sum of slowdowns %v, want %v", sum, want)
	}
}

// MOSIX moves work off a loaded machine: of three jobs started together
// on two machines, the short one ends and leaves its machine idle while
// the other shares; MOSIX moves one of the two there (once), a static
// policy leaves them sharing to the end.
func TestStudyMosixMoves(t *testing.T) {
	jobs := []job{{cpu: 100, mem: 1}, {cpu: 5, mem: 1}, {cpu: 100, mem: 1}}
	static, moves := runJobs(t, []Machine{{1, 64}, {1, 64}}, "leastload", jobs)
	if moves != 0 || math.Abs(static-(2+1+2)) > 1e-9 {
		t.Fatalf("leastload: sum of slowdowns %v with %d moves, want 5 and none", static, moves)
	}
	dyn, moves := runJobs(t, []Machine{{1, 64}, {1, 64}}, "mosix", jobs)
	if moves != 1 || dyn > 3.2 {
		t.Fatalf("mosix: sum of slowdowns %v with %d moves, want one move and about 1+1+1.06", dyn, moves)
	}
}

func TestStudyDeterministic(t *testing.T) {
	cfg := StudyConfig{Runs: 6, Seed: 7, Workers: 3}
	a, err := RunStudy(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Workers = 1
	b, _ := RunStudy(cfg)
	for i := range a.Policies {
		if a.Policies[i].MeanSlowdown != b.Policies[i].MeanSlowdown || a.Policies[i].MeanSlowdown < 1 {
			t.Fatalf("%s: %v with 3 workers, %v with 1", a.Policies[i].Policy, a.Policies[i].MeanSlowdown, b.Policies[i].MeanSlowdown)
		}
	}
	var svg bytes.Buffer
	if err := WriteSVG(&svg, a); err != nil || !strings.Contains(svg.String(), "emosix") {
		t.Fatalf("plot: %v", err)
	}
}

func TestStudyBadConfig(t *testing.T) {
	for _, c := range []StudyConfig{
		{Machines: []Machine{{1, 64}}},
		{Runs: -1},
		{Policies: []string{"fastest"}},
		{Machines: []Machine{{1, 64}, {0, 64}}},
		{Thrash: 0.5},
	} {
		if _, err := RunStudy(c); err == nil {
			t.Errorf("%+v: no error", c)
		}
	}
}

// The study's sleeping rule assumes the policies' residence time.
func TestStudyResidence(t *testing.T) {
	for _, d := range []time.Duration{policy.DefaultMosix().MinResident, policy.DefaultEMosix().MinResident} {
		if d != time.Duration(minResident*float64(time.Second)) {
			t.Fatalf("a policy's MinResident is %v, the study assumes %vs", d, minResident)
		}
	}
}

// LOfView changes what the cost policies decide (L from the view of the
// moment, not the largest load seen) and nothing of the others'; the
// paired difference to mosix is the mean of the runs' differences, zero
// for mosix itself.
func TestStudyLOfViewAndPairedDifference(t *testing.T) {
	cfg := StudyConfig{Runs: 8, Seed: 3, Thrash: 1, Omniscient: true, Policies: []string{"epvm", "mosix", "emosix"}}
	peak, err := RunStudy(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.LOfView = true
	view, err := RunStudy(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if peak.Policies[1].MeanSlowdown != view.Policies[1].MeanSlowdown {
		t.Fatalf("mosix differs with LOfView: %v and %v", peak.Policies[1].MeanSlowdown, view.Policies[1].MeanSlowdown)
	}
	if peak.Policies[0].MeanSlowdown == view.Policies[0].MeanSlowdown || peak.Policies[2].MeanSlowdown == view.Policies[2].MeanSlowdown {
		t.Fatalf("LOfView changed nothing: epvm %v, emosix %v", view.Policies[0].MeanSlowdown, view.Policies[2].MeanSlowdown)
	}
	for _, p := range view.Policies {
		var want float64
		for r := range p.Runs {
			want += p.Runs[r] - view.Policies[1].Runs[r]
		}
		want /= float64(len(p.Runs))
		if p.VsMosix == nil || math.Abs(*p.VsMosix-want) > 1e-12 || (p.Policy == "mosix" && (*p.VsMosix != 0 || *p.VsMosixCI95 != 0)) {
			t.Fatalf("%s: paired difference %v, want %v", p.Policy, p.VsMosix, want)
		}
	}
	cfg.Policies = []string{"epvm"}
	if only, _ := RunStudy(cfg); only.Policies[0].VsMosix != nil {
		t.Fatal("a paired difference without mosix")
	}
}
