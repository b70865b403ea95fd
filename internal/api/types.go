package api

import "time"

// Operations the daemon serves, with their argument and result types.
const (
	OpNodes       = "nodes"        // → []NodeInfo
	OpStatus      = "status"       // → Status
	OpTokenCreate = "token.create" // TokenCreateArgs → TokenCreated
	OpTokenList   = "token.list"   // → []TokenInfo
	OpTokenRevoke = "token.revoke" // TokenRevokeArgs → TokenInfo
	OpLeave       = "leave"        // → Status (then the daemon leaves and exits)
	OpNodeRemove  = "node.remove"  // NodeRemoveArgs → nothing
)

// NodeInfo is one node as the answering daemon sees it.
type NodeInfo struct {
	Name        string  `json:"name"`
	Addr        string  `json:"addr"`
	State       string  `json:"state"` // alive, suspect, dead, left
	Incarnation uint64  `json:"incarnation"`
	Self        bool    `json:"self,omitempty"`
	Cores       uint32  `json:"cores"`
	Capacity    float64 `json:"capacity"` // cores' worth of CPU offered; 0 = all cores
	Speed       float64 `json:"speed"`
	MemTotal    uint64  `json:"mem_total"`
	// Load information, present when HasLoad is set.
	HasLoad bool    `json:"has_load"`
	Load    float64 `json:"load"`
	MemFree uint64  `json:"mem_free"`
	Procs   uint32  `json:"procs"`
	// AgeMs is the age of the load information, in milliseconds.
	AgeMs       int64     `json:"age_ms"`
	Since       time.Time `json:"since"` // when the node entered its state, as seen here
	StoreMember bool      `json:"store_member,omitempty"`
	CA          bool      `json:"ca,omitempty"`
	Shared      bool      `json:"shared,omitempty"`
	Version     string    `json:"version,omitempty"`
	// Cgroup is the node's cpu cgroup directory; only for the answering node.
	Cgroup string `json:"cgroup,omitempty"`
}

// Status describes the answering daemon.
type Status struct {
	Name          string    `json:"name"`
	ClusterID     string    `json:"cluster_id"`
	Addr          string    `json:"addr"`
	Version       string    `json:"version"`
	PID           int       `json:"pid"`
	Started       time.Time `json:"started"`
	Incarnation   uint64    `json:"incarnation"`
	StoreMember   bool      `json:"store_member"`
	StoreOK       bool      `json:"store_ok"`
	StoreError    string    `json:"store_error,omitempty"`
	CA            bool      `json:"ca"`
	Shared        bool      `json:"shared"`
	Capacity      float64   `json:"capacity"`
	Speed         float64   `json:"speed"`
	Cores         int       `json:"cores"`
	RunQueue      int       `json:"run_queue"`
	Load          float64   `json:"load"`       // exported load
	LocalLoad     float64   `json:"local_load"` // load used for own decisions
	Cgroup        string    `json:"cgroup,omitempty"`
	DataDir       string    `json:"data_dir"`
	Socket        string    `json:"socket"`
	GossipBytes   uint64    `json:"gossip_bytes"`    // bytes of gossip messages sent since start
	GossipMsgs    uint64    `json:"gossip_messages"` // gossip messages sent since start
	GossipWindow  int       `json:"gossip_window"`
	GossipEveryMs int64     `json:"gossip_interval_ms"`
}

// TokenCreateArgs asks for a join token.
type TokenCreateArgs struct {
	TTL     time.Duration `json:"ttl"`
	MaxUses int           `json:"max_uses,omitempty"`
	Note    string        `json:"note,omitempty"`
}

// TokenCreated is a new token; the secret is shown only here.
type TokenCreated struct {
	Token   string    `json:"token"`
	ID      string    `json:"id"`
	Expires time.Time `json:"expires"`
	// Join is an address of a node that can admit new nodes.
	Join string `json:"join"`
}

// TokenInfo describes a token without its secret.
type TokenInfo struct {
	ID        string    `json:"id"`
	Status    string    `json:"status"` // valid, expired, revoked, used
	Created   time.Time `json:"created"`
	Expires   time.Time `json:"expires"`
	Uses      int       `json:"uses"`
	MaxUses   int       `json:"max_uses,omitempty"`
	CreatedBy uint32    `json:"created_by"`
	Note      string    `json:"note,omitempty"`
}

// TokenRevokeArgs names the token to revoke.
type TokenRevokeArgs struct {
	ID string `json:"id"`
}

// NodeRemoveArgs names a node to remove from the registry.
type NodeRemoveArgs struct {
	Name string `json:"name"`
}
