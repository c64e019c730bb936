package idemgrpc

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"

	"google.golang.org/protobuf/proto"

	"github.com/idemdb/idem/internal/scoped"
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

// storedKey returns the key under which the outcome for key is stored
// for scope: see scoped.Key.
func storedKey(scope, key string, maxKeySize int) string {
	return scoped.Key("idemgrpc", scope, key, maxKeySize)
}

// minStoreKeySize is the smallest store MaxKeySize the interceptor works
// with: room for a digest key.
var minStoreKeySize = scoped.MinStoreKeySize("idemgrpc")

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
