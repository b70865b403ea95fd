package daemon

import (
	"context"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/mosaic-cluster/mosaic/internal/gossip"
	"github.com/mosaic-cluster/mosaic/internal/load"
	"github.com/mosaic-cluster/mosaic/internal/peerpb"
)

// tickEvery is how often the gossip core is ticked: fine enough for its
// timeouts (half an interval by default) to fire on time.
const tickEvery = 100 * time.Millisecond

// gossipLoop drives the gossip core's timers and logs membership changes.
func (d *Daemon) gossipLoop(ctx context.Context) error {
	t := time.NewTicker(tickEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			d.mu.Lock()
			msgs := d.core.Tick(now)
			events := d.core.Events()
			d.mu.Unlock()
			d.send(msgs)
			for _, e := range events {
				d.logEvent(e)
			}
		}
	}
}

func (d *Daemon) logEvent(e gossip.Event) {
	switch {
	case e.Discovered:
		d.log.Info("member discovered", "member", e.Name, "state", stateName(e.New), "incarnation", e.Incarnation)
	case e.Old == e.New:
		d.log.Info("member restarted", "member", e.Name, "state", stateName(e.New), "incarnation", e.Incarnation)
	default:
		d.log.Info("member "+stateName(e.New), "member", e.Name, "was", stateName(e.Old), "incarnation", e.Incarnation, "by", e.From)
	}
	if e.New == peerpb.State_ALIVE {
		d.pool.revived(e.Name)
	}
	if e.New == peerpb.State_DEAD || e.New == peerpb.State_LEFT {
		d.pool.forget(e.Name)
		if e.Discovered {
			// First heard of as gone (a newcomer's list names members
			// it has not heard from yet, incarnation 0): nothing this
			// node holds saw it go. A process its home started here
			// meanwhile, over a live stream, must not be killed for it
			// (one was, 0.1 s after the node joined, 1 ms before the
			// home was heard of as alive).
			return
		}
		d.home.NodeDown(e.Name)
		d.exec.HomeDown(e.Name)
		d.spares.drop(e.Name)
	}
}

// receive hands an authenticated message to the core.
func (d *Daemon) receive(env *peerpb.Envelope) {
	d.mu.Lock()
	msgs := d.core.Step(time.Now(), env)
	d.mu.Unlock()
	d.send(msgs)
}

// send delivers messages without blocking the caller. Gossip is one-way
// and tolerates loss, so a failed send is only logged.
func (d *Daemon) send(msgs []gossip.Message) { d.deliver(msgs, nil) }

// deliver sends msgs, each in its own goroutine, counted in d.sends and,
// when given, in these: a caller that waits for its own messages must not
// wait on d.sends while gossip still arrives, since a WaitGroup may not
// grow from zero during a Wait.
func (d *Daemon) deliver(msgs []gossip.Message, these *sync.WaitGroup) {
	for _, m := range msgs {
		if m.Addr == "" {
			continue // a receiver whose address nobody told us
		}
		d.gossipBytes.Add(uint64(proto.Size(m.Env)))
		d.gossipMsgs.Add(1)
		d.sends.Add(1)
		if these != nil {
			these.Add(1)
		}
		go func() {
			defer d.sends.Done()
			if these != nil {
				defer these.Done()
			}
			conn, err := d.pool.conn(m.To, m.Addr)
			if err != nil {
				d.log.Debug("gossip", "to", m.To, "addr", m.Addr, "err", err)
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), d.cfg.Interval)
			defer cancel()
			if _, err := peerpb.NewPeerClient(conn).Gossip(ctx, m.Env); err != nil {
				d.log.Debug("gossip", "to", m.To, "addr", m.Addr, "kind", m.Env.Kind.String(), "err", err)
			}
		}()
	}
}

// sampleLoop samples the run queue several times a second and, every
// period, hands the smoothed load to the gossip core.
func (d *Daemon) sampleLoop(ctx context.Context) error {
	meter := load.NewMeter(d.cfg.Interval, time.Now())
	capacity := d.cfg.Capacity
	if capacity <= 0 {
		capacity = float64(d.cores)
	}
	t := time.NewTicker(d.cfg.SampleInterval)
	defer t.Stop()
	d.publishLoad(time.Now(), meter, capacity, 0)
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			q, err := d.probe.RunQueue()
			if err != nil {
				d.log.Warn("sample run queue", "err", err)
				continue
			}
			if meter.Sample(now, float64(q)) {
				d.publishLoad(now, meter, capacity, q)
			}
		}
	}
}

func (d *Daemon) publishLoad(now time.Time, meter *load.Meter, capacity float64, q int) {
	procs, err := d.probe.Procs()
	if err != nil {
		d.log.Warn("count processes", "err", err)
	}
	total, free, err := d.probe.Memory()
	if err != nil {
		d.log.Warn("read memory", "err", err)
	}
	rep := &peerpb.LoadReport{
		Node:    d.node.Name,
		Load:    load.Normalize(meter.Export(), capacity, d.speed),
		FreeMem: free,
		Procs:   uint32(procs),
	}
	d.mu.Lock()
	d.self = selfLoad{
		export: rep.Load, local: load.Normalize(meter.Local(), capacity, d.speed),
		runQueue: q, procs: procs, memTotal: total, memFree: free,
	}
	d.core.SetLocalLoad(now, rep)
	d.mu.Unlock()
}
