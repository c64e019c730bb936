package idemadmin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"net/http"
	"net/http/httptest"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemtest"
	"github.com/idemdb/idem/internal/storeinternal"
)

// testBackend is the embedded store's backend with its scans counted and,
// with shuffle, made in no key order (in the order of a hash of the key),
// as Redis's are.
type testBackend struct {
	idem.Backend
	shuffle bool
	scans   atomic.Int64
}

func (b *testBackend) Scan(ctx context.Context, prefix string, fn func(key string, value []byte) error) error {
	b.scans.Add(1)
	if !b.shuffle {
		return b.Backend.Scan(ctx, prefix, fn)
	}
	type kv struct {
		k string
		v []byte
	}
	var all []kv
	if err := b.Backend.Scan(ctx, prefix, func(k string, v []byte) error {
		all = append(all, kv{k, bytes.Clone(v)})
		return nil
	}); err != nil {
		return err
	}
	hash := func(k string) uint64 { h := fnv.New64a(); h.Write([]byte(k)); return h.Sum64() }
	sort.Slice(all, func(i, j int) bool { return hash(all[i].k) < hash(all[j].k) })
	for _, e := range all {
		if err := fn(e.k, e.v); err != nil {
			return err
		}
	}
	return nil
}

func (b *testBackend) Close() error { return nil } // the embedded store under it closes it

// openTest returns a store on a testBackend with n in-progress records,
// k/00 to k/(n-1).
func openTest(t *testing.T, clock *idemtest.Clock, shuffle bool, n int) (*idem.Store, *testBackend) {
	t.Helper()
	base, err := idem.Open("", &idem.Options{InMemory: true, GCInterval: -1})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, base.Close()) })
	b := &testBackend{Backend: storeinternal.Backend(base).(idem.Backend), shuffle: shuffle}
	s, err := idem.New(b, &idem.Options{Now: clock.Now, GCInterval: -1})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	for i := range n {
		_, _, err := s.Begin(context.Background(), fmt.Sprintf("k/%02d", i), []byte("fp"))
		require.NoError(t, err)
	}
	return s, b
}

// get sends GET target to h from loopback and returns the keys of the
// page, its ListEnd, the status and the body.
func get(t *testing.T, h http.Handler, target string) (keys []string, end *ListEnd, code int, body string) {
	t.Helper()
	r := httptest.NewRequest("GET", target, nil)
	r.Host = "127.0.0.1:9090"
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	dec := json.NewDecoder(bytes.NewReader(w.Body.Bytes()))
	for w.Code == http.StatusOK && dec.More() {
		var line struct {
			Record
			ListEnd
		}
		require.NoError(t, dec.Decode(&line))
		if line.Truncated {
			end = &line.ListEnd
		} else {
			keys = append(keys, line.Key)
		}
	}
	return keys, end, w.Code, w.Body.String()
}

func setPageScan(t *testing.T, n int) {
	old := pageScan
	pageScan = n
	t.Cleanup(func() { pageScan = old })
}

// A filter few records pass does not make one page read the whole store:
// the page stops after pageScan records with the after= to go on from,
// and the client follows to the end.
func TestListScanBudget(t *testing.T) {
	setPageScan(t, 4)
	clock := idemtest.NewClock()
	s, _ := openTest(t, clock, false, 20)
	ctx := context.Background()
	for _, k := range []string{"k/03", "k/17"} {
		require.NoError(t, s.ForceFail(ctx, k, mustGet(t, s, k).Token, []byte("no"), false))
	}
	h := Handler(s, &Options{Now: clock.Now})
	keys, end, code, body := get(t, h, "/admin/records?state=failed&limit=100")
	require.Equal(t, http.StatusOK, code, body)
	assert.Equal(t, []string{"k/03"}, keys)
	require.NotNil(t, end, body)
	assert.Equal(t, "k/03", end.Next, "the last key read")
	keys, end, _, body = get(t, h, "/admin/records?state=failed&limit=100&after=k/03")
	assert.Empty(t, keys)
	require.NotNil(t, end, body)
	assert.Equal(t, "k/07", end.Next)

	srv := httptest.NewServer(h)
	defer srv.Close()
	c := NewClient(srv.URL, srv.Client())
	var got []string
	require.NoError(t, c.List(ctx, Filter{State: "failed"}, func(j Record) error { got = append(got, j.Key); return nil }))
	assert.Equal(t, []string{"k/03", "k/17"}, got)
	got = nil
	require.NoError(t, c.List(ctx, Filter{}, func(j Record) error { got = append(got, j.Key); return nil }))
	assert.Len(t, got, 20)
}

// On a store whose scan is in no key order (Redis), a page that stops
// early says so but names no after=, which could skip records, and a
// request with after= is refused; the client says why the list stopped
// instead of returning part of it as the whole.
func TestListNoKeyOrder(t *testing.T) {
	clock := idemtest.NewClock()
	s, _ := openTest(t, clock, true, 30)
	h := Handler(s, &Options{Now: clock.Now})
	for _, limit := range []int{1, 2, 10, 29} {
		keys, end, code, body := get(t, h, fmt.Sprintf("/admin/records?limit=%d", limit))
		require.Equal(t, http.StatusOK, code, body)
		assert.Len(t, keys, limit)
		require.NotNil(t, end, body)
		assert.Empty(t, end.Next, "limit %d: %s", limit, body)
	}
	keys, end, _, body := get(t, h, "/admin/records?limit=30")
	assert.Len(t, keys, 30)
	assert.Nil(t, end, "the whole list: %s", body)
	// The scan shows it is in no order after a record or two, sent
	// already: the page ends with the error.
	_, _, code, body := get(t, h, "/admin/records?after=k/10")
	assert.Equal(t, http.StatusOK, code)
	assert.Regexp(t, `\{"error":"idemadmin: this store's scan is in no key order \(Redis\)[^\n]*\}\n$`, body)
	_, _, code, body = get(t, h, "/admin/records?after=k/29")
	assert.Equal(t, http.StatusBadRequest, code, "nothing sent yet: %s", body)
	assert.Contains(t, body, "no key order")

	setPageScan(t, 4)
	srv := httptest.NewServer(h)
	defer srv.Close()
	c := NewClient(srv.URL, srv.Client())
	n := 0
	err := c.List(context.Background(), Filter{State: "failed"}, func(Record) error { n++; return nil })
	assert.ErrorContains(t, err, "the list stopped after 0 records, and this store's scan is in no key order (Redis)")
}

// Stats callers in a loop share one census for StatsMaxAge, while the
// counters stay current; a census stops at CensusLimit and says so.
func TestStatsShared(t *testing.T) {
	clock := idemtest.NewClock()
	s, b := openTest(t, clock, false, 20)
	ctx := context.Background()
	srv := httptest.NewServer(Handler(s, &Options{Now: clock.Now, StatsMaxAge: time.Hour}))
	defer srv.Close()
	c := NewClient(srv.URL, srv.Client())
	before := b.scans.Load()
	var wg sync.WaitGroup
	sts := make([]Stats, 16)
	for i := range sts {
		wg.Go(func() {
			var err error
			sts[i], err = c.Stats(ctx, "")
			assert.NoError(t, err)
		})
	}
	wg.Wait()
	assert.Equal(t, int64(1), b.scans.Load()-before, "16 callers, one census")
	for _, st := range sts {
		assert.Equal(t, 20, st.Records.InProgress)
		assert.Equal(t, 20, st.Scanned)
		assert.False(t, st.Truncated)
		require.NotNil(t, st.TakenAt)
		assert.True(t, st.TakenAt.Equal(*sts[0].TakenAt))
	}
	_, err := s.Get(ctx, "k/00")
	require.NoError(t, err)
	st, err := c.Stats(ctx, "")
	require.NoError(t, err)
	assert.Equal(t, int64(1), b.scans.Load()-before, "still that census")
	assert.Equal(t, uint64(1), st.Counters.Hits, "the counters are current")
	_, err = c.Stats(ctx, "k/1")
	require.NoError(t, err)
	assert.Equal(t, int64(2), b.scans.Load()-before, "a census per prefix")

	srv2 := httptest.NewServer(Handler(s, &Options{Now: clock.Now, StatsMaxAge: -1, CensusLimit: 5}))
	defer srv2.Close()
	c = NewClient(srv2.URL, srv2.Client())
	for range 3 {
		st, err = c.Stats(ctx, "")
		require.NoError(t, err)
	}
	assert.Equal(t, int64(5), b.scans.Load()-before, "StatsMaxAge < 0: a census per call")
	assert.True(t, st.Truncated)
	assert.Equal(t, 5, st.Scanned)
	assert.Equal(t, 5, st.Records.InProgress, "a lower bound")
}

func mustGet(t *testing.T, s *idem.Store, key string) *idem.Record {
	t.Helper()
	rec, err := s.Get(context.Background(), key)
	require.NoError(t, err)
	return rec
}

// A page of large responses ends once it has written pageBytes, with the
// after= to go on from.
func TestListPageBytes(t *testing.T) {
	old := pageBytes
	pageBytes = 2000
	t.Cleanup(func() { pageBytes = old })
	clock := idemtest.NewClock()
	s, _ := openTest(t, clock, false, 0)
	ctx := context.Background()
	for i := range 10 {
		l, _, err := s.Begin(ctx, fmt.Sprintf("k/%02d", i), []byte("fp"))
		require.NoError(t, err)
		require.NoError(t, l.Complete(ctx, bytes.Repeat([]byte("r"), 600)))
	}
	h := Handler(s, &Options{Now: clock.Now})
	keys, end, code, body := get(t, h, "/admin/records?limit=100")
	require.Equal(t, http.StatusOK, code, body)
	assert.Equal(t, []string{"k/00", "k/01"}, keys, "two lines of about 1.1 KB pass 2000 bytes")
	require.NotNil(t, end)
	assert.Equal(t, "k/01", end.Next)
}
