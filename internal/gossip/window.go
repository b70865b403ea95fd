package gossip

import (
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/peerpb"
)

// loadTable keeps every load report this node knows, and the MOSIX window: the
// few freshest reports about other nodes, which are what a PING carries.
//
// Reports travel with their age, not a timestamp, so clocks need not agree: on
// receipt an entry is stamped measuredAt = now - age on the local clock, and on
// sending the age is recomputed from that stamp.
//
// The window is kept incrementally, newest first, holding WindowSize entries:
// WindowSize-1 are sent, and one spare covers the target's own entry, which is
// never sent back to it. A fresher report costs O(WindowSize) to place; only
// removing a window entry (a member died or its report expired) costs a scan of
// the table. With ~1000 members and a report every interval from each, sorting
// the table per message would dominate the daemon's and the simulator's time.
type loadTable struct {
	self    string
	size    int // window capacity: freshest others kept, one more than are sent
	entries map[string]*loadEntry
	own     *loadEntry   // entries[self], looked up once per PING otherwise
	window  []*loadEntry // freshest reports about others, newest first
	oldest  time.Time    // no entry is older: expiry scans only when this expires
}

// loadEntry is one report, copied out of the message that brought it so that
// the message can be freed.
type loadEntry struct {
	node     string
	load     float64
	freeMem  uint64
	procs    uint32
	at       time.Time // when it was measured, on our clock
	inWindow bool
}

func newLoadTable(self string, windowSize int) loadTable {
	return loadTable{self: self, size: windowSize, entries: make(map[string]*loadEntry)}
}

// newer orders entries freshest first; names break ties so that the order, and
// with it every message, is deterministic.
func newer(a, b *loadEntry) bool {
	if !a.at.Equal(b.at) {
		return a.at.After(b.at)
	}
	return a.node < b.node
}

// put stores r as measured at at, unless the report we hold is no more than
// minGain older. A report relayed around a cycle comes back looking a little
// younger than it is (each hop's latency and rounding go uncounted); minGain
// keeps such an echo from passing for news and displacing real news from the
// window.
func (t *loadTable) put(r *peerpb.LoadReport, at time.Time, minGain time.Duration) {
	t.update(t.entries[r.Node], r, at, minGain)
}

// update is put with the entry already looked up (nil when there is none).
func (t *loadTable) update(e *loadEntry, r *peerpb.LoadReport, at time.Time, minGain time.Duration) {
	if e == nil {
		e = &loadEntry{node: r.Node}
		t.entries[r.Node] = e
		if r.Node == t.self {
			t.own = e
		}
	} else if at.Sub(e.at) <= minGain {
		return
	}
	e.load, e.freeMem, e.procs, e.at = r.Load, r.FreeMem, r.Procs, at
	if len(t.entries) == 1 || at.Before(t.oldest) {
		t.oldest = at
	}
	if e == t.own {
		return
	}
	if e.inWindow {
		t.unwindow(e)
	}
	t.offer(e)
}

// offer places e in the window if it is among the freshest.
func (t *loadTable) offer(e *loadEntry) {
	w := t.window
	if t.size <= 0 || (len(w) == t.size && !newer(e, w[len(w)-1])) {
		return
	}
	i := sort.Search(len(w), func(i int) bool { return newer(e, w[i]) })
	w = slices.Insert(w, i, e)
	e.inWindow = true
	if len(w) > t.size {
		w[len(w)-1].inWindow = false
		w[len(w)-1] = nil
		w = w[:len(w)-1]
	}
	t.window = w
}

func (t *loadTable) unwindow(e *loadEntry) {
	i := slices.Index(t.window, e)
	if i >= 0 {
		t.window = slices.Delete(t.window, i, i+1)
	}
	e.inWindow = false
}

// remove forgets a node's report (it died or left) and refills the window.
func (t *loadTable) remove(node string) {
	e := t.entries[node]
	if e == nil {
		return
	}
	delete(t.entries, node)
	if e == t.own {
		t.own = nil
	}
	if e.inWindow {
		t.unwindow(e)
		t.refill()
	}
}

// refill tops the window up from the table after entries left it: a scan, but
// only when a member dies or reports expire, not per message.
func (t *loadTable) refill() {
	for len(t.window) < t.size {
		var best *loadEntry
		for name, e := range t.entries {
			if name == t.self || e.inWindow {
				continue
			}
			if best == nil || newer(e, best) {
				best = e
			}
		}
		if best == nil {
			return
		}
		t.offer(best)
	}
}

// expire drops every report measured before now-maxAge, own included: a stale
// own report means the sampler stopped, and others should not act on it.
func (t *loadTable) expire(now time.Time, maxAge time.Duration) {
	if maxAge <= 0 || len(t.entries) == 0 {
		return
	}
	cutoff := now.Add(-maxAge)
	if !t.oldest.Before(cutoff) {
		return
	}
	lost := false
	var oldest time.Time
	for name, e := range t.entries {
		if e.at.Before(cutoff) {
			delete(t.entries, name)
			if e == t.own {
				t.own = nil
			}
			if e.inWindow {
				t.unwindow(e)
				lost = true
			}
			continue
		}
		if oldest.IsZero() || e.at.Before(oldest) {
			oldest = e.at
		}
	}
	t.oldest = oldest
	if lost {
		t.refill()
	}
}

// windowFor builds the load window of a PING to target: our own report, then
// the freshest reports about others, target's excluded, up to limit entries.
// The reports are allocated together: one allocation per PING, not per entry.
func (t *loadTable) windowFor(now time.Time, target string, limit int) []*peerpb.LoadReport {
	n := min(limit, len(t.window)+1)
	if n <= 0 {
		return nil
	}
	buf := make([]peerpb.LoadReport, n)
	out := make([]*peerpb.LoadReport, 0, n)
	add := func(e *loadEntry) {
		r := &buf[len(out)]
		e.fill(r, now)
		out = append(out, r)
	}
	if t.own != nil {
		add(t.own)
	}
	others := 0
	for _, e := range t.window {
		if len(out) >= n || others >= limit-1 {
			break
		}
		if e.node == target {
			continue
		}
		add(e)
		others++
	}
	return out
}

// fill writes the entry, with its age as of now, into r.
func (e *loadEntry) fill(r *peerpb.LoadReport, now time.Time) {
	r.Node, r.Load, r.FreeMem, r.Procs, r.AgeMs = e.node, e.load, e.freeMem, e.procs, ageMs(now.Sub(e.at))
}

// ageMs converts an age to the wire's milliseconds, rounding down (the receiver
// then errs towards fresh by under a millisecond, as it does by the latency) and
// saturating instead of wrapping.
func ageMs(d time.Duration) uint32 {
	ms := d.Milliseconds()
	switch {
	case ms < 0:
		return 0
	case ms > math.MaxUint32:
		return math.MaxUint32
	}
	return uint32(ms)
}

// all returns every report with its age, sorted by node name.
func (t *loadTable) all(now time.Time) []LoadView {
	out := make([]LoadView, 0, len(t.entries))
	for _, e := range t.entries {
		r := &peerpb.LoadReport{}
		e.fill(r, now)
		out = append(out, LoadView{Report: r, Age: now.Sub(e.at)})
	}
	slices.SortFunc(out, func(a, b LoadView) int { return strings.Compare(a.Report.Node, b.Report.Node) })
	return out
}
