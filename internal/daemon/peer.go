package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/mosaic-cluster/mosaic/internal/peerpb"
	"github.com/mosaic-cluster/mosaic/internal/pki"
)

// joinService is the only service a caller without a node certificate may
// reach; it checks the caller's join token itself.
const joinService = "/" + "mosaic.peer.v1.Join" + "/"

type peerNameKey struct{}

// peerName is the node name of the authenticated caller of an RPC.
func peerName(ctx context.Context) string {
	s, _ := ctx.Value(peerNameKey{}).(string)
	return s
}

// authenticate admits a call if the caller presented a node certificate of
// this cluster (the TLS layer has verified it), or if it calls Join.
func authenticate(ctx context.Context, method string) (context.Context, error) {
	name := ""
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			name = pki.PeerName(&ti.State)
		}
	}
	if name == "" && !strings.HasPrefix(method, joinService) {
		return nil, status.Error(codes.Unauthenticated, "a node certificate of this cluster is required")
	}
	return context.WithValue(ctx, peerNameKey{}, name), nil
}

func newPeerServer() *grpc.Server {
	return grpc.NewServer(
		grpc.Creds(secured{}), // the peer listener did the TLS handshake
		grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			ctx, err := authenticate(ctx, info.FullMethod)
			if err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			ctx, err := authenticate(ss.Context(), info.FullMethod)
			if err != nil {
				return err
			}
			return h(srv, authedStream{ss, ctx})
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{PermitWithoutStream: true}),
	)
}

// authedStream is a server stream whose context names its caller.
type authedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s authedStream) Context() context.Context { return s.ctx }

// peerPool keeps one gRPC connection per peer (by node name and address).
// gRPC connections reconnect by themselves; the pool only creates them
// lazily and closes them at shutdown.
type peerPool struct {
	id    *pki.Identity
	mu    sync.Mutex
	conns map[poolKey]*grpc.ClientConn
}

type poolKey struct{ name, addr string }

func newPeerPool(id *pki.Identity) *peerPool {
	return &peerPool{id: id, conns: map[poolKey]*grpc.ClientConn{}}
}

// conn returns the connection to the node called name at addr. An empty
// name accepts any node of the cluster (for seed addresses).
func (p *peerPool) conn(name, addr string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	k := poolKey{name, addr}
	if c, ok := p.conns[k]; ok {
		return c, nil
	}
	c, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(credentials.NewTLS(p.id.ClientConfig(name))),
		// Peers come back (a restart takes about a second): retry soon
		// rather than after gRPC's default of up to two minutes.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: 2 * time.Second,
		}),
	)
	if err != nil {
		return nil, err
	}
	p.conns[k] = c
	return c, nil
}

// revived is called when a node is alive again: a connection to it that
// waits to retry is replaced by a fresh one, which dials at once. (Not
// ClientConn.ResetConnectBackoff: in gRPC 1.85 it races with the balancer.)
// A connection that works is kept: streams of processes may be on it.
func (p *peerPool) revived(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, c := range p.conns {
		if k.name == name && c.GetState() == connectivity.TransientFailure {
			c.Close()
			delete(p.conns, k)
		}
	}
}

// forget closes and drops connections to a node (it changed address, or
// died and its connection keeps failing).
func (p *peerPool) forget(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, c := range p.conns {
		if k.name == name {
			c.Close()
			delete(p.conns, k)
		}
	}
}

func (p *peerPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, c := range p.conns {
		c.Close()
		delete(p.conns, k)
	}
}

// gossipServer serves the Peer service.
type gossipServer struct {
	peerpb.UnimplementedPeerServer
	d *Daemon
}

func (s gossipServer) Gossip(ctx context.Context, env *peerpb.Envelope) (*peerpb.Empty, error) {
	if from := peerName(ctx); env.GetFrom() != from {
		return nil, status.Errorf(codes.PermissionDenied, "message claims to be from %q but the caller is %q", env.GetFrom(), from)
	}
	s.d.receive(env)
	return &peerpb.Empty{}, nil
}

// checkSeeds makes sure the seeds this node starts from are of its own
// cluster. A seed that belongs to another cluster is a configuration
// mistake (a wrong --join) that gossip alone would only ever log.
func checkSeeds(ctx context.Context, id *pki.Identity, clusterID string, seeds []string) error {
	type result struct {
		seed string
		err  error
	}
	results := make(chan result, len(seeds))
	for _, s := range seeds {
		go func() {
			dctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
			defer cancel()
			d := tls.Dialer{Config: id.ClientConfig("")}
			c, err := d.DialContext(dctx, "tcp", s)
			if err == nil {
				c.Close()
			}
			results <- result{s, err}
		}()
	}
	var other *result
	reached := 0
	for range seeds {
		r := <-results
		switch {
		case r.err == nil:
			reached++
		case errors.Is(r.err, pki.ErrOtherCluster):
			other = &r
		}
	}
	if other != nil && reached == 0 {
		return fmt.Errorf("the node at %s is not part of this node's cluster %s (%v): check --join", other.seed, clusterID, other.err)
	}
	return nil
}
