// Package pki is the cluster's certificate authority and the mutual-TLS
// configuration every daemon-to-daemon connection uses.
//
// A cluster is its CA: a node belongs to the cluster if and only if it holds
// a certificate signed by the cluster CA whose subject common name is the
// node's name. Keys are ECDSA P-256 (fast handshakes, small certificates,
// supported by etcd's TLS as well as Go's).
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"strings"
	"time"
)

// Validity periods. Node certificates are long-lived because this project
// has no rotation yet; the CA outlives them.
const (
	caValidity   = 20 * 365 * 24 * time.Hour
	nodeValidity = 5 * 365 * 24 * time.Hour
)

// CA is a certificate authority. Key is nil on nodes that only hold the CA
// certificate (the CA key never leaves the nodes that hold it).
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// NewCA creates a self-signed CA for the cluster named by clusterID.
func NewCA(clusterID string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "mosaic CA " + clusterID, Organization: []string{"mosaic"}, OrganizationalUnit: []string{clusterID}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("self-sign CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate: %w", err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// ClusterID returns the cluster ID the CA was made for.
func (ca *CA) ClusterID() string {
	if ou := ca.Cert.Subject.OrganizationalUnit; len(ou) > 0 {
		return ou[0]
	}
	return ""
}

// Fingerprint is the SHA-256 of the CA certificate's public key, in hex.
// Join tokens carry it so that a joining node can authenticate the cluster
// before it sends its token (as kubeadm's discovery-token-ca-cert-hash).
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:])
}

// NewKey creates a node key.
func NewKey() (*ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate node key: %w", err)
	}
	return key, nil
}

// NewCSR makes a certificate request for a node name.
func NewCSR(name string, key crypto.Signer) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: name},
	}, key)
	if err != nil {
		return nil, fmt.Errorf("create certificate request: %w", err)
	}
	return der, nil
}

// SignCSR issues a node certificate for name from a PKCS#10 request. The
// certificate names the node in its common name and as a DNS name (peers
// verify each other by node name, not by address) and carries ip as an IP
// address because etcd verifies its peers by the host of their URL.
func (ca *CA) SignCSR(csrDER []byte, name string, ip net.IP) (*x509.Certificate, error) {
	if ca.Key == nil {
		return nil, errors.New("this node does not hold the CA key")
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("parse certificate request: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("certificate request signature: %w", err)
	}
	return ca.issue(name, csr.PublicKey, ip)
}

// IssueNode issues a node certificate for a public key directly (used by
// `mosaic init` for the first node).
func (ca *CA) IssueNode(name string, pub crypto.PublicKey, ip net.IP) (*x509.Certificate, error) {
	return ca.issue(name, pub, ip)
}

func (ca *CA) issue(name string, pub crypto.PublicKey, ip net.IP) (*x509.Certificate, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name, Organization: []string{"mosaic"}, OrganizationalUnit: []string{ca.ClusterID()}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(nodeValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     []string{name},
	}
	if ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("sign certificate for node %q: %w", name, err)
	}
	return x509.ParseCertificate(der)
}

func randomSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generate certificate serial: %w", err)
	}
	return serial, nil
}

// Identity is what a node needs to speak mTLS: its certificate and key and
// the CA that vouches for its peers.
type Identity struct {
	Name string
	Cert *x509.Certificate
	Key  crypto.Signer
	CA   *x509.Certificate
}

func (id *Identity) tlsCert() tls.Certificate {
	return tls.Certificate{
		Certificate: [][]byte{id.Cert.Raw, id.CA.Raw},
		PrivateKey:  id.Key,
		Leaf:        id.Cert,
	}
}

func (id *Identity) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(id.CA)
	return p
}

// ServerConfig is the TLS configuration of the peer listener. A client
// certificate is verified when given; callers that present none can reach
// only the Join service (enforced by the RPC layer, see PeerName).
func (id *Identity) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.tlsCert()},
		ClientCAs:    id.pool(),
		ClientAuth:   tls.VerifyClientCertIfGiven,
		NextProtos:   []string{"h2"},
	}
}

// ClientConfig is the TLS configuration for dialing a peer. When peerName is
// empty (a seed address whose node is not known yet) any node of the
// cluster is accepted; otherwise the server must be that node.
func (id *Identity) ClientConfig(peerName string) *tls.Config {
	pool := id.pool()
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.tlsCert()},
		NextProtos:   []string{"h2"},
		// Peers are verified by cluster CA and node name, not by the
		// address dialed, so the standard hostname check is replaced by
		// VerifyConnection (which Go runs even with InsecureSkipVerify).
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyPeer(cs.PeerCertificates, pool, peerName, x509.ExtKeyUsageServerAuth)
		},
	}
}

// ErrOtherCluster is returned when a peer's certificate was not issued by
// this cluster's CA.
var ErrOtherCluster = errors.New("peer certificate is not from this cluster's CA")

func verifyPeer(chain []*x509.Certificate, roots *x509.CertPool, wantName string, usage x509.ExtKeyUsage) error {
	if len(chain) == 0 {
		return errors.New("peer presented no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		var ua x509.UnknownAuthorityError
		if errors.As(err, &ua) {
			return fmt.Errorf("%w (it belongs to %q)", ErrOtherCluster, clusterOf(chain[0]))
		}
		return fmt.Errorf("verify peer certificate: %w", err)
	}
	if wantName != "" && chain[0].Subject.CommonName != wantName {
		return fmt.Errorf("peer is node %q, expected %q", chain[0].Subject.CommonName, wantName)
	}
	return nil
}

func clusterOf(c *x509.Certificate) string {
	if ou := c.Subject.OrganizationalUnit; len(ou) > 0 {
		return ou[0]
	}
	return "unknown cluster"
}

// PinnedConfig is the TLS configuration a joining node uses before it has a
// certificate: the fingerprint of the server's CA must start with pinPrefix
// (a join token carries such a prefix).
func PinnedConfig(pinPrefix string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		NextProtos:         []string{"h2"},
		InsecureSkipVerify: true, // replaced by the pin check below
		VerifyConnection: func(cs tls.ConnectionState) error {
			chain := cs.PeerCertificates
			if pinPrefix == "" {
				return errors.New("no CA fingerprint to check the server against")
			}
			if len(chain) < 2 {
				return errors.New("server did not present its CA certificate")
			}
			ca := chain[len(chain)-1]
			if !strings.HasPrefix(Fingerprint(ca), pinPrefix) {
				return fmt.Errorf("%w: the server's CA does not match the token (cluster %q)", ErrOtherCluster, clusterOf(ca))
			}
			roots := x509.NewCertPool()
			roots.AddCert(ca)
			return verifyPeer(chain[:len(chain)-1], roots, "", x509.ExtKeyUsageServerAuth)
		},
	}
}

// PeerName returns the node name of a verified peer certificate chain, or
// "" when the peer presented none.
func PeerName(cs *tls.ConnectionState) string {
	if cs == nil || len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return ""
	}
	return cs.VerifiedChains[0][0].Subject.CommonName
}

// PEM helpers. Files are written by the caller (see internal/cluster), which
// owns where and how atomically.

// EncodeCert returns the PEM encoding of a certificate.
func EncodeCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// EncodeKey returns the PEM encoding of a private key (PKCS#8).
func EncodeKey(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ReadCert reads a PEM certificate file.
func ReadCert(path string) (*x509.Certificate, error) {
	der, err := readPEM(path, "CERTIFICATE", "certificate")
	if err != nil {
		return nil, err
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// ReadKey reads a PEM private key file.
func ReadKey(path string) (crypto.Signer, error) {
	der, err := readPEM(path, "PRIVATE KEY", "private key")
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s: key cannot sign", path)
	}
	return s, nil
}

// readPEM returns the DER bytes of the first PEM block of a file, which
// must be of the given type.
func readPEM(path, typ, what string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != typ {
		return nil, fmt.Errorf("%s: not a PEM %s", path, what)
	}
	return blk.Bytes, nil
}
