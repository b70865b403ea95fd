// Package load measures a node's load the MOSIX way: the run queue is
// sampled several times a second, averaged over a period, smoothed so that
// it rises fast and decays slowly, and normalized by the node's capacity.
//
// The smoothing rules and constants are MOSIX's, as kept in Kerrighed's
// simplified MOSIX probe: a load exported to other nodes (jumps up to a
// new higher value at once, otherwise decays as (7·old + new)/8 per second:
// other nodes see a burst immediately and are slow to believe it is over,
// so they do not all rush to a node that was briefly idle) and a load used
// locally (rises as (5·old + 3·new)/8 per second, drops at once: a node does
// not send work away because of a brief spike).
package load

import (
	"math"
	"time"
)

// Meter turns run-queue samples into smoothed loads. It is pure: the caller
// supplies samples and the time; Meter reads no clock.
type Meter struct {
	period time.Duration // how often the smoothed loads are updated (MOSIX: 1 s)

	sum         float64
	n           int
	periodStart time.Time

	export float64
	local  float64
}

// NewMeter returns a Meter whose first period starts at start and that
// updates its loads every period.
func NewMeter(period time.Duration, start time.Time) *Meter {
	if period <= 0 {
		period = time.Second
	}
	return &Meter{period: period, periodStart: start}
}

// Sample records the run-queue length seen at now. It reports whether a
// period ended and the loads were updated.
func (m *Meter) Sample(now time.Time, runQueue float64) bool {
	m.sum += runQueue
	m.n++
	elapsed := now.Sub(m.periodStart)
	if elapsed < m.period {
		return false
	}
	avg := m.sum / float64(m.n)
	m.sum, m.n, m.periodStart = 0, 0, now
	m.update(avg, elapsed)
	return true
}

// update applies the MOSIX smoothing for a period of length dt, scaling
// the per-second weights so that the result does not depend on the period.
func (m *Meter) update(avg float64, dt time.Duration) {
	secs := dt.Seconds()
	if avg >= m.export {
		m.export = avg
	} else {
		keep := math.Pow(7.0/8.0, secs)
		m.export = keep*m.export + (1-keep)*avg
	}
	if avg <= m.local {
		m.local = avg
	} else {
		keep := math.Pow(5.0/8.0, secs)
		m.local = keep*m.local + (1-keep)*avg
	}
}

// Export is the load to tell other nodes (rises fast, decays slowly).
func (m *Meter) Export() float64 { return m.export }

// Local is the load this node uses for its own decisions (rises slowly,
// drops fast).
func (m *Meter) Local() float64 { return m.local }

// Normalize turns a run-queue length into a load: runnable processes per
// unit of capacity, where a unit is one core of reference speed. capacity
// is in cores (the cgroup quota, or the number of cores); speed is relative
// to the reference (1.0). A node with one busy process on one reference
// core has load 1; on half a core, 2.
func Normalize(runQueue, capacity, speed float64) float64 {
	if capacity <= 0 {
		capacity = 1
	}
	if speed <= 0 {
		speed = 1
	}
	return runQueue / (capacity * speed)
}
