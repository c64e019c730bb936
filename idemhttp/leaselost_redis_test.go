//go:build unix

package idemhttp_test

import (
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemhttp"
	"github.com/idemdb/idem/idemtest"
	"github.com/idemdb/idem/internal/redistest"
	"github.com/idemdb/idem/redisstore"
)

// Two instances of a service share one real Redis, each with its own
// client, store and server. Instance A's handler is held past its lease;
// instance B takes the key over and completes it; then A's handler
// finishes. The store refuses A's outcome (fencing), and A's client gets
// B's response, marked as a replay, never A's own body.
func TestLeaseLostAcrossInstancesOnRedis(t *testing.T) {
	const leaseTTL = 30 * time.Second // renewed every 10s of real time: not during the test
	srv := redistest.Start(t)
	clock := idemtest.NewClock()
	runs := new(atomic.Int64)
	urls := map[string]string{}
	handlers := map[string]*pausable{}
	for _, name := range []string{"A", "B"} {
		rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
		t.Cleanup(func() { rdb.Close() })
		s, err := redisstore.Open(rdb, &idem.Options{Now: clock.Now, LeaseTTL: leaseTTL, GCInterval: -1})
		require.NoError(t, err)
		t.Cleanup(func() { s.Close() })
		p := &pausable{name: name, runs: runs,
			started: map[int64]chan struct{}{}, hold: map[int64]chan struct{}{}}
		handlers[name] = p
		hs := httptest.NewServer(idemhttp.New(s, nil)(p))
		t.Cleanup(hs.Close)
		urls[name] = hs.URL + "/payments"
	}
	started, release := make(chan struct{}), make(chan struct{})
	handlers["A"].started[1], handlers["A"].hold[1] = started, release
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})

	first := sendAsync(t, urls["A"], "order-1", "5000")
	<-started
	clock.Advance(leaseTTL + time.Second) // A's lease lapses, A's handler still runs

	newer := send(t, urls["B"], "order-1", "5000")
	require.Equal(t, http.StatusCreated, newer.status)
	require.Equal(t, "run 2 on B", newer.body, "B took the lapsed key over")

	close(release)
	stale := <-first
	require.Equal(t, http.StatusCreated, stale.status, "body: %s", stale.body)
	require.Equal(t, "run 2 on B", stale.body, "A's client gets B's stored outcome, never A's refused one")
	require.Equal(t, "true", stale.header.Get("Idempotent-Replayed"))
	require.Equal(t, "2", stale.header.Get("X-Run"))

	for _, name := range []string{"A", "B"} {
		again := send(t, urls[name], "order-1", "5000")
		require.Equal(t, "run 2 on B", again.body)
		require.Equal(t, "true", again.header.Get("Idempotent-Replayed"))
	}
	require.EqualValues(t, 2, runs.Load())
}
