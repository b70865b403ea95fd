package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/cluster"
	"github.com/mosaic-cluster/mosaic/internal/peerpb"
	"github.com/mosaic-cluster/mosaic/internal/store"
)

// openStore starts this node's store member, if it is one, and a store
// client. Neither waits for the store to be reachable: a node runs (and
// gossips) while the store has no quorum; what needs the store says so.
func (d *Daemon) openStore(ctx context.Context) error {
	n := d.node
	clientURL, peerURL := cluster.StoreURLs(n.Addr)
	endpoints := slices.Clone(n.StoreEndpoints)
	if n.StoreMember {
		_, err := os.Stat(n.Path(cluster.StoreDir))
		fresh := errors.Is(err, fs.ErrNotExist)
		m, err := store.StartMember(store.MemberConfig{
			Name: n.Name, Dir: n.Path(cluster.StoreDir), PeerURL: peerURL, ClientURL: clientURL,
			InitialCluster: n.StoreInitialCluster, NewCluster: n.StoreNew && fresh, ClusterToken: n.ClusterID,
			CertFile: n.Path(cluster.CertFile), KeyFile: n.Path(cluster.KeyFile), CAFile: n.Path(cluster.CACertFile),
			LogFile: n.Path(cluster.StoreLog),
		})
		if err != nil {
			if fresh {
				// Do not leave a half-initialized member behind.
				os.RemoveAll(n.Path(cluster.StoreDir))
			}
			return err
		}
		d.member = m
		if !slices.Contains(endpoints, clientURL) {
			endpoints = append([]string{clientURL}, endpoints...)
		}
	}
	st, err := store.Open(endpoints, d.node.ID.ClientConfig(""))
	if err != nil {
		if d.member != nil {
			d.member.Close()
		}
		return err
	}
	d.storeMu.Lock()
	d.st = st
	d.storeErr = errors.New("the cluster store is not reachable yet")
	d.storeMu.Unlock()
	return nil
}

func (d *Daemon) closeStore() {
	if d.st != nil {
		d.st.Close()
	}
	if d.member != nil {
		d.member.Close()
	}
}

// store returns the store client once the store has answered.
func (d *Daemon) store() *store.Store {
	d.storeMu.Lock()
	defer d.storeMu.Unlock()
	if d.storeErr != nil {
		return nil
	}
	return d.st
}

// needStore returns the store client or an error that says why the store
// cannot be used.
func (d *Daemon) needStore() (*store.Store, error) {
	d.storeMu.Lock()
	defer d.storeMu.Unlock()
	if d.storeErr != nil {
		return nil, fmt.Errorf("%w: %v; the first nodes of the cluster (store members) must be up", store.ErrUnavailable, d.storeErr)
	}
	return d.st, nil
}

// storeLoop brings this node's registry record up to date once the store
// answers, promotes a freshly added store member to a voter, and keeps the
// client's endpoint list and the saved seeds in step with membership.
func (d *Daemon) storeLoop(ctx context.Context) error {
	var memberErr <-chan error
	if d.member != nil {
		memberErr = d.member.Err()
		select {
		case <-d.member.Ready():
		case err := <-memberErr:
			return fmt.Errorf("store member failed (see %s): %w", d.node.Path(cluster.StoreLog), err)
		case <-ctx.Done():
			return nil
		}
	}
	registered := false
	promoted := d.member == nil
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	lastSync := time.Time{}
	for {
		if !registered {
			registered = d.register(ctx)
		}
		if registered && !promoted {
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := d.st.PromoteSelf(pctx, d.node.Name)
			cancel()
			if err == nil {
				promoted = true
			} else if ctx.Err() == nil {
				d.log.Debug("store member not promoted yet", "err", err)
			}
		}
		if time.Since(lastSync) > 10*time.Second {
			d.syncPeers()
			lastSync = time.Now()
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-memberErr:
			return fmt.Errorf("store member failed (see %s): %w", d.node.Path(cluster.StoreLog), err)
		case <-tick.C:
		}
	}
}

// register writes this node's record, which proves the store answers.
func (d *Daemon) register(ctx context.Context) bool {
	rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	err := d.st.UpdateNode(rctx, d.node.Name, func(n *store.Node) {
		if n.Joined.IsZero() {
			n.Joined = d.node.Created
		}
		n.Addr = d.node.Addr
		n.CertSerial = d.node.ID.Cert.SerialNumber.Text(16)
		n.State = "active"
		n.StoreMember = d.node.StoreMember
		n.CA = d.node.CA.Key != nil
		n.LastStart = d.start.UTC()
	})
	d.storeMu.Lock()
	if err != nil {
		d.storeErr = err
		d.storeMu.Unlock()
		d.log.Debug("registry not reachable yet", "err", err)
		return false
	}
	if d.storeErr != nil {
		d.log.Info("cluster store reachable")
	}
	d.storeErr = nil
	d.storeMu.Unlock()
	d.preloadRegistry(ctx)
	return true
}

// preloadRegistry tells the gossip core of every registered node, so that
// a node that is down when this one starts is listed (as dead, or left)
// rather than unknown. The entries carry incarnation 0: any announcement of
// the node itself overrides them.
func (d *Daemon) preloadRegistry(ctx context.Context) {
	rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	nodes, err := d.st.Nodes(rctx)
	if err != nil {
		d.log.Debug("read the registry", "err", err)
		return
	}
	var table []*peerpb.MemberUpdate
	for _, n := range nodes {
		if n.Name == d.node.Name {
			continue
		}
		st := peerpb.State_DEAD
		if n.State == "left" {
			st = peerpb.State_LEFT
		}
		table = append(table, &peerpb.MemberUpdate{Name: n.Name, Addr: n.Addr, State: st})
	}
	d.mu.Lock()
	d.core.Preload(time.Now(), table)
	d.mu.Unlock()
}

// syncPeers points the store client at the store members gossip knows
// about and saves the live members' addresses as seeds for the next start.
func (d *Daemon) syncPeers() {
	d.mu.Lock()
	members := d.core.Members()
	d.mu.Unlock()
	var endpoints, seeds []string
	for _, m := range members {
		if m.State != peerpb.State_ALIVE {
			continue
		}
		if u := m.Meta.GetStoreClientUrl(); u != "" {
			endpoints = append(endpoints, u)
		}
		if m.Name != d.node.Name && len(seeds) < 8 {
			seeds = append(seeds, m.Addr)
		}
	}
	slices.Sort(endpoints)
	if len(endpoints) > 0 {
		d.st.SetEndpoints(endpoints)
	}
	if len(seeds) == 0 || (slices.Equal(seeds, d.node.Seeds) && (len(endpoints) == 0 || slices.Equal(endpoints, d.node.StoreEndpoints))) {
		return
	}
	d.node.Seeds = seeds
	if len(endpoints) > 0 {
		d.node.StoreEndpoints = endpoints
	}
	if err := d.node.SaveConfig(); err != nil {
		d.log.Warn("save peers for the next start", "err", err)
	}
}
