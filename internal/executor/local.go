package executor

import (
	"context"
	"io"
	"sync"

	"github.com/mosaic-cluster/mosaic/internal/peerpb"
)

// Conn is the home's end of a process's stream: a process stream to
// another node (internal/procstream), or an in-process pipe to this node's
// executor (Local). The bytes of a Stdout or Stderr message received are
// valid until the next Recv.
type Conn interface {
	Send(*peerpb.ExecIn) error
	Recv() (*peerpb.ExecOut, error)
	CloseSend() error
}

// Local runs a process of this node (its own home) without the network: the
// same executor, over a pair of channels instead of a TLS stream.
// Cancelling ctx breaks the stream, as a lost connection would.
func (e *Executor) Local(ctx context.Context, home string) Conn {
	ctx, cancel := context.WithCancel(ctx)
	p := &localPipe{ctx: ctx, cancel: cancel, in: make(chan *peerpb.ExecIn, 16), out: make(chan *peerpb.ExecOut, 16)}
	go func() {
		defer close(p.out)
		if err := e.Serve(home, localServer{p}); err != nil {
			e.log.Debug("local process stream", "err", err)
		}
	}()
	return localClient{p}
}

type localPipe struct {
	ctx    context.Context
	cancel context.CancelFunc
	in     chan *peerpb.ExecIn
	out    chan *peerpb.ExecOut

	mu     sync.Mutex // guards closing in against sends, as gRPC does
	closed bool
}

type localClient struct{ p *localPipe }

// Send, like a gRPC stream's, fails after CloseSend rather than panic.
func (c localClient) Send(m *peerpb.ExecIn) error {
	c.p.mu.Lock()
	defer c.p.mu.Unlock()
	if c.p.closed {
		return io.EOF
	}
	select {
	case c.p.in <- m:
		return nil
	case <-c.p.ctx.Done():
		return c.p.ctx.Err()
	}
}

func (c localClient) Recv() (*peerpb.ExecOut, error) {
	select {
	case m, ok := <-c.p.out:
		if !ok {
			return nil, io.EOF
		}
		return m, nil
	case <-c.p.ctx.Done():
		return nil, c.p.ctx.Err()
	}
}

func (c localClient) CloseSend() error {
	c.p.mu.Lock()
	defer c.p.mu.Unlock()
	if !c.p.closed {
		c.p.closed = true
		close(c.p.in)
	}
	return nil
}

type localServer struct{ p *localPipe }

func (s localServer) Send(m *peerpb.ExecOut) error {
	select {
	case s.p.out <- m:
		return nil
	case <-s.p.ctx.Done():
		return s.p.ctx.Err()
	}
}

func (s localServer) Recv() (*peerpb.ExecIn, error) {
	select {
	case m, ok := <-s.p.in:
		if !ok {
			return nil, io.EOF
		}
		return m, nil
	case <-s.p.ctx.Done():
		return nil, s.p.ctx.Err()
	}
}

func (s localServer) Context() context.Context { return s.p.ctx }
