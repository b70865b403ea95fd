package ckpt

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/gob"
	"errors"
	"fmt"
	"hash"
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
//	  end:    number of page records and of page bytes (uint64 each), and
//	          the SHA-256 of everything before the end record
//
// Integers are little-endian. Each record is checked as it is read and the
// whole stream at its end, so a reader can consume an image while it
// arrives and still reject any corruption before the process runs.

var magic = [8]byte{'M', 'O', 'S', 'A', 'I', 'C', 'K', 0}

const (
	recHeader byte = 1
	recPages  byte = 2
	recEnd    byte = 3
)

// maxRecord bounds a record: a page run is written in pieces of at most
// this much.
const maxRecord = 8 << 20

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrCorrupt is wrapped by every error about a damaged image.
var ErrCorrupt = errors.New("the image is damaged")

// Encoder writes an image as a stream.
type Encoder struct {
	w     *bufio.Writer
	sum   hash.Hash
	pages uint64
	bytes uint64
}

// NewEncoder starts an image stream on w with img's header (its Pages are
// not written: send them with Pages, then call Close).
func NewEncoder(w io.Writer, img *Image) (*Encoder, error) {
	e := &Encoder{w: bufio.NewWriterSize(w, 1<<20), sum: sha256.New()}
	var head [12]byte
	copy(head[:], magic[:])
	binary.LittleEndian.PutUint32(head[8:], ImageVersion)
	if err := e.raw(head[:]); err != nil {
		return nil, err
	}
	hdr := *img
	hdr.Pages = nil
	var buf bytes.Buffer
	if err := gob.NewEncoder(&buf).Encode(&hdr); err != nil {
		return nil, fmt.Errorf("encode the image header: %w", err)
	}
	if err := e.record(recHeader, buf.Bytes()); err != nil {
		return nil, err
	}
	return e, nil
}

func (e *Encoder) raw(b []byte) error {
	e.sum.Write(b)
	_, err := e.w.Write(b)
	return err
}

func (e *Encoder) record(kind byte, parts ...[]byte) error {
	var n uint64
	for _, p := range parts {
		n += uint64(len(p))
	}
	var hdr [9]byte
	hdr[0] = kind
	binary.LittleEndian.PutUint64(hdr[1:], n)
	crc := crc32.Update(0, castagnoli, hdr[:])
	if err := e.raw(hdr[:]); err != nil {
		return err
	}
	for _, p := range parts {
		crc = crc32.Update(crc, castagnoli, p)
		if err := e.raw(p); err != nil {
			return err
		}
	}
	return e.raw(binary.LittleEndian.AppendUint32(nil, crc))
}

// Pages writes a run of memory.
func (e *Encoder) Pages(p PageRun) error {
	for off := 0; off < len(p.Data); off += maxRecord - 8 {
		end := min(off+maxRecord-8, len(p.Data))
		addr := binary.LittleEndian.AppendUint64(nil, p.Addr+uint64(off))
		if err := e.record(recPages, addr, p.Data[off:end]); err != nil {
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
	payload = append(payload, e.sum.Sum(nil)...)
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
	for _, p := range img.Pages {
		if err := e.Pages(p); err != nil {
			return err
		}
	}
	return e.Close()
}

// Decode reads a whole image, checking every record and the stream's hash:
// it returns an image only if all of it arrived intact.
func Decode(r io.Reader) (*Image, error) {
	br := bufio.NewReaderSize(r, 1<<20)
	sum := sha256.New()
	read := func(b []byte) error {
		if _, err := io.ReadFull(br, b); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("%w: it ends early", ErrCorrupt)
			}
			return err
		}
		sum.Write(b)
		return nil
	}
	var head [12]byte
	if err := read(head[:]); err != nil {
		return nil, err
	}
	if !bytes.Equal(head[:8], magic[:]) {
		return nil, fmt.Errorf("%w: not a mosaic process image", ErrCorrupt)
	}
	if v := binary.LittleEndian.Uint32(head[8:]); v != ImageVersion {
		return nil, fmt.Errorf("image format version %d; this mosaic reads version %d", v, ImageVersion)
	}
	var img *Image
	var pages, total uint64
	for {
		before := sum.Sum(nil) // the hash the end record must carry
		var hdr [9]byte
		if err := read(hdr[:]); err != nil {
			return nil, err
		}
		kind, n := hdr[0], binary.LittleEndian.Uint64(hdr[1:])
		if n > maxRecord+1024 {
			return nil, fmt.Errorf("%w: a record of %d bytes", ErrCorrupt, n)
		}
		payload := make([]byte, n)
		if err := read(payload); err != nil {
			return nil, err
		}
		var crcb [4]byte
		if err := read(crcb[:]); err != nil {
			return nil, err
		}
		crc := crc32.Update(crc32.Update(0, castagnoli, hdr[:]), castagnoli, payload)
		if crc != binary.LittleEndian.Uint32(crcb[:]) {
			return nil, fmt.Errorf("%w: a record fails its checksum", ErrCorrupt)
		}
		switch kind {
		case recHeader:
			if img != nil {
				return nil, fmt.Errorf("%w: two headers", ErrCorrupt)
			}
			img = new(Image)
			if err := gob.NewDecoder(bytes.NewReader(payload)).Decode(img); err != nil {
				return nil, fmt.Errorf("%w: header: %v", ErrCorrupt, err)
			}
		case recPages:
			if img == nil || len(payload) < 8 {
				return nil, fmt.Errorf("%w: pages before the header", ErrCorrupt)
			}
			addr := binary.LittleEndian.Uint64(payload)
			data := payload[8:]
			// Join with the previous run when contiguous (records split runs).
			if k := len(img.Pages) - 1; k >= 0 && img.Pages[k].Addr+uint64(len(img.Pages[k].Data)) == addr {
				img.Pages[k].Data = append(img.Pages[k].Data, data...)
			} else {
				img.Pages = append(img.Pages, PageRun{Addr: addr, Data: data})
			}
			pages++
			total += uint64(len(data))
		case recEnd:
			if img == nil || len(payload) != 16+sha256.Size {
				return nil, fmt.Errorf("%w: a bad end record", ErrCorrupt)
			}
			if binary.LittleEndian.Uint64(payload) != pages || binary.LittleEndian.Uint64(payload[8:]) != total {
				return nil, fmt.Errorf("%w: pages are missing", ErrCorrupt)
			}
			if !bytes.Equal(payload[16:], before) {
				return nil, fmt.Errorf("%w: the image's hash does not match", ErrCorrupt)
			}
			return img, nil
		default:
			return nil, fmt.Errorf("%w: unknown record kind %d", ErrCorrupt, kind)
		}
	}
}
