package bench

import "testing"

func TestPerNode(t *testing.T) {
	got := perNode(map[string]int{"n10": 2, "n2": 1, "n1": 3, "n3": 0})
	if want := "n1 3, n2 1, n10 2"; got != want {
		t.Errorf("perNode = %q, want %q", got, want)
	}
	if got := perNode(nil); got != "" {
		t.Errorf("perNode(nil) = %q, want nothing", got)
	}
}
