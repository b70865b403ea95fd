package pki

import (
	"crypto/tls"
	"net"
	"testing"
)

// connect runs a handshake over a loopback TCP connection and then a
// one-byte exchange, as a process stream does at once: the client takes the
// server's session ticket with it. (Not over net.Pipe: a TLS 1.3 server
// writes its tickets before it reads the client's Finished, which needs a
// buffer between them.) It returns whether the session was resumed and the
// server's view of the client.
func connect(tb testing.TB, ln net.Listener, client, server *tls.Config) (resumed bool, peer string) {
	tb.Helper()
	a, b := tcpPair(tb, ln)
	defer a.Close()
	done := make(chan error, 1)
	go func() {
		defer b.Close()
		s := tls.Server(b, server)
		if err := s.Handshake(); err != nil {
			done <- err
			return
		}
		st := s.ConnectionState()
		peer = PeerName(&st)
		_, err := s.Write([]byte{1})
		done <- err
	}()
	c := tls.Client(a, client)
	if err := c.Handshake(); err != nil {
		tb.Fatalf("client handshake: %v", err)
	}
	if _, err := c.Read(make([]byte, 1)); err != nil {
		tb.Fatalf("client read: %v", err)
	}
	if err := <-done; err != nil {
		tb.Fatalf("server: %v", err)
	}
	return c.ConnectionState().DidResume, peer
}

func TestResumedSessionKeepsIdentities(t *testing.T) {
	ca, err := NewCA("c1")
	if err != nil {
		t.Fatal(err)
	}
	n1, n2 := newNode(t, ca, "n1"), newNode(t, ca, "n2")
	cache := tls.NewLRUClientSessionCache(16)
	dial := func(want string) *tls.Config {
		cfg := n1.ClientConfig(want)
		cfg.ClientSessionCache, cfg.ServerName = cache, "n2" // the cache's key
		return cfg
	}
	server := n2.ServerConfig()
	ln := listen(t)
	if resumed, peer := connect(t, ln, dial("n2"), server); resumed || peer != "n1" {
		t.Fatalf("first connection: resumed %v, server saw %q; want a full handshake from n1", resumed, peer)
	}
	resumed, peer := connect(t, ln, dial("n2"), server)
	if !resumed {
		t.Fatal("second connection to the same server was not resumed")
	}
	if peer != "n1" {
		t.Fatalf("on a resumed session the server sees the client as %q, want n1", peer)
	}
	// The client still checks whom it reached on a resumed session.
	a, b := tcpPair(t, ln)
	defer a.Close()
	go func() {
		defer b.Close()
		tls.Server(b, server).Handshake()
	}()
	if err := tls.Client(a, dial("n3")).Handshake(); err == nil {
		t.Fatal("a resumed session to n2 passed for n3")
	}
}

// BenchmarkHandshake compares a full mutual-TLS handshake between nodes with
// a resumed one (docs/BENCHMARKS.md, "Start latency").
func BenchmarkHandshake(b *testing.B) {
	ca, err := NewCA("c1")
	if err != nil {
		b.Fatal(err)
	}
	n1, n2 := newNode(b, ca, "n1"), newNode(b, ca, "n2")
	server := n2.ServerConfig()
	ln := listen(b)
	for _, resume := range []bool{false, true} {
		name := "full"
		if resume {
			name = "resumed"
		}
		b.Run(name, func(b *testing.B) {
			cache := tls.NewLRUClientSessionCache(16)
			for b.Loop() {
				cfg := n1.ClientConfig("n2")
				if resume {
					cfg.ClientSessionCache, cfg.ServerName = cache, "n2"
				}
				connect(b, ln, cfg, server)
			}
		})
	}
}

func listen(tb testing.TB) net.Listener {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	return ln
}

// tcpPair is both ends of a loopback TCP connection through ln.
func tcpPair(tb testing.TB, ln net.Listener) (client, server net.Conn) {
	tb.Helper()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			c = nil
		}
		accepted <- c
	}()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		client.Close()
		tb.Fatal("accept failed")
	}
	return client, server
}
