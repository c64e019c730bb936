package idemhttp

import (
	"bytes"
	"encoding/json"
	"io"
	"math"
	"slices"
	"sort"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// The canonical form of a JSON body is, byte for byte, what encoding/json
// made of it before: decoded with UseNumber into any, then marshalled
// (object keys sorted by their decoded bytes, the last of duplicate keys
// kept, no whitespace, strings re-escaped the one way Marshal escapes
// them with HTML escaping, numbers as their literal text). Fingerprints of
// records already stored depend on it, so it must not change.
//
// Building that map tree cost about 100 ms and 70 MB of allocation for a
// MiB of small objects. canonicalizeJSON makes the same bytes in two passes
// over the body instead: the first validates it with encoding/json's
// grammar and records, for each object, its members sorted by key (a key
// and where its value starts); the second writes the canonical form,
// visiting each object's members in that order. The work is linear in the
// body, and the memory is the output plus one small record per object and
// member.

// maxNestingDepth is encoding/json's limit: a body nested deeper is not
// JSON it decodes, and so is hashed as it is.
const maxNestingDepth = 10000

type canonicalizer struct {
	in      []byte
	objs    []canonObject // in order of their '{' in the body
	members []canonMember // each object's members, sorted and deduplicated
	pending []canonMember // members of the objects being scanned
	arena   []byte        // decoded keys that are not bytes of in
	scratch []byte        // a decoded string being written
	depth   int
}

// Offsets are int32 to halve the records; a body of 2 GiB or more is
// canonicalised by encoding/json, as before.

// canonObject is an object with members; empty objects have none.
type canonObject struct {
	start, end int32 // the '{', and just after the '}'
	first, n   int32 // its members: members[first : first+n]
}

type canonMember struct {
	keyOff, keyLen int32 // the decoded key: in[keyOff:] if keyOff >= 0, else arena[^keyOff:]
	val            int32 // where the value starts in in
}

// canonicalizeJSON returns body in canonical form, or false when body is
// not a single valid JSON value (encoding/json's Decoder would refuse it,
// or find more than whitespace after it).
func canonicalizeJSON(body []byte) ([]byte, bool) {
	if len(body) > math.MaxInt32 {
		return canonicalizeJSONTree(body)
	}
	// Every member has a ':', and every object with a record a '{' and a
	// member, so these bound the records (colons in strings make them
	// generous): one allocation each.
	colons := bytes.Count(body, []byte(":"))
	c := &canonicalizer{
		in:      body,
		objs:    make([]canonObject, 0, min(colons, bytes.Count(body, []byte("{")))),
		members: make([]canonMember, 0, colons),
	}
	i := c.skipSpace(0)
	if i == len(body) {
		return nil, false
	}
	end, ok := c.value(i)
	if !ok || c.skipSpace(end) != len(body) {
		return nil, false
	}
	out, _ := c.emit(make([]byte, 0, len(body)), i)
	return out, true
}

func (c *canonicalizer) skipSpace(i int) int {
	for i < len(c.in) {
		switch c.in[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// value checks the value starting at in[i] and returns where it ends.
func (c *canonicalizer) value(i int) (int, bool) {
	if i >= len(c.in) {
		return 0, false
	}
	switch b := c.in[i]; {
	case b == '{':
		return c.object(i)
	case b == '[':
		return c.array(i)
	case b == '"':
		end, _, ok := c.str(i)
		return end, ok
	case b == '-' || ('0' <= b && b <= '9'):
		return c.number(i)
	case b == 't':
		return c.literal(i, "true")
	case b == 'f':
		return c.literal(i, "false")
	case b == 'n':
		return c.literal(i, "null")
	}
	return 0, false
}

func (c *canonicalizer) literal(i int, lit string) (int, bool) {
	if bytes.HasPrefix(c.in[i:], []byte(lit)) {
		return i + len(lit), true
	}
	return 0, false
}

// number checks the number at in[i]: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (c *canonicalizer) number(i int) (int, bool) {
	in := c.in
	digits := func(i int) int {
		for i < len(in) && '0' <= in[i] && in[i] <= '9' {
			i++
		}
		return i
	}
	if in[i] == '-' {
		i++
	}
	switch {
	case i < len(in) && in[i] == '0':
		i++
	case i < len(in) && '1' <= in[i] && in[i] <= '9':
		i = digits(i + 1)
	default:
		return 0, false
	}
	if i < len(in) && in[i] == '.' {
		j := digits(i + 1)
		if j == i+1 {
			return 0, false
		}
		i = j
	}
	if i < len(in) && (in[i] == 'e' || in[i] == 'E') {
		i++
		if i < len(in) && (in[i] == '+' || in[i] == '-') {
			i++
		}
		j := digits(i)
		if j == i {
			return 0, false
		}
		i = j
	}
	return i, true
}

// str checks the string whose quote is at in[i] and returns where it
// ends; simple means its content needs no decoding (no escapes, valid
// UTF-8).
func (c *canonicalizer) str(i int) (end int, simple, ok bool) {
	in := c.in
	simple = true
	high := false
	for j := i + 1; j < len(in); {
		switch b := in[j]; {
		case b == '"':
			if simple && high && !utf8.Valid(in[i+1:j]) {
				simple = false
			}
			return j + 1, simple, true
		case b == '\\':
			simple = false
			if j+1 == len(in) {
				return 0, false, false
			}
			switch in[j+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				j += 2
			case 'u':
				if getu4(in[j:]) < 0 {
					return 0, false, false
				}
				j += 6
			default:
				return 0, false, false
			}
		case b < 0x20:
			return 0, false, false
		default:
			high = high || b >= utf8.RuneSelf
			j++
		}
	}
	return 0, false, false
}

func (c *canonicalizer) array(i int) (int, bool) {
	if c.depth++; c.depth > maxNestingDepth {
		return 0, false
	}
	defer func() { c.depth-- }()
	j := c.skipSpace(i + 1)
	if j < len(c.in) && c.in[j] == ']' {
		return j + 1, true
	}
	for {
		end, ok := c.value(j)
		if !ok {
			return 0, false
		}
		j = c.skipSpace(end)
		if j == len(c.in) {
			return 0, false
		}
		switch c.in[j] {
		case ',':
			j = c.skipSpace(j + 1)
		case ']':
			return j + 1, true
		default:
			return 0, false
		}
	}
}

func (c *canonicalizer) object(i int) (int, bool) {
	if c.depth++; c.depth > maxNestingDepth {
		return 0, false
	}
	defer func() { c.depth-- }()
	j := c.skipSpace(i + 1)
	if j < len(c.in) && c.in[j] == '}' {
		return j + 1, true // no record: emit writes {} by itself
	}
	idx := len(c.objs)
	c.objs = append(c.objs, canonObject{start: int32(i)})
	mark := len(c.pending)
	for {
		if j == len(c.in) || c.in[j] != '"' {
			return 0, false
		}
		kend, simple, ok := c.str(j)
		if !ok {
			return 0, false
		}
		m := canonMember{keyOff: int32(j + 1), keyLen: int32(kend - j - 2)}
		if !simple {
			at := len(c.arena)
			c.arena = unquote(c.arena, c.in[j+1:kend-1])
			m.keyOff, m.keyLen = ^int32(at), int32(len(c.arena)-at)
		}
		j = c.skipSpace(kend)
		if j == len(c.in) || c.in[j] != ':' {
			return 0, false
		}
		val := c.skipSpace(j + 1)
		m.val = int32(val)
		end, ok := c.value(val)
		if !ok {
			return 0, false
		}
		if len(c.pending) == cap(c.pending) {
			// Double (append grows large slices by a quarter, which
			// allocates five times the final size on one big object),
			// up to the bound on members.
			grown := make([]canonMember, len(c.pending), min(max(2*cap(c.pending), 16), max(cap(c.members), len(c.pending)+1)))
			copy(grown, c.pending)
			c.pending = grown
		}
		c.pending = append(c.pending, m)
		j = c.skipSpace(end)
		if j == len(c.in) {
			return 0, false
		}
		if c.in[j] == ',' {
			j = c.skipSpace(j + 1)
			continue
		}
		if c.in[j] != '}' {
			return 0, false
		}
		break
	}
	// Sort the members by key, keeping the last of equal keys, as a map
	// does.
	ms := c.pending[mark:]
	slices.SortFunc(ms, func(a, b canonMember) int {
		if k := bytes.Compare(c.key(a), c.key(b)); k != 0 {
			return k
		}
		return int(a.val - b.val) // equal keys in body order
	})
	first := len(c.members)
	for k, m := range ms {
		if k+1 < len(ms) && bytes.Equal(c.key(m), c.key(ms[k+1])) {
			continue
		}
		c.members = append(c.members, m)
	}
	c.objs[idx] = canonObject{start: int32(i), end: int32(j + 1), first: int32(first), n: int32(len(c.members) - first)}
	c.pending = c.pending[:mark]
	return j + 1, true
}

// canonicalizeJSONTree is canonicalizeJSON through encoding/json, for
// bodies too large for canonicalizer's offsets.
func canonicalizeJSONTree(body []byte) ([]byte, bool) {
	d := json.NewDecoder(bytes.NewReader(body))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, false
	}
	if _, err := d.Token(); err != io.EOF {
		return nil, false // trailing data
	}
	out, err := json.Marshal(v)
	return out, err == nil
}

func (c *canonicalizer) key(m canonMember) []byte {
	if m.keyOff >= 0 {
		return c.in[m.keyOff : m.keyOff+m.keyLen]
	}
	return c.arena[^m.keyOff : ^m.keyOff+m.keyLen]
}

// emit appends the canonical form of the value at in[i], which value has
// checked, and returns where the value ends.
func (c *canonicalizer) emit(out []byte, i int) ([]byte, int) {
	switch b := c.in[i]; b {
	case '{':
		if j := c.skipSpace(i + 1); c.in[j] == '}' {
			return append(out, '{', '}'), j + 1
		}
		k := sort.Search(len(c.objs), func(k int) bool { return int(c.objs[k].start) >= i })
		o := c.objs[k]
		out = append(out, '{')
		for n, m := range c.members[o.first : o.first+o.n] {
			if n > 0 {
				out = append(out, ',')
			}
			out = appendJSONString(out, c.key(m))
			out = append(out, ':')
			out, _ = c.emit(out, int(m.val))
		}
		return append(out, '}'), int(o.end)
	case '[':
		out = append(out, '[')
		j := c.skipSpace(i + 1)
		if c.in[j] == ']' {
			return append(out, ']'), j + 1
		}
		for {
			out, j = c.emit(out, j)
			j = c.skipSpace(j)
			if c.in[j] == ']' {
				return append(out, ']'), j + 1
			}
			out = append(out, ',')
			j = c.skipSpace(j + 1)
		}
	case '"':
		end, simple, _ := c.str(i)
		content := c.in[i+1 : end-1]
		if !simple {
			c.scratch = unquote(c.scratch[:0], content)
			content = c.scratch
		}
		return appendJSONString(out, content), end
	case 't', 'f', 'n':
		end, _ := c.value(i)
		return append(out, c.in[i:end]...), end
	default:
		end, _ := c.number(i)
		return append(out, c.in[i:end]...), end
	}
}

// unquote appends the decoded content of a JSON string (without its
// quotes, already checked) to dst, as encoding/json decodes it: escapes
// resolved, a surrogate pair joined, a lone surrogate and each byte of
// invalid UTF-8 replaced by U+FFFD.
func unquote(dst, s []byte) []byte {
	for r := 0; r < len(s); {
		switch b := s[r]; {
		case b == '\\':
			switch s[r+1] {
			case 'b':
				dst = append(dst, '\b')
			case 'f':
				dst = append(dst, '\f')
			case 'n':
				dst = append(dst, '\n')
			case 'r':
				dst = append(dst, '\r')
			case 't':
				dst = append(dst, '\t')
			case 'u':
				rr := getu4(s[r:])
				r += 6
				if utf16.IsSurrogate(rr) {
					if dec := utf16.DecodeRune(rr, getu4(s[r:])); dec != unicode.ReplacementChar {
						r += 6
						dst = utf8.AppendRune(dst, dec)
						continue
					}
					rr = unicode.ReplacementChar
				}
				dst = utf8.AppendRune(dst, rr)
				continue
			default: // " \ /
				dst = append(dst, s[r+1])
			}
			r += 2
		case b < utf8.RuneSelf:
			dst = append(dst, b)
			r++
		default:
			rr, size := utf8.DecodeRune(s[r:])
			dst = utf8.AppendRune(dst, rr)
			r += size
		}
	}
	return dst
}

// getu4 decodes \uXXXX at the start of s, or returns -1.
func getu4(s []byte) rune {
	if len(s) < 6 || s[0] != '\\' || s[1] != 'u' {
		return -1
	}
	var r rune
	for _, c := range s[2:6] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			c = c - 'A' + 10
		default:
			return -1
		}
		r = r*16 + rune(c)
	}
	return r
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string the way encoding/json's Marshal
// writes one (with HTML escaping, its default): ", \ and control bytes
// escaped (\b \f \n \r \t by name), <, > and & as \u003c..., U+2028 and
// U+2029 as escapes, invalid UTF-8 as \ufffd.
func appendJSONString(dst, s []byte) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' && b != '<' && b != '>' && b != '&' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '\\', '"':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRune(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
