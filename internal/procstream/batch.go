package procstream

import (
	"net"
	"sync"

	"github.com/mosaic-cluster/mosaic/internal/bufpool"
)

// BatchConn is a network connection under TLS that can gather the
// records of a bulk write into few system calls. crypto/tls writes every
// record (16 KiB at most) to its connection at once; a stream of
// megabytes costs a system call per record that way, which is most of the
// sender's time. Inside Batch, writes are gathered and sent together when
// it ends (or a buffer fills); outside, they pass straight through, so
// that connections that never batch (gRPC's) behave as before.
type BatchConn struct {
	net.Conn
	buffers *bufpool.Pool // where its buffer comes from and goes back to

	mu       sync.Mutex
	batching bool
	buf      []byte
	err      error
}

// BatchSize is how much a batch gathers before it writes: the size of a
// BatchConn's buffer.
const BatchSize = 512 << 10

// NewBatchConn wraps c (before TLS goes over it). Its buffer, taken at
// its first batch, comes from buffers and goes back there when it closes
// (a fresh one costs a page fault a page, and a connection that carries
// an image lives for one move).
func NewBatchConn(c net.Conn, buffers *bufpool.Pool) *BatchConn {
	return &BatchConn{Conn: c, buffers: buffers}
}

// Close closes the connection, and gives its buffer back unless a write
// holds it (a close must not wait for a write: it is what ends one that
// is stuck).
func (b *BatchConn) Close() error {
	b.Rest()
	return b.Conn.Close()
}

// Rest gives the buffer back while the connection waits for its next
// stream (a connection kept for reuse should not hold half a megabyte),
// unless a write holds it.
func (b *BatchConn) Rest() {
	if b.mu.TryLock() {
		if b.buf != nil && !b.batching {
			b.buffers.Put(b.buf)
			b.buf = nil
		}
		b.mu.Unlock()
	}
}

func (b *BatchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.batching {
		return b.Conn.Write(p)
	}
	if b.err != nil {
		return 0, b.err
	}
	if len(b.buf)+len(p) > BatchSize {
		if err := b.flushLocked(); err != nil {
			return 0, err
		}
	}
	if len(p) >= BatchSize {
		if _, err := b.Conn.Write(p); err != nil {
			b.err = err
			return 0, err
		}
		return len(p), nil
	}
	b.buf = append(b.buf, p...)
	return len(p), nil
}

func (b *BatchConn) flushLocked() error {
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.Conn.Write(b.buf)
	b.buf = b.buf[:0]
	if err != nil {
		b.err = err
	}
	return err
}

// Batch runs fn, whose writes (through the TLS connection over b) are
// gathered, and sends what is left of them when it returns.
func (b *BatchConn) Batch(fn func() error) error {
	b.mu.Lock()
	b.batching = true
	if b.buf == nil {
		b.buf = b.buffers.Get(BatchSize)[:0]
	}
	b.mu.Unlock()
	err := fn()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.batching = false
	if ferr := b.flushLocked(); err == nil {
		err = ferr
	}
	if err == nil {
		err = b.err
	}
	b.err = nil
	return err
}

// batcher is what a process connection batches its bulk writes with.
type batcher interface {
	Batch(fn func() error) error
	Rest()
}

// batcherOf finds the BatchConn under a TLS connection, if there is one.
func batcherOf(c net.Conn) batcher {
	type netConner interface{ NetConn() net.Conn }
	if nc, ok := c.(netConner); ok {
		if b, ok := nc.NetConn().(batcher); ok {
			return b
		}
	}
	return nil
}
