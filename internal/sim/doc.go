// Package sim runs mosaic's pure protocol cores on a virtual clock, to measure
// what cannot be measured on a handful of real machines: how the MOSIX load
// window behaves with a thousand nodes, and (later) how placement policies
// compare on workloads of any size.
//
// A simulation is a discrete-event loop over an eventQueue: no goroutines, no
// wall clock, and every random choice drawn from a seeded source, so a run is a
// pure function of its configuration. The cores are the real ones
// (internal/gossip), not models of them.
package sim
