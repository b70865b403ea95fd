package executor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/mosaic-cluster/mosaic/internal/ckpt"
	"github.com/mosaic-cluster/mosaic/internal/peerpb"
)

// Checkpoints to disk (mosaic checkpoint): the node running the process
// sends its image, as for a migration, to the node whose user asked for
// it, which writes it into a file of the user's (ExpectImage); the process
// then goes on, or ends (--stop).

// checkpointOut sends the process's image to m.To and reports to the home.
func (e *Executor) checkpointOut(s ServerStream, g *guest, m *peerpb.Checkpoint) {
	runtime.LockOSThread() // the frozen process's tracer, to the end
	defer runtime.UnlockOSThread()
	out, id := g.out, g.start.Id
	report := func(c *peerpb.Checkpointed) {
		out.send(&peerpb.ExecOut{Msg: &peerpb.ExecOut_Checkpointed{Checkpointed: c}})
	}
	failed := func(format string, a ...any) {
		msg := fmt.Sprintf(format, a...)
		e.log.Info("checkpoint failed", "id", id, "err", msg)
		report(&peerpb.Checkpointed{Error: msg})
	}
	ctx, cancel := context.WithTimeout(s.Context(), migrationLimit)
	defer cancel()
	link, err := e.cfg.Dial(ctx, m.To)
	if err != nil {
		failed("cannot reach %s: %v", m.To, err)
		return
	}
	defer link.CloseSend()
	pid, ok := g.beginTracing()
	if !ok {
		failed("process %s is moving, or has exited", id)
		return
	}
	stopped := false
	defer func() { g.endTracing(stopped) }()
	backInQuota := e.outOfQuota(id, pid)
	img, frozen, err := ckpt.FreezeWith(pid, ckpt.FreezeOptions{Home: g.homeStreams()})
	if err != nil {
		backInQuota()
		failed("%s cannot be checkpointed: %s", id, pinnedReason(err))
		return
	}
	frozen.UseBuffers(e.buffers)
	img.CPUFeatures = e.cpuNeeds(g) // for the node that restores it
	n, err := sendImage(link, &peerpb.ImageOffer{Id: id, Token: m.Token}, false, func(w io.Writer) error {
		enc, err := ckpt.NewEncoder(w, img)
		if err != nil {
			return err
		}
		if err := frozen.ReadMemory(enc.Pages); err != nil {
			return err
		}
		return enc.Close()
	})
	if err == nil {
		err = imageReply(link, m.To)
	}
	if err != nil {
		backInQuota()
		frozen.Resume()
		failed("%v", err)
		return
	}
	if m.Stop {
		// Saved: the image is the process now. Its end here is no exit.
		stopped = true
		frozen.Kill()
		e.log.Info("checkpointed and stopped", "id", id, "bytes", n)
		report(&peerpb.Checkpointed{ImageBytes: n, Stopped: true})
		return
	}
	backInQuota()
	if err := frozen.Resume(); err != nil {
		e.log.Error("resume after a checkpoint", "id", id, "err", err)
	}
	report(&peerpb.Checkpointed{ImageBytes: n})
}

// sendImage opens an image connection with offer, writes the image that
// write produces as data frames and closes its side; it returns the bytes
// sent.
// more: something follows the image on the link (post-copy memory): the
// link stays open for it.
func sendImage(link Conn, offer *peerpb.ImageOffer, more bool, write func(io.Writer) error) (uint64, error) {
	if err := link.Send(&peerpb.ExecIn{Msg: &peerpb.ExecIn_Image{Image: offer}}); err != nil {
		return 0, fmt.Errorf("send the image: %w", &linkError{err})
	}
	w := &imageWriter{link: link}
	if err := write(w); err != nil {
		return w.n, fmt.Errorf("send the image: %w", err)
	}
	// All of it: an image that ends early ends here, for the receiver too.
	if more {
		return w.n, nil
	}
	if err := link.CloseSend(); err != nil {
		return w.n, fmt.Errorf("send the image: %w", &linkError{err})
	}
	return w.n, nil
}

// SendImage sends an image read from r on a new image connection (for a
// restore from a file: its home sends it to the node that restores it).
// The answer is for the caller to read.
func SendImage(link Conn, offer *peerpb.ImageOffer, r io.Reader) (uint64, error) {
	return sendImage(link, offer, false, func(w io.Writer) error {
		_, err := io.Copy(w, r)
		return err
	})
}

// imageReply reads the receiver's answer to an image sent for saving.
func imageReply(link Conn, to string) error {
	reply, err := link.Recv()
	switch {
	case err != nil:
		return fmt.Errorf("%s broke off the transfer: %w", to, err)
	case reply.GetFailure() != nil:
		return fmt.Errorf("%s could not save the image: %s", to, reply.GetFailure().GetMessage())
	case reply.GetCheckpointed() == nil:
		return fmt.Errorf("%s answered the image with %T", to, reply.Msg)
	}
	return nil
}

// Receipt waits for an image this node expects, to save.
type Receipt struct {
	e     *Executor
	token string
	w     io.Writer
	done  chan struct{}
	once  sync.Once
	n     uint64
	err   error
	off   atomic.Bool // called off: the rest of the image is refused
}

// ExpectImage makes this node accept an image that presents token, check
// it and write it to w. Wait for it with Wait; Cancel when no longer
// expected.
func (e *Executor) ExpectImage(token string, w io.Writer) *Receipt {
	r := &Receipt{e: e, token: token, w: w, done: make(chan struct{})}
	e.mu.Lock()
	e.receipts[token] = r
	e.mu.Unlock()
	return r
}

// Wait returns the size of the image once it is written and checked.
func (r *Receipt) Wait(ctx context.Context) (uint64, error) {
	select {
	case <-r.done:
		return r.n, r.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// Failed is the error the receipt ended with, if it has ended with one:
// when its receiver fails first (a full disk), the sender sees only its
// connection drop, and this is the reason.
func (r *Receipt) Failed() error {
	select {
	case <-r.done:
		return r.err
	default:
		return nil
	}
}

// errCalledOff is what a receipt called off answers the image's sender.
var errCalledOff = errors.New("the checkpoint was called off (its client went away, or was interrupted): the process goes on")

// CallOff refuses what is still to come of the image, so that the sender
// lets the process go on: a checkpoint whose client is gone must not stop
// a process whose image nobody will put in place. An image already all
// there stays saved.
func (r *Receipt) CallOff() { r.off.Store(true) }

// Cancel stops expecting the image.
func (r *Receipt) Cancel() {
	r.e.mu.Lock()
	delete(r.e.receipts, r.token)
	r.e.mu.Unlock()
}

func (r *Receipt) finish(n uint64, err error) {
	r.once.Do(func() {
		r.n, r.err = n, err
		close(r.done)
	})
}

// counter counts what passes, until the receipt is called off.
type counter struct {
	w   io.Writer
	n   uint64
	off *atomic.Bool
}

func (c *counter) Write(b []byte) (int, error) {
	if c.off.Load() {
		return 0, errCalledOff
	}
	n, err := c.w.Write(b)
	c.n += uint64(n)
	return n, err
}

// save writes an arriving image through its receipt, checking it as it
// goes: a damaged image fails the receipt (and the checkpoint).
func (r *Receipt) save(s ServerStream, out *sender) {
	c := &counter{w: r.w, off: &r.off}
	err := func() error {
		d, err := ckpt.NewDecoder(io.TeeReader(&imageReader{s: s}, c))
		if err != nil {
			return err
		}
		for {
			if _, err := d.Next(); errors.Is(err, io.EOF) {
				return nil
			} else if err != nil {
				return err
			}
		}
	}()
	if err != nil {
		err = fmt.Errorf("save the image: %w", err)
		out.send(&peerpb.ExecOut{Msg: &peerpb.ExecOut_Failure{Failure: &peerpb.Failure{Message: err.Error()}}})
	} else {
		out.send(&peerpb.ExecOut{Msg: &peerpb.ExecOut_Checkpointed{Checkpointed: &peerpb.Checkpointed{ImageBytes: c.n}}})
	}
	r.finish(c.n, err)
}
