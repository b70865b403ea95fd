package daemon

import (
	"context"
	"errors"
	"net"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mosaic-cluster/mosaic/internal/procstream"
)

// spares keeps process connections to other nodes ready, so that the next
// remote start (or migration) there does not wait for a TCP and a TLS
// handshake: 1.1 ms of CPU on this machine for a resumed session, 1.4 to
// 1.8 ms for a full one (BenchmarkHandshake in internal/pki), at both
// ends, on the path of every `mosaic run --on` and competing with it for
// the CPUs. Two sources fill it:
//
//   - a process whose stream ended cleanly gives its connection back
//     (finish: procstream's end frames both ways), as multiplexed ssh or
//     HTTP keep-alive reuse theirs; back-to-back runs then pay no
//     handshake at all;
//   - when a start takes a node's last connection, another is dialed
//     ahead (refillAfter later, so that its handshake does not compete
//     for the CPUs with the start it follows), and read for a moment
//     (settle: the session ticket comes in).
//
// Each is closed when unused for idle, beyond maxIdle a node, or when the
// daemon stops. One the peer has closed meanwhile (it restarted) is
// noticed when taken (usable: a peek at its socket), and the caller takes
// the next or dials anew; one to a node that died silently is ended, as
// any start there, when membership finds the node dead (home.NodeDown).
// The node at the other end keeps an idle connection waiting for its next
// stream's first message; its executor ends such streams when it stops.
type spares struct {
	// dial returns a connection to use and the network connection under
	// it (the same for a plain one).
	dial        func(ctx context.Context, node, addr string) (c, raw net.Conn, err error)
	idle        time.Duration
	refillAfter time.Duration
	maxIdle     int // connections kept a node

	ctx    context.Context // cancelled by close: ends dials and finishes under way
	cancel context.CancelFunc

	mu      sync.Mutex
	conns   map[string][]*spare // by node name, the most recently kept last
	dialing map[string]bool
	closed  bool
	wg      sync.WaitGroup
}

type spare struct {
	c     net.Conn
	raw   net.Conn // under c
	addr  string
	timer *time.Timer // its expiry
}

func newSpares(dial func(ctx context.Context, node, addr string) (c, raw net.Conn, err error)) *spares {
	ctx, cancel := context.WithCancel(context.Background())
	return &spares{dial: dial, idle: 30 * time.Second, refillAfter: 5 * time.Millisecond, maxIdle: 8,
		ctx: ctx, cancel: cancel, conns: map[string][]*spare{}, dialing: map[string]bool{}}
}

// take returns a connection to node kept ready, to addr and still open
// (nil if there is none), and has another dialed if it took the last.
func (s *spares) take(node, addr string) (c, raw net.Conn) {
	for {
		s.mu.Lock()
		kept := s.conns[node]
		var sp *spare
		if len(kept) > 0 {
			sp = kept[len(kept)-1]
			kept[len(kept)-1] = nil
			s.conns[node] = kept[:len(kept)-1]
		}
		last := len(s.conns[node]) == 0
		s.mu.Unlock()
		if last {
			s.refill(node, addr)
		}
		if sp == nil {
			return nil, nil
		}
		sp.timer.Stop()
		if sp.addr == addr && usable(sp) {
			return sp.c, sp.raw
		}
		sp.c.Close()
	}
}

// put keeps a connection to node that is free for another stream.
func (s *spares) put(node, addr string, c, raw net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || len(s.conns[node]) >= s.maxIdle {
		c.Close()
		return
	}
	sp := &spare{c: c, raw: raw, addr: addr}
	sp.timer = time.AfterFunc(s.idle, func() { s.expire(node, sp) })
	s.conns[node] = append(s.conns[node], sp)
}

// finish ends the stream of a process that is over on node (see
// procstream.Client.Finish) without waiting, and keeps its connection if
// the stream ended cleanly.
func (s *spares) finish(node, addr string, c procstream.Client, raw net.Conn) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return // the stream's end closes the connection
	}
	s.wg.Add(1)
	s.mu.Unlock()
	if !c.Detach() {
		s.wg.Done()
		return // its context ended first: the connection is closed
	}
	go func() {
		defer s.wg.Done()
		tc, err := c.Finish(s.ctx)
		if err != nil {
			return // closed; the next start takes another or dials
		}
		s.put(node, addr, tc, raw)
	}()
}

// refill has a connection dialed to node, unless one is kept or on its
// way.
func (s *spares) refill(node, addr string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.dialing[node] || len(s.conns[node]) > 0 {
		return
	}
	s.dialing[node] = true
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		var c, raw net.Conn
		err := s.ctx.Err()
		if err == nil {
			select {
			case <-time.After(s.refillAfter):
				c, raw, err = s.dial(s.ctx, node, addr)
			case <-s.ctx.Done():
				err = s.ctx.Err()
			}
		}
		if err == nil {
			err = settle(c, settleFor)
		}
		s.mu.Lock()
		delete(s.dialing, node)
		s.mu.Unlock()
		if err != nil {
			return // the next start dials as before, and tries again
		}
		s.put(node, addr, c, raw)
	}()
}

// drop closes the connections kept to node (membership found it dead or
// gone: should it come back, they lead nowhere).
func (s *spares) drop(node string) {
	s.mu.Lock()
	kept := s.conns[node]
	delete(s.conns, node)
	s.mu.Unlock()
	for _, sp := range kept {
		sp.timer.Stop()
		sp.c.Close()
	}
}

func (s *spares) expire(node string, sp *spare) {
	s.mu.Lock()
	kept := s.conns[node]
	i := slices.Index(kept, sp)
	if i >= 0 {
		s.conns[node] = slices.Delete(kept, i, i+1)
	}
	s.mu.Unlock()
	if i >= 0 {
		sp.c.Close()
	}
}

// close closes the spares and waits for the dials under way.
func (s *spares) close() {
	s.mu.Lock()
	s.closed = true
	for node, kept := range s.conns {
		for _, sp := range kept {
			sp.timer.Stop()
			sp.c.Close()
		}
		delete(s.conns, node)
	}
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
}

// settleFor is how long a new spare is read before it is kept: what the
// other end sends after a handshake (TLS 1.3 session tickets) arrives
// within it, and is taken in by the TLS layer. lateFor is how long a spare
// found with bytes waiting is read when taken (a ticket that came late).
const (
	settleFor = 5 * time.Millisecond
	lateFor   = 200 * time.Microsecond
)

// settle reads c for a while: the other end must send nothing else before
// the first message, so anything but a timeout means it is not usable.
func settle(c net.Conn, wait time.Duration) error {
	if err := c.SetReadDeadline(time.Now().Add(wait)); err != nil {
		return err
	}
	n, err := c.Read(make([]byte, 1))
	var ne net.Error
	switch {
	case n > 0:
		c.Close()
		return errors.New("the other end sent data before the first message")
	case !errors.As(err, &ne) || !ne.Timeout():
		c.Close()
		return err
	}
	if err := c.SetReadDeadline(time.Time{}); err != nil {
		c.Close()
		return err
	}
	return nil
}

// usable says whether a spare can carry a stream. The other end sends
// nothing before the first message but a late session ticket, so: nothing
// arrived (a peek at the socket, without waiting: a read whose deadline
// has passed does not even look), or what arrived is taken in by the TLS
// layer with nothing after it; not an end of file, a reset, or data.
func usable(sp *spare) bool {
	sc, ok := sp.raw.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var n int
	var perr error
	if err := rc.Read(func(fd uintptr) bool {
		n, _, perr = unix.Recvfrom(int(fd), make([]byte, 1), unix.MSG_PEEK|unix.MSG_DONTWAIT)
		return true
	}); err != nil {
		return false
	}
	switch {
	case errors.Is(perr, unix.EAGAIN):
		return true
	case perr != nil || n == 0:
		return false // reset, or closed
	}
	return settle(sp.c, lateFor) == nil
}
