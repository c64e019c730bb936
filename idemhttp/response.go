package idemhttp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
)

// responseVersion is the first byte of every stored response.
const responseVersion = 1

// A stored response is the record's Response bytes, in this format
// (version 1; all integers are unsigned varints):
//
//	version   one byte, 1
//	status    the status code
//	nheaders  the number of header names
//	          for each name, in sorted order:
//	  name    length, then the canonical name's bytes
//	  nvalues the number of values, then for each: length, then the bytes
//	body      every remaining byte
//
// A later version gets a new first byte; decodeResponse refuses versions
// it does not know rather than misreading them.

// response is a captured HTTP response.
type response struct {
	status int
	header http.Header
	body   []byte
	// trailer is set after the body, on the first response only; it is
	// never stored.
	trailer http.Header
}

// errBadResponse is wrapped by decodeResponse's errors.
var errBadResponse = errors.New("idemhttp: stored response cannot be decoded")

func encodeResponse(r *response) []byte {
	names := make([]string, 0, len(r.header))
	size := 1 + 2*binary.MaxVarintLen64 + len(r.body)
	for name, vals := range r.header {
		names = append(names, name)
		size += len(name) + 2*binary.MaxVarintLen64
		for _, v := range vals {
			size += len(v) + binary.MaxVarintLen64
		}
	}
	slices.Sort(names)
	b := make([]byte, 0, size)
	b = append(b, responseVersion)
	b = binary.AppendUvarint(b, uint64(r.status))
	b = binary.AppendUvarint(b, uint64(len(names)))
	for _, name := range names {
		b = appendString(b, name)
		vals := r.header[name]
		b = binary.AppendUvarint(b, uint64(len(vals)))
		for _, v := range vals {
			b = appendString(b, v)
		}
	}
	return append(b, r.body...)
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// decodeResponse parses a stored response. The body aliases data.
func decodeResponse(data []byte) (*response, error) {
	if len(data) == 0 {
		return nil, fmt.Errorf("%w: empty", errBadResponse)
	}
	if data[0] != responseVersion {
		return nil, fmt.Errorf("%w: unknown format version %d", errBadResponse, data[0])
	}
	d := decoder{b: data[1:]}
	status := d.uint()
	n := d.uint()
	if d.err == nil && n > uint64(len(d.b)) {
		d.fail("header count")
	}
	if d.err != nil {
		return nil, d.err
	}
	h := make(http.Header, n)
	for i := uint64(0); i < n && d.err == nil; i++ {
		name := d.string()
		nv := d.uint()
		if d.err == nil && nv > uint64(len(d.b)) {
			d.fail("value count")
		}
		if d.err != nil {
			break
		}
		vals := make([]string, 0, nv)
		for j := uint64(0); j < nv && d.err == nil; j++ {
			vals = append(vals, d.string())
		}
		h[name] = vals
	}
	if d.err != nil {
		return nil, d.err
	}
	if status < 100 || status > 999 {
		return nil, fmt.Errorf("%w: status %d", errBadResponse, status)
	}
	return &response{status: int(status), header: h, body: d.b}, nil
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: truncated %s", errBadResponse, what)
	}
}

func (d *decoder) uint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("number")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) string() string {
	n := d.uint()
	if d.err != nil {
		return ""
	}
	if n > uint64(len(d.b)) {
		d.fail("string")
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

// hopByHop are the headers that describe one connection, not the response
// (RFC 9110 section 7.6.1), and so are never stored.
var hopByHop = map[string]bool{
	"Connection":          true,
	"Keep-Alive":          true,
	"Proxy-Connection":    true,
	"Proxy-Authenticate":  true,
	"Proxy-Authorization": true,
	"Te":                  true,
	"Trailer":             true,
	"Transfer-Encoding":   true,
	"Upgrade":             true,
}

// storableHeader returns the headers of h that are stored and replayed:
// all but Set-Cookie, the hop-by-hop headers, those named in Connection,
// and trailers (those named in Trailer, and keys with the
// http.TrailerPrefix).
func storableHeader(h http.Header) http.Header {
	drop := listedNames(h, "Connection")
	for name := range listedNames(h, "Trailer") {
		if drop == nil {
			drop = map[string]bool{}
		}
		drop[name] = true
	}
	out := make(http.Header, len(h))
	for name, vals := range h {
		cn := http.CanonicalHeaderKey(name)
		if cn == "Set-Cookie" || hopByHop[cn] || drop[cn] ||
			strings.HasPrefix(name, http.TrailerPrefix) || len(vals) == 0 {
			continue
		}
		out[name] = slices.Clone(vals)
	}
	return out
}

// listedNames returns the canonical header names listed in h's field
// (Connection or Trailer), nil when h has no such field.
func listedNames(h http.Header, field string) map[string]bool {
	vals := h.Values(field)
	if len(vals) == 0 {
		return nil
	}
	names := map[string]bool{}
	for _, v := range vals {
		for f := range strings.SplitSeq(v, ",") {
			if f = strings.TrimSpace(f); f != "" {
				names[http.CanonicalHeaderKey(f)] = true
			}
		}
	}
	return names
}

// splitTrailers returns h without its trailers, and the trailers: the
// names declared in Trailer and the keys with the http.TrailerPrefix.
func splitTrailers(h http.Header) (head, trailer http.Header) {
	declared := listedNames(h, "Trailer")
	head = make(http.Header, len(h))
	for name, vals := range h {
		if declared[http.CanonicalHeaderKey(name)] || strings.HasPrefix(name, http.TrailerPrefix) {
			if trailer == nil {
				trailer = http.Header{}
			}
			trailer[name] = vals
			continue
		}
		head[name] = vals
	}
	return head, trailer
}
