package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mosaic-cluster/mosaic/internal/cluster"
	"github.com/mosaic-cluster/mosaic/internal/peerpb"
	"github.com/mosaic-cluster/mosaic/internal/pki"
	"github.com/mosaic-cluster/mosaic/internal/store"
	"github.com/mosaic-cluster/mosaic/internal/token"
)

// joinServer serves the Join service: a machine with a valid join token
// gets a node certificate. Nodes without the CA key pass the request on to
// one that has it.
type joinServer struct {
	peerpb.UnimplementedJoinServer
	d *Daemon
}

func (s joinServer) Join(ctx context.Context, req *peerpb.JoinRequest) (*peerpb.JoinResponse, error) {
	d := s.d
	tok, err := token.Parse(req.GetToken())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if !tok.MatchesCA(pki.Fingerprint(d.node.CA.Cert)) {
		return nil, status.Error(codes.PermissionDenied, token.ErrUnknown.Error())
	}
	if err := cluster.CheckName(req.GetName()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	ap, err := cluster.CheckAddr(req.GetAdvertise())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if d.node.CA.Key == nil {
		return d.forwardJoin(ctx, req)
	}
	resp, err := d.admit(ctx, tok, req, ap)
	if err != nil {
		d.log.Warn("refused to admit a node", "name", req.GetName(), "addr", req.GetAdvertise(), "err", err)
		return nil, err
	}
	d.log.Info("admitted a node", "name", req.GetName(), "addr", req.GetAdvertise(), "store_member", resp.StoreInitialCluster != "")
	return resp, nil
}

// admit registers the new node, makes it a store member if the store is
// still smaller than it should be, and signs its certificate. A failure
// after the registration undoes it.
func (d *Daemon) admit(ctx context.Context, tok token.Token, req *peerpb.JoinRequest, ap netip.AddrPort) (*peerpb.JoinResponse, error) {
	st, err := d.needStore()
	if err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	// One admission at a time: the store grows one member at a time.
	d.admitMu.Lock()
	defer d.admitMu.Unlock()
	if d.nameAlive(req.GetName()) {
		return nil, status.Errorf(codes.AlreadyExists, "node name %q is in use by a live member of this cluster: choose another --name", req.GetName())
	}
	cert, err := d.node.CA.SignCSR(req.GetCsrDer(), req.GetName(), net.IP(ap.Addr().AsSlice()))
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	now := time.Now().UTC()
	err = st.Join(ctx, tok, store.Node{
		Name: req.GetName(), Addr: req.GetAdvertise(), CertSerial: cert.SerialNumber.Text(16), Joined: now, State: "active",
	}, now)
	switch {
	case errors.Is(err, store.ErrNameTaken):
		return nil, status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, token.ErrUnknown), errors.Is(err, token.ErrExpired), errors.Is(err, token.ErrRevoked), errors.Is(err, token.ErrUsedUp):
		return nil, status.Error(codes.PermissionDenied, err.Error())
	case err != nil:
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	undo := func() {
		uctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st.DeleteNode(uctx, req.GetName())
	}

	resp := &peerpb.JoinResponse{ClusterId: d.node.ClusterID, CertDer: cert.Raw, CaDer: d.node.CA.Cert.Raw}
	members, err := st.Members(ctx)
	if err != nil {
		undo()
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	if len(members) < d.storeSize() {
		initial, err := d.addStoreMember(ctx, st, req.GetName(), req.GetAdvertise())
		if err != nil {
			undo()
			return nil, status.Error(codes.Aborted, err.Error())
		}
		resp.StoreInitialCluster = initial
	}
	for _, m := range members {
		if !m.Learner {
			resp.StoreEndpoints = append(resp.StoreEndpoints, m.ClientURLs...)
		}
	}
	slices.Sort(resp.StoreEndpoints)
	resp.Seeds = d.liveAddrs()
	return resp, nil
}

// addStoreMember adds the joining node to the store as a learner. etcd
// takes one learner at a time and refuses changes while a new member has
// not caught up, so this waits (up to a bound) for the previous addition
// to settle.
func (d *Daemon) addStoreMember(ctx context.Context, st *store.Store, name, addr string) (string, error) {
	_, peerURL := cluster.StoreURLs(addr)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ms, err := st.Members(ctx)
		if err == nil && !slices.ContainsFunc(ms, func(m store.StoreMember) bool { return m.Learner }) {
			var initial string
			if initial, err = st.AddLearner(ctx, name, peerURL); err == nil {
				return initial, nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("the store could not take %s as a new member within 30s (%v): try again", name, err)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (d *Daemon) storeSize() int {
	if d.node.StoreSize > 0 {
		return d.node.StoreSize
	}
	return cluster.DefaultStoreSize
}

// nameAlive reports whether a live member (not this node) goes by name.
func (d *Daemon) nameAlive(name string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, m := range d.core.Members() {
		if m.Name == name && (m.State == peerpb.State_ALIVE || m.State == peerpb.State_SUSPECT) {
			return true
		}
	}
	return false
}

// liveAddrs are the peer addresses of the members alive now, this node's
// first.
func (d *Daemon) liveAddrs() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := []string{d.node.Addr}
	for _, m := range d.core.Members() {
		if m.State == peerpb.State_ALIVE && m.Name != d.node.Name {
			out = append(out, m.Addr)
		}
	}
	return out
}

// forwardJoin passes a join request to a live node that holds the CA key.
func (d *Daemon) forwardJoin(ctx context.Context, req *peerpb.JoinRequest) (*peerpb.JoinResponse, error) {
	d.mu.Lock()
	var cas []string
	var names []string
	for _, m := range d.core.Members() {
		if m.State == peerpb.State_ALIVE && m.Meta.GetCa() {
			cas = append(cas, m.Addr)
			names = append(names, m.Name)
		}
	}
	d.mu.Unlock()
	if len(cas) == 0 {
		return nil, status.Error(codes.Unavailable, "no node that can sign certificates (holds the CA key) is alive: start the cluster's first node, or join through it")
	}
	var lastErr error
	for i, addr := range cas {
		conn, err := d.pool.conn(names[i], addr)
		if err != nil {
			lastErr = err
			continue
		}
		resp, err := peerpb.NewJoinClient(conn).Join(ctx, req)
		if err == nil {
			return resp, nil
		}
		if st, ok := status.FromError(err); ok && st.Code() != codes.Unavailable {
			return nil, err // a definite answer, e.g. a bad token
		}
		lastErr = err
	}
	return nil, status.Error(codes.Unavailable, fmt.Sprintf("could not reach a node that holds the CA key: %v", lastErr))
}
