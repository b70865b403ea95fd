package bufpool

import (
	"testing"

	"golang.org/x/sys/unix"
)

// What a pool saves: writing a megabyte of fresh memory (mapped anew, as
// the runtime's fresh or returned spans are) against a megabyte kept from
// before. Both write one byte a page; the fresh one takes a page fault on
// each. `go test -bench . ./internal/bufpool`
const benchBytes = 1 << 20

func BenchmarkTouchFresh(b *testing.B) {
	for b.Loop() {
		m, err := unix.Mmap(-1, 0, benchBytes, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			b.Fatal(err)
		}
		touch(m)
		unix.Munmap(m)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/(benchBytes/4096)/1000, "µs/page")
}

func BenchmarkTouchPooled(b *testing.B) {
	p := New(benchBytes)
	p.Put(make([]byte, benchBytes))
	for b.Loop() {
		m := p.Get(benchBytes)
		touch(m)
		p.Put(m)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/(benchBytes/4096)/1000, "µs/page")
}

func touch(m []byte) {
	for i := 0; i < len(m); i += 4096 {
		m[i]++
	}
}
