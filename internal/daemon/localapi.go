package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/api"
	"github.com/mosaic-cluster/mosaic/internal/cluster"
	"github.com/mosaic-cluster/mosaic/internal/gossip"
	"github.com/mosaic-cluster/mosaic/internal/peerpb"
	"github.com/mosaic-cluster/mosaic/internal/pki"
	"github.com/mosaic-cluster/mosaic/internal/token"
	"github.com/mosaic-cluster/mosaic/internal/version"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Limits on join tokens.
const (
	maxTokenTTL = 7 * 24 * time.Hour
	minTokenTTL = time.Second
)

func (d *Daemon) handlers() map[string]api.Handler {
	return map[string]api.Handler{
		api.OpNodes:       d.opNodes,
		api.OpStatus:      d.opStatus,
		api.OpTokenCreate: d.opTokenCreate,
		api.OpTokenList:   d.opTokenList,
		api.OpTokenRevoke: d.opTokenRevoke,
		api.OpLeave:       d.opLeave,
		api.OpNodeRemove:  d.opNodeRemove,
		api.OpRun:         d.opRun,
		api.OpPs:          d.opPs,
		api.OpKill:        d.opKill,
		api.OpMigrate:     d.opMigrate,
		api.OpCheckpoint:  d.opCheckpoint,
		api.OpPolicy:      d.opPolicy,
		api.OpRecommend:   d.opRecommend,
		api.OpDrain:       d.opDrain,
	}
}

// admin allows root and the user the daemon runs as.
func (d *Daemon) admin(c api.Caller, what string) error {
	if c.IsRoot() || int(c.UID) == d.uid {
		return nil
	}
	return fmt.Errorf("permission denied: only root may %s", what)
}

func decode(args json.RawMessage, v any) error {
	if len(args) == 0 {
		return nil
	}
	if err := json.Unmarshal(args, v); err != nil {
		return fmt.Errorf("bad request: %v", err)
	}
	return nil
}

func (d *Daemon) opNodes(ctx context.Context, c api.Caller, args json.RawMessage, _ *api.Conn) (any, error) {
	now := time.Now()
	d.mu.Lock()
	members := d.core.Members()
	loads := d.core.Loads(now)
	self := d.self
	d.mu.Unlock()
	byNode := map[string]gossip.LoadView{}
	for _, l := range loads {
		byNode[l.Report.GetNode()] = l
	}
	out := make([]api.NodeInfo, 0, len(members))
	for _, m := range members {
		ni := api.NodeInfo{
			Name: m.Name, Addr: m.Addr, State: stateName(m.State), Incarnation: m.Incarnation,
			Self: m.Name == d.node.Name, Cores: m.Meta.GetCores(), Capacity: m.Meta.GetCapacity(),
			Speed: m.Meta.GetSpeed(), MemTotal: m.Meta.GetMemTotal(), Since: m.Since,
			StoreMember: m.Meta.GetStoreClientUrl() != "", CA: m.Meta.GetCa(), Shared: m.Meta.GetShared(),
			Version: m.Meta.GetVersion(), AgeMs: -1, Policy: m.Meta.GetPolicy(), NoGuests: m.Meta.GetNoGuests(),
		}
		if l, ok := byNode[m.Name]; ok {
			ni.HasLoad, ni.Load, ni.MemFree, ni.Procs, ni.AgeMs = true, l.Report.GetLoad(), l.Report.GetFreeMem(), l.Report.GetProcs(), l.Age.Milliseconds()
		}
		if ni.Self {
			ni.MemTotal = self.memTotal
			if d.group != nil {
				ni.Cgroup = d.group.CPUPath()
			}
		}
		out = append(out, ni)
	}
	return out, nil
}

func stateName(s peerpb.State) string { return strings.ToLower(s.String()) }

func (d *Daemon) status() api.Status {
	d.mu.Lock()
	self := d.self
	inc := d.core.Incarnation()
	d.mu.Unlock()
	st := api.Status{
		Name: d.node.Name, ClusterID: d.node.ClusterID, Addr: d.node.Addr, Version: version.Version, PID: os.Getpid(),
		Started: d.start, Incarnation: inc, StoreMember: d.node.StoreMember, CA: d.node.CA.Key != nil,
		Shared: d.cfg.Shared, Capacity: d.cfg.Capacity, Speed: d.speed, Cores: d.cores,
		RunQueue: self.runQueue, Load: self.export, LocalLoad: self.local, DataDir: d.node.Dir, Socket: d.cfg.Socket,
		GossipBytes: d.gossipBytes.Load(), GossipMsgs: d.gossipMsgs.Load(), GossipWindow: d.cfg.Window,
		GossipEveryMs: d.cfg.Interval.Milliseconds(),
	}
	if d.group != nil {
		st.Cgroup = d.group.CPUPath()
	}
	if _, err := d.needStore(); err != nil {
		st.StoreError = err.Error()
	} else {
		st.StoreOK = true
	}
	return st
}

func (d *Daemon) opStatus(ctx context.Context, c api.Caller, args json.RawMessage, _ *api.Conn) (any, error) {
	return d.status(), nil
}

func (d *Daemon) opTokenCreate(ctx context.Context, c api.Caller, args json.RawMessage, _ *api.Conn) (any, error) {
	if err := d.admin(c, "create join tokens"); err != nil {
		return nil, err
	}
	var a api.TokenCreateArgs
	if err := decode(args, &a); err != nil {
		return nil, err
	}
	if a.TTL < minTokenTTL || a.TTL > maxTokenTTL {
		return nil, fmt.Errorf("token lifetime %s is out of range: use --ttl between %s and %s", a.TTL, minTokenTTL, maxTokenTTL)
	}
	if a.MaxUses < 0 {
		return nil, errors.New("--uses must be 0 (any number) or more")
	}
	st, err := d.needStore()
	if err != nil {
		return nil, err
	}
	tok, err := token.New(pki.Fingerprint(d.node.CA.Cert))
	if err != nil {
		return nil, err
	}
	now := time.Now().UTC()
	rec := token.NewRecord(tok, now, a.TTL, a.MaxUses, c.UID, a.Note)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := st.CreateToken(ctx, rec); err != nil {
		return nil, err
	}
	d.log.Info("join token created", "id", tok.ID, "expires", rec.Expires, "max_uses", a.MaxUses, "uid", c.UID)
	return api.TokenCreated{Token: tok.String(), ID: tok.ID, Expires: rec.Expires, Join: d.joinAddr()}, nil
}

// joinAddr is where a new node should send its join request: this node if
// it holds the CA key, else a live one that does, else this node (which
// will pass the request on when such a node is up).
func (d *Daemon) joinAddr() string {
	if d.node.CA.Key != nil {
		return d.node.Addr
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, m := range d.core.Members() {
		if m.State == peerpb.State_ALIVE && m.Meta.GetCa() {
			return m.Addr
		}
	}
	return d.node.Addr
}

func tokenInfo(r token.Record, now time.Time) api.TokenInfo {
	return api.TokenInfo{ID: r.ID, Status: r.Status(now), Created: r.Created, Expires: r.Expires, Uses: r.Uses,
		MaxUses: r.MaxUses, CreatedBy: r.CreatedBy, Note: r.Note}
}

func (d *Daemon) opTokenList(ctx context.Context, c api.Caller, args json.RawMessage, _ *api.Conn) (any, error) {
	if err := d.admin(c, "list join tokens"); err != nil {
		return nil, err
	}
	st, err := d.needStore()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	recs, err := st.Tokens(ctx)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	out := []api.TokenInfo{}
	for _, r := range recs {
		out = append(out, tokenInfo(r, now))
	}
	slices.SortFunc(out, func(a, b api.TokenInfo) int { return a.Created.Compare(b.Created) })
	return out, nil
}

func (d *Daemon) opTokenRevoke(ctx context.Context, c api.Caller, args json.RawMessage, _ *api.Conn) (any, error) {
	if err := d.admin(c, "revoke join tokens"); err != nil {
		return nil, err
	}
	var a api.TokenRevokeArgs
	if err := decode(args, &a); err != nil {
		return nil, err
	}
	id := a.ID
	// Accept the whole token as well as its id.
	if t, err := token.Parse(id); err == nil {
		id = t.ID
	}
	if id == "" {
		return nil, errors.New("which token? give its id (from `mosaic token list`) or the token itself")
	}
	st, err := d.needStore()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rec, err := st.RevokeToken(ctx, id, time.Now().UTC())
	if err != nil {
		return nil, err
	}
	d.log.Info("join token revoked", "id", id, "uid", c.UID)
	return tokenInfo(rec, time.Now()), nil
}

func (d *Daemon) opLeave(ctx context.Context, c api.Caller, args json.RawMessage, _ *api.Conn) (any, error) {
	if err := d.admin(c, "stop a node"); err != nil {
		return nil, err
	}
	d.requestLeave()
	return d.status(), nil
}

func (d *Daemon) opNodeRemove(ctx context.Context, c api.Caller, args json.RawMessage, _ *api.Conn) (any, error) {
	if err := d.admin(c, "remove nodes"); err != nil {
		return nil, err
	}
	var a api.NodeRemoveArgs
	if err := decode(args, &a); err != nil {
		return nil, err
	}
	if a.Name == d.node.Name {
		return nil, errors.New("a node cannot remove itself: run `mosaic node remove` on another node after this one has left")
	}
	d.mu.Lock()
	var state peerpb.State = -1
	for _, m := range d.core.Members() {
		if m.Name == a.Name {
			state = m.State
		}
	}
	d.mu.Unlock()
	if state == peerpb.State_ALIVE || state == peerpb.State_SUSPECT {
		return nil, fmt.Errorf("node %q is %s: stop it first (`mosaic node leave` on it), then remove it", a.Name, stateName(state))
	}
	st, err := d.needStore()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	recs, err := st.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	found := false
	for _, r := range recs {
		if r.Name == a.Name {
			found = true
			if r.StoreMember {
				if err := st.RemoveMemberByPeerURL(ctx, peerURLOf(r.Addr)); err != nil {
					return nil, err
				}
			}
		}
	}
	if !found {
		return nil, fmt.Errorf("no node %q in the registry (`mosaic nodes` lists them)", a.Name)
	}
	if _, err := st.DeleteNode(ctx, a.Name); err != nil {
		return nil, err
	}
	d.log.Info("node removed from the registry", "member", a.Name, "uid", c.UID)
	return map[string]string{"removed": a.Name}, nil
}

func peerURLOf(addr string) string {
	_, peer := cluster.StoreURLs(addr)
	return peer
}

func (d *Daemon) opPolicy(ctx context.Context, c api.Caller, args json.RawMessage, _ *api.Conn) (any, error) {
	var a api.PolicyArgs
	if err := decode(args, &a); err != nil {
		return nil, err
	}
	if a.Policy != "" || a.Manual != nil || a.NoGuests != nil {
		if err := d.admin(c, "change the node's policy"); err != nil {
			return nil, err
		}
		if err := d.setPolicy(a.Policy, a.Manual, a.NoGuests); err != nil {
			return nil, err
		}
	}
	b := d.bal
	b.mu.Lock()
	defer b.mu.Unlock()
	return api.PolicyResult{Node: d.node.Name, Policy: b.name, Manual: b.manual, NoGuests: b.refusesGuests(), Draining: b.draining}, nil
}

func (d *Daemon) opRecommend(ctx context.Context, c api.Caller, args json.RawMessage, _ *api.Conn) (any, error) {
	var a api.RecommendArgs
	if err := decode(args, &a); err != nil {
		return nil, err
	}
	res := api.RecommendResult{Moves: []api.Recommendation{}, Policies: map[string]string{}}
	add := func(node string, r *peerpb.RecommendResponse) {
		res.Policies[node] = r.Policy
		for _, m := range r.Moves {
			res.Moves = append(res.Moves, api.Recommendation{ID: m.Id, From: m.From, To: m.To, Reason: m.Reason})
		}
	}
	for _, m := range d.members() {
		if m.State != peerpb.State_ALIVE {
			continue
		}
		if m.Name == d.node.Name {
			name, moves, err := d.recommend(a.Policy)
			if err != nil {
				return nil, err
			}
			r := &peerpb.RecommendResponse{Policy: name}
			for _, mv := range moves {
				r.Moves = append(r.Moves, &peerpb.Recommendation{Id: mv.Proc, From: d.node.Name, To: mv.To, Reason: mv.Reason})
			}
			add(m.Name, r)
			continue
		}
		conn, err := d.pool.conn(m.Name, m.Addr)
		if err == nil {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			var r *peerpb.RecommendResponse
			r, err = peerpb.NewPeerClient(conn).Recommend(cctx, &peerpb.RecommendRequest{Policy: a.Policy})
			cancel()
			if err == nil {
				add(m.Name, r)
				continue
			}
		}
		if res.Errors == nil {
			res.Errors = map[string]string{}
		}
		res.Errors[m.Name] = err.Error()
	}
	slices.SortFunc(res.Moves, func(x, y api.Recommendation) int { return strings.Compare(x.ID, y.ID) })
	return res, nil
}

func (d *Daemon) opDrain(ctx context.Context, c api.Caller, args json.RawMessage, _ *api.Conn) (any, error) {
	var a api.DrainArgs
	if err := decode(args, &a); err != nil {
		return nil, err
	}
	if err := d.admin(c, "drain a node"); err != nil {
		return nil, err
	}
	if a.Node == "" {
		a.Node = d.node.Name
	}
	var moved, stayed []*peerpb.Recommendation
	if a.Node == d.node.Name {
		var err error
		if moved, stayed, err = d.drain(ctx, a.Undo); err != nil {
			return nil, err
		}
	} else {
		if err := d.checkNode(a.Node); err != nil {
			return nil, err
		}
		m, _ := d.peer(a.Node)
		conn, err := d.pool.conn(m.Name, m.Addr)
		if err != nil {
			return nil, err
		}
		cctx, cancel := context.WithTimeout(ctx, migrateTimeout)
		defer cancel()
		// The caller passed admin here: root on this node asks.
		r, err := peerpb.NewPeerClient(conn).Drain(cctx, &peerpb.DrainRequest{Uid: 0, Undo: a.Undo})
		if err != nil {
			if st, ok := status.FromError(err); ok && st.Code() == codes.FailedPrecondition {
				return nil, errors.New(st.Message())
			}
			return nil, fmt.Errorf("drain %s: %w", a.Node, err)
		}
		moved, stayed = r.Moved, r.Stayed
	}
	res := api.DrainResult{Node: a.Node, Moved: []api.Recommendation{}, Stayed: []api.Recommendation{}}
	for _, m := range moved {
		res.Moved = append(res.Moved, api.Recommendation{ID: m.Id, From: m.From, To: m.To})
	}
	for _, m := range stayed {
		res.Stayed = append(res.Stayed, api.Recommendation{ID: m.Id, From: m.From, Reason: m.Reason})
	}
	return res, nil
}
