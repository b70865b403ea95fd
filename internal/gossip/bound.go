package gossip

import "time"

// DeadBound is the longest a crashed member of a cluster of n members can
// stay ALIVE or SUSPECT in the view of any live member, absent message
// loss: every live member probes every other within two passes of its
// shuffled probe list (2(n-1) intervals, counting the interval the probe
// stays unanswered), then waits the suspicion timeout; one more interval
// covers tick granularity. Gossip from the other members usually makes it
// much sooner. With the defaults and n = 4 it is 11 s.
func DeadBound(cfg Config, n int) time.Duration {
	if cfg.Interval <= 0 {
		cfg.Interval = defaultInterval
	}
	if cfg.SuspicionMult <= 0 {
		cfg.SuspicionMult = defaultSuspicionMult
	}
	n = max(n, 2)
	return time.Duration(2*(n-1)+1)*cfg.Interval + cfg.suspicionTimeout(n)
}
