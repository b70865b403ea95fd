package up

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"net/netip"

	"github.com/mosaic-cluster/mosaic/internal/netns"
	"github.com/mosaic-cluster/mosaic/internal/pidlock"
)

// One `mosaic up` per directory, even when the directory is removed and
// made again under a running cluster: a second cluster there would share
// the first's namespace names, and stopping the first would stop it.
func TestLockHoldsWhenItsDirectoryIsReplaced(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cluster")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	release, err := lock(dir)
	if err != nil {
		t.Fatal(err)
	}
	refused := func(when string) {
		t.Helper()
		r, err := lock(dir)
		if err == nil {
			r()
			t.Fatalf("%s: a second lock of %s was taken", when, dir)
		}
		if want := "pid " + strconv.Itoa(os.Getpid()); !strings.Contains(err.Error(), "already running") || !strings.Contains(err.Error(), want) {
			t.Fatalf("%s: %v, want it to say a cluster runs there (%s)", when, err, want)
		}
	}
	refused("held")
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	refused("directory made again")
	release()
	r, err := lock(dir)
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	r()
}

// A refusal by the directory's own lock gives back the path's lock it took
// first.
func TestRefusedLockHoldsNothing(t *testing.T) {
	dir := t.TempDir()
	releaseDir, err := pidlock.Acquire(filepath.Join(dir, "up.lock"))
	if err != nil {
		t.Fatal(err)
	}
	if r, err := lock(dir); err == nil {
		r()
		t.Fatal("lock taken while up.lock is held")
	}
	releaseDir()
	r, err := lock(dir)
	if err != nil {
		t.Fatalf("after the holder of up.lock let go: %v", err)
	}
	r()
}

func TestPathLockDependsOnThePath(t *testing.T) {
	if pathLock("/a/b") == pathLock("/a/c") {
		t.Fatal("two directories share a lock")
	}
	if pathLock("/a/b") != pathLock("/a/b") {
		t.Fatal("one directory has two locks")
	}
}

// A bridge left over by a killed run on the subnet a directory hashes to
// must not stop a new cluster there: its layout takes the next free one.
func TestLayoutAvoidsATakenSubnet(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a bridge in the root network namespace")
	}
	c := &Cluster{cfg: Config{Dir: t.TempDir(), Nodes: 2, NetNS: true, Port: 7700}}
	_, want, err := c.netnsNames()
	if err != nil {
		t.Fatal(err)
	}
	prefix := "mt" + strconv.Itoa(os.Getpid()%100000)
	if err := netns.Sweep(prefix); err != nil {
		t.Fatal(err)
	}
	nw, err := netns.Create(prefix, netip.MustParsePrefix(want))
	if err != nil {
		t.Fatalf("take the subnet %s: %v", want, err)
	}
	t.Cleanup(func() { nw.Destroy() })

	if err := c.loadLayout(); err != nil {
		t.Fatalf("layout with %s taken: %v", want, err)
	}
	if c.lay.Subnet == want {
		t.Fatalf("the layout took %s, which the bridge %s-br already holds", want, prefix)
	}
	got := netip.MustParsePrefix(c.lay.Subnet)
	for _, a := range c.lay.Addrs {
		if ap := netip.MustParseAddrPort(a); !got.Contains(ap.Addr()) {
			t.Errorf("node address %s is outside the cluster's subnet %s", a, got)
		}
	}
	if err := netns.CheckFree(got); err != nil {
		t.Errorf("the subnet chosen is not free: %v", err)
	}
}
