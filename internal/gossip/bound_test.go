package gossip

import (
	"testing"
	"time"
)

func TestDeadBound(t *testing.T) {
	if got := DeadBound(Config{}, 4); got != 11*time.Second {
		t.Fatalf("DeadBound(defaults, 4) = %s, want 11s (as documented)", got)
	}
	if a, b := DeadBound(Config{}, 8), DeadBound(Config{}, 16); b <= a {
		t.Fatalf("bound does not grow with n: %s, %s", a, b)
	}
	if got := DeadBound(Config{Interval: 100 * time.Millisecond}, 4); got != 1100*time.Millisecond {
		t.Fatalf("DeadBound(100ms, 4) = %s", got)
	}
}
