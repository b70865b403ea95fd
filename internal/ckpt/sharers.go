package ckpt

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// This file finds memory a process shares with processes that do not
// move with it. Memory of no file (MAP_SHARED|MAP_ANONYMOUS, a memfd, a
// deleted file) comes back as the moved process's own, so a process
// outside the tree that maps the same object would write where the moved
// one no longer reads; a file the tree maps shared and writable, and
// another process maps shared, is mapped again from the target node's
// copy of the file, whose changes the other does not see (two processes
// of one sqlite database in WAL mode share its -shm file so). Either
// pins, as a System V segment does always: the restore cannot make one
// again under its id (shmdt, shmctl and a later shmat of its key would
// fail).
//
// No interface of the kernel says who else maps an object, so the check
// reads the mappings of every process on the node; it does so only for a
// process that maps something shared that could be someone else's (most
// map nothing shared at all), and it looks at a line of another process's
// mappings only as far as its permissions unless they say shared. A
// memory file or a deleted file may also be held open by another process
// that does not map it (and writes it with write(2), or maps it later):
// for those, every process's descriptors are read too.

// sharedObject is a shared mapping the tree holds, as the check looks
// for it in others' mappings.
type sharedObject struct {
	path string // as /proc says it; "" for memory of no file
	file bool   // a file that is still there (mapped again from it), writable
	id   fileID // of a memory file or a deleted file (one a descriptor names)
}

// checkSharers returns a *PinnedError if a process of the tree (pids,
// the first the one asked to move) maps something shared that a process
// outside it maps too, or a System V shared memory segment; nil
// otherwise.
func checkSharers(pids []int) error {
	want := map[string]*sharedObject{}  // by "dev inode" as /proc/PID/maps writes them
	var byLink map[string]*sharedObject // those a descriptor may name, by its link
	buf := make([]byte, 64<<10)
	for i, pid := range pids {
		b, err := procRead("/proc/"+strconv.Itoa(pid)+"/maps", buf)
		if err != nil {
			if i > 0 && errors.Is(err, unix.ENOENT) {
				continue // a child ended meanwhile: the freeze sees it
			}
			return fmt.Errorf("read the mappings of %d: %w", pid, err)
		}
		buf = b[:cap(b)]
		var bad error
		sharedLines(b, func(line []byte) bool {
			v, err := parseMapsLine(string(line))
			if err != nil {
				bad = err
				return false
			}
			if strings.HasPrefix(v.Path, "/SYSV") && strings.HasSuffix(v.Path, " (deleted)") {
				reason := fmt.Sprintf("it has System V shared memory attached (segment %d, key 0x%s), which mosaic cannot make again on another node",
					v.Inode, strings.TrimSuffix(strings.TrimPrefix(v.Path, "/SYSV"), " (deleted)"))
				if i > 0 {
					reason = childReason(pid, reason)
				}
				bad = &PinnedError{Reason: reason}
				return false
			}
			if v.Inode == 0 || (vmaKind(v) == VMAFile && !v.Write) {
				// A file read through a shared mapping is read as with
				// read(2): what others write to it after the move is the
				// file system's to show (glibc maps its gconv cache so
				// in nearly every process).
				return true
			}
			key := v.Dev + " " + strconv.FormatUint(v.Inode, 10)
			if want[key] == nil {
				o := &sharedObject{file: vmaKind(v) == VMAFile}
				if o.file || strings.HasSuffix(v.Path, " (deleted)") {
					o.path = strings.TrimSuffix(v.Path, " (deleted)")
				}
				if !o.file && o.path != "" && o.path != "/dev/zero" {
					// A memory file or a deleted file: another process
					// may hold it open without mapping it.
					o.id, _ = v.fileID()
					if byLink == nil {
						byLink = map[string]*sharedObject{}
					}
					byLink[v.Path] = o
				}
				want[key] = o
			}
			return true
		})
		if bad != nil {
			return bad
		}
	}
	if len(want) == 0 {
		return nil
	}
	// Not this process either: it holds a process's memory files open
	// itself while it checkpoints one (markObjectData).
	inTree := map[int]bool{os.Getpid(): true}
	for _, pid := range pids {
		inTree[pid] = true
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return fmt.Errorf("list the node's processes: %w", err)
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || inTree[pid] {
			continue
		}
		b, err := procRead("/proc/"+e.Name()+"/maps", buf)
		if err != nil {
			continue // ended, or a kernel thread's
		}
		buf = b[:cap(b)]
		o, holds := findShared(b, want), false
		if o == nil && byLink != nil {
			o = heldOpen(pid, byLink)
			holds = o != nil
		}
		if o == nil {
			continue
		}
		name := ""
		if c, err := procRead("/proc/"+e.Name()+"/comm", make([]byte, 32)); err == nil {
			name = " (" + strings.TrimSpace(string(c)) + ")"
		}
		if holds {
			return &PinnedError{Reason: fmt.Sprintf("it maps memory (%s) that process %d%s holds open, and that process does not move with it", o.describe(), pid, name)}
		}
		return &PinnedError{Reason: fmt.Sprintf("it shares memory (%s) with process %d%s, which does not move with it", o.describe(), pid, name)}
	}
	return nil
}

// heldOpen returns the object of byLink process pid holds a descriptor
// of, or nil: a memory file it may write with write(2), or map later.
func heldOpen(pid int, byLink map[string]*sharedObject) *sharedObject {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd/"
	fds, err := os.ReadDir(dir)
	if err != nil {
		return nil // ended, or a kernel thread
	}
	for _, fd := range fds {
		l, err := os.Readlink(dir + fd.Name())
		o := byLink[l]
		if err != nil || o == nil {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(dir+fd.Name(), &st) == nil && (fileID{st.Dev, st.Ino}) == o.id {
			return o
		}
	}
	return nil
}

// describe names the object for a user.
func (o *sharedObject) describe() string {
	switch {
	case o.file:
		return "the file " + o.path + ", mapped shared"
	case o.path == "" || o.path == "/dev/zero":
		return "anonymous shared memory"
	case strings.HasPrefix(o.path, "/memfd:"):
		return "the memory file " + strings.TrimPrefix(o.path, "/memfd:")
	}
	return o.path + ", a deleted file"
}

// findShared looks in a process's mappings (the text of /proc/PID/maps)
// for a shared mapping of an object in want, and returns the first.
func findShared(maps []byte, want map[string]*sharedObject) *sharedObject {
	var found *sharedObject
	sharedLines(maps, func(line []byte) bool {
		// 7f1c2a000000-7f1c2a021000 rw-s 00000000 00:01 1234   /memfd:x (deleted)
		f := bytes.Fields(line)
		if len(f) < 5 {
			return true
		}
		found = want[string(f[3])+" "+string(f[4])]
		return found == nil
	})
	return found
}

// sharedLines calls fn with each line of a process's mappings that maps
// shared ('s' the fourth letter of its permissions), until fn says stop;
// other lines are looked at only as far as their permissions.
func sharedLines(maps []byte, fn func(line []byte) bool) {
	for len(maps) > 0 {
		line := maps
		if i := bytes.IndexByte(maps, '\n'); i >= 0 {
			line, maps = maps[:i], maps[i+1:]
		} else {
			maps = nil
		}
		sp := bytes.IndexByte(line, ' ')
		if sp < 0 || len(line) < sp+5 || line[sp+4] != 's' {
			continue
		}
		if !fn(line) {
			return
		}
	}
}
