package gossip

import (
	"math/rand/v2"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/peerpb"
)

// Core is one node's protocol state. It is not safe for concurrent use: the
// daemon serialises calls (one goroutine, or a mutex), the simulator calls it
// from its event loop. Every method that may produce traffic returns the
// messages to send; nothing is sent behind the caller's back.
type Core struct {
	cfg Config
	rng *rand.Rand

	self    *member
	members map[string]*member
	order   []*member // members in the order learnt: deterministic iteration
	nonLeft int       // members not LEFT, self included: the n of the formulas
	leaving bool

	suspects   map[string]time.Time // SUSPECT members and when they become DEAD
	suspectMin time.Time            // no deadline in suspects is earlier

	prober

	nextPushPull  time.Time
	nextReconnect time.Time
	nextRepair    time.Time // earliest next repair sync (see repair)

	broadcasts broadcastQueue
	loads      loadTable
	events     []Event

	out     []Message
	scratch []*member

	// stepFrom and stepFromAddr name the sender of the message being
	// stepped, so that an answer can reach a sender not known yet.
	stepFrom, stepFromAddr string
}

// Message is one envelope to send. To is the receiver's name, or "" when only
// its address is known (a seed); Addr is where to send it, "" when the receiver
// is a sender we have not learnt the address of and that did not say it
// (drop it).
type Message struct {
	To   string
	Addr string
	Env  *peerpb.Envelope
}

// LoadView is one load report with its age as seen now.
type LoadView struct {
	Report *peerpb.LoadReport // a copy; AgeMs is the age in milliseconds
	Age    time.Duration
}

// seedStream fixes the second PCG word so that Config.Seed alone decides the
// sequence.
const seedStream = 0x6d6f73616963 // "mosaic"

// New returns the state of a node that knows only itself, at time now. It queues
// an ALIVE about itself, so its first messages announce it.
func New(cfg Config, now time.Time) (*Core, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	c := &Core{
		cfg:        cfg,
		rng:        rand.New(rand.NewPCG(uint64(cfg.Seed), seedStream)),
		members:    make(map[string]*member),
		suspects:   make(map[string]time.Time),
		broadcasts: newBroadcastQueue(),
		loads:      newLoadTable(cfg.Name, cfg.WindowSize),
	}
	c.prober = newProber()
	c.self = &member{name: cfg.Name, addr: cfg.Addr, state: peerpb.State_ALIVE, inc: cfg.Incarnation, meta: cfg.Meta, since: now}
	c.members[cfg.Name] = c.self
	c.order = append(c.order, c.self)
	c.nonLeft = 1
	c.broadcasts.push(c.self.record())
	// Stagger the periodic syncs so that nodes started together do not sync in
	// lockstep.
	c.nextPushPull = now.Add(c.stagger(cfg.PushPullInterval))
	c.nextReconnect = now.Add(c.stagger(cfg.ReconnectInterval))
	return c, nil
}

// stagger is a random offset in [0, period), or 0 for a disabled period.
func (c *Core) stagger(period time.Duration) time.Duration {
	if period <= 0 {
		return 0
	}
	return time.Duration(c.rng.Int64N(int64(period)))
}

// Tick advances timers to now: probes, indirect probes, suspicion expiry, load
// expiry, push-pull and reconnect. Call it often (every 50–100 ms); between
// deadlines it costs a few comparisons. A node that has left does nothing.
func (c *Core) Tick(now time.Time) []Message {
	if c.leaving {
		return nil
	}
	if len(c.relays) > 0 {
		c.expireRelays(now)
	}
	c.expireSuspicions(now)
	c.loads.expire(now, c.cfg.LoadExpiry)
	c.probeTick(now)
	c.syncTick(now)
	return c.flush()
}

// Step handles one incoming envelope whose From the caller has authenticated.
// Piggybacked news is merged first, so the rest of the message is read with
// the sender's latest state known. Step may keep parts of env (updates are
// forwarded as they came): the caller must not modify env afterwards.
func (c *Core) Step(now time.Time, env *peerpb.Envelope) []Message {
	if env == nil || env.From == "" || env.From == c.cfg.Name {
		return nil
	}
	c.stepFrom, c.stepFromAddr = env.From, env.FromAddr
	defer func() { c.stepFrom, c.stepFromAddr = "", "" }()
	o := viaGossip
	if env.Kind == peerpb.Kind_PUSH_PULL || env.Kind == peerpb.Kind_PUSH_PULL_REPLY {
		o = viaSync
	}
	for _, u := range env.Updates {
		c.apply(now, u, o, env.From)
	}
	unknown := c.members[env.From] == nil
	switch env.Kind {
	case peerpb.Kind_PING:
		if c.mergeLoads(now, env.Loads) {
			unknown = true
		}
		// A relayed PING names its original requester in Target; the ACK
		// echoes it.
		c.sendTo(env.From, &peerpb.Envelope{Kind: peerpb.Kind_ACK, Seq: env.Seq, Target: env.Target})
	case peerpb.Kind_ACK:
		c.handleAck(env)
	case peerpb.Kind_PING_REQ:
		c.handlePingReq(now, env)
	case peerpb.Kind_PUSH_PULL:
		c.sendTable(env.From, c.addrOf(env.From), peerpb.Kind_PUSH_PULL_REPLY)
		unknown = false // the table just merged is the repair
	case peerpb.Kind_PUSH_PULL_REPLY:
		unknown = false
	}
	if unknown {
		c.repair(now, env.From)
	}
	return c.flush()
}

// SetLocalLoad records this node's own fresh load report, measured now. The
// next PING carries it with age zero.
func (c *Core) SetLocalLoad(now time.Time, r *peerpb.LoadReport) {
	if r == nil {
		return
	}
	c.loads.put(&peerpb.LoadReport{Node: c.cfg.Name, Load: r.Load, FreeMem: r.FreeMem, Procs: r.Procs}, now, 0)
}

// SetMeta changes what this node announces about itself: it takes a new
// incarnation, since only a higher incarnation can carry changed meta.
func (c *Core) SetMeta(meta *peerpb.NodeMeta) {
	if c.leaving {
		return
	}
	c.self.meta = meta
	c.bumpIncarnation(c.self.inc + 1)
}

// Loads returns every known load report, own included, with its age now,
// sorted by node name.
func (c *Core) Loads(now time.Time) []LoadView { return c.loads.all(now) }

// LoadAge is the age now of the report held about node, without copying it:
// the cheap question a placement policy or the simulator asks per candidate.
func (c *Core) LoadAge(now time.Time, node string) (time.Duration, bool) {
	e := c.loads.entries[node]
	if e == nil {
		return 0, false
	}
	return now.Sub(e.at), true
}

// mergeLoads takes in the load window of a PING: each report about a live member
// other than us that is fresher than ours. It reports whether the window named
// a node we do not know. The table only ever holds entries of known members that
// are not gone (entries are dropped when members go), so a held entry needs no
// membership check: the common case is one map lookup.
func (c *Core) mergeLoads(now time.Time, reports []*peerpb.LoadReport) (unknown bool) {
	for _, r := range reports {
		if r == nil || r.Node == "" || r.Node == c.cfg.Name {
			continue
		}
		e := c.loads.entries[r.Node]
		if e == nil {
			m := c.members[r.Node]
			if m == nil {
				unknown = true // cannot be reached until we learn its address
				continue
			}
			if gone(m.state) {
				continue // not offered work until it is back
			}
		}
		c.loads.update(e, r, now.Add(-time.Duration(r.AgeMs)*time.Millisecond), c.echoMargin())
	}
	return unknown
}

// echoMargin is how much younger than ours a relayed report must look to be
// taken as a newer one: a tenth of an interval, far above the error that hops
// add, far below the interval between a node's own reports.
func (c *Core) echoMargin() time.Duration { return c.cfg.Interval / 10 }

// Leave marks this node LEFT at its current incarnation and tells up to
// max(3, IndirectChecks) alive members directly, as PINGs carrying the news;
// the rest learn it by gossip from them. Afterwards Tick does nothing and no
// news about ourselves is refuted. The caller should keep answering Step for a
// moment, so that ACKs spread the news further, then stop.
func (c *Core) Leave(now time.Time) []Message {
	if c.leaving {
		return nil
	}
	c.leaving = true
	c.self.from = ""
	c.setState(now, c.self, peerpb.State_LEFT)
	left := c.self.record()
	c.broadcasts.push(left)
	for _, m := range c.randomMembers(max(3, c.cfg.IndirectChecks), peerpb.State_ALIVE, "") {
		c.seq++
		c.send(m.name, m.addr, &peerpb.Envelope{Kind: peerpb.Kind_PING, Seq: c.seq}, left)
	}
	return c.flush()
}

// sendTo answers a peer by name, at the address we know for it.
func (c *Core) sendTo(name string, env *peerpb.Envelope) {
	c.send(name, c.addrOf(name), env, nil)
}

// send fills in From and the piggybacked updates (first, if not nil; then the
// least-transmitted queued ones) and queues the message.
func (c *Core) send(to, addr string, env *peerpb.Envelope, first *peerpb.MemberUpdate) {
	env.From = c.cfg.Name
	env.FromAddr = c.cfg.Addr
	if first == nil {
		env.Updates = c.broadcasts.take(c.cfg.MaxPiggyback, c.cfg.retransmitLimit(c.nonLeft))
	} else {
		env.Updates = append(env.Updates, first)
		for _, u := range c.broadcasts.take(c.cfg.MaxPiggyback-1, c.cfg.retransmitLimit(c.nonLeft)) {
			if u != first {
				env.Updates = append(env.Updates, u)
			}
		}
	}
	c.out = append(c.out, Message{To: to, Addr: addr, Env: env})
}

func (c *Core) addrOf(name string) string {
	if m := c.members[name]; m != nil {
		return m.addr
	}
	if name != "" && name == c.stepFrom {
		// A sender we do not know yet: answer where it says it listens
		// (the transport checks it is that node).
		return c.stepFromAddr
	}
	return ""
}

func (c *Core) flush() []Message {
	out := c.out
	c.out = nil
	return out
}

// randomMembers picks up to k distinct members in state st, never ourselves or
// except, uniformly at random. It scans the table: it runs on failed probes,
// leaves and syncs, not per message.
func (c *Core) randomMembers(k int, st peerpb.State, except string) []*member {
	cand := c.scratch[:0]
	for _, m := range c.order {
		if m != c.self && m.state == st && m.name != except {
			cand = append(cand, m)
		}
	}
	k = min(k, len(cand))
	for i := 0; i < k; i++ {
		j := i + c.rng.IntN(len(cand)-i)
		cand[i], cand[j] = cand[j], cand[i]
	}
	out := append([]*member(nil), cand[:k]...)
	clear(cand)
	c.scratch = cand[:0]
	return out
}
