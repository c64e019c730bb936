package idemadmin_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemadmin"
	"github.com/idemdb/idem/idemtest"
)

func open(t *testing.T, clock *idemtest.Clock) *idem.Store {
	t.Helper()
	s, err := idem.Open(t.TempDir(), &idem.Options{Now: clock.Now, GCInterval: -1})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s
}

// call sends a request to h as a tool on the same machine does: to a
// loopback address, with a JSON body.
func call(t *testing.T, h http.Handler, method, target string, body any) (int, string) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(t, err)
		rd = bytes.NewReader(b)
	}
	r := httptest.NewRequest(method, target, rd)
	r.Host = "127.0.0.1:9090"
	if body != nil {
		r.Header.Set("Content-Type", "application/json")
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w.Code, w.Body.String()
}

// Keys with slashes, percent signs, spaces and non-ASCII letters reach the
// store intact when the client escapes them as one path segment.
func TestKeysInPaths(t *testing.T) {
	clock := idemtest.NewClock()
	s := open(t, clock)
	ctx := context.Background()
	h := idemadmin.Handler(s, &idemadmin.Options{Now: clock.Now, Repairs: true})
	for _, key := range []string{"tenant/42/order 7", "100%/é", "a//b/../c"} {
		l, _, err := s.Begin(ctx, key, []byte("fp"))
		require.NoError(t, err)
		code, body := call(t, h, "GET", "/admin/records/"+url.PathEscape(key), nil)
		require.Equal(t, http.StatusOK, code, body)
		var j idemadmin.Record
		require.NoError(t, json.Unmarshal([]byte(body), &j))
		assert.Equal(t, key, j.Key)
		assert.Equal(t, "in-progress", j.State)
		assert.Equal(t, l.Token(), j.Token)

		code, body = call(t, h, "POST", "/admin/release/"+url.PathEscape(key), idemadmin.RepairRequest{Token: l.Token()})
		require.Equal(t, http.StatusOK, code, body)
		_, err = s.Get(ctx, key)
		assert.ErrorIs(t, err, idem.ErrNotFound, key)
	}
}

// Bad requests get 400 naming what was wrong, and change nothing.
func TestBadRequests(t *testing.T) {
	clock := idemtest.NewClock()
	s := open(t, clock)
	ctx := context.Background()
	l, _, err := s.Begin(ctx, "k", []byte("fp"))
	require.NoError(t, err)
	h := idemadmin.Handler(s, &idemadmin.Options{Now: clock.Now, Repairs: true})
	for target, want := range map[string]string{
		"/admin/records?stale=maybe":                 `stale=\"maybe\"`,
		"/admin/records?older-than=soon":             `older-than=\"soon\"`,
		"/admin/records?older-than=-1m":              "must not be negative",
		"/admin/records?limit=-3":                    `limit=\"-3\"`,
		"/admin/records?state=done":                  "unknown state",
		"/admin/records/" + strings.Repeat("x", 300): "key",
	} {
		code, body := call(t, h, "GET", target, nil)
		assert.Equal(t, http.StatusBadRequest, code, target)
		assert.Contains(t, body, want, target)
	}
	for _, c := range []struct {
		body any
		want string
	}{
		{"not an object", "repair body"},
		{map[string]any{"token": l.Token(), "extra": 1}, "unknown field"},
		{map[string]any{}, "no token"},
		{idemadmin.RepairRequest{Corrupt: true}, "delete only"},
		{idemadmin.RepairRequest{Token: l.Token(), State: "completed"}, "release ends an in-progress record, not a completed one"},
		{idemadmin.RepairRequest{Token: l.Token(), State: "done"}, "unknown state"},
	} {
		code, body := call(t, h, "POST", "/admin/release/k", c.body)
		assert.Equal(t, http.StatusBadRequest, code, c.body)
		assert.Contains(t, body, c.want)
	}
	code, body := call(t, h, "POST", "/admin/release/absent", idemadmin.RepairRequest{Token: 1})
	assert.Equal(t, http.StatusNotFound, code, body)
	code, body = call(t, h, "POST", "/admin/delete/k", idemadmin.RepairRequest{Corrupt: true})
	assert.Equal(t, http.StatusConflict, code, body)
	assert.Contains(t, body, "not corrupt")

	rec, err := s.Get(ctx, "k")
	require.NoError(t, err)
	assert.Equal(t, idem.StateInProgress, rec.State, "nothing changed")
	assert.Equal(t, l.Token(), rec.Token)
}

// The list filters as the command's does and streams one record a line;
// stale and age are judged by the handler's clock.
func TestList(t *testing.T) {
	clock := idemtest.NewClock()
	s := open(t, clock)
	ctx := context.Background()
	for _, k := range []string{"a/1", "a/2", "b/1"} {
		l, _, err := s.Begin(ctx, k, []byte("fp"))
		require.NoError(t, err)
		if k == "a/2" {
			require.NoError(t, l.Complete(ctx, []byte("ok")))
		}
	}
	h := idemadmin.Handler(s, &idemadmin.Options{Now: clock.Now})
	keys := func(target string) []string {
		code, body := call(t, h, "GET", target, nil)
		require.Equal(t, http.StatusOK, code, body)
		out, _ := page(t, body)
		return out
	}
	assert.ElementsMatch(t, []string{"a/1", "a/2", "b/1"}, keys("/admin/records"))
	assert.ElementsMatch(t, []string{"a/1", "a/2"}, keys("/admin/records?prefix=a/"))
	assert.ElementsMatch(t, []string{"a/1", "b/1"}, keys("/admin/records?state=in-progress"))
	assert.Len(t, keys("/admin/records?limit=2"), 2)
	assert.Empty(t, keys("/admin/records?stale=true"))
	assert.Empty(t, keys("/admin/records?older-than=1m"))
	clock.Advance(2 * time.Minute)
	assert.ElementsMatch(t, []string{"a/1", "b/1"}, keys("/admin/records?stale=true"), "the 30 s leases lapsed")
	assert.Len(t, keys("/admin/records?older-than=1m"), 3)
}

// With repairs off, every repair is refused and nothing changes.
func TestRepairsOff(t *testing.T) {
	clock := idemtest.NewClock()
	s := open(t, clock)
	ctx := context.Background()
	l, _, err := s.Begin(ctx, "k", []byte("fp"))
	require.NoError(t, err)
	h := idemadmin.Handler(s, nil)
	for _, op := range []string{"release", "fail", "delete"} {
		code, body := call(t, h, "POST", "/admin/"+op+"/k", idemadmin.RepairRequest{Token: l.Token()})
		assert.Equal(t, http.StatusForbidden, code, op)
		assert.Contains(t, body, "repairs are off")
	}
	rec, err := s.Get(ctx, "k")
	require.NoError(t, err)
	assert.Equal(t, idem.StateInProgress, rec.State)
}

// page returns the keys of a page of the list endpoint, and its last
// line when it is a ListEnd.
func page(t *testing.T, body string) ([]string, *idemadmin.ListEnd) {
	t.Helper()
	var keys []string
	var end *idemadmin.ListEnd
	dec := json.NewDecoder(strings.NewReader(body))
	for dec.More() {
		var line struct {
			idemadmin.Record
			idemadmin.ListEnd
		}
		require.NoError(t, dec.Decode(&line))
		require.Nil(t, end, "a line after the ListEnd: %s", body)
		if line.Truncated {
			end = &line.ListEnd
			continue
		}
		require.NotEmpty(t, line.Key, body)
		keys = append(keys, line.Key)
	}
	return keys, end
}

// A page holds 1 to MaxLimit records: limit=0, which streamed the whole
// store, and larger limits are refused. A page that stops before the end
// ends with the after= of the next page, and following them lists every
// record once, in key order.
func TestListPages(t *testing.T) {
	clock := idemtest.NewClock()
	s := open(t, clock)
	ctx := context.Background()
	var want []string
	for i := range 25 {
		key := fmt.Sprintf("k/%02d", i)
		_, _, err := s.Begin(ctx, key, []byte("fp"))
		require.NoError(t, err)
		want = append(want, key)
	}
	h := idemadmin.Handler(s, &idemadmin.Options{Now: clock.Now})
	for _, limit := range []string{"0", "10001", "100000000"} {
		code, body := call(t, h, "GET", "/admin/records?limit="+limit, nil)
		assert.Equal(t, http.StatusBadRequest, code, limit)
		assert.Contains(t, body, "a page holds 1 to 10000 records", limit)
	}
	code, body := call(t, h, "GET", "/admin/records?limit=10000", nil)
	require.Equal(t, http.StatusOK, code, body)
	got, end := page(t, body)
	assert.Equal(t, want, got)
	assert.Nil(t, end, "the whole list in one page")

	var all []string
	after := ""
	for pages := 1; ; pages++ {
		q := url.Values{"limit": {"10"}}
		if after != "" {
			q.Set("after", after)
		}
		code, body := call(t, h, "GET", "/admin/records?"+q.Encode(), nil)
		require.Equal(t, http.StatusOK, code, body)
		keys, end := page(t, body)
		all = append(all, keys...)
		if end == nil {
			assert.Equal(t, 3, pages)
			break
		}
		require.NotEmpty(t, end.Next, body)
		assert.Equal(t, keys[len(keys)-1], end.Next)
		after = end.Next
	}
	assert.Equal(t, want, all)

	// The last page is exactly full: the handler reads on to know that
	// nothing follows, rather than send a cursor to an empty page.
	code, body = call(t, h, "GET", "/admin/records?limit=5&after=k/19", nil)
	require.Equal(t, http.StatusOK, code, body)
	got, end = page(t, body)
	assert.Equal(t, want[20:], got)
	assert.Nil(t, end)
}

// Every admin call that reaches the endpoint, answered or refused, logs a
// key of 60 KB in a line of a few hundred bytes that says how long it was.
func TestLogClipsKeys(t *testing.T) {
	var logs bytes.Buffer
	clock := idemtest.NewClock()
	s := open(t, clock)
	h := idemadmin.Handler(s, &idemadmin.Options{Now: clock.Now, Repairs: true,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	key := strings.Repeat("k", idem.MaxKeySizeLimit)
	code, _ := call(t, h, "GET", "/admin/records/"+key, nil)
	require.Equal(t, http.StatusBadRequest, code, "longer than the store's keys")
	code, _ = call(t, h, "POST", "/admin/release/"+key, map[string]any{"token": 0})
	require.Equal(t, http.StatusBadRequest, code)
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	require.Len(t, lines, 2, logs.String())
	for _, line := range lines {
		assert.Less(t, len(line), 1500, line)
		assert.Regexp(t, `path="/admin/(records|release)/k{185}\.\.\.\(600\d\d bytes\)"`, line)
		assert.NotContains(t, line, strings.Repeat("k", 201))
	}
}
