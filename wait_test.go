package idem_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemtest"
)

// Duplicates that wait for the first request get its outcome the moment
// it is stored, without polling (the poll is set to an hour).
func TestWaitWakesOnOutcome(t *testing.T) {
	s := openBadger(t, &idem.Options{GCInterval: -1, WaitPoll: time.Hour})
	ctx := context.Background()
	l, _, err := s.Begin(ctx, "k", []byte("fp"))
	require.NoError(t, err)

	const n = 20
	var wg sync.WaitGroup
	got := make(chan *idem.Record, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rec, err := s.Wait(ctx, "k")
			if err != nil {
				t.Error(err)
				return
			}
			got <- rec
		}()
	}
	time.Sleep(20 * time.Millisecond) // let them wait; a late one finds the outcome stored
	require.NoError(t, l.Complete(ctx, []byte("charged")))
	wg.Wait()
	close(got)
	count := 0
	for rec := range got {
		count++
		assert.Equal(t, idem.StateCompleted, rec.State)
		assert.Equal(t, "charged", string(rec.Response))
	}
	assert.Equal(t, n, count)
}

// Wait returns ErrNotFound once the holder releases the key, the lapsed
// record once the holder's lease lapses, and ctx's error when ctx ends
// first; the waiters are bounded.
func TestWaitEnds(t *testing.T) {
	clk := idemtest.NewClock()
	s := openBadger(t, &idem.Options{Now: clk.Now, GCInterval: -1, LeaseTTL: time.Minute, WaitPoll: time.Millisecond, MaxWaiters: 2})
	ctx := context.Background()

	l, _, err := s.Begin(ctx, "released", nil)
	require.NoError(t, err)
	errc := make(chan error, 1)
	go func() { _, err := s.Wait(ctx, "released"); errc <- err }()
	require.NoError(t, l.Release(ctx))
	require.ErrorIs(t, <-errc, idem.ErrNotFound)

	_, _, err = s.Begin(ctx, "lapsed", nil)
	require.NoError(t, err)
	recc := make(chan *idem.Record, 1)
	go func() {
		rec, err := s.Wait(ctx, "lapsed")
		if err != nil {
			t.Error(err)
		}
		recc <- rec
	}()
	clk.Advance(2 * time.Minute) // the holder crashed: its lease lapses
	rec := <-recc
	require.NotNil(t, rec)
	assert.True(t, rec.LeaseLapsed(clk.Now()))

	_, _, err = s.Begin(ctx, "slow", nil)
	require.NoError(t, err)
	short, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	defer cancel()
	_, err = s.Wait(short, "slow")
	require.ErrorIs(t, err, context.DeadlineExceeded)

	// One waits (another store, limited to one waiter); a second is
	// refused at once.
	s1 := openBadger(t, &idem.Options{GCInterval: -1, WaitPoll: time.Hour, MaxWaiters: 1})
	_, _, err = s1.Begin(ctx, "slow", nil)
	require.NoError(t, err)
	long, cancelLong := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for { // until it holds the one place
			if _, err := s1.Wait(long, "slow"); !errors.Is(err, idem.ErrInProgress) {
				return
			}
		}
	}()
	require.Eventually(t, func() bool {
		c, cancel := context.WithTimeout(ctx, 5*time.Millisecond)
		defer cancel()
		_, err := s1.Wait(c, "slow")
		return errors.Is(err, idem.ErrInProgress)
	}, 5*time.Second, time.Millisecond)
	cancelLong()
	wg.Wait()
}
