package gossip

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/peerpb"
)

// Config says who this node is and how fast the protocol runs. A zero duration or
// count means "use the default"; New fills the defaults in and rejects what cannot
// work.
type Config struct {
	Name        string           // this node's name, unique in the cluster
	Addr        string           // host:port peers reach it at
	Meta        *peerpb.NodeMeta // announced with every ALIVE about this node
	Incarnation uint64           // starting incarnation; the caller persists it and bumps it at each start

	Interval       time.Duration // probe and load-dissemination period (default 1s)
	PingTimeout    time.Duration // wait for a direct ACK before asking others (default Interval/2)
	IndirectChecks int           // members asked to probe on our behalf (default 3)
	SuspicionMult  int           // suspicion timeout = mult * max(1, log10(n)) * Interval (default 4)
	RetransmitMult int           // an update is piggybacked up to mult*ceil(log10(n+1)) times (default 4)
	MaxPiggyback   int           // updates per message (default 16)

	WindowSize int           // load entries sent per PING, own entry included (default 16)
	LoadExpiry time.Duration // load reports older than this are dropped; 0 = never

	// PushPullInterval is the period of a full-state sync with one random alive
	// member (default 30s; negative disables). Like memberlist, the period is
	// stretched for clusters above 32 members (see pushPullPeriod) so that the
	// full tables, whose size grows with n, do not dominate the traffic.
	PushPullInterval time.Duration
	// ReconnectInterval is the period of a push-pull with one random DEAD (not
	// LEFT) member, to heal partitions and to tell a restarted node what we
	// thought of it (default 30s; negative disables).
	ReconnectInterval time.Duration

	Seed int64 // seeds the core's random choices (probe order, helpers, sync partners)
}

const (
	defaultInterval       = time.Second
	defaultIndirectChecks = 3
	defaultSuspicionMult  = 4
	defaultRetransmitMult = 4
	defaultMaxPiggyback   = 16
	defaultWindowSize     = 16
	defaultSyncInterval   = 30 * time.Second

	// pushPullScaleThreshold is the cluster size above which the push-pull
	// period grows with log2(n), as in memberlist.
	pushPullScaleThreshold = 32
)

// withDefaults returns the configuration with every unset field filled in, or an
// error naming the field to fix.
func (c Config) withDefaults() (Config, error) {
	if c.Name == "" {
		return c, errors.New("gossip config: Name is empty; set it to this node's name")
	}
	if c.Addr == "" {
		return c, fmt.Errorf("gossip config for %q: Addr is empty; set it to the host:port peers reach this node at", c.Name)
	}
	neg := func(field string, v int64) error {
		if v < 0 {
			return fmt.Errorf("gossip config for %q: %s is negative (%d); use 0 for the default", c.Name, field, v)
		}
		return nil
	}
	for _, err := range []error{
		neg("Interval", int64(c.Interval)),
		neg("PingTimeout", int64(c.PingTimeout)),
		neg("IndirectChecks", int64(c.IndirectChecks)),
		neg("SuspicionMult", int64(c.SuspicionMult)),
		neg("RetransmitMult", int64(c.RetransmitMult)),
		neg("MaxPiggyback", int64(c.MaxPiggyback)),
		neg("WindowSize", int64(c.WindowSize)),
		neg("LoadExpiry", int64(c.LoadExpiry)),
	} {
		if err != nil {
			return c, err
		}
	}
	if c.Interval == 0 {
		c.Interval = defaultInterval
	}
	if c.PingTimeout == 0 {
		c.PingTimeout = c.Interval / 2
	}
	if c.PingTimeout >= c.Interval {
		return c, fmt.Errorf("gossip config for %q: PingTimeout %v is not shorter than Interval %v; the indirect probe needs the rest of the interval", c.Name, c.PingTimeout, c.Interval)
	}
	if c.IndirectChecks == 0 {
		c.IndirectChecks = defaultIndirectChecks
	}
	if c.SuspicionMult == 0 {
		c.SuspicionMult = defaultSuspicionMult
	}
	if c.RetransmitMult == 0 {
		c.RetransmitMult = defaultRetransmitMult
	}
	if c.MaxPiggyback == 0 {
		c.MaxPiggyback = defaultMaxPiggyback
	}
	if c.WindowSize == 0 {
		c.WindowSize = defaultWindowSize
	}
	if c.PushPullInterval == 0 {
		c.PushPullInterval = defaultSyncInterval
	}
	if c.ReconnectInterval == 0 {
		c.ReconnectInterval = defaultSyncInterval
	}
	return c, nil
}

// suspicionTimeout is how long a SUSPECT member has to refute before it is
// declared DEAD. It grows with log10(n) because the suspicion needs about log(n)
// rounds of gossip to reach the suspect, which must hear of it to refute.
func (c *Config) suspicionTimeout(n int) time.Duration {
	scale := math.Max(1, math.Log10(math.Max(1, float64(n))))
	return time.Duration(float64(c.SuspicionMult) * scale * float64(c.Interval))
}

// retransmitLimit is how many times one update is piggybacked. Gossip to a few
// random members per round reaches everyone in O(log n) rounds with high
// probability, so the limit grows with log10(n+1) (and is at least one).
func (c *Config) retransmitLimit(n int) int {
	l := c.RetransmitMult * int(math.Ceil(math.Log10(float64(n+1))))
	return max(l, 1)
}

// pushPullPeriod stretches PushPullInterval for large clusters the way
// memberlist does: a full table costs O(n) bytes, so above 32 members the period
// grows by one interval per doubling of the cluster, keeping the sync traffic per
// node close to flat. Piggybacking, not push-pull, carries the news.
func (c *Config) pushPullPeriod(n int) time.Duration {
	if n <= pushPullScaleThreshold {
		return c.PushPullInterval
	}
	mult := math.Ceil(math.Log2(float64(n))-math.Log2(pushPullScaleThreshold)) + 1
	return time.Duration(mult) * c.PushPullInterval
}
