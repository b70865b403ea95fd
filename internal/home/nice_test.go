package home

import (
	"testing"

	"github.com/mosaic-cluster/mosaic/internal/api"
)

// The client's word on its nice value is taken within the kernel's range,
// and a negative one (more CPU than the default) only from root.
func TestNiceFor(t *testing.T) {
	root, user := api.Caller{UID: 0}, api.Caller{UID: 1000}
	for _, c := range []struct {
		caller     api.Caller
		nice, want int
	}{
		{user, 0, 0}, {user, 10, 10}, {user, 19, 19}, {user, 40, 19},
		{user, -1, 0}, {user, -20, 0},
		{root, -5, -5}, {root, -30, -20}, {root, 7, 7},
	} {
		if got := niceFor(c.caller, c.nice); got != c.want {
			t.Errorf("niceFor(uid %d, %d) = %d, want %d", c.caller.UID, c.nice, got, c.want)
		}
	}
}
