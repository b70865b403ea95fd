package api

import (
	"time"

	"github.com/mosaic-cluster/mosaic/internal/runproto"
)

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
	Policy      string    `json:"policy,omitempty"`
	NoGuests    bool      `json:"no_guests,omitempty"`
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

// Process operations.
const (
	OpRun     = runproto.OpRun // RunArgs + 3 descriptors → RunEvent frames; RunControl frames from the client
	OpPs      = "ps"           // PsArgs → []ProcInfo
	OpKill    = "kill"         // KillArgs → nothing
	OpMigrate = "migrate"      // MigrateArgs → MigrateResult
	// OpPolicy shows or changes the node's policy (root to change).
	OpPolicy = "policy" // PolicyArgs → PolicyResult
	// OpRecommend lists the moves the nodes' policies would make now.
	OpRecommend = "recommend" // RecommendArgs → RecommendResult
	// OpDrain sends a node's guests away and closes it to new ones (root).
	OpDrain = "drain" // DrainArgs → DrainResult
	// CheckpointArgs + the image file's descriptor → CheckpointResult
	OpCheckpoint = "checkpoint"
)

// The run protocol's messages live in internal/runproto, which the mosaic
// CLI links without this package (see there); here they keep their names.
type (
	RunArgs    = runproto.RunArgs
	Rlimit     = runproto.Rlimit
	TtyModes   = runproto.TtyModes
	RunEvent   = runproto.RunEvent
	RunStarted = runproto.RunStarted
	RunExit    = runproto.RunExit
	RunControl = runproto.RunControl
)

// Exit statuses of `mosaic run` that are not the program's own.
const (
	StatusMosaicError   = runproto.StatusMosaicError
	StatusNotExecutable = runproto.StatusNotExecutable
	StatusNotFound      = runproto.StatusNotFound
	StatusCheckpointed  = runproto.StatusCheckpointed
	StatusLost          = runproto.StatusLost
)

// PsArgs selects processes.
type PsArgs struct {
	ID  string `json:"id,omitempty"`  // one process
	All bool   `json:"all,omitempty"` // every user's (root only; root's default)
}

// ProcInfo is one mosaic process.
type ProcInfo struct {
	ID         string    `json:"id"`
	UID        uint32    `json:"uid"`
	User       string    `json:"user"`
	Home       string    `json:"home"`
	Node       string    `json:"node"` // where it runs now
	PID        int       `json:"pid"`  // on that node
	State      string    `json:"state"`
	ProcState  string    `json:"proc_state,omitempty"`
	Started    time.Time `json:"started"`
	CPUSeconds float64   `json:"cpu_seconds"`
	CPUPercent float64   `json:"cpu_percent"`
	RSS        uint64    `json:"rss"`
	Argv       []string  `json:"argv"`
	Cwd        string    `json:"cwd,omitempty"`
	Tty        bool      `json:"tty,omitempty"`
	Pinned     string    `json:"pinned,omitempty"` // why it cannot move, if it cannot
	Migrations int       `json:"migrations,omitempty"`
	Nice       int       `json:"nice"` // its (main thread's) nice value
	// Children are its descendants, which move with it ("pid command",
	// the pid on the node it runs on).
	Children []string `json:"children,omitempty"`
}

// KillArgs signals a process.
type KillArgs struct {
	ID     string `json:"id"`
	Signal int    `json:"signal"`
}

// MigrateArgs moves a process.
type MigrateArgs struct {
	ID   string `json:"id"`
	Node string `json:"node"` // a node name, or "home"
	// Lazy: post-copy. The process runs at the target once its small
	// state is there; its large memory follows. Shorter freeze, but the
	// process needs the source until all has arrived.
	Lazy bool `json:"lazy,omitempty"`
}

// MigrateResult is what a migration did.
type MigrateResult struct {
	ID         string  `json:"id"`
	Node       string  `json:"node"` // where it runs now
	PID        int     `json:"pid"`
	FrozenMs   float64 `json:"frozen_ms"` // stopped, from freeze to run
	TotalMs    float64 `json:"total_ms"`
	ImageBytes uint64  `json:"image_bytes"`
	// LazyBytes: memory sent after the switch (post-copy); TotalMs then
	// counts until the last of it was sent.
	LazyBytes uint64 `json:"lazy_bytes,omitempty"`
}

// CheckpointArgs asks for a process's image, written to the descriptor
// the request carries.
type CheckpointArgs struct {
	ID   string `json:"id"`
	Stop bool   `json:"stop,omitempty"` // end the process once it is saved
}

// CheckpointResult says what was saved.
type CheckpointResult struct {
	ID         string `json:"id"`
	ImageBytes uint64 `json:"image_bytes"`
	Stopped    bool   `json:"stopped,omitempty"`
}

// PolicyArgs changes the node's policy; empty fields keep what is set.
type PolicyArgs struct {
	Policy   string `json:"policy,omitempty"`
	Manual   *bool  `json:"manual,omitempty"`
	NoGuests *bool  `json:"no_guests,omitempty"`
}

// PolicyResult is the node's policy after the change.
type PolicyResult struct {
	Node     string `json:"node"`
	Policy   string `json:"policy"`
	Manual   bool   `json:"manual"`
	NoGuests bool   `json:"no_guests"`
	Draining bool   `json:"draining"`
}

// RecommendArgs asks every alive node for the moves its policy (or the
// named one) would make now.
type RecommendArgs struct {
	Policy string `json:"policy,omitempty"`
}

// Recommendation is one move a policy recommends, or one a drain made or
// could not make.
type Recommendation struct {
	ID     string `json:"id"`
	From   string `json:"from"`
	To     string `json:"to,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// RecommendResult lists the recommended moves, and the nodes that could
// not be asked.
type RecommendResult struct {
	Moves    []Recommendation  `json:"moves"`
	Policies map[string]string `json:"policies"` // node -> policy evaluated
	Errors   map[string]string `json:"errors,omitempty"`
}

// DrainArgs names the node to drain (or to open again, Undo).
type DrainArgs struct {
	Node string `json:"node"`
	Undo bool   `json:"undo,omitempty"`
}

// DrainResult is what moved and what stayed.
type DrainResult struct {
	Node   string           `json:"node"`
	Moved  []Recommendation `json:"moved"`
	Stayed []Recommendation `json:"stayed"`
}
