package idem_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemtest"
)

// Do renews the lease after its caller's context ends, until fn returns:
// fn may be past its side effect and ignore the cancellation, and a lapsed
// lease would let a retry run it a second time. (idemhttp's
// TestLeaseRenewedAfterClientDisconnects checks the same through the
// middleware.)
func TestDoRenewsAfterCallerLeaves(t *testing.T) {
	clk := idemtest.NewClock()
	const lease = 30 * time.Millisecond // renewed every 10ms of real time
	s := openBadger(t, &idem.Options{Now: clk.Now, LeaseTTL: lease, GCInterval: -1})
	ctx, cancel := context.WithCancel(context.Background())
	started, release := make(chan struct{}), make(chan struct{})
	var fnCause error
	done := make(chan error, 1)
	go func() {
		_, _, err := s.Do(ctx, "k", []byte("fp"), func(ctx context.Context) ([]byte, error) {
			close(started)
			<-ctx.Done() // the caller went away ...
			fnCause = context.Cause(ctx)
			<-release // ... but the charge goes on
			return []byte("charged"), nil
		})
		done <- err
	}()
	<-started
	cancel()

	for range 20 {
		clk.Advance(lease * 2 / 3)
		require.Eventually(t, func() bool {
			rec, err := s.Get(context.Background(), "k")
			return err == nil && rec.LeaseUntil.After(clk.Now().Add(lease/2))
		}, 5*time.Second, time.Millisecond, "the lease is no longer renewed")
	}
	_, _, err := s.Begin(context.Background(), "k", []byte("fp"))
	require.ErrorIs(t, err, idem.ErrInProgress, "400ms of store time later, with a 30ms lease, the key is still held")
	close(release)
	require.NoError(t, <-done)
	require.ErrorIs(t, fnCause, context.Canceled, "fn saw its caller leave")
	rec, err := s.Get(context.Background(), "k")
	require.NoError(t, err)
	require.Equal(t, idem.StateCompleted, rec.State)
	require.Equal(t, "charged", string(rec.Response))
}

// Many leases renewed at once by the store's one scheduler: every one is
// carried past its lapse while held, and once stopped none is renewed
// again.
func TestKeepAliveManyLeases(t *testing.T) {
	clk := idemtest.NewClock()
	const lease = 60 * time.Millisecond
	s := openBadger(t, &idem.Options{Now: clk.Now, LeaseTTL: lease, GCInterval: -1})
	ctx := context.Background()
	const n = 64
	leases := make([]*idem.Lease, n)
	stops := make([]func(), n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, _, err := s.Begin(ctx, fmt.Sprintf("k%d", i), nil)
			if err != nil {
				t.Error(err)
				return
			}
			leases[i] = l
			_, stops[i] = l.KeepAlive(ctx)
		}()
	}
	wg.Wait()
	require.False(t, t.Failed())
	for range 5 {
		clk.Advance(lease / 2)
		now := clk.Now()
		require.Eventually(t, func() bool {
			for _, l := range leases {
				if !l.Until().After(now.Add(lease / 2)) {
					return false
				}
			}
			return true
		}, 5*time.Second, time.Millisecond)
	}
	for i := range n {
		wg.Add(1)
		go func() { defer wg.Done(); stops[i](); stops[i]() }()
	}
	wg.Wait()
	until := make([]time.Time, n)
	for i, l := range leases {
		until[i] = l.Until()
	}
	clk.Advance(lease)
	time.Sleep(3 * lease) // a stopped lease would have been renewed by now
	for i, l := range leases {
		require.Equal(t, until[i], l.Until(), "lease %d renewed after stop", i)
		require.NoError(t, l.Complete(ctx, []byte("ok")), "lease %d", i)
	}
}

// A lease lost while the request runs (an operator deleted the key)
// cancels the request's context with ErrLeaseLost as the cause.
func TestKeepAliveLostCancels(t *testing.T) {
	s := openBadger(t, &idem.Options{LeaseTTL: 30 * time.Millisecond, GCInterval: -1})
	ctx := context.Background()
	l, _, err := s.Begin(ctx, "k", nil)
	require.NoError(t, err)
	run, stop := l.KeepAlive(ctx)
	defer stop()
	require.NoError(t, s.Delete(ctx, "k"))
	select {
	case <-run.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the run context was not canceled")
	}
	require.True(t, errors.Is(context.Cause(run), idem.ErrLeaseLost), "cause: %v", context.Cause(run))
}
