package api

import (
	"bytes"
	"encoding/json"
	"testing"
)

// Run requests are encoded by hand (runproto), others by encoding/json:
// both as the daemon reads them.
func TestEncodeRequest(t *testing.T) {
	mustMarshal := func(v any) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	run := RunArgs{Argv: []string{"true"}, Env: []string{"A=<b>"}, Cwd: "/", Umask: 0o22, On: "n2"}
	for _, c := range []struct {
		op   string
		args any
		want []byte
	}{
		{OpRun, run, mustMarshal(Request{Op: OpRun, Args: mustMarshal(run)})},
		{OpTokenCreate, TokenCreateArgs{}, mustMarshal(Request{Op: OpTokenCreate, Args: mustMarshal(TokenCreateArgs{})})},
		{OpStatus, nil, []byte(`{"op":"status"}`)},
	} {
		got, err := EncodeRequest(c.op, c.args)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, c.want) {
			t.Errorf("%s: got %s, want %s", c.op, got, c.want)
		}
	}
}
