package idem

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"
)

// The stored form of a record is a msgpack array whose first element is the
// format version. Version 1 holds, in order: version, state, fingerprint
// (bin or nil), response (bin or nil), retryable, attempts, token, and the
// four instants as Unix nanoseconds (0 for the zero time): created, updated,
// lease-until, expires. Every integer takes its smallest msgpack form. The
// key is not stored: it is the storage key. testdata/records-v1 pins the
// bytes.
//
// A later version may append elements; a reader of version 1 skips
// elements past the ones it knows (they must be well-formed msgpack), so
// additions need no new version.
// Changing the meaning of an element needs a new version number.
//
// Two elements are appended to version 1's eleven, and every record is
// written with them (a reader of version 1 skips them; a record without
// them, as earlier releases wrote, reads as before):
//
//  12. the holder epoch: for an in-progress record on the embedded store,
//     the number of the open of the data directory whose process holds
//     the lease (0 when unknown); see Store.Begin.
//  13. a CRC-32C (Castagnoli) of the record's decoded fields, in the order
//     of checksum, as a uint32 in its 5-byte form. A record whose fields
//     do not match it is corrupt: a flipped bit in a stored response is
//     reported as ErrCorrupt, never replayed.
//
// The checksum covers the decoded values, not the bytes, so it does not
// depend on which msgpack form an encoder picked for them.
//
// Records are written and read with msgpack/v5's typed calls (EncodeUint,
// DecodeArrayLen and so on) on pooled encoders and decoders, never by
// reflection: Get decodes a record on every call, and reflection costs
// several times the storage read.
const (
	formatVersion = 1
	fieldsV1      = 11
	fieldsWritten = fieldsV1 + 2 // with the holder epoch and the checksum
)

// storedRecord is a Record as a msgpack value: EncodeMsgpack writes its
// stored form and DecodeMsgpack reads it into r, so it can also sit inside
// other msgpack data. encodeRecord and decodeRecord call the two methods
// directly. The zero value decodes into a new Record.
type storedRecord struct {
	r *Record // nil: encoded as msgpack nil
	// src is the whole input when the decoder reads it through rd: type
	// bytes are then read from src, and byte fields sliced out of it
	// instead of copied.
	src []byte
	rd  *bytes.Reader
	// direct is set while DecodeMsgpack reads through rd.
	direct bool
	// scratch is checksum's buffer; nil means allocate one.
	scratch *[checksumScratch]byte
}

var (
	_ msgpack.CustomEncoder = (*storedRecord)(nil)
	_ msgpack.CustomDecoder = (*storedRecord)(nil)
)

// recordEncoder is a pooled encoder with the writer it appends to.
type recordEncoder struct {
	enc     *msgpack.Encoder
	w       sliceWriter
	scratch [checksumScratch]byte
}

// sliceWriter appends what is written to b; it never fails.
type sliceWriter struct{ b []byte }

func (w *sliceWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}

func (w *sliceWriter) WriteByte(c byte) error {
	w.b = append(w.b, c)
	return nil
}

var encoders = sync.Pool{New: func() any {
	e := new(recordEncoder)
	e.enc = msgpack.NewEncoder(&e.w)
	return e
}}

// maxOverhead is the most a record's stored form takes beyond its
// fingerprint and response: the array header, version, state, two bin 32
// headers, retryable, and five integers of 9 bytes.
const maxOverhead = 1 + 1 + 1 + 5 + 5 + 1 + 5*9 + 9 + 5

// encodeRecord returns the stored form of r.
func encodeRecord(r *Record) []byte {
	e := encoders.Get().(*recordEncoder)
	e.w.b = make([]byte, 0, maxOverhead+len(r.Fingerprint)+len(r.Response))
	if err := (&storedRecord{r: r, scratch: &e.scratch}).EncodeMsgpack(e.enc); err != nil {
		panic("idem: encoding a record into memory: " + err.Error()) // sliceWriter never fails
	}
	b := e.w.b
	e.w.b = nil
	encoders.Put(e)
	return b
}

// EncodeMsgpack writes the stored form of s.r. The calls below pick the
// smallest form, as version 1 does: EncodeUint and EncodeInt a fixint or
// the narrowest 8, 16, 32 or 64-bit integer, EncodeBytes nil or the
// narrowest bin header, EncodeArrayLen a fixarray.
func (s *storedRecord) EncodeMsgpack(enc *msgpack.Encoder) error {
	r := s.r
	if r == nil {
		return enc.EncodeNil()
	}
	if err := enc.EncodeArrayLen(fieldsWritten); err != nil {
		return err
	}
	if err := enc.EncodeUint(formatVersion); err != nil {
		return err
	}
	if err := enc.EncodeUint(uint64(r.State)); err != nil {
		return err
	}
	if err := enc.EncodeBytes(r.Fingerprint); err != nil {
		return err
	}
	if err := enc.EncodeBytes(r.Response); err != nil {
		return err
	}
	if err := enc.EncodeBool(r.Retryable); err != nil {
		return err
	}
	if err := enc.EncodeInt(int64(r.Attempts)); err != nil {
		return err
	}
	if err := enc.EncodeUint(r.Token); err != nil {
		return err
	}
	for _, t := range [...]time.Time{r.CreatedAt, r.UpdatedAt, r.LeaseUntil, r.ExpiresAt} {
		if err := enc.EncodeInt(unixNano(t)); err != nil {
			return err
		}
	}
	if err := enc.EncodeUint(r.holder); err != nil {
		return err
	}
	scratch := s.scratch
	if scratch == nil {
		scratch = new([checksumScratch]byte)
	}
	return enc.EncodeUint32(checksum(r, scratch))
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// checksumScratch is the size of the buffer checksum lays the fixed-size
// fields out in. The encoders and decoders in the pools carry one, since a
// buffer passed to crc32 escapes to the heap.
const checksumScratch = 8 * 10

// checksum returns the CRC-32C of r's stored fields: state, fingerprint,
// response (each with its length, and whether it is nil), retryable,
// attempts, token, the four instants as stored, and the holder epoch.
func checksum(r *Record, b *[checksumScratch]byte) uint32 {
	binary.BigEndian.PutUint64(b[0:], uint64(r.State))
	binary.BigEndian.PutUint64(b[8:], lenOrNil(r.Fingerprint))
	binary.BigEndian.PutUint64(b[16:], lenOrNil(r.Response))
	binary.BigEndian.PutUint64(b[24:], uint64(r.Attempts)<<1|boolBit(r.Retryable))
	binary.BigEndian.PutUint64(b[32:], r.Token)
	binary.BigEndian.PutUint64(b[40:], uint64(unixNano(r.CreatedAt)))
	binary.BigEndian.PutUint64(b[48:], uint64(unixNano(r.UpdatedAt)))
	binary.BigEndian.PutUint64(b[56:], uint64(unixNano(r.LeaseUntil)))
	binary.BigEndian.PutUint64(b[64:], uint64(unixNano(r.ExpiresAt)))
	binary.BigEndian.PutUint64(b[72:], r.holder)
	c := crc32.Update(0, castagnoli, b[:])
	c = crc32.Update(c, castagnoli, r.Fingerprint)
	return crc32.Update(c, castagnoli, r.Response)
}

// lenOrNil returns len(p), or the largest uint64 for a nil p, so that the
// checksum tells nil from empty as the stored form does.
func lenOrNil(p []byte) uint64 {
	if p == nil {
		return math.MaxUint64
	}
	return uint64(len(p))
}

func boolBit(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// The instants Unix nanoseconds can hold (1677 to 2262). A time outside
// them is stored as the nearest one: UnixNano would wrap around, turning a
// record kept "for ever" into one that expired long ago.
var (
	minNanoTime = time.Unix(0, math.MinInt64)
	maxNanoTime = time.Unix(0, math.MaxInt64)
)

// unixNano returns t as stored: Unix nanoseconds, 0 for the zero time.
func unixNano(t time.Time) int64 {
	switch {
	case t.IsZero():
		return 0
	case t.After(maxNanoTime):
		return math.MaxInt64
	case t.Before(minNanoTime):
		return math.MinInt64
	}
	return t.UnixNano()
}

// recordDecoder is a pooled decoder with the reader it reads from. A
// bytes.Reader is an io.ByteScanner, so the decoder reads from it directly,
// without buffering: the reader's position is the decoder's.
type recordDecoder struct {
	dec     *msgpack.Decoder // reads rd, always
	rd      bytes.Reader
	scratch [checksumScratch]byte
}

var decoders = sync.Pool{New: func() any {
	d := new(recordDecoder)
	d.dec = msgpack.NewDecoder(&d.rd)
	return d
}}

// decodeRecord decodes the stored form of the record under key. Any input
// that is not a record gives an error wrapping ErrCorrupt and naming key;
// it never panics. The Fingerprint and Response of the result share memory
// with data.
func decodeRecord(key string, data []byte) (*Record, error) {
	r := &Record{Key: key}
	d := decoders.Get().(*recordDecoder)
	d.rd.Reset(data)
	err := (&storedRecord{r: r, src: data, rd: &d.rd, scratch: &d.scratch}).DecodeMsgpack(d.dec)
	d.rd.Reset(nil) // the pool keeps no reference to data
	decoders.Put(d)
	if err != nil {
		return nil, fmt.Errorf("%w: key %q: %s", ErrCorrupt, key, err)
	}
	return r, nil
}

type decodeError string

func (e decodeError) Error() string { return string(e) }

const errShort = decodeError("truncated data")

// DecodeMsgpack reads a stored record into s.r, leaving its Key as it is.
// Each field's type byte is checked before msgpack/v5 decodes it, because
// the library alone would take nil for 0 or false and wrap a negative
// integer into a uint64; version 1 refuses those.
func (s *storedRecord) DecodeMsgpack(dec *msgpack.Decoder) error {
	if s.r == nil {
		s.r = new(Record)
	}
	r := s.r
	s.direct = s.rd != nil && dec.Buffered() == io.Reader(s.rd) && int(s.rd.Size()) == len(s.src)
	c, err := s.peek(dec)
	if err != nil {
		return err
	}
	if !msgpcode.IsFixedArray(c) && c != msgpcode.Array16 && c != msgpcode.Array32 {
		return fmt.Errorf("not an array (type byte 0x%02x)", c)
	}
	var n int
	if s.direct {
		n, err = s.directLen(c)
	} else {
		n, err = dec.DecodeArrayLen()
	}
	if err != nil {
		return short(err)
	}
	if n < 1 {
		return decodeError("empty record")
	}
	v, err := s.decodeUint(dec)
	if err != nil {
		return fmt.Errorf("format version: %w", err)
	}
	if v != formatVersion {
		return fmt.Errorf("unsupported format version %d (this release reads version %d)", v, formatVersion)
	}
	if n < fieldsV1 {
		return fmt.Errorf("record has %d fields, version 1 has %d", n, fieldsV1)
	}
	st, err := s.decodeUint(dec)
	if err != nil {
		return fmt.Errorf("state: %w", err)
	}
	if st < uint64(StateInProgress) || st > uint64(StateFailed) {
		return fmt.Errorf("unknown state %d", st)
	}
	r.State = State(st)
	if r.Fingerprint, err = s.decodeBin(dec); err != nil {
		return fmt.Errorf("fingerprint: %w", err)
	}
	if r.Response, err = s.decodeBin(dec); err != nil {
		return fmt.Errorf("response: %w", err)
	}
	if r.Retryable, err = s.decodeBool(dec); err != nil {
		return fmt.Errorf("retryable: %w", err)
	}
	att, err := s.decodeInt(dec)
	if err != nil {
		return fmt.Errorf("attempts: %w", err)
	}
	if att < 0 || att > math.MaxInt32 {
		return fmt.Errorf("attempts %d out of range", att)
	}
	r.Attempts = int(att)
	if r.Token, err = s.decodeUint(dec); err != nil {
		return fmt.Errorf("token: %w", err)
	}
	for _, f := range [...]struct {
		name string
		t    *time.Time
	}{{"created", &r.CreatedAt}, {"updated", &r.UpdatedAt}, {"lease", &r.LeaseUntil}, {"expires", &r.ExpiresAt}} {
		ns, err := s.decodeInt(dec)
		if err != nil {
			return fmt.Errorf("%s time: %w", f.name, err)
		}
		if ns != 0 {
			*f.t = time.Unix(0, ns)
		}
	}
	// The holder epoch and the checksum, which this release appends to
	// version 1's elements; a record from an earlier release has neither.
	known := fieldsV1
	if n > known {
		known++
		if r.holder, err = s.decodeUint(dec); err != nil {
			return fmt.Errorf("holder epoch: %w", err)
		}
	}
	if n > known {
		known++
		sum, err := s.decodeUint(dec)
		if err != nil {
			return fmt.Errorf("checksum: %w", err)
		}
		scratch := s.scratch
		if scratch == nil {
			scratch = new([checksumScratch]byte)
		}
		if want := checksum(r, scratch); sum != uint64(want) {
			return fmt.Errorf("checksum mismatch: stored %08x, the fields give %08x (the record was altered in storage)", sum, want)
		}
	}
	// Elements past the known ones belong to later versions. They are
	// skipped, so that a record inside other msgpack data leaves the
	// decoder at the value after it.
	if err := s.skipValues(dec, n-known); err != nil {
		return fmt.Errorf("elements after version 1's: %w", err)
	}
	return nil
}

// peek returns the type byte of the next value without consuming it.
func (s *storedRecord) peek(dec *msgpack.Decoder) (byte, error) {
	if s.direct && s.rd.Len() > 0 {
		// What PeekCode returns, without its two calls through
		// interfaces: this runs before every field.
		return s.src[len(s.src)-s.rd.Len()], nil
	}
	return peekCode(dec)
}

func peekCode(dec *msgpack.Decoder) (byte, error) {
	c, err := dec.PeekCode()
	return c, short(err)
}

// short reports the end of the input as errShort.
func short(err error) error {
	if err == nil {
		return nil
	}
	return shortErr(err)
}

func shortErr(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return errShort
	}
	return err
}

func isInt(c byte) bool {
	return msgpcode.IsFixedNum(c) || (c >= msgpcode.Uint8 && c <= msgpcode.Uint64) || (c >= msgpcode.Int8 && c <= msgpcode.Int64)
}

// decodeInt reads any msgpack integer as an int64.
func (s *storedRecord) decodeInt(dec *msgpack.Decoder) (int64, error) {
	i, u, big, err := s.decodeInteger(dec)
	switch {
	case err != nil:
		return 0, err
	case big:
		return 0, fmt.Errorf("integer %d out of range", u)
	}
	return i, nil
}

// decodeUint reads a non-negative msgpack integer.
func (s *storedRecord) decodeUint(dec *msgpack.Decoder) (uint64, error) {
	i, u, big, err := s.decodeInteger(dec)
	switch {
	case err != nil:
		return 0, err
	case big:
		return u, nil
	case i < 0:
		return 0, fmt.Errorf("negative value %d", i)
	}
	return uint64(i), nil
}

// decodeInteger reads any msgpack integer: as i, or, for a uint 64 above
// the largest int64, as u with big set.
func (s *storedRecord) decodeInteger(dec *msgpack.Decoder) (i int64, u uint64, big bool, err error) {
	c, err := s.peek(dec)
	switch {
	case err != nil:
		return 0, 0, false, err
	case !isInt(c):
		return 0, 0, false, fmt.Errorf("not an integer (type byte 0x%02x)", c)
	case s.direct:
		return s.directInteger(c)
	case c == msgpcode.Uint64:
		if u, err = dec.DecodeUint64(); err != nil {
			return 0, 0, false, short(err)
		}
		if u > math.MaxInt64 {
			return 0, u, true, nil
		}
		return int64(u), 0, false, nil
	}
	i, err = dec.DecodeInt64()
	return i, 0, false, short(err)
}

func (s *storedRecord) decodeBool(dec *msgpack.Decoder) (bool, error) {
	c, err := s.peek(dec)
	if err != nil {
		return false, err
	}
	if c != msgpcode.False && c != msgpcode.True {
		return false, fmt.Errorf("not a bool (type byte 0x%02x)", c)
	}
	if s.direct {
		_, err := s.next(1)
		return c == msgpcode.True, err
	}
	v, err := dec.DecodeBool()
	return v, short(err)
}

// copyChunk bounds each step of a copied byte field, so that a corrupt
// length allocates no more than the input holds, plus one chunk.
const copyChunk = 64 << 10

// decodeBin reads bin or str data, or nil.
func (s *storedRecord) decodeBin(dec *msgpack.Decoder) ([]byte, error) {
	c, err := s.peek(dec)
	if err != nil {
		return nil, err
	}
	if c != msgpcode.Nil && !msgpcode.IsString(c) && !msgpcode.IsBin(c) {
		return nil, fmt.Errorf("not binary data (type byte 0x%02x)", c)
	}
	if s.direct {
		// Slice the field out of s.src. DecodeBytes would copy it, after
		// allocating whatever length the header claims.
		if c == msgpcode.Nil {
			_, err := s.next(1)
			return nil, err
		}
		n, err := s.directLen(c)
		if err != nil {
			return nil, err
		}
		b, err := s.next(n)
		if err != nil {
			return nil, err
		}
		return b[:n:n], nil
	}
	n, err := dec.DecodeBytesLen()
	if err != nil {
		return nil, short(err)
	}
	if n < 0 {
		return nil, nil // nil
	}
	b := make([]byte, 0, min(n, copyChunk))
	for len(b) < n {
		k := min(n-len(b), copyChunk)
		b = slices.Grow(b, k)[:len(b)+k]
		if err := dec.ReadFull(b[len(b)-k:]); err != nil {
			return nil, short(err)
		}
	}
	return b, nil
}

// skipValues skips the next n msgpack values. It keeps a count of the
// values still to skip instead of recursing into arrays and maps, so that
// deeply nested input cannot exhaust the stack.
func (s *storedRecord) skipValues(dec *msgpack.Decoder, n int) error {
	for ; n > 0; n-- {
		c, err := s.peek(dec)
		if err != nil {
			return err
		}
		var m, l int
		switch {
		case msgpcode.IsFixedArray(c) || c == msgpcode.Array16 || c == msgpcode.Array32:
			m, err = dec.DecodeArrayLen()
		case msgpcode.IsFixedMap(c) || c == msgpcode.Map16 || c == msgpcode.Map32:
			m, err = dec.DecodeMapLen()
			m *= 2
		// In place when reading s.src: Skip would first read the data
		// into a buffer of up to twice 1 MB, whatever the input holds.
		case s.direct && (msgpcode.IsString(c) || msgpcode.IsBin(c)):
			if l, err = dec.DecodeBytesLen(); err == nil {
				_, err = s.next(l)
			}
		case s.direct && msgpcode.IsExt(c):
			if _, l, err = dec.DecodeExtHeader(); err == nil {
				_, err = s.next(l)
			}
		default:
			err = dec.Skip()
		}
		if err != nil {
			return short(err)
		}
		n += m
	}
	return nil
}

// The direct reads below parse s.src at the reader's position and move the
// reader past what they read, as msgpack/v5's calls would; each is called
// with the type byte c that peek returned, already checked by its caller.

// next returns the next n bytes of s.src and moves the reader past them.
func (s *storedRecord) next(n int) ([]byte, error) {
	off := len(s.src) - s.rd.Len()
	if n < 0 || n > s.rd.Len() {
		return nil, errShort
	}
	if _, err := s.rd.Seek(int64(n), io.SeekCurrent); err != nil {
		return nil, err
	}
	return s.src[off : off+n], nil
}

// directInteger reads the integer of type byte c: as i, or, for a uint 64
// above the largest int64, as u with big set.
func (s *storedRecord) directInteger(c byte) (i int64, u uint64, big bool, err error) {
	if msgpcode.IsFixedNum(c) {
		_, err = s.next(1)
		return int64(int8(c)), 0, false, err
	}
	size := 1 << ((c - msgpcode.Uint8) & 3) // Uint8..Uint64 and Int8..Int64 are in size order
	b, err := s.next(1 + size)
	if err != nil {
		return 0, 0, false, err
	}
	b = b[1:]
	switch c {
	case msgpcode.Uint8:
		return int64(b[0]), 0, false, nil
	case msgpcode.Uint16:
		return int64(binary.BigEndian.Uint16(b)), 0, false, nil
	case msgpcode.Uint32:
		return int64(binary.BigEndian.Uint32(b)), 0, false, nil
	case msgpcode.Uint64:
		u = binary.BigEndian.Uint64(b)
		if u > math.MaxInt64 {
			return 0, u, true, nil
		}
		return int64(u), 0, false, nil
	case msgpcode.Int8:
		return int64(int8(b[0])), 0, false, nil
	case msgpcode.Int16:
		return int64(int16(binary.BigEndian.Uint16(b))), 0, false, nil
	case msgpcode.Int32:
		return int64(int32(binary.BigEndian.Uint32(b))), 0, false, nil
	default: // Int64
		return int64(binary.BigEndian.Uint64(b)), 0, false, nil
	}
}

// directLen reads the header of an array, a string or a bin of type byte
// c and returns its length.
func (s *storedRecord) directLen(c byte) (int, error) {
	switch {
	case msgpcode.IsFixedArray(c):
		_, err := s.next(1)
		return int(c & msgpcode.FixedArrayMask), err
	case msgpcode.IsFixedString(c):
		_, err := s.next(1)
		return int(c & msgpcode.FixedStrMask), err
	}
	var size int
	switch c {
	case msgpcode.Str8, msgpcode.Bin8:
		size = 1
	case msgpcode.Str16, msgpcode.Bin16, msgpcode.Array16:
		size = 2
	default: // Str32, Bin32, Array32
		size = 4
	}
	b, err := s.next(1 + size)
	if err != nil {
		return 0, err
	}
	switch size {
	case 1:
		return int(b[1]), nil
	case 2:
		return int(binary.BigEndian.Uint16(b[1:])), nil
	}
	return int(binary.BigEndian.Uint32(b[1:])), nil
}
