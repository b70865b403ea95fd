package executor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/mosaic-cluster/mosaic/internal/ckpt"
	"github.com/mosaic-cluster/mosaic/internal/peerpb"
	"github.com/mosaic-cluster/mosaic/internal/spawn"
)

// Migration, the two ends of it on the nodes that run the process: the
// source (migrateOut) and the target (serveAdopt, serveImage). The home
// drives it; the protocol is in peer.proto.

// Time limits of a migration's steps.
const (
	// imageWait is how long a target waits for the image connection after
	// the home announced it.
	imageWait = 30 * time.Second
	// adoptionWait is how long an image that came before the home's word
	// to adopt it waits for that word (the process stands still
	// meanwhile, so not long: the word was sent first).
	adoptionWait = 2 * time.Second
	// migrationLimit bounds a migration from freeze to the home's word.
	migrationLimit = 10 * time.Minute
)

// decision is the home's word to the source on a migration.
type decision int

const (
	discard  decision = iota + 1 // the copy elsewhere takes over
	resume                       // the move is off
	homeGone                     // the stream broke
)

// tell passes the home's word to a migration under way (if none is, the
// word is for nobody).
func (g *guest) tell(d decision) {
	g.mu.Lock()
	ch := g.decide
	g.mu.Unlock()
	if ch != nil {
		select {
		case ch <- d:
		default:
		}
	}
}

// beginTracing marks the process as traced by a migration; it returns
// false if one is under way already or the process is gone.
func (g *guest) beginTracing() (int, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.tracing != nil || g.pid <= 0 || g.moved {
		return 0, false
	}
	g.tracing = make(chan struct{})
	g.decide = make(chan decision, 1)
	return g.pid, true
}

func (g *guest) endTracing(moved bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.moved = g.moved || moved
	close(g.tracing)
	g.tracing, g.decide = nil, nil
}

// pinnedReason is what a user reads about why a process cannot move.
func pinnedReason(err error) string {
	var pe *ckpt.PinnedError
	if errors.As(err, &pe) {
		return pe.Reason
	}
	return err.Error()
}

// migrateOut sends the process to m.Target (the source's side): freeze
// it, send home what it wrote, stream its image to the target, and once
// the target holds a ready copy, say so to the home and do as it says.
// Whatever fails before the home's word lets the process go on here.
func (e *Executor) migrateOut(s ServerStream, g *guest, m *peerpb.Migrate) {
	// The tracer of the frozen process is this thread, to the end.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	out, std, id := g.out, g.std, g.start.Id
	failed := func(format string, a ...any) {
		msg := fmt.Sprintf(format, a...)
		e.log.Info("migration failed", "id", id, "to", m.Target, "err", msg)
		out.send(&peerpb.ExecOut{Msg: &peerpb.ExecOut_MigrateFailed{MigrateFailed: msg}})
	}
	if m.Target == e.node {
		failed("%s runs on %s already", id, e.node)
		return
	}
	pid, ok := g.beginTracing()
	if !ok {
		failed("process %s is moving already, or has exited", id)
		return
	}
	moved := false
	defer func() { g.endTracing(moved) }()

	// The link to the target first: its handshake is no part of the
	// time the process stands still.
	ctx, cancel := context.WithTimeout(s.Context(), migrationLimit)
	defer cancel()
	link, err := e.cfg.Dial(ctx, m.Target)
	if err != nil {
		failed("%s stays on %s: cannot reach %s: %v", id, e.node, m.Target, err)
		return
	}
	defer link.CloseSend()
	// The target makes ready what it can without the image (the
	// process's namespace, a stub of its program) before the process
	// stops: done while the source froze it, that work took the CPUs from
	// the freeze (on two vCPUs, 2 ms of a 10 ms move).
	layout, err := ckpt.Layout(pid)
	if err != nil {
		layout = nil // the target makes the mappings once the image comes
	}
	needs := e.cpuNeeds(g)
	if err := awaitTarget(link, id, m.Token, layout, needs); err != nil {
		failed("%s stays on %s: %s did not take it: %v", id, e.node, m.Target, err)
		return
	}

	began := time.Now()
	steps := newSteps(began)
	// The relays stop first, while the process runs (what it writes
	// meanwhile waits in its pipes, for drainOutput): waiting for them is
	// then no part of the time it stands still.
	std.holdRelays()
	steps.mark("relays")
	backInQuota := e.outOfQuota(id, pid)
	// A momentary pin (events an inotify descriptor has not read yet)
	// is waited out a little: five tries, 20 ms apart.
	img, frozen, err := ckpt.FreezeSoon(pid, ckpt.FreezeOptions{Home: std.home}, 5, 20*time.Millisecond)
	if err != nil {
		backInQuota()
		std.releaseRelays(out)
		failed("%s cannot move: %s", id, pinnedReason(err))
		return
	}
	steps.mark("freeze")
	frozen.UseBuffers(e.buffers)
	if m.Lazy {
		if err := frozen.MakeLazy(img); err != nil {
			backInQuota()
			frozen.Resume()
			std.releaseRelays(out)
			failed("%s stays on %s: %v", id, e.node, err)
			return
		}
	}
	// Frozen: what it wrote so far goes home first, from here, and what
	// it did not read yet goes with it.
	drained := std.drainOutput(out)
	pending := std.takeInput(pid)
	goOn := func(format string, a ...any) {
		backInQuota()
		if err := frozen.Resume(); err != nil {
			e.log.Error("resume after a failed migration", "id", id, "err", err)
		}
		if err := std.giveBack(pid, pending); err != nil {
			e.log.Error("give back the input of a process that stays", "id", id, "err", err)
		}
		std.releaseRelays(out)
		failed("%s stays on %s: %s", id, e.node, fmt.Sprintf(format, a...))
	}
	if drained != nil {
		goOn("the link to its home broke: %v", drained)
		return
	}
	steps.mark("drain")
	offer := &peerpb.ImageOffer{Id: id, Token: m.Token, PendingStdin: pending, Tty: std.terminal(), StdinEof: std.inputEnded(),
		CpuSeconds: g.cpuSeconds(pid), CpuFeatures: needs}
	sent, err := sendImage(link, offer, len(img.Lazy) > 0, func(w io.Writer) error {
		enc, err := ckpt.NewEncoder(w, img)
		if err != nil {
			return err
		}
		steps.mark("header")
		if err := frozen.ReadMemory(enc.Pages); err != nil {
			return err
		}
		steps.mark("memory")
		return enc.Close()
	})
	if err != nil {
		if why := Refusal(link, err, cancel); why != "" {
			goOn("%s could not restore it: %s", m.Target, why)
			return
		}
		goOn("sending its image to %s failed: %v", m.Target, err)
		return
	}
	steps.mark("image")
	reply, err := link.Recv()
	switch {
	case err != nil:
		goOn("%s broke off the transfer: %v", m.Target, err)
		return
	case reply.GetFailure() != nil:
		goOn("%s could not restore it: %s", m.Target, reply.GetFailure().GetMessage())
		return
	case reply.GetRestored() == 0:
		goOn("%s answered the image with %T", m.Target, reply.Msg)
		return
	}
	frozenFor := time.Since(frozen.Stopped())
	steps.mark("restored")
	// Post-copy: the rest of the memory goes now, whatever the home says;
	// if it calls the move off, the sending stops.
	var lazy *lazySend
	if len(img.Lazy) > 0 {
		if lazy, err = startLazy(ctx, frozen, img, link); err != nil {
			goOn("%v", err)
			return
		}
	}
	if err := out.send(&peerpb.ExecOut{Msg: &peerpb.ExecOut_Moved{Moved: &peerpb.Moved{ImageBytes: sent, FrozenUs: frozenFor.Microseconds(), Lazy: lazy != nil}}}); err != nil {
		lazy.stop()
		frozen.Kill() // the home is gone: the process goes with it
		return
	}
	g.mu.Lock()
	decide := g.decide
	g.mu.Unlock()
	var d decision
	select {
	case d = <-decide:
	case <-ctx.Done():
		d = homeGone
	}
	steps.mark("home")
	switch d {
	case discard:
		// The home switched to the copy at the target: this one ends, and
		// with it this stream, with no exit to report; after the rest of
		// its memory has gone, if it moves lazily.
		moved = true
		if lazy != nil {
			switched := time.Now()
			err := lazy.wait()
			if err != nil {
				e.log.Warn("post-copy failed: the process is lost at the target", "id", id, "to", m.Target, "err", err)
			} else {
				out.send(&peerpb.ExecOut{Msg: &peerpb.ExecOut_LazyDone{LazyDone: &peerpb.LazyDone{
					Bytes: lazy.bytes(), Us: time.Since(switched).Microseconds()}}})
			}
		}
		frozen.Kill()
		e.log.Info("migrated", "id", id, "to", m.Target, "bytes", sent, "frozen", frozenFor, "steps", steps)
	case resume:
		lazy.stop()
		goOn("%s lost the process before it could run there", m.Target)
	default:
		lazy.stop()
		frozen.Kill()
	}
}

// awaitTarget offers a process's image to the target ahead, on link, with
// its layout, and waits until the target is ready to restore it (see
// ImageOffer.ahead).
func awaitTarget(link Conn, id, token string, layout []byte, cpu []string) error {
	ahead := &peerpb.ImageOffer{Id: id, Token: token, Ahead: true, Layout: layout, CpuFeatures: cpu}
	if err := link.Send(&peerpb.ExecIn{Msg: &peerpb.ExecIn_Image{Image: ahead}}); err != nil {
		return fmt.Errorf("offer the image: %w", err)
	}
	reply, err := link.Recv()
	switch {
	case err != nil:
		return fmt.Errorf("no answer to the offer of its image: %w", err)
	case reply.GetFailure() != nil:
		return errors.New(reply.GetFailure().GetMessage())
	case !reply.GetReady():
		return fmt.Errorf("answered the offer of its image with %T", reply.Msg)
	}
	return nil
}

// lazySend sends a frozen process's lazy memory to the target, pages the
// target asks for first.
type lazySend struct {
	cancel context.CancelFunc
	done   chan error
	w      *imageWriter
	// confirmed is closed when the target says it has every page (until
	// then the link must stay: closing it with its requests unread would
	// reset it, and could lose pages in flight).
	confirmed chan struct{}
}

func startLazy(ctx context.Context, frozen *ckpt.Frozen, img *ckpt.Image, link Conn) (*lazySend, error) {
	srv, err := frozen.NewLazyServer(img)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	l := &lazySend{cancel: cancel, done: make(chan error, 1), w: &imageWriter{link: link}, confirmed: make(chan struct{})}
	wants := make(chan uint64, 1024)
	go func() {
		// The target's requests, and at the end its word that all is in.
		for {
			m, err := link.Recv()
			if err != nil {
				return
			}
			if m.GetLazyDone() != nil {
				close(l.confirmed)
				return
			}
			if a := m.GetPageWanted(); a != 0 {
				select {
				case wants <- a:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	go func() { l.done <- srv.Serve(ctx, l.w, wants) }()
	return l, nil
}

func (l *lazySend) wait() error {
	if err := <-l.done; err != nil {
		return err
	}
	select {
	case <-l.confirmed:
		return nil
	case <-time.After(lazyConfirmWait):
		return errors.New("the target did not confirm it had all the memory")
	}
}

// lazyConfirmWait bounds the wait for the target's word once all memory
// is sent (it has the last pages to copy in).
const lazyConfirmWait = time.Minute

func (l *lazySend) bytes() uint64 { return l.w.n }

func (l *lazySend) stop() {
	if l == nil {
		return
	}
	l.cancel()
	<-l.done
}

// imageWriter sends an image over a process connection, as data frames.
type imageWriter struct {
	link Conn
	n    uint64
}

// bulkSender is a connection that sends bulk data without copying it
// (procstream.Client).
type bulkSender interface{ SendData(b []byte) error }

func (w *imageWriter) Write(b []byte) (int, error) {
	if ds, ok := w.link.(bulkSender); ok {
		if err := ds.SendData(b); err != nil {
			return 0, &linkError{err}
		}
		w.n += uint64(len(b))
		return len(b), nil
	}
	for off := 0; off < len(b); {
		end := min(off+chunk, len(b))
		// Send copies into a frame of its own before it returns.
		if err := w.link.Send(&peerpb.ExecIn{Msg: &peerpb.ExecIn_Stdin{Stdin: b[off:end]}}); err != nil {
			return off, &linkError{err}
		}
		w.n += uint64(end - off)
		off = end
	}
	return len(b), nil
}

// linkError is a failure to send on an image's connection (as opposed to
// one in making the image).
type linkError struct{ err error }

func (e *linkError) Error() string { return e.err.Error() }
func (e *linkError) Unwrap() error { return e.err }

// refusalWait is how long a sender whose image was broken off waits for
// the receiver's reason.
const refusalWait = 2 * time.Second

// Refusal is the receiver's reason for breaking off an image that was
// being sent on link, if sending failed on the link (err) and the reason
// came: a receiver that refuses an image part-way (it is damaged, the disk
// is full) says why and drops the connection, which the sender's next
// write sees first, as a reset; what was said before the reset can still
// be read. cancel breaks the link if no word comes in time.
func Refusal(link Conn, err error, cancel func()) string {
	var le *linkError
	if !errors.As(err, &le) {
		return ""
	}
	timer := time.AfterFunc(refusalWait, cancel)
	defer timer.Stop()
	reply, rerr := link.Recv()
	if rerr != nil || reply.GetFailure() == nil {
		return ""
	}
	return reply.GetFailure().GetMessage()
}

// imageReader reads an image from the data frames of an image connection.
type imageReader struct {
	s    ServerStream
	rest []byte
}

// dataReader is a stream that reads data frames' payloads straight into
// the caller's buffer (procstream.Server).
type dataReader interface {
	ReadData(p []byte) (int, error)
}

func (r *imageReader) Read(b []byte) (int, error) {
	if dr, ok := r.s.(dataReader); ok && len(r.rest) == 0 {
		return dr.ReadData(b)
	}
	for len(r.rest) == 0 {
		m, err := r.s.Recv()
		if err != nil {
			return 0, err
		}
		data, ok := m.Msg.(*peerpb.ExecIn_Stdin)
		if !ok {
			return 0, fmt.Errorf("unexpected %T in an image", m.Msg)
		}
		r.rest = data.Stdin
	}
	n := copy(b, r.rest)
	r.rest = r.rest[n:]
	return n, nil
}

// adoption is a process this node expects from another.
type adoption struct {
	id, source string
	image      chan *imageConn
}

// imageConn is an image connection handed from serveImage to the
// adoption that waits for it.
type imageConn struct {
	s     ServerStream
	out   *sender
	offer *peerpb.ImageOffer
	done  chan struct{} // closed when the adoption is done with it
	// refused says why this node cannot take the process the offer is
	// of (serveImage found it); the adoption fails with it.
	refused string
}

// serveImage hands an image connection to the adoption it is for.
func (e *Executor) serveImage(from string, s ServerStream, out *sender, offer *peerpb.ImageOffer) error {
	// The home asks this node to adopt the process and, without waiting,
	// the source to send it: on two connections, so the image can come
	// first. It waits for its adoption a while.
	expired := time.NewTimer(adoptionWait)
	defer expired.Stop()
	var a *adoption
	for a == nil {
		e.mu.Lock()
		if r := e.receipts[offer.Token]; r != nil {
			delete(e.receipts, offer.Token)
			e.mu.Unlock()
			r.save(s, out)
			return nil
		}
		if r, ok := e.refusals[offer.Token]; ok {
			delete(e.refusals, offer.Token)
			e.mu.Unlock()
			if r.source != from || r.id != offer.Id {
				return refuse(out, peerpb.FailureKind_REFUSED, "node %s expects no process %s from %s", e.node, offer.Id, from)
			}
			return refuse(out, r.kind, "%s", r.why)
		}
		if ad := e.adoptions[offer.Token]; ad != nil {
			if ad.source != from || ad.id != offer.Id {
				e.mu.Unlock()
				return refuse(out, peerpb.FailureKind_REFUSED, "node %s expects no process %s from %s", e.node, offer.Id, from)
			}
			delete(e.adoptions, offer.Token) // one image per adoption
			a = ad
		}
		adopted := e.adopted
		e.mu.Unlock()
		if a != nil {
			break
		}
		select {
		case <-adopted:
		case <-expired.C:
			return refuse(out, peerpb.FailureKind_REFUSED, "node %s expects no process %s from %s", e.node, offer.Id, from)
		case <-s.Context().Done():
			return s.Context().Err()
		}
	}
	ic := &imageConn{s: s, out: out, offer: offer, done: make(chan struct{})}
	if why := e.lacks(offer.Id, offer.CpuFeatures); why != "" {
		// Before anything stops or runs: a move's source sends this
		// offer ahead of the freeze (the process goes on there), a
		// restore's home before the image. The adoption learns at once
		// and gives up.
		ic.refused = why
	}
	a.image <- ic // buffered, and handed over once
	select {
	case <-ic.done:
	case <-s.Context().Done():
	}
	return nil
}

// expectAdoption registers an adoption under its token, for its image; it
// is false when the node shuts down.
func (e *Executor) expectAdoption(token string, ad *adoption) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return false
	}
	e.adoptions[token] = ad
	close(e.adopted) // an image that came first may be waiting
	e.adopted = make(chan struct{})
	return true
}

// refusal is an adoption refused, kept for its image (Executor.refusals).
type refusal struct {
	id, source string
	kind       peerpb.FailureKind
	why        string
	at         time.Time
}

// refuseAdoption answers an adoption with a refusal, and keeps the
// refusal a while for its image: the source, which offers it while the
// home hears the refusal, then learns why at once instead of after
// adoptionWait. ad is the adoption as registered (expectAdoption), if it
// was; it goes.
func (e *Executor) refuseAdoption(out *sender, a *peerpb.Adopt, ad *adoption, kind peerpb.FailureKind, format string, args ...any) error {
	why := fmt.Sprintf(format, args...)
	now := time.Now()
	e.mu.Lock()
	if ad != nil && e.adoptions[a.Token] == ad {
		delete(e.adoptions, a.Token)
	}
	for token, r := range e.refusals {
		if now.Sub(r.at) > imageWait {
			delete(e.refusals, token) // its image never came
		}
	}
	e.refusals[a.Token] = refusal{id: a.GetStart().GetId(), source: a.Source, kind: kind, why: why, at: now}
	close(e.adopted) // its image may be waiting
	e.adopted = make(chan struct{})
	e.mu.Unlock()
	return refuse(out, kind, "%s", why)
}

// serveAdopt takes over a process from another node (the target's side):
// wait for its image, restore it stopped, say so, and let it run when the
// home says go; from then on it is a process of this node like any other.
func (e *Executor) serveAdopt(from string, s ServerStream, out *sender, a *peerpb.Adopt) error {
	st := a.Start
	if err := checkHome(from, st); err != nil {
		return refuse(out, peerpb.FailureKind_REFUSED, "%v", err)
	}
	// (A home restoring an image on itself sends it from itself.)
	if a.Source == e.node && from != e.node {
		return refuse(out, peerpb.FailureKind_REFUSED, "process %s runs on %s already", st.Id, e.node)
	}
	if why := e.refusesGuest(from); why != "" {
		return e.refuseAdoption(out, a, nil, peerpb.FailureKind_REFUSED, "%s", why)
	}
	ad := &adoption{id: st.Id, source: a.Source, image: make(chan *imageConn, 1)}
	if !e.expectAdoption(a.Token, ad) {
		return refuse(out, peerpb.FailureKind_REFUSED, "node %s is shutting down", e.node)
	}
	// Its PID namespace, made before the source freezes it: one thing
	// less while it stands still.
	ns, err := e.cfg.Restorer.NewNamespace()
	if err != nil {
		return e.refuseAdoption(out, a, ad, peerpb.FailureKind_FAILURE_OTHER, "on %s: %v", e.node, err)
	}
	defer func() { ns.Close() }() // (replaced if the stub was the wrong one)

	// The process's descriptors, and the userfaultfd device a post-copy
	// move needs (opened here, as root; the process gets it as a
	// descriptor, which the restore closes).
	std, err := newStdio(st, e.outputs)
	if err != nil {
		return e.refuseAdoption(out, a, ad, peerpb.FailureKind_FAILURE_OTHER, "on %s: %v", e.node, err)
	}
	defer std.close()
	uffdDev, uffdErr := os.OpenFile("/dev/userfaultfd", os.O_RDWR|syscall.O_CLOEXEC, 0)
	if uffdErr == nil {
		defer uffdDev.Close()
	}
	// Its memory stops coming when it is gone (or not restored).
	lazyCtx, stopLazy := context.WithCancel(context.Background())
	defer stopLazy()

	var (
		ic    *imageConn
		dec   *ckpt.Decoder
		steps *steps
		g     *guest
	)
	defer func() {
		if ic != nil {
			close(ic.done)
		}
	}()
	failed := func(format string, args ...any) error {
		msg := fmt.Sprintf(format, args...)
		e.log.Info("adoption failed", "id", st.Id, "from", a.Source, "err", msg)
		f := &peerpb.ExecOut{Msg: &peerpb.ExecOut_Failure{Failure: &peerpb.Failure{Message: msg}}}
		if ic != nil {
			ic.out.send(f)
		}
		out.send(f)
		return nil
	}
	// stub is the stub started ahead, once prepared; the layout offered
	// ahead is made in it (premapped: how long that took).
	var (
		stub      *ckpt.Stub
		premapped time.Duration
	)
	// image waits up to d for the image and reads its header. It says
	// whether the image came; an error is the image's fault.
	image := func(d time.Duration, last bool) (bool, error) {
		select {
		case ic = <-ad.image:
		case <-s.Context().Done():
		case <-time.After(d):
		}
		if ic == nil && last {
			// Give up on it, unless it came meanwhile.
			e.mu.Lock()
			delete(e.adoptions, a.Token)
			e.mu.Unlock()
			select {
			case ic = <-ad.image:
			default:
			}
		}
		if ic == nil {
			return false, nil
		}
		if ic.refused != "" {
			return true, errors.New(ic.refused)
		}
		if ic.offer.Ahead {
			if stub != nil && len(ic.offer.Layout) > 0 {
				began := time.Now()
				if err := stub.Premap(ic.offer.Layout); err != nil {
					e.log.Debug("make a layout ahead", "id", st.Id, "err", err)
				}
				premapped = time.Since(began)
			}
			// The source freezes the process now, then offers it.
			if err := ic.out.send(&peerpb.ExecOut{Msg: &peerpb.ExecOut_Ready{Ready: true}}); err != nil {
				return true, fmt.Errorf("the source of %s went away: %v", st.Id, err)
			}
			m, err := ic.s.Recv()
			if err != nil {
				return true, fmt.Errorf("the source of %s went away: %v", st.Id, err)
			}
			offer := m.GetImage()
			if offer == nil || offer.Ahead || offer.Id != st.Id || offer.Token != ic.offer.Token {
				return true, fmt.Errorf("the source of %s sent %T where its image's offer belongs", st.Id, m.Msg)
			}
			ic.offer = offer
		}
		steps = newSteps(time.Now()) // from the image's first word
		var err error
		if dec, err = ckpt.NewDecoder(&imageReader{s: ic.s}); err != nil {
			return true, fmt.Errorf("read the image of %s: %v", st.Id, err)
		}
		img := dec.Image()
		steps.mark("header")
		if img.UID != st.Uid {
			return true, fmt.Errorf("the image of %s is of user %d, the process of user %d", st.Id, img.UID, st.Uid)
		}
		if len(img.Lazy) > 0 && uffdErr != nil {
			return true, fmt.Errorf("node %s cannot take a process lazily: %v", e.node, uffdErr)
		}
		// The process keeps its terminal's modes as it had set them.
		if ic.offer.Tty != nil && st.Tty != nil {
			st.Tty = ic.offer.Tty
			if err := std.setTerminal(st.Tty); err != nil {
				return true, fmt.Errorf("on %s: %v", e.node, err)
			}
		}
		if p := ic.offer.PendingStdin; len(p) > 0 {
			std.writeStdin(p)
		}
		if ic.offer.StdinEof {
			std.closeStdin()
		}
		g = &guest{start: st, started: time.Now(), out: out, std: std, cpuBefore: ic.offer.CpuSeconds,
			cpuUsed: ic.offer.CpuFeatures}
		if !e.add(st.Id, g) {
			g = nil
			return true, fmt.Errorf("node %s is shutting down", e.node)
		}
		return true, nil
	}
	defer func() {
		if g != nil {
			e.remove(st.Id)
		}
	}()

	spec := spawn.Spec{
		Dir: "/", UID: st.Uid, GID: st.Gid, Groups: st.Groups,
		Files: std.childFiles(), Terminal: st.Tty != nil,
	}
	opt := ckpt.RestoreOptions{Buffers: e.buffers}
	if uffdErr == nil {
		opt.Userfaultfd = len(spec.Files)
		spec.Files = append(spec.Files, uffdDev)
	}
	var pid int
	var filled uint64 // bytes of its memory written through a userfaultfd
	// restore makes the stub p, prepared, the process, once the header
	// is read.
	restore := func(p *os.Process, stub *ckpt.Stub) error {
		img := dec.Image()
		g.ns = spec.Namespace
		opt.Init = spec.Namespace.Init.Pid // threads get their ids back through it
		opt.Step = func(name string) { steps.mark("restore." + name) }
		// Its limits first: the restore locks the memory it had locked
		// under its own limit on locked memory. (Its children's, each
		// as it is made.)
		setLimits := func(pid int, img *ckpt.Image) error {
			var limits []spawn.Rlimit
			for _, l := range img.Rlimits {
				limits = append(limits, spawn.Rlimit{Resource: l.Resource, Cur: l.Cur, Max: l.Max})
			}
			if err := spawn.SetLimits(pid, st.Uid, st.Gid, limits); err != nil {
				e.log.Warn("restore resource limits", "id", st.Id, "pid", pid, "err", err)
			}
			return nil
		}
		setLimits(p.Pid, img)
		opt.Prepare = setLimits
		r, err := ckpt.RestoreInto(stub, dec, opt)
		if err != nil {
			return fmt.Errorf("restore %s: %w", st.Id, err)
		}
		// Restored outside the node's CPU quota (see Quota), it runs
		// under it, with its children.
		if q := e.cfg.Quota; q != nil {
			for _, pid := range r.Pids() {
				if err := q.CapCPU(pid); err != nil {
					r.Abort()
					return fmt.Errorf("put %s under the node's CPU quota: %w", st.Id, err)
				}
			}
		}
		filled = r.Filled()
		if lazy := r.Lazy(); lazy != nil {
			// Its memory comes in while it waits for the home's word,
			// and after.
			go e.fillLazy(lazyCtx, st.Id, p.Pid, lazy, dec, ic.out)
		}
		ready := &peerpb.ExecOut{Msg: &peerpb.ExecOut_Restored{Restored: int32(p.Pid)}}
		ic.out.send(ready)
		if err := out.send(ready); err != nil {
			r.Abort()
			return fmt.Errorf("the home went away: %w", err)
		}
		// The home's word: go (anything else, or nothing, is no).
		in, err := s.Recv()
		steps.mark("home")
		if err != nil || !in.GetGo() {
			r.Abort()
			if err == nil {
				err = fmt.Errorf("%T", in.Msg)
			}
			return fmt.Errorf("the home called the move off: %w", err)
		}
		if err := r.Go(); err != nil {
			return err
		}
		pid = p.Pid
		return nil
	}

	// The stub is started ahead, while the source freezes the process: it
	// runs the program the process started with (what it runs still,
	// unless it exec'd another) and waits, traced, for the image; the
	// stub's start is then no part of the time the process stands still.
	// It holds the restore's thread meanwhile, so it waits only so long.
	var imageErr error
	stubbed := false
	if exe := startedProgram(st); exe != "" {
		spec.Argv, spec.Namespace = []string{exe}, ns
		err = e.cfg.Restorer.Traced(spec, func(p *os.Process) error {
			// Made ready before the image comes: that work is then no
			// part of the freeze either.
			var err error
			stub, err = ckpt.PrepareStub(p.Pid)
			if err != nil {
				imageErr = fmt.Errorf("prepare a process to restore into: %w", err)
				return errNoStub
			}
			came, err := image(stubWait, false)
			if came && err == nil {
				if same, _ := sameFile(exe, dec.Image().Exe); same {
					stubbed = true
					steps.mark("stub")
					return restore(p, stub)
				}
			}
			imageErr = err
			stub.Kill()
			stub = nil
			return errNoStub
		})
	}
	if !stubbed {
		if imageErr != nil {
			return failed("%v", imageErr)
		}
		if ic == nil {
			if came, err := image(imageWait-stubWait, true); err != nil {
				return failed("%v", err)
			} else if !came {
				return refuse(out, peerpb.FailureKind_FAILURE_OTHER, "the image of %s did not come from %s", st.Id, a.Source)
			}
		}
		// The process is the first in its namespace: a namespace a
		// stub was started in is spent.
		if spec.Argv != nil {
			ns.Close()
			if ns, err = e.cfg.Restorer.NewNamespace(); err != nil {
				return failed("on %s: %v", e.node, err)
			}
		}
		spec.Argv, spec.Namespace = []string{dec.Image().Exe}, ns
		err = e.cfg.Restorer.Traced(spec, func(p *os.Process) error {
			stub, err := ckpt.PrepareStub(p.Pid)
			if err != nil {
				return fmt.Errorf("prepare a process to restore %s into: %w", st.Id, err)
			}
			steps.mark("stub")
			return restore(p, stub)
		})
	}
	std.closeChildEnds()
	if err != nil {
		return failed("%v (on node %s)", err, e.node)
	}
	g.setPID(pid)
	steps.mark("go")
	e.log.Info("adopted", "id", st.Id, "from", a.Source, "pid", pid, "steps", steps, "layout_ahead", premapped.Round(10*time.Microsecond), "filled", filled)
	e.supervise(s, g)
	return nil
}

// stubWait is how long a stub started ahead waits for its image, holding
// the restore's thread (other moves to this node wait for it); after that
// it goes, and the image is waited for without it.
const stubWait = 2 * time.Second

// errNoStub says that the stub started ahead was not used.
var errNoStub = errors.New("the stub started ahead was not used")

// startedProgram is the program a process was started with, as its
// start found it (argv[0] through the PATH of its environment, from its
// working directory), or "" if it cannot tell.
func startedProgram(st *peerpb.ExecStart) string {
	if len(st.Argv) == 0 {
		return ""
	}
	prog := st.Argv[0]
	if strings.Contains(prog, "/") {
		if !filepath.IsAbs(prog) {
			prog = filepath.Join(st.Cwd, prog)
		}
		return prog
	}
	path := ""
	for _, kv := range st.Env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		if !filepath.IsAbs(dir) {
			continue
		}
		p := filepath.Join(dir, prog)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// sameFile says whether two paths name one file.
func sameFile(a, b string) (bool, error) {
	fa, err := os.Stat(a)
	if err != nil {
		return false, err
	}
	fb, err := os.Stat(b)
	if err != nil {
		return false, err
	}
	return os.SameFile(fa, fb), nil
}

// fillLazy brings a process's lazy memory in from the source. Should the
// source or the link fail first, the process cannot go on (a page it
// needs is gone): it is killed, and its home hears so as its end.
func (e *Executor) fillLazy(ctx context.Context, id string, pid int, lazy *ckpt.LazyMemory, dec *ckpt.Decoder, source *sender) {
	began := time.Now()
	err := lazy.Run(ctx, dec.Rest(), func(addr uint64) error {
		// A request that cannot go is no failure in itself: the source
		// sends every page anyway; a source that is gone ends the stream.
		source.send(&peerpb.ExecOut{Msg: &peerpb.ExecOut_PageWanted{PageWanted: addr}})
		return nil
	})
	if err != nil {
		if ctx.Err() == nil {
			e.log.Error("post-copy failed: killing the process, whose memory is incomplete", "id", id, "err", err)
			syscall.Kill(pid, syscall.SIGKILL)
		}
		return
	}
	source.send(&peerpb.ExecOut{Msg: &peerpb.ExecOut_LazyDone{LazyDone: &peerpb.LazyDone{Us: time.Since(began).Microseconds()}}})
	e.log.Info("post-copy done", "id", id, "in", time.Since(began), "asked", lazy.Asked, "changes", lazy.Changes)
}

// steps times the steps of a migration, for its log line: each mark says
// how long the step just ended took.
type steps struct {
	last time.Time
	b    strings.Builder
}

func newSteps(start time.Time) *steps { return &steps{last: start} }

func (s *steps) mark(name string) {
	now := time.Now()
	if s.b.Len() > 0 {
		s.b.WriteByte(' ')
	}
	fmt.Fprintf(&s.b, "%s=%s", name, now.Sub(s.last).Round(10*time.Microsecond))
	s.last = now
}

func (s *steps) String() string { return s.b.String() }
