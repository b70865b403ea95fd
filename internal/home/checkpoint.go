package home

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/api"
	"github.com/mosaic-cluster/mosaic/internal/ckpt"
	"github.com/mosaic-cluster/mosaic/internal/executor"
	"github.com/mosaic-cluster/mosaic/internal/peerpb"
)

// Checkpoints and restores, the home's side. A checkpoint is asked of the
// home (it alone talks to the process), which tells the node running the
// process to send its image to the node whose user asked; a restore is a
// run whose program is an image: its home sends the image to the node
// that takes the process in, as a source would in a migration.

// checkpointWait is a checkpoint under way: the relay passes the running
// node's report on.
type checkpointWait struct {
	done chan *peerpb.Checkpointed // buffered: written once
}

// Checkpoint has process id's image sent to node `to`, on an image
// connection presenting token, on behalf of uid (which must own it, or be
// root), and returns its size once it is saved. With stop, the process
// ends once it is saved.
func (h *Home) Checkpoint(ctx context.Context, id string, uid uint32, to, token string, stop bool) (uint64, error) {
	h.mu.Lock()
	p := h.procs[id]
	h.mu.Unlock()
	if p == nil {
		return 0, fmt.Errorf("no process %s: `mosaic ps` lists yours", id)
	}
	if uid != 0 && uid != p.uid {
		return 0, fmt.Errorf("process %s belongs to another user: you may checkpoint only your own processes", id)
	}
	w := &checkpointWait{done: make(chan *peerpb.Checkpointed, 1)}
	p.mu.Lock()
	state := p.state
	busy := p.ckpt != nil
	if !busy && state == "running" {
		p.ckpt = w
	}
	p.mu.Unlock()
	switch {
	case state == "stopped":
		return 0, fmt.Errorf("process %s is stopped: let it continue first (fg, or mosaic kill -CONT %s)", id, id)
	case state != "running":
		return 0, fmt.Errorf("process %s is %s and cannot be checkpointed", id, state)
	case busy:
		return 0, fmt.Errorf("process %s is being checkpointed already", id)
	}
	defer func() {
		p.mu.Lock()
		if p.ckpt == w {
			p.ckpt = nil
		}
		p.mu.Unlock()
	}()
	m := &peerpb.ExecIn{Msg: &peerpb.ExecIn_Checkpoint{Checkpoint: &peerpb.Checkpoint{To: to, Token: token, Stop: stop}}}
	if err := p.deliver(m); err != nil {
		return 0, fmt.Errorf("reach process %s: %w", id, err)
	}
	select {
	case c := <-w.done:
		if c.Error != "" {
			return 0, errors.New(c.Error)
		}
		return c.ImageBytes, nil
	case <-ctx.Done():
		return 0, fmt.Errorf("process %s: no word on its checkpoint: %w", id, ctx.Err())
	}
}

// checkpointed passes the running node's report on a checkpoint to its
// waiter. It reports whether the process ended with it.
func (p *proc) checkpointed(c *peerpb.Checkpointed) bool {
	p.mu.Lock()
	w := p.ckpt
	p.ckpt = nil
	p.mu.Unlock()
	if w != nil {
		w.done <- c
	}
	return c.Stopped
}

// restore runs a process from an image (mosaic restore): under the user of
// the image, with the caller's stdio, on the node placement (or the
// caller) chooses.
func (h *Home) restore(ctx context.Context, caller api.Caller, args api.RunArgs, conn *api.Conn, events *eventWriter, stdio *userStdio, image *os.File) error {
	st, err := image.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return fail(api.StatusMosaicError, "the image must be a regular file")
	}
	dec, err := ckpt.NewDecoder(image)
	if err != nil {
		return fail(api.StatusMosaicError, "not a usable process image: %v", err)
	}
	img := dec.Image()
	if caller.UID != 0 && img.UID != caller.UID {
		return fail(api.StatusMosaicError, "the image is of a process of user %d: you may restore only your own", img.UID)
	}
	// The image says whose process it was; the account here says what
	// that user may be (an image is a user's file, not a credential).
	name, gid, groups := accountOf(img.UID, img.GID)
	candidates, err := h.candidates(args)
	if err != nil {
		return err
	}
	id, err := h.newID()
	if err != nil {
		return err
	}
	start := &peerpb.ExecStart{
		Id: id, Home: h.cfg.Node, Argv: img.Argv, Cwd: img.Cwd, Uid: img.UID, Gid: gid, Groups: groups, User: name,
	}
	start.Tty = peerTty(args.Tty)
	p := &proc{id: id, uid: img.UID, user: name, argv: img.Argv, cwd: img.Cwd, tty: args.Tty != nil,
		started: time.Now(), state: "starting", start: start}
	if !h.add(p) {
		return fail(api.StatusLost, "node %s is shutting down", h.cfg.Node)
	}
	defer h.done(p)

	fixed := args.On != "" || args.Here
	var misses []string
	for _, node := range candidates {
		s, err := h.adopt(ctx, p, start, node, image, img.CPUFeatures)
		if err == nil {
			events.send(api.RunEvent{Started: &api.RunStarted{ID: id, Node: s.node, PID: s.pid}})
			h.cfg.Log.Info("process restored", "id", id, "node", s.node, "pid", s.pid, "uid", img.UID)
			return h.follow(p, s, conn, events, stdio)
		}
		misses = append(misses, err.Error())
		if fixed {
			break
		}
	}
	return fail(api.StatusMosaicError, "could not restore the image: %s", strings.Join(misses, "; "))
}

// adopt sends the image to node and has it take the process in; cpu is
// what the image says the process may use of the CPU, which the node
// checks before it reads the image.
func (h *Home) adopt(ctx context.Context, p *proc, start *peerpb.ExecStart, node string, image *os.File, cpu []string) (*stream, error) {
	p.mu.Lock()
	p.node = node
	p.mu.Unlock()
	token, err := newToken()
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	c, err := h.cfg.Connect(sctx, node)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("%s: %v", node, err)
	}
	s := &stream{conn: c, cancel: cancel, node: node}
	adopt := &peerpb.Adopt{Start: start, Token: token, Source: h.cfg.Node}
	if err := s.send(&peerpb.ExecIn{Msg: &peerpb.ExecIn_Adopt{Adopt: adopt}}); err != nil {
		s.close()
		return nil, fmt.Errorf("%s: %v", node, err)
	}
	link, err := h.cfg.DialImage(sctx, node)
	if err != nil {
		s.close()
		return nil, fmt.Errorf("%s: %v", node, err)
	}
	defer link.CloseSend()
	if _, err := image.Seek(0, io.SeekStart); err != nil {
		s.close()
		return nil, fmt.Errorf("read the image: %v", err)
	}
	if _, err := executor.SendImage(link, &peerpb.ImageOffer{Id: start.Id, Token: token, CpuFeatures: cpu}, image); err != nil {
		// A target that refuses the image part-way (a damaged one) says
		// why and drops the image's connection, which the write here sees
		// first: its word is the better error.
		why := executor.Refusal(link, err, cancel)
		s.close()
		if why != "" {
			return nil, errors.New(why)
		}
		return nil, fmt.Errorf("%s: %v", node, err)
	}
	// The target's word, on the process's stream.
	timer := time.AfterFunc(switchWait+time.Minute, cancel)
	first, err := s.conn.Recv()
	timer.Stop()
	switch {
	case err != nil:
		s.close()
		return nil, fmt.Errorf("%s: %v", node, err)
	case first.GetFailure() != nil:
		s.close()
		return nil, errors.New(first.GetFailure().GetMessage())
	case first.GetRestored() == 0:
		s.close()
		return nil, fmt.Errorf("%s answered with %T", node, first.Msg)
	}
	if err := s.send(&peerpb.ExecIn{Msg: &peerpb.ExecIn_Go{Go: true}}); err != nil {
		s.close()
		return nil, fmt.Errorf("%s: %v", node, err)
	}
	s.pid = int(first.GetRestored())
	p.mu.Lock()
	p.node, p.pid, p.state, p.conn, p.cancel = node, s.pid, "running", s, cancel
	p.mu.Unlock()
	return s, nil
}

// accountOf is a user's name, group and groups from its account here,
// keeping the image's group if the account has it.
func accountOf(uid, gid uint32) (string, uint32, []uint32) {
	name := strconv.Itoa(int(uid))
	u, err := user.LookupId(name)
	if err != nil {
		return name, gid, []uint32{gid}
	}
	primary := gid
	if g, err := strconv.ParseUint(u.Gid, 10, 32); err == nil {
		primary = uint32(g)
	}
	_, _, groups := account(api.Caller{UID: uid, GID: primary})
	if !slices.Contains(groups, gid) {
		gid = primary
	}
	return u.Username, gid, groups
}
