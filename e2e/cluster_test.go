//go:build cluster

package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/mosaic-cluster/mosaic/internal/api"
	"github.com/mosaic-cluster/mosaic/internal/cluster"
	"github.com/mosaic-cluster/mosaic/internal/gossip"
	"github.com/mosaic-cluster/mosaic/internal/netns"
	"github.com/mosaic-cluster/mosaic/internal/peerpb"
	"github.com/mosaic-cluster/mosaic/internal/pki"
	"github.com/mosaic-cluster/mosaic/internal/token"
	"github.com/mosaic-cluster/mosaic/internal/up"
)

// startCluster starts a cluster of n nodes, each in its own network
// namespace, and stops it when the test ends, checking that nothing is
// left behind.
func startCluster(t *testing.T, n int, capacities ...float64) *up.Cluster {
	t.Helper()
	return startClusterIn(t, t.TempDir(), n, capacities...)
}

func startClusterIn(t *testing.T, dir string, n int, capacities ...float64) *up.Cluster {
	t.Helper()
	return startClusterCfg(t, up.Config{Dir: dir, Nodes: n, Capacities: capacities})
}

// startClusterCfg starts the cluster of cfg, each node in its own network
// namespace, with the daemons under test.
func startClusterCfg(t *testing.T, cfg up.Config) *up.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg.NetNS, cfg.Binary, cfg.Out = true, daemonBin, testWriter{t}
	c, err := up.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("start cluster: %v", err)
	}
	t.Cleanup(func() {
		var pids []int
		for _, nd := range c.Nodes {
			if p := nd.PID(); p != 0 {
				pids = append(pids, p)
			}
		}
		clusterID := readClusterID(t, c)
		if err := c.Stop(); err != nil {
			t.Errorf("stop cluster: %v", err)
		}
		checkNothingLeft(t, pids, clusterID, c)
	})
	return c
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func readClusterID(t *testing.T, c *up.Cluster) string {
	n, err := cluster.Load(c.Nodes[0].Dir)
	if err != nil {
		t.Fatalf("load n1: %v", err)
	}
	return n.ClusterID
}

// checkNothingLeft asserts that no daemon, cgroup or namespace of the
// cluster survives its stop.
func checkNothingLeft(t *testing.T, pids []int, clusterID string, c *up.Cluster) {
	t.Helper()
	for _, p := range pids {
		if syscall.Kill(p, 0) == nil {
			t.Errorf("daemon pid %d still runs after stop", p)
		}
	}
	for _, ctl := range []string{"cpu", "memory"} {
		if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", ctl, "mosaic", clusterID)); err == nil {
			t.Errorf("cgroup %s/mosaic/%s left behind", ctl, clusterID)
		}
	}
	for _, nd := range c.Nodes {
		if h := c.Host(nd.Name); h != nil {
			if _, err := os.Stat(h.Path); err == nil {
				t.Errorf("network namespace %s left behind", h.Path)
			}
		}
	}
}

// sockets of every running node.
func running(c *up.Cluster) []*up.Node {
	var out []*up.Node
	for _, n := range c.Nodes {
		if n.PID() != 0 {
			out = append(out, n)
		}
	}
	return out
}

func TestCluster(t *testing.T) {
	c := startCluster(t, 4)
	n1 := c.Node("n1")

	t.Run("every node sees every node alive", func(t *testing.T) {
		for _, n := range c.Nodes {
			view := nodes(t, n.Socket)
			if len(view) != 4 {
				t.Fatalf("%s sees %d nodes: %s", n.Name, len(view), jsonString(view))
			}
			for _, m := range view {
				if m.State != "alive" || m.Cores == 0 || m.Capacity != 1 || m.MemTotal == 0 {
					t.Fatalf("%s's view of %s: %s", n.Name, m.Name, jsonString(m))
				}
			}
		}
	})

	t.Run("cli lists the nodes", func(t *testing.T) {
		r := mosaic(t, "--socket", c.Node("n3").Socket, "nodes")
		if r.code != 0 {
			t.Fatal(r)
		}
		for _, want := range []string{"NAME", "n1", "n2", "n3*", "n4", "alive"} {
			if !strings.Contains(r.out, want) {
				t.Fatalf("mosaic nodes lacks %q:\n%s", want, r.out)
			}
		}
	})

	t.Run("a CPU load in one node shows in every view of that node only", func(t *testing.T) {
		n2 := c.Node("n2")
		busy := exec.Command("sh", "-c", "while :; do :; done")
		if err := busy.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { busy.Process.Kill(); busy.Wait() }()
		cg := nodes(t, n2.Socket)["n2"].Cgroup
		if cg == "" {
			t.Fatal("n2 reports no cgroup")
		}
		if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(fmt.Sprint(busy.Process.Pid)), 0o644); err != nil {
			t.Fatal(err)
		}
		took := eventually(t, 20*time.Second, "every node sees n2 loaded", func() (bool, string) {
			for _, n := range c.Nodes {
				v := nodes(t, n.Socket)
				// One busy process is one core's worth of load, divided
				// by the node's capacity and speed (measured at start).
				n2v := v["n2"]
				capacity := n2v.Capacity
				if capacity == 0 {
					capacity = float64(n2v.Cores)
				}
				if n2v.Load*capacity*n2v.Speed < 0.8 || n2v.Procs != 1 {
					return false, n.Name + " sees n2 as " + jsonString(v["n2"])
				}
				for _, other := range []string{"n1", "n3", "n4"} {
					if v[other].Load > 0.3 {
						t.Fatalf("%s sees idle node %s loaded: %s", n.Name, other, jsonString(v[other]))
					}
				}
			}
			return true, ""
		})
		t.Logf("every node saw n2's load after %s", took)
	})

	t.Run("a peer without a node certificate gets nothing", func(t *testing.T) {
		err := netns.Do(c.Host("n4").Path, func() error {
			creds := credentials.NewTLS(&tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
			conn, err := grpc.NewClient(n1.Addr, grpc.WithTransportCredentials(creds))
			if err != nil {
				return err
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err = peerpb.NewPeerClient(conn).Gossip(ctx, &peerpb.Envelope{From: "n4"})
			if status.Code(err) != codes.Unauthenticated {
				return fmt.Errorf("gossip without a certificate: %v, want Unauthenticated", err)
			}
			_, err = peerpb.NewJoinClient(conn).Join(ctx, &peerpb.JoinRequest{Token: "nonsense", Name: "x"})
			if status.Code(err) != codes.InvalidArgument {
				return fmt.Errorf("join with a malformed token: %v, want InvalidArgument", err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})

	t.Run("bad tokens are refused and leave nothing", func(t *testing.T) {
		sock := n1.Socket
		create := func(args ...string) string {
			r := mosaic(t, append([]string{"--socket", sock, "token", "create", "-q"}, args...)...)
			if r.code != 0 {
				t.Fatal(r)
			}
			return strings.TrimSpace(r.out)
		}
		good := create()
		tok, err := token.Parse(good)
		if err != nil {
			t.Fatal(err)
		}
		wrongSecret := token.Token{ID: tok.ID, Secret: strings.Repeat("0", 32), Pin: tok.Pin}.String()
		expired := create("--ttl", "1s")
		revoked := create()
		if r := mosaic(t, "--socket", sock, "token", "revoke", revoked); r.code != 0 {
			t.Fatal(r)
		}
		otherCA, _ := pki.NewCA("cother")
		foreign, _ := token.New(pki.Fingerprint(otherCA.Cert))
		time.Sleep(1500 * time.Millisecond) // let "expired" expire

		cases := []struct {
			name, token string
			want        []string
		}{
			{"malformed", "mt1_nonsense", []string{"not a mosaic join token"}},
			{"wrong secret", wrongSecret, []string{"not valid for this cluster"}},
			{"expired", expired, []string{"expired"}},
			{"revoked", revoked, []string{"revoked"}},
			{"another cluster's", foreign.String(), []string{"does not belong to the cluster this token was made for"}},
			{"duplicate name", good, []string{`"n2"`, "in use"}},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				dir := filepath.Join(t.TempDir(), "new")
				name := "n9"
				if tc.name == "duplicate name" {
					name = "n2"
				}
				r := joinFromRoot(t, c, dir, name, tc.token)
				expectFail(t, r, tc.want...)
				if _, err := os.Stat(dir); err == nil {
					t.Fatalf("a failed join left %s behind", dir)
				}
			})
		}
		lr := mosaic(t, "--socket", sock, "token", "list")
		if !strings.Contains(lr.out, "revoked") || !strings.Contains(lr.out, "expired") {
			t.Fatalf("token list:\n%s", lr)
		}
	})

	t.Run("a node of another cluster is refused", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "b1")
		addr := freeLoopback(t)
		if r := mosaic(t, "init", "--dir", dir, "--name", "b1", "--listen", addr); r.code != 0 {
			t.Fatal(r)
		}
		r := mosaic(t, "node", "--dir", dir, "--join", n1.Addr, "--socket", filepath.Join(dir, "s.sock"))
		expectFail(t, r, "is not part of this node's cluster", "check --join")
	})

	t.Run("a killed node is declared dead everywhere, and comes back", func(t *testing.T) {
		n3 := c.Node("n3")
		// n1 keeps the connection of a process it ran on n3 for the next.
		if r := mosaic(t, "--socket", n1.Socket, "run", "--on", "n3", "--", "true"); r.code != 0 {
			t.Fatal(r)
		}
		if err := c.Kill("n3"); err != nil {
			t.Fatal(err)
		}
		bound := gossip.DeadBound(gossip.Config{}, len(c.Nodes))
		took := eventually(t, bound+5*time.Second, "every node marks n3 dead", func() (bool, string) {
			for _, n := range running(c) {
				if s := nodes(t, n.Socket)["n3"].State; s != "dead" {
					return false, n.Name + " sees n3 " + s
				}
			}
			return true, ""
		})
		t.Logf("every node saw n3 dead %s after SIGKILL (bound %s)", took, bound)
		if took > bound {
			t.Errorf("dead after %s, beyond the stated bound %s", took, bound)
		}
		if err := c.Restart("n3"); err != nil {
			t.Fatal(err)
		}
		took = eventually(t, 20*time.Second, "every node sees n3 alive again", func() (bool, string) {
			for _, n := range c.Nodes {
				if s := nodes(t, n.Socket)["n3"].State; s != "alive" {
					return false, n.Name + " sees n3 " + s
				}
			}
			return true, ""
		})
		t.Logf("n3 alive everywhere %s after restart", took)
		// The connection kept to the n3 that died leads nowhere: the next
		// process there goes on a new one, at the first try.
		if r := mosaic(t, "--socket", n1.Socket, "run", "--on", "n3", "--", "echo", "back"); r.code != 0 || r.out != "back\n" {
			t.Fatalf("run on the restarted n3: %s", r)
		}
		_ = n3
	})

	t.Run("a node that leaves is seen as left, and rejoins", func(t *testing.T) {
		n4 := c.Node("n4")
		r := mosaic(t, "--socket", n4.Socket, "node", "leave")
		if r.code != 0 || !strings.Contains(r.out, "left the cluster") {
			t.Fatal(r)
		}
		select {
		case <-n4.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("n4's daemon did not exit after leave")
		}
		eventually(t, 5*time.Second, "every node sees n4 left", func() (bool, string) {
			for _, n := range running(c) {
				if s := nodes(t, n.Socket)["n4"].State; s != "left" {
					return false, n.Name + " sees n4 " + s
				}
			}
			return true, ""
		})
		restartAndWait(t, c, "n4")
	})

	t.Run("SIGTERM is a graceful leave", func(t *testing.T) {
		n2 := c.Node("n2")
		syscall.Kill(n2.PID(), syscall.SIGTERM)
		select {
		case <-n2.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("n2's daemon did not exit after SIGTERM")
		}
		eventually(t, 5*time.Second, "every node sees n2 left", func() (bool, string) {
			for _, n := range running(c) {
				if s := nodes(t, n.Socket)["n2"].State; s != "left" {
					return false, n.Name + " sees n2 " + s
				}
			}
			return true, ""
		})
		restartAndWait(t, c, "n2")
	})
}

// TestWholeClusterRestart kills every daemon, restarts all but one, and
// checks that the cluster forms again and lists the missing node as dead
// (it knows of it from the registry in the store).
func TestWholeClusterRestart(t *testing.T) {
	c := startCluster(t, 4)
	for _, n := range c.Nodes {
		if err := c.Kill(n.Name); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"n1", "n2", "n3"} {
		if err := c.Restart(name); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.WaitAlive(context.Background(), 30*time.Second); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "n1 lists n4 as dead", func() (bool, string) {
		v := nodes(t, c.Node("n1").Socket)
		return v["n4"].State == "dead", jsonString(v["n4"])
	})
	r := mosaic(t, "--socket", c.Node("n2").Socket, "token", "create", "-q")
	if r.code != 0 {
		t.Fatalf("the store did not come back with its quorum: %s", r)
	}
}

// joinFromRoot runs `mosaic node --join` against n1 from a fresh network
// namespace host of its own on the cluster's bridge: the joining machine.
func joinFromRoot(t *testing.T, c *up.Cluster, dir, name, tok string) result {
	t.Helper()
	// The root namespace reaches the nodes through the bridge; the join
	// fails before the new node would need to be reachable itself.
	return mosaic(t, "node", "--dir", dir, "--name", name, "--listen", freeLoopback(t),
		"--join", c.Node("n1").Addr, "--token", tok, "--socket", filepath.Join(filepath.Dir(dir), "s.sock"))
}

// freeLoopback returns a loopback address whose node ports are free.
func freeLoopback(t *testing.T) string {
	t.Helper()
	for i := 2; i < 250; i++ {
		addr := fmt.Sprintf("127.78.%d.1:7700", i)
		if cluster.CheckPortsFree(addr, true) == nil {
			return addr
		}
	}
	t.Fatal("no free loopback address")
	return ""
}

var _ = api.OpNodes

// `mosaic up` killed outright takes its daemons with it, in network
// namespaces too (where each daemon re-executes itself from another
// thread, which once lost the parent death signal: they ran on, orphans),
// and the same directory starts again and stops cleanly afterwards.
func TestUpKilledTakesItsDaemons(t *testing.T) {
	dir := t.TempDir()
	start := func() (*exec.Cmd, *syncBuffer) {
		t.Helper()
		cmd := exec.Command(bin, "up", "--netns", "--nodes", "2", "--dir", dir)
		out := &syncBuffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		eventually(t, time.Minute, "the cluster is up", func() (bool, string) {
			return strings.Contains(out.String(), "Ctrl-C stops"), out.String()
		})
		return cmd, out
	}
	daemons := func() []string {
		var found []string
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
			if err == nil && strings.Contains(string(b), "--dir\x00"+dir+"/n") {
				found = append(found, e.Name())
			}
		}
		return found
	}
	cmd, _ := start()
	if n := len(daemons()); n != 2 {
		t.Fatalf("%d daemons of the cluster run, want 2", n)
	}
	cmd.Process.Kill()
	cmd.Wait()
	eventually(t, 15*time.Second, "the daemons end with `mosaic up`", func() (bool, string) {
		left := daemons()
		return len(left) == 0, fmt.Sprint("still running: ", left)
	})
	cmd, out := start()
	cmd.Process.Signal(os.Interrupt)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("stop after a restart: %v\n%s", err, out)
	}
	if left := daemons(); len(left) > 0 {
		t.Fatalf("daemons left after a clean stop: %v", left)
	}
}
