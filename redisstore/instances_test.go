//go:build unix

package redisstore_test

import (
	"context"
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
	"github.com/idemdb/idem/idemhttp"
	"github.com/idemdb/idem/idemtest"
	"github.com/idemdb/idem/internal/redistest"
	"github.com/idemdb/idem/redisstore"
)

// instance is one service instance: its own go-redis client, its own
// store on the shared Redis, its own idemhttp server on loopback.
type instance struct {
	name string
	s    *idem.Store
	srv  *httptest.Server
}

// chargeHandler is the service's handler, behind idemhttp: it counts its
// runs per Idempotency-Key in runs and answers 201 with who charged what.
func chargeHandler(name string, runs *sync.Map) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := r.Header.Get("Idempotency-Key")
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		n, _ := runs.LoadOrStore(key, new(atomic.Int32))
		n.(*atomic.Int32).Add(1)
		time.Sleep(2 * time.Millisecond) // the side effect takes a moment
		w.Header().Set("X-Charged-By", name)
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, "charged %s on %s", body, name)
	})
}

// TestInstancesShareKeys runs two instances on one Redis, each with its
// own client, store and idemhttp server, and sends every one of 100 keys
// many concurrent requests spread across both servers: each key's handler
// runs exactly once, and every request gets that one run's response, the
// others marked as replays.
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
		srv := httptest.NewServer(idemhttp.New(s, nil)(chargeHandler(name, &runs)))
		t.Cleanup(srv.Close)
		insts = append(insts, &instance{name: name, s: s, srv: srv})
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 30 * time.Second}
	t.Cleanup(client.CloseIdleConnections)

	type answer struct {
		status    int
		body      string
		chargedBy string
		replayed  string // the Idempotent-Replayed header
	}
	answers := make([][]answer, keys)
	var wg sync.WaitGroup
	for k := range keys {
		answers[k] = make([]answer, perKey)
		for i := range perKey {
			wg.Go(func() {
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
						// Still running on one of the instances. Retry-After
						// is the time until its lease would lapse; the run
						// ends long before that.
						if !assert.NotEmpty(t, resp.Header.Get("Retry-After"), "%s: 409 without Retry-After", key) {
							return
						}
						time.Sleep(2 * time.Millisecond)
						continue
					}
					answers[k][i] = answer{resp.StatusCode, string(body), resp.Header.Get("X-Charged-By"), resp.Header.Get("Idempotent-Replayed")}
					return
				}
			})
		}
	}
	wg.Wait()

	ranOn := map[string]int{}
	for k := range keys {
		key := fmt.Sprintf("order-%d", k)
		n, ok := runs.Load(key)
		require.True(t, ok, "%s never ran", key)
		require.Equal(t, int32(1), n.(*atomic.Int32).Load(), "%s: handler runs", key)
		want := answers[k][0]
		require.Equal(t, http.StatusCreated, want.status, "%s: %s", key, want.body)
		require.Equal(t, fmt.Sprintf("charged %d cents on %s", 100+k, want.chargedBy), want.body, key)
		originals := 0
		for _, a := range answers[k] {
			require.Equal(t, want.status, a.status, "%s: every request gets the one run's status", key)
			require.Equal(t, want.body, a.body, "%s: every request gets the one run's body", key)
			require.Equal(t, want.chargedBy, a.chargedBy, "%s: every request gets the one run's headers", key)
			switch a.replayed {
			case "":
				originals++
			case "true":
			default:
				t.Fatalf("%s: Idempotent-Replayed: %q", key, a.replayed)
			}
		}
		require.Equal(t, 1, originals, "%s: one original response, the rest marked Idempotent-Replayed: true", key)
		ranOn[want.chargedBy]++
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
