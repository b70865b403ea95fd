package executor

import (
	"context"
	"io"
	"sync"

	"github.com/mosaic-cluster/mosaic/internal/bufpool"
	"github.com/mosaic-cluster/mosaic/internal/peerpb"
	"github.com/mosaic-cluster/mosaic/internal/procstream"
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
	p := &localPipe{ctx: ctx, cancel: cancel, in: make(chan *peerpb.ExecIn, 16), out: make(chan *peerpb.ExecOut, 16),
		outputs: e.outputs}
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

	// Output travels in buffers of outputs, each taken by the process's
	// side for a chunk and given back by the home's when it is done with
	// it (at its next Recv: a Conn's output is valid until then). A
	// relay moving a gigabyte then reuses a few buffers, where a copy
	// per chunk made a gigabyte of garbage, each collection's worth of it
	// fresh pages again (a page fault each, ~10 µs in the test VM).
	outputs *bufpool.Pool
	lent    []byte // the output the home's last Recv returned
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
	if c.p.lent != nil {
		c.p.outputs.Put(c.p.lent)
		c.p.lent = nil
	}
	select {
	case m, ok := <-c.p.out:
		if !ok {
			return nil, io.EOF
		}
		switch x := m.Msg.(type) {
		case *peerpb.ExecOut_Stdout:
			c.p.lent = x.Stdout
		case *peerpb.ExecOut_Stderr:
			c.p.lent = x.Stderr
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

// SendData sends output that is in buf[procstream.HeaderSize:], in a
// buffer of the pipe's (see localPipe.outputs): buf may be reused once it
// returns.
func (s localServer) SendData(fd int, buf []byte) error {
	// The size the relays take too, so that any held buffer serves both.
	n := len(buf) - procstream.HeaderSize
	data := s.p.outputs.Get(max(len(buf), procstream.HeaderSize+chunk))[:n]
	copy(data, buf[procstream.HeaderSize:])
	m := &peerpb.ExecOut{Msg: &peerpb.ExecOut_Stdout{Stdout: data}}
	if fd == 2 {
		m = &peerpb.ExecOut{Msg: &peerpb.ExecOut_Stderr{Stderr: data}}
	}
	if err := s.Send(m); err != nil {
		s.p.outputs.Put(data)
		return err
	}
	return nil
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
