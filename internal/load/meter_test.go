package load

import (
	"math"
	"testing"
	"time"
)

func feed(m *Meter, start time.Time, seconds int, q float64) time.Time {
	t := start
	for range seconds * 4 {
		t = t.Add(250 * time.Millisecond)
		m.Sample(t, q)
	}
	return t
}

func TestExportRisesAtOnceAndDecaysSlowly(t *testing.T) {
	m := NewMeter(time.Second, time.Unix(0, 0))
	t0 := time.Unix(0, 0)
	now := feed(m, t0, 2, 3)
	if m.Export() != 3 {
		t.Fatalf("export after a burst of 3 = %v, want 3 at once", m.Export())
	}
	now = feed(m, now, 1, 0)
	if got, want := m.Export(), 3*7.0/8.0; math.Abs(got-want) > 1e-9 {
		t.Fatalf("export one second after the burst = %v, want %v", got, want)
	}
	feed(m, now, 10, 0)
	if m.Export() <= 0 || m.Export() > 3*math.Pow(7.0/8.0, 11)+1e-9 {
		t.Fatalf("export 11 s after = %v, want decayed to 3*(7/8)^11", m.Export())
	}
}

func TestLocalRisesSlowlyAndDropsAtOnce(t *testing.T) {
	m := NewMeter(time.Second, time.Unix(0, 0))
	now := feed(m, time.Unix(0, 0), 1, 8)
	if got, want := m.Local(), 8*3.0/8.0; math.Abs(got-want) > 1e-9 {
		t.Fatalf("local after one second at 8 = %v, want %v", got, want)
	}
	feed(m, now, 1, 1)
	if m.Local() != 1 {
		t.Fatalf("local after the load fell to 1 = %v, want 1 at once", m.Local())
	}
}

func TestPeriodIndependence(t *testing.T) {
	// Two half-second periods of decay equal one second of decay.
	a, b := NewMeter(time.Second, time.Unix(0, 0)), NewMeter(500*time.Millisecond, time.Unix(0, 0))
	a.update(4, time.Second)
	b.update(4, 500*time.Millisecond)
	a.update(0, time.Second)
	b.update(0, 500*time.Millisecond)
	b.update(0, 500*time.Millisecond)
	if math.Abs(a.Export()-b.Export()) > 1e-9 {
		t.Fatalf("export depends on the period: %v vs %v", a.Export(), b.Export())
	}
}

func TestNormalize(t *testing.T) {
	cases := []struct{ q, capacity, speed, want float64 }{
		{1, 1, 1, 1},
		{1, 0.5, 1, 2},
		{2, 2, 1, 1},
		{1, 1, 2, 0.5},
		{1, 0, 0, 1}, // unknown capacity and speed count as one reference core
	}
	for _, c := range cases {
		if got := Normalize(c.q, c.capacity, c.speed); got != c.want {
			t.Errorf("Normalize(%v, %v, %v) = %v, want %v", c.q, c.capacity, c.speed, got, c.want)
		}
	}
}
