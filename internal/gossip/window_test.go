package gossip

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/peerpb"
)

// TestLoadWindowMatchesFullSort checks the incrementally kept window against
// the definition: the size freshest reports about others, newest first.
func TestLoadWindowMatchesFullSort(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, size := range []int{1, 2, 5, 16} {
		tab := newLoadTable("self", size)
		now := epoch
		for step := range 5000 {
			now = now.Add(time.Duration(rng.IntN(50)) * time.Millisecond)
			node := fmt.Sprintf("n%d", rng.IntN(40))
			switch r := rng.IntN(20); {
			case r == 0:
				tab.remove(node)
			case r == 1:
				tab.expire(now, time.Duration(rng.IntN(3000))*time.Millisecond)
			case r == 2:
				tab.put(&peerpb.LoadReport{Node: "self"}, now, 0)
			default:
				age := time.Duration(rng.IntN(5000)) * time.Millisecond
				tab.put(&peerpb.LoadReport{Node: node}, now.Add(-age), 0)
			}
			var all []*loadEntry
			for name, e := range tab.entries {
				if name != "self" {
					all = append(all, e)
				}
			}
			slices.SortFunc(all, func(a, b *loadEntry) int {
				if newer(a, b) {
					return -1
				}
				return 1
			})
			want := all[:min(size, len(all))]
			if !slices.Equal(tab.window, want) {
				t.Fatalf("size %d, step %d: window %v, want %v", size, step, entryNames(tab.window), entryNames(want))
			}
			for _, e := range tab.entries {
				if e.inWindow != slices.Contains(tab.window, e) {
					t.Fatalf("size %d, step %d: inWindow flag of %s is stale", size, step, e.node)
				}
			}
		}
	}
}

func entryNames(es []*loadEntry) []string {
	var out []string
	for _, e := range es {
		out = append(out, fmt.Sprintf("%s@%v", e.node, e.at.Sub(epoch)))
	}
	return out
}

func TestWindowForSendsOwnReportThenFreshestOthersButNotTheTarget(t *testing.T) {
	tab := newLoadTable("self", 3)
	now := epoch.Add(time.Minute)
	tab.put(&peerpb.LoadReport{Node: "self", Load: 1}, now, 0)
	for i, n := range []string{"a", "b", "c", "d"} {
		tab.put(&peerpb.LoadReport{Node: n}, now.Add(-time.Duration(i+1)*time.Second), 0)
	}
	got := tab.windowFor(now, "a", 3)
	want := []string{"self:0", "b:2000", "c:3000"}
	var have []string
	for _, r := range got {
		have = append(have, fmt.Sprintf("%s:%d", r.Node, r.AgeMs))
	}
	if !slices.Equal(have, want) {
		t.Errorf("window to a = %v, want %v", have, want)
	}
}

func TestEchoOfAReportDoesNotPassForNews(t *testing.T) {
	tab := newLoadTable("self", 4)
	tab.put(&peerpb.LoadReport{Node: "a", Load: 1}, epoch, 100*time.Millisecond)
	tab.put(&peerpb.LoadReport{Node: "a", Load: 2}, epoch.Add(3*time.Millisecond), 100*time.Millisecond)
	if tab.entries["a"].load != 1 {
		t.Error("a copy 3ms younger replaced the report")
	}
	tab.put(&peerpb.LoadReport{Node: "a", Load: 3}, epoch.Add(time.Second), 100*time.Millisecond)
	if tab.entries["a"].load != 3 {
		t.Error("the next interval's report was not taken")
	}
}
