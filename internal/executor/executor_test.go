package executor

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/peerpb"
	"github.com/mosaic-cluster/mosaic/internal/procstream"
)

// fakeStream is a ServerStream fed from a slice; only the refusal paths,
// which start nothing, are tested with it (the rest runs real processes in
// e2e/).
type fakeStream struct {
	in  []*peerpb.ExecIn
	out []*peerpb.ExecOut
}

func (f *fakeStream) Send(m *peerpb.ExecOut) error { f.out = append(f.out, m); return nil }
func (f *fakeStream) Context() context.Context     { return context.Background() }
func (f *fakeStream) Recv() (*peerpb.ExecIn, error) {
	if len(f.in) == 0 {
		return nil, io.EOF
	}
	m := f.in[0]
	f.in = f.in[1:]
	return m, nil
}

func TestOnlyTheHomeStartsItsProcesses(t *testing.T) {
	e := New(Config{Node: "n3", Log: slog.New(slog.DiscardHandler)})
	cases := []struct {
		from string
		st   *peerpb.ExecStart
		want string
	}{
		{"n2", &peerpb.ExecStart{Id: "n1.5", Home: "n1", Argv: []string{"true"}}, "may not start process n1.5"},
		{"n2", &peerpb.ExecStart{Id: "n1.5", Home: "n2", Argv: []string{"true"}}, "may not start process n1.5"},
		{"n1", &peerpb.ExecStart{Id: "n1.5", Home: "n1"}, "no program given"},
	}
	for _, c := range cases {
		s := &fakeStream{in: []*peerpb.ExecIn{{Msg: &peerpb.ExecIn_Start{Start: c.st}}}}
		if err := e.Serve(c.from, s); err != nil {
			t.Fatalf("Serve: %v", err)
		}
		if len(s.out) != 1 || s.out[0].GetFailure() == nil || !strings.Contains(s.out[0].GetFailure().GetMessage(), c.want) {
			t.Fatalf("from %s, %+v: answered %v, want a refusal with %q", c.from, c.st, s.out, c.want)
		}
	}
	s := &fakeStream{in: []*peerpb.ExecIn{{Msg: &peerpb.ExecIn_Stdin{Stdin: []byte("x")}}}}
	if err := e.Serve("n1", s); err == nil {
		t.Fatal("a stream that does not begin with a start was served")
	}
}

// A stream that has not sent its first message (a home's spare, dialed
// ahead) ends when the executor closes, and so does one that comes later:
// a node does not wait for its peers to stop.
func TestCloseEndsWaitingStreams(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	e := New(Config{Node: "n2", Log: slog.New(slog.DiscardHandler)})
	serve := func() (client net.Conn, served chan error) {
		client, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		server, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		served = make(chan error, 1)
		go func() {
			s := procstream.NewServer(context.Background(), server)
			defer s.Close()
			served <- e.Serve("n1", s)
		}()
		return client, served
	}
	waiting, served := serve()
	defer waiting.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		e.mu.Lock()
		n := len(e.waiting)
		e.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the stream is not waiting for its first message")
		}
		time.Sleep(time.Millisecond)
	}
	e.Close()
	select {
	case err := <-served:
		if err == nil {
			t.Fatal("Serve of a stream ended by Close returned no error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close left a stream waiting for its first message")
	}
	if _, err := waiting.Read(make([]byte, 1)); err == nil {
		t.Fatal("the home's end of the stream is still open")
	}
	late, served := serve()
	defer late.Close()
	select {
	case err := <-served:
		if err == nil || !strings.Contains(err.Error(), "shutting down") {
			t.Fatalf("a stream after Close: %v, want that the node is shutting down", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a stream that came after Close waits")
	}
}

// The home tells the target to adopt a process and the source to send it
// at once, on two connections: an image that comes before its adoption
// waits for it, and one from the wrong node is refused.
func TestImageBeforeItsAdoption(t *testing.T) {
	e := New(Config{Node: "n3", Log: slog.New(slog.DiscardHandler)})
	offer := &peerpb.ImageOffer{Id: "n1.7", Token: "tok"}
	s := &fakeStream{in: []*peerpb.ExecIn{{Msg: &peerpb.ExecIn_Image{Image: offer}}}}
	served := make(chan error, 1)
	go func() { served <- e.Serve("n2", s) }()
	time.Sleep(50 * time.Millisecond) // the image waits
	ad := &adoption{id: "n1.7", source: "n2", image: make(chan *imageConn, 1)}
	if !e.expectAdoption("tok", ad) {
		t.Fatal("the adoption was not registered")
	}
	select {
	case ic := <-ad.image:
		if ic.offer.Id != "n1.7" {
			t.Fatalf("the adoption got the image of %s", ic.offer.Id)
		}
		close(ic.done)
	case err := <-served:
		t.Fatalf("the image was not handed to its adoption: Serve returned %v, sent %v", err, s.out)
	case <-time.After(5 * time.Second):
		t.Fatal("the image did not reach the adoption registered after it")
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}

	// Announced from n2, sent from n4: refused at once.
	e.expectAdoption("tok2", &adoption{id: "n1.8", source: "n2", image: make(chan *imageConn, 1)})
	s = &fakeStream{in: []*peerpb.ExecIn{{Msg: &peerpb.ExecIn_Image{Image: &peerpb.ImageOffer{Id: "n1.8", Token: "tok2"}}}}}
	if err := e.Serve("n4", s); err != nil {
		t.Fatal(err)
	}
	if len(s.out) != 1 || !strings.Contains(s.out[0].GetFailure().GetMessage(), "expects no process n1.8 from n4") {
		t.Fatalf("an image from the wrong node was answered %v", s.out)
	}
}

// An image offered by a process that may use instruction-set extensions
// this node's CPU lacks reaches its adoption refused, with the reason;
// one that needs only what the node has does not.
func TestImageNeedsTheCPU(t *testing.T) {
	e := New(Config{Node: "n3", Log: slog.New(slog.DiscardHandler), CPU: []string{"avx", "sse2"}})
	for _, c := range []struct {
		needs []string
		why   string
	}{
		{[]string{"avx", "sse2"}, ""},
		{[]string{"avx", "avx512f", "sse2", "vaes"}, "the CPU of n3 lacks avx512f, vaes, which n1.7 may use"},
	} {
		ad := &adoption{id: "n1.7", source: "n2", image: make(chan *imageConn, 1)}
		if !e.expectAdoption("tok", ad) {
			t.Fatal("the adoption was not registered")
		}
		offer := &peerpb.ImageOffer{Id: "n1.7", Token: "tok", Ahead: true, CpuFeatures: c.needs}
		s := &fakeStream{in: []*peerpb.ExecIn{{Msg: &peerpb.ExecIn_Image{Image: offer}}}}
		served := make(chan error, 1)
		go func() { served <- e.Serve("n2", s) }()
		select {
		case ic := <-ad.image:
			if c.why == "" && ic.refused != "" || !strings.HasPrefix(ic.refused, c.why) {
				t.Errorf("needing %v: refused %q, want %q", c.needs, ic.refused, c.why)
			}
			close(ic.done)
		case <-time.After(5 * time.Second):
			t.Fatal("the image did not reach its adoption")
		}
		if err := <-served; err != nil {
			t.Fatal(err)
		}
	}
}
