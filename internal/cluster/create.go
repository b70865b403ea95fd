package cluster

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/mosaic-cluster/mosaic/internal/peerpb"
	"github.com/mosaic-cluster/mosaic/internal/pki"
	"github.com/mosaic-cluster/mosaic/internal/token"
)

// newDir prepares dir to receive a new node. It may exist only as an empty
// directory. The returned undo removes everything created in it (and dir
// itself if it did not exist), so that a failed init or join leaves
// nothing behind.
func newDir(dir string) (undo func(), err error) {
	if dir == "" {
		return nil, errors.New("no data directory given: use --dir")
	}
	created := false
	st, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		// Readable by all: the local socket may live here; keys are 0600.
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("create data directory %s: %w", dir, err)
		}
		created = true
	case err != nil:
		return nil, fmt.Errorf("data directory %s: %w", dir, err)
	case !st.IsDir():
		return nil, fmt.Errorf("data directory %s is a file, not a directory", dir)
	default:
		if _, err := os.Stat(filepath.Join(dir, ConfigFile)); err == nil {
			return nil, fmt.Errorf("%s already holds a mosaic node: start it with `mosaic node --dir %s`, or choose another --dir", dir, dir)
		}
		ents, err := os.ReadDir(dir)
		if err != nil {
			return nil, fmt.Errorf("read data directory %s: %w", dir, err)
		}
		if len(ents) > 0 {
			return nil, fmt.Errorf("data directory %s is not empty: choose an empty or new directory", dir)
		}
	}
	// Check that we can write here before doing anything else.
	probe, err := os.CreateTemp(dir, ".probe-*")
	if err != nil {
		if created {
			os.RemoveAll(dir)
		}
		if errors.Is(err, fs.ErrPermission) {
			return nil, fmt.Errorf("cannot write to data directory %s: permission denied: choose a directory you can write, or run as root", dir)
		}
		return nil, fmt.Errorf("cannot write to data directory %s: %w", dir, err)
	}
	probe.Close()
	os.Remove(probe.Name())
	return func() {
		if created {
			os.RemoveAll(dir)
			return
		}
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			os.RemoveAll(filepath.Join(dir, e.Name()))
		}
	}, nil
}

func newClusterID() (string, error) {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate cluster id: %w", err)
	}
	return "c" + hex.EncodeToString(b), nil
}

// InitParams are the inputs of Init.
type InitParams struct {
	Dir       string
	Name      string
	Addr      string
	StoreSize int // store members to grow to (1, 3 or 5)
}

// Init creates a new cluster whose first node is described by p: the CA,
// the node's certificate and its data directory.
func Init(p InitParams) (*Node, error) {
	if err := CheckName(p.Name); err != nil {
		return nil, err
	}
	ap, err := CheckAddr(p.Addr)
	if err != nil {
		return nil, err
	}
	if !slices.Contains([]int{1, 3, 5}, p.StoreSize) {
		return nil, fmt.Errorf("store size %d: use 1, 3 or 5 (members of the store need a majority)", p.StoreSize)
	}
	if err := CheckPortsFree(p.Addr, true); err != nil {
		return nil, err
	}
	undo, err := newDir(p.Dir)
	if err != nil {
		return nil, err
	}
	n, err := initIn(p, net.IP(ap.Addr().AsSlice()))
	if err != nil {
		undo()
		return nil, err
	}
	return n, nil
}

func initIn(p InitParams, ip net.IP) (*Node, error) {
	id, err := newClusterID()
	if err != nil {
		return nil, err
	}
	ca, err := pki.NewCA(id)
	if err != nil {
		return nil, err
	}
	key, err := pki.NewKey()
	if err != nil {
		return nil, err
	}
	cert, err := ca.IssueNode(p.Name, key.Public(), ip)
	if err != nil {
		return nil, err
	}
	n := &Node{Dir: p.Dir, ID: &pki.Identity{Name: p.Name, Cert: cert, Key: key, CA: ca.Cert}, CA: ca}
	client, peer := StoreURLs(p.Addr)
	n.Config = Config{
		Version: configVersion, ClusterID: id, Name: p.Name, Addr: p.Addr, Created: time.Now().UTC(),
		StoreMember: true, StoreNew: true, StoreInitialCluster: p.Name + "=" + peer,
		StoreEndpoints: []string{client}, StoreSize: p.StoreSize,
	}
	caKey, err := pki.EncodeKey(ca.Key)
	if err != nil {
		return nil, err
	}
	if err := writeAtomic(n.Path(CACertFile), pki.EncodeCert(ca.Cert), 0o644); err != nil {
		return nil, err
	}
	if err := writeAtomic(n.Path(CAKeyFile), caKey, 0o600); err != nil {
		return nil, err
	}
	if err := n.writeNodeKeys(cert, key); err != nil {
		return nil, err
	}
	return n, n.SaveConfig()
}

func (n *Node) writeNodeKeys(cert *x509.Certificate, key crypto.Signer) error {
	kb, err := pki.EncodeKey(key)
	if err != nil {
		return err
	}
	if err := writeAtomic(n.Path(KeyFile), kb, 0o600); err != nil {
		return err
	}
	return writeAtomic(n.Path(CertFile), pki.EncodeCert(cert), 0o644)
}

// JoinParams are the inputs of Join.
type JoinParams struct {
	Dir   string
	Name  string
	Addr  string // this node's listen address
	Via   string // address of a node of the cluster
	Token string
}

// Join asks the node at p.Via for a certificate in exchange for the token
// and creates the data directory of the new node.
func Join(ctx context.Context, p JoinParams) (*Node, error) {
	tok, err := token.Parse(p.Token)
	if err != nil {
		return nil, err
	}
	if err := CheckName(p.Name); err != nil {
		return nil, err
	}
	ap, err := CheckAddr(p.Addr)
	if err != nil {
		return nil, err
	}
	if _, err := CheckAddr(p.Via); err != nil {
		return nil, fmt.Errorf("--join: %w", err)
	}
	if err := CheckPortsFree(p.Addr, true); err != nil {
		return nil, err
	}
	undo, err := newDir(p.Dir)
	if err != nil {
		return nil, err
	}
	n, err := joinIn(ctx, p, tok, ap.Addr().String())
	if err != nil {
		undo()
		return nil, err
	}
	return n, nil
}

func joinIn(ctx context.Context, p JoinParams, tok token.Token, ip string) (*Node, error) {
	key, err := pki.NewKey()
	if err != nil {
		return nil, err
	}
	csr, err := pki.NewCSR(p.Name, key)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(p.Via, grpc.WithTransportCredentials(credentials.NewTLS(pki.PinnedConfig(tok.Pin))))
	if err != nil {
		return nil, fmt.Errorf("join through %s: %w", p.Via, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	resp, err := peerpb.NewJoinClient(conn).Join(ctx, &peerpb.JoinRequest{
		Token: tok.String(), Name: p.Name, CsrDer: csr, Advertise: p.Addr,
	}, grpc.WaitForReady(false))
	if err != nil {
		return nil, joinError(p.Via, err)
	}
	cert, err := x509.ParseCertificate(resp.CertDer)
	if err != nil {
		return nil, fmt.Errorf("join through %s: the certificate it sent is unreadable: %w", p.Via, err)
	}
	ca, err := x509.ParseCertificate(resp.CaDer)
	if err != nil {
		return nil, fmt.Errorf("join through %s: the CA certificate it sent is unreadable: %w", p.Via, err)
	}
	if !tok.MatchesCA(pki.Fingerprint(ca)) {
		return nil, fmt.Errorf("join through %s: it sent a CA that does not match the token", p.Via)
	}
	n := &Node{Dir: p.Dir, ID: &pki.Identity{Name: p.Name, Cert: cert, Key: key, CA: ca}, CA: &pki.CA{Cert: ca}}
	n.Config = Config{
		Version: configVersion, ClusterID: resp.ClusterId, Name: p.Name, Addr: p.Addr, Created: time.Now().UTC(),
		StoreMember: resp.StoreInitialCluster != "", StoreInitialCluster: resp.StoreInitialCluster,
		StoreEndpoints: resp.StoreEndpoints, Seeds: appendUnique(resp.Seeds, p.Via),
	}
	if err := writeAtomic(n.Path(CACertFile), pki.EncodeCert(ca), 0o644); err != nil {
		return nil, err
	}
	if err := n.writeNodeKeys(cert, key); err != nil {
		return nil, err
	}
	return n, n.SaveConfig()
}

func appendUnique(list []string, more ...string) []string {
	for _, m := range more {
		if !slices.Contains(list, m) {
			list = append(list, m)
		}
	}
	return list
}

// joinError turns an RPC failure into a message that says what to do.
func joinError(via string, err error) error {
	st, _ := status.FromError(err)
	msg := st.Message()
	switch {
	case st.Code() == codes.PermissionDenied || st.Code() == codes.AlreadyExists ||
		st.Code() == codes.InvalidArgument || st.Code() == codes.FailedPrecondition:
		return fmt.Errorf("%s refused to admit this node: %s", via, msg)
	case st.Code() == codes.Aborted:
		return fmt.Errorf("%s could not admit this node now: %s", via, msg)
	case strings.Contains(msg, pki.ErrOtherCluster.Error()):
		return fmt.Errorf("the node at %s does not belong to the cluster this token was made for: check --join and the token", via)
	case st.Code() == codes.Unavailable:
		return fmt.Errorf("cannot reach a mosaic node at %s (%s): check --join and that the node is running", via, msg)
	case st.Code() == codes.DeadlineExceeded:
		return fmt.Errorf("the node at %s did not answer in time: check that the cluster store is up (`mosaic nodes` on a member)", via)
	}
	return fmt.Errorf("join through %s: %s", via, msg)
}
