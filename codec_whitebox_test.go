package idem

import (
	"bytes"
	"encoding/json"
	"flag"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
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

			got, err := DecodeRecord(c.Record.Key, data)
			require.NoError(t, err)
			assertSameRecord(t, &c.Record, got)
			if c.Canonical {
				assert.Equal(t, data, EncodeRecord(&c.Record), "the encoder's bytes differ from version 1's")
				assert.Equal(t, data, EncodeRecord(got), "decoding and encoding changed the bytes")
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
			b := []byte{0xdd, 0, 0, 0, 15}
			b = append(b, EncodeRecord(r)[1:]...)
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
			data = EncodeRecord(&gc.c.Record)
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
		EncodeRecord(r)
	}
}

func BenchmarkDecodeRecord(b *testing.B) {
	data := EncodeRecord(benchRecord())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeRecord("req-1", data); err != nil {
			b.Fatal(err)
		}
	}
}
