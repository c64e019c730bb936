package idem

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// DefaultMaxWaiters is the default for Options.MaxWaiters.
const DefaultMaxWaiters = 1024

// Wait waits while the record under key is in progress with a live lease,
// and returns it once it is not: finished (replay it), failed and
// retryable, or in progress with a lapsed lease or a holder that ended
// with an earlier process (its holder is gone: Begin takes it over). It
// returns ErrNotFound when the key has no record (its holder released it:
// Begin runs the request), and ctx's error when ctx ends first; bound the
// wait with ctx.
//
// A duplicate request that arrives while the first still runs can Wait
// and answer with the outcome, instead of refusing with ErrInProgress:
// many clients never retry a refusal. Holders in this process wake their
// waiters the moment they end their lease; so do holders in other
// processes sharing the store when its backend is a Watcher (Redis with
// keyspace notifications). The store also reads the record again every
// Options.WaitPoll, for holders in other processes whose writes it is not
// told of, and in case a notification is lost. At most Options.MaxWaiters
// calls wait at once per store; one more returns an error wrapping
// ErrInProgress at once.
func (s *Store) Wait(ctx context.Context, key string) (*Record, error) {
	if err := s.check(ctx, key); err != nil {
		return nil, wrap("wait", key, err)
	}
	poll := s.opts.WaitPoll
	watcher, _ := s.b.(Watcher)
	unwatch := func() {}
	defer func() { unwatch() }()
	for {
		ch, done, err := s.waiters.add(key, s.opts.MaxWaiters)
		if err != nil {
			return nil, wrap("wait", key, err)
		}
		// Watch before reading, so that a write made after the read
		// wakes us. The new watch is taken before the last one is
		// stopped, so that the backend keeps its subscription.
		var changed <-chan struct{}
		if watcher != nil {
			c, stop, ok := watcher.Watch(ctx, key)
			unwatch()
			unwatch = func() {}
			if ok {
				changed, unwatch = c, stop
			}
		}
		rec, err := s.Get(ctx, key)
		if err != nil || rec.State != StateInProgress || rec.LeaseLapsed(s.now()) || s.holderGone(rec) {
			done()
			return rec, err
		}
		t := time.NewTimer(poll)
		select {
		case <-ch:
		case <-changed:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
		done()
		if err := ctx.Err(); err != nil {
			return nil, wrap("wait", key, err)
		}
	}
}

// waiters wakes the callers of Wait when a key's lease ends in this
// process.
type waiters struct {
	mu    sync.Mutex
	m     map[string]chan struct{} // closed when the key's lease ends
	n     map[string]int           // waiters per key
	total int
}

// add registers a waiter for key and returns the channel that is closed
// when its lease ends, and the function that unregisters it.
func (w *waiters) add(key string, limit int) (<-chan struct{}, func(), error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.total >= limit {
		return nil, nil, fmt.Errorf("%w: %d requests already wait for their keys", ErrInProgress, w.total)
	}
	if w.m == nil {
		w.m, w.n = map[string]chan struct{}{}, map[string]int{}
	}
	ch, ok := w.m[key]
	if !ok {
		ch = make(chan struct{})
		w.m[key] = ch
	}
	w.n[key]++
	w.total++
	return ch, func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.total--
		if w.n[key]--; w.n[key] == 0 {
			delete(w.n, key)
			if w.m[key] == ch {
				delete(w.m, key)
			}
		}
	}, nil
}

// wake wakes the waiters of key.
func (w *waiters) wake(key string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if ch, ok := w.m[key]; ok {
		close(ch)
		delete(w.m, key)
	}
}
