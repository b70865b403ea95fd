// Package gossip is mosaic's membership and load-dissemination protocol, written
// as a pure state machine in the manner of etcd's raft: events go in, messages to
// send come out as data, and nothing inside reads a clock, opens a socket, starts
// a goroutine or keeps package-level state.
//
// Two ideas share one set of messages:
//
//   - SWIM failure detection (Das, Gupta, Motivala 2002) with the dissemination
//     and suspicion rules of hashicorp/memberlist, minus Lifeguard's local-health
//     extensions. Each node probes one member per interval, asks a few others to
//     probe it indirectly when the direct probe goes unanswered, and spreads state
//     changes (ALIVE, SUSPECT, DEAD, LEFT, ordered by incarnation) by piggybacking
//     them on every message. Periodic push-pull of the full member table repairs
//     whatever piggybacking missed and heals partitions.
//
//   - MOSIX load dissemination (Barak et al.). Every PING carries a small window
//     of load reports: the sender's own fresh one and the freshest it has heard
//     about others. Each node thus holds a partial, aging view of the cluster's
//     load at a cost per node that does not grow with the cluster: the window,
//     not the table, travels. Ages rather than timestamps travel, so no clock
//     synchronisation is needed.
//
// The caller (the daemon, or internal/sim with a virtual clock) owns time and
// I/O. It calls [Core.Tick] every 50–100 ms, hands each authenticated incoming
// envelope to [Core.Step], sends every returned [Message], feeds the node's own
// load with [Core.SetLocalLoad] once per interval, and persists the incarnation
// so that a restarted node starts above its previous life.
package gossip
