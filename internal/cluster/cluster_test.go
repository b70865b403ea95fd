package cluster

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	for i := 2; i < 250; i++ {
		addr := fmt.Sprintf("127.80.%d.1:7700", i)
		if CheckPortsFree(addr, true) == nil {
			return addr
		}
	}
	t.Fatal("no free loopback address")
	return ""
}

func TestInitAndLoad(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "n1")
	addr := freeAddr(t)
	n, err := Init(InitParams{Dir: dir, Name: "n1", Addr: addr, StoreSize: 3})
	if err != nil {
		t.Fatal(err)
	}
	got, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.ClusterID != n.ClusterID || got.Name != "n1" || got.Addr != addr || !got.StoreMember || got.CA.Key == nil {
		t.Fatalf("loaded %+v", got.Config)
	}
	if got.ID.Cert.Subject.CommonName != "n1" || got.CA.ClusterID() != n.ClusterID {
		t.Fatal("certificate does not name the node or the cluster")
	}
	for _, f := range []string{CAKeyFile, KeyFile} {
		st, _ := os.Stat(filepath.Join(dir, f))
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v", f, st.Mode())
		}
	}
	a, err := got.NextIncarnation()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := got.NextIncarnation()
	if b <= a {
		t.Fatalf("incarnation did not grow: %d then %d", a, b)
	}
	if _, err := Init(InitParams{Dir: dir, Name: "n1", Addr: freeAddr(t), StoreSize: 3}); err == nil || !strings.Contains(err.Error(), "already holds a mosaic node") {
		t.Fatalf("init over a node: %v", err)
	}
}

func TestInitRefusesAndLeavesNothing(t *testing.T) {
	base := t.TempDir()
	addr := freeAddr(t)
	ln, err := net.Listen("tcp", Ports(addr)[2]) // the store's peer port
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cases := []struct {
		p    InitParams
		want string
	}{
		{InitParams{Name: "n1", Addr: freeAddr(t), StoreSize: 1}, "no data directory"},
		{InitParams{Name: "-x", Addr: freeAddr(t), StoreSize: 1}, "invalid node name"},
		{InitParams{Name: "n1", Addr: "127.0.0.1", StoreSize: 1}, "invalid address"},
		{InitParams{Name: "n1", Addr: "127.0.0.1:65535", StoreSize: 1}, "next two ports"},
		{InitParams{Name: "n1", Addr: freeAddr(t), StoreSize: 4}, "1, 3 or 5"},
		{InitParams{Name: "n1", Addr: addr, StoreSize: 1}, "in use"},
	}
	for i, c := range cases {
		if c.p.Dir == "" && c.want != "no data directory" {
			c.p.Dir = filepath.Join(base, fmt.Sprint(i))
		}
		_, err := Init(c.p)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Init(%+v) = %v, want %q", c.p, err, c.want)
		}
	}
	if ents, _ := os.ReadDir(base); len(ents) != 0 {
		t.Fatalf("failed inits left %v", ents)
	}
}

func TestLoadReportsDamage(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "n1")
	if _, err := Init(InitParams{Dir: dir, Name: "n1", Addr: freeAddr(t), StoreSize: 1}); err != nil {
		t.Fatal(err)
	}
	cfg, _ := os.ReadFile(filepath.Join(dir, ConfigFile))
	crt, _ := os.ReadFile(filepath.Join(dir, CertFile))
	restore := func() {
		os.WriteFile(filepath.Join(dir, ConfigFile), cfg, 0o644)
		os.WriteFile(filepath.Join(dir, CertFile), crt, 0o644)
	}
	cases := []struct {
		name, file, content, want string
	}{
		{"truncated config", ConfigFile, `{"version": 1,`, "is corrupt"},
		{"wrong version", ConfigFile, strings.Replace(string(cfg), `"version": 1`, `"version": 9`, 1), "has version 9"},
		{"renamed node", ConfigFile, strings.Replace(string(cfg), `"name": "n1"`, `"name": "n2"`, 1), `is for node "n1"`},
		{"garbage certificate", CertFile, "garbage", "not a PEM certificate"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			defer restore()
			os.WriteFile(filepath.Join(dir, c.file), []byte(c.content), 0o644)
			_, err := Load(dir)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Load = %v, want %q", err, c.want)
			}
		})
	}
	if _, err := Load(dir); err != nil {
		t.Fatalf("after restoring: %v", err)
	}
	if _, err := Load(filepath.Join(dir, "nope")); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("missing dir: %v", err)
	}
}

func TestJoinBadInputLeavesNothing(t *testing.T) {
	base := t.TempDir()
	cases := []struct {
		p    JoinParams
		want string
	}{
		{JoinParams{Name: "n2", Addr: freeAddr(t), Via: "127.0.0.1:7700", Token: "nope"}, "not a mosaic join token"},
		{JoinParams{Name: "N2", Addr: freeAddr(t), Via: "127.0.0.1:7700", Token: "mt1_00000000_" + strings.Repeat("0", 32) + "_" + strings.Repeat("0", 32)}, "invalid node name"},
		{JoinParams{Name: "n2", Addr: freeAddr(t), Via: "nowhere", Token: "mt1_00000000_" + strings.Repeat("0", 32) + "_" + strings.Repeat("0", 32)}, "--join"},
		// Nobody listens at Via: the dial fails after the directory was made.
		{JoinParams{Name: "n2", Addr: freeAddr(t), Via: "127.80.255.1:7700", Token: "mt1_00000000_" + strings.Repeat("0", 32) + "_" + strings.Repeat("0", 32)}, "cannot reach a mosaic node"},
	}
	for i, c := range cases {
		c.p.Dir = filepath.Join(base, fmt.Sprint(i))
		_, err := Join(context.Background(), c.p)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Join(%+v) = %v, want %q", c.p, err, c.want)
		}
	}
	if ents, _ := os.ReadDir(base); len(ents) != 0 {
		t.Fatalf("failed joins left %v", ents)
	}
}
