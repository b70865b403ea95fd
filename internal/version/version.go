// Package version says which mosaic this is.
package version

import (
	"runtime"
	"runtime/debug"
)

// Version is the release; builds may override it with
// -ldflags "-X github.com/mosaic-cluster/mosaic/internal/version.Version=...".
var Version = "0.1.0-dev"

// String is the version with the Go toolchain and, when the build recorded
// it, the source revision.
func String() string {
	s := Version + " (" + runtime.Version()
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, kv := range bi.Settings {
			if kv.Key == "vcs.revision" && len(kv.Value) >= 12 {
				s += ", " + kv.Value[:12]
			}
		}
	}
	return s + ")"
}
