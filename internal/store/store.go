package store

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/mosaic-cluster/mosaic/internal/token"
)

// Keys. Everything mosaic keeps lives under one prefix.
const (
	prefix      = "/mosaic/"
	nodesPrefix = prefix + "nodes/"
	tokenPrefix = prefix + "tokens/"
)

// Store is a client of the cluster store.
type Store struct {
	cli *clientv3.Client
}

// Open connects to the store members at endpoints (https URLs). It does not
// wait for them: the first operation does.
func Open(endpoints []string, tlsConfig *tls.Config) (*Store, error) {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		TLS:         tlsConfig,
		DialTimeout: 3 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("open cluster store client (%s): %w", strings.Join(endpoints, ","), err)
	}
	return &Store{cli: cli}, nil
}

// Close closes the client.
func (s *Store) Close() error { return s.cli.Close() }

// SetEndpoints replaces the store members the client talks to.
func (s *Store) SetEndpoints(endpoints []string) {
	if len(endpoints) > 0 && !slices.Equal(endpoints, s.cli.Endpoints()) {
		s.cli.SetEndpoints(endpoints...)
	}
}

// Node is a node's record in the registry.
type Node struct {
	Name        string    `json:"name"`
	Addr        string    `json:"addr"`
	CertSerial  string    `json:"cert_serial"`
	Joined      time.Time `json:"joined"`
	State       string    `json:"state"` // "active" or "left"
	StoreMember bool      `json:"store_member,omitempty"`
	CA          bool      `json:"ca,omitempty"`
	LastStart   time.Time `json:"last_start,omitzero"`
	LastLeave   time.Time `json:"last_leave,omitzero"`
}

// ErrNameTaken is returned by Join for a name already in the registry.
var ErrNameTaken = errors.New("node name is already in use in this cluster")

// ErrUnavailable wraps failures to reach the store.
var ErrUnavailable = errors.New("the cluster store is unavailable")

func unavailable(what string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return fmt.Errorf("%s: %w (no quorum of store members answered: are the first nodes of the cluster up?)", what, ErrUnavailable)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// Join admits a node: the token must be valid now and the name free. Both
// are checked and the token's use and the node's record are written in one
// transaction, so two nodes racing for one name or one last use of a token
// cannot both win.
func (s *Store) Join(ctx context.Context, tok token.Token, n Node, now time.Time) error {
	for {
		resp, err := s.cli.Txn(ctx).Then(
			clientv3.OpGet(tokenPrefix+tok.ID),
			clientv3.OpGet(nodesPrefix+n.Name),
		).Commit()
		if err != nil {
			return unavailable("check join token", err)
		}
		tkv := resp.Responses[0].GetResponseRange().Kvs
		if len(tkv) == 0 {
			return token.ErrUnknown
		}
		var rec token.Record
		if err := json.Unmarshal(tkv[0].Value, &rec); err != nil {
			return fmt.Errorf("token record %s is corrupt: %w", tok.ID, err)
		}
		if err := rec.Check(tok.Secret, now); err != nil {
			return err
		}
		if nkv := resp.Responses[1].GetResponseRange().Kvs; len(nkv) > 0 {
			var old Node
			json.Unmarshal(nkv[0].Value, &old)
			return fmt.Errorf("%w: %q joined on %s from %s; choose another --name, or remove the old node with `mosaic node remove %s` if it is gone for good",
				ErrNameTaken, n.Name, old.Joined.UTC().Format(time.RFC3339), old.Addr, n.Name)
		}
		rec.Uses++
		rb, _ := json.Marshal(rec)
		nb, _ := json.Marshal(n)
		tr, err := s.cli.Txn(ctx).If(
			clientv3.Compare(clientv3.ModRevision(tokenPrefix+tok.ID), "=", tkv[0].ModRevision),
			clientv3.Compare(clientv3.CreateRevision(nodesPrefix+n.Name), "=", 0),
		).Then(
			clientv3.OpPut(tokenPrefix+tok.ID, string(rb)),
			clientv3.OpPut(nodesPrefix+n.Name, string(nb)),
		).Commit()
		if err != nil {
			return unavailable("register node", err)
		}
		if tr.Succeeded {
			return nil
		}
		// Someone else used the token or took the name meanwhile: look again.
	}
}

// PutNode writes a node's record.
func (s *Store) PutNode(ctx context.Context, n Node) error {
	b, _ := json.Marshal(n)
	if _, err := s.cli.Put(ctx, nodesPrefix+n.Name, string(b)); err != nil {
		return unavailable("write node record", err)
	}
	return nil
}

// UpdateNode reads a node's record, applies fn and writes it back
// atomically. A missing record is passed as the zero Node with its name set.
func (s *Store) UpdateNode(ctx context.Context, name string, fn func(*Node)) error {
	for {
		resp, err := s.cli.Get(ctx, nodesPrefix+name)
		if err != nil {
			return unavailable("read node record", err)
		}
		n := Node{Name: name}
		rev := int64(0)
		if len(resp.Kvs) > 0 {
			if err := json.Unmarshal(resp.Kvs[0].Value, &n); err != nil {
				return fmt.Errorf("node record %s is corrupt: %w", name, err)
			}
			rev = resp.Kvs[0].ModRevision
		}
		fn(&n)
		b, _ := json.Marshal(n)
		tr, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(nodesPrefix+name), "=", rev)).
			Then(clientv3.OpPut(nodesPrefix+name, string(b))).Commit()
		if err != nil {
			return unavailable("write node record", err)
		}
		if tr.Succeeded {
			return nil
		}
	}
}

// DeleteNode removes a node from the registry.
func (s *Store) DeleteNode(ctx context.Context, name string) (bool, error) {
	resp, err := s.cli.Delete(ctx, nodesPrefix+name)
	if err != nil {
		return false, unavailable("remove node record", err)
	}
	return resp.Deleted > 0, nil
}

// Nodes lists the registry.
func (s *Store) Nodes(ctx context.Context) ([]Node, error) {
	resp, err := s.cli.Get(ctx, nodesPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, unavailable("list nodes", err)
	}
	var out []Node
	for _, kv := range resp.Kvs {
		var n Node
		if err := json.Unmarshal(kv.Value, &n); err != nil {
			return nil, fmt.Errorf("node record %s is corrupt: %w", kv.Key, err)
		}
		out = append(out, n)
	}
	return out, nil
}

// CreateToken stores a new token record.
func (s *Store) CreateToken(ctx context.Context, rec token.Record) error {
	b, _ := json.Marshal(rec)
	tr, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(tokenPrefix+rec.ID), "=", 0)).
		Then(clientv3.OpPut(tokenPrefix+rec.ID, string(b))).Commit()
	if err != nil {
		return unavailable("store join token", err)
	}
	if !tr.Succeeded {
		return fmt.Errorf("token id %s exists already", rec.ID)
	}
	return nil
}

// RevokeToken marks a token revoked. It is an error if there is no such token.
func (s *Store) RevokeToken(ctx context.Context, id string, now time.Time) (token.Record, error) {
	for {
		resp, err := s.cli.Get(ctx, tokenPrefix+id)
		if err != nil {
			return token.Record{}, unavailable("read join token", err)
		}
		if len(resp.Kvs) == 0 {
			return token.Record{}, fmt.Errorf("no join token with id %q: list them with `mosaic token list`", id)
		}
		var rec token.Record
		if err := json.Unmarshal(resp.Kvs[0].Value, &rec); err != nil {
			return token.Record{}, fmt.Errorf("token record %s is corrupt: %w", id, err)
		}
		if !rec.Revoked.IsZero() {
			return rec, nil
		}
		rec.Revoked = now
		b, _ := json.Marshal(rec)
		tr, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(tokenPrefix+id), "=", resp.Kvs[0].ModRevision)).
			Then(clientv3.OpPut(tokenPrefix+id, string(b))).Commit()
		if err != nil {
			return token.Record{}, unavailable("revoke join token", err)
		}
		if tr.Succeeded {
			return rec, nil
		}
	}
}

// Tokens lists the token records.
func (s *Store) Tokens(ctx context.Context) ([]token.Record, error) {
	resp, err := s.cli.Get(ctx, tokenPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, unavailable("list join tokens", err)
	}
	var out []token.Record
	for _, kv := range resp.Kvs {
		var rec token.Record
		if err := json.Unmarshal(kv.Value, &rec); err != nil {
			return nil, fmt.Errorf("token record %s is corrupt: %w", kv.Key, err)
		}
		out = append(out, rec)
	}
	return out, nil
}

// StoreMember is one etcd member as the store reports it.
type StoreMember struct {
	ID         uint64
	Name       string
	PeerURLs   []string
	ClientURLs []string
	Learner    bool
}

// Members lists the store's members.
func (s *Store) Members(ctx context.Context) ([]StoreMember, error) {
	resp, err := s.cli.MemberList(ctx)
	if err != nil {
		return nil, unavailable("list store members", err)
	}
	var out []StoreMember
	for _, m := range resp.Members {
		out = append(out, StoreMember{ID: m.ID, Name: m.Name, PeerURLs: m.PeerURLs, ClientURLs: m.ClientURLs, Learner: m.IsLearner})
	}
	return out, nil
}

// AddLearner adds a new store member as a non-voting learner (so that a
// member that never starts does not cost the store its quorum) and returns
// the initial-cluster string it must start with.
func (s *Store) AddLearner(ctx context.Context, name, peerURL string) (string, error) {
	resp, err := s.cli.MemberAddAsLearner(ctx, []string{peerURL})
	if err != nil {
		return "", unavailable("add store member "+name, err)
	}
	var parts []string
	for _, m := range resp.Members {
		n := m.Name
		if m.ID == resp.Member.ID {
			n = name
		}
		for _, u := range m.PeerURLs {
			parts = append(parts, n+"="+u)
		}
	}
	return strings.Join(parts, ","), nil
}

// RemoveMemberByPeerURL removes a store member that was added but must not
// stay (its node failed to join).
func (s *Store) RemoveMemberByPeerURL(ctx context.Context, peerURL string) error {
	ms, err := s.Members(ctx)
	if err != nil {
		return err
	}
	for _, m := range ms {
		if slices.Contains(m.PeerURLs, peerURL) {
			if _, err := s.cli.MemberRemove(ctx, m.ID); err != nil {
				return unavailable("remove store member", err)
			}
		}
	}
	return nil
}

// PromoteSelf turns this node's learner into a voting member, retrying
// while the learner catches up with the leader.
func (s *Store) PromoteSelf(ctx context.Context, name string) error {
	for {
		ms, err := s.Members(ctx)
		if err != nil {
			return err
		}
		var id uint64
		for _, m := range ms {
			if m.Name == name {
				if !m.Learner {
					return nil
				}
				id = m.ID
			}
		}
		if id == 0 {
			return fmt.Errorf("store member %s is not in the member list", name)
		}
		if _, err := s.cli.MemberPromote(ctx, id); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("promote store member %s: %w", name, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// ClientURLs lists the client URLs of the voting store members.
func (s *Store) ClientURLs(ctx context.Context) ([]string, error) {
	ms, err := s.Members(ctx)
	if err != nil {
		return nil, err
	}
	var urls []string
	for _, m := range ms {
		if !m.Learner {
			urls = append(urls, m.ClientURLs...)
		}
	}
	slices.Sort(urls)
	return urls, nil
}
