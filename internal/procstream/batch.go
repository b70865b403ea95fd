package procstream

import (
	"net"
	"sync"
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

	mu       sync.Mutex
	batching bool
	buf      []byte
	err      error
}

// batchSize is how much a batch gathers before it writes.
const batchSize = 512 << 10

// NewBatchConn wraps c (before TLS goes over it).
func NewBatchConn(c net.Conn) *BatchConn { return &BatchConn{Conn: c} }

func (b *BatchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.batching {
		return b.Conn.Write(p)
	}
	if b.err != nil {
		return 0, b.err
	}
	if len(b.buf)+len(p) > batchSize {
		if err := b.flushLocked(); err != nil {
			return 0, err
		}
	}
	if len(p) >= batchSize {
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
		b.buf = make([]byte, 0, batchSize)
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
