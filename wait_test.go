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
	"github.com/idemdb/idem/internal/storeinternal"
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

// notifying is a Backend shared by two stores, as two instances share
// Redis, that tells the watchers of a key when it is written: a Watcher.
type notifying struct {
	idem.Backend
	hub *hub
}

type hub struct {
	mu      sync.Mutex
	ch      map[string]chan struct{}
	watches int // not stopped yet
}

func (n notifying) CompareAndSwap(ctx context.Context, key string, old, new []byte, expireAt time.Time, durable bool) ([]byte, bool, error) {
	cur, swapped, err := n.Backend.CompareAndSwap(ctx, key, old, new, expireAt, durable)
	if swapped {
		n.hub.notify(key)
	}
	return cur, swapped, err
}

func (n notifying) Close() error { return nil } // the Badger store closes it

func (n notifying) Watch(_ context.Context, key string) (<-chan struct{}, func(), bool) {
	h := n.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ch == nil {
		h.ch = map[string]chan struct{}{}
	}
	c, ok := h.ch[key]
	if !ok {
		c = make(chan struct{})
		h.ch[key] = c
	}
	h.watches++
	var once sync.Once
	return c, func() {
		once.Do(func() {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.watches--
		})
	}, true
}

func (h *hub) notify(key string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c, ok := h.ch[key]; ok {
		close(c)
		delete(h.ch, key)
	}
}

// A Wait on one store wakes, with no polling, when another store sharing
// its backend completes the key, if the backend is a Watcher; every watch
// it took is stopped when it returns.
func TestWaitWatcher(t *testing.T) {
	kv := openBadger(t, &idem.Options{GCInterval: -1})
	h := &hub{}
	open := func() *idem.Store {
		s, err := idem.New(notifying{storeinternal.Backend(kv).(idem.Backend), h}, &idem.Options{GCInterval: -1, WaitPoll: time.Hour})
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, s.Close()) })
		return s
	}
	a, b := open(), open()
	ctx := context.Background()
	l, _, err := a.Begin(ctx, "k", nil)
	require.NoError(t, err)
	// An Extend writes the key too: the waiter wakes, reads it still in
	// progress, and waits again.
	done := make(chan *idem.Record, 1)
	go func() {
		rec, err := b.Wait(ctx, "k")
		assert.NoError(t, err)
		done <- rec
	}()
	time.Sleep(20 * time.Millisecond)
	require.NoError(t, l.Extend(ctx, time.Minute))
	time.Sleep(20 * time.Millisecond)
	select {
	case rec := <-done:
		t.Fatalf("Wait returned while the lease is held: %v", rec)
	default:
	}
	require.NoError(t, l.Complete(ctx, []byte("charged")))
	select {
	case rec := <-done:
		assert.Equal(t, idem.StateCompleted, rec.State)
	case <-time.After(5 * time.Second):
		t.Fatal("Wait did not wake on the other store's Complete")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	assert.Zero(t, h.watches, "watches not stopped")
}
