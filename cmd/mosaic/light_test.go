package main

import (
	"os/exec"
	"strings"
	"testing"
)

// Every `mosaic run` pays for the initialization of each package this binary
// links, before it does anything (see main.go): what it needs beyond the
// standard library's basics belongs in mosaicctl.
func TestLinksNothingHeavy(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list -deps gave %q: cannot tell what the binary links", deps)
	}
	heavy := []string{"net", "net/url", "os/exec", "log", "log/slog", "regexp", "text/template", "crypto/tls",
		"github.com/spf13/", "go.etcd.io/", "google.golang.org/", "github.com/prometheus/"}
	for _, d := range deps {
		for _, h := range heavy {
			if d == h || strings.HasSuffix(h, "/") && strings.HasPrefix(d, h) {
				t.Errorf("mosaic links %s: every `mosaic run` would pay for its initialization; leave it to mosaicctl", d)
			}
		}
	}
}
