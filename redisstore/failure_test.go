//go:build unix

package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemtest"
	"github.com/idemdb/idem/internal/redistest"
)

var fp = []byte("fingerprint")

// TestRedisDown stops Redis while a store uses it: every call fails with
// an error that names Redis and reaches the refused connection, no lease
// is granted and no function runs; once Redis is back on the same port,
// the store works again, including the lease held across the outage.
func TestRedisDown(t *testing.T) {
	ctx := context.Background()
	// Persistence on, so that a restart finds the records again.
	srv := redistest.Start(t, "--appendonly", "yes", "--appendfsync", "always")
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, DialTimeout: time.Second, MaxRetries: 1, ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = rdb.Close() })
	s := storeOn(t, rdb, nil, &idem.Options{GCInterval: -1})

	_, _, err := s.Do(ctx, "before", fp, func(context.Context) ([]byte, error) { return []byte("stored"), nil })
	require.NoError(t, err)
	held, _, err := s.Begin(ctx, "held", fp)
	require.NoError(t, err)
	require.NotNil(t, held)
	leases := s.Stats().Leases

	srv.Stop()

	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := fmt.Sprintf("down-%d", g)
			l, rec, err := s.Begin(ctx, key, fp)
			assert.Nil(t, l, "no lease without Redis")
			assert.Nil(t, rec)
			assertRedisDown(t, err, fmt.Sprintf("idem: begin %q: redis", key))
			_, _, err = s.Do(ctx, key, fp, func(context.Context) ([]byte, error) {
				t.Errorf("fn ran for %s while Redis was down", key)
				return nil, nil
			})
			assertRedisDown(t, err, "")
		}()
	}
	wg.Wait()
	_, err = s.Get(ctx, "before")
	assertRedisDown(t, err, `idem: get "before": redis get`)
	err = held.Complete(ctx, []byte("late"))
	assertRedisDown(t, err, `idem: complete "held": redis`)
	assert.NotErrorIs(t, err, idem.ErrLeaseLost, "the lease is not lost, Redis is unreachable")
	assertRedisDown(t, s.Delete(ctx, "before"), "")
	assert.Equal(t, leases, s.Stats().Leases, "no lease granted while Redis was down")

	srv.Restart()

	// go-redis's pool, after failing to dial PoolSize times, answers with
	// the last dial error until a background probe (once a second)
	// connects again: recovery takes up to about a second.
	var rec *idem.Record
	deadline := time.Now().Add(10 * time.Second)
	for rec, err = s.Get(ctx, "before"); err != nil && time.Now().Before(deadline); rec, err = s.Get(ctx, "before") {
		time.Sleep(50 * time.Millisecond)
	}
	require.NoError(t, err, "works again after the restart")
	assert.Equal(t, "stored", string(rec.Response))
	require.NoError(t, held.Complete(ctx, []byte("after restart")), "the lease held across the outage still ends")
	resp, replayed, err := s.Do(ctx, "held", fp, func(context.Context) ([]byte, error) { t.Error("ran twice"); return nil, nil })
	require.NoError(t, err)
	assert.True(t, replayed)
	assert.Equal(t, "after restart", string(resp))
	resp, replayed, err = s.Do(ctx, "down-0", fp, func(context.Context) ([]byte, error) { return []byte("now"), nil })
	require.NoError(t, err)
	assert.False(t, replayed, "a key tried during the outage was never claimed")
	assert.Equal(t, "now", string(resp))
}

func assertRedisDown(t *testing.T, err error, prefix string) {
	t.Helper()
	require.Error(t, err)
	assert.ErrorIs(t, err, syscall.ECONNREFUSED)
	if prefix != "" {
		assert.Contains(t, err.Error(), prefix)
	}
}

// TestRedisStalls pauses Redis (SIGSTOP: connections open, nothing
// answered): calls end at their context's deadline with an error that
// reaches it, and grant no lease. A claim whose reply was lost may still
// have been applied when Redis resumes; it then holds the key only until
// its lease lapses, and the next Begin takes over.
func TestRedisStalls(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	rdb := newClient(t, srv.Addr)
	clk := idemtest.NewClock()
	s := storeOn(t, rdb, nil, &idem.Options{GCInterval: -1, Now: clk.Now, LeaseTTL: 30 * time.Second})
	_, err := s.Get(ctx, "warm-up") // opens a connection before the pause
	require.ErrorIs(t, err, idem.ErrNotFound)

	srv.Pause()
	paused := true
	defer func() {
		if paused {
			srv.Resume()
		}
	}()
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			defer cancel()
			l, _, err := s.Begin(cctx, "stalled", fp)
			assert.Nil(t, l, "no lease without Redis")
			require.Error(t, err)
			assert.True(t, errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded),
				"the error reaches the deadline: %v", err)
			assert.Contains(t, err.Error(), `idem: begin "stalled": redis`)
		}()
	}
	wg.Wait()
	assert.Zero(t, s.Stats().Leases)

	srv.Resume()
	paused = false
	l, rec, err := s.Begin(ctx, "stalled", fp)
	if l == nil {
		// A claim sent before the deadline ran when Redis resumed.
		require.ErrorIs(t, err, idem.ErrInProgress)
		assert.True(t, rec.LeaseUntil.Equal(idemtest.T0.Add(30*time.Second)))
		clk.Advance(30 * time.Second)
		l, _, err = s.Begin(ctx, "stalled", fp)
		require.NoError(t, err)
		require.NotNil(t, l, "the orphaned claim is taken over once its lease lapses")
	}
	require.NoError(t, l.Complete(ctx, []byte("ok")))
}
