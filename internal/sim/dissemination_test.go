package sim

import (
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/peerpb"
)

func run(t *testing.T, cfg DisseminationConfig) DisseminationResult {
	t.Helper()
	start := time.Now()
	r, err := RunDissemination(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("n=%d w=%d in %v: mean age %v (expected %v), p99 %v, max %v (expected %v), missing %.4f, window age %v, %.0f B/node/s %v, spread %.2f intervals over %d trials (expected %.2f, %d unfinished)",
		r.Nodes, r.Window, time.Since(start).Round(time.Millisecond), r.MeanAge, r.ExpectedMeanAge, r.P99Age, r.MaxAge, r.ExpectedMaxAge,
		r.Missing, r.MeanWindowAge, r.BytesPerNodePerSec, r.BytesByKind, r.SpreadIntervals, r.SpreadTrials, r.ExpectedSpread, r.SpreadUnfinished)
	return r
}

func within(got, want time.Duration, factor float64) bool {
	return float64(got) >= float64(want)/factor && float64(got) <= float64(want)*factor
}

func TestDisseminationSmallClustersMatchTheAnalysis(t *testing.T) {
	tests := []struct {
		nodes, window int
		spread        bool // the window holds the whole cluster: news spreads like push gossip
	}{
		{16, 16, true},
		{64, 8, false},
		{64, 16, false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("n=%d,w=%d", tt.nodes, tt.window), func(t *testing.T) {
			r := run(t, DisseminationConfig{Nodes: tt.nodes, Window: tt.window, Intervals: 200, Seed: 7})
			// The default warmup, 6(n-1)/w intervals, leaves a rare observer
			// that has yet to hear of some node in the first samples.
			if r.Missing > 1e-3 {
				t.Errorf("missing = %v: observers have not heard of other nodes", r.Missing)
			}
			if !within(r.MeanAge, r.ExpectedMeanAge, 2) {
				t.Errorf("mean age %v, analytic %v: not within a factor of 2", r.MeanAge, r.ExpectedMeanAge)
			}
			if r.MeanAge < r.Interval/2 || r.P99Age < r.MeanAge || r.MaxAge < r.P99Age {
				t.Errorf("ages out of order: mean %v, p99 %v, max %v", r.MeanAge, r.P99Age, r.MaxAge)
			}
			if r.MeanWindowAge <= 0 || r.MeanWindowAge > r.MeanAge {
				t.Errorf("window age %v, mean age %v: the window should carry the freshest news", r.MeanWindowAge, r.MeanAge)
			}
			// One PING and one ACK per node per interval, plus rare syncs.
			if r.MessagesPerNodePerSec < 1.9 || r.MessagesPerNodePerSec > 2.5 {
				t.Errorf("%.2f messages per node per second, want about 2", r.MessagesPerNodePerSec)
			}
			if r.BytesPerNodePerSec <= 0 || r.BytesByKind[peerpb.Kind_PING] < r.BytesPerNodePerSec/2 {
				t.Errorf("bytes per node per second %v by kind %v: PINGs should dominate", r.BytesPerNodePerSec, r.BytesByKind)
			}
			if r.SpreadTrials == 0 || r.SpreadUnfinished != 0 {
				t.Fatalf("%d spread trials finished, %d unfinished", r.SpreadTrials, r.SpreadUnfinished)
			}
			if tt.spread && (r.SpreadIntervals < r.ExpectedSpread/2 || r.SpreadIntervals > r.ExpectedSpread*2) {
				t.Errorf("spread %.2f intervals, analytic %.2f: not within a factor of 2", r.SpreadIntervals, r.ExpectedSpread)
			}
		})
	}
}

func TestDisseminationAgesGrowWithClusterAndShrinkWithWindow(t *testing.T) {
	small := run(t, DisseminationConfig{Nodes: 32, Window: 8, Intervals: 100, Seed: 3})
	large := run(t, DisseminationConfig{Nodes: 128, Window: 8, Intervals: 100, Seed: 3})
	wide := run(t, DisseminationConfig{Nodes: 128, Window: 32, Intervals: 100, Seed: 3})
	if large.MeanAge <= small.MeanAge {
		t.Errorf("mean age %v at n=128 is not above %v at n=32", large.MeanAge, small.MeanAge)
	}
	if wide.MeanAge >= large.MeanAge {
		t.Errorf("mean age %v with w=32 is not below %v with w=8", wide.MeanAge, large.MeanAge)
	}
}

func TestDisseminationSurvivesLoss(t *testing.T) {
	clean := run(t, DisseminationConfig{Nodes: 32, Intervals: 100, Seed: 5})
	lossy := run(t, DisseminationConfig{Nodes: 32, Intervals: 100, Loss: 0.1, Seed: 5})
	if lossy.Missing != 0 {
		t.Errorf("with 10%% loss, missing = %v", lossy.Missing)
	}
	if lossy.MeanAge <= clean.MeanAge || lossy.MeanAge > 2*clean.MeanAge {
		t.Errorf("mean age %v with 10%% loss vs %v without: want a little older", lossy.MeanAge, clean.MeanAge)
	}
}

func TestDisseminationIsDeterministic(t *testing.T) {
	cfg := DisseminationConfig{Nodes: 48, Window: 8, Intervals: 60, Loss: 0.05, Seed: 42}
	a := run(t, cfg)
	b := run(t, cfg)
	if !reflect.DeepEqual(a, b) {
		t.Errorf("same seed, different results:\n%+v\n%+v", a, b)
	}
	cfg.Seed++
	if c := run(t, cfg); reflect.DeepEqual(a, c) {
		t.Error("a different seed gave the very same result")
	}
}

func TestDisseminationConfigDefaultsAndErrors(t *testing.T) {
	cfg, err := DisseminationConfig{Nodes: 1024}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	want := DisseminationConfig{Nodes: 1024, Window: 16, Interval: time.Second, Intervals: 200, Warmup: 383, Latency: 200 * time.Microsecond, Observers: 64}
	if cfg != want {
		t.Errorf("defaults = %+v, want %+v", cfg, want)
	}
	if cfg, _ := (DisseminationConfig{Nodes: 10, Window: 16}).withDefaults(); cfg.Warmup != 30 || cfg.Observers != 10 {
		t.Errorf("small cluster defaults = %+v, want warmup 30 and every node observed", cfg)
	}
	if cfg, _ := (DisseminationConfig{Nodes: 80, Observers: 100}).withDefaults(); cfg.Observers != 80 {
		t.Errorf("observers = %d, want all 80 nodes", cfg.Observers)
	}
	for _, bad := range []DisseminationConfig{{Nodes: 1}, {Nodes: 4, Loss: 1}, {Nodes: 4, Loss: -0.1}, {Nodes: 4, Window: -1}, {Nodes: 4, Interval: time.Microsecond}} {
		if _, err := RunDissemination(bad); err == nil {
			t.Errorf("RunDissemination(%+v) accepted a bad config", bad)
		}
	}
}

func TestEventQueueOrdersByTimeThenInsertion(t *testing.T) {
	var q eventQueue[time.Duration, string]
	q.push(3, "c")
	q.push(1, "a1")
	q.push(2, "b")
	q.push(1, "a2")
	var got []string
	for {
		_, v, ok := q.pop()
		if !ok {
			break
		}
		got = append(got, v)
	}
	if want := []string{"a1", "a2", "b", "c"}; !reflect.DeepEqual(got, want) {
		t.Errorf("order = %v, want %v", got, want)
	}
}

func TestDurationStats(t *testing.T) {
	s := newDurationStats(time.Millisecond)
	for i := 1; i <= 1000; i++ {
		s.add(time.Duration(i) * time.Millisecond)
	}
	if s.mean() != 500500*time.Microsecond || s.max != time.Second {
		t.Errorf("mean %v, max %v", s.mean(), s.max)
	}
	if q := s.quantile(0.99); q < 990*time.Millisecond || q > 992*time.Millisecond {
		t.Errorf("p99 = %v, want 990ms within a bucket or two", q)
	}
}

// BenchmarkRunDissemination times the runs quoted for the dissemination
// figures: window 16, 200 measured intervals, default warmup.
func BenchmarkRunDissemination(b *testing.B) {
	for _, n := range []int{16, 64, 256, 1024} {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			for b.Loop() {
				r, err := RunDissemination(DisseminationConfig{Nodes: n, Window: 16, Intervals: 200, Seed: 1})
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(r.MeanAge.Seconds(), "mean-age-s")
				b.ReportMetric(r.BytesPerNodePerSec, "B/node/s")
			}
		})
	}
}
