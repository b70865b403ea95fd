package procstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"

	"github.com/mosaic-cluster/mosaic/internal/peerpb"
)

// pair returns the two ends of a TCP connection on loopback.
func pair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	return client, <-accepted
}

func TestRoundTrip(t *testing.T) {
	cc, sc := pair(t)
	c := NewClient(context.Background(), cc)
	s := NewServer(context.Background(), sc)
	defer s.Close()

	start := &peerpb.ExecIn{Msg: &peerpb.ExecIn_Start{Start: &peerpb.ExecStart{Id: "n1.7", Argv: []string{"cat"}}}}
	stdin := &peerpb.ExecIn{Msg: &peerpb.ExecIn_Stdin{Stdin: []byte("hello")}}
	go func() {
		c.Send(start)
		c.Send(stdin)
		c.CloseSend()
	}()
	m, err := s.Recv()
	if err != nil || m.GetStart().GetId() != "n1.7" {
		t.Fatalf("first Recv = %v, %v", m, err)
	}
	m, err = s.Recv()
	if err != nil || string(m.GetStdin()) != "hello" {
		t.Fatalf("second Recv = %v, %v", m, err)
	}
	if _, err := s.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after CloseSend, Recv = %v, want EOF", err)
	}

	// The server can still answer after the client closed its side.
	big := bytes.Repeat([]byte("x"), MaxData)
	buf := append(make([]byte, HeaderSize), big...)
	go func() {
		s.Send(&peerpb.ExecOut{Msg: &peerpb.ExecOut_Started{Started: 42}})
		s.SendData(1, buf)
		s.Send(&peerpb.ExecOut{Msg: &peerpb.ExecOut_Stderr{Stderr: []byte("oops")}})
		s.Send(&peerpb.ExecOut{Msg: &peerpb.ExecOut_Exit{Exit: &peerpb.Exit{Code: 3}}})
		s.Close()
	}()
	if m, err := c.Recv(); err != nil || m.GetStarted() != 42 {
		t.Fatalf("Recv started = %v, %v", m, err)
	}
	if m, err := c.Recv(); err != nil || !bytes.Equal(m.GetStdout(), big) {
		t.Fatalf("Recv stdout: %d bytes, %v", len(m.GetStdout()), err)
	}
	if m, err := c.Recv(); err != nil || string(m.GetStderr()) != "oops" {
		t.Fatalf("Recv stderr = %v, %v", m, err)
	}
	if m, err := c.Recv(); err != nil || m.GetExit().GetCode() != 3 {
		t.Fatalf("Recv exit = %v, %v", m, err)
	}
	if _, err := c.Recv(); err == nil {
		t.Fatal("Recv after the server closed succeeded")
	}
	if err := c.Send(stdin); err == nil {
		t.Fatal("Send after CloseSend succeeded")
	}
}

func TestCancelBreaksTheOtherEnd(t *testing.T) {
	cc, sc := pair(t)
	ctx, cancel := context.WithCancel(context.Background())
	NewClient(ctx, cc)
	s := NewServer(context.Background(), sc)
	cancel()
	if _, err := s.Recv(); err == nil {
		t.Fatal("Recv succeeded after the client was cancelled")
	}
}

func TestOversizedFrameRefused(t *testing.T) {
	cc, sc := pair(t)
	s := NewServer(context.Background(), sc)
	defer s.Close()
	cc.Write([]byte{frameMessage, 0xff, 0xff, 0xff, 0xff})
	if _, err := s.Recv(); err == nil {
		t.Fatal("a 4 GiB frame was accepted")
	}
}

// TestReadData reads data frames of several sizes as one stream, through
// buffers smaller and larger than a frame, and leaves the message after
// them for Recv.
func TestReadData(t *testing.T) {
	cc, sc := pair(t)
	c := NewClient(context.Background(), cc)
	s := NewServer(context.Background(), sc)
	defer s.Close()
	var want []byte
	sizes := []int{1, 5000, 300 << 10, 70 << 10, 3}
	for i, n := range sizes {
		want = append(want, bytes.Repeat([]byte{byte('a' + i)}, n)...)
	}
	go func() {
		off := 0
		for _, n := range sizes {
			c.SendData(want[off : off+n])
			off += n
		}
		c.Send(start("n1.1"))
		c.SendData([]byte("late"))
		c.Send(start("n1.2"))
		c.CloseSend()
	}()
	got := make([]byte, len(want))
	for off, step := 0, 1; off < len(got); step = step*3 + 1 {
		n, err := s.ReadData(got[off:min(off+step, len(got))])
		if err != nil {
			t.Fatalf("ReadData at %d: %v", off, err)
		}
		off += n
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the data read differs from the data sent")
	}
	if m, err := s.Recv(); err != nil || m.GetStart().GetId() != "n1.1" {
		t.Fatalf("Recv after the data = %v, %v", m, err)
	}
	if m, err := s.Recv(); err != nil || string(m.GetStdin()) != "late" {
		t.Fatalf("Recv of the late data = %v, %v", m, err)
	}
	// A message where data is expected is an error, not data.
	if _, err := s.ReadData(make([]byte, 10)); err == nil {
		t.Fatal("ReadData read a message frame as data")
	}
}

func start(id string) *peerpb.ExecIn {
	return &peerpb.ExecIn{Msg: &peerpb.ExecIn_Start{Start: &peerpb.ExecStart{Id: id}}}
}

// TestReadDataCutShort: a connection that ends inside a frame is an
// unexpected end, not a clean one.
func TestReadDataCutShort(t *testing.T) {
	cc, sc := pair(t)
	s := NewServer(context.Background(), sc)
	defer s.Close()
	cc.Write([]byte{frameStdin, 0, 0, 0, 10, 'x', 'y'})
	cc.Close()
	buf := make([]byte, 10)
	n, err := s.ReadData(buf)
	for err == nil {
		var m int
		m, err = s.ReadData(buf[n:])
		n += m
	}
	if n != 2 || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("read %d bytes, then %v; want 2 and an unexpected EOF", n, err)
	}
}

// TestStreamsShareAConnection: a stream that ended cleanly at both ends
// leaves its connection to the next one, which sees nothing of the first;
// the stream's own context no longer breaks it.
func TestStreamsShareAConnection(t *testing.T) {
	cc, sc := pair(t)
	defer cc.Close()
	defer sc.Close()
	for i := range 3 {
		id := fmt.Sprintf("n1.%d", i)
		ctx, cancel := context.WithCancel(context.Background())
		c := NewClient(ctx, cc)
		s := NewServer(context.Background(), sc)
		if err := c.Send(start(id)); err != nil {
			t.Fatal(err)
		}
		if m, err := s.Recv(); err != nil || m.GetStart().GetId() != id {
			t.Fatalf("stream %d: Recv = %v, %v", i, m, err)
		}
		s.Send(&peerpb.ExecOut{Msg: &peerpb.ExecOut_Stdout{Stdout: []byte("out of " + id)}})
		s.Send(&peerpb.ExecOut{Msg: &peerpb.ExecOut_Exit{Exit: &peerpb.Exit{Code: int32(i)}}})
		if err := s.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&peerpb.ExecOut{Msg: &peerpb.ExecOut_Started{Started: 1}}); err == nil {
			t.Fatal("a send after the end frame went through")
		}
		if m, err := c.Recv(); err != nil || string(m.GetStdout()) != "out of "+id {
			t.Fatalf("stream %d: output %v, %v", i, m, err)
		}
		if m, err := c.Recv(); err != nil || m.GetExit().GetCode() != int32(i) {
			t.Fatalf("stream %d: exit %v, %v", i, m, err)
		}
		if !c.Detach() {
			t.Fatal("Detach failed on a live stream")
		}
		cancel() // the home is done with the process: that must not close the connection
		type finished struct {
			c   net.Conn
			err error
		}
		done := make(chan finished, 1)
		go func() {
			c, err := c.Finish(context.Background())
			done <- finished{c, err}
		}()
		if _, err := s.Recv(); !errors.Is(err, io.EOF) {
			t.Fatalf("stream %d: the server read %v after the home's end, want EOF", i, err)
		}
		if !s.Release() {
			t.Fatalf("stream %d: a stream that ended cleanly does not release its connection", i)
		}
		s.Close() // after Release: the connection stays
		f := <-done
		if f.err != nil || f.c != cc {
			t.Fatalf("stream %d: Finish = %v, %v", i, f.c, f.err)
		}
	}
}

// TestEndIsFinal: after the end frame, Recv reads EOF again and again,
// and leaves what follows (another stream's) unread.
func TestEndIsFinal(t *testing.T) {
	cc, sc := pair(t)
	c := NewClient(context.Background(), cc)
	s := NewServer(context.Background(), sc)
	defer s.Close()
	c.Send(start("n1.1"))
	c.CloseSend()
	cc.Write([]byte{frameStdin, 0, 0, 0, 1, 'x'}) // as the next stream would
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := s.Recv(); !errors.Is(err, io.EOF) {
			t.Fatalf("Recv after the end frame = %v, want EOF", err)
		}
	}
	if _, err := s.ReadData(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("ReadData after the end frame = %v, want EOF", err)
	}
	next := NewServer(context.Background(), sc)
	if m, err := next.Recv(); err != nil || string(m.GetStdin()) != "x" {
		t.Fatalf("the next stream read %v, %v", m, err)
	}
}

// TestUncleanEndsCloseTheConnection: a connection is not reused after
// anything but end frames both ways: the home's end missing, the server
// sending more after the exit, or the other end closing.
func TestUncleanEndsCloseTheConnection(t *testing.T) {
	t.Run("no end from the home", func(t *testing.T) {
		cc, sc := pair(t)
		defer cc.Close()
		s := NewServer(context.Background(), sc)
		s.CloseSend()
		if s.Release() {
			t.Fatal("released without the home's end frame")
		}
		s.Close()
		if _, err := cc.Read(make([]byte, 16)); err != nil {
			t.Fatal(err) // the end frame
		}
		if n, err := cc.Read(make([]byte, 1)); err == nil {
			t.Fatalf("the connection is still open (read %d bytes)", n)
		}
	})
	t.Run("more after the exit", func(t *testing.T) {
		cc, sc := pair(t)
		defer sc.Close()
		c := NewClient(context.Background(), cc)
		sc.Write([]byte{frameStdout, 0, 0, 0, 1, 'x', frameEnd, 0, 0, 0, 0})
		c.Detach()
		if conn, err := c.Finish(context.Background()); err == nil {
			t.Fatalf("Finish handed out %v after stray output", conn)
		}
		if _, err := cc.Write([]byte("x")); err == nil {
			t.Fatal("the connection is still open")
		}
	})
	t.Run("the server closes", func(t *testing.T) {
		cc, sc := pair(t)
		c := NewClient(context.Background(), cc)
		sc.Close()
		c.Detach()
		if _, err := c.Finish(context.Background()); err == nil {
			t.Fatal("Finish succeeded on a connection the server closed")
		}
	})
	t.Run("given up", func(t *testing.T) {
		cc, sc := pair(t)
		defer sc.Close()
		c := NewClient(context.Background(), cc)
		c.Detach()
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := c.Finish(ctx); err == nil {
			t.Fatal("Finish succeeded with its context ended and no end frame")
		}
	})
}
