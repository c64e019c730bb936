package idem_test

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/idemdb/idem"
)

// The numbers are stored on disk: they must never change.
func TestStateNumbersAndStrings(t *testing.T) {
	for _, tc := range []struct {
		s   idem.State
		n   uint8
		str string
	}{
		{idem.StateInProgress, 1, "in-progress"},
		{idem.StateCompleted, 2, "completed"},
		{idem.StateFailed, 3, "failed"},
		{idem.State(9), 9, "unknown state: 9"},
	} {
		assert.Equal(t, tc.n, uint8(tc.s))
		assert.Equal(t, tc.str, tc.s.String())
		if tc.n <= 3 {
			got, err := idem.ParseState(tc.str)
			require.NoError(t, err)
			assert.Equal(t, tc.s, got)
		}
	}
	_, err := idem.ParseState("done")
	assert.ErrorContains(t, err, `"done"`)
}

func sampleRecord() *idem.Record {
	t0 := time.Date(2026, 3, 4, 5, 6, 7, 890, time.UTC)
	return &idem.Record{
		Key: "k", State: idem.StateFailed, Fingerprint: bytes.Repeat([]byte{0xfe}, 32),
		Response: bytes.Repeat([]byte("r"), 70000), Retryable: true, Attempts: 300, Token: 1<<40 + 7,
		CreatedAt: t0, UpdatedAt: t0.Add(time.Second), LeaseUntil: t0.Add(-time.Hour), ExpiresAt: t0.Add(24 * time.Hour),
	}
}

func TestRecordRoundTrip(t *testing.T) {
	for _, r := range []*idem.Record{
		sampleRecord(),
		{Key: "min", State: idem.StateInProgress, Fingerprint: []byte{}, Token: 1},
		{Key: "nil", State: idem.StateCompleted, Response: []byte{}, Attempts: 1, Token: 200, CreatedAt: time.Unix(-5, 0)},
	} {
		data := idem.EncodeRecord(r)
		got, err := idem.DecodeRecord(r.Key, data)
		require.NoError(t, err)
		assert.Equal(t, r.Key, got.Key)
		assert.Equal(t, r.State, got.State)
		assert.Equal(t, r.Fingerprint, got.Fingerprint)
		assert.Equal(t, r.Response, got.Response)
		assert.Equal(t, r.Retryable, got.Retryable)
		assert.Equal(t, r.Attempts, got.Attempts)
		assert.Equal(t, r.Token, got.Token)
		for _, p := range [][2]time.Time{{r.CreatedAt, got.CreatedAt}, {r.UpdatedAt, got.UpdatedAt}, {r.LeaseUntil, got.LeaseUntil}, {r.ExpiresAt, got.ExpiresAt}} {
			assert.True(t, p[0].Equal(p[1]), "time %v decoded as %v", p[0], p[1])
		}
	}
}

// The stored form is standard msgpack: any msgpack reader can read it, and
// a record written by another msgpack encoder in the same layout decodes.
func TestRecordIsMsgpack(t *testing.T) {
	r := sampleRecord()
	var fields []any
	require.NoError(t, msgpack.Unmarshal(idem.EncodeRecord(r), &fields))
	require.Len(t, fields, 11)
	assert.EqualValues(t, 1, fields[0], "leading format version")
	assert.EqualValues(t, idem.StateFailed, fields[1])
	assert.Equal(t, r.Fingerprint, fields[2])
	assert.EqualValues(t, r.Token, fields[6])
	assert.EqualValues(t, r.CreatedAt.UnixNano(), fields[7])

	// Written by the reflection encoder, with a later version's extra field.
	other, err := msgpack.Marshal([]any{1, 2, []byte("fp"), []byte("resp"), false, 1, uint64(5),
		r.CreatedAt.UnixNano(), r.UpdatedAt.UnixNano(), 0, r.ExpiresAt.UnixNano(), "field from a later release"})
	require.NoError(t, err)
	got, err := idem.DecodeRecord("k", other)
	require.NoError(t, err)
	assert.Equal(t, idem.StateCompleted, got.State)
	assert.Equal(t, []byte("resp"), got.Response)
	assert.Equal(t, uint64(5), got.Token)
	assert.True(t, got.LeaseUntil.IsZero())
}

func TestDecodeCorrupt(t *testing.T) {
	good := idem.EncodeRecord(sampleRecord())
	v2, err := msgpack.Marshal([]any{2, 2})
	require.NoError(t, err)
	badState, err := msgpack.Marshal([]any{1, 7, nil, nil, false, 1, 1, 0, 0, 0, 0})
	require.NoError(t, err)
	for name, tc := range map[string]struct {
		data []byte
		msg  string
	}{
		"empty":         {nil, "truncated"},
		"not an array":  {[]byte("hello"), "not an array"},
		"truncated":     {good[:len(good)/2], "truncated"},
		"newer version": {v2, "unsupported format version 2"},
		"bad state":     {badState, "unknown state 7"},
		"short array":   {[]byte{0x92, 0x01, 0x02}, "2 fields"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := idem.DecodeRecord("the-key", tc.data)
			require.Error(t, err)
			assert.True(t, errors.Is(err, idem.ErrCorrupt))
			assert.Contains(t, err.Error(), `"the-key"`)
			assert.Contains(t, err.Error(), tc.msg)
		})
	}
}

func FuzzDecodeRecord(f *testing.F) {
	f.Add(idem.EncodeRecord(sampleRecord()))
	f.Add(idem.EncodeRecord(&idem.Record{State: idem.StateInProgress}))
	f.Add([]byte{0x9b, 0x01, 0x02, 0xc0, 0xc0, 0xc2, 0x01, 0xcf})
	f.Add([]byte{0xdd, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := idem.DecodeRecord("k", data)
		if err != nil {
			if !errors.Is(err, idem.ErrCorrupt) {
				t.Fatalf("error does not wrap ErrCorrupt: %v", err)
			}
			return
		}
		// What decodes must encode and decode to the same record.
		again, err := idem.DecodeRecord("k", idem.EncodeRecord(r))
		if err != nil {
			t.Fatalf("re-decoding an encoded record: %v", err)
		}
		if again.State != r.State || again.Token != r.Token || !bytes.Equal(again.Response, r.Response) ||
			!bytes.Equal(again.Fingerprint, r.Fingerprint) || !again.ExpiresAt.Equal(r.ExpiresAt) {
			t.Fatalf("round trip changed the record: %+v -> %+v", r, again)
		}
	})
}
