package sim

import "time"

// durationStats summarises millions of durations (mean, 99th percentile, max)
// in memory bounded by the largest value over the resolution, instead of
// keeping every sample to sort.
type durationStats struct {
	res   time.Duration // bucket width: the percentile's precision
	count uint64
	sum   float64 // nanoseconds; an int64 would overflow on long, large runs
	max   time.Duration
	hist  []uint64
}

func newDurationStats(res time.Duration) durationStats {
	return durationStats{res: max(res, 1)}
}

func (s *durationStats) add(d time.Duration) {
	d = max(d, 0)
	s.count++
	s.sum += float64(d)
	s.max = max(s.max, d)
	b := int(d / s.res)
	if b >= len(s.hist) {
		s.hist = append(s.hist, make([]uint64, b+1-len(s.hist))...)
	}
	s.hist[b]++
}

func (s *durationStats) mean() time.Duration {
	if s.count == 0 {
		return 0
	}
	return time.Duration(s.sum / float64(s.count))
}

// quantile is the upper edge of the bucket holding the q-quantile, capped at
// the maximum seen.
func (s *durationStats) quantile(q float64) time.Duration {
	if s.count == 0 {
		return 0
	}
	rank := uint64(q * float64(s.count))
	var seen uint64
	for b, n := range s.hist {
		seen += n
		if seen > rank {
			return min(time.Duration(b+1)*s.res, s.max)
		}
	}
	return s.max
}
