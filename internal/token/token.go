// Package token is the join token: a short-lived secret that lets a new
// machine obtain a node certificate.
//
// A token reads mt1_<id>_<secret>_<pin>. The id names the token's record in
// the cluster store (so it can be listed and revoked without showing the
// secret), the store keeps only a hash of the secret, and the pin is the
// first 128 bits of the cluster CA's public-key fingerprint, so the joining
// machine can authenticate the cluster before handing its secret to it
// (kubeadm's discovery hash, folded into the token).
package token

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
)

const (
	prefix    = "mt1"
	idLen     = 8  // hex digits
	secretLen = 32 // hex digits: 128 bits
	pinLen    = 32 // hex digits of the CA fingerprint
)

// Token is a parsed join token.
type Token struct {
	ID     string
	Secret string
	Pin    string // prefix of the CA fingerprint (hex)
}

// New makes a fresh token for the CA with the given fingerprint.
func New(caFingerprint string) (Token, error) {
	if len(caFingerprint) < pinLen {
		return Token{}, fmt.Errorf("CA fingerprint %q is too short", caFingerprint)
	}
	buf := make([]byte, (idLen+secretLen)/2)
	if _, err := rand.Read(buf); err != nil {
		return Token{}, fmt.Errorf("generate token: %w", err)
	}
	h := hex.EncodeToString(buf)
	return Token{ID: h[:idLen], Secret: h[idLen:], Pin: caFingerprint[:pinLen]}, nil
}

// String is the token as users copy it.
func (t Token) String() string {
	return strings.Join([]string{prefix, t.ID, t.Secret, t.Pin}, "_")
}

// MatchesCA reports whether the token was made for the CA with this fingerprint.
func (t Token) MatchesCA(caFingerprint string) bool {
	return strings.HasPrefix(caFingerprint, t.Pin)
}

// ErrMalformed means the string is not a mosaic join token at all.
var ErrMalformed = errors.New("not a mosaic join token (it should look like mt1_<id>_<secret>_<pin>; copy it again from `mosaic token create`)")

// Parse reads a token as printed by String.
func Parse(s string) (Token, error) {
	parts := strings.Split(strings.TrimSpace(s), "_")
	if len(parts) != 4 || parts[0] != prefix ||
		!isHex(parts[1], idLen) || !isHex(parts[2], secretLen) || !isHex(parts[3], pinLen) {
		return Token{}, ErrMalformed
	}
	return Token{ID: parts[1], Secret: parts[2], Pin: parts[3]}, nil
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// HashSecret is what the store keeps instead of the secret.
func HashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// Record is a token as the cluster store keeps it.
type Record struct {
	ID         string    `json:"id"`
	SecretHash string    `json:"secret_hash"`
	Created    time.Time `json:"created"`
	Expires    time.Time `json:"expires"`
	MaxUses    int       `json:"max_uses,omitempty"` // 0 = any number until it expires
	Uses       int       `json:"uses"`
	Revoked    time.Time `json:"revoked,omitzero"`
	CreatedBy  uint32    `json:"created_by"` // uid of the caller
	Note       string    `json:"note,omitempty"`
}

// NewRecord makes the store record of a fresh token.
func NewRecord(t Token, now time.Time, ttl time.Duration, maxUses int, uid uint32, note string) Record {
	return Record{
		ID: t.ID, SecretHash: HashSecret(t.Secret), Created: now, Expires: now.Add(ttl),
		MaxUses: maxUses, CreatedBy: uid, Note: note,
	}
}

// Errors of Check. Each says what happened and what to do about it.
var (
	ErrUnknown = errors.New("join token is not valid for this cluster: ask an operator for a new one (`mosaic token create` on a node of the cluster)")
	ErrExpired = errors.New("join token has expired: create a new one with `mosaic token create`")
	ErrRevoked = errors.New("join token was revoked: create a new one with `mosaic token create`")
	ErrUsedUp  = errors.New("join token has been used as many times as it allows: create a new one with `mosaic token create`")
)

// Check decides whether a token may be used now. A wrong secret reads as an
// unknown token so that the answer does not confirm which ids exist.
func (r Record) Check(secret string, now time.Time) error {
	if subtle.ConstantTimeCompare([]byte(HashSecret(secret)), []byte(r.SecretHash)) != 1 {
		return ErrUnknown
	}
	switch {
	case !r.Revoked.IsZero():
		return fmt.Errorf("%w (revoked %s)", ErrRevoked, r.Revoked.UTC().Format(time.RFC3339))
	case !now.Before(r.Expires):
		return fmt.Errorf("%w (expired %s)", ErrExpired, r.Expires.UTC().Format(time.RFC3339))
	case r.MaxUses > 0 && r.Uses >= r.MaxUses:
		return ErrUsedUp
	}
	return nil
}

// Status is a short word for listings.
func (r Record) Status(now time.Time) string {
	switch {
	case !r.Revoked.IsZero():
		return "revoked"
	case !now.Before(r.Expires):
		return "expired"
	case r.MaxUses > 0 && r.Uses >= r.MaxUses:
		return "used"
	}
	return "valid"
}
