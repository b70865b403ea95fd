// Package bufpool keeps large byte buffers from one use to the next, so
// that they stay mapped.
//
// A buffer the Go heap hands out fresh costs a page fault on each of its
// pages at first touch; on the virtual machines mosaic is measured on that
// is about 10 µs a page, 3 ms a megabyte: more than copying the megabyte,
// and most of the time a small process stands still while it moves. The
// runtime gives freed memory back to the kernel within seconds, so a
// buffer reused a minute later is as fresh as a new one; a pool keeps it.
// (sync.Pool does not: it drops what it holds at each collection.)
package bufpool

import "sync"

// Pool holds up to its limit of bytes in buffers nobody is using. The nil
// Pool holds none: Get allocates and Put drops.
type Pool struct {
	mu    sync.Mutex
	free  [][]byte
	held  int
	limit int
}

// New makes a pool that holds up to limit bytes.
func New(limit int) *Pool { return &Pool{limit: limit} }

// Warm adds n buffers of size bytes with every page touched, so that the
// first uses find them warm (as far as the limit allows).
func (p *Pool) Warm(n, size int) {
	for range n {
		b := make([]byte, size)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		p.Put(b)
	}
}

// Get returns a buffer of length n, whose contents are undefined: the
// smallest held one that is large enough, or a new one.
func (p *Pool) Get(n int) []byte {
	if p == nil {
		return make([]byte, n)
	}
	p.mu.Lock()
	best := -1
	for i, b := range p.free {
		if cap(b) >= n && (best < 0 || cap(b) < cap(p.free[best])) {
			best = i
		}
	}
	if best < 0 {
		p.mu.Unlock()
		return make([]byte, n)
	}
	b := p.free[best]
	last := len(p.free) - 1
	p.free[best], p.free[last] = p.free[last], nil
	p.free = p.free[:last]
	p.held -= cap(b)
	p.mu.Unlock()
	return b[:n]
}

// Put gives b back, to be held if the pool has room for it. Its caller
// must not use b afterwards.
func (p *Pool) Put(b []byte) {
	if p == nil || cap(b) == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.held+cap(b) > p.limit {
		return
	}
	p.free = append(p.free, b[:0])
	p.held += cap(b)
}

// Held is how many bytes the pool holds.
func (p *Pool) Held() int {
	if p == nil {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.held
}
