package idemhttp

import (
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"io"
)

// Fingerprint returns the SHA-256 digest that identifies a request: its
// method, its route and its body. Each part is length-prefixed, so no two
// different (method, route, body) triples share a digest by construction.
// With canonicalJSON, a body that is valid JSON is hashed in canonical form
// (object keys sorted, no insignificant whitespace, strings re-escaped one
// way), so two bodies that differ only in key order or whitespace give the
// same fingerprint; numbers keep their literal text, so 1 and 1.0 differ.
// A body that is not valid JSON is hashed as it is.
func Fingerprint(method, route string, body []byte, canonicalJSON bool) []byte {
	h := sha256.New()
	io.WriteString(h, "idemhttp fingerprint v1\n")
	writeField(h, []byte(method))
	writeField(h, []byte(route))
	if canonicalJSON {
		if c, ok := canonicalizeJSON(body); ok {
			body = c
		}
	}
	writeField(h, body)
	return h.Sum(nil)
}

func writeField(h hash.Hash, b []byte) {
	var n [binary.MaxVarintLen64]byte
	h.Write(n[:binary.PutUvarint(n[:], uint64(len(b)))])
	h.Write(b)
}
