package main

import (
	"runtime/debug"
	"strings"
	"testing"
)

// Every mosaic command but run (which the mosaic binary runs itself, and
// whose own test is stricter) starts this binary, and pays for the
// initialization of each package it links, before it does anything: the
// store, gRPC and protobuf belong in mosaicd (delegate.go). The test binary
// links what the CLI links (and the testing packages), so its module list
// shows what crept in.
func TestCLILinksNoHeavyModule(t *testing.T) {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		t.Fatal("no build information in the test binary")
	}
	if len(info.Deps) == 0 {
		t.Fatal("the build information lists no module: cannot tell what the CLI links")
	}
	heavy := []string{"go.etcd.io/", "google.golang.org/grpc", "google.golang.org/protobuf", "github.com/prometheus/"}
	for _, d := range info.Deps {
		for _, h := range heavy {
			if strings.HasPrefix(d.Path, h) {
				t.Errorf("mosaicctl links %s: every command would pay for its initialization; hand the command that needs it over to mosaicd (delegate.go)", d.Path)
			}
		}
	}
}
