package procstream

import (
	"bytes"
	"context"
	"errors"
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
