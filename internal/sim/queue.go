package sim

import "cmp"

// eventQueue is a priority queue of events ordered by virtual time, then by
// insertion order, so that simultaneous events run in a deterministic order. It
// is a hand-rolled binary heap: container/heap's interface calls cost a third
// of a large simulation's time.
//
// K is the type of virtual time: time.Duration for the protocol simulations,
// float64 seconds for the job study (whose heavy-tailed jobs outlast what a
// Duration can count).
type eventQueue[K cmp.Ordered, T any] struct {
	items []queued[K, T]
	seq   uint64
}

type queued[K cmp.Ordered, T any] struct {
	at  K
	seq uint64
	v   T
}

func (q *eventQueue[K, T]) less(i, j int) bool {
	a, b := &q.items[i], &q.items[j]
	if a.at != b.at {
		return a.at < b.at
	}
	return a.seq < b.seq
}

// push schedules v at virtual time at.
func (q *eventQueue[K, T]) push(at K, v T) {
	q.seq++
	q.items = append(q.items, queued[K, T]{at: at, seq: q.seq, v: v})
	for i := len(q.items) - 1; i > 0; {
		p := (i - 1) / 2
		if !q.less(i, p) {
			break
		}
		q.items[i], q.items[p] = q.items[p], q.items[i]
		i = p
	}
}

// pop removes and returns the earliest event; ok is false when none is left.
func (q *eventQueue[K, T]) pop() (at K, v T, ok bool) {
	n := len(q.items)
	if n == 0 {
		return at, v, false
	}
	top := q.items[0]
	q.items[0] = q.items[n-1]
	q.items[n-1] = queued[K, T]{}
	q.items = q.items[:n-1]
	n--
	for i := 0; ; {
		l := 2*i + 1
		if l >= n {
			break
		}
		m := l
		if r := l + 1; r < n && q.less(r, l) {
			m = r
		}
		if !q.less(m, i) {
			break
		}
		q.items[i], q.items[m] = q.items[m], q.items[i]
		i = m
	}
	return top.at, top.v, true
}

// peek is the time and sequence number of the earliest event; ok is false
// when none is left.
func (q *eventQueue[K, T]) peek() (at K, seq uint64, ok bool) {
	if len(q.items) == 0 {
		return at, 0, false
	}
	return q.items[0].at, q.items[0].seq, true
}

// nextSeq takes a sequence number, for an event kept outside the queue
// that must be ordered with the queued ones.
func (q *eventQueue[K, T]) nextSeq() uint64 {
	q.seq++
	return q.seq
}

func (q *eventQueue[K, T]) len() int { return len(q.items) }
