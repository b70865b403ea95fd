package ckpt

import (
	"bytes"
	"encoding/gob"
	"errors"
	"fmt"
	"slices"

	"golang.org/x/sys/unix"
)

// The layout ahead. Making a process's mappings at the target (moving the
// trampoline and the vDSO, opening and mapping the files, mapping the
// anonymous memory) is a millisecond or more of round trips into the
// stub, and it could start only once the image's header came, while the
// process stood still. A process's mappings seldom change from one
// millisecond to the next, so the source sends them ahead, read while
// the process still runs (Layout), and the target makes them in the stub
// before the source freezes (Stub.Premap). The image's header then
// decides: the same mappings (but for which are lazy) and the restore
// goes straight to the memory; others, and the premade ones are unmapped
// and the image's made as ever.

// maxLayout bounds a layout's encoding (a process has thousands of
// mappings at most; each takes tens of bytes).
const maxLayout = 4 << 20

// Layout returns the mappings of running process pid as a restore makes
// them, encoded for Stub.Premap; nil for a process that maps a file
// shared and writable: its stub would map that file before the freeze,
// and where source and target are one machine (mosaic up) the freeze
// would take the stub for another process sharing its memory
// (checkSharers).
func Layout(pid int) ([]byte, error) {
	maps, err := readMaps(pid)
	if err != nil {
		return nil, fmt.Errorf("read the mappings of %d: %w", pid, err)
	}
	vs, err := imageVMAs(maps)
	if err != nil {
		return nil, err
	}
	if slices.ContainsFunc(vs, func(v VMA) bool { return v.Kind == VMAFile && v.Shared && v.Prot&unix.PROT_WRITE != 0 }) {
		return nil, nil
	}
	var b bytes.Buffer
	if err := gob.NewEncoder(&b).Encode(vs); err != nil {
		return nil, fmt.Errorf("encode the mappings of %d: %w", pid, err)
	}
	return b.Bytes(), nil
}

// decodeLayout reads what Layout wrote, refusing mappings no process can
// have.
func decodeLayout(b []byte) ([]VMA, error) {
	if len(b) > maxLayout {
		return nil, fmt.Errorf("a layout of %d bytes", len(b))
	}
	var vs []VMA
	if err := gob.NewDecoder(bytes.NewReader(b)).Decode(&vs); err != nil {
		return nil, fmt.Errorf("decode a layout: %w", err)
	}
	for _, v := range vs {
		if v.Start%pageSize != 0 || v.End%pageSize != 0 || v.Start >= v.End {
			return nil, fmt.Errorf("a layout with a mapping at %#x-%#x", v.Start, v.End)
		}
	}
	return vs, nil
}

// Premap makes the mappings of layout (from Layout) in the stub, before
// its image comes. If it fails, the stub is as it was, ready for any
// image, unless it could not be put back (RestoreInto then fails).
func (s *Stub) Premap(layout []byte) error {
	if s.used || s.premapped != nil {
		return errors.New("the stub is used or premapped already")
	}
	vs, err := decodeLayout(layout)
	if err != nil {
		return err
	}
	if err := checkFiles(vs); err != nil {
		return err
	}
	if err := s.moveTrampoline(vs); err != nil {
		return err
	}
	moved := moveVDSO(s.r, s.maps, vs, s.tramp)
	if err := s.readKernelMaps(); err != nil {
		s.spoiled = err
		return err
	}
	if moved != nil {
		return moved // (a restore moves them on from where they are)
	}
	if err := mapVMAs(s.r, vs); err != nil {
		if uerr := s.unmapLayout(vs); uerr != nil {
			s.spoiled = fmt.Errorf("a layout made ahead could not be taken back: %v", uerr)
		}
		return err
	}
	s.premapped = vs
	return nil
}

// unmapLayout takes away the mappings vs made (the kernel's own stay
// where they are: a restore moves them from there).
func (s *Stub) unmapLayout(vs []VMA) error {
	var calls []sysCall
	for _, v := range vs {
		if v.Kind != VMAVDSO && v.Kind != VMAVsyscall {
			calls = append(calls, sc(unix.SYS_MUNMAP, v.Start, v.End-v.Start))
		}
	}
	errs, _, err := s.r.batch(calls)
	if err != nil {
		return err
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("unmap a layout made ahead: %w", err)
	}
	return s.readKernelMaps()
}

// readKernelMaps reads again where the kernel's own mappings of the stub
// are.
func (s *Stub) readKernelMaps() error {
	maps, err := readMaps(s.pid)
	if err != nil {
		return fmt.Errorf("read the mappings of the stub %d: %w", s.pid, err)
	}
	s.maps = s.maps[:0]
	for _, v := range maps {
		if v.special() {
			s.maps = append(s.maps, v)
		}
	}
	return nil
}

// sameLayout says whether an image's mappings are those premade: the
// same but for which are lazy (a lazy mapping is made as any other; its
// pages come later).
func sameLayout(premade, image []VMA) bool {
	if len(premade) != len(image) {
		return false
	}
	for i := range premade {
		a, b := premade[i], image[i]
		a.Lazy, b.Lazy = false, false
		a.Advice, b.Advice = 0, 0 // given after the memory is in
		if a != b {
			return false
		}
	}
	return true
}
