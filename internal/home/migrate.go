package home

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/peerpb"
)

// Migration, the home's side: the home drives a process's move (the
// protocol is in peer.proto). It opens the process's next stream to the
// target, tells the source to send it there, holds back the process's
// input and signals meanwhile, and switches its relays when the target
// holds a ready copy and the source has sent all the output from before.

// switchWait bounds the wait for the target's word once the source said
// the copy is there (it said so to the source at the same time).
const switchWait = 10 * time.Second

// abandonWait bounds the wait for the source's last word on a migration
// whose caller gave up (the source resumes the process and says so).
const abandonWait = 30 * time.Second

// Moved is what a migration did.
type Moved struct {
	Node       string
	PID        int
	Frozen     time.Duration // from the freeze to the switch
	Total      time.Duration
	ImageBytes uint64
	LazyBytes  uint64 // sent after the switch (post-copy)
}

// migration is one move under way.
type migration struct {
	target string
	next   *stream // to the target
	began  time.Time
	done   chan migrateResult // buffered: written once
}

type migrateResult struct {
	moved Moved
	err   error
	// later, after a lazy move, gives the result once all the memory
	// has arrived (the switch is done already).
	later chan migrateResult
}

// wait waits for a migration's result (after a lazy move, for the end of
// its memory's transfer too).
func (mig *migration) wait(ctx context.Context) (migrateResult, bool) {
	var r migrateResult
	select {
	case r = <-mig.done:
	case <-ctx.Done():
		return r, false
	}
	if r.later == nil {
		return r, true
	}
	select {
	case r = <-r.later:
		return r, true
	case <-ctx.Done():
		return migrateResult{err: fmt.Errorf("the process moved; its memory was still on the way: %w", ctx.Err())}, true
	}
}

// Migrate moves process id to target (a node name, or "home" for this
// node) on behalf of uid, which must own it (or be root), and returns once
// it runs there, or runs on where it was: then the error says why.
// AutoStay is how long a process stays where a policy moved it before a
// policy may move it again; the stay doubles with each automatic move
// (the first move may come at once), so that in any stretch of time T a
// process moves automatically at most 1 + log2(T/AutoStay + 1) times,
// whatever the views say: the stability bound of docs/ARCHITECTURE.md.
const AutoStay = 4 * time.Second

// autoStay is the stay required after n automatic moves.
func autoStay(n int) time.Duration {
	if n == 0 {
		return 0
	}
	return AutoStay << min(n-1, 16)
}

// MigrateAuto moves a process for the policy of the node it runs on
// (from). The home refuses unless from is where the process runs, its
// user did not pin it, and it has stayed autoStay(moves so far).
func (h *Home) MigrateAuto(ctx context.Context, id, target, from string) (Moved, error) {
	h.mu.Lock()
	p := h.procs[id]
	h.mu.Unlock()
	if p == nil {
		return Moved{}, fmt.Errorf("no process %s", id)
	}
	p.mu.Lock()
	node, pinned, stay, since := p.node, p.start.GetPinned(), autoStay(p.autoMoves), time.Since(p.arrived)
	p.mu.Unlock()
	switch {
	case node != from:
		return Moved{}, fmt.Errorf("process %s runs on %s, not on %s: only the node it runs on may move it by policy", id, node, from)
	case pinned:
		return Moved{}, fmt.Errorf("process %s is pinned by its user (mosaic run --pin)", id)
	case since < stay:
		return Moved{}, fmt.Errorf("process %s arrived %v ago: policies move it again after %v", id, since.Round(time.Millisecond), stay)
	}
	m, err := h.Migrate(ctx, id, target, 0, false)
	if err == nil {
		p.mu.Lock()
		p.autoMoves++
		p.mu.Unlock()
	}
	return m, err
}

func (h *Home) Migrate(ctx context.Context, id, target string, uid uint32, lazy bool) (Moved, error) {
	h.mu.Lock()
	p := h.procs[id]
	h.mu.Unlock()
	if p == nil {
		return Moved{}, fmt.Errorf("no process %s: `mosaic ps` lists yours", id)
	}
	if uid != 0 && uid != p.uid {
		return Moved{}, fmt.Errorf("process %s belongs to another user: you may move only your own processes", id)
	}
	if target == "home" {
		target = h.cfg.Node
	}
	p.mu.Lock()
	node, state, s := p.node, p.state, p.conn
	p.mu.Unlock()
	switch {
	case s == nil || state == "lost" || state == "exited" || state == "starting":
		return Moved{}, fmt.Errorf("process %s is %s and cannot move", id, state)
	case state == "stopped":
		return Moved{}, fmt.Errorf("process %s is stopped: let it continue first (fg, or mosaic kill -CONT %s)", id, id)
	case node == target:
		return Moved{}, fmt.Errorf("process %s runs on %s already", id, target)
	}
	if err := h.cfg.CheckNode(target); err != nil {
		return Moved{}, err
	}
	token, err := newToken()
	if err != nil {
		return Moved{}, err
	}
	sctx, cancel := context.WithCancel(context.Background())
	c, err := h.cfg.Connect(sctx, target)
	if err != nil {
		cancel()
		return Moved{}, fmt.Errorf("reach %s: %w", target, err)
	}
	next := &stream{conn: c, cancel: cancel, node: target}
	adopt := &peerpb.Adopt{Start: p.start, Token: token, Source: node}
	if err := next.send(&peerpb.ExecIn{Msg: &peerpb.ExecIn_Adopt{Adopt: adopt}}); err != nil {
		next.close()
		return Moved{}, fmt.Errorf("reach %s: %w", target, err)
	}
	mig := &migration{target: target, next: next, began: time.Now(), done: make(chan migrateResult, 1)}
	p.sendMu.Lock()
	if p.mig != nil {
		p.sendMu.Unlock()
		next.close()
		return Moved{}, fmt.Errorf("process %s is moving already", id)
	}
	p.mig = mig
	err = s.send(&peerpb.ExecIn{Msg: &peerpb.ExecIn_Migrate{Migrate: &peerpb.Migrate{Target: target, Token: token, Lazy: lazy}}})
	p.sendMu.Unlock()
	if err != nil {
		p.endMigration(migrateResult{err: fmt.Errorf("reach %s, where %s runs: %w", node, id, err)})
		return Moved{}, fmt.Errorf("reach %s, where %s runs: %w", node, id, err)
	}
	p.mu.Lock()
	if p.pump != nil {
		p.pump.hold(true)
	}
	p.mu.Unlock()
	h.cfg.Log.Debug("migrating", "id", id, "from", node, "to", target)
	if r, ok := mig.wait(ctx); ok {
		return r.moved, r.err
	}
	// The caller gave up: so does the target, and the source lets the
	// process go on, and says so.
	next.cancel()
	wctx, cancelWait := context.WithTimeout(context.Background(), abandonWait)
	defer cancelWait()
	if r, ok := mig.wait(wctx); ok {
		return r.moved, r.err
	}
	return Moved{}, fmt.Errorf("process %s: no word from %s on the move: %w", id, node, ctx.Err())
}

// switchOver makes the copy at the target the process, once the source
// said it is there (and sent all the output from before): the target
// lets it run, the source drops its own. It returns the stream to the
// target, or nil if the move is off (the target cannot confirm its copy:
// the source lets the process go on).
func (h *Home) switchOver(p *proc, old *stream, moved *peerpb.Moved) *stream {
	p.sendMu.Lock()
	mig := p.mig
	p.sendMu.Unlock()
	if mig == nil {
		return nil // no move under way: a stray word
	}
	heard := time.Now()
	next := mig.next
	timer := time.AfterFunc(switchWait, next.cancel)
	first, err := next.conn.Recv()
	timer.Stop()
	var why error
	switch {
	case err != nil:
		why = fmt.Errorf("%s is gone: %v", mig.target, err)
	case first.GetFailure() != nil:
		why = fmt.Errorf("%s could not take it: %s", mig.target, first.GetFailure().GetMessage())
	case first.GetRestored() == 0:
		why = fmt.Errorf("%s answered with %T", mig.target, first.Msg)
	default:
		// Go first: if the target cannot hear it, the source still has
		// the process.
		why = next.send(&peerpb.ExecIn{Msg: &peerpb.ExecIn_Go{Go: true}})
	}
	// Stopped from the source's freeze to the source's word, as it
	// counted, and from there to the go, as this node did.
	frozen := time.Duration(moved.GetFrozenUs())*time.Microsecond + time.Since(heard)
	if why != nil {
		old.send(&peerpb.ExecIn{Msg: &peerpb.ExecIn_Resume{Resume: true}})
		next.close()
		p.endMigration(migrateResult{err: fmt.Errorf("process %s stays on %s: %w", p.id, old.node, why)})
		return nil
	}
	old.send(&peerpb.ExecIn{Msg: &peerpb.ExecIn_Discard{Discard: true}})
	pid := int(first.GetRestored())
	p.mu.Lock()
	p.node, p.pid, p.conn, p.cancel = mig.target, pid, next, next.cancel
	p.migrations++
	p.arrived = time.Now()
	p.mu.Unlock()
	r := Moved{Node: mig.target, PID: pid, Frozen: frozen, Total: time.Since(mig.began), ImageBytes: moved.GetImageBytes()}
	// The old stream ends when the source has dropped its copy; after a
	// lazy move, once it has sent the rest of the memory, which it says.
	lazyDone := make(chan *peerpb.LazyDone, 1)
	go func() {
		defer close(lazyDone)
		for {
			m, err := old.conn.Recv()
			if err != nil {
				break
			}
			if d := m.GetLazyDone(); d != nil {
				lazyDone <- d
			}
		}
		old.close()
	}()
	if !moved.GetLazy() { // asked for, but nothing was large enough
		p.endMigration(migrateResult{moved: r})
	} else {
		// The process runs at the target already: what was held goes
		// there now; the caller hears when the memory is all there.
		later := make(chan migrateResult, 1)
		p.endMigration(migrateResult{later: later})
		go func() {
			d := <-lazyDone
			if d == nil {
				later <- migrateResult{err: fmt.Errorf("process %s runs on %s, but the source stopped before all its memory was sent: it is lost", p.id, mig.target)}
				return
			}
			r.LazyBytes, r.Total = d.GetBytes(), time.Since(mig.began)
			later <- migrateResult{moved: r}
		}()
	}
	h.cfg.Log.Info("migrated", "id", p.id, "from", old.node, "to", mig.target, "bytes", r.ImageBytes, "frozen", r.Frozen, "lazy", moved.GetLazy())
	return next
}

// endMigration ends the move under way, if any: what was held back goes to
// where the process runs now, and the caller of Migrate hears res.
func (p *proc) endMigration(res migrateResult) {
	p.sendMu.Lock()
	defer p.sendMu.Unlock()
	mig := p.mig
	if mig == nil {
		return
	}
	p.mig = nil
	if res.err != nil {
		mig.next.close()
	}
	p.mu.Lock()
	s, in := p.conn, p.pump
	p.mu.Unlock()
	for _, m := range p.queued {
		if s == nil || s.send(m) != nil {
			break
		}
	}
	p.queued = nil
	if in != nil {
		in.hold(false)
	}
	mig.done <- res
}

func newToken() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", errors.New("no randomness for a migration token")
	}
	return hex.EncodeToString(b), nil
}
