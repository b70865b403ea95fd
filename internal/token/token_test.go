package token

import (
	"errors"
	"strings"
	"testing"
	"time"
)

const fp = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestRoundTrip(t *testing.T) {
	tok, err := New(fp)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(" " + tok.String() + "\n")
	if err != nil {
		t.Fatalf("Parse(%q): %v", tok.String(), err)
	}
	if got != tok {
		t.Fatalf("Parse = %+v, want %+v", got, tok)
	}
	if !got.MatchesCA(fp) || got.MatchesCA(strings.Repeat("f", 64)) {
		t.Fatal("MatchesCA is wrong")
	}
}

func TestParseRejects(t *testing.T) {
	tok, _ := New(fp)
	good := tok.String()
	for _, s := range []string{
		"", "mt1", "hello", strings.Replace(good, "mt1", "mt2", 1),
		good + "_x", good[:len(good)-1], strings.Replace(good, tok.Secret, strings.Repeat("z", secretLen), 1),
	} {
		if _, err := Parse(s); !errors.Is(err, ErrMalformed) {
			t.Errorf("Parse(%q) = %v, want ErrMalformed", s, err)
		}
	}
}

func TestCheck(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tok, _ := New(fp)
	base := NewRecord(tok, now, time.Hour, 0, 0, "")
	cases := []struct {
		name   string
		mutate func(*Record)
		secret string
		at     time.Time
		want   error
	}{
		{"valid", nil, tok.Secret, now.Add(time.Minute), nil},
		{"wrong secret", nil, strings.Repeat("0", secretLen), now, ErrUnknown},
		{"expired", nil, tok.Secret, now.Add(time.Hour), ErrExpired},
		{"revoked", func(r *Record) { r.Revoked = now }, tok.Secret, now, ErrRevoked},
		{"used up", func(r *Record) { r.MaxUses = 2; r.Uses = 2 }, tok.Secret, now, ErrUsedUp},
		{"uses left", func(r *Record) { r.MaxUses = 2; r.Uses = 1 }, tok.Secret, now, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := base
			if c.mutate != nil {
				c.mutate(&r)
			}
			err := r.Check(c.secret, c.at)
			if c.want == nil && err != nil || c.want != nil && !errors.Is(err, c.want) {
				t.Fatalf("Check = %v, want %v", err, c.want)
			}
		})
	}
}
