package idem

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"
)

// The files under testdata/records-v1 pin format version 1: each NAME.json
// describes a record and NAME.msgpack holds its stored form. The canonical
// ones were written by the hand-written encoder this format started with;
// the others were written by other msgpack encoders (other integer widths,
// str instead of bin, longer array headers, elements from a later release)
// and must still decode. Once checked in, a file is never rewritten:
// -golden-write only adds the cases whose files are missing.
const goldenDir = "testdata/records-v1"

var goldenWrite = flag.Bool("golden-write", false, "write the missing files under "+goldenDir)

// goldenCase is the content of one NAME.json.
type goldenCase struct {
	Note string `json:"note"`
	// Canonical: the encoder writes exactly NAME.msgpack for Record.
	// Otherwise another encoder wrote it, and it only has to decode.
	Canonical bool `json:"canonical"`
	// Record is what NAME.msgpack decodes to. Byte fields: base64, null
	// for nil ("" is an empty, non-nil slice). Times: RFC 3339, the zero
	// time for 0.
	Record Record `json:"record"`
}

func TestGoldenRecordsV1(t *testing.T) {
	if *goldenWrite {
		writeGolden(t)
	}
	names, err := filepath.Glob(filepath.Join(goldenDir, "*.json"))
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(names), 20, "the golden records are missing")
	for _, name := range names {
		base := strings.TrimSuffix(name, ".json")
		t.Run(filepath.Base(base), func(t *testing.T) {
			js, err := os.ReadFile(name)
			require.NoError(t, err)
			var c goldenCase
			require.NoError(t, json.Unmarshal(js, &c))
			data, err := os.ReadFile(base + ".msgpack")
			require.NoError(t, err)

			got, err := decodeRecord(c.Record.Key, data)
			require.NoError(t, err)
			assertSameRecord(t, &c.Record, got)
			if c.Canonical {
				assert.Equal(t, data, v1Form(t, encodeRecord(&c.Record)), "the encoder's bytes differ from version 1's")
				assert.Equal(t, data, v1Form(t, encodeRecord(got)), "decoding and encoding changed the bytes")
			}
		})
	}
}

// assertSameRecord compares two records field by field, telling a nil byte
// slice from an empty one and comparing times as instants.
func assertSameRecord(t *testing.T, want, got *Record) {
	t.Helper()
	assert.Equal(t, want.Key, got.Key, "key")
	assert.Equal(t, want.State, got.State, "state")
	assert.Equal(t, want.Fingerprint, got.Fingerprint, "fingerprint")
	assert.Equal(t, want.Fingerprint == nil, got.Fingerprint == nil, "fingerprint nil")
	assert.Equal(t, want.Response, got.Response, "response")
	assert.Equal(t, want.Response == nil, got.Response == nil, "response nil")
	assert.Equal(t, want.Retryable, got.Retryable, "retryable")
	assert.Equal(t, want.Attempts, got.Attempts, "attempts")
	assert.Equal(t, want.Token, got.Token, "token")
	for _, p := range []struct {
		name      string
		want, got time.Time
	}{
		{"created", want.CreatedAt, got.CreatedAt},
		{"updated", want.UpdatedAt, got.UpdatedAt},
		{"lease", want.LeaseUntil, got.LeaseUntil},
		{"expires", want.ExpiresAt, got.ExpiresAt},
	} {
		assert.True(t, p.want.Equal(p.got), "%s time: want %v, got %v", p.name, p.want, p.got)
		assert.Equal(t, p.want.IsZero(), p.got.IsZero(), "%s time zero", p.name)
	}
}

// goldenCases returns the golden records. raw, when set, writes the bytes
// of a non-canonical case with other encoders.
func goldenCases() []struct {
	name string
	c    goldenCase
	raw  func(r *Record) []byte
} {
	t0 := time.Date(2026, 3, 4, 5, 6, 7, 890, time.UTC)
	fp := bytes.Repeat([]byte{0xa5}, 32)
	resp := []byte(`{"id":"ch_1","status":"succeeded","amount":1999}`)
	base := func(key string, st State) Record {
		return Record{Key: key, State: st, Fingerprint: fp, Response: resp, Attempts: 1, Token: 1,
			CreatedAt: t0, UpdatedAt: t0.Add(time.Second), ExpiresAt: t0.Add(24 * time.Hour)}
	}
	ns := func(n int64) time.Time { return time.Unix(0, n).UTC() }
	type gc = struct {
		name string
		c    goldenCase
		raw  func(r *Record) []byte
	}
	var cs []gc
	add := func(name, note string, r Record) {
		cs = append(cs, gc{name: name, c: goldenCase{Note: note, Canonical: true, Record: r}})
	}
	other := func(name, note string, r Record, raw func(r *Record) []byte) {
		cs = append(cs, gc{name: name, c: goldenCase{Note: note, Record: r}, raw: raw})
	}

	r := base("in-progress", StateInProgress)
	r.Response, r.LeaseUntil = nil, t0.Add(30*time.Second)
	add("in-progress", "a fresh lease: no response, lease-until set", r)

	add("completed", "a completed record with a SHA-256 fingerprint and a JSON response", base("completed", StateCompleted))

	r = base("failed-retryable", StateFailed)
	r.Retryable, r.Attempts, r.Token = true, 3, 3
	add("failed-retryable", "failed, retryable", r)

	r = base("failed-final", StateFailed)
	r.Attempts, r.Token = 2, 2
	add("failed-final", "failed, not retryable", r)

	r = base("nil-bytes", StateCompleted)
	r.Fingerprint, r.Response = nil, nil
	add("nil-bytes", "nil fingerprint and response: msgpack nil", r)

	r = base("empty-bytes", StateCompleted)
	r.Fingerprint, r.Response = []byte{}, []byte{}
	add("empty-bytes", "empty, non-nil fingerprint and response: zero-length bin 8", r)

	r = Record{Key: "zero", State: StateInProgress}
	add("zero", "zero attempts, token and times: every integer a positive fixint 0", r)

	r = base("response-255", StateCompleted)
	r.Response = bytes.Repeat([]byte("x"), 255)
	add("response-255", "the longest bin 8", r)

	r = base("response-256", StateCompleted)
	r.Response = bytes.Repeat([]byte("y"), 256)
	add("response-256", "the shortest bin 16", r)

	r = base("response-70000", StateCompleted)
	r.Response = bytes.Repeat([]byte("0123456789abcdef"), 4375)
	add("response-70000", "a 70000-byte response: bin 32", r)

	// Integer widths: each field at the edges of the msgpack integer forms.
	for i, v := range []struct {
		attempts int
		token    uint64
		times    [4]int64
	}{
		{0, 0, [4]int64{1, 127, 128, 255}},
		{127, 127, [4]int64{256, 65535, 65536, math.MaxUint32}},
		{128, 128, [4]int64{math.MaxUint32 + 1, math.MaxInt64, -1, -32}},
		{255, 255, [4]int64{-33, -128, -129, -32768}},
		{256, 256, [4]int64{-32769, math.MinInt32, math.MinInt32 - 1, math.MinInt64}},
		{65535, 65535, [4]int64{t0.UnixNano(), -t0.UnixNano(), 1 << 62, -1 << 62}},
		{65536, 65536, [4]int64{0, 0, 0, 1}},
		{math.MaxInt32, math.MaxUint32, [4]int64{1, 0, 0, 0}},
		{1, math.MaxUint32 + 1, [4]int64{1, 2, 3, 4}},
		{1, math.MaxInt64, [4]int64{1, 2, 3, 4}},
		{1, math.MaxInt64 + 1, [4]int64{1, 2, 3, 4}},
		{1, math.MaxUint64, [4]int64{1, 2, 3, 4}},
	} {
		r := base("ints", State(1+i%3))
		r.Attempts, r.Token = v.attempts, v.token
		tt := [4]time.Time{}
		for j, n := range v.times {
			if n != 0 {
				tt[j] = ns(n)
			}
		}
		r.CreatedAt, r.UpdatedAt, r.LeaseUntil, r.ExpiresAt = tt[0], tt[1], tt[2], tt[3]
		name := "ints-" + string(rune('a'+i))
		r.Key = name
		add(name, "integer forms: attempts, token and the four times at the edges of fixint, int/uint 8, 16, 32 and 64", r)
	}

	r = base("before-1970", StateCompleted)
	r.CreatedAt = time.Date(1969, 7, 20, 20, 17, 40, 123456789, time.UTC)
	r.UpdatedAt = time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC)
	r.LeaseUntil = time.Date(1969, 12, 31, 23, 59, 59, 999999999, time.UTC)
	r.ExpiresAt = time.Date(1677, 9, 21, 0, 12, 44, 0, time.UTC)
	add("before-1970", "instants before 1970: negative Unix nanoseconds", r)

	r = base("time-limits", StateCompleted)
	r.CreatedAt, r.ExpiresAt = minNanoTime.UTC(), maxNanoTime.UTC()
	add("time-limits", "the earliest and latest instants Unix nanoseconds hold (times beyond them are stored as these)", r)

	// Written by other encoders: only decoding is pinned.
	r = base("reflection", StateCompleted)
	r.LeaseUntil = time.Time{}
	other("reflection", "msgpack/v5's reflection encoder on a struct of typed fields, without compact integers: uint8 as uint 8, int64 as int 64, uint64 as uint 64", r,
		func(r *Record) []byte {
			type rec struct {
				//lint:ignore U1000 read by msgpack through its tag
				_msgpack    struct{} `msgpack:",as_array"`
				Version     uint8
				State       uint8
				Fingerprint []byte
				Response    []byte
				Retryable   bool
				Attempts    int32
				Token       uint64
				CreatedAt   int64
				UpdatedAt   int64
				LeaseUntil  int64
				ExpiresAt   int64
			}
			b, err := msgpack.Marshal(&rec{Version: 1, State: uint8(r.State), Fingerprint: r.Fingerprint, Response: r.Response,
				Retryable: r.Retryable, Attempts: int32(r.Attempts), Token: r.Token, CreatedAt: r.CreatedAt.UnixNano(),
				UpdatedAt: r.UpdatedAt.UnixNano(), ExpiresAt: r.ExpiresAt.UnixNano()})
			if err != nil {
				panic(err)
			}
			return b
		})

	r = base("signed-forms", StateFailed)
	r.Fingerprint, r.Response = []byte("fp"), []byte("a response longer than thirty-one bytes")
	r.Retryable, r.Attempts, r.Token = true, 5, 6
	r.LeaseUntil, r.ExpiresAt = ns(1000), time.Time{}
	other("signed-forms", "non-negative integers in signed forms (int 8, 16, 32, 64), str instead of bin, an array 16 header", r,
		func(r *Record) []byte {
			var buf bytes.Buffer
			e := msgpack.NewEncoder(&buf)
			must := func(err error) {
				if err != nil {
					panic(err)
				}
			}
			buf.Write([]byte{0xdc, 0, 11})
			must(e.EncodeInt8(1))
			must(e.EncodeInt16(int16(r.State)))
			must(e.EncodeString(string(r.Fingerprint))) // fixstr
			must(e.EncodeString(string(r.Response)))    // str 8
			must(e.EncodeBool(r.Retryable))
			must(e.EncodeInt32(int32(r.Attempts)))
			must(e.EncodeInt64(int64(r.Token)))
			must(e.EncodeInt64(r.CreatedAt.UnixNano()))
			must(e.EncodeUint64(uint64(r.UpdatedAt.UnixNano())))
			must(e.EncodeInt16(int16(r.LeaseUntil.UnixNano())))
			must(e.EncodeUint32(0)) // a zero time
			return buf.Bytes()
		})

	r = base("later-release", StateCompleted)
	other("later-release", "an array 32 header and four elements a later release appended (a str, a map, an array, a float): ignored", r,
		func(r *Record) []byte {
			b := []byte{0xdd, 0, 0, 0, 17}
			b = append(b, encodeRecord(r)[1:]...)
			tail, err := msgpack.Marshal([]any{"later", map[string]any{"k": []any{1, "v"}}, []any{[]any{}, nil}, 1.5})
			if err != nil {
				panic(err)
			}
			return append(b, tail[1:]...)
		})
	return cs
}

// writeGolden writes the files of the golden cases that have none.
func writeGolden(t *testing.T) {
	require.NoError(t, os.MkdirAll(goldenDir, 0o755))
	for _, gc := range goldenCases() {
		base := filepath.Join(goldenDir, gc.name)
		if _, err := os.Stat(base + ".json"); err == nil {
			continue
		}
		gc.c.Record.Key = gc.name
		var data []byte
		if gc.c.Canonical {
			data = v1Form(nil, encodeRecord(&gc.c.Record))
		} else {
			data = gc.raw(&gc.c.Record)
		}
		js, err := json.MarshalIndent(gc.c, "", "\t")
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(base+".msgpack", data, 0o644))
		require.NoError(t, os.WriteFile(base+".json", append(js, '\n'), 0o644))
		t.Logf("wrote %s.{json,msgpack}", base)
	}
}

// benchRecord is a completed record like the bench command's fixtures: a
// SHA-256 fingerprint and a 100-byte response.
func benchRecord() *Record {
	now := time.Now()
	return &Record{Key: "req-1", State: StateCompleted, Fingerprint: bytes.Repeat([]byte{0xa5}, 32),
		Response: bytes.Repeat([]byte("r"), 100), Attempts: 1, Token: 1 << 40, CreatedAt: now, UpdatedAt: now,
		ExpiresAt: now.Add(24 * time.Hour)}
}

func BenchmarkEncodeRecord(b *testing.B) {
	r := benchRecord()
	b.ReportAllocs()
	for b.Loop() {
		encodeRecord(r)
	}
}

func BenchmarkDecodeRecord(b *testing.B) {
	data := encodeRecord(benchRecord())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeRecord("req-1", data); err != nil {
			b.Fatal(err)
		}
	}
}

func sampleRecord() *Record {
	t0 := time.Date(2026, 3, 4, 5, 6, 7, 890, time.UTC)
	return &Record{
		Key: "k", State: StateFailed, Fingerprint: bytes.Repeat([]byte{0xfe}, 32),
		Response: bytes.Repeat([]byte("r"), 70000), Retryable: true, Attempts: 300, Token: 1<<40 + 7,
		CreatedAt: t0, UpdatedAt: t0.Add(time.Second), LeaseUntil: t0.Add(-time.Hour), ExpiresAt: t0.Add(24 * time.Hour),
	}
}

func TestRecordRoundTrip(t *testing.T) {
	for _, r := range []*Record{
		sampleRecord(),
		{Key: "min", State: StateInProgress, Fingerprint: []byte{}, Token: 1},
		{Key: "nil", State: StateCompleted, Response: []byte{}, Attempts: 1, Token: 200, CreatedAt: time.Unix(-5, 0)},
	} {
		got, err := decodeRecord(r.Key, encodeRecord(r))
		require.NoError(t, err)
		assertSameRecord(t, r, got)
	}
}

// Times Unix nanoseconds cannot hold are stored as the nearest instant they
// can, not wrapped around.
func TestEncodeClampsTime(t *testing.T) {
	r := &Record{Key: "k", State: StateCompleted, CreatedAt: time.Date(1500, 1, 1, 0, 0, 0, 0, time.UTC),
		ExpiresAt: time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)}
	got, err := decodeRecord("k", encodeRecord(r))
	require.NoError(t, err)
	assert.True(t, got.CreatedAt.Equal(minNanoTime), "created %v", got.CreatedAt)
	assert.True(t, got.ExpiresAt.Equal(maxNanoTime), "expires %v", got.ExpiresAt)
}

// The stored form is standard msgpack: any msgpack reader can read it, and
// a record written by another msgpack encoder in the same layout decodes.
func TestRecordIsMsgpack(t *testing.T) {
	r := sampleRecord()
	var fields []any
	require.NoError(t, msgpack.Unmarshal(encodeRecord(r), &fields))
	require.Len(t, fields, 13)
	assert.EqualValues(t, 0, fields[11], "holder epoch")
	assert.EqualValues(t, checksum(r, new([checksumScratch]byte)), fields[12], "checksum")
	assert.EqualValues(t, 1, fields[0], "leading format version")
	assert.EqualValues(t, StateFailed, fields[1])
	assert.Equal(t, r.Fingerprint, fields[2])
	assert.EqualValues(t, r.Token, fields[6])
	assert.EqualValues(t, r.CreatedAt.UnixNano(), fields[7])

	// Written by the reflection encoder, as an earlier release wrote it.
	other, err := msgpack.Marshal([]any{1, 2, []byte("fp"), []byte("resp"), false, 1, uint64(5),
		r.CreatedAt.UnixNano(), r.UpdatedAt.UnixNano(), 0, r.ExpiresAt.UnixNano()})
	require.NoError(t, err)
	got, err := decodeRecord("k", other)
	require.NoError(t, err)
	assert.Equal(t, StateCompleted, got.State)
	assert.Equal(t, []byte("resp"), got.Response)
	assert.Equal(t, uint64(5), got.Token)
	assert.True(t, got.LeaseUntil.IsZero())

	// Through msgpack's own Marshal and Unmarshal, which find the
	// CustomEncoder and CustomDecoder by reflection.
	b, err := msgpack.Marshal(&storedRecord{r: r})
	require.NoError(t, err)
	assert.Equal(t, encodeRecord(r), b)
	got = &Record{Key: r.Key}
	require.NoError(t, msgpack.Unmarshal(b, &storedRecord{r: got}))
	assertSameRecord(t, r, got)

	// The zero value decodes into a new Record, and encodes as nil.
	var zero storedRecord
	require.NoError(t, msgpack.Unmarshal(b, &zero))
	require.NotNil(t, zero.r)
	zero.r.Key = r.Key
	assertSameRecord(t, r, zero.r)
	b, err = msgpack.Marshal(&storedRecord{})
	require.NoError(t, err)
	assert.Equal(t, []byte{0xc0}, b)
}

// A record inside other msgpack data, read by a decoder that buffers its
// own reader: byte fields are copied, and the elements of a later version
// are skipped, so the value after the record decodes.
func TestDecodeRecordInStream(t *testing.T) {
	names, err := filepath.Glob(filepath.Join(goldenDir, "*.msgpack"))
	require.NoError(t, err)
	var stream []byte
	var want []*Record
	for _, name := range names {
		data, err := os.ReadFile(name)
		require.NoError(t, err)
		r, err := decodeRecord("k", data)
		require.NoError(t, err)
		stream = append(stream, data...)
		stream = append(stream, 0xa3, 'e', 'n', 'd') // "end"
		want = append(want, r)
	}
	dec := msgpack.NewDecoder(iotest.HalfReader(bytes.NewReader(stream))) // not an io.ByteScanner
	for i, w := range want {
		got := &Record{Key: "k"}
		require.NoError(t, (&storedRecord{r: got}).DecodeMsgpack(dec), names[i])
		assertSameRecord(t, w, got)
		end, err := dec.DecodeString()
		require.NoError(t, err, names[i])
		require.Equal(t, "end", end, names[i])
	}
}

// decodeRecord slices Fingerprint and Response out of its input, and
// allocates only the Record.
func TestDecodeRecordSharesInput(t *testing.T) {
	data := encodeRecord(sampleRecord())
	r, err := decodeRecord("k", data)
	require.NoError(t, err)
	off := bytes.Index(data, r.Fingerprint)
	require.GreaterOrEqual(t, off, 0)
	assert.Same(t, &data[off], &r.Fingerprint[0], "fingerprint copied")
	off = bytes.Index(data, r.Response)
	require.GreaterOrEqual(t, off, 0)
	assert.Same(t, &data[off], &r.Response[0], "response copied")
	assert.Equal(t, len(r.Response), cap(r.Response), "response may grow into the bytes after it")
}

func TestDecodeCorrupt(t *testing.T) {
	full := encodeRecord(sampleRecord())
	good := v1Form(t, full)
	mp := func(v ...any) []byte {
		b, err := msgpack.Marshal(v)
		require.NoError(t, err)
		return b
	}
	v1 := func(state, fp, resp, retryable, attempts, token any) []byte {
		return mp(1, state, fp, resp, retryable, attempts, token, 0, 0, 0, 0)
	}
	for name, tc := range map[string]struct {
		data []byte
		msg  string
	}{
		"empty":                  {nil, "truncated"},
		"not an array":           {[]byte("hello"), "not an array (type byte 0x68)"},
		"nil":                    {[]byte{0xc0}, "not an array (type byte 0xc0)"},
		"empty array":            {[]byte{0x90}, "empty record"},
		"truncated":              {good[:len(good)/2], "truncated"},
		"truncated header":       {good[:1], "format version: truncated"},
		"newer version":          {mp(2, 2), "unsupported format version 2"},
		"nil version":            {mp(nil), "format version: not an integer (type byte 0xc0)"},
		"negative version":       {mp(-1), "format version: negative value -1"},
		"short array":            {[]byte{0x92, 0x01, 0x02}, "2 fields"},
		"bad state":              {v1(7, nil, nil, false, 1, 1), "unknown state 7"},
		"state 0":                {v1(0, nil, nil, false, 1, 1), "unknown state 0"},
		"float state":            {v1(2.0, nil, nil, false, 1, 1), "state: not an integer (type byte 0xcb)"},
		"nil state":              {v1(nil, nil, nil, false, 1, 1), "state: not an integer (type byte 0xc0)"},
		"int fingerprint":        {v1(2, 5, nil, false, 1, 1), "fingerprint: not binary data (type byte 0x05)"},
		"array response":         {v1(2, nil, []any{}, false, 1, 1), "response: not binary data (type byte 0x90)"},
		"nil retryable":          {v1(2, nil, nil, nil, 1, 1), "retryable: not a bool (type byte 0xc0)"},
		"int retryable":          {v1(2, nil, nil, 1, 1, 1), "retryable: not a bool (type byte 0x01)"},
		"negative attempts":      {v1(2, nil, nil, false, -1, 1), "attempts -1 out of range"},
		"attempts over int32":    {v1(2, nil, nil, false, math.MaxInt32+1, 1), "attempts 2147483648 out of range"},
		"nil attempts":           {v1(2, nil, nil, false, nil, 1), "attempts: not an integer (type byte 0xc0)"},
		"negative token":         {v1(2, nil, nil, false, 1, -5), "token: negative value -5"},
		"string token":           {v1(2, nil, nil, false, 1, "5"), "token: not an integer (type byte 0xa1)"},
		"time over int64":        {mp(1, 2, nil, nil, false, 1, 1, uint64(math.MaxInt64+1), 0, 0, 0), "created time: integer 9223372036854775808 out of range"},
		"nil time":               {mp(1, 2, nil, nil, false, 1, 1, 0, 0, 0, nil), "expires time: not an integer (type byte 0xc0)"},
		"truncated time":         {good[:len(good)-1], "expires time: truncated"},
		"bin 32 over the end":    {[]byte{0x9b, 0x01, 0x02, 0xc6, 0xff, 0xff, 0xff, 0xff, 'x'}, "fingerprint: truncated"},
		"str 32 over the end":    {[]byte{0x9b, 0x01, 0x02, 0xc0, 0xdb, 0x7f, 0xff, 0xff, 0xff}, "response: truncated"},
		"array 32 over the end":  {append([]byte{0xdd, 0xff, 0xff, 0xff, 0xff}, full[1:]...), "after version 1's: truncated"},
		"bad later element":      {append(append([]byte{0x9e}, full[1:]...), 0xc1), "after version 1's: msgpack: unknown code c1"},
		"later bin over the end": {append(append([]byte{0x9e}, full[1:]...), 0xc6, 0xff, 0xff, 0xff, 0xff, 0), "after version 1's: truncated"},
		"later ext over the end": {append(append([]byte{0x9e}, full[1:]...), 0xc9, 0xff, 0xff, 0xff, 0xff, 1, 0), "after version 1's: truncated"},
		"string holder":          {append(append([]byte{0x9c}, good[1:]...), 0xa1, 'x'), "holder epoch: not an integer"},
		"nil checksum":           {append(append([]byte{0x9d}, good[1:]...), 0x00, 0xc0), "checksum: not an integer"},
		"wrong checksum":         {append(append([]byte{0x9d}, good[1:]...), 0x00, 0xce, 0, 0, 0, 1), "checksum mismatch"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := decodeRecord("the-key", tc.data)
			require.Error(t, err)
			assert.True(t, errors.Is(err, ErrCorrupt))
			assert.Contains(t, err.Error(), `"the-key"`)
			assert.Contains(t, err.Error(), tc.msg)
		})
	}
}

// Elements of a later version are skipped, whatever their type, both in
// place and by a decoder reading a stream.
func TestDecodeSkipsLaterElements(t *testing.T) {
	r := sampleRecord()
	data := append([]byte{0xdc, 0, 17}, encodeRecord(r)[1:]...)               // 17 elements
	data = append(data, 0xc7, 3, 5, 'a', 'b', 'c', 0xd4, 1, 'x')              // ext 8, fixext 1
	data = append(data, 0xc4, 2, 'x', 'y', 0x82, 0xa1, 'k', 0x90, 0x01, 0xc0) // bin 8, a map of two
	got, err := decodeRecord(r.Key, data)
	require.NoError(t, err)
	assertSameRecord(t, r, got)

	dec := msgpack.NewDecoder(iotest.HalfReader(bytes.NewReader(append(data, 0x07))))
	got = &Record{Key: r.Key}
	require.NoError(t, (&storedRecord{r: got}).DecodeMsgpack(dec))
	assertSameRecord(t, r, got)
	next, err := dec.DecodeInt64()
	require.NoError(t, err)
	assert.Equal(t, int64(7), next)
}

// A later version's elements may nest as deep as the input allows without
// exhausting the stack.
func TestDecodeSkipsDeepNesting(t *testing.T) {
	full := encodeRecord(sampleRecord())
	data := append([]byte{0x9e}, full[1:]...)
	data = append(data, bytes.Repeat([]byte{0x91}, 1<<20)...)
	data = append(data, 0xc0)
	_, err := decodeRecord("k", data)
	require.NoError(t, err)
}

func FuzzDecodeRecord(f *testing.F) {
	f.Add(encodeRecord(sampleRecord()))
	f.Add(encodeRecord(&Record{State: StateInProgress}))
	f.Add([]byte{0x9b, 0x01, 0x02, 0xc0, 0xc0, 0xc2, 0x01, 0xcf})
	f.Add([]byte{0xdd, 0xff, 0xff, 0xff, 0xff})
	names, err := filepath.Glob(filepath.Join(goldenDir, "*.msgpack"))
	if err != nil {
		f.Fatal(err)
	}
	for _, name := range names {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		if len(data) < 4096 {
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := decodeRecord("k", data)

		// A decoder that copies instead of slicing agrees.
		other := &Record{Key: "k"}
		oerr := (&storedRecord{r: other}).DecodeMsgpack(msgpack.NewDecoder(iotest.OneByteReader(bytes.NewReader(data))))
		if (err == nil) != (oerr == nil) {
			t.Fatalf("decoding a copy: %v; in place: %v", oerr, err)
		}
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error does not wrap ErrCorrupt: %v", err)
			}
			return
		}
		if !sameRecord(r, other) {
			t.Fatalf("decoding a copy gave %+v, in place %+v", other, r)
		}
		// What decodes must encode and decode to the same record, and
		// encode to the same bytes again.
		enc := encodeRecord(r)
		again, err := decodeRecord("k", enc)
		if err != nil {
			t.Fatalf("re-decoding an encoded record: %v", err)
		}
		if !sameRecord(r, again) {
			t.Fatalf("round trip changed the record: %+v -> %+v", r, again)
		}
		if !bytes.Equal(enc, encodeRecord(again)) {
			t.Fatalf("encoding is not stable: %x, then %x", enc, encodeRecord(again))
		}
	})
}

func sameRecord(a, b *Record) bool {
	return a.Key == b.Key && a.State == b.State && bytes.Equal(a.Fingerprint, b.Fingerprint) &&
		(a.Fingerprint == nil) == (b.Fingerprint == nil) && bytes.Equal(a.Response, b.Response) &&
		(a.Response == nil) == (b.Response == nil) && a.Retryable == b.Retryable && a.Attempts == b.Attempts &&
		a.Token == b.Token && a.CreatedAt.Equal(b.CreatedAt) && a.UpdatedAt.Equal(b.UpdatedAt) &&
		a.LeaseUntil.Equal(b.LeaseUntil) && a.ExpiresAt.Equal(b.ExpiresAt)
}

// v1Form returns the version 1 form of a record as this release encodes
// it: its eleven elements, without the holder epoch and the checksum
// appended after them. The records it is given have holder 0 (one byte).
func v1Form(t *testing.T, b []byte) []byte {
	if len(b) < 7 || b[0] != 0x90|fieldsWritten || b[len(b)-6] != 0 || b[len(b)-5] != 0xce {
		if t != nil {
			t.Fatalf("not the form this release writes: %x", b)
		}
		panic(fmt.Sprintf("not the form this release writes: %x", b))
	}
	return append([]byte{0x90 | fieldsV1}, b[1:len(b)-6]...)
}

// A flipped bit anywhere in a stored record is reported as corrupt, never
// decoded into another record; the holder epoch round-trips and is
// covered by the checksum.
func TestChecksum(t *testing.T) {
	r := sampleRecord()
	r.holder = 7
	data := encodeRecord(r)
	got, err := decodeRecord(r.Key, data)
	require.NoError(t, err)
	assert.Equal(t, uint64(7), got.holder)
	for i := range data {
		for bit := range 8 {
			bad := bytes.Clone(data)
			bad[i] ^= 1 << bit
			got, err := decodeRecord(r.Key, bad)
			if err == nil {
				// Only a flip that leaves every decoded value as it was
				// may pass (the array header's count, say, to twelve:
				// the checksum is then not read, and nothing changed).
				got.Key = r.Key
				assertSameRecord(t, r, got)
				continue
			}
			require.ErrorIs(t, err, ErrCorrupt, "byte %d bit %d", i, bit)
		}
	}
	resp := bytes.Clone(data)
	resp[bytes.Index(resp, r.Response)] ^= 0x20
	_, err = decodeRecord(r.Key, resp)
	require.ErrorContains(t, err, "checksum mismatch")
}
