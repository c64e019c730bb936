// Package scoped builds the stored keys of the front ends (idemhttp,
// idemgrpc): a client's key inside its scope (the authenticated principal)
// and the front end's namespace, so that one client can never reach
// another's record by guessing its key, and an HTTP key never meets a gRPC
// one.
package scoped

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"unicode/utf8"
)

// Key returns the key under which the outcome for key is stored for scope
// in namespace: "<namespace>:<len(scope)>:<scope>:<key>", which no two
// (scope, key) pairs share. When that is longer than maxKeySize, or the
// scope holds bytes the store refuses in keys, it is replaced by its
// SHA-256 ("<namespace>:sha256:<hex>"), which is just as unique.
func Key(namespace, scope, key string, maxKeySize int) string {
	k := namespace + ":" + strconv.Itoa(len(scope)) + ":" + scope + ":" + key
	if len(k) <= maxKeySize && utf8.ValidString(scope) && !hasControl(scope) {
		return k
	}
	sum := sha256.Sum256([]byte(k))
	return namespace + ":sha256:" + hex.EncodeToString(sum[:])
}

// MinStoreKeySize is the smallest store MaxKeySize a front end in
// namespace works with: room for a digest key.
func MinStoreKeySize(namespace string) int {
	return len(namespace) + len(":sha256:") + 2*sha256.Size
}

func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return true
		}
	}
	return false
}
