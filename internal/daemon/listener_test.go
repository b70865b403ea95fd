package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"testing"

	"github.com/mosaic-cluster/mosaic/internal/pki"
)

// identity is a node certificate of ca's cluster.
func identity(t *testing.T, ca *pki.CA, name string) *pki.Identity {
	t.Helper()
	key, err := pki.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.NewCSR(name, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.SignCSR(csr, name, net.ParseIP("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	return &pki.Identity{Name: name, Cert: cert, Key: key, CA: ca.Cert}
}

// A node that speaks another version of process streams (an older
// mosaic) is refused with words that say so, not a bare TLS alert.
func TestDialProcToAnOlderNode(t *testing.T) {
	ca, err := pki.NewCA("c1")
	if err != nil {
		t.Fatal(err)
	}
	n1, n2 := identity(t, ca, "n1"), identity(t, ca, "n2")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		cfg := n2.ServerConfig()
		cfg.NextProtos = []string{"h2", "mosaic-proc/1"}
		tls.Server(c, cfg).Handshake()
	}()
	_, _, err = dialProc(context.Background(), n1, tls.NewLRUClientSessionCache(1), nil, "n2", ln.Addr().String())
	if !errors.Is(err, errOtherProtocol) {
		t.Fatalf("dial a node of another protocol version: %v", err)
	}
	t.Log(err)
}
