package idem

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Lease is the right to run the request under one key, handed out by Begin.
// The holder ends it with exactly one of Complete, Fail or Release, and may
// Extend it while the request runs. Every one of them is fenced: it applies
// only while the stored record is in progress and still carries this
// lease's token, and otherwise returns ErrLeaseLost and writes nothing.
//
// A Lease is safe for simultaneous use by multiple goroutines.
type Lease struct {
	s       *Store
	key     string
	token   uint64
	created time.Time // CreatedAt of the leased record: a re-created key is another record
	pol     policy

	mu    sync.Mutex // protects until, data and rec
	until time.Time
	// data is the stored form this lease last wrote, while the record is
	// in progress: the expected value of the next compare-and-swap, which
	// saves a read when nothing else wrote the key meanwhile. nil means
	// unknown: read it. rec is data decoded (nil: decode data), owned by
	// the lease.
	data []byte
	rec  *Record
}

// takeData returns and forgets the stored form the lease last wrote, and
// the record it holds, when known.
func (l *Lease) takeData() ([]byte, *Record) {
	l.mu.Lock()
	defer l.mu.Unlock()
	d, r := l.data, l.rec
	l.data, l.rec = nil, nil
	return d, r
}

// setData records data, the stored form of rec, as the lease's last write.
// rec must not be changed afterwards.
func (l *Lease) setData(data []byte, rec *Record) {
	l.mu.Lock()
	l.data, l.rec = data, rec
	l.mu.Unlock()
}

// Key returns the leased key.
func (l *Lease) Key() string { return l.key }

// Token returns the lease's fencing token.
func (l *Lease) Token() uint64 { return l.token }

// Until returns when the lease lapses unless extended, by the store's clock.
func (l *Lease) Until() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.until
}

// Complete stores response as the key's outcome, replayed to every retry
// for the record's lifetime. Under SyncAlways it returns after the record
// is on stable storage.
func (l *Lease) Complete(ctx context.Context, response []byte) error {
	return l.complete(ctx, l.s.b, response)
}

// CompleteVia completes l like Complete, but reads and writes the record
// through the Swapper that via returns for the store's backend: for a
// backend that can bind the write to a transaction of the caller's, so that
// the record commits with the caller's own writes or not at all
// (pgstore.CompleteTx is built on it). Fencing is the same as Complete's:
// the write applies only while the record, as sw sees it, still carries
// the lease's token, and otherwise ErrLeaseLost is returned. If the
// caller's transaction is rolled back afterwards, nothing was completed and
// the lease is still the caller's to complete, fail or release.
func (l *Lease) CompleteVia(ctx context.Context, response []byte, via func(Backend) (Swapper, error)) error {
	sw, err := via(l.s.b)
	if err != nil {
		return wrap("complete", l.key, err)
	}
	return l.complete(ctx, sw, response)
}

func (l *Lease) complete(ctx context.Context, sw Swapper, response []byte) error {
	if err := l.s.checkResponse(response); err != nil {
		return wrap("complete", l.key, err)
	}
	err := l.s.fencedVia(ctx, sw, "complete", l, true, func(r *Record, now time.Time) bool {
		l.policy(ctx).finish(r, StateCompleted, response, false, now)
		return false
	})
	if err == nil {
		l.s.stats.completed.Add(1)
	}
	return err
}

// Fail stores a failed outcome with response. When retryable is false the
// failure is replayed to retries like a completion; when true, the next
// Begin with the same fingerprint gets a new lease and runs the request
// again. Under SyncAlways it returns after the record is on stable storage.
func (l *Lease) Fail(ctx context.Context, response []byte, retryable bool) error {
	if err := l.s.checkResponse(response); err != nil {
		return wrap("fail", l.key, err)
	}
	err := l.s.fenced(ctx, "fail", l, true, func(r *Record, now time.Time) bool {
		l.policy(ctx).finish(r, StateFailed, response, retryable, now)
		return false
	})
	if err == nil {
		l.s.stats.failed.Add(1)
	}
	return err
}

// Release ends the lease with no outcome: the record is removed and the key
// is free at once, for any request.
func (l *Lease) Release(ctx context.Context) error {
	err := l.s.fenced(ctx, "release", l, false, func(*Record, time.Time) bool { return true })
	if err == nil {
		l.s.stats.released.Add(1)
	}
	return err
}

// Extend makes the lease last until d from now, by the store's clock. d
// must be positive.
func (l *Lease) Extend(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return wrap("extend", l.key, fmt.Errorf("duration %v is not positive", d))
	}
	var until time.Time
	err := l.s.fenced(ctx, "extend", l, false, func(r *Record, now time.Time) bool {
		r.LeaseUntil = now.Add(d)
		r.ExpiresAt = latest(r.ExpiresAt, r.LeaseUntil)
		r.UpdatedAt = now
		until = r.LeaseUntil
		return false
	})
	if err == nil {
		l.mu.Lock()
		l.until = until
		l.mu.Unlock()
	}
	return err
}

// policy returns the lifetimes for ending the lease: those it was begun
// with, unless ctx carries WithTTL.
func (l *Lease) policy(ctx context.Context) policy {
	p := l.pol
	if t, ok := ctx.Value(ttlKey{}).(callTTL); ok && t.record > 0 {
		p.completed, p.failed = t.record, t.record
	}
	return p
}

func (s *Store) checkResponse(response []byte) error {
	if len(response) > s.opts.MaxResponseSize {
		return fmt.Errorf("%w: response is %d bytes, more than the maximum %d", ErrTooLarge, len(response), s.opts.MaxResponseSize)
	}
	return nil
}

// fenced runs one fenced transition of l's record: apply changes the
// record (or returns true to delete it), and the change is written only if
// the stored record is still l's.
func (s *Store) fenced(ctx context.Context, op string, l *Lease, durable bool, apply func(r *Record, now time.Time) (del bool)) error {
	return s.fencedVia(ctx, s.b, op, l, durable, apply)
}

// fencedVia is fenced, reading and writing through sw.
func (s *Store) fencedVia(ctx context.Context, sw Swapper, op string, l *Lease, durable bool, apply func(r *Record, now time.Time) (del bool)) (err error) {
	if s.opts.Observer != nil {
		defer func(start time.Time) { s.observeStep(op, start, err) }(time.Now())
	}
	if err := ctx.Err(); err != nil {
		return wrap(op, l.key, err)
	}
	if err := s.enterWrite(); err != nil {
		return wrap(op, l.key, err)
	}
	defer s.mu.RUnlock()
	// The first attempt expects the record this lease wrote; the swap
	// fails harmlessly, returning what is stored, if anything else wrote
	// the key since.
	cur, known := l.takeData()
	guess := cur != nil
	if !guess {
		if cur, err = sw.Load(ctx, l.key); err != nil {
			return wrap(op, l.key, err)
		}
	}
	var next []byte
	var nextRec *Record
	err = s.update(ctx, sw, op, l.key, cur, guess, durable, func(cur []byte, guess bool, now time.Time) ([]byte, time.Time, error) {
		next, nextRec = nil, nil
		if cur == nil {
			return nil, time.Time{}, s.lost(op, l, nil, now)
		}
		var rec *Record
		if guess && known != nil {
			// The lease's own last write, decoded when it was made: a
			// copy, so a retry from the stored value starts afresh.
			r := *known
			rec = &r
		} else {
			var err error
			if rec, err = decodeRecord(l.key, cur); err != nil {
				return nil, time.Time{}, wrap(op, l.key, err)
			}
		}
		if rec.State != StateInProgress || rec.Token != l.token || !rec.CreatedAt.Equal(l.created) || rec.Expired(now) {
			if guess {
				// The lease's own write has expired, but the stored
				// record may be another write of it with a longer life
				// (Restore puts back token and CreatedAt): decide on
				// what is stored.
				return nil, time.Time{}, errReread
			}
			return nil, time.Time{}, s.lost(op, l, rec, now)
		}
		if apply(rec, now) {
			return nil, time.Time{}, nil
		}
		data := encodeRecord(rec)
		if rec.State == StateInProgress {
			next, nextRec = data, rec // the lease goes on: its next step expects this
		}
		return data, physicalExpiry(rec.ExpiresAt, now, time.Now()), nil
	})
	switch {
	case err == nil && next != nil:
		l.setData(next, nextRec)
	case err == nil:
		s.waiters.wake(l.key) // the lease ended
	}
	return err
}

func (s *Store) lost(op string, l *Lease, rec *Record, now time.Time) error {
	s.stats.leaseLost.Add(1)
	attrs := []any{"key", l.key, "op", op, "token", l.token}
	if rec != nil {
		attrs = append(attrs, "stored_state", rec.State.String(), "stored_token", rec.Token)
	} else {
		attrs = append(attrs, "stored_state", "absent")
	}
	s.log.Warn("idem: lease lost", attrs...)
	return wrap(op, l.key, ErrLeaseLost)
}
