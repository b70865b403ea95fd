package netns

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// execEnv, when set to a namespace path, makes the test binary a helper
// that ExecIns a shell printing its network namespace.
const execEnv = "MOSAIC_NETNS_TEST_EXEC_IN"

func TestMain(m *testing.M) {
	if path := os.Getenv(execEnv); path != "" {
		err := ExecIn(path, "/bin/sh", []string{"sh", "-c", "readlink /proc/self/ns/net"}, os.Environ(), ParentDeath{})
		fmt.Fprintln(os.Stderr, "ExecIn returned:", err)
		os.Exit(3)
	}
	// /proc/self/ns/net names the main thread's namespace. Check that
	// nothing here leaves the main thread elsewhere (the runtime parks,
	// rather than ends, a main thread whose locked goroutine exits).
	before, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		panic(err)
	}
	code := m.Run()
	if after, _ := os.Readlink("/proc/self/ns/net"); after != before {
		fmt.Fprintf(os.Stderr, "the main thread ended in network namespace %s, not %s\n", after, before)
		code = 1
	}
	os.Exit(code)
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, a bridge and veth pairs")
	}
}

// testNet creates a network whose prefix and subnet are unique to this
// process and test (k), and destroys it when the test ends.
func testNet(t *testing.T, k int) *Network {
	t.Helper()
	pid := os.Getpid()
	prefix := fmt.Sprintf("n%04x%c", pid&0xffff, 'a'+k)
	subnet := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(200 + k), byte(pid), 0}), 24)
	if err := Sweep(prefix); err != nil {
		t.Fatal(err)
	}
	n, err := Create(prefix, subnet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Destroy(); err != nil {
			t.Error(err)
		}
	})
	return n
}

func hostAddr(n *Network, i int) netip.Addr {
	a := n.Subnet().Addr()
	for range i {
		a = a.Next()
	}
	return a
}

func addHost(t *testing.T, n *Network, name string, i int) *Host {
	t.Helper()
	h, err := n.AddHost(name, hostAddr(n, i))
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// assertClean fails unless nothing named with prefix is left.
func assertClean(t *testing.T, prefix string) {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		t.Fatal(err)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, prefix) {
			t.Errorf("link %s is left", l.Attrs().Name)
		}
	}
	entries, err := os.ReadDir(RunDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			t.Errorf("namespace %s/%s is left", RunDir, e.Name())
		}
	}
}

// listenIn opens a TCP listener on h's address inside h's namespace. Every
// connection it accepts reports its peer's address and first line.
func listenIn(t *testing.T, h *Host) (net.Listener, <-chan string) {
	t.Helper()
	var ln net.Listener
	err := Do(h.Path, func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(h.Addr, 0).String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	got := make(chan string, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			buf := make([]byte, 64)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			k, _ := io.ReadAtLeast(c, buf, 1)
			got <- c.RemoteAddr().(*net.TCPAddr).IP.String() + " " + strings.TrimSpace(string(buf[:k]))
			c.Close()
		}
	}()
	return ln, got
}

// dial connects to addr, from inside the namespace at nsPath ("" for the
// root namespace), and says hello.
func dial(nsPath, addr string, timeout time.Duration) error {
	do := func() error {
		c, err := net.DialTimeout("tcp", addr, timeout)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("hello\n"))
		return err
	}
	if nsPath == "" {
		return do()
	}
	return Do(nsPath, do)
}

func expect(t *testing.T, got <-chan string, want string) {
	t.Helper()
	select {
	case g := <-got:
		if g != want {
			t.Fatalf("listener got %q, want %q", g, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("listener got nothing, want %q", want)
	}
}

func TestNetwork(t *testing.T) {
	needRoot(t)
	t.Parallel()
	n := testNet(t, 0)
	a := addHost(t, n, "a", 1)
	b := addHost(t, n, "b", 2)
	c := addHost(t, n, "c", 3)
	for _, h := range []*Host{a, b, c} {
		if want := RunDir + "/" + n.Prefix() + "-" + h.Name; h.Path != want {
			t.Errorf("host %s: Path = %s, want %s", h.Name, h.Path, want)
		}
	}
	ln, got := listenIn(t, a)
	target := ln.Addr().String()

	// Host to host, through the bridge.
	if err := dial(b.Path, target, 2*time.Second); err != nil {
		t.Fatalf("dial A from B: %v", err)
	}
	expect(t, got, b.Addr.String()+" hello")
	if err := dial(c.Path, target, 2*time.Second); err != nil {
		t.Fatalf("dial A from C: %v", err)
	}
	expect(t, got, c.Addr.String()+" hello")

	// The root namespace reaches a host through the bridge: A sees the
	// bridge's address as the peer.
	if err := dial("", target, 2*time.Second); err != nil {
		t.Fatalf("dial A from the root namespace: %v", err)
	}
	expect(t, got, n.BridgeAddr().String()+" hello")

	// A's cable pulled: B cannot reach it.
	if err := a.SetLinkUp(false); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err := dial(b.Path, target, time.Second)
	if err == nil {
		t.Fatal("dial A from B succeeded with A's link down")
	}
	t.Logf("with A's link down, dial from B failed after %v: %v", time.Since(start).Round(time.Millisecond), err)

	// Plugged back in: it works again.
	if err := a.SetLinkUp(true); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := dial(b.Path, target, time.Second)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dial A from B after link up: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	expect(t, got, b.Addr.String()+" hello")

	// Destroy removes everything and can be repeated.
	ln.Close()
	if err := n.Destroy(); err != nil {
		t.Fatal(err)
	}
	assertClean(t, n.Prefix()+"-")
	if err := n.Destroy(); err != nil {
		t.Fatalf("second Destroy: %v", err)
	}
	if _, err := n.AddHost("d", hostAddr(n, 4)); err == nil {
		t.Error("AddHost after Destroy succeeded")
	}
	if err := a.SetLinkUp(true); err == nil {
		t.Error("SetLinkUp after Destroy succeeded")
	}
}

func TestSweep(t *testing.T) {
	needRoot(t)
	t.Parallel()
	n := testNet(t, 1)
	h := addHost(t, n, "a", 1)
	addHost(t, n, "b", 2)
	listenIn(t, h) // a socket inside does not keep anything named

	// As if the process had crashed: only the prefix is known.
	if _, err := Create(n.Prefix(), netip.MustParsePrefix("10.199.0.0/24")); err == nil || !strings.Contains(err.Error(), "Sweep") {
		t.Fatalf("Create over leftovers: got %v, want an error saying to Sweep", err)
	}
	if err := Sweep(n.Prefix()); err != nil {
		t.Fatal(err)
	}
	assertClean(t, n.Prefix()+"-")
	if err := Sweep(n.Prefix()); err != nil {
		t.Fatalf("second Sweep: %v", err)
	}
	// The prefix and the subnet are free again.
	n2, err := Create(n.Prefix(), n.Subnet())
	if err != nil {
		t.Fatalf("Create after Sweep: %v", err)
	}
	if err := n2.Destroy(); err != nil {
		t.Fatal(err)
	}
	assertClean(t, n.Prefix()+"-")
}

func TestAddHostUndoesOnFailure(t *testing.T) {
	needRoot(t)
	t.Parallel()
	n := testNet(t, 2)
	a := addHost(t, n, "a", 1)

	// A link in the way of host c's bridge port: AddHost fails after it
	// made the namespace, and must remove it. (A bridge, because this
	// kernel has no dummy links.)
	block := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: n.Prefix() + "-c"}}
	if err := netlink.LinkAdd(block); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netlink.LinkDel(block) })
	_, err := n.AddHost("c", hostAddr(n, 3))
	if err == nil {
		t.Fatal("AddHost succeeded with its link name taken")
	}
	t.Logf("AddHost with its link name taken: %v", err)
	if _, err := os.Stat(RunDir + "/" + n.Prefix() + "-c"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("namespace of the failed host is left: stat: %v", err)
	}
	if err := netlink.LinkDel(block); err != nil {
		t.Fatal(err)
	}
	// The name is free again, and the network still works.
	c := addHost(t, n, "c", 3)
	ln, got := listenIn(t, a)
	if err := dial(c.Path, ln.Addr().String(), 2*time.Second); err != nil {
		t.Fatal(err)
	}
	expect(t, got, c.Addr.String()+" hello")

	for _, tc := range []struct {
		name string
		addr netip.Addr
		want string
	}{
		{"a", hostAddr(n, 9), "has that name"},
		{"d", a.Addr, "taken by host"},
		{"d", n.BridgeAddr(), "belongs to the bridge"},
		{"d", n.Subnet().Addr(), "not a host address"},
		{"d", n.BridgeAddr().Next(), "not a host address"},
		{"d", netip.MustParseAddr("192.0.2.7"), "not a host address"},
		{"br", hostAddr(n, 9), "names the bridge"},
		{"D", hostAddr(n, 9), "lowercase"},
		{"waytoolongname", hostAddr(n, 9), "lowercase"},
	} {
		if _, err := n.AddHost(tc.name, tc.addr); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("AddHost(%q, %s): got %v, want an error containing %q", tc.name, tc.addr, err, tc.want)
		}
	}
}

func TestCreateRefusesOverlap(t *testing.T) {
	needRoot(t)
	t.Parallel()
	n := testNet(t, 3)
	other := fmt.Sprintf("n%04xz", os.Getpid()&0xffff)
	_, err := Create(other, n.Subnet())
	if err == nil || !strings.Contains(err.Error(), "overlaps") || !strings.Contains(err.Error(), n.Prefix()+"-br") {
		t.Fatalf("Create over a used subnet: got %v, want an error naming the overlap", err)
	}
	assertClean(t, other+"-")
}

func nsInode(t *testing.T, path string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func TestExecIn(t *testing.T) {
	needRoot(t)
	t.Parallel()
	n := testNet(t, 4)
	h := addHost(t, n, "a", 1)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), execEnv+"="+h.Path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, stderr.Bytes())
	}
	got := strings.TrimSpace(string(out))
	want := fmt.Sprintf("net:[%d]", nsInode(t, h.Path))
	if got != want {
		t.Errorf("the exec'd shell is in %s, want %s (the host's namespace)", got, want)
	}
	if root := fmt.Sprintf("net:[%d]", nsInode(t, "/proc/thread-self/ns/net")); got == root {
		t.Errorf("the exec'd shell is in the test's own namespace %s", root)
	}

	// Failures come back as errors naming what failed.
	err = ExecIn(h.Path, "/nonexistent/mosaic", []string{"mosaic"}, nil, ParentDeath{})
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/mosaic") {
		t.Errorf("ExecIn of a missing program: got %v", err)
	}
	err = ExecIn("/proc/self/ns/uts", "/bin/true", []string{"true"}, nil, ParentDeath{})
	if err == nil || !strings.Contains(err.Error(), "not a network namespace") {
		t.Errorf("ExecIn into a UTS namespace: got %v", err)
	}
	err = ExecIn(RunDir+"/"+n.Prefix()+"-nope", "/bin/true", []string{"true"}, nil, ParentDeath{})
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ExecIn into a missing namespace: got %v", err)
	}
}

func TestDo(t *testing.T) {
	needRoot(t)
	t.Parallel()
	n := testNet(t, 5)
	h := addHost(t, n, "a", 1)
	root := nsInode(t, "/proc/thread-self/ns/net")

	var inside uint64
	if err := Do(h.Path, func() error {
		inside = nsInode(t, "/proc/thread-self/ns/net")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if want := nsInode(t, h.Path); inside != want {
		t.Errorf("inside Do the thread is in namespace %d, want %d", inside, want)
	}

	// Errors, panics and Goexit all come back, and the caller stays home.
	sentinel := errors.New("sentinel")
	if err := Do(h.Path, func() error { return sentinel }); !errors.Is(err, sentinel) {
		t.Errorf("Do returned %v, want fn's error", err)
	}
	func() {
		defer func() {
			if p := recover(); p != "boom" {
				t.Errorf("recovered %v, want fn's panic", p)
			}
		}()
		Do(h.Path, func() error { panic("boom") })
	}()
	if err := Do(h.Path, func() error { runtime.Goexit(); return nil }); err == nil || !strings.Contains(err.Error(), "Goexit") {
		t.Errorf("Do with Goexit: got %v", err)
	}
	if err := Do("/proc/self/ns/uts", func() error { return nil }); err == nil || !strings.Contains(err.Error(), "not a network namespace") {
		t.Errorf("Do in a UTS namespace: got %v", err)
	}
	if got := nsInode(t, "/proc/thread-self/ns/net"); got != root {
		t.Errorf("after Do the caller is in namespace %d, want %d", got, root)
	}
}

func TestNames(t *testing.T) {
	for _, p := range []string{"", "Mosaic", "1a", "a-b", "abcdefghi"} {
		if checkPrefix(p) == nil {
			t.Errorf("prefix %q accepted", p)
		}
	}
	for _, p := range []string{"m", "mosaic", "t1", "abcdefgh"} {
		if err := checkPrefix(p); err != nil {
			t.Errorf("prefix %q: %v", p, err)
		}
	}
	if err := checkHostName("abcdefgh", "n12345"); err != nil {
		t.Error(err)
	}
	if checkHostName("abcdefgh", "n123456") == nil {
		t.Error("host name making a 16-byte interface name accepted")
	}
	for subnet, want := range map[string]string{
		"10.0.0.0/24":  "10.0.0.254",
		"10.0.0.0/30":  "10.0.0.2",
		"10.1.2.3/16":  "10.1.255.254",
		"172.16.0.0/8": "172.255.255.254",
	} {
		if got := lastUsable(netip.MustParsePrefix(subnet)); got.String() != want {
			t.Errorf("lastUsable(%s) = %s, want %s", subnet, got, want)
		}
	}
	if err := Sweep("Bad-Prefix"); err == nil {
		t.Error("Sweep accepted a bad prefix")
	}
	for _, s := range []string{"10.0.0.0/31", "fd00::/64"} {
		if _, err := Create("mx", netip.MustParsePrefix(s)); err == nil || !strings.Contains(err.Error(), "not usable") {
			t.Errorf("Create with subnet %s: got %v", s, err)
		}
	}
}
