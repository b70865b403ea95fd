package cpufeat

import (
	"runtime"
	"slices"
	"testing"
)

func TestLocal(t *testing.T) {
	got := Local()
	if runtime.GOARCH != "amd64" {
		if len(got) != 0 {
			t.Fatalf("features %v on %s", got, runtime.GOARCH)
		}
		return
	}
	// Every amd64 CPU has SSE2; none of the names is a speed hint.
	if !slices.Contains(got, "sse2") || slices.Contains(got, "erms") {
		t.Fatalf("Local() = %v: want sse2 in, erms out", got)
	}
	if !slices.IsSorted(got) {
		t.Fatalf("Local() = %v: not sorted", got)
	}
}

func TestUnionAndMissing(t *testing.T) {
	home := []string{"avx", "avx2", "sse2"}
	there := []string{"aes", "avx", "sse2"}
	u := Union(home, there)
	if want := []string{"aes", "avx", "avx2", "sse2"}; !slices.Equal(u, want) {
		t.Fatalf("Union = %v, want %v", u, want)
	}
	if m := Missing(u, there); !slices.Equal(m, []string{"avx2"}) {
		t.Fatalf("Missing(%v, %v) = %v, want [avx2]", u, there, m)
	}
	if m := Missing(home, u); len(m) != 0 {
		t.Fatalf("Missing from a superset = %v", m)
	}
	if m := Missing(nil, nil); len(m) != 0 {
		t.Fatalf("Missing(nil, nil) = %v", m)
	}
}
