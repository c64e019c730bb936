//go:build unix

package redisstore_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemtest"
	"github.com/idemdb/idem/internal/redistest"
	"github.com/idemdb/idem/redisstore"
)

// instance is one service instance: its own go-redis client, its own
// store on the shared Redis, its own HTTP server on loopback.
type instance struct {
	name string
	s    *idem.Store
	srv  *httptest.Server
}

// chargeHandler runs the side effect (counted in runs) at most once per
// Idempotency-Key through s.Do, answering 409 while another request with
// the key runs, on this instance or another.
func chargeHandler(name string, s *idem.Store, runs *sync.Map) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := r.Header.Get("Idempotency-Key")
		body, err := io.ReadAll(r.Body)
		if err != nil || key == "" {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		fp := sha256.Sum256(body)
		resp, replayed, err := s.Do(r.Context(), key, fp[:], func(context.Context) ([]byte, error) {
			n, _ := runs.LoadOrStore(key, new(atomic.Int32))
			n.(*atomic.Int32).Add(1)
			time.Sleep(2 * time.Millisecond) // the side effect takes a moment
			return []byte(fmt.Sprintf("charged %s on %s", body, name)), nil
		})
		switch {
		case errors.Is(err, idem.ErrInProgress):
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusConflict)
			return
		case err != nil:
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Idempotent-Replayed", fmt.Sprint(replayed))
		_, _ = w.Write(resp)
	})
}

// TestInstancesShareKeys runs two instances on one Redis, each with its
// own client, store and HTTP server, and sends every one of 100 keys many
// concurrent requests spread across both servers: each key's side effect
// runs exactly once, and every request gets that one run's response.
//
// The service here calls Store.Do from a plain handler; package idemhttp
// puts the same thing behind the Idempotency-Key header.
func TestInstancesShareKeys(t *testing.T) {
	const keys, perKey = 100, 8
	redisSrv := redistest.Start(t)
	var runs sync.Map // key -> *atomic.Int32
	cfg := &redisstore.Config{Prefix: uniquePrefix()}
	var insts []*instance
	for _, name := range []string{"A", "B"} {
		s, err := idem.New(redisstore.NewBackend(newClient(t, redisSrv.Addr), cfg), &idem.Options{GCInterval: -1})
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, s.Close()) })
		srv := httptest.NewServer(chargeHandler(name, s, &runs))
		t.Cleanup(srv.Close)
		insts = append(insts, &instance{name: name, s: s, srv: srv})
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 30 * time.Second}
	t.Cleanup(client.CloseIdleConnections)

	type answer struct {
		body     string
		replayed bool
	}
	answers := make([][]answer, keys)
	var wg sync.WaitGroup
	for k := range keys {
		answers[k] = make([]answer, perKey)
		for i := range perKey {
			wg.Add(1)
			go func() {
				defer wg.Done()
				inst := insts[i%len(insts)]
				key := fmt.Sprintf("order-%d", k)
				for attempt := 0; ; attempt++ {
					req, err := http.NewRequest(http.MethodPost, inst.srv.URL+"/charge", strings.NewReader(fmt.Sprintf("%d cents", 100+k)))
					if !assert.NoError(t, err) {
						return
					}
					req.Header.Set("Idempotency-Key", key)
					resp, err := client.Do(req)
					if !assert.NoError(t, err) {
						return
					}
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode == http.StatusConflict && attempt < 1000 {
						time.Sleep(2 * time.Millisecond)
						continue
					}
					if !assert.Equal(t, http.StatusOK, resp.StatusCode, "%s on %s: %s", key, inst.name, body) {
						return
					}
					answers[k][i] = answer{string(body), resp.Header.Get("Idempotent-Replayed") == "true"}
					return
				}
			}()
		}
	}
	wg.Wait()

	ranOn := map[string]int{}
	for k := range keys {
		key := fmt.Sprintf("order-%d", k)
		n, ok := runs.Load(key)
		require.True(t, ok, "%s never ran", key)
		require.Equal(t, int32(1), n.(*atomic.Int32).Load(), "%s: side effect runs", key)
		first := 0
		for _, a := range answers[k] {
			require.Equal(t, answers[k][0].body, a.body, "%s: every request gets the one run's response", key)
			if !a.replayed {
				first++
			}
		}
		require.Equal(t, 1, first, "%s: one original response, the rest replays", key)
		ranOn[answers[k][0].body[len(answers[k][0].body)-1:]]++
	}
	assert.Len(t, ranOn, 2, "both instances ran some keys: %v", ranOn)
	assert.Equal(t, uint64(keys), insts[0].s.Stats().Leases+insts[1].s.Stats().Leases, "one lease per key across both instances")
}

// TestClockSkew runs two instances whose clocks disagree. Leases lapse by
// the clock of the instance that asks: with skew well under the renewal
// margin (Do extends every third of LeaseTTL) a renewed lease is never
// taken over; with skew beyond it the instance ahead takes over early, and
// fencing still keeps the first holder from overwriting the newer outcome.
func TestClockSkew(t *testing.T) {
	ctx := context.Background()
	const lease = 30 * time.Second
	redisSrv := redistest.Start(t)
	pair := func(skew time.Duration) (a, b *idem.Store, advance func(time.Duration)) {
		cfg := &redisstore.Config{Prefix: uniquePrefix()}
		clkA, clkB := idemtest.NewClock(), idemtest.NewClock()
		clkB.Advance(skew)
		open := func(clk *idemtest.Clock) *idem.Store {
			s, err := idem.New(redisstore.NewBackend(newClient(t, redisSrv.Addr), cfg), &idem.Options{GCInterval: -1, LeaseTTL: lease, Now: clk.Now})
			require.NoError(t, err)
			t.Cleanup(func() { _ = s.Close() })
			return s
		}
		return open(clkA), open(clkB), func(d time.Duration) { clkA.Advance(d); clkB.Advance(d) }
	}

	t.Run("small skew, renewed lease holds", func(t *testing.T) {
		a, b, advance := pair(5 * time.Second)
		l, _, err := a.Begin(ctx, "k", fp)
		require.NoError(t, err)
		for range 10 {
			advance(lease / 3)
			require.NoError(t, l.Extend(ctx, lease), "A renews as Do does")
			bl, _, err := b.Begin(ctx, "k", fp)
			require.ErrorIs(t, err, idem.ErrInProgress)
			require.Nil(t, bl)
		}
		require.NoError(t, l.Complete(ctx, []byte("from A")))
	})

	t.Run("large skew, early takeover is fenced", func(t *testing.T) {
		a, b, advance := pair(25 * time.Second)
		la, _, err := a.Begin(ctx, "k", fp)
		require.NoError(t, err)
		advance(lease/3 - time.Second) // A has not renewed yet; B's clock reads past A's lease
		lb, _, err := b.Begin(ctx, "k", fp)
		require.NoError(t, err)
		require.NotNil(t, lb, "the instance ahead takes over early")
		assert.Greater(t, lb.Token(), la.Token())
		assert.ErrorIs(t, la.Extend(ctx, lease), idem.ErrLeaseLost)
		assert.ErrorIs(t, la.Complete(ctx, []byte("from A")), idem.ErrLeaseLost)
		require.NoError(t, lb.Complete(ctx, []byte("from B")))
		rec, err := a.Get(ctx, "k")
		require.NoError(t, err)
		assert.Equal(t, "from B", string(rec.Response))
	})
}
