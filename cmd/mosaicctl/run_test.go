package main

import (
	"slices"
	"testing"

	"github.com/spf13/pflag"

	"github.com/mosaic-cluster/mosaic/internal/runclient"
)

// cobra's run command and the mosaic binary's own parser know the same
// flags (--socket is the root's here).
func TestRunFlagsShared(t *testing.T) {
	var names []string
	newRunCmd(&globals{}).Flags().VisitAll(func(f *pflag.Flag) { names = append(names, f.Name) })
	names = append(names, "socket")
	fast := runclient.Flags()
	slices.Sort(names)
	slices.Sort(fast)
	if !slices.Equal(names, fast) {
		t.Fatalf("cobra's run has flags %v, runclient.Parse %v", names, fast)
	}
}
