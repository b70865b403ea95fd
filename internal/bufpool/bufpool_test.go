package bufpool

import (
	"sync"
	"testing"
)

func TestGetReusesTheSmallestThatFits(t *testing.T) {
	p := New(1 << 20)
	small, big := make([]byte, 100), make([]byte, 1000)
	p.Put(big)
	p.Put(small)
	if got := p.Get(50); &got[:1][0] != &small[0] || len(got) != 50 {
		t.Fatalf("Get(50) did not return the held 100-byte buffer, cut to 50")
	}
	if got := p.Get(500); &got[:1][0] != &big[0] || len(got) != 500 {
		t.Fatalf("Get(500) did not return the held 1000-byte buffer")
	}
	if p.Held() != 0 {
		t.Fatalf("held %d bytes after both were taken", p.Held())
	}
	if got := p.Get(10); len(got) != 10 {
		t.Fatalf("Get from an empty pool: length %d", len(got))
	}
}

func TestPutKeepsToTheLimit(t *testing.T) {
	p := New(1500)
	p.Put(make([]byte, 1000))
	p.Put(make([]byte, 1000)) // over the limit: dropped
	p.Put(make([]byte, 400))
	if p.Held() != 1400 {
		t.Fatalf("held %d bytes, want 1400", p.Held())
	}
	if got := p.Get(2000); cap(got) != 2000 || p.Held() != 1400 {
		t.Fatalf("a buffer larger than any held: cap %d, held %d", cap(got), p.Held())
	}
}

func TestNilPool(t *testing.T) {
	var p *Pool
	p.Put(make([]byte, 10))
	if got := p.Get(10); len(got) != 10 || p.Held() != 0 {
		t.Fatal("the nil pool does not allocate, or holds")
	}
}

func TestConcurrentUse(t *testing.T) {
	p := New(64 << 10)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 1000 {
				b := p.Get(1024 + (g*i)%4096)
				b[0], b[len(b)-1] = byte(g), byte(g)
				p.Put(b)
			}
		})
	}
	wg.Wait()
	if p.Held() > 64<<10 {
		t.Fatalf("held %d bytes, over the limit", p.Held())
	}
}

func TestWarm(t *testing.T) {
	p := New(3 << 20)
	p.Warm(4, 1<<20) // the fourth does not fit
	if p.Held() != 3<<20 {
		t.Fatalf("held %d bytes after warming, want %d", p.Held(), 3<<20)
	}
	if b := p.Get(1 << 20); len(b) != 1<<20 || p.Held() != 2<<20 {
		t.Fatal("a warmed buffer was not handed out")
	}
}
