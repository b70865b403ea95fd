// Package store is the cluster's replicated state: an embedded etcd on the
// first few nodes (the store members) and etcd clients on every node. It
// holds what must be agreed on: the node registry and the join tokens.
// Load information never goes through it (that is gossip's job).
package store

import (
	"fmt"
	"net/url"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
)

// MemberConfig describes this node's etcd member.
type MemberConfig struct {
	Name      string
	Dir       string // etcd data directory
	PeerURL   string // https://ip:port other members reach this one at
	ClientURL string // https://ip:port clients reach this one at
	// InitialCluster is name=peerURL,... for a member that starts for the
	// first time; ignored once Dir holds data.
	InitialCluster string
	NewCluster     bool   // the first member of a new cluster
	ClusterToken   string // the cluster ID: keeps members of different clusters apart
	CertFile       string // node certificate (server and client auth)
	KeyFile        string
	CAFile         string
	LogFile        string
}

// Member is a running embedded etcd member.
type Member struct {
	e *embed.Etcd
}

// StartMember starts the member. It returns once the member listens (so a
// port in use or a bad data directory is reported at once); the member
// serves clients only after it reaches the rest of the store (Ready), which
// may take as long as a quorum of members is down.
func StartMember(mc MemberConfig) (*Member, error) {
	cfg := embed.NewConfig()
	cfg.Name = mc.Name
	cfg.Dir = mc.Dir
	peer, err := url.Parse(mc.PeerURL)
	if err != nil {
		return nil, fmt.Errorf("store peer URL %q: %w", mc.PeerURL, err)
	}
	client, err := url.Parse(mc.ClientURL)
	if err != nil {
		return nil, fmt.Errorf("store client URL %q: %w", mc.ClientURL, err)
	}
	cfg.ListenPeerUrls = []url.URL{*peer}
	cfg.AdvertisePeerUrls = []url.URL{*peer}
	cfg.ListenClientUrls = []url.URL{*client}
	cfg.AdvertiseClientUrls = []url.URL{*client}
	cfg.InitialCluster = mc.InitialCluster
	cfg.InitialClusterToken = mc.ClusterToken
	cfg.ClusterState = embed.ClusterStateFlagExisting
	if mc.NewCluster {
		cfg.ClusterState = embed.ClusterStateFlagNew
	}
	// Members and clients authenticate each other with the cluster CA,
	// like every other connection between nodes.
	// Peers are identified by certificate, not by source address (nodes
	// on loopback addresses dial from 127.0.0.1), hence SkipClientSANVerify.
	tls := transport.TLSInfo{CertFile: mc.CertFile, KeyFile: mc.KeyFile, TrustedCAFile: mc.CAFile, ClientCertAuth: true, SkipClientSANVerify: true}
	cfg.PeerTLSInfo = tls
	cfg.ClientTLSInfo = tls
	cfg.Logger = "zap"
	cfg.LogLevel = "warn"
	cfg.LogOutputs = []string{mc.LogFile}
	// A heartbeat every 200 ms (etcd's default is 100 ms) and an election
	// timeout of 1 s: an idle member costs a little less, and a new
	// cluster's first member elects itself within a second (etcd waits a
	// random part of an election timeout even alone), which is most of
	// the time `mosaic up` takes.
	cfg.TickMs = 200
	cfg.ElectionMs = 1000
	// etcd's strict check refuses a membership change until every member
	// has been connected for 5 s, which would add 5 s per store member to
	// a cluster's start. New members join as learners (no vote, no effect
	// on quorum) and are admitted one at a time, which is the safety the
	// check provides.
	cfg.StrictReconfigCheck = false
	cfg.AutoCompactionMode = "periodic"
	cfg.AutoCompactionRetention = "1h"

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start store member %s (log: %s): %w", mc.Name, mc.LogFile, err)
	}
	return &Member{e: e}, nil
}

// Ready is closed when the member serves clients.
func (m *Member) Ready() <-chan struct{} { return m.e.Server.ReadyNotify() }

// Err reports a fatal error of the member.
func (m *Member) Err() <-chan error { return m.e.Err() }

// Close stops the member. It does not hand its leadership over first
// (etcd's graceful stop): nodes of one cluster often stop together, and a
// transfer to a member that is stopping too only waits for its timeout. The
// remaining members elect a new leader within an election timeout.
func (m *Member) Close() {
	m.e.Server.HardStop()
	m.e.Close()
}
