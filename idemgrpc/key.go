package idemgrpc

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"strconv"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
)

// MaxKeyLen is the longest idempotency key accepted, in bytes, as for
// idemhttp.
const MaxKeyLen = 255

// errMalformedKey is wrapped by the errors checkKey returns.
var errMalformedKey = errors.New("malformed idempotency key")

// checkKey reports whether key is 1 to MaxKeyLen bytes of visible ASCII
// (0x21 to 0x7e). Unlike the HTTP header, the metadata value is the key as
// it is: no quoting and no trimming.
func checkKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty", errMalformedKey)
	}
	if len(key) > MaxKeyLen {
		return fmt.Errorf("%w: %d bytes, longer than %d", errMalformedKey, len(key), MaxKeyLen)
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; c < 0x21 || c > 0x7e {
			return fmt.Errorf("%w: byte 0x%02x at %d is not visible ASCII", errMalformedKey, c, i)
		}
	}
	return nil
}

// digestPrefix marks a stored key that is a digest of the scoped key.
const digestPrefix = "idemgrpc:sha256:"

// storedKey returns the key under which the outcome of the call with key
// is stored for scope: "idemgrpc:<len(scope)>:<scope>:<key>", which no two
// (scope, key) pairs share, and which no idemhttp key shares either. When
// that is longer than maxKeySize, or the scope holds bytes the store
// refuses in keys, it is replaced by its SHA-256 ("idemgrpc:sha256:<hex>"),
// which is just as unique. This is idemhttp's scheme under another prefix.
func storedKey(scope, key string, maxKeySize int) string {
	k := "idemgrpc:" + strconv.Itoa(len(scope)) + ":" + scope + ":" + key
	if len(k) <= maxKeySize && utf8.ValidString(scope) && !hasControl(scope) {
		return k
	}
	sum := sha256.Sum256([]byte(k))
	return digestPrefix + hex.EncodeToString(sum[:])
}

// minStoreKeySize is the smallest store MaxKeySize the interceptor works
// with: room for a digest key.
const minStoreKeySize = len(digestPrefix) + 2*sha256.Size

func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return true
		}
	}
	return false
}

// Fingerprint returns the SHA-256 digest that identifies a call: its full
// method name ("/pkg.Service/Method") and the deterministic proto encoding
// of its request (proto.MarshalOptions{Deterministic: true}), each
// length-prefixed. It is the default of Options.Fingerprint.
//
// Deterministic is not canonical: the same message may encode differently
// in another build of the service (a field added to the schema, unknown
// fields kept by a proxy, another protobuf runtime). A service whose
// clients may retry across such a change should fingerprint the fields
// that make the request what it is instead.
func Fingerprint(fullMethod string, req proto.Message) ([]byte, error) {
	body, err := proto.MarshalOptions{Deterministic: true}.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("idemgrpc: fingerprinting the request of %s: %w", fullMethod, err)
	}
	h := sha256.New()
	io.WriteString(h, "idemgrpc fingerprint v1\n")
	writeField(h, []byte(fullMethod))
	writeField(h, body)
	return h.Sum(nil), nil
}

func writeField(h hash.Hash, b []byte) {
	var n [binary.MaxVarintLen64]byte
	h.Write(n[:binary.PutUvarint(n[:], uint64(len(b)))])
	h.Write(b)
}
