package idemhttp

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
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

// canonicalizeJSON returns body in canonical form, or false when body is
// not a single valid JSON value.
func canonicalizeJSON(body []byte) ([]byte, bool) {
	d := json.NewDecoder(bytes.NewReader(body))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, false
	}
	if _, err := d.Token(); err != io.EOF {
		return nil, false // trailing data
	}
	// encoding/json writes map keys sorted and no whitespace; json.Number
	// keeps the number's text.
	out, err := json.Marshal(v)
	if err != nil {
		return nil, false
	}
	return out, true
}
