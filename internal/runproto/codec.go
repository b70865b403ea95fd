package runproto

import (
	"encoding/base64"
	"encoding/json"
	"strconv"
	"unicode/utf8"
)

// The run request is encoded by hand. Every program a user starts sends
// one, from a CLI process that lives for a few milliseconds, and
// encoding/json's first use in a process is slow: it works out each type's
// fields by reflection and grows its buffer through a dozen size classes,
// each a fresh heap span and fresh pages (about 1 ms of a 10 ms start on
// the 2-vCPU test machine, mostly page faults). The output is byte for byte
// what json.Marshal gives (TestRunRequestAsJSON, FuzzRunRequestAsJSON), so
// the daemon decodes it with encoding/json as any other request.

// EncodeRequest encodes a run request (op is OpRun, or another operation
// that takes RunArgs) as internal/api's Conn.Send would.
func EncodeRequest(op string, a RunArgs) []byte {
	b := make([]byte, 0, a.sizeHint()+len(op)+len(`{"op":,"args":}`)+2)
	b = append(b, `{"op":`...)
	b = appendJSONString(b, op)
	b = append(b, `,"args":`...)
	b = a.appendJSON(b)
	return append(b, '}')
}

// sizeHint is about the size of a's JSON: enough, in the usual case, for a
// single allocation.
func (a RunArgs) sizeHint() int {
	n := 256 + len(a.Cwd) + 64*len(a.Rlimits)
	for _, s := range a.Argv {
		n += len(s) + 3
	}
	for _, s := range a.Env {
		n += len(s) + 3
	}
	return n + n/16 // a little room for escapes
}

// appendIntField appends `,"key":v` (key given so), unless v is 0 (left out).
func appendIntField(b []byte, key string, v int) []byte {
	if v == 0 {
		return b
	}
	return strconv.AppendInt(append(b, key...), int64(v), 10)
}

func (a RunArgs) appendJSON(b []byte) []byte {
	b = append(b, `{"argv":`...)
	b = appendJSONStrings(b, a.Argv)
	b = append(b, `,"env":`...)
	b = appendJSONStrings(b, a.Env)
	b = append(b, `,"cwd":`...)
	b = appendJSONString(b, a.Cwd)
	b = append(b, `,"umask":`...)
	b = strconv.AppendUint(b, uint64(a.Umask), 10)
	if len(a.Rlimits) > 0 {
		b = append(b, `,"rlimits":[`...)
		for i, l := range a.Rlimits {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"resource":`...)
			b = strconv.AppendInt(b, int64(l.Resource), 10)
			b = append(b, `,"cur":`...)
			b = strconv.AppendUint(b, l.Cur, 10)
			b = append(b, `,"max":`...)
			b = strconv.AppendUint(b, l.Max, 10)
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	b = appendIntField(b, `,"nice":`, a.Nice)
	b = appendIntField(b, `,"ioprio":`, a.IOPrio)
	b = appendIntField(b, `,"sched_policy":`, a.SchedPolicy)
	if len(a.Ignored) > 0 {
		b = append(b, `,"ignored":[`...)
		for i, sig := range a.Ignored {
			if i > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendInt(b, int64(sig), 10)
		}
		b = append(b, ']')
	}
	if a.NoNewPrivs {
		b = append(b, `,"no_new_privs":true`...)
	}
	if a.On != "" {
		b = append(b, `,"on":`...)
		b = appendJSONString(b, a.On)
	}
	if a.Here {
		b = append(b, `,"here":true`...)
	}
	if a.Pin {
		b = append(b, `,"pin":true`...)
	}
	if t := a.Tty; t != nil {
		b = append(b, `,"tty":{"rows":`...)
		b = strconv.AppendUint(b, uint64(t.Rows), 10)
		b = append(b, `,"cols":`...)
		b = strconv.AppendUint(b, uint64(t.Cols), 10)
		b = appendUintField(b, `,"iflag":`, t.Iflag)
		b = appendUintField(b, `,"oflag":`, t.Oflag)
		b = appendUintField(b, `,"cflag":`, t.Cflag)
		b = appendUintField(b, `,"lflag":`, t.Lflag)
		if len(t.Cc) > 0 {
			b = append(b, `,"cc":"`...)
			b = base64.StdEncoding.AppendEncode(b, t.Cc)
			b = append(b, '"')
		}
		b = appendUintField(b, `,"ispeed":`, t.Ispeed)
		b = appendUintField(b, `,"ospeed":`, t.Ospeed)
		b = append(b, '}')
	}
	if a.Image {
		b = append(b, `,"image":true`...)
	}
	return append(b, '}')
}

// appendUintField appends an omitempty number field.
func appendUintField(b []byte, name string, v uint32) []byte {
	if v == 0 {
		return b
	}
	b = append(b, name...)
	return strconv.AppendUint(b, uint64(v), 10)
}

func appendJSONStrings(b []byte, ss []string) []byte {
	if ss == nil {
		return append(b, "null"...)
	}
	b = append(b, '[')
	for i, s := range ss {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, s)
	}
	return append(b, ']')
}

// appendJSONString quotes s as encoding/json does: HTML's <, > and & and
// the line and paragraph separators escaped, invalid UTF-8 as U+FFFD.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// DecodeRunEvent decodes an event of a run as json.Unmarshal would into a
// zero RunEvent. The two every run gets, started and exit, are read by hand
// in the forms json.Marshal writes them (for the reason the request is
// encoded by hand: encoding/json's first use costs a short-lived CLI about
// half a millisecond); anything else goes to encoding/json.
func DecodeRunEvent(b []byte, e *RunEvent) error {
	if decodeStartedEvent(b, e) || decodeExitEvent(b, e) {
		return nil
	}
	*e = RunEvent{}
	return json.Unmarshal(b, e)
}

// decodeStartedEvent reads {"started":{"id":S,"node":S,"pid":N}}.
func decodeStartedEvent(b []byte, e *RunEvent) bool {
	var s RunStarted
	var ok bool
	if b, ok = cutPrefix(b, `{"started":{"id":`); !ok {
		return false
	}
	if s.ID, b, ok = plainString(b); !ok {
		return false
	}
	if b, ok = cutPrefix(b, `,"node":`); !ok {
		return false
	}
	if s.Node, b, ok = plainString(b); !ok {
		return false
	}
	if b, ok = cutPrefix(b, `,"pid":`); !ok {
		return false
	}
	if s.PID, b, ok = plainInt(b); !ok || string(b) != "}}" {
		return false
	}
	*e = RunEvent{Started: &s}
	return true
}

// decodeExitEvent reads {"exit":{"code":N[,"signal":N][,"core":true]}}.
func decodeExitEvent(b []byte, e *RunEvent) bool {
	var x RunExit
	var ok bool
	if b, ok = cutPrefix(b, `{"exit":{"code":`); !ok {
		return false
	}
	if x.Code, b, ok = plainInt(b); !ok {
		return false
	}
	if rest, found := cutPrefix(b, `,"signal":`); found {
		if x.Signal, b, ok = plainInt(rest); !ok {
			return false
		}
	}
	if rest, found := cutPrefix(b, `,"core":true`); found {
		x.Core, b = true, rest
	}
	if string(b) != "}}" {
		return false
	}
	*e = RunEvent{Exit: &x}
	return true
}

func cutPrefix(b []byte, prefix string) ([]byte, bool) {
	if len(b) < len(prefix) || string(b[:len(prefix)]) != prefix {
		return b, false
	}
	return b[len(prefix):], true
}

// plainString reads a JSON string with nothing escaped in it; any other
// is left to encoding/json.
func plainString(b []byte) (string, []byte, bool) {
	if len(b) == 0 || b[0] != '"' {
		return "", b, false
	}
	for i := 1; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			s := b[1:i]
			if !utf8.Valid(s) {
				return "", b, false
			}
			return string(s), b[i+1:], true
		case c == '\\' || c < 0x20:
			return "", b, false
		}
	}
	return "", b, false
}

// plainInt reads a JSON integer as json.Marshal writes one: an optional
// minus, then 0 or digits not starting with 0.
func plainInt(b []byte) (int, []byte, bool) {
	i := 0
	if i < len(b) && b[i] == '-' {
		i++
	}
	start := i
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	digits := b[start:i]
	if len(digits) == 0 || len(digits) > 18 || (len(digits) > 1 && digits[0] == '0') {
		return 0, b, false
	}
	if i < len(b) && (b[i] == '.' || b[i] == 'e' || b[i] == 'E') {
		return 0, b, false
	}
	n, err := strconv.Atoi(string(b[:i]))
	if err != nil {
		return 0, b, false
	}
	return n, b[i:], true
}
