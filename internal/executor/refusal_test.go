package executor

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"

	"github.com/mosaic-cluster/mosaic/internal/peerpb"
	"github.com/mosaic-cluster/mosaic/internal/procstream"
)

// A receiver that refuses an image part-way says why and drops the
// connection: the sender's write fails with a reset, and the reason, sent
// before it, is what the sender reports.
func TestRefusalPartWay(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		s := procstream.NewServer(context.Background(), c)
		if _, err := s.Recv(); err != nil { // the offer
			c.Close()
			return
		}
		s.ReadData(make([]byte, 1<<20)) // a little of the image
		s.Send(&peerpb.ExecOut{Msg: &peerpb.ExecOut_Failure{Failure: &peerpb.Failure{Message: "the image is damaged"}}})
		c.Close() // with the rest unread: a reset
	}()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	link := procstream.NewClient(ctx, c)
	_, err = sendImage(link, &peerpb.ImageOffer{Id: "n1.1"}, false, func(w io.Writer) error {
		b := make([]byte, 1<<20)
		for range 256 { // far more than the connection holds
			if _, err := w.Write(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		t.Fatal("256 MiB went to a receiver that stopped reading")
	}
	if why := Refusal(link, err, cancel); why != "the image is damaged" {
		t.Fatalf("refusal after %v: %q, want the receiver's reason", err, why)
	}
}

// A failure in making the image is not the receiver's: the link is not
// read (it would wait for a receiver that waits for the rest).
func TestNoRefusalForOwnFailure(t *testing.T) {
	link := &recvCounter{}
	if why := Refusal(link, errors.New("read the memory: no such process"), func() {}); why != "" || link.recvs != 0 {
		t.Fatalf("refusal %q after %d reads of the link, want none", why, link.recvs)
	}
	if why := Refusal(link, &linkError{errors.New("broken pipe")}, func() {}); why != "" || link.recvs != 1 {
		t.Fatalf("refusal %q after %d reads of the link, want one read and no reason", why, link.recvs)
	}
}

type recvCounter struct{ recvs int }

func (r *recvCounter) Send(*peerpb.ExecIn) error { return nil }
func (r *recvCounter) CloseSend() error          { return nil }
func (r *recvCounter) Recv() (*peerpb.ExecOut, error) {
	r.recvs++
	return nil, io.EOF
}
