package pki

import (
	"crypto/tls"
	"errors"
	"net"
	"testing"
)

func newNode(t testing.TB, ca *CA, name string) *Identity {
	t.Helper()
	key, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := NewCSR(name, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.SignCSR(csr, name, net.ParseIP("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	return &Identity{Name: name, Cert: cert, Key: key, CA: ca.Cert}
}

// handshake runs a TLS handshake over a pipe and returns the client's and
// the server's errors and the server's view of the client.
func handshake(t *testing.T, client, server *tls.Config) (cerr, serr error, peer string) {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s := tls.Server(b, server)
		serr = s.Handshake()
		if serr == nil {
			st := s.ConnectionState()
			peer = PeerName(&st)
		}
		b.Close()
	}()
	c := tls.Client(a, client)
	cerr = c.Handshake()
	a.Close()
	<-done
	return cerr, serr, peer
}

func TestMutualTLS(t *testing.T) {
	ca, err := NewCA("c1")
	if err != nil {
		t.Fatal(err)
	}
	if ca.ClusterID() != "c1" {
		t.Fatalf("ClusterID = %q", ca.ClusterID())
	}
	n1, n2 := newNode(t, ca, "n1"), newNode(t, ca, "n2")

	cerr, serr, peer := handshake(t, n2.ClientConfig("n1"), n1.ServerConfig())
	if cerr != nil || serr != nil {
		t.Fatalf("handshake between nodes of one cluster: client %v, server %v", cerr, serr)
	}
	if peer != "n2" {
		t.Fatalf("server sees the client as %q, want n2", peer)
	}

	// Dialing n1 while expecting n3 fails: peers are verified by name.
	if cerr, _, _ := handshake(t, n2.ClientConfig("n3"), n1.ServerConfig()); cerr == nil {
		t.Fatal("client accepted node n1 when it expected n3")
	}

	// A node of another cluster gets nothing, in either direction.
	other, _ := NewCA("c2")
	stranger := newNode(t, other, "n2")
	if cerr, _, _ := handshake(t, stranger.ClientConfig(""), n1.ServerConfig()); cerr == nil {
		t.Fatal("a node of another cluster completed a handshake with n1")
	}
	cerr, _, _ = handshake(t, n2.ClientConfig(""), stranger.ServerConfig())
	if !errors.Is(cerr, ErrOtherCluster) {
		t.Fatalf("dialing a node of another cluster: %v, want ErrOtherCluster", cerr)
	}

	// A client without a certificate completes the handshake (it may only
	// call Join, which the RPC layer enforces) and is anonymous.
	anon := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}
	if _, serr, peer := handshake(t, anon, n1.ServerConfig()); serr != nil || peer != "" {
		t.Fatalf("anonymous client: server error %v, peer %q", serr, peer)
	}
}

func TestPinnedConfig(t *testing.T) {
	ca, _ := NewCA("c1")
	n1 := newNode(t, ca, "n1")
	fp := Fingerprint(ca.Cert)
	if cerr, _, _ := handshake(t, PinnedConfig(fp[:32]), n1.ServerConfig()); cerr != nil {
		t.Fatalf("pinned to the right CA: %v", cerr)
	}
	other, _ := NewCA("c2")
	cerr, _, _ := handshake(t, PinnedConfig(Fingerprint(other.Cert)[:32]), n1.ServerConfig())
	if !errors.Is(cerr, ErrOtherCluster) {
		t.Fatalf("pinned to another CA: %v, want ErrOtherCluster", cerr)
	}
}

func TestSignWithoutKey(t *testing.T) {
	ca, _ := NewCA("c1")
	certOnly := &CA{Cert: ca.Cert}
	key, _ := NewKey()
	csr, _ := NewCSR("n1", key)
	if _, err := certOnly.SignCSR(csr, "n1", nil); err == nil {
		t.Fatal("signed without the CA key")
	}
	if _, err := ca.SignCSR([]byte("garbage"), "n1", nil); err == nil {
		t.Fatal("signed a garbage request")
	}
}
