// Package policy decides where processes run. It is pure: it takes a view
// of the cluster (what gossip says of each node, what this node knows of
// its own processes and recent decisions) and returns decisions, with no
// clock, socket or state of its own, so that the daemon and the simulator
// run the same code.
//
// A Policy places new processes (Place) and, if it migrates, proposes
// moves of running ones (Balance). The policies, their rules and constants
// are described in docs/ARCHITECTURE.md ("Placement and load balancing").
package policy

import (
	"cmp"
	"slices"
	"time"
)

// Node is what a node knows of one node of the cluster (itself included).
type Node struct {
	Name     string
	Load     float64       // runnable processes per unit of capacity (MOSIX load, as gossiped)
	Capacity float64       // cores' worth of CPU the node offers (its quota, or its cores)
	Speed    float64       // per-core speed relative to the reference
	FreeMem  uint64        // bytes free for new processes
	MemTotal uint64        // bytes the node has for processes; 0 = unknown
	MemUsed  uint64        // bytes its processes use (may exceed MemTotal: it pages)
	HasLoad  bool          // Load and the memory figures are known
	Age      time.Duration // how old the load information is
	// Pending is the number of processes this node sent there that the
	// load information cannot show yet (placed after it was measured).
	Pending  int
	Self     bool
	NoGuests bool // it takes no processes from other nodes
}

// Request is what is known of the process to place.
type Request struct {
	Mem uint64 // bytes it will need; 0 = unknown
}

// Choice is a candidate node with the load it would have with the process.
type Choice struct {
	Node         string
	ExpectedLoad float64
}

// Place ranks the nodes for a new process, best first: the least expected
// load after the process is added (its share of the node's capacity, as
// MOSIX counts a process's load on a node), among the nodes with the memory
// it needs. Nodes whose load is unknown come last; ties go to this node
// (no remote start), then to fresher information, then by name. It is the
// leastload policy's placement, and mosix's.
func Place(nodes []Node, req Request) []Choice {
	// The candidates are indices into nodes, in a buffer on the stack:
	// the simulator places hundreds of thousands of processes.
	type scored struct {
		i        int
		expected float64
	}
	var buf [16]scored
	cands := buf[:0]
	for i := range nodes {
		n := &nodes[i]
		if !takes(*n) || (req.Mem > 0 && n.HasLoad && n.FreeMem < req.Mem) {
			continue
		}
		cands = append(cands, scored{i, n.Load + float64(n.Pending+1)*unitLoad(*n)})
	}
	slices.SortStableFunc(cands, func(x, y scored) int {
		a, b := &nodes[x.i], &nodes[y.i]
		if a.HasLoad != b.HasLoad {
			if a.HasLoad {
				return -1
			}
			return 1
		}
		if c := cmp.Compare(round(x.expected), round(y.expected)); c != 0 {
			return c
		}
		if a.Self != b.Self {
			if a.Self {
				return -1
			}
			return 1
		}
		if c := cmp.Compare(a.Age, b.Age); c != 0 {
			return c
		}
		return cmp.Compare(a.Name, b.Name)
	})
	out := make([]Choice, len(cands))
	for i, c := range cands {
		out[i] = Choice{Node: nodes[c.i].Name, ExpectedLoad: c.expected}
	}
	return out
}

// takes says whether a node may be given a process by this one.
func takes(n Node) bool { return n.Self || !n.NoGuests }

// unitLoad is the load one more CPU-bound process adds to a node.
func unitLoad(n Node) float64 {
	capacity, speed := n.Capacity, n.Speed
	if capacity <= 0 {
		capacity = 1
	}
	if speed <= 0 {
		speed = 1
	}
	return 1 / (capacity * speed)
}

// round compares loads to two decimals: gossip reports are noisy and
// smaller differences should not outweigh locality.
func round(x float64) int64 { return int64(x*100 + 0.5) }
