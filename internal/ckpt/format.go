package ckpt

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/gob"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// The image format, as files and streams carry it:
//
//	magic "MOSAICK\x00", version (uint32)
//	records: kind (1 byte), length (uint64), payload, CRC-32C of kind,
//	         length and payload (uint32)
//	  header: the Image without its pages, gob-encoded
//	  pages:  address (uint64) and the bytes of a run of pages
//	  process (version 4): whose the page records after it are, 1 + the
//	          index in the header's Children (uint32), increasing; before
//	          the first, the process's own
//	  end:    number of page records and of page bytes (uint64 each), and
//	          the CRC-32C of the magic, the version and every earlier
//	          record's checksum, in order (uint32)
//
// Integers are little-endian. Each record is checked as it is read and the
// whole stream at its end (the chained checksum catches a record dropped,
// repeated or reordered, which each record's own checksum cannot), so a
// reader can consume an image while it arrives and still reject any
// damage before the process runs. Checksums guard against damage, not
// against an attacker: images travel between nodes over mutual TLS, and a
// user can only restore an image as themselves.

var magic = [8]byte{'M', 'O', 'S', 'A', 'I', 'C', 'K', 0}

const (
	recHeader byte = 1
	recPages  byte = 2
	recEnd    byte = 3
	recProc   byte = 4
)

// maxRecord bounds a record: a page run is written in pieces of at most
// this much.
const maxRecord = 8 << 20

// maxHeader bounds the header record, which carries the content of
// deleted and memory files (up to ghostLimit) besides the rest.
const maxHeader = maxRecord + ghostLimit

const endSize = 8 + 8 + 4

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrCorrupt is wrapped by every error about a damaged image.
var ErrCorrupt = errors.New("the image is damaged")

// streamBuffer is the buffer of an Encoder or Decoder: small records
// gather in it, and a payload as large goes straight between the caller's
// memory and the stream, with no copy through it. (A larger buffer costs
// a copy of every page, and its first use, a page fault on each of its
// pages: most of the time of a small process's move.)
const streamBuffer = 64 << 10

// sumPiece is how much of a large payload a Decoder reads before it sums
// it: small enough to be still in the cache, and above streamBuffer, so
// that read puts it straight into place rather than through its buffer.
const sumPiece = 2 * streamBuffer

// Encoder writes an image as a stream.
type Encoder struct {
	dst   io.Writer
	w     *bufio.Writer
	chain uint32 // the running checksum of the stream's checksums
	pages uint64
	bytes uint64
	proc  int // whose pages the stream carries now (PageRun.Proc)
}

// NewEncoder starts an image stream on w with img's header (its Pages are
// not written: send them with Pages, then call Close).
func NewEncoder(w io.Writer, img *Image) (*Encoder, error) {
	e := &Encoder{dst: w, w: bufio.NewWriterSize(w, streamBuffer)}
	var head [12]byte
	copy(head[:], magic[:])
	version := uint32(img.Version)
	if version == 0 {
		version = ImageVersion
	}
	binary.LittleEndian.PutUint32(head[8:], version)
	e.chain = crc32.Update(0, castagnoli, head[:])
	if _, err := e.w.Write(head[:]); err != nil {
		return nil, err
	}
	hdr := withoutPages(img)
	var buf bytes.Buffer
	if err := gob.NewEncoder(&buf).Encode(&hdr); err != nil {
		return nil, fmt.Errorf("encode the image header: %w", err)
	}
	if err := e.record(recHeader, buf.Bytes()); err != nil {
		return nil, err
	}
	// The header goes out at once: the receiver starts the new process
	// with it while the memory follows.
	if err := e.w.Flush(); err != nil {
		return nil, err
	}
	return e, nil
}

func (e *Encoder) record(kind byte, parts ...[]byte) error {
	var n uint64
	for _, p := range parts {
		n += uint64(len(p))
	}
	hdr := recordHead(kind, n)
	crc := crc32.Update(0, castagnoli, hdr[:])
	for _, p := range parts {
		crc = crc32.Update(crc, castagnoli, p)
	}
	return e.writeRecord(hdr, crc, parts...)
}

// recordHead is a record's kind and payload length, as written.
func recordHead(kind byte, n uint64) [9]byte {
	var hdr [9]byte
	hdr[0] = kind
	binary.LittleEndian.PutUint64(hdr[1:], n)
	return hdr
}

// pageSumStart is the checksum of a page record up to its data: a reader
// that has the data in its cache goes on from it with crc32.Update over
// the data, and passes the sum in the PageRun.
func pageSumStart(addr uint64, n int) uint32 {
	hdr := recordHead(recPages, uint64(runHead+n))
	var a [runHead]byte
	binary.LittleEndian.PutUint64(a[:], addr)
	return crc32.Update(crc32.Update(0, castagnoli, hdr[:]), castagnoli, a[:])
}

// writeRecord writes a record: its head, its payload's parts, and crc,
// its checksum.
func (e *Encoder) writeRecord(hdr [9]byte, crc uint32, parts ...[]byte) error {
	if _, err := e.w.Write(hdr[:]); err != nil {
		return err
	}
	for _, p := range parts {
		if len(p) >= streamBuffer {
			// Straight to the stream, after what is buffered.
			if err := e.w.Flush(); err != nil {
				return err
			}
			if _, err := e.dst.Write(p); err != nil {
				return err
			}
			continue
		}
		if _, err := e.w.Write(p); err != nil {
			return err
		}
	}
	crcb := binary.LittleEndian.AppendUint32(nil, crc)
	e.chain = crc32.Update(e.chain, castagnoli, crcb)
	_, err := e.w.Write(crcb)
	return err
}

// runHead is the start of a page record's payload: the run's address;
// its data follows.
const runHead = 8

// withoutPages is img, its children's too, without their pages.
func withoutPages(img *Image) Image {
	hdr := *img
	hdr.Pages = nil
	hdr.Children = make([]*Image, len(img.Children))
	for i, c := range img.Children {
		h := withoutPages(c)
		hdr.Children[i] = &h
	}
	return hdr
}

// Pages writes a run of memory. The runs of a process with children come
// its own first, then each child's in the order of Children.
func (e *Encoder) Pages(p PageRun) error {
	if p.Proc != e.proc {
		if p.Proc < e.proc {
			return fmt.Errorf("memory of process %d of the image after that of %d", p.Proc, e.proc)
		}
		if err := e.record(recProc, binary.LittleEndian.AppendUint32(nil, uint32(p.Proc))); err != nil {
			return err
		}
		e.proc = p.Proc
	}
	for off := 0; off < len(p.Data); off += maxRecord - runHead {
		end := min(off+maxRecord-runHead, len(p.Data))
		addr := binary.LittleEndian.AppendUint64(nil, p.Addr+uint64(off))
		data := p.Data[off:end]
		var err error
		if p.summed && end-off == len(p.Data) {
			// One record, summed where it was read, in the reader's cache.
			err = e.writeRecord(recordHead(recPages, uint64(runHead+len(data))), p.sum, addr, data)
		} else {
			err = e.record(recPages, addr, data)
		}
		if err != nil {
			return err
		}
		e.pages++
		e.bytes += uint64(end - off)
	}
	return nil
}

// Close writes the end record and flushes.
func (e *Encoder) Close() error {
	payload := binary.LittleEndian.AppendUint64(nil, e.pages)
	payload = binary.LittleEndian.AppendUint64(payload, e.bytes)
	payload = binary.LittleEndian.AppendUint32(payload, e.chain)
	if err := e.record(recEnd, payload); err != nil {
		return err
	}
	return e.w.Flush()
}

// Encode writes a whole image.
func Encode(w io.Writer, img *Image) error {
	e, err := NewEncoder(w, img)
	if err != nil {
		return err
	}
	for i, c := range append([]*Image{img}, img.Children...) {
		for _, p := range c.Pages {
			p.Proc = i
			if err := e.Pages(p); err != nil {
				return err
			}
		}
	}
	return e.Close()
}

// Decoder reads an image stream: its header first, then its memory one
// run at a time, so that a restore can proceed while the image arrives.
type Decoder struct {
	r     *bufio.Reader
	src   io.Reader // what r reads from
	img   *Image
	chain uint32
	pages uint64
	bytes uint64
	buf   []byte
	done  bool
	proc  int // whose pages come now (PageRun.Proc)
}

// NewDecoder reads the stream's header.
func NewDecoder(r io.Reader) (*Decoder, error) {
	d := &Decoder{r: bufio.NewReaderSize(r, streamBuffer), src: r}
	var head [12]byte
	if err := d.read(head[:]); err != nil {
		return nil, err
	}
	if !bytes.Equal(head[:8], magic[:]) {
		return nil, fmt.Errorf("%w: not a mosaic process image", ErrCorrupt)
	}
	v := binary.LittleEndian.Uint32(head[8:])
	if err := checkVersion(v); err != nil {
		return nil, err
	}
	d.chain = crc32.Update(0, castagnoli, head[:])
	kind, payload, err := d.record()
	if err != nil {
		return nil, err
	}
	if kind != recHeader {
		return nil, fmt.Errorf("%w: it does not start with a header", ErrCorrupt)
	}
	d.img = new(Image)
	if err := gob.NewDecoder(bytes.NewReader(payload)).Decode(d.img); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrCorrupt, err)
	}
	if uint32(d.img.Version) != v {
		return nil, fmt.Errorf("%w: the header says version %d", ErrCorrupt, d.img.Version)
	}
	if len(d.img.Children) > 0 && v < treeVersion {
		return nil, fmt.Errorf("%w: a process with children in an image of version %d", ErrCorrupt, v)
	}
	return d, nil
}

// Image is the stream's header: the image without its pages.
func (d *Decoder) Image() *Image { return d.img }

// read fills b from the stream. A piece as large as the buffer takes
// what the buffer holds and reads the rest straight from the stream:
// through bufio, whose own reads stop at what one read returns (a TLS
// record, 16 KiB), the last third of each piece went through its buffer,
// a second copy (2.5% of the CPU of a 1 GiB move, 2026-12-07 profile).
func (d *Decoder) read(b []byte) error {
	src := io.Reader(d.r)
	if len(b) >= streamBuffer {
		if k := d.r.Buffered(); k > 0 {
			n, _ := d.r.Read(b[:min(len(b), k)]) // from the buffer, no read
			b = b[n:]
		}
		src = d.src
	}
	if _, err := io.ReadFull(src, b); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%w: it ends early", ErrCorrupt)
		}
		return err
	}
	return nil
}

// record reads and checks the next record; its payload is valid until the
// next call.
func (d *Decoder) record() (byte, []byte, error) { return d.recordInto(&d.buf) }

// recordInto reads and checks the next record, its payload into *dst
// (grown as needed).
func (d *Decoder) recordInto(dst *[]byte) (byte, []byte, error) {
	var hdr [9]byte
	if err := d.read(hdr[:]); err != nil {
		return 0, nil, err
	}
	kind, n := hdr[0], binary.LittleEndian.Uint64(hdr[1:])
	if n > maxRecord && (kind != recHeader || n > maxHeader) {
		return 0, nil, fmt.Errorf("%w: a record of %d bytes", ErrCorrupt, n)
	}
	if uint64(cap(*dst)) < n {
		*dst = make([]byte, n)
	}
	payload := (*dst)[:n]
	// Each piece is summed as soon as it is in, while it is in the cache.
	crc := crc32.Update(0, castagnoli, hdr[:])
	for off := 0; off < len(payload); {
		end := min(off+sumPiece, len(payload))
		if err := d.read(payload[off:end]); err != nil {
			return 0, nil, err
		}
		crc = crc32.Update(crc, castagnoli, payload[off:end])
		off = end
	}
	var crcb [4]byte
	if err := d.read(crcb[:]); err != nil {
		return 0, nil, err
	}
	if crc != binary.LittleEndian.Uint32(crcb[:]) {
		return 0, nil, fmt.Errorf("%w: a record fails its checksum", ErrCorrupt)
	}
	if kind != recEnd {
		d.chain = crc32.Update(d.chain, castagnoli, crcb[:])
	}
	return kind, payload, nil
}

// Next returns the next run of memory, valid until the next call, or
// io.EOF once the whole stream has arrived and checked out.
func (d *Decoder) Next() (PageRun, error) { return d.NextInto(&d.buf) }

// NextInto is Next, with the run's data read into *buf (grown as needed):
// then it is valid as long as *buf is left alone.
func (d *Decoder) NextInto(buf *[]byte) (PageRun, error) {
	if d.done {
		return PageRun{}, io.EOF
	}
	kind, payload, err := d.recordInto(buf)
	if err != nil {
		return PageRun{}, err
	}
	for kind == recProc {
		if len(payload) != 4 {
			return PageRun{}, fmt.Errorf("%w: a bad process record", ErrCorrupt)
		}
		p := int(binary.LittleEndian.Uint32(payload))
		if p <= d.proc || p > len(d.img.Children) {
			return PageRun{}, fmt.Errorf("%w: memory of process %d of %d after that of %d", ErrCorrupt, p, len(d.img.Children), d.proc)
		}
		d.proc = p
		if kind, payload, err = d.recordInto(buf); err != nil {
			return PageRun{}, err
		}
	}
	switch kind {
	case recPages:
		if len(payload) < runHead {
			return PageRun{}, fmt.Errorf("%w: a short page record", ErrCorrupt)
		}
		d.pages++
		d.bytes += uint64(len(payload) - runHead)
		return PageRun{Addr: binary.LittleEndian.Uint64(payload), Data: payload[runHead:], Proc: d.proc}, nil
	case recEnd:
		if len(payload) != endSize {
			return PageRun{}, fmt.Errorf("%w: a bad end record", ErrCorrupt)
		}
		if binary.LittleEndian.Uint64(payload) != d.pages || binary.LittleEndian.Uint64(payload[8:]) != d.bytes ||
			binary.LittleEndian.Uint32(payload[16:]) != d.chain {
			return PageRun{}, fmt.Errorf("%w: records are missing or out of order", ErrCorrupt)
		}
		d.done = true
		return PageRun{}, io.EOF
	case recHeader:
		return PageRun{}, fmt.Errorf("%w: two headers", ErrCorrupt)
	}
	return PageRun{}, fmt.Errorf("%w: unknown record kind %d", ErrCorrupt, kind)
}

// Decode reads a whole image, checking every record and the stream as a
// whole: it returns an image only if all of it arrived intact.
func Decode(r io.Reader) (*Image, error) {
	d, err := NewDecoder(r)
	if err != nil {
		return nil, err
	}
	img := d.Image()
	for {
		p, err := d.Next()
		if errors.Is(err, io.EOF) {
			return img, nil
		}
		if err != nil {
			return nil, err
		}
		of := img
		if p.Proc > 0 {
			of = img.Children[p.Proc-1]
		}
		of.addPages(p)
	}
}

// addPages appends a copy of p to the image's pages, joined with the last
// run when contiguous (records and reads split runs).
func (img *Image) addPages(p PageRun) {
	if k := len(img.Pages) - 1; k >= 0 && img.Pages[k].Addr+uint64(len(img.Pages[k].Data)) == p.Addr {
		img.Pages[k].Data = append(img.Pages[k].Data, p.Data...)
	} else {
		img.Pages = append(img.Pages, PageRun{Addr: p.Addr, Data: append([]byte(nil), p.Data...)})
	}
}

// Rest is what follows the image in its stream (the lazy pages of a
// post-copy image), once the image has been read to its end.
func (d *Decoder) Rest() io.Reader { return d.r }
