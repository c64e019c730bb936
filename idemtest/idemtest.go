package idemtest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem"
)

// Opener opens a fresh, empty store with opts on the backend under test,
// and arranges for it to be closed when t ends. opts is never nil; its Now
// is the suite's clock.
type Opener func(t *testing.T, opts *idem.Options) *idem.Store

// Run runs the whole conformance suite against the stores open makes.
func Run(t *testing.T, open Opener) {
	tests := []struct {
		name string
		fn   func(*testing.T, Opener)
	}{
		{"StateTable", testStateTable},
		{"Fencing", testFencing},
		{"ReleaseFreesKey", testRelease},
		{"Extend", testExtend},
		{"Delete", testDelete},
		{"TTL", testTTL},
		{"ExpiredKeepsFencing", testExpiredKeepsFencing},
		{"Do", testDo},
		{"DoRenewsLease", testDoRenews},
		{"BadInput", testBadInput},
		{"Closed", testClosed},
		{"RecordsAreCopies", testCopies},
		{"Scan", testScan},
		{"ExactlyOneLease", testExactlyOneLease},
		{"ConcurrentDo", testConcurrentDo},
		{"ReadCache", testReadCache},
		{"Stats", testStats},
		{"ForceRelease", testForceRelease},
		{"ForceFail", testForceFail},
		{"ForceRace", testForceRace},
		{"ForceDelete", testForceDelete},
		{"Restore", testRestore},
		{"Observer", testObserver},
		{"RandomOps", testRandomOps},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open) })
	}
}

const (
	leaseTTL     = 30 * time.Second
	completedTTL = 24 * time.Hour
	failedTTL    = 12 * time.Hour
)

// fixture opens a store on a fresh clock with known lifetimes.
func fixture(t *testing.T, open Opener, mod ...func(*idem.Options)) (*idem.Store, *Clock) {
	t.Helper()
	clk := NewClock()
	opts := &idem.Options{
		LeaseTTL:     leaseTTL,
		CompletedTTL: completedTTL,
		FailedTTL:    failedTTL,
		GCInterval:   -1,
		Now:          clk.Now,
	}
	for _, m := range mod {
		m(opts)
	}
	return open(t, opts), clk
}

var (
	fpA = []byte("fingerprint-A")
	fpB = []byte("fingerprint-B")
)

func begin(t *testing.T, s *idem.Store, key string, fp []byte) *idem.Lease {
	t.Helper()
	l, rec, err := s.Begin(context.Background(), key, fp)
	require.NoError(t, err)
	require.NotNil(t, l, "want a lease on %q", key)
	require.Equal(t, idem.StateInProgress, rec.State)
	return l
}

func testStateTable(t *testing.T, open Opener) {
	ctx := context.Background()

	t.Run("new key", func(t *testing.T) {
		s, _ := fixture(t, open)
		l, rec, err := s.Begin(ctx, "k", fpA)
		require.NoError(t, err)
		require.NotNil(t, l)
		assert.NotZero(t, l.Token())
		assert.Equal(t, l.Token(), rec.Token)
		assert.Equal(t, 1, rec.Attempts)
		assert.Equal(t, fpA, rec.Fingerprint)
		assert.True(t, rec.LeaseUntil.Equal(T0.Add(leaseTTL)), "lease until %v", rec.LeaseUntil)
		assert.True(t, rec.ExpiresAt.Equal(T0.Add(completedTTL)), "in-progress record keeps its fingerprint for the record TTL, got %v", rec.ExpiresAt)
		got, err := s.Get(ctx, "k")
		require.NoError(t, err)
		assert.Equal(t, idem.StateInProgress, got.State)
		assert.Equal(t, "k", got.Key)
	})

	t.Run("in progress, lease live", func(t *testing.T) {
		s, clk := fixture(t, open)
		begin(t, s, "k", fpA)
		clk.Advance(leaseTTL - time.Nanosecond)
		l, rec, err := s.Begin(ctx, "k", fpA)
		assert.ErrorIs(t, err, idem.ErrInProgress)
		assert.Nil(t, l)
		require.NotNil(t, rec)
		assert.True(t, rec.LeaseUntil.Equal(T0.Add(leaseTTL)))
		_, rec, err = s.Begin(ctx, "k", fpB)
		assert.ErrorIs(t, err, idem.ErrFingerprintMismatch)
		require.NotNil(t, rec)
		assert.Equal(t, fpA, rec.Fingerprint)
	})

	t.Run("in progress, lease lapsed", func(t *testing.T) {
		s, clk := fixture(t, open)
		begin(t, s, "k", fpA)
		clk.Advance(leaseTTL)
		_, _, err := s.Begin(ctx, "k", fpB)
		assert.ErrorIs(t, err, idem.ErrFingerprintMismatch, "a lapsed lease still guards its fingerprint")
		first := rec0(t, s, "k").Token
		l, rec, err := s.Begin(ctx, "k", fpA)
		require.NoError(t, err)
		require.NotNil(t, l, "takeover")
		assert.Equal(t, first+1, l.Token())
		assert.Equal(t, 2, rec.Attempts)
		assert.True(t, rec.CreatedAt.Equal(T0), "takeover keeps the record")
		assert.Equal(t, uint64(1), s.Stats().Takeovers)
	})

	t.Run("completed", func(t *testing.T) {
		s, clk := fixture(t, open)
		require.NoError(t, begin(t, s, "k", fpA).Complete(ctx, []byte("resp")))
		clk.Advance(completedTTL - time.Second)
		l, rec, err := s.Begin(ctx, "k", fpA)
		require.NoError(t, err)
		assert.Nil(t, l, "replay, not a lease")
		assert.Equal(t, idem.StateCompleted, rec.State)
		assert.Equal(t, []byte("resp"), rec.Response)
		assert.True(t, rec.ExpiresAt.Equal(T0.Add(completedTTL)))
		_, rec, err = s.Begin(ctx, "k", fpB)
		assert.ErrorIs(t, err, idem.ErrFingerprintMismatch)
		assert.Equal(t, []byte("resp"), rec.Response)
	})

	t.Run("failed, not retryable", func(t *testing.T) {
		s, _ := fixture(t, open)
		require.NoError(t, begin(t, s, "k", fpA).Fail(ctx, []byte("declined"), false))
		l, rec, err := s.Begin(ctx, "k", fpA)
		require.NoError(t, err)
		assert.Nil(t, l)
		assert.Equal(t, idem.StateFailed, rec.State)
		assert.False(t, rec.Retryable)
		assert.Equal(t, []byte("declined"), rec.Response)
		assert.True(t, rec.ExpiresAt.Equal(T0.Add(failedTTL)), "failed records live FailedTTL")
		_, _, err = s.Begin(ctx, "k", fpB)
		assert.ErrorIs(t, err, idem.ErrFingerprintMismatch)
	})

	t.Run("failed, retryable", func(t *testing.T) {
		s, _ := fixture(t, open)
		first := begin(t, s, "k", fpA)
		require.NoError(t, first.Fail(ctx, []byte("timeout"), true))
		_, _, err := s.Begin(ctx, "k", fpB)
		assert.ErrorIs(t, err, idem.ErrFingerprintMismatch)
		l, rec, err := s.Begin(ctx, "k", fpA)
		require.NoError(t, err)
		require.NotNil(t, l, "a retryable failure runs again")
		assert.Equal(t, first.Token()+1, l.Token())
		assert.Equal(t, 2, rec.Attempts)
		assert.Nil(t, rec.Response)
		assert.False(t, rec.Retryable)
	})

	t.Run("expired", func(t *testing.T) {
		s, clk := fixture(t, open)
		old := begin(t, s, "k", fpA)
		require.NoError(t, old.Complete(ctx, []byte("resp")))
		clk.Advance(completedTTL)
		_, err := s.Get(ctx, "k")
		assert.ErrorIs(t, err, idem.ErrNotFound)
		l, rec, err := s.Begin(ctx, "k", fpB)
		require.NoError(t, err)
		require.NotNil(t, l, "an expired record is as good as none, whatever the fingerprint")
		assert.Equal(t, 1, rec.Attempts)
		assert.Greater(t, l.Token(), old.Token(), "tokens keep growing over an expired record")
		assert.Equal(t, fpB, rec.Fingerprint)
	})
}

func testFencing(t *testing.T, open Opener) {
	ctx := context.Background()
	s, clk := fixture(t, open)
	a := begin(t, s, "pay-1", fpA)
	clk.Advance(leaseTTL + time.Second)
	b := begin(t, s, "pay-1", fpA)
	require.Greater(t, b.Token(), a.Token())

	assert.ErrorIs(t, a.Complete(ctx, []byte("from A")), idem.ErrLeaseLost)
	assert.ErrorIs(t, a.Fail(ctx, []byte("from A"), false), idem.ErrLeaseLost)
	assert.ErrorIs(t, a.Extend(ctx, time.Hour), idem.ErrLeaseLost)
	assert.ErrorIs(t, a.Release(ctx), idem.ErrLeaseLost)
	rec, err := s.Get(ctx, "pay-1")
	require.NoError(t, err)
	assert.Equal(t, idem.StateInProgress, rec.State, "A's attempts changed nothing")
	assert.Equal(t, b.Token(), rec.Token)

	require.NoError(t, b.Complete(ctx, []byte("from B")))
	assert.ErrorIs(t, a.Complete(ctx, []byte("from A")), idem.ErrLeaseLost)
	assert.ErrorIs(t, b.Complete(ctx, []byte("again")), idem.ErrLeaseLost, "a lease ends once")
	rec, err = s.Get(ctx, "pay-1")
	require.NoError(t, err)
	assert.Equal(t, idem.StateCompleted, rec.State)
	assert.Equal(t, []byte("from B"), rec.Response)
	assert.GreaterOrEqual(t, s.Stats().LeaseLost, uint64(6))

	// A lapsed lease nobody took over can still end: nobody else ran.
	c := begin(t, s, "pay-2", fpA)
	clk.Advance(2 * leaseTTL)
	require.NoError(t, c.Complete(ctx, []byte("late but alone")))
}

func testRelease(t *testing.T, open Opener) {
	ctx := context.Background()
	s, _ := fixture(t, open)
	l := begin(t, s, "k", fpA)
	require.NoError(t, l.Release(ctx))
	_, err := s.Get(ctx, "k")
	assert.ErrorIs(t, err, idem.ErrNotFound)
	l2 := begin(t, s, "k", fpB)
	assert.ErrorIs(t, l.Complete(ctx, nil), idem.ErrLeaseLost, "the released lease stays dead")
	require.NoError(t, l2.Complete(ctx, []byte("b")))
}

func testExtend(t *testing.T, open Opener) {
	ctx := context.Background()
	s, clk := fixture(t, open)
	l := begin(t, s, "k", fpA)
	clk.Advance(leaseTTL - time.Second)
	require.NoError(t, l.Extend(ctx, time.Minute))
	assert.True(t, l.Until().Equal(clk.Now().Add(time.Minute)))
	clk.Advance(leaseTTL)
	_, rec, err := s.Begin(ctx, "k", fpA)
	assert.ErrorIs(t, err, idem.ErrInProgress, "extended lease is live")
	assert.True(t, rec.LeaseUntil.Equal(l.Until()))
	assert.Error(t, l.Extend(ctx, 0))
	// An extension past the record's life keeps the record alive as long.
	require.NoError(t, l.Extend(ctx, 2*completedTTL))
	clk.Advance(completedTTL + time.Hour)
	_, _, err = s.Begin(ctx, "k", fpA)
	assert.ErrorIs(t, err, idem.ErrInProgress)
	require.NoError(t, l.Complete(ctx, []byte("done")))
}

func testDelete(t *testing.T, open Opener) {
	ctx := context.Background()
	s, _ := fixture(t, open)
	require.NoError(t, s.Delete(ctx, "absent"))
	l := begin(t, s, "k", fpA)
	require.NoError(t, s.Delete(ctx, "k"))
	assert.ErrorIs(t, l.Complete(ctx, []byte("x")), idem.ErrLeaseLost)
	_, err := s.Get(ctx, "k")
	assert.ErrorIs(t, err, idem.ErrNotFound)
	l2 := begin(t, s, "k", fpA)
	assert.ErrorIs(t, l.Complete(ctx, []byte("x")), idem.ErrLeaseLost, "a re-created key is another record")
	require.NoError(t, l2.Complete(ctx, []byte("y")))
}

func testTTL(t *testing.T, open Opener) {
	ctx := context.Background()
	s, clk := fixture(t, open)
	week := 7 * 24 * time.Hour
	require.NoError(t, begin(t, s, "order", fpA).Complete(ctx, []byte("o")))
	pay := ctxLease(t, s, idem.WithTTL(ctx, week), "payment", fpA)
	require.NoError(t, pay.Complete(ctx, []byte("p")), "the lease keeps its TTL without the context")
	rec, err := s.Get(ctx, "payment")
	require.NoError(t, err)
	assert.True(t, rec.ExpiresAt.Equal(T0.Add(week)), "payment expires at %v", rec.ExpiresAt)

	clk.Advance(completedTTL - time.Nanosecond)
	_, err = s.Get(ctx, "order")
	require.NoError(t, err)
	clk.Advance(time.Nanosecond)
	_, err = s.Get(ctx, "order")
	assert.ErrorIs(t, err, idem.ErrNotFound, "order expired at CompletedTTL")
	_, err = s.Get(ctx, "payment")
	require.NoError(t, err, "payment still kept")
	clk.Advance(week - completedTTL)
	_, err = s.Get(ctx, "payment")
	assert.ErrorIs(t, err, idem.ErrNotFound)

	// WithLeaseTTL sets the lease.
	s2, clk2 := fixture(t, open)
	l := ctxLease(t, s2, idem.WithLeaseTTL(ctx, time.Hour), "long", fpA)
	assert.True(t, l.Until().Equal(clk2.Now().Add(time.Hour)))
	clk2.Advance(time.Hour - time.Second)
	_, _, err = s2.Begin(ctx, "long", fpA)
	assert.ErrorIs(t, err, idem.ErrInProgress)
}

func rec0(t *testing.T, s *idem.Store, key string) *idem.Record {
	t.Helper()
	rec, err := s.Get(context.Background(), key)
	require.NoError(t, err)
	return rec
}

func ctxLease(t *testing.T, s *idem.Store, ctx context.Context, key string, fp []byte) *idem.Lease {
	t.Helper()
	l, _, err := s.Begin(ctx, key, fp)
	require.NoError(t, err)
	require.NotNil(t, l)
	return l
}

func testExpiredKeepsFencing(t *testing.T, open Opener) {
	ctx := context.Background()
	s, clk := fixture(t, open)
	a := begin(t, s, "k", fpA)
	clk.Advance(completedTTL + time.Hour) // A stalls past the record's whole life
	b := begin(t, s, "k", fpA)
	assert.ErrorIs(t, a.Complete(ctx, []byte("stale")), idem.ErrLeaseLost)
	require.NoError(t, b.Complete(ctx, []byte("fresh")))
	rec, err := s.Get(ctx, "k")
	require.NoError(t, err)
	assert.Equal(t, []byte("fresh"), rec.Response)
}

func testDo(t *testing.T, open Opener) {
	ctx := context.Background()
	s, clk := fixture(t, open)
	var runs atomic.Int32
	charge := func(ctx context.Context) ([]byte, error) {
		runs.Add(1)
		return []byte("charged 5000"), nil
	}
	resp, replayed, err := s.Do(ctx, "pay", fpA, charge)
	require.NoError(t, err)
	assert.False(t, replayed)
	assert.Equal(t, "charged 5000", string(resp))
	for i := 0; i < 3; i++ {
		resp, replayed, err = s.Do(ctx, "pay", fpA, charge)
		require.NoError(t, err)
		assert.True(t, replayed)
		assert.Equal(t, "charged 5000", string(resp))
	}
	assert.Equal(t, int32(1), runs.Load())
	_, _, err = s.Do(ctx, "pay", fpB, charge)
	assert.ErrorIs(t, err, idem.ErrFingerprintMismatch)

	// An ordinary error leaves the key retryable.
	boom := errors.New("gateway timeout")
	_, _, err = s.Do(ctx, "retry", fpA, func(context.Context) ([]byte, error) { runs.Add(1); return nil, boom })
	assert.ErrorIs(t, err, boom)
	rec, err := s.Get(ctx, "retry")
	require.NoError(t, err)
	assert.Equal(t, idem.StateFailed, rec.State)
	assert.True(t, rec.Retryable)
	resp, replayed, err = s.Do(ctx, "retry", fpA, charge)
	require.NoError(t, err)
	assert.False(t, replayed, "ran again")
	assert.Equal(t, "charged 5000", string(resp))

	// A permanent failure is replayed.
	declined := errors.New("card declined")
	resp, _, err = s.Do(ctx, "perm", fpA, func(context.Context) ([]byte, error) {
		return nil, idem.Permanent(declined, []byte("402 declined"))
	})
	assert.ErrorIs(t, err, declined)
	assert.Equal(t, "402 declined", string(resp))
	before := runs.Load()
	resp, replayed, err = s.Do(ctx, "perm", fpA, charge)
	assert.ErrorIs(t, err, idem.ErrFailed)
	assert.True(t, replayed)
	assert.Equal(t, "402 declined", string(resp))
	assert.Equal(t, before, runs.Load())

	// A panic leaves the key retryable, keeping its fingerprint, and goes
	// on.
	assert.Panics(t, func() {
		_, _, _ = s.Do(ctx, "panic", fpA, func(context.Context) ([]byte, error) { panic("boom") })
	})
	rec, err = s.Get(ctx, "panic")
	require.NoError(t, err)
	assert.Equal(t, idem.StateFailed, rec.State, "failed after panic")
	assert.True(t, rec.Retryable, "and may run again")
	_, _, err = s.Do(ctx, "panic", fpB, charge)
	assert.ErrorIs(t, err, idem.ErrFingerprintMismatch, "another request under the key is still refused")
	before = runs.Load()
	_, replayed, err = s.Do(ctx, "panic", fpA, charge)
	require.NoError(t, err)
	assert.False(t, replayed, "the same request runs again")
	assert.Equal(t, before+1, runs.Load())

	// Another caller's live lease: ErrInProgress, fn not run.
	l := begin(t, s, "busy", fpA)
	before = runs.Load()
	_, _, err = s.Do(ctx, "busy", fpA, charge)
	assert.ErrorIs(t, err, idem.ErrInProgress)
	assert.Equal(t, before, runs.Load())
	require.NoError(t, l.Release(ctx))

	// A caller that goes away after fn ran still gets its outcome stored.
	cctx, cancel := context.WithCancel(ctx)
	_, _, err = s.Do(cctx, "gone", fpA, func(context.Context) ([]byte, error) {
		cancel()
		return []byte("done"), nil
	})
	require.NoError(t, err)
	rec, err = s.Get(ctx, "gone")
	require.NoError(t, err)
	assert.Equal(t, idem.StateCompleted, rec.State)

	// A response too large to store: fn's side effect happened, so the key
	// ends as a permanent failure rather than stuck in progress or run again.
	big := make([]byte, s.Options().MaxResponseSize+1)
	_, _, err = s.Do(ctx, "big", fpA, func(context.Context) ([]byte, error) { return big, nil })
	assert.ErrorIs(t, err, idem.ErrTooLarge)
	clk.Advance(time.Second)
	before = runs.Load()
	_, replayed, err = s.Do(ctx, "big", fpA, charge)
	assert.ErrorIs(t, err, idem.ErrFailed, "not stuck in progress, not run again")
	assert.True(t, replayed)
	assert.Equal(t, before, runs.Load())
}

func testDoRenews(t *testing.T, open Opener) {
	// Renewals are scheduled by the real clock (every third of the lease)
	// and judged by the store's: the store's clock is moved well past the
	// lease a step at a time, each step waiting for a renewal to carry the
	// lease past the new now, so a slow machine makes the test slower, not
	// wrong.
	const lease = 60 * time.Millisecond
	s, clk := fixture(t, open, func(o *idem.Options) { o.LeaseTTL = lease })
	ctx := context.Background()
	probeErrs := make(chan error, 1)
	_, _, err := s.Do(ctx, "slow", fpA, func(ctx context.Context) ([]byte, error) {
		for range 15 {
			clk.Advance(lease * 2 / 3)
			deadline := time.Now().Add(10 * time.Second)
			for {
				rec, err := s.Get(ctx, "slow")
				if err != nil {
					probeErrs <- fmt.Errorf("get: %w", err)
					return nil, nil
				}
				if rec.LeaseUntil.After(clk.Now().Add(lease / 2)) {
					break
				}
				if time.Now().After(deadline) {
					probeErrs <- fmt.Errorf("the lease was not renewed: it lasts until %v, now is %v", rec.LeaseUntil, clk.Now())
					return nil, nil
				}
				time.Sleep(time.Millisecond)
			}
			l, _, err := s.Begin(ctx, "slow", fpA)
			if l != nil {
				probeErrs <- fmt.Errorf("lease lapsed while fn ran: probe got token %d", l.Token())
				return nil, nil
			}
			if !errors.Is(err, idem.ErrInProgress) {
				probeErrs <- fmt.Errorf("probe: want ErrInProgress, got %v", err)
				return nil, nil
			}
		}
		return []byte("ok"), ctx.Err()
	})
	select {
	case e := <-probeErrs:
		t.Fatal(e)
	default:
	}
	require.NoError(t, err)
}

func testBadInput(t *testing.T, open Opener) {
	ctx := context.Background()
	s, _ := fixture(t, open, func(o *idem.Options) { o.MaxResponseSize = 100 })
	require.NoError(t, begin(t, s, "keep", fpA).Complete(ctx, []byte("kept")))

	for name, key := range map[string]string{
		"empty":     "",
		"too long":  strings.Repeat("k", 256),
		"not utf-8": "bad\xff",
		"control":   "a\nb",
		"nul":       "a\x00b",
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := s.Begin(ctx, key, fpA)
			assert.ErrorIs(t, err, idem.ErrInvalidKey)
			_, err = s.Get(ctx, key)
			assert.ErrorIs(t, err, idem.ErrInvalidKey)
			assert.ErrorIs(t, s.Delete(ctx, key), idem.ErrInvalidKey)
			_, _, err = s.Do(ctx, key, fpA, func(context.Context) ([]byte, error) { t.Fatal("fn ran"); return nil, nil })
			assert.ErrorIs(t, err, idem.ErrInvalidKey)
		})
	}
	_, _, err := s.Begin(ctx, strings.Repeat("k", 255), fpA)
	assert.NoError(t, err, "255 bytes is allowed")
	_, _, err = s.Begin(ctx, "ключ-🔑", fpA)
	assert.NoError(t, err, "UTF-8 is allowed")

	_, _, err = s.Begin(ctx, "fp", make([]byte, idem.MaxFingerprintSize+1))
	assert.ErrorIs(t, err, idem.ErrTooLarge)

	l := begin(t, s, "big", fpA)
	err = l.Complete(ctx, make([]byte, 101))
	assert.ErrorIs(t, err, idem.ErrTooLarge)
	assert.Contains(t, err.Error(), "101 bytes")
	assert.ErrorIs(t, l.Fail(ctx, make([]byte, 101), false), idem.ErrTooLarge)
	require.NoError(t, l.Complete(ctx, make([]byte, 100)), "the lease survives a refused response")

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, _, err = s.Begin(cctx, "c", fpA)
	assert.ErrorIs(t, err, context.Canceled)
	_, err = s.Get(cctx, "keep")
	assert.ErrorIs(t, err, context.Canceled)

	rec, err := s.Get(ctx, "keep")
	require.NoError(t, err)
	assert.Equal(t, []byte("kept"), rec.Response, "nothing stored was harmed")
}

func testClosed(t *testing.T, open Opener) {
	ctx := context.Background()
	s, _ := fixture(t, open)
	l := begin(t, s, "k", fpA)
	require.NoError(t, s.Close())
	require.NoError(t, s.Close(), "Close twice is safe")
	_, _, err := s.Begin(ctx, "k2", fpA)
	assert.ErrorIs(t, err, idem.ErrClosed)
	_, err = s.Get(ctx, "k")
	assert.ErrorIs(t, err, idem.ErrClosed)
	assert.ErrorIs(t, s.Delete(ctx, "k"), idem.ErrClosed)
	assert.ErrorIs(t, l.Complete(ctx, nil), idem.ErrClosed)
	_, err = s.CollectGarbage(ctx)
	assert.ErrorIs(t, err, idem.ErrClosed)
}

func testCopies(t *testing.T, open Opener) {
	ctx := context.Background()
	s, _ := fixture(t, open, func(o *idem.Options) { o.CacheSize = 1 << 20 })
	require.NoError(t, begin(t, s, "k", fpA).Complete(ctx, []byte("resp")))
	for i := 0; i < 3; i++ {
		rec, err := s.Get(ctx, "k")
		require.NoError(t, err)
		require.Equal(t, "resp", string(rec.Response))
		rec.Response[0] = 'X'
		rec.Fingerprint[0] = 'X'
		time.Sleep(5 * time.Millisecond) // let the cache admit the record
	}
	_, rec, err := s.Begin(ctx, "k", fpA)
	require.NoError(t, err)
	assert.Equal(t, "resp", string(rec.Response))
}

func testScan(t *testing.T, open Opener) {
	ctx := context.Background()
	s, clk := fixture(t, open)
	require.NoError(t, begin(t, s, "t1/a", fpA).Complete(ctx, []byte("a")))
	begin(t, s, "t1/b", fpA)
	require.NoError(t, begin(t, s, "t2/c", fpA).Fail(ctx, nil, false))
	l := begin(t, s, "t1/gone", fpA)
	clk.Advance(time.Second)
	require.NoError(t, l.Complete(idem.WithTTL(ctx, time.Nanosecond), nil))
	clk.Advance(time.Second)
	got := map[string]idem.State{}
	require.NoError(t, s.Scan(ctx, "t1/", func(key string, rec *idem.Record, err error) error {
		require.NoError(t, err)
		assert.Equal(t, key, rec.Key)
		got[key] = rec.State
		return nil
	}))
	assert.Equal(t, map[string]idem.State{"t1/a": idem.StateCompleted, "t1/b": idem.StateInProgress}, got, "expired t1/gone is skipped")
	stop := errors.New("stop")
	n := 0
	err := s.Scan(ctx, "", func(string, *idem.Record, error) error { n++; return stop })
	assert.ErrorIs(t, err, stop)
	assert.Equal(t, 1, n)
}

// testExactlyOneLease races many goroutines on each of many fresh keys:
// exactly one gets the lease, and every other is answered from the
// winner's record.
func testExactlyOneLease(t *testing.T, open Opener) {
	keys, racers := 1000, 16
	if testing.Short() {
		keys = 200
	}
	ctx := context.Background()
	s, _ := fixture(t, open)
	type result struct {
		token uint64
		lease bool
	}
	results := make([][]result, keys)
	var wg sync.WaitGroup
	var failures atomic.Int32
	for k := 0; k < keys; k++ {
		results[k] = make([]result, racers)
		start := make(chan struct{})
		for g := 0; g < racers; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				key := fmt.Sprintf("race-%d", k)
				l, rec, err := s.Begin(ctx, key, fpA)
				switch {
				case l != nil:
					results[k][g] = result{token: l.Token(), lease: true}
				case errors.Is(err, idem.ErrInProgress) && rec != nil:
					results[k][g] = result{token: rec.Token}
				default:
					failures.Add(1)
					t.Errorf("key %s: unexpected answer: lease=%v rec=%v err=%v", key, l, rec, err)
				}
			}()
		}
		close(start)
	}
	wg.Wait()
	require.Zero(t, failures.Load())
	for k, rs := range results {
		leases := 0
		var winner uint64
		for _, r := range rs {
			if r.lease {
				leases++
				winner = r.token
			}
		}
		require.Equal(t, 1, leases, "key race-%d: leases granted", k)
		for _, r := range rs {
			require.Equal(t, winner, r.token, "key race-%d: loser answered from another record", k)
		}
	}
	assert.Equal(t, uint64(keys), s.Stats().Leases)
}

// testConcurrentDo runs Do on one key from many goroutines, with retries
// for ErrInProgress: fn runs once and everyone gets its response.
func testConcurrentDo(t *testing.T, open Opener) {
	ctx := context.Background()
	s := open(t, &idem.Options{GCInterval: -1})
	var runs atomic.Int32
	var wg sync.WaitGroup
	for g := 0; g < 32; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				resp, _, err := s.Do(ctx, "one", fpA, func(context.Context) ([]byte, error) {
					runs.Add(1)
					time.Sleep(20 * time.Millisecond)
					return []byte("result"), nil
				})
				if errors.Is(err, idem.ErrInProgress) {
					time.Sleep(2 * time.Millisecond)
					continue
				}
				assert.NoError(t, err)
				assert.Equal(t, "result", string(resp))
				return
			}
		}()
	}
	wg.Wait()
	assert.Equal(t, int32(1), runs.Load())
}

func testReadCache(t *testing.T, open Opener) {
	ctx := context.Background()
	s, clk := fixture(t, open, func(o *idem.Options) { o.CacheSize = 1 << 20 })
	require.NoError(t, begin(t, s, "done", fpA).Complete(ctx, []byte("resp")))
	l := begin(t, s, "running", fpA)
	for i := 0; i < 20; i++ {
		_, err := s.Get(ctx, "done")
		require.NoError(t, err)
		_, err = s.Get(ctx, "running")
		require.NoError(t, err)
		time.Sleep(time.Millisecond)
	}
	// An in-progress record is never answered from the cache.
	require.NoError(t, l.Complete(ctx, []byte("now done")))
	rec, err := s.Get(ctx, "running")
	require.NoError(t, err)
	assert.Equal(t, idem.StateCompleted, rec.State)
	// Cached records still expire by the store's clock.
	clk.Advance(completedTTL)
	_, err = s.Get(ctx, "done")
	assert.ErrorIs(t, err, idem.ErrNotFound)
	// Delete drops the cached copy.
	require.NoError(t, begin(t, s, "del", fpA).Complete(ctx, []byte("x")))
	for i := 0; i < 5; i++ {
		_, _ = s.Get(ctx, "del")
		time.Sleep(time.Millisecond)
	}
	require.NoError(t, s.Delete(ctx, "del"))
	_, err = s.Get(ctx, "del")
	assert.ErrorIs(t, err, idem.ErrNotFound)
	l2 := begin(t, s, "del", fpB)
	require.NoError(t, l2.Release(ctx))

	// A deleted key is never answered from the cache, however soon after
	// it was read (and cached) the next Begin comes.
	for i := 0; i < 500; i++ {
		l := begin(t, s, "again", fpA)
		require.NoError(t, l.Complete(ctx, []byte("x")))
		_, err = s.Get(ctx, "again")
		require.NoError(t, err)
		require.NoError(t, s.Delete(ctx, "again"))
		_, err = s.Get(ctx, "again")
		require.ErrorIs(t, err, idem.ErrNotFound, "round %d: deleted record read back", i)
	}

	// A closed store answers ErrClosed, also for a key the cache holds.
	require.NoError(t, begin(t, s, "kept", fpA).Complete(ctx, []byte("x")))
	for i := 0; i < 5; i++ {
		_, _ = s.Get(ctx, "kept")
		time.Sleep(time.Millisecond)
	}
	hits := s.Stats().CacheHits
	_, err = s.Get(ctx, "kept")
	require.NoError(t, err)
	assert.Greater(t, s.Stats().CacheHits, hits, "answered from the cache")
	require.NoError(t, s.Close())
	_, err = s.Get(ctx, "kept")
	assert.ErrorIs(t, err, idem.ErrClosed)
}

func testStats(t *testing.T, open Opener) {
	ctx := context.Background()
	s, _ := fixture(t, open)
	require.NoError(t, begin(t, s, "a", fpA).Complete(ctx, []byte("x")))
	_, _, _ = s.Begin(ctx, "a", fpA)
	_, _, _ = s.Begin(ctx, "a", fpB)
	_, _ = s.Get(ctx, "a")
	_, _ = s.Get(ctx, "nope")
	st := s.Stats()
	assert.Equal(t, uint64(1), st.Leases)
	assert.Equal(t, uint64(1), st.Completed)
	assert.Equal(t, uint64(1), st.Replays)
	assert.Equal(t, uint64(1), st.Mismatches)
	assert.Equal(t, uint64(1), st.Hits)
	assert.Equal(t, uint64(1), st.Misses)
}
