package daemon

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/mosaic-cluster/mosaic/internal/peerpb"
	"github.com/mosaic-cluster/mosaic/internal/procstream"
)

// peerEnd accepts connections on loopback, as the other node would, and
// hands over the server ends until stop.
func peerEnd(t *testing.T) (addr string, accepted <-chan net.Conn, stop func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			ch <- c
		}
	}()
	return ln.Addr().String(), ch, func() { ln.Close() }
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func (s *spares) has(node string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns[node]) > 0
}

// The first stream to a node is dialed by its caller and a spare follows;
// the next takes the spare (and another follows); a spare the peer closed
// is not handed out; an unused one expires; close ends them all.
func TestSpares(t *testing.T) {
	defer goleak.VerifyNone(t, leakOpts...)
	addr, accepted, stop := peerEnd(t)
	defer stop()
	s := newSpares(func(ctx context.Context, node, addr string) (net.Conn, net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		return c, c, err
	})
	s.refillAfter = time.Millisecond
	closed := false
	defer func() {
		if !closed {
			s.close()
		}
	}()

	if c, _ := s.take("n2", addr); c != nil {
		t.Fatal("a spare before any was dialed")
	}
	waitFor(t, "a spare to n2", func() bool { return s.has("n2") })
	server := <-accepted
	c, _ := s.take("n2", addr)
	if c == nil {
		t.Fatal("the spare was not handed out")
	}
	// It is the connection the peer accepted, and it works.
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1)
	if _, err := io.ReadFull(server, buf); err != nil || buf[0] != 'x' {
		t.Fatalf("the peer read %q, %v from the spare", buf, err)
	}
	c.Close()
	server.Close()

	// The next spare is closed by the peer before it is used.
	waitFor(t, "a second spare to n2", func() bool { return s.has("n2") })
	(<-accepted).Close()
	time.Sleep(10 * time.Millisecond) // the FIN travels
	if c, _ := s.take("n2", addr); c != nil {
		t.Fatal("a spare the peer had closed was handed out")
	}

	// A node's spare is for its address only.
	waitFor(t, "a third spare to n2", func() bool { return s.has("n2") })
	third := <-accepted
	if c, _ := s.take("n2", "127.0.0.1:1"); c != nil {
		t.Fatal("a spare to another address was handed out")
	}
	if _, err := third.Read(buf); err != io.EOF {
		t.Fatalf("the peer's end of a discarded spare read %v, want EOF", err)
	}
	third.Close()

	// Unused, a spare expires.
	s.close()
	s = newSpares(s.dial)
	s.refillAfter, s.idle = time.Millisecond, 20*time.Millisecond
	s.refill("n3", addr)
	waitFor(t, "a spare to n3", func() bool { return s.has("n3") })
	expiring := <-accepted
	if _, err := expiring.Read(buf); err != io.EOF {
		t.Fatalf("the peer's end of an unused spare read %v, want EOF", err)
	}
	expiring.Close()
	if s.has("n3") {
		t.Fatal("an expired spare is still kept")
	}

	// close ends the spares kept.
	s.refill("n4", addr)
	waitFor(t, "a spare to n4", func() bool { return s.has("n4") })
	last := <-accepted
	s.close()
	closed = true
	if _, err := last.Read(buf); err != io.EOF {
		t.Fatalf("the peer's end of a spare read %v after close, want EOF", err)
	}
	last.Close()
}

// Connections given back are handed out again, the most recent first,
// skipping one the peer closed meanwhile; a node keeps maxIdle at most.
func TestSparesKeepConnectionsGivenBack(t *testing.T) {
	defer goleak.VerifyNone(t, leakOpts...)
	addr, accepted, stop := peerEnd(t)
	defer stop()
	s := newSpares(func(ctx context.Context, node, addr string) (net.Conn, net.Conn, error) {
		return nil, nil, errors.New("no dialing in this test")
	})
	defer s.close()
	s.maxIdle = 2
	dial := func() (client, server net.Conn) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		return c, <-accepted
	}
	c1, p1 := dial()
	c2, p2 := dial()
	c3, p3 := dial()
	defer p1.Close()
	defer p2.Close()
	defer p3.Close()
	s.put("n2", addr, c1, c1)
	s.put("n2", addr, c2, c2)
	s.put("n2", addr, c3, c3) // one too many: closed
	buf := make([]byte, 1)
	if _, err := p3.Read(buf); err != io.EOF {
		t.Fatalf("the peer's end of a connection beyond maxIdle read %v, want EOF", err)
	}
	p2.Close()
	time.Sleep(10 * time.Millisecond) // the FIN travels
	if c, _ := s.take("n2", addr); c != c1 {
		t.Fatalf("take = %v, want the first connection (the second was closed by the peer)", c)
	}
	if c, _ := s.take("n2", addr); c != nil {
		t.Fatalf("take = %v from an empty pool", c)
	}
	c1.Close()
}

// A stream on a kept connection that breaks before anything came back (the
// node at the other end restarted: it resets the connection) starts over
// once on a new one, first message and all; one on a connection just
// dialed does not (nothing stale to suspect).
func TestKeptConnectionStartsOver(t *testing.T) {
	defer goleak.VerifyNone(t, leakOpts...)
	addr, accepted, stop := peerEnd(t)
	defer stop()
	dial := func() (net.Conn, net.Conn, error) {
		c, err := net.Dial("tcp", addr)
		return c, c, err
	}
	start := &peerpb.ExecIn{Msg: &peerpb.ExecIn_Start{Start: &peerpb.ExecStart{Id: "n1.1"}}}
	// reset reads the first message, then resets the connection.
	reset := func(c net.Conn) {
		s := procstream.NewServer(context.Background(), c)
		s.Recv()
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}
	// answer reads the first message and answers with its id as pid.
	answer := func(c net.Conn) {
		s := procstream.NewServer(context.Background(), c)
		defer s.Close()
		m, err := s.Recv()
		if err != nil {
			return
		}
		id := m.GetStart().GetId()
		s.Send(&peerpb.ExecOut{Msg: &peerpb.ExecOut_Started{Started: int32(len(id))}})
	}
	sp := newSpares(nil)
	defer sp.close()
	stream := func(redial bool) *reusable {
		c, _, err := dial()
		if err != nil {
			t.Fatal(err)
		}
		r := &reusable{ctx: context.Background(), spares: sp, node: "n2", addr: addr, Client: procstream.NewClient(context.Background(), c), raw: c}
		if redial {
			r.redial = dial
		}
		return r
	}

	r := stream(true)
	go reset(<-accepted)
	if err := r.Send(start); err != nil {
		t.Fatal(err)
	}
	go func() { answer(<-accepted) }() // the new connection
	if m, err := r.Recv(); err != nil || m.GetStarted() != int32(len("n1.1")) {
		t.Fatalf("after the kept connection was reset: %v, %v", m, err)
	}
	r.Client.Close()

	r = stream(false)
	go reset(<-accepted)
	r.Send(start)
	if m, err := r.Recv(); err == nil {
		t.Fatalf("a stream on a new connection started over: %v", m)
	}
	r.Client.Close()
}

// A send that waits for the other end to read does not keep Recv from
// reading what the other end sends meanwhile (input and output both ways,
// as through cat: the other end reads again only once its output went).
func TestSendWaitingLetsRecvRead(t *testing.T) {
	defer goleak.VerifyNone(t, leakOpts...)
	addr, accepted, stop := peerEnd(t)
	defer stop()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	server := <-accepted
	defer server.Close()
	sp := newSpares(nil)
	defer sp.close()
	r := &reusable{ctx: context.Background(), spares: sp, node: "n2", addr: addr, Client: procstream.NewClient(context.Background(), c), raw: c,
		redial: func() (net.Conn, net.Conn, error) { return nil, nil, errors.New("no dialing in this test") }}
	defer r.Client.Close()
	s := procstream.NewServer(context.Background(), server)
	r.Send(&peerpb.ExecIn{Msg: &peerpb.ExecIn_Start{Start: &peerpb.ExecStart{Id: "n1.1"}}})
	s.Recv()
	s.Send(&peerpb.ExecOut{Msg: &peerpb.ExecOut_Started{Started: 2}})
	if _, err := r.Recv(); err != nil {
		t.Fatal(err)
	}
	// The other end stops reading and sends output; the home sends input
	// until its send waits.
	s.Send(&peerpb.ExecOut{Msg: &peerpb.ExecOut_Stdout{Stdout: []byte("out")}})
	sending := make(chan struct{})
	go func() {
		defer close(sending)
		chunk := &peerpb.ExecIn{Msg: &peerpb.ExecIn_Stdin{Stdin: make([]byte, 1<<20)}}
		for range 64 { // more than the sockets hold
			if r.Send(chunk) != nil {
				return
			}
		}
	}()
	time.Sleep(50 * time.Millisecond) // the send fills the sockets and waits
	got := make(chan string, 1)
	go func() {
		m, _ := r.Recv()
		got <- string(m.GetStdout())
	}()
	select {
	case out := <-got:
		if out != "out" {
			t.Fatalf("Recv read %q", out)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Recv waited for a send that waits for the other end")
	}
	server.Close() // the waiting send fails
	<-sending
}
