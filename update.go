package idem

import (
	"context"
	"errors"
	"time"
)

// Swapper is the part of a Backend that one transition of a record reads
// and writes through: Load and CompareAndSwap, with the Backend's contract.
// Every Backend is one. Lease.CompleteVia takes another, for a backend that
// can bind the write to a transaction of the caller's (pgstore.CompleteTx).
type Swapper interface {
	Load(ctx context.Context, key string) ([]byte, error)
	CompareAndSwap(ctx context.Context, key string, old, new []byte, expireAt time.Time, durable bool) (current []byte, swapped bool, err error)
}

// errReread is returned by an update step that was given a guessed value
// and cannot decide on it: update reads the stored value and asks again.
var errReread = errors.New("idem: read the stored value")

// errNoWrite is returned by an update step that has its answer without
// writing: update returns nil.
var errNoWrite = errors.New("idem: nothing to write")

// update is the one compare-and-swap loop under every transition of a
// record. cur is the value the first attempt assumes stored (nil: absent);
// guess says it was not read from the backend (the lease's own last write,
// or "absent" for a key expected new), so a failed swap from it is not a
// conflict. step decides from the stored value at now: the value to write
// (nil deletes the key) and its physical expiry, or errNoWrite when it has
// its answer, errReread when cur is a guess it cannot decide on, or another
// error to return. A swap lost to another writer is counted as a conflict
// and decided again on the winner's value.
func (s *Store) update(ctx context.Context, sw Swapper, op, key string, cur []byte, guess, durable bool,
	step func(cur []byte, guess bool, now time.Time) (next []byte, expire time.Time, err error)) error {
	for {
		next, expire, err := step(cur, guess, s.now())
		switch {
		case errors.Is(err, errNoWrite):
			return nil
		case errors.Is(err, errReread) && guess:
			if cur, err = sw.Load(ctx, key); err != nil {
				return wrap(op, key, err)
			}
			guess = false
			continue
		case err != nil:
			return err
		}
		current, swapped, err := sw.CompareAndSwap(ctx, key, cur, next, expire, durable)
		if err != nil {
			return wrap(op, key, err)
		}
		if swapped {
			return nil
		}
		if !guess {
			s.stats.conflicts.Add(1)
		}
		cur, guess = current, false
	}
}
