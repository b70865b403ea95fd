// Package cluster is a node's identity on disk: the data directory that
// `mosaic init` or a join creates and the daemon runs from.
//
// A data directory holds:
//
//	node.json       this node's name, address, cluster ID and store role
//	node.crt/.key   its certificate, signed by the cluster CA, and key (0600)
//	ca.crt          the cluster CA certificate
//	ca.key          the CA key, only on nodes that sign for joining nodes (0600)
//	incarnation     the membership incarnation, bumped at every start
//	etcd/, etcd.log the store member's data and log, on store members
//
// node.json is written last and atomically: a directory without it holds
// no node, and whatever else is in it was left by a failed attempt.
package cluster

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/pki"
)

// File names inside a data directory.
const (
	ConfigFile      = "node.json"
	CertFile        = "node.crt"
	KeyFile         = "node.key"
	CACertFile      = "ca.crt"
	CAKeyFile       = "ca.key"
	IncarnationFile = "incarnation"
	StoreDir        = "etcd"
	StoreLog        = "etcd.log"
)

// DefaultPort is the peer port; the store member of a node listens on the
// next two (clients, then peers).
const DefaultPort = 7700

// DefaultStoreSize is how many of the first nodes run a store member.
const DefaultStoreSize = 3

const configVersion = 1

// Config is node.json.
type Config struct {
	Version   int       `json:"version"`
	ClusterID string    `json:"cluster_id"`
	Name      string    `json:"name"`
	Addr      string    `json:"addr"` // ip:port this node listens on and is reached at
	Created   time.Time `json:"created"`
	// StoreMember is set on nodes that run an etcd member.
	StoreMember bool `json:"store_member,omitempty"`
	// StoreInitialCluster and StoreNew say how the member starts the first
	// time (name=peerURL,...; new cluster or join an existing one).
	StoreInitialCluster string `json:"store_initial_cluster,omitempty"`
	StoreNew            bool   `json:"store_new,omitempty"`
	// StoreEndpoints are the client URLs of the store members last known.
	StoreEndpoints []string `json:"store_endpoints"`
	// StoreSize is how many store members a CA node grows the store to.
	StoreSize int `json:"store_size,omitempty"`
	// Seeds are peer addresses to contact at start.
	Seeds []string `json:"seeds,omitempty"`
}

// Node is a loaded data directory.
type Node struct {
	Dir string
	Config
	ID *pki.Identity
	CA *pki.CA // Key set only on nodes that hold the CA key
}

// Path is the path of a file in the node's data directory.
func (n *Node) Path(file string) string { return filepath.Join(n.Dir, file) }

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$`)

// CheckName validates a node name: lowercase letters, digits and dashes, at
// most 32 characters, as in a host name label.
func CheckName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("invalid node name %q: use 1 to 32 lowercase letters, digits and dashes (not at either end), e.g. n1 or rack2-a", name)
	}
	return nil
}

// CheckAddr validates a listen address: an IP address and a port whose next
// two ports are free for the store.
func CheckAddr(addr string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("invalid address %q: give an IP address and a port, e.g. 10.0.0.5:%d", addr, DefaultPort)
	}
	if ap.Addr().IsUnspecified() {
		return netip.AddrPort{}, fmt.Errorf("invalid address %q: other nodes must be able to reach it, give this machine's IP address", addr)
	}
	if ap.Port() == 0 || ap.Port() > 65533 {
		return netip.AddrPort{}, fmt.Errorf("invalid port in %q: use 1 to 65533 (the store uses the next two ports)", addr)
	}
	return ap, nil
}

// StoreURLs are the store member's client and peer URLs for a node address.
func StoreURLs(addr string) (client, peer string) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return "", ""
	}
	host := ap.Addr().String()
	if ap.Addr().Is6() {
		host = "[" + host + "]"
	}
	return "https://" + host + ":" + strconv.Itoa(int(ap.Port())+1), "https://" + host + ":" + strconv.Itoa(int(ap.Port())+2)
}

// Ports lists the TCP ports a node at addr listens on.
func Ports(addr string) []string {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil
	}
	var out []string
	for i := range 3 {
		out = append(out, netip.AddrPortFrom(ap.Addr(), ap.Port()+uint16(i)).String())
	}
	return out
}

// CheckPortsFree binds each of the node's ports for a moment, so that a
// port in use is reported before anything is created.
func CheckPortsFree(addr string, withStore bool) error {
	ports := Ports(addr)
	if !withStore {
		ports = ports[:1]
	}
	for _, p := range ports {
		ln, err := net.Listen("tcp", p)
		if err != nil {
			return portError(p, err)
		}
		ln.Close()
	}
	return nil
}

func portError(addr string, err error) error {
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Errorf("cannot listen on %s: the port is in use (another mosaic node or program?): choose another with --listen", addr)
	case strings.Contains(err.Error(), "cannot assign requested address"):
		return fmt.Errorf("cannot listen on %s: no network interface of this machine has that address: choose one it has with --listen", addr)
	}
	return fmt.Errorf("cannot listen on %s: %w", addr, err)
}

// Load reads a data directory. Each failure says what is wrong and what to do.
func Load(dir string) (*Node, error) {
	st, err := os.Stat(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("data directory %s does not exist: create a cluster with `mosaic init --dir %s`, or join one with `mosaic node --dir %s --join HOST:PORT --token TOKEN`", dir, dir, dir)
		}
		return nil, fmt.Errorf("data directory %s: %w", dir, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("data directory %s is not a directory", dir)
	}
	b, err := os.ReadFile(filepath.Join(dir, ConfigFile))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s holds no mosaic node (no %s): create a cluster with `mosaic init --dir %s`, or join one with --join and --token", dir, ConfigFile, dir)
		}
		return nil, fmt.Errorf("read %s: %w", filepath.Join(dir, ConfigFile), err)
	}
	n := &Node{Dir: dir}
	if err := json.Unmarshal(b, &n.Config); err != nil {
		return nil, fmt.Errorf("%s is corrupt (%v): restore it from a backup, or remove %s and join the cluster again", filepath.Join(dir, ConfigFile), err, dir)
	}
	if n.Version != configVersion {
		return nil, fmt.Errorf("%s has version %d; this mosaic reads version %d", filepath.Join(dir, ConfigFile), n.Version, configVersion)
	}
	if err := CheckName(n.Name); err != nil {
		return nil, fmt.Errorf("%s is corrupt: %w", filepath.Join(dir, ConfigFile), err)
	}
	if _, err := CheckAddr(n.Addr); err != nil {
		return nil, fmt.Errorf("%s is corrupt: %w", filepath.Join(dir, ConfigFile), err)
	}
	if n.ClusterID == "" {
		return nil, fmt.Errorf("%s is corrupt: no cluster_id", filepath.Join(dir, ConfigFile))
	}
	if err := n.loadIdentity(); err != nil {
		return nil, err
	}
	return n, nil
}

func (n *Node) loadIdentity() error {
	bad := func(err error) error {
		return fmt.Errorf("node identity in %s is unusable: %w (restore the files from a backup, or remove %s and join again)", n.Dir, err, n.Dir)
	}
	caCert, err := pki.ReadCert(n.Path(CACertFile))
	if err != nil {
		return bad(err)
	}
	cert, err := pki.ReadCert(n.Path(CertFile))
	if err != nil {
		return bad(err)
	}
	key, err := pki.ReadKey(n.Path(KeyFile))
	if err != nil {
		return bad(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return bad(fmt.Errorf("%s is not signed by %s: %w", CertFile, CACertFile, err))
	}
	if cert.Subject.CommonName != n.Name {
		return bad(fmt.Errorf("%s is for node %q, %s says %q", CertFile, cert.Subject.CommonName, ConfigFile, n.Name))
	}
	n.ID = &pki.Identity{Name: n.Name, Cert: cert, Key: key, CA: caCert}
	n.CA = &pki.CA{Cert: caCert}
	if _, err := os.Stat(n.Path(CAKeyFile)); err == nil {
		caKey, err := pki.ReadKey(n.Path(CAKeyFile))
		if err != nil {
			return bad(err)
		}
		n.CA.Key = caKey
	}
	return nil
}

// NextIncarnation bumps and persists the membership incarnation, so that a
// restarted node's announcements override what peers remember of its
// previous life.
func (n *Node) NextIncarnation() (uint64, error) {
	var cur uint64
	if b, err := os.ReadFile(n.Path(IncarnationFile)); err == nil {
		cur, _ = strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	}
	// A node can also learn of a higher incarnation from its peers and
	// refute with it; the wall clock keeps restarts ahead of that.
	next := max(cur+1, uint64(time.Now().Unix()))
	if err := writeAtomic(n.Path(IncarnationFile), []byte(strconv.FormatUint(next, 10)+"\n"), 0o644); err != nil {
		return 0, err
	}
	return next, nil
}

// SaveConfig rewrites node.json atomically.
func (n *Node) SaveConfig() error {
	b, err := json.MarshalIndent(n.Config, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(n.Path(ConfigFile), append(b, '\n'), 0o644)
}

// writeAtomic writes a file by renaming a complete temporary file over it.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// DefaultAddr is this machine's first non-loopback IPv4 address with the
// default port, or the loopback address if it has none.
func DefaultAddr() string {
	ifs, err := net.Interfaces()
	if err == nil {
		for _, ifc := range ifs {
			if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
				continue
			}
			addrs, _ := ifc.Addrs()
			for _, a := range addrs {
				if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil && ipn.IP.IsGlobalUnicast() {
					return net.JoinHostPort(ipn.IP.String(), strconv.Itoa(DefaultPort))
				}
			}
		}
	}
	return "127.0.0.1:" + strconv.Itoa(DefaultPort)
}

// ProcIDsFile keeps the first process number not yet handed out.
const ProcIDsFile = "procids"

// ReserveProcIDs reserves n process numbers and returns the first: numbers
// are never handed out twice, across restarts, because the end of each
// reserved block is saved before any number in it is used.
func (n *Node) ReserveProcIDs(count uint64) (uint64, error) {
	first := uint64(1)
	if b, err := os.ReadFile(n.Path(ProcIDsFile)); err == nil {
		if v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil && v > 0 {
			first = v
		}
	}
	if err := writeAtomic(n.Path(ProcIDsFile), []byte(strconv.FormatUint(first+count, 10)+"\n"), 0o644); err != nil {
		return 0, err
	}
	return first, nil
}

// DefaultName is this machine's host name as a node name, or node1 if the
// host name is not a valid node name.
func DefaultName() string {
	h, err := os.Hostname()
	if err != nil {
		return "node1"
	}
	h = strings.ToLower(strings.SplitN(h, ".", 2)[0])
	if CheckName(h) != nil {
		return "node1"
	}
	return h
}
