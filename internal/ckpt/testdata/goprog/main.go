// goprog: an ordinary Go program (threads of its runtime, its poller's
// epoll set and eventfd, a ticker), hashing in four goroutines each round.
package main

import (
	"crypto/sha256"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"
)

func main() {
	n, _ := strconv.Atoi(os.Args[1])
	var mu sync.Mutex
	sums := make([][32]byte, 4)
	ticks := time.NewTicker(10 * time.Millisecond)
	defer ticks.Stop()
	for i := 0; i < n; i++ {
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				h := sha256.Sum256([]byte(fmt.Sprint(i, w)))
				for range 2000 {
					h = sha256.Sum256(h[:])
				}
				mu.Lock()
				sums[w] = sha256.Sum256(append(sums[w][:], h[:]...))
				mu.Unlock()
			}()
		}
		wg.Wait()
		<-ticks.C
		fmt.Println(i)
	}
	for w, s := range sums {
		fmt.Printf("%d %x\n", w, s[:8])
	}
}
