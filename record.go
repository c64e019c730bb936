package idem

import (
	"encoding/binary"
	"fmt"
	"math"
	"time"
)

// State is the state of a stored record. The numbers are stored on disk and
// in Redis: they are never renumbered.
type State uint8

const (
	// StateInProgress means a lease holder is executing the request.
	StateInProgress State = 1
	// StateCompleted means the request finished; Response is replayed to
	// every retry.
	StateCompleted State = 2
	// StateFailed means the request finished with a failure. Response is
	// replayed to retries unless Retryable is set, in which case a later
	// Begin may run the request again.
	StateFailed State = 3
)

// String returns "in-progress", "completed" or "failed".
func (s State) String() string {
	switch s {
	case StateInProgress:
		return "in-progress"
	case StateCompleted:
		return "completed"
	case StateFailed:
		return "failed"
	default:
		return fmt.Sprintf("unknown state: %d", uint8(s))
	}
}

// ParseState returns the State whose String is s.
func ParseState(s string) (State, error) {
	for _, st := range []State{StateInProgress, StateCompleted, StateFailed} {
		if st.String() == s {
			return st, nil
		}
	}
	return 0, fmt.Errorf("idem: unknown state %q (want in-progress, completed or failed)", s)
}

// Record is what the store keeps for one key.
//
// Records returned by the store are the caller's own: they may be kept and
// modified without affecting the store.
type Record struct {
	Key         string
	State       State
	Fingerprint []byte // caller's digest of the request; a retry must match it
	Response    []byte // opaque bytes replayed to retries
	Retryable   bool   // StateFailed only: a later Begin may run the request again
	Attempts    int    // leases granted for this key so far
	Token       uint64 // fencing token of the newest lease; grows with every lease
	CreatedAt   time.Time
	UpdatedAt   time.Time
	LeaseUntil  time.Time // StateInProgress only
	ExpiresAt   time.Time
}

// Expired reports whether the record's life has ended at now.
func (r *Record) Expired(now time.Time) bool {
	return !now.Before(r.ExpiresAt)
}

// LeaseLapsed reports whether the record is in progress with a lease that
// has lapsed at now, so that the next Begin takes it over.
func (r *Record) LeaseLapsed(now time.Time) bool {
	return r.State == StateInProgress && !now.Before(r.LeaseUntil)
}

// Finished reports whether the record is replayed to retries: completed, or
// failed and not retryable.
func (r *Record) Finished() bool {
	return r.State == StateCompleted || (r.State == StateFailed && !r.Retryable)
}

// The stored form of a record is a msgpack array whose first element is the
// format version. Version 1 holds, in order: version, state, fingerprint
// (bin or nil), response (bin or nil), retryable, attempts, token, and the
// four instants as Unix nanoseconds (0 for the zero time): created, updated,
// lease-until, expires. The key is not stored: it is the storage key.
//
// A later version may append elements; a reader of version 1 ignores
// elements past the ones it knows, so additions need no new version.
// Changing the meaning of an element needs a new version number.
//
// The encoder and decoder are written by hand rather than by reflection:
// Get decodes a record on every call, and reflection costs several times
// the storage read.
const (
	formatVersion = 1
	fieldsV1      = 11
)

// EncodeRecord returns the stored form of r. It is exported for backends
// and tools; the store calls it itself.
func EncodeRecord(r *Record) []byte {
	return appendRecord(make([]byte, 0, 64+len(r.Fingerprint)+len(r.Response)), r)
}

func appendRecord(b []byte, r *Record) []byte {
	b = append(b, 0x90|fieldsV1)
	b = appendUint(b, formatVersion)
	b = appendUint(b, uint64(r.State))
	b = appendBin(b, r.Fingerprint)
	b = appendBin(b, r.Response)
	if r.Retryable {
		b = append(b, 0xc3)
	} else {
		b = append(b, 0xc2)
	}
	b = appendInt(b, int64(r.Attempts))
	b = appendUint(b, r.Token)
	b = appendTime(b, r.CreatedAt)
	b = appendTime(b, r.UpdatedAt)
	b = appendTime(b, r.LeaseUntil)
	b = appendTime(b, r.ExpiresAt)
	return b
}

// DecodeRecord decodes the stored form of the record under key. Any input
// that is not a record gives an error wrapping ErrCorrupt and naming key;
// it never panics. The Fingerprint and Response of the result share memory
// with data.
func DecodeRecord(key string, data []byte) (*Record, error) {
	r := &Record{Key: key}
	if err := decodeInto(r, data); err != nil {
		return nil, fmt.Errorf("%w: key %q: %s", ErrCorrupt, key, err)
	}
	return r, nil
}

type decoder struct {
	b   []byte
	off int
}

type decodeError string

func (e decodeError) Error() string { return string(e) }

const (
	errShort = decodeError("truncated data")
)

func decodeInto(r *Record, data []byte) error {
	d := decoder{b: data}
	n, err := d.arrayLen()
	if err != nil {
		return err
	}
	if n < 1 {
		return decodeError("empty record")
	}
	v, err := d.uint()
	if err != nil {
		return fmt.Errorf("format version: %w", err)
	}
	if v != formatVersion {
		return fmt.Errorf("unsupported format version %d (this release reads version %d)", v, formatVersion)
	}
	if n < fieldsV1 {
		return fmt.Errorf("record has %d fields, version 1 has %d", n, fieldsV1)
	}
	st, err := d.uint()
	if err != nil {
		return fmt.Errorf("state: %w", err)
	}
	if st < uint64(StateInProgress) || st > uint64(StateFailed) {
		return fmt.Errorf("unknown state %d", st)
	}
	r.State = State(st)
	if r.Fingerprint, err = d.bin(); err != nil {
		return fmt.Errorf("fingerprint: %w", err)
	}
	if r.Response, err = d.bin(); err != nil {
		return fmt.Errorf("response: %w", err)
	}
	if r.Retryable, err = d.bool(); err != nil {
		return fmt.Errorf("retryable: %w", err)
	}
	att, err := d.int()
	if err != nil {
		return fmt.Errorf("attempts: %w", err)
	}
	if att < 0 || att > math.MaxInt32 {
		return fmt.Errorf("attempts %d out of range", att)
	}
	r.Attempts = int(att)
	if r.Token, err = d.uint(); err != nil {
		return fmt.Errorf("token: %w", err)
	}
	for _, f := range []struct {
		name string
		t    *time.Time
	}{{"created", &r.CreatedAt}, {"updated", &r.UpdatedAt}, {"lease", &r.LeaseUntil}, {"expires", &r.ExpiresAt}} {
		ns, err := d.int()
		if err != nil {
			return fmt.Errorf("%s time: %w", f.name, err)
		}
		if ns != 0 {
			*f.t = time.Unix(0, ns)
		}
	}
	// Elements past the known ones belong to later versions and are ignored.
	return nil
}

func (d *decoder) byte() (byte, error) {
	if d.off >= len(d.b) {
		return 0, errShort
	}
	c := d.b[d.off]
	d.off++
	return c, nil
}

func (d *decoder) next(n int) ([]byte, error) {
	if n < 0 || len(d.b)-d.off < n {
		return nil, errShort
	}
	p := d.b[d.off : d.off+n : d.off+n]
	d.off += n
	return p, nil
}

func (d *decoder) arrayLen() (int, error) {
	c, err := d.byte()
	if err != nil {
		return 0, err
	}
	switch {
	case c&0xf0 == 0x90:
		return int(c & 0x0f), nil
	case c == 0xdc:
		p, err := d.next(2)
		if err != nil {
			return 0, err
		}
		return int(binary.BigEndian.Uint16(p)), nil
	case c == 0xdd:
		p, err := d.next(4)
		if err != nil {
			return 0, err
		}
		return int(binary.BigEndian.Uint32(p) & math.MaxInt32), nil
	}
	return 0, fmt.Errorf("not an array (type byte 0x%02x)", c)
}

// int reads any msgpack integer as an int64.
func (d *decoder) int() (int64, error) {
	c, err := d.byte()
	if err != nil {
		return 0, err
	}
	switch {
	case c <= 0x7f:
		return int64(c), nil
	case c >= 0xe0:
		return int64(int8(c)), nil
	}
	var p []byte
	switch c {
	case 0xcc, 0xd0:
		p, err = d.next(1)
	case 0xcd, 0xd1:
		p, err = d.next(2)
	case 0xce, 0xd2:
		p, err = d.next(4)
	case 0xcf, 0xd3:
		p, err = d.next(8)
	default:
		return 0, fmt.Errorf("not an integer (type byte 0x%02x)", c)
	}
	if err != nil {
		return 0, err
	}
	switch c {
	case 0xcc:
		return int64(p[0]), nil
	case 0xcd:
		return int64(binary.BigEndian.Uint16(p)), nil
	case 0xce:
		return int64(binary.BigEndian.Uint32(p)), nil
	case 0xcf:
		u := binary.BigEndian.Uint64(p)
		if u > math.MaxInt64 {
			return 0, fmt.Errorf("integer %d out of range", u)
		}
		return int64(u), nil
	case 0xd0:
		return int64(int8(p[0])), nil
	case 0xd1:
		return int64(int16(binary.BigEndian.Uint16(p))), nil
	case 0xd2:
		return int64(int32(binary.BigEndian.Uint32(p))), nil
	default: // 0xd3
		return int64(binary.BigEndian.Uint64(p)), nil
	}
}

// uint reads a non-negative msgpack integer.
func (d *decoder) uint() (uint64, error) {
	if d.off < len(d.b) && d.b[d.off] == 0xcf {
		p, err := d.next(9)
		if err != nil {
			return 0, err
		}
		return binary.BigEndian.Uint64(p[1:]), nil
	}
	v, err := d.int()
	if err != nil {
		return 0, err
	}
	if v < 0 {
		return 0, fmt.Errorf("negative value %d", v)
	}
	return uint64(v), nil
}

func (d *decoder) bool() (bool, error) {
	c, err := d.byte()
	if err != nil {
		return false, err
	}
	switch c {
	case 0xc2:
		return false, nil
	case 0xc3:
		return true, nil
	}
	return false, fmt.Errorf("not a bool (type byte 0x%02x)", c)
}

// bin reads bin or str data, or nil.
func (d *decoder) bin() ([]byte, error) {
	c, err := d.byte()
	if err != nil {
		return nil, err
	}
	var n int
	switch {
	case c == 0xc0:
		return nil, nil
	case c&0xe0 == 0xa0:
		n = int(c & 0x1f)
	case c == 0xc4 || c == 0xd9:
		p, err := d.next(1)
		if err != nil {
			return nil, err
		}
		n = int(p[0])
	case c == 0xc5 || c == 0xda:
		p, err := d.next(2)
		if err != nil {
			return nil, err
		}
		n = int(binary.BigEndian.Uint16(p))
	case c == 0xc6 || c == 0xdb:
		p, err := d.next(4)
		if err != nil {
			return nil, err
		}
		n = int(binary.BigEndian.Uint32(p) & math.MaxInt32)
	default:
		return nil, fmt.Errorf("not binary data (type byte 0x%02x)", c)
	}
	return d.next(n)
}

func appendUint(b []byte, v uint64) []byte {
	switch {
	case v <= 0x7f:
		return append(b, byte(v))
	case v <= math.MaxUint8:
		return append(b, 0xcc, byte(v))
	case v <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, 0xcd), uint16(v))
	case v <= math.MaxUint32:
		return binary.BigEndian.AppendUint32(append(b, 0xce), uint32(v))
	}
	return binary.BigEndian.AppendUint64(append(b, 0xcf), v)
}

func appendInt(b []byte, v int64) []byte {
	switch {
	case v >= 0:
		return appendUint(b, uint64(v))
	case v >= -32:
		return append(b, byte(v))
	case v >= math.MinInt8:
		return append(b, 0xd0, byte(v))
	case v >= math.MinInt16:
		return binary.BigEndian.AppendUint16(append(b, 0xd1), uint16(v))
	case v >= math.MinInt32:
		return binary.BigEndian.AppendUint32(append(b, 0xd2), uint32(v))
	}
	return binary.BigEndian.AppendUint64(append(b, 0xd3), uint64(v))
}

func appendBin(b []byte, p []byte) []byte {
	if p == nil {
		return append(b, 0xc0)
	}
	n := len(p)
	switch {
	case n <= math.MaxUint8:
		b = append(b, 0xc4, byte(n))
	case n <= math.MaxUint16:
		b = binary.BigEndian.AppendUint16(append(b, 0xc5), uint16(n))
	default:
		b = binary.BigEndian.AppendUint32(append(b, 0xc6), uint32(n))
	}
	return append(b, p...)
}

// The instants Unix nanoseconds can hold (1677 to 2262). A time outside
// them is stored as the nearest one: UnixNano would wrap around, turning a
// record kept "for ever" into one that expired long ago.
var (
	minNanoTime = time.Unix(0, math.MinInt64)
	maxNanoTime = time.Unix(0, math.MaxInt64)
)

func appendTime(b []byte, t time.Time) []byte {
	switch {
	case t.IsZero():
		return append(b, 0)
	case t.After(maxNanoTime):
		t = maxNanoTime
	case t.Before(minNanoTime):
		t = minNanoTime
	}
	return appendInt(b, t.UnixNano())
}
