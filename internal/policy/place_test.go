package policy

import (
	"slices"
	"testing"
	"time"
)

func names(cs []Choice) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Node)
	}
	return out
}

func TestPlace(t *testing.T) {
	cases := []struct {
		name  string
		nodes []Node
		req   Request
		want  []string
	}{
		{
			name: "least loaded wins",
			nodes: []Node{
				{Name: "a", Load: 2, Capacity: 1, Speed: 1, HasLoad: true},
				{Name: "b", Load: 0.5, Capacity: 1, Speed: 1, HasLoad: true},
				{Name: "c", Load: 1, Capacity: 1, Speed: 1, HasLoad: true},
			},
			want: []string{"b", "c", "a"},
		},
		{
			name: "a process weighs more on a small node",
			nodes: []Node{
				{Name: "big", Load: 0.5, Capacity: 2, Speed: 1, HasLoad: true},    // 0.5 + 0.5
				{Name: "small", Load: 0, Capacity: 0.25, Speed: 1, HasLoad: true}, // 0 + 4
			},
			want: []string{"big", "small"},
		},
		{
			name: "pending placements count until the load shows them",
			nodes: []Node{
				{Name: "a", Load: 0, Capacity: 1, Speed: 1, HasLoad: true, Pending: 2},
				{Name: "b", Load: 1, Capacity: 1, Speed: 1, HasLoad: true},
			},
			want: []string{"b", "a"},
		},
		{
			name: "not enough memory excludes",
			nodes: []Node{
				{Name: "a", Load: 0, Capacity: 1, Speed: 1, HasLoad: true, FreeMem: 1 << 20},
				{Name: "b", Load: 3, Capacity: 1, Speed: 1, HasLoad: true, FreeMem: 1 << 30},
			},
			req:  Request{Mem: 100 << 20},
			want: []string{"b"},
		},
		{
			name: "ties go to this node, then fresher news, then name",
			nodes: []Node{
				{Name: "c", Load: 1, Capacity: 1, Speed: 1, HasLoad: true, Age: time.Second},
				{Name: "b", Load: 1, Capacity: 1, Speed: 1, HasLoad: true, Age: 2 * time.Second},
				{Name: "a", Load: 1, Capacity: 1, Speed: 1, HasLoad: true, Age: 2 * time.Second},
				{Name: "self", Load: 1.001, Capacity: 1, Speed: 1, HasLoad: true, Self: true},
			},
			want: []string{"self", "c", "a", "b"},
		},
		{
			name: "unknown load comes last",
			nodes: []Node{
				{Name: "mystery", Capacity: 1, Speed: 1},
				{Name: "busy", Load: 5, Capacity: 1, Speed: 1, HasLoad: true},
			},
			want: []string{"busy", "mystery"},
		},
		{
			name: "zero capacity and speed count as one reference core",
			nodes: []Node{
				{Name: "a", Load: 0.5, HasLoad: true},
				{Name: "b", Load: 0.4, HasLoad: true},
			},
			want: []string{"b", "a"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := names(Place(c.nodes, c.req))
			if !slices.Equal(got, c.want) {
				t.Fatalf("Place = %v, want %v", got, c.want)
			}
		})
	}
}

func TestPlaceSpreadsABurst(t *testing.T) {
	// A node placing many processes at once, with news that cannot show
	// them yet, spreads them by counting its own placements.
	nodes := []Node{
		{Name: "a", Capacity: 1, Speed: 1, HasLoad: true},
		{Name: "b", Capacity: 1, Speed: 1, HasLoad: true},
		{Name: "c", Capacity: 0.5, Speed: 1, HasLoad: true},
	}
	count := map[string]int{}
	for range 10 {
		best := Place(nodes, Request{})[0].Node
		count[best]++
		for i := range nodes {
			if nodes[i].Name == best {
				nodes[i].Pending++
			}
		}
	}
	if count["a"] != 4 || count["b"] != 4 || count["c"] != 2 {
		t.Fatalf("10 processes went %v, want 4/4/2 (in proportion to capacity)", count)
	}
}
