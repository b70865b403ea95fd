package policy

import (
	"slices"
	"testing"
	"time"
)

func node(name string, load float64) Node {
	return Node{Name: name, Load: load, Capacity: 1, Speed: 1, HasLoad: true, MemTotal: 1000, FreeMem: 1000}
}

func withMem(n Node, used uint64) Node {
	n.MemUsed = used
	n.FreeMem = n.MemTotal - min(used, n.MemTotal)
	return n
}

func selfNode(n Node) Node { n.Self = true; return n }

func cpuBound(id string, age time.Duration) Proc {
	return Proc{ID: id, Demand: 1, Age: age, Resident: age, Mem: 10}
}

func TestNew(t *testing.T) {
	for _, name := range Names() {
		p, err := New(name)
		if err != nil || p.Name() != name {
			t.Fatalf("New(%q) = %v, %v", name, p, err)
		}
	}
	if _, err := New("best"); err == nil {
		t.Fatal("New of an unknown policy did not fail")
	}
}

func TestRoundRobin(t *testing.T) {
	v := View{Nodes: []Node{node("c", 0), selfNode(node("a", 5)), node("b", 9)}}
	var firsts []string
	for i := range 4 {
		v.Placed = i
		firsts = append(firsts, RoundRobin{}.Place(v, Request{})[0])
	}
	if want := []string{"a", "b", "c", "a"}; !slices.Equal(firsts, want) {
		t.Fatalf("turns %v, want %v (load does not matter)", firsts, want)
	}
	v.Nodes[2].NoGuests = true
	if got := (RoundRobin{}).Place(v, Request{}); slices.Contains(got, "b") {
		t.Fatalf("round robin placed on a node that takes no guests: %v", got)
	}
}

func TestStaticPoliciesNeverMove(t *testing.T) {
	v := View{Nodes: []Node{selfNode(node("a", 8)), node("b", 0)}, Procs: []Proc{cpuBound("p", time.Hour)}}
	for _, p := range []Policy{RoundRobin{}, LeastLoad{}, EPVM{}} {
		if m := p.Balance(v); m != nil {
			t.Errorf("%s proposed %v", p.Name(), m)
		}
	}
}

func TestMosixBalance(t *testing.T) {
	m := DefaultMosix()
	old := 10 * time.Second
	cases := []struct {
		name  string
		nodes []Node
		procs []Proc
		want  []Move // only Proc and To compared
	}{
		{"3 against 1 moves one", []Node{selfNode(node("a", 3)), node("b", 1)},
			[]Proc{cpuBound("p1", old), cpuBound("p2", old), cpuBound("p3", old)}, []Move{{To: "b"}}},
		{"2 against 1 stays: it would only swap", []Node{selfNode(node("a", 2)), node("b", 1)},
			[]Proc{cpuBound("p1", old), cpuBound("p2", old)}, nil},
		{"to the least loaded", []Node{selfNode(node("a", 4)), node("b", 1), node("c", 0), node("d", 0.5)},
			[]Proc{cpuBound("p", old)}, []Move{{Proc: "p", To: "c"}}},
		{"a faster node takes a lone process from a slow one", []Node{selfNode(Node{Name: "slow", Load: 1 / 0.45, Capacity: 1, Speed: 0.45, HasLoad: true}), {Name: "fast", Capacity: 1, Speed: 1, HasLoad: true}},
			[]Proc{cpuBound("p", old)}, []Move{{Proc: "p", To: "fast"}}},
		{"a process that just arrived stays", []Node{selfNode(node("a", 3)), node("b", 0)},
			[]Proc{{ID: "p", Demand: 1, Age: old, Resident: time.Second}}, nil},
		{"pinned stays", []Node{selfNode(node("a", 3)), node("b", 0)},
			[]Proc{{ID: "p", Demand: 1, Age: old, Resident: old, Pinned: true}}, nil},
		{"no guests there", []Node{selfNode(node("a", 3)), {Name: "b", Capacity: 1, Speed: 1, HasLoad: true, NoGuests: true}},
			[]Proc{cpuBound("p", old)}, nil},
		{"unknown load is not a target", []Node{selfNode(node("a", 3)), {Name: "b", Capacity: 1, Speed: 1}},
			[]Proc{cpuBound("p", old)}, nil},
		{"pending placements count", []Node{selfNode(node("a", 2)), func() Node { n := node("b", 0); n.Pending = 1; return n }()},
			[]Proc{cpuBound("p", old)}, nil},
		{"the CPU-bound and older goes first", []Node{selfNode(node("a", 3)), node("b", 0)},
			[]Proc{{ID: "waiter", Demand: 0.1, Age: time.Hour, Resident: old}, cpuBound("young", old), cpuBound("old", time.Hour)},
			[]Move{{Proc: "old", To: "b"}}},
		{"a process that mostly waits does not move for load", []Node{selfNode(node("a", 0.3)), node("b", 0)},
			[]Proc{{ID: "p", Demand: 0.1, Age: old, Resident: old}, {ID: "q", Demand: 0.1, Age: old, Resident: old}}, nil},
		{"memory ushering before paging", []Node{selfNode(withMem(node("a", 1), 950)), withMem(node("b", 3), 100), withMem(node("c", 0), 800)},
			[]Proc{{ID: "small", Demand: 1, Resident: old, Mem: 50}, {ID: "big", Demand: 1, Resident: old, Mem: 400}},
			[]Move{{Proc: "big", To: "b"}}},
		{"not to a node it must avoid", []Node{selfNode(node("a", 4)), node("b", 1), node("c", 0)},
			[]Proc{{ID: "p", Demand: 1, Age: old, Resident: old, Avoid: []string{"c"}}}, []Move{{Proc: "p", To: "b"}}},
		{"nor ushered there", []Node{selfNode(withMem(node("a", 1), 950)), withMem(node("b", 3), 100), withMem(node("c", 0), 100)},
			[]Proc{{ID: "big", Demand: 1, Resident: old, Mem: 400, Avoid: []string{"c"}}}, []Move{{Proc: "big", To: "b"}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := m.Balance(View{Nodes: c.nodes, Procs: c.procs})
			if len(got) != len(c.want) {
				t.Fatalf("moves %v, want %v", got, c.want)
			}
			for i := range got {
				if got[i].To != c.want[i].To || (c.want[i].Proc != "" && got[i].Proc != c.want[i].Proc) || got[i].Reason == "" {
					t.Fatalf("moves %v, want %v", got, c.want)
				}
			}
		})
	}
}

// After a Mosix move the two nodes, recomputed, propose nothing more: the
// rule cannot ping-pong a process.
func TestMosixSettles(t *testing.T) {
	m := DefaultMosix()
	loads := map[string]int{"a": 5, "b": 0, "c": 1}
	procs := map[string][]string{"a": {"a1", "a2", "a3", "a4", "a5"}, "c": {"c1"}}
	for round := range 20 {
		moved := false
		for _, self := range []string{"a", "b", "c"} {
			v := View{}
			for _, n := range []string{"a", "b", "c"} {
				nd := node(n, float64(loads[n]))
				nd.Self = n == self
				v.Nodes = append(v.Nodes, nd)
			}
			for _, p := range procs[self] {
				v.Procs = append(v.Procs, cpuBound(p, time.Minute))
			}
			for _, mv := range m.Balance(v) {
				moved = true
				loads[self]--
				loads[mv.To]++
				procs[self] = slices.DeleteFunc(procs[self], func(p string) bool { return p == mv.Proc })
				procs[mv.To] = append(procs[mv.To], mv.Proc)
			}
		}
		if !moved {
			if loads["a"] != 2 || loads["b"] != 2 || loads["c"] != 2 {
				t.Fatalf("settled at %v, want 2 each", loads)
			}
			return
		}
		if round == 19 {
			t.Fatalf("still moving after 20 rounds: %v", loads)
		}
	}
}

func TestEPVMPlace(t *testing.T) {
	// Memory outweighs load: a nearly full node is costly even when idle.
	// n = 3, L = 2: a costs 3^0.5-1 + 3^1.25-3^0.95 = 1.84, b
	// 3-3^0.5 + 3^0.4-3^0.1 = 1.70, c 3^1.5-3 + 0.44 = 2.63.
	v := View{Nodes: []Node{selfNode(withMem(node("a", 0), 950)), withMem(node("b", 1), 100), withMem(node("c", 2), 100)}}
	if got := (EPVM{}).Place(v, Request{Mem: 300}); !slices.Equal(got, []string{"b", "a", "c"}) {
		t.Fatalf("EPVM placed %v, want b, a, c", got)
	}
	// Equal cost: this node first.
	v = View{Nodes: []Node{node("b", 0), selfNode(node("a", 0))}}
	if got := (EPVM{}).Place(v, Request{}); got[0] != "a" {
		t.Fatalf("EPVM placed %v, want this node first on a tie", got)
	}
	// The CPU term is scaled by L: at peak 4 one process costs less than at
	// peak 1, relative to the memory term.
	lo := newCostModel(View{Nodes: v.Nodes})
	hi := newCostModel(View{Nodes: v.Nodes, PeakLoad: 3})
	if lo.l != 1 || hi.l != 4 {
		t.Fatalf("L = %v and %v, want 1 and 4", lo.l, hi.l)
	}
}

func TestEMosixBalance(t *testing.T) {
	e := DefaultEMosix()
	old := 10 * time.Second
	// Two processes here, an idle node there: one moves.
	v := View{Nodes: []Node{selfNode(node("a", 2)), node("b", 0)}, Procs: []Proc{cpuBound("p1", old), cpuBound("p2", old)}}
	if got := e.Balance(v); len(got) != 1 || got[0].To != "b" {
		t.Fatalf("E-Mosix proposed %v, want one move to b", got)
	}
	// Not to a node it must avoid: to the next best, or nowhere.
	v = View{Nodes: []Node{selfNode(node("a", 2)), node("b", 0), node("c", 1)}, Procs: []Proc{cpuBound("p1", old), cpuBound("p2", old)}}
	for i := range v.Procs {
		v.Procs[i].Avoid = []string{"b"}
	}
	if got := e.Balance(v); len(got) == 1 && got[0].To == "b" {
		t.Fatalf("E-Mosix proposed %v, to a node they must avoid", got)
	}
	v.Nodes = v.Nodes[:2]
	if got := e.Balance(v); got != nil {
		t.Fatalf("E-Mosix proposed %v, with no node they may go to", got)
	}
	// One process each: moving it would not lower the cost.
	v = View{Nodes: []Node{selfNode(node("a", 1)), node("b", 1)}, Procs: []Proc{cpuBound("p1", old)}}
	if got := e.Balance(v); got != nil {
		t.Fatalf("E-Mosix proposed %v between equals", got)
	}
	// A margin larger than the gain holds the move back.
	v = View{Nodes: []Node{selfNode(node("a", 2)), node("b", 0)}, Procs: []Proc{cpuBound("p1", old), cpuBound("p2", old)}}
	e.Margin = 100
	if got := e.Balance(v); got != nil {
		t.Fatalf("E-Mosix with a large margin proposed %v", got)
	}
	// The same view and seed give the same answer; the set is random.
	e = DefaultEMosix()
	e.SetSize = 1
	v = View{Nodes: []Node{selfNode(node("a", 3)), node("b", 0), node("c", 0), node("d", 0)}, Procs: []Proc{cpuBound("p", old)}}
	seen := map[string]bool{}
	for seed := range uint64(40) {
		v.Seed = seed
		a, b := e.Balance(v), e.Balance(v)
		if len(a) != 1 || !slices.Equal(a, b) {
			t.Fatalf("seed %d: %v then %v", seed, a, b)
		}
		seen[a[0].To] = true
	}
	if len(seen) != 3 {
		t.Fatalf("a set of one always chose among %v, want all three nodes over 40 seeds", seen)
	}
}

// Live, E-Mosix moves a process only when what it saves over its expected
// remaining run (its age so far) pays for the move's time.
func TestEMosixLiveMoveCost(t *testing.T) {
	e := Live(DefaultEMosix()).(EMosix)
	// Memory not known: only the CPU counts here.
	nodes := []Node{{Name: "a", Load: 2, Capacity: 1, Speed: 1, HasLoad: true, Self: true}, {Name: "b", Capacity: 1, Speed: 1, HasLoad: true}}
	young := Proc{ID: "young", Demand: 1, Age: 3 * time.Second, Resident: 3 * time.Second, Mem: 4 << 30} // 8 s to move 4 GiB
	old := Proc{ID: "old", Demand: 1, Age: time.Hour, Resident: time.Hour, Mem: 4 << 30}
	if got := e.Balance(View{Nodes: nodes, Procs: []Proc{young, young}}); got != nil {
		t.Fatalf("a young 4 GiB process was moved: %v", got)
	}
	if got := e.Balance(View{Nodes: nodes, Procs: []Proc{old, young}}); len(got) != 1 || got[0].Proc != "old" {
		t.Fatalf("the old process did not move: %v", got)
	}
	if _, ok := Live(DefaultMosix()).(Mosix); !ok {
		t.Fatal("Live changed what Mosix is")
	}
}
