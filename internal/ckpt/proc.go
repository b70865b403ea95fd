package ckpt

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// This file reads what /proc says of a process.

// vma is one line of /proc/PID/maps.
type vma struct {
	Start, End uint64
	Read       bool
	Write      bool
	Exec       bool
	Shared     bool
	Offset     uint64
	Dev        string
	Inode      uint64
	Path       string // "" for anonymous; [heap], [stack], [vdso]... for special ones
}

func (v vma) size() uint64 { return v.End - v.Start }

// fileID is the file the mapping is of (for one of no file, the kernel's
// object behind shared anonymous memory), or false for none.
func (v vma) fileID() (fileID, bool) {
	var major, minor uint32
	if v.Inode == 0 {
		return fileID{}, false
	}
	if _, err := fmt.Sscanf(v.Dev, "%x:%x", &major, &minor); err != nil {
		return fileID{}, false
	}
	return fileID{unix.Mkdev(major, minor), v.Inode}, true
}

func (v vma) prot() int {
	p := 0
	if v.Read {
		p |= 1
	}
	if v.Write {
		p |= 2
	}
	if v.Exec {
		p |= 4
	}
	return p
}

// special reports whether the kernel makes this mapping itself.
func (v vma) special() bool {
	switch v.Path {
	case "[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]":
		return true
	}
	return false
}

func readMaps(pid int) ([]vma, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []vma
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		v, err := parseMapsLine(sc.Text())
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, sc.Err()
}

func parseMapsLine(line string) (vma, error) {
	// 7f1c2a000000-7f1c2a021000 rw-p 00000000 00:00 0      [heap]
	fields := strings.Fields(line)
	if len(fields) < 5 {
		return vma{}, fmt.Errorf("bad maps line %q", line)
	}
	var v vma
	lo, hi, ok := strings.Cut(fields[0], "-")
	if !ok {
		return vma{}, fmt.Errorf("bad range in maps line %q", line)
	}
	var err error
	if v.Start, err = strconv.ParseUint(lo, 16, 64); err != nil {
		return vma{}, err
	}
	if v.End, err = strconv.ParseUint(hi, 16, 64); err != nil {
		return vma{}, err
	}
	perms := fields[1]
	v.Read, v.Write, v.Exec, v.Shared = perms[0] == 'r', perms[1] == 'w', perms[2] == 'x', perms[3] == 's'
	if v.Offset, err = strconv.ParseUint(fields[2], 16, 64); err != nil {
		return vma{}, err
	}
	v.Dev = fields[3]
	if v.Inode, err = strconv.ParseUint(fields[4], 10, 64); err != nil {
		return vma{}, err
	}
	if len(fields) > 5 {
		// The path is the rest of the line (it may contain spaces).
		i := strings.Index(line, fields[5])
		v.Path = line[i:]
	}
	return v, nil
}

// statFields returns the fields of /proc/PID/stat after the command name
// (field 3, the state, is index 0).
func statFields(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	return strings.Fields(string(b[i+2:])), nil
}

// mmInfo is the layout the kernel keeps for an address space, as
// prctl(PR_SET_MM_MAP) takes it.
type mmInfo struct {
	StartCode, EndCode, StartData, EndData uint64
	StartBrk, Brk, StartStack              uint64
	ArgStart, ArgEnd, EnvStart, EnvEnd     uint64
	Auxv                                   []uint64
}

func readMM(pid int) (mmInfo, error) {
	f, err := statFields(pid)
	if err != nil {
		return mmInfo{}, err
	}
	// Field numbers of proc(5), less 3 (the index of the state).
	get := func(field int) uint64 {
		v, _ := strconv.ParseUint(f[field-3], 10, 64)
		return v
	}
	if len(f) < 51-3 {
		return mmInfo{}, fmt.Errorf("short /proc/%d/stat", pid)
	}
	mm := mmInfo{
		StartCode: get(26), EndCode: get(27), StartStack: get(28),
		StartData: get(45), EndData: get(46), StartBrk: get(47),
		ArgStart: get(48), ArgEnd: get(49), EnvStart: get(50), EnvEnd: get(51),
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/auxv", pid))
	if err != nil {
		return mmInfo{}, err
	}
	for i := 0; i+8 <= len(b); i += 8 {
		mm.Auxv = append(mm.Auxv, binary.LittleEndian.Uint64(b[i:]))
	}
	return mm, nil
}

// procStatus is /proc/PID/status, read once for all the fields a freeze
// wants from it (each read costs tens of microseconds here, and the
// process stands still meanwhile).
type procStatus struct {
	pid  int
	text string
}

func readStatus(pid int) (procStatus, error) {
	b, err := procRead(fmt.Sprintf("/proc/%d/status", pid), make([]byte, 2048))
	if err != nil {
		return procStatus{}, err
	}
	return procStatus{pid: pid, text: string(b)}, nil
}

// field is the value of the field called name.
func (s procStatus) field(name string) (string, error) {
	for line := range strings.Lines(s.text) {
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("no %s in /proc/%d/status", name, s.pid)
}

// seenID is the id the thread sees as its own: the last of NSpid.
func (s procStatus) seenID() (int, error) { return s.innermost("NSpid") }

// nsGroup is the process's group and session, as the processes of its
// PID namespace see them (the last of NSpgid and NSsid): 0 for one whose
// leader is outside it.
func (s procStatus) nsGroup() (pgid, sid int, err error) {
	if pgid, err = s.innermost("NSpgid"); err != nil {
		return 0, 0, err
	}
	sid, err = s.innermost("NSsid")
	return pgid, sid, err
}

// innermost is the last id of an NS* field: the one of the innermost PID
// namespace.
func (s procStatus) innermost(name string) (int, error) {
	v, err := s.field(name)
	if err != nil {
		return 0, err
	}
	f := strings.Fields(v)
	if len(f) == 0 {
		return 0, fmt.Errorf("empty %s for thread %d", name, s.pid)
	}
	return strconv.Atoi(f[len(f)-1])
}

// threads lists a process's thread ids, the main thread first.
func threads(pid int) ([]int, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return nil, err
	}
	var out []int
	for _, e := range ents {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, tid)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] == pid || (out[j] != pid && out[i] < out[j]) })
	return out, nil
}

// fdEntry is an open descriptor of a process.
type fdEntry struct {
	Fd    int
	Link  string // readlink of /proc/PID/fd/N
	Pos   int64
	Flags int
	Locks []string // fdinfo's "lock:" lines: locks taken through it
	Info  string   // all of fdinfo, for the kinds that say more there
}

// procRead reads a small /proc file whole into buf (grown as needed)
// with plain system calls: os.ReadFile's file takes four more here (fstat,
// fcntl, an attempt at the poller), which `Movable`, asked of every
// process every second, paid for each descriptor's fdinfo.
func procRead(path string, buf []byte) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	n := 0
	for {
		if n == len(buf) {
			buf = append(buf, make([]byte, len(buf)+4096)...)
		}
		m, err := unix.Read(fd, buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "read", Path: path, Err: err}
		}
		if m == 0 {
			return buf[:n], nil
		}
		n += m
	}
}

func readFDs(pid int) ([]fdEntry, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []fdEntry
	buf := make([]byte, 1024)
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		link, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		info, err := procRead(fmt.Sprintf("/proc/%d/fdinfo/%d", pid, fd), buf)
		if err != nil {
			continue
		}
		buf = info[:cap(info)]
		fe := fdEntry{Fd: fd, Link: link, Info: string(info)}
		for line := range strings.Lines(string(info)) {
			k, v, _ := strings.Cut(line, ":")
			v = strings.TrimSpace(v)
			switch k {
			case "pos":
				fe.Pos, _ = strconv.ParseInt(v, 10, 64)
			case "flags":
				f, _ := strconv.ParseInt(v, 8, 64)
				fe.Flags = int(f)
			case "lock":
				fe.Locks = append(fe.Locks, v)
			}
		}
		out = append(out, fe)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Fd < out[j].Fd })
	return out, nil
}

// memFile opens a process's memory for reading and writing; the kernel
// allows writes to read-only pages through it (FOLL_FORCE), as ptrace's.
func memFile(pid int) (*os.File, error) {
	f, err := os.OpenFile(fmt.Sprintf("/proc/%d/mem", pid), os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open the memory of %d: %w", pid, err)
	}
	return f, nil
}

// procMem reads and writes another process's memory in bulk.
// process_vm_readv and process_vm_writev copy once, pinning pages in
// batches; /proc/PID/mem goes page by page through a bounce buffer and
// moves half as fast here, but it alone reaches pages the process may not
// access itself (read-only or PROT_NONE mappings): what the first cannot
// do, the second does.
type procMem struct {
	pid int
	f   *os.File
}

func openProcMem(pid int) (*procMem, error) {
	f, err := memFile(pid)
	if err != nil {
		return nil, err
	}
	return &procMem{pid: pid, f: f}, nil
}

func (m *procMem) Close() error { return m.f.Close() }

// ReadAt fills b from the process's memory at addr.
func (m *procMem) ReadAt(b []byte, addr int64) (int, error) {
	return m.move(b, addr, unix.ProcessVMReadv, m.f.ReadAt)
}

// WriteAt copies b into the process's memory at addr.
func (m *procMem) WriteAt(b []byte, addr int64) (int, error) {
	return m.move(b, addr, unix.ProcessVMWritev, m.f.WriteAt)
}

// move moves what process_vm_readv or _writev (call) can of b, and the
// rest, from the first page they cannot reach, through /proc/PID/mem
// (rest).
func (m *procMem) move(b []byte, addr int64, call func(int, []unix.Iovec, []unix.RemoteIovec, uint) (int, error), rest func([]byte, int64) (int, error)) (int, error) {
	done := 0
	for done < len(b) {
		local := []unix.Iovec{{Base: &b[done]}}
		local[0].SetLen(len(b) - done)
		remote := []unix.RemoteIovec{{Base: uintptr(addr) + uintptr(done), Len: len(b) - done}}
		n, err := call(m.pid, local, remote, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n <= 0 {
			break
		}
		done += n
	}
	if done == len(b) {
		return done, nil
	}
	n, err := rest(b[done:], addr+int64(done))
	return done + n, err
}

// seenID is the id of thread tid as it sees itself: its number in the
// innermost PID namespace it is in (the last of NSpid).
func seenID(tid int) (int, error) {
	st, err := readStatus(tid)
	if err != nil {
		return 0, err
	}
	return st.seenID()
}
