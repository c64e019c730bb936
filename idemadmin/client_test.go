package idemadmin_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemadmin"
	"github.com/idemdb/idem/idemtest"
	"github.com/idemdb/idem/internal/storeinternal"
)

// serve runs the handler of s over loopback and returns a client for it.
func serve(t *testing.T, s *idem.Store, opts *idemadmin.Options) *idemadmin.Client {
	t.Helper()
	srv := httptest.NewServer(idemadmin.Handler(s, opts))
	t.Cleanup(srv.Close)
	return idemadmin.NewClient(strings.TrimPrefix(srv.URL, "http://"), srv.Client())
}

// plantCorrupt stores bytes under key that are not a record.
func plantCorrupt(t *testing.T, s *idem.Store, key string) {
	t.Helper()
	_, swapped, err := storeinternal.Backend(s).(idem.Backend).CompareAndSwap(context.Background(), key, nil, []byte{0x9b, 0x02, 0xff}, time.Now().Add(time.Hour), false)
	require.NoError(t, err)
	require.True(t, swapped)
}

// The client answers as the store does: the same records, ErrNotFound and
// ErrCorrupt, and the keys "." and ".." reach the store intact.
func TestClientGet(t *testing.T) {
	clock := idemtest.NewClock()
	s := open(t, clock)
	ctx := context.Background()
	c := serve(t, s, &idemadmin.Options{Now: clock.Now})
	for _, key := range []string{"k", ".", "..", "tenant/42/order 7", "100%/é"} {
		l, _, err := s.Begin(ctx, key, []byte("fp"))
		require.NoError(t, err)
		require.NoError(t, l.Complete(ctx, []byte("ok "+key)))
		want, err := s.Get(ctx, key)
		require.NoError(t, err)
		got, err := c.Get(ctx, key)
		require.NoError(t, err, key)
		assert.Equal(t, want.Key, got.Key)
		assert.Equal(t, want.Token, got.Token)
		assert.True(t, want.Same(got), key)
		assert.Equal(t, "ok "+key, string(got.Response))
	}

	_, err := c.Get(ctx, "absent")
	assert.ErrorIs(t, err, idem.ErrNotFound)
	assert.Contains(t, err.Error(), `idem: get "absent": record not found (from 127.0.0.1:`)

	plantCorrupt(t, s, "bad")
	_, err = c.Get(ctx, "bad")
	assert.ErrorIs(t, err, idem.ErrCorrupt)
	assert.Contains(t, err.Error(), `key "bad"`)

	_, err = c.Get(ctx, strings.Repeat("x", 300))
	assert.ErrorContains(t, err, "400 Bad Request")
}

// The list filters on the server with the filter the client encodes, and
// fn's own error comes back as it is.
func TestClientList(t *testing.T) {
	clock := idemtest.NewClock()
	s := open(t, clock)
	ctx := context.Background()
	for _, k := range []string{".", "a b/1", "a b/2", "b/1"} {
		l, _, err := s.Begin(ctx, k, []byte("fp"))
		require.NoError(t, err)
		if k == "a b/2" {
			require.NoError(t, l.Complete(ctx, []byte("ok")))
		}
	}
	plantCorrupt(t, s, "a b/3")
	c := serve(t, s, &idemadmin.Options{Now: clock.Now})
	keys := func(f idemadmin.Filter) []string {
		var out []string
		require.NoError(t, c.List(ctx, f, func(j idemadmin.Record) error {
			out = append(out, j.Key)
			return nil
		}))
		return out
	}
	assert.ElementsMatch(t, []string{".", "a b/1", "a b/2", "a b/3", "b/1"}, keys(idemadmin.Filter{}))
	assert.ElementsMatch(t, []string{"a b/1", "a b/2", "a b/3"}, keys(idemadmin.Filter{Prefix: "a b/"}))
	assert.ElementsMatch(t, []string{"."}, keys(idemadmin.Filter{Prefix: "."}))
	assert.ElementsMatch(t, []string{"a b/3"}, keys(idemadmin.Filter{State: idemadmin.StateCorrupt}))
	assert.ElementsMatch(t, []string{".", "a b/1", "b/1"}, keys(idemadmin.Filter{State: "in-progress"}))
	assert.Len(t, keys(idemadmin.Filter{Limit: 2}), 2)
	assert.Empty(t, keys(idemadmin.Filter{Stale: true}))
	clock.Advance(2 * time.Minute)
	assert.ElementsMatch(t, []string{".", "a b/1", "b/1"}, keys(idemadmin.Filter{Stale: true, OlderThan: time.Minute}))

	stop := errors.New("stop")
	n := 0
	err := c.List(ctx, idemadmin.Filter{}, func(idemadmin.Record) error { n++; return stop })
	assert.Equal(t, stop, err)
	assert.Equal(t, 1, n)
	assert.ErrorContains(t, c.List(ctx, idemadmin.Filter{State: "done"}, nil), "unknown state")
}

// The repairs through the client apply, or come back refused as the
// store refuses them: a *idem.ChangedError with the stored record.
func TestClientRepairs(t *testing.T) {
	clock := idemtest.NewClock()
	s := open(t, clock)
	ctx := context.Background()
	c := serve(t, s, &idemadmin.Options{Now: clock.Now, Repairs: true})

	l, _, err := s.Begin(ctx, "k", []byte("fp"))
	require.NoError(t, err)
	shown, err := c.Get(ctx, "k")
	require.NoError(t, err)
	require.NoError(t, l.Complete(ctx, []byte("charged")))
	for name, repair := range map[string]func() error{
		"release": func() error { return c.ForceRelease(ctx, "k", shown.Token) },
		"fail":    func() error { return c.ForceFail(ctx, "k", shown.Token, []byte("no"), false) },
		"delete":  func() error { return c.ForceDelete(ctx, "k", shown) },
	} {
		err := repair()
		assert.ErrorIs(t, err, idem.ErrLeaseLost, name)
		var changed *idem.ChangedError
		require.ErrorAs(t, err, &changed, name)
		assert.Equal(t, "k", changed.Key, name)
		require.NotNil(t, changed.Stored, name)
		assert.Equal(t, idem.StateCompleted, changed.Stored.State, name)
		assert.Equal(t, "charged", string(changed.Stored.Response), name)
		assert.Equal(t, "in-progress with token "+itoa(shown.Token), changed.Want, name)
		assert.Regexp(t, `^idem: force-`+name+` "k": lease lost: the stored record is completed with token `+itoa(shown.Token)+
			`, not in-progress with token `+itoa(shown.Token)+` \(from 127\.0\.0\.1:\d+\)$`, err.Error())
	}
	rec, err := s.Get(ctx, "k")
	require.NoError(t, err)
	assert.Equal(t, "charged", string(rec.Response), "nothing changed")

	// A record deleted and made again with the same state and token is
	// another record: the delete is fenced on its creation time too.
	again := *rec
	again.CreatedAt = rec.CreatedAt.Add(-time.Second)
	assert.ErrorIs(t, c.ForceDelete(ctx, "k", &again), idem.ErrLeaseLost)
	require.NoError(t, c.ForceDelete(ctx, "k", rec))
	_, err = s.Get(ctx, "k")
	assert.ErrorIs(t, err, idem.ErrNotFound)

	for _, key := range []string{"r", "f"} {
		_, _, err := s.Begin(ctx, key, []byte("fp"))
		require.NoError(t, err)
	}
	r, f := mustGet(t, s, "r"), mustGet(t, s, "f")
	require.NoError(t, c.ForceRelease(ctx, "r", r.Token))
	_, err = s.Get(ctx, "r")
	assert.ErrorIs(t, err, idem.ErrNotFound)
	require.NoError(t, c.ForceFail(ctx, "f", f.Token, []byte("declined"), true))
	got := mustGet(t, s, "f")
	assert.Equal(t, idem.StateFailed, got.State)
	assert.True(t, got.Retryable)
	assert.Equal(t, "declined", string(got.Response))

	plantCorrupt(t, s, "bad")
	assert.ErrorContains(t, c.ForceRelease(ctx, "bad", 1), `only delete with "corrupt": true removes it`)
	require.NoError(t, c.ForceDelete(ctx, "bad", nil))
	_, err = s.Get(ctx, "bad")
	assert.ErrorIs(t, err, idem.ErrNotFound)
	assert.ErrorIs(t, c.ForceDelete(ctx, "bad", nil), idem.ErrNotFound)
}

// A repair refused because the record changed answers 409 with the
// store's message, the stored record and what the request expected.
func TestRepairConflict(t *testing.T) {
	clock := idemtest.NewClock()
	s := open(t, clock)
	ctx := context.Background()
	l, _, err := s.Begin(ctx, "k", []byte("fp"))
	require.NoError(t, err)
	require.NoError(t, l.Complete(ctx, []byte("charged")))
	h := idemadmin.Handler(s, &idemadmin.Options{Now: clock.Now, Repairs: true})
	code, body := call(t, h, "POST", "/admin/release/k", idemadmin.RepairRequest{Token: l.Token()})
	require.Equal(t, http.StatusConflict, code, body)
	var p idemadmin.Problem
	require.NoError(t, json.Unmarshal([]byte(body), &p))
	tok := itoa(l.Token())
	assert.Equal(t, `idem: force-release "k": lease lost: the stored record is completed with token `+tok+
		`, not in-progress with token `+tok, p.Error)
	assert.Equal(t, "in-progress with token "+tok, p.Want)
	require.NotNil(t, p.Stored)
	assert.Equal(t, "completed", p.Stored.State)
	assert.Equal(t, "charged", string(p.Stored.Response))
}

// Every key of the /admin/stats body is snake_case, the store's counters
// included.
func TestStatsKeysSnakeCase(t *testing.T) {
	clock := idemtest.NewClock()
	s := open(t, clock)
	ctx := context.Background()
	l, _, err := s.Begin(ctx, "k", []byte("fp"))
	require.NoError(t, err)
	require.NoError(t, l.Complete(ctx, []byte("ok")))
	_, err = s.CollectGarbage(ctx) // sets the Last fields
	require.NoError(t, err)
	code, body := call(t, idemadmin.Handler(s, nil), "GET", "/admin/stats", nil)
	require.Equal(t, http.StatusOK, code, body)

	var v any
	require.NoError(t, json.Unmarshal([]byte(body), &v))
	snake := regexp.MustCompile(`^[a-z0-9_]+$`)
	var keys []string
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, e := range v {
				keys = append(keys, path+k)
				assert.Regexp(t, snake, k, "key %s%s in %s", path, k, body)
				walk(path+k+".", e)
			}
		case []any:
			for _, e := range v {
				walk(path, e)
			}
		}
	}
	walk("", v)
	for _, k := range []string{"records.in_progress", "stale_leases", "disk_bytes", "counters.hits", "counters.lease_lost",
		"counters.gc_runs", "counters.last_gc", "counters.last_sweep_took_ns"} {
		assert.Contains(t, keys, k, body)
	}

	// The client reads the same body back.
	st, err := serve(t, s, nil).Stats(ctx, "")
	require.NoError(t, err)
	assert.Equal(t, idemadmin.RecordCounts{Completed: 1}, st.Records)
	require.NotNil(t, st.Counters)
	assert.Equal(t, s.Stats().GCRuns, st.Counters.GCRuns)
	assert.True(t, s.Stats().LastGC.Equal(st.Counters.LastGC))
}

func mustGet(t *testing.T, s *idem.Store, key string) *idem.Record {
	t.Helper()
	rec, err := s.Get(context.Background(), key)
	require.NoError(t, err)
	return rec
}

func itoa(n uint64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// The client follows the pages of a list longer than MaxLimit: every
// record once, in key order, and no more than the filter's limit.
func TestClientListPages(t *testing.T) {
	clock := idemtest.NewClock()
	s, err := idem.Open("", &idem.Options{InMemory: true, Now: clock.Now, GCInterval: -1})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	ctx := context.Background()
	const n = idemadmin.MaxLimit + 50
	for i := range n {
		_, _, err := s.Begin(ctx, fmt.Sprintf("k/%05d", i), []byte("fp"))
		require.NoError(t, err)
	}
	c := serve(t, s, &idemadmin.Options{Now: clock.Now})
	for _, limit := range []int{0, idemadmin.MaxLimit + 20, idemadmin.MaxLimit} {
		var keys []string
		require.NoError(t, c.List(ctx, idemadmin.Filter{Limit: limit}, func(j idemadmin.Record) error {
			keys = append(keys, j.Key)
			return nil
		}))
		want := n
		if limit > 0 {
			want = limit
		}
		require.Len(t, keys, want, "limit %d", limit)
		for i, k := range keys {
			require.Equal(t, fmt.Sprintf("k/%05d", i), k)
		}
	}
}
