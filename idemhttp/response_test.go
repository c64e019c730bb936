package idemhttp

import (
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestResponseEncoding(t *testing.T) {
	r := &response{
		status: 201,
		header: http.Header{"Location": {"/p/1"}, "X-Multi": {"a", "", "c"}, "Empty": {}},
		body:   []byte{0, 1, 2, 255},
	}
	data := encodeResponse(r)
	require.Equal(t, byte(responseVersion), data[0])
	require.Equal(t, data, encodeResponse(r), "encoding is deterministic")
	got, err := decodeResponse(data)
	require.NoError(t, err)
	require.Equal(t, r.status, got.status)
	require.Equal(t, r.header, got.header)
	require.Equal(t, r.body, got.body)

	// Every truncation is an error, never a panic or a wrong response.
	headerEnd := len(data) - len(r.body)
	for i := 0; i < headerEnd; i++ {
		_, err := decodeResponse(data[:i])
		require.ErrorIs(t, err, errBadResponse, "truncated at %d", i)
	}
	_, err = decodeResponse(append([]byte{2}, data[1:]...))
	require.ErrorContains(t, err, "unknown format version 2")
}

func TestStorableHeader(t *testing.T) {
	h := http.Header{
		"Set-Cookie":        {"a=b"},
		"Connection":        {"keep-alive, X-Private"},
		"X-Private":         {"1"},
		"Transfer-Encoding": {"chunked"},
		"Etag":              {`"x"`},
		"x-lower":           {"kept as written"},
		"Trailer:X-T":       {"t"},
	}
	got := storableHeader(h)
	require.Equal(t, http.Header{"Etag": {`"x"`}, "x-lower": {"kept as written"}}, got)
}

func TestStoredKey(t *testing.T) {
	require.Equal(t, "idemhttp:0::k", storedKey("", "k", 255))
	require.Equal(t, "idemhttp:5:alice:k", storedKey("alice", "k", 255))
	// Scopes with separators cannot collide with other (scope, key) pairs.
	require.NotEqual(t, storedKey("a:1", "k", 255), storedKey("a", "1:k", 255))
	long := storedKey(strings.Repeat("s", 300), "k", 255)
	require.True(t, strings.HasPrefix(long, "idemhttp:sha256:"))
	require.Len(t, long, minStoreKeySize)
	require.NotEqual(t, long, storedKey(strings.Repeat("s", 301), "k", 255))
	require.True(t, strings.HasPrefix(storedKey("tab\there", "k", 255), "idemhttp:sha256:"))
}

func FuzzDecodeResponse(f *testing.F) {
	f.Add(encodeResponse(&response{status: 200, header: http.Header{"A": {"b"}}, body: []byte("x")}))
	f.Add([]byte{1, 200, 1, 255, 255, 255, 255, 15})
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := decodeResponse(data)
		if err != nil {
			return
		}
		r2, err := decodeResponse(encodeResponse(r))
		if err != nil || r2.status != r.status || string(r2.body) != string(r.body) || len(r2.header) != len(r.header) {
			t.Fatalf("re-encoding changed the response: %v", err)
		}
	})
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		v  string
		d  time.Duration
		ok bool
	}{
		{"", 0, false},
		{"0", 0, true},
		{"7", 7 * time.Second, true},
		{" 7 ", 7 * time.Second, true},
		{"-1", 0, false},
		{"1.5", 0, false},
		{"soon", 0, false},
		{"Fri, 02 Jan 2026 03:04:35 GMT", 30 * time.Second, true},                              // IMF-fixdate
		{"Friday, 02-Jan-26 03:05:05 GMT", time.Minute, true},                                  // RFC 850
		{"Fri Jan  2 03:04:15 2026", 10 * time.Second, true},                                   // asctime
		{"Fri, 02 Jan 2026 03:00:00 GMT", 0, true},                                             // in the past: now
		{"99999999999999999999", 0, false},                                                     // overflows
		{"9999999999999", time.Duration(math.MaxInt64/int64(time.Second)) * time.Second, true}, // clamped
	} {
		d, ok := retryAfter(tc.v, now)
		require.Equal(t, tc.ok, ok, tc.v)
		require.Equal(t, tc.d, d, tc.v)
	}
}
