package ckpt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
)

func sampleImage() *Image {
	data := make([]byte, 3*maxRecord+12345) // split across records
	for i := range data {
		data[i] = byte(i * 31)
	}
	return &Image{
		Version: ImageVersion, Pid: 42, Exe: "/bin/x", Cwd: "/tmp", Umask: 0o22, CPUFeatures: []string{"avx2", "sse2"},
		MM:      MM{StartCode: 0x400000, Auxv: []uint64{6, 4096, 0, 0}},
		VMAs:    []VMA{{Start: 0x1000, End: 0x3000, Prot: 3, Kind: VMAAnon}},
		Pages:   []PageRun{{Addr: 0x10000, Data: data}, {Addr: 0x7f0000000000, Data: []byte("tail page")}},
		Threads: []Thread{{Tid: 42, XState: []byte{1, 2, 3}, Regs: Regs{Rip: 0x401000}}},
		Files: []File{{Fd: 3, Kind: FileRegular, Path: "/tmp/f", Pos: 7},
			// A deleted file's content travels in the header, which may
			// then be larger than any other record.
			{Fd: 4, Kind: FileDeleted, Path: "/tmp/g", Mode: 0o600, Size: 2 * maxRecord, Extents: []Extent{{Off: 5, Data: data[:maxRecord+1]}}},
			{Fd: 5, Kind: FileDup, Dup: 5}},
	}
}

func TestFormatRoundTrip(t *testing.T) { roundTrip(t, sampleImage()) }

// A stream that arrives in pieces, as from TLS (a record, up to 16 KiB, a
// read) or worse: the decoder takes part of a payload from its buffer and
// the rest straight from the stream, and must lose and repeat nothing.
func TestFormatShortReads(t *testing.T) {
	img := sampleImage()
	var buf bytes.Buffer
	if err := Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	for name, wrap := range map[string]func(io.Reader) io.Reader{
		"16 KiB reads": func(r io.Reader) io.Reader { return &pieceReader{r: r, max: 16 << 10} },
		"odd reads":    func(r io.Reader) io.Reader { return &pieceReader{r: r, max: 16<<10 + 7} },
		"half reads":   iotest.HalfReader,
		"byte reads":   iotest.OneByteReader,
	} {
		t.Run(name, func(t *testing.T) {
			got, err := Decode(wrap(bytes.NewReader(buf.Bytes())))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, img) {
				t.Fatal("the decoded image differs from the encoded one")
			}
		})
	}
}

// pieceReader returns at most max bytes a read.
type pieceReader struct {
	r   io.Reader
	max int
}

func (p *pieceReader) Read(b []byte) (int, error) { return p.r.Read(b[:min(len(b), p.max)]) }

// roundTrip encodes img, decodes it, and wants it back as it was.
func roundTrip(t *testing.T, img *Image) {
	t.Helper()
	var buf bytes.Buffer
	if err := Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	got, err := Decode(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, img) {
		t.Fatal("the decoded image differs from the encoded one")
	}
}

func TestFormatRejectsDamage(t *testing.T) {
	var buf bytes.Buffer
	if err := Encode(&buf, sampleImage()); err != nil {
		t.Fatal(err)
	}
	good := buf.Bytes()
	damaged := func(f func([]byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	cases := map[string][]byte{
		"a flipped bit in the memory": damaged(func(b []byte) []byte { b[len(b)/2] ^= 1; return b }),
		"a flipped bit in the header": damaged(func(b []byte) []byte { b[40] ^= 0x10; return b }),
		"cut short":                   good[:len(good)-100],
		"cut after the header":        good[:200],
		"empty":                       nil,
		"not an image":                []byte("#!/bin/sh\necho hello\n"),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := Decode(bytes.NewReader(b)); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Decode = %v, want ErrCorrupt", err)
			}
		})
	}
	// A whole page record dropped: each record is intact, the whole is not.
	var buf2 bytes.Buffer
	e, _ := NewEncoder(&buf2, sampleImage())
	e.Pages(PageRun{Addr: 0x1000, Data: make([]byte, 4096)})
	e.pages++ // claims one more page record than it wrote
	e.Close()
	if _, err := Decode(&buf2); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("an image missing a record: %v", err)
	}
}

// Two intact records swapped: every record checks out, the order does not.
func TestFormatRejectsReorder(t *testing.T) {
	var buf bytes.Buffer
	if err := Encode(&buf, sampleImage()); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	// Walk the records: 12 bytes of magic and version, then kind, length,
	// payload, checksum.
	var offs []int
	for off := 12; off < len(b); {
		offs = append(offs, off)
		off += 9 + int(binary.LittleEndian.Uint64(b[off+1:])) + 4
	}
	first, second := offs[1], offs[2] // the first two page records, equally long
	size := second - first
	if offs[3]-second != size {
		t.Fatalf("the sample's first page records differ in size")
	}
	swapped := append([]byte(nil), b...)
	copy(swapped[first:], b[second:second+size])
	copy(swapped[second:], b[first:first+size])
	if _, err := Decode(bytes.NewReader(swapped)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Decode of reordered records = %v, want ErrCorrupt", err)
	}
}

// TestPageSumAsWritten: a run summed where it is read (ReadMemory's way)
// is written exactly as one the encoder sums itself, and a wrong sum is
// caught by the reader.
func TestPageSumAsWritten(t *testing.T) {
	data := bytes.Repeat([]byte("mosaic pages"), 50000)
	encode := func(run PageRun) []byte {
		var buf bytes.Buffer
		e, err := NewEncoder(&buf, &Image{Version: ImageVersion, Pid: 1})
		if err != nil {
			t.Fatal(err)
		}
		if err := e.Pages(run); err != nil {
			t.Fatal(err)
		}
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	sum := crc32.Update(pageSumStart(0x5000, len(data)), castagnoli, data)
	plain := encode(PageRun{Addr: 0x5000, Data: data})
	if summed := encode(PageRun{Addr: 0x5000, Data: data, sum: sum, summed: true}); !bytes.Equal(summed, plain) {
		t.Fatal("a run summed ahead is written differently from one summed by the encoder")
	}
	img, err := Decode(bytes.NewReader(plain))
	if err != nil || len(img.Pages) != 1 || !bytes.Equal(img.Pages[0].Data, data) {
		t.Fatalf("Decode = %v", err)
	}
	bad := encode(PageRun{Addr: 0x5000, Data: data, sum: sum ^ 1, summed: true})
	if _, err := Decode(bytes.NewReader(bad)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Decode of a run with a wrong sum = %v, want ErrCorrupt", err)
	}
}

// An image of version 2 (before the descriptors of new kinds) is still
// read; one newer than this mosaic is refused with the versions it reads.
func TestFormatVersions(t *testing.T) {
	for _, c := range []struct {
		version int
		ok      bool
	}{{2, true}, {ImageVersion, true}, {treeVersion, true}, {treeVersion + 1, false}, {1, false}} {
		var buf bytes.Buffer
		if err := Encode(&buf, &Image{Version: c.version, Pid: 1, Threads: []Thread{{Tid: 1}}}); err != nil {
			t.Fatal(err)
		}
		img, err := Decode(bytes.NewReader(buf.Bytes()))
		switch {
		case c.ok && (err != nil || img.Version != c.version):
			t.Errorf("version %d: %v", c.version, err)
		case !c.ok && (err == nil || !strings.Contains(err.Error(), "reads versions 2 to")):
			t.Errorf("version %d: %v, want refused", c.version, err)
		}
	}
}

// A process with descendants: each one's memory comes back to it, and a
// stream that gives memory to a process the image does not have, or goes
// back to an earlier one, is refused.
func TestFormatTree(t *testing.T) {
	img := sampleImage()
	img.Version = treeVersion
	for i := range 2 {
		c := sampleImage()
		c.Pid, c.Parent = 43+i, 42+i
		c.Pages = []PageRun{{Addr: 0x20000, Data: bytes.Repeat([]byte{byte(i + 1)}, 3*pageSize)}}
		img.Children = append(img.Children, c)
	}
	roundTrip(t, img)

	stream := func(procs ...int) []byte {
		var b bytes.Buffer
		e, err := NewEncoder(&b, img)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range procs {
			if err := e.Pages(PageRun{Addr: 0x20000, Data: make([]byte, pageSize), Proc: p}); err != nil {
				t.Fatal(err)
			}
		}
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	if _, err := Decode(bytes.NewReader(stream(0, 2, 3))); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("memory of a third child of two: %v, want it refused as damaged", err)
	}
	var b bytes.Buffer
	e, _ := NewEncoder(&b, img)
	e.Pages(PageRun{Addr: 0x20000, Data: make([]byte, pageSize), Proc: 2})
	if err := e.Pages(PageRun{Addr: 0x20000, Data: make([]byte, pageSize), Proc: 1}); err == nil {
		t.Fatal("the encoder wrote a child's memory after a later one's")
	}
	// An image of version 3 has no children.
	single := *img
	single.Version = ImageVersion
	b.Reset()
	if err := Encode(&b, &single); err != nil {
		t.Fatal(err)
	}
	if _, err := Decode(bytes.NewReader(b.Bytes())); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("children in a version 3 image: %v, want it refused", err)
	}
}

// BenchmarkDecodePieces decodes 64 MiB of memory arriving 16 KiB a read,
// as from a TLS connection: what the decoder costs the target of a move
// beyond the stream itself. `go test -run X -bench DecodePieces ./internal/ckpt`
func BenchmarkDecodePieces(b *testing.B) {
	const size = 64 << 20
	var buf bytes.Buffer
	e, err := NewEncoder(&buf, &Image{Version: ImageVersion, Exe: "/bin/x"})
	if err != nil {
		b.Fatal(err)
	}
	run := make([]byte, runBytes)
	for addr := uint64(0); addr < size; addr += runBytes {
		if err := e.Pages(PageRun{Addr: 0x10000000 + addr, Data: run}); err != nil {
			b.Fatal(err)
		}
	}
	if err := e.Close(); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(size)
	into := make([]byte, RunBuffer)
	for b.Loop() {
		d, err := NewDecoder(&pieceReader{r: bytes.NewReader(buf.Bytes()), max: 16 << 10})
		if err != nil {
			b.Fatal(err)
		}
		for {
			if _, err := d.NextInto(&into); err == io.EOF {
				break
			} else if err != nil {
				b.Fatal(err)
			}
		}
	}
}
