package gossip

import "github.com/mosaic-cluster/mosaic/internal/peerpb"

// broadcastQueue holds the membership updates waiting to be piggybacked. SWIM
// spreads news by attaching it to messages that are sent anyway, so the queue
// decides what rides along: the least-transmitted updates first (fresh news
// travels before news everybody has heard), at most one update per member (a
// newer one replaces the older, which is obsolete), and each update only until it
// has been sent retransmitLimit(n) times, by which time gossip has reached every
// member with high probability.
//
// Updates sit in levels by transmission count, so taking k of them costs O(k)
// rather than a sort of the whole queue; a replaced update stays behind as a
// tombstone that is skipped when reached and swept when tombstones outnumber the
// live entries.
type broadcastQueue struct {
	byName map[string]*queued
	levels [][]*queued // levels[t]: updates sent t times; the newest is taken first
	live   int
	tombs  int
}

type queued struct {
	u    *peerpb.MemberUpdate
	sent int
	gone bool // replaced by a newer update or dropped
}

func newBroadcastQueue() broadcastQueue {
	return broadcastQueue{byName: make(map[string]*queued)}
}

// push queues u, replacing any queued update about the same member. The caller
// must not modify u afterwards: it is shared by every message that carries it.
func (q *broadcastQueue) push(u *peerpb.MemberUpdate) {
	if old := q.byName[u.Name]; old != nil {
		old.gone = true
		q.live--
		q.tombs++
	}
	it := &queued{u: u}
	q.byName[u.Name] = it
	if len(q.levels) == 0 {
		q.levels = append(q.levels, nil)
	}
	q.levels[0] = append(q.levels[0], it)
	q.live++
	if q.tombs > 64 && q.tombs > q.live {
		q.sweep()
	}
}

// take returns up to max updates to piggyback on one message, least transmitted
// first, counting the transmission and dropping updates that reach limit.
func (q *broadcastQueue) take(max, limit int) []*peerpb.MemberUpdate {
	if q.live == 0 || max <= 0 {
		return nil
	}
	out := make([]*peerpb.MemberUpdate, 0, min(max, q.live))
	var moved []*queued
	for t := 0; t < len(q.levels) && len(out) < max; t++ {
		lv := q.levels[t]
		for len(lv) > 0 && len(out) < max {
			it := lv[len(lv)-1]
			lv = lv[:len(lv)-1]
			if it.gone {
				q.tombs--
				continue
			}
			if it.sent >= limit { // the limit shrank with the cluster
				q.drop(it)
				continue
			}
			out = append(out, it.u)
			it.sent++
			if it.sent >= limit {
				q.drop(it)
				continue
			}
			moved = append(moved, it)
		}
		q.levels[t] = lv
	}
	for _, it := range moved {
		for len(q.levels) <= it.sent {
			q.levels = append(q.levels, nil)
		}
		q.levels[it.sent] = append(q.levels[it.sent], it)
	}
	return out
}

// drop forgets an update that has been sent enough times.
func (q *broadcastQueue) drop(it *queued) {
	if q.byName[it.u.Name] == it {
		delete(q.byName, it.u.Name)
	}
	it.gone = true
	q.live--
}

// sweep removes tombstones so that a long run of replacements cannot grow the
// queue without bound.
func (q *broadcastQueue) sweep() {
	for t, lv := range q.levels {
		kept := lv[:0]
		for _, it := range lv {
			if !it.gone {
				kept = append(kept, it)
			}
		}
		clear(lv[len(kept):])
		q.levels[t] = kept
	}
	q.tombs = 0
}

// len is the number of updates still waiting to be sent.
func (q *broadcastQueue) len() int { return q.live }
