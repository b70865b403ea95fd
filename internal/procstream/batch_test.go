package procstream

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/bufpool"
)

// tcpPair is pair, closed when the test ends.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	client, server = pair(t)
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// A batch's writes arrive whole and in order, and the buffer they were
// gathered in goes back to the pool when the connection closes.
func TestBatchReturnsItsBuffer(t *testing.T) {
	c, s := tcpPair(t)
	pool := bufpool.New(BatchSize)
	b := NewBatchConn(c, pool)
	var want bytes.Buffer
	err := b.Batch(func() error {
		for i := range 3 {
			p := bytes.Repeat([]byte{byte('a' + i)}, 100<<10)
			want.Write(p)
			if _, err := b.Write(p); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, want.Len())
	if _, err := io.ReadFull(s, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatal("the batch's bytes arrived changed")
	}
	if pool.Held() != 0 {
		t.Fatalf("the pool holds %d bytes while the connection is open", pool.Held())
	}
	b.Close()
	if pool.Held() != BatchSize {
		t.Fatalf("after the close the pool holds %d bytes, want the batch buffer's %d", pool.Held(), BatchSize)
	}
}

// Closing a connection ends a write that is stuck on it (its peer reads
// nothing): the close does not wait for the write's lock.
func TestCloseEndsAStuckWrite(t *testing.T) {
	c, _ := tcpPair(t)
	b := NewBatchConn(c, bufpool.New(BatchSize))
	wrote := make(chan error, 1)
	go func() {
		_, err := b.Write(make([]byte, 256<<20)) // far more than the socket buffers hold
		wrote <- err
	}()
	time.Sleep(100 * time.Millisecond) // the write fills the buffers and blocks
	closed := make(chan struct{})
	go func() {
		b.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close waited for a stuck write")
	}
	select {
	case err := <-wrote:
		if err == nil {
			t.Fatal("the stuck write succeeded after the close")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the stuck write did not end with the close")
	}
}
