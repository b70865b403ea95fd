package gossip

import (
	"testing"

	"github.com/mosaic-cluster/mosaic/internal/peerpb"
)

func names(us []*peerpb.MemberUpdate) []string {
	var out []string
	for _, u := range us {
		out = append(out, u.Name)
	}
	return out
}

func TestBroadcastQueueSendsLeastTransmittedFirst(t *testing.T) {
	q := newBroadcastQueue()
	q.push(upd("a", alive, 1))
	q.push(upd("b", alive, 1))
	if got := names(q.take(1, 10)); len(got) != 1 {
		t.Fatalf("take(1) = %v", got)
	}
	q.push(upd("c", alive, 1))
	// c and one of a/b have never been sent; they go before the one sent once.
	got := names(q.take(2, 10))
	if len(got) != 2 || got[0] != "c" {
		t.Fatalf("take(2) = %v, want c and the unsent one of a, b", got)
	}
	third := names(q.take(3, 10))
	if len(third) != 3 {
		t.Errorf("take(3) = %v, want all three", third)
	}
}

func TestBroadcastQueueReplacesOlderNewsAboutTheSameMember(t *testing.T) {
	q := newBroadcastQueue()
	q.push(upd("a", alive, 1))
	q.take(1, 10)
	q.push(upd("a", suspect, 1))
	got := q.take(10, 10)
	if len(got) != 1 || got[0].State != suspect {
		t.Fatalf("take = %v, want only the SUSPECT", got)
	}
	if q.len() != 1 {
		t.Errorf("len = %d, want 1", q.len())
	}
}

func TestBroadcastQueueDropsAfterLimit(t *testing.T) {
	q := newBroadcastQueue()
	q.push(upd("a", alive, 1))
	for i := range 3 {
		if got := q.take(5, 3); len(got) != 1 {
			t.Fatalf("transmission %d: take = %v", i+1, got)
		}
	}
	if got := q.take(5, 3); len(got) != 0 || q.len() != 0 {
		t.Errorf("after the limit: take = %v, len = %d", got, q.len())
	}
}

func TestBroadcastQueueSweepsTombstones(t *testing.T) {
	q := newBroadcastQueue()
	for i := range 1000 {
		q.push(upd("a", alive, uint64(i)))
	}
	if q.len() != 1 || q.tombs > 64 {
		t.Errorf("len = %d, tombstones = %d after 1000 replacements", q.len(), q.tombs)
	}
	total := 0
	for _, lv := range q.levels {
		total += len(lv)
	}
	if total > 200 {
		t.Errorf("queue holds %d entries for one live update", total)
	}
}
