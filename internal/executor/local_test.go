package executor

import (
	"bytes"
	"context"
	"testing"

	"github.com/mosaic-cluster/mosaic/internal/bufpool"
	"github.com/mosaic-cluster/mosaic/internal/peerpb"
	"github.com/mosaic-cluster/mosaic/internal/procstream"
)

// A local stream's output stays as it was sent until the home's next
// Recv, however much follows it, and its buffer is then used again.
func TestLocalOutputLentUntilNextRecv(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p := &localPipe{ctx: ctx, cancel: cancel, out: make(chan *peerpb.ExecOut, 16), outputs: bufpool.New(keptOutputs)}
	server, client := localServer{p}, localClient{p}

	frame := func(fill byte, n int) []byte {
		b := make([]byte, procstream.HeaderSize+n)
		for i := procstream.HeaderSize; i < len(b); i++ {
			b[i] = fill
		}
		return b
	}
	buf := frame('a', 1000)
	if err := server.SendData(1, buf); err != nil {
		t.Fatal(err)
	}
	clear(buf) // the sender's buffer may be reused at once
	first, err := client.Recv()
	if err != nil {
		t.Fatal(err)
	}
	// More output while the home still writes the first.
	for i := range 5 {
		if err := server.SendData(2, frame(byte('b'+i), chunk)); err != nil {
			t.Fatal(err)
		}
	}
	if got := first.GetStdout(); !bytes.Equal(got, bytes.Repeat([]byte{'a'}, 1000)) {
		t.Fatalf("the first output changed before the next Recv: %q...", got[:min(len(got), 16)])
	}
	if p.outputs.Held() != 0 {
		t.Fatalf("the pool holds %d bytes while all its buffers are out", p.outputs.Held())
	}
	for i := range 5 {
		m, err := client.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if got := m.GetStderr(); len(got) != chunk || got[0] != byte('b'+i) || got[chunk-1] != byte('b'+i) {
			t.Fatalf("output %d: %d bytes starting %q", i, len(got), got[:1])
		}
		// The one before came back.
		if held, want := p.outputs.Held(), (i+1)*(procstream.HeaderSize+chunk); held != want {
			t.Fatalf("after %d Recvs the pool holds %d bytes, want %d", i+2, held, want)
		}
	}
}
