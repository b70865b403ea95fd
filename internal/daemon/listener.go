package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/credentials"

	"github.com/mosaic-cluster/mosaic/internal/bufpool"
	"github.com/mosaic-cluster/mosaic/internal/pki"
	"github.com/mosaic-cluster/mosaic/internal/procstream"
)

// The peer port serves two protocols over mutual TLS, told apart by ALPN:
// gRPC (h2) for joins, gossip and queries, and process streams
// (procstream.ALPN), one connection per process, for the bulk of its
// input and output. The daemon does the TLS handshake itself and hands
// gRPC connections to the gRPC server already secured.

// peerListener accepts connections on the peer port and routes them.
type peerListener struct {
	ln      net.Listener
	buffers *bufpool.Pool // of the connections' batches
	cfg     *tls.Config
	grpc    *connQueue
	proc    func(*tls.Conn)
	wg      sync.WaitGroup
	closed  chan struct{}
}

func newPeerListener(ln net.Listener, id *pki.Identity, buffers *bufpool.Pool, proc func(*tls.Conn)) *peerListener {
	cfg := id.ServerConfig()
	cfg.NextProtos = []string{"h2", procstream.ALPN}
	return &peerListener{ln: ln, buffers: buffers, cfg: cfg, grpc: newConnQueue(ln.Addr()), proc: proc, closed: make(chan struct{})}
}

// serve accepts until the listener closes.
func (l *peerListener) serve() error {
	defer l.wg.Wait()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			select {
			case <-l.closed:
				return nil
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.route(c)
		}()
	}
}

func (l *peerListener) route(c net.Conn) {
	tc := tls.Server(procstream.NewBatchConn(c, l.buffers), l.cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stop := context.AfterFunc(ctx, func() {
		select {
		case <-l.closed:
			c.Close()
		default:
		}
	})
	err := tc.HandshakeContext(ctx)
	stop()
	if err != nil {
		c.Close()
		return
	}
	if tc.ConnectionState().NegotiatedProtocol == procstream.ALPN {
		l.proc(tc)
		return
	}
	if !l.grpc.push(tc) {
		tc.Close()
	}
}

func (l *peerListener) close() {
	close(l.closed)
	l.ln.Close()
	l.grpc.Close()
}

// connQueue is a net.Listener fed with connections accepted elsewhere.
type connQueue struct {
	addr  net.Addr
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newConnQueue(addr net.Addr) *connQueue {
	return &connQueue{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
}

func (q *connQueue) push(c net.Conn) bool {
	select {
	case q.conns <- c:
		return true
	case <-q.done:
		return false
	}
}

func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.conns:
		return c, nil
	case <-q.done:
		return nil, net.ErrClosed
	}
}

func (q *connQueue) Close() error {
	q.once.Do(func() { close(q.done) })
	return nil
}

func (q *connQueue) Addr() net.Addr { return q.addr }

// secured is the gRPC server's view of connections whose TLS handshake is
// done: it reports their TLS state, which authenticate reads.
type secured struct{}

func (secured) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return nil, nil, errors.New("peer connection is not TLS")
	}
	return tc, credentials.TLSInfo{State: tc.ConnectionState(), CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}, nil
}

func (secured) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("secured credentials are for the server side only")
}

func (secured) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls", SecurityVersion: "1.3"}
}

func (s secured) Clone() credentials.TransportCredentials { return s }

func (secured) OverrideServerName(string) error { return nil }

// dialProc opens a process stream to the node called name at addr.
// The handshake resumes an earlier session with that node when sessions
// (the daemon's cache, keyed by node name) holds one: it skips both
// certificate signatures, a fifth to a third of a handshake that every
// remote start pays (BenchmarkHandshake in internal/pki). The server still
// knows the client's certificate, and the client still checks the server's
// name (TestResumedSessionKeepsIdentities).
// It returns the TCP connection under it too.
func dialProc(ctx context.Context, id *pki.Identity, sessions tls.ClientSessionCache, buffers *bufpool.Pool, name, addr string) (*tls.Conn, net.Conn, error) {
	cfg := id.ClientConfig(name)
	cfg.NextProtos = []string{procstream.ALPN}
	cfg.ServerName, cfg.ClientSessionCache = name, sessions
	d := net.Dialer{Timeout: 3 * time.Second, KeepAlive: 10 * time.Second}
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	raw, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	tc := tls.Client(procstream.NewBatchConn(raw, buffers), cfg)
	if err := tc.HandshakeContext(dctx); err != nil {
		raw.Close()
		// A node that speaks no version of ours refuses the handshake
		// with TLS's no_application_protocol alert, which crypto/tls
		// reports only as text.
		if strings.Contains(err.Error(), "no application protocol") {
			return nil, nil, fmt.Errorf("%w: %w", errOtherProtocol, err)
		}
		return nil, nil, err
	}
	if tc.ConnectionState().NegotiatedProtocol != procstream.ALPN {
		tc.Close()
		return nil, nil, errOtherProtocol
	}
	return tc, raw, nil
}

var errOtherProtocol = errors.New("the node does not speak process streams " + procstream.ALPN +
	" (an older mosaic?): upgrade the cluster's nodes together")
