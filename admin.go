package idem

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"
)

// The operator API: repairs made by a person (through the idem command)
// rather than by the lease holder. Each repair is fenced on the record the
// operator was shown: it applies only if the stored record is still that
// one, and otherwise returns ErrLeaseLost and writes nothing. The usual
// flow is Get, show the record, ask for confirmation, then repair with the
// token (or record) that was shown. Every repair is logged at Warn level.

// ErrExists is returned by Restore when a live record is stored under the
// key and overwrite was not asked for. Nothing is written.
var ErrExists = errors.New("a live record is stored under the key")

// ForceRelease ends, as an operator, the lease with token on key's
// in-progress record: the record is removed and the key is free at once,
// as if the holder had called Release. It applies only if the stored record
// is in progress and still carries token; if the holder completed or failed
// meanwhile, or the key was taken over, it returns ErrLeaseLost. The
// holder, if it is still running, gets ErrLeaseLost when it ends its lease.
func (s *Store) ForceRelease(ctx context.Context, key string, token uint64) error {
	l, err := s.operatorLease(ctx, "force-release", key, token)
	if err != nil {
		return err
	}
	err = s.fenced(ctx, "force-release", l, true, func(*Record, time.Time) bool { return true })
	if err == nil {
		s.log.Warn("idem: operator repair", "key", key, "op", "release", "token", token)
	}
	return err
}

// ForceFail ends, as an operator, the lease with token on key's in-progress
// record with a failed outcome, as if the holder had called Fail: with
// retryable false, retries are answered with response; with retryable
// true, the next Begin runs the request again. It applies only if the
// stored record is in progress and still carries token, and otherwise
// returns ErrLeaseLost. The record is kept for Options.FailedTTL, or the
// WithTTL on ctx.
func (s *Store) ForceFail(ctx context.Context, key string, token uint64, response []byte, retryable bool) error {
	if err := s.checkResponse(response); err != nil {
		return wrap("force-fail", key, err)
	}
	l, err := s.operatorLease(ctx, "force-fail", key, token)
	if err != nil {
		return err
	}
	err = s.fenced(ctx, "force-fail", l, true, func(r *Record, now time.Time) bool {
		l.pol.finish(r, StateFailed, response, retryable, now)
		return false
	})
	if err == nil {
		s.log.Warn("idem: operator repair", "key", key, "op", "fail", "token", token,
			"retryable", retryable, "response_bytes", len(response))
	}
	return err
}

// operatorLease returns a Lease standing for the holder of token on key's
// record, for fenced to check against. The record's CreatedAt is read here;
// fenced checks it again together with the token in its atomic write.
func (s *Store) operatorLease(ctx context.Context, op, key string, token uint64) (*Lease, error) {
	if err := s.check(ctx, key); err != nil {
		return nil, wrap(op, key, err)
	}
	rec, err := s.load(ctx, op, key)
	if err != nil {
		return nil, err
	}
	if rec.State != StateInProgress || rec.Token != token {
		return nil, wrap(op, key, fmt.Errorf("%w: the stored record is %s with token %d, not in-progress with token %d",
			ErrLeaseLost, rec.State, rec.Token, token))
	}
	return &Lease{s: s, key: key, token: token, created: rec.CreatedAt, pol: s.opts.policyFor(ctx)}, nil
}

// load reads and decodes key's live record, for the operator API.
func (s *Store) load(ctx context.Context, op, key string) (*Record, error) {
	if err := s.enter(); err != nil {
		return nil, wrap(op, key, err)
	}
	defer s.mu.RUnlock()
	data, err := s.b.Load(ctx, key)
	if err != nil {
		return nil, wrap(op, key, err)
	}
	if data == nil {
		return nil, wrap(op, key, ErrNotFound)
	}
	rec, err := decodeRecord(key, data)
	if err != nil {
		return nil, wrap(op, key, err)
	}
	if rec.Expired(s.now()) {
		return nil, wrap(op, key, ErrNotFound)
	}
	return rec, nil
}

// ForceDelete removes key's record, as an operator, whatever its state,
// provided it is still the record seen: same state, token and CreatedAt
// (seen is what Get returned). Otherwise it returns ErrLeaseLost and
// deletes nothing. A record that cannot be decoded is deleted by passing
// seen == nil, which applies only while the stored record is still
// corrupt. Deleting a completed record means the next retry runs the
// request again.
func (s *Store) ForceDelete(ctx context.Context, key string, seen *Record) error {
	const op = "force-delete"
	if err := s.check(ctx, key); err != nil {
		return wrap(op, key, err)
	}
	if err := s.enterWrite(); err != nil {
		return wrap(op, key, err)
	}
	defer s.mu.RUnlock()
	cur, err := s.b.Load(ctx, key)
	if err != nil {
		return wrap(op, key, err)
	}
	for {
		if cur == nil {
			return wrap(op, key, ErrNotFound)
		}
		rec, derr := decodeRecord(key, cur)
		switch {
		case seen == nil && derr == nil:
			return wrap(op, key, fmt.Errorf("%w: the stored record is no longer corrupt (%s, token %d)", ErrLeaseLost, rec.State, rec.Token))
		case seen != nil && derr != nil:
			return wrap(op, key, derr)
		case seen != nil && rec.Expired(s.now()):
			return wrap(op, key, ErrNotFound)
		case seen != nil && (rec.State != seen.State || rec.Token != seen.Token || !rec.CreatedAt.Equal(seen.CreatedAt)):
			return wrap(op, key, fmt.Errorf("%w: the stored record is now %s with token %d, not %s with token %d",
				ErrLeaseLost, rec.State, rec.Token, seen.State, seen.Token))
		}
		current, swapped, err := s.b.CompareAndSwap(ctx, key, cur, nil, time.Time{}, true)
		if err != nil {
			return wrap(op, key, err)
		}
		if swapped {
			if s.cache != nil {
				s.cache.del(key)
			}
			attrs := []any{"key", key, "op", "delete"}
			if seen == nil {
				attrs = append(attrs, "state", "corrupt")
			} else {
				attrs = append(attrs, "state", seen.State.String(), "token", seen.Token)
			}
			s.log.Warn("idem: operator repair", attrs...)
			return nil
		}
		s.stats.conflicts.Add(1)
		cur = current
	}
}

// Restore writes rec as it is, with its state, token and timestamps, for
// importing records from a backup or another backend. It writes only when
// no live record is stored under rec.Key, and otherwise returns ErrExists;
// with overwrite it replaces a live record too (a holder of a lease on the
// replaced record gets ErrLeaseLost). A record that has already expired by
// the store's clock, or that is not well formed, is refused with an error
// saying why. Like Complete, Restore returns after the record is on stable
// storage under SyncAlways.
func (s *Store) Restore(ctx context.Context, rec *Record, overwrite bool) error {
	const op = "restore"
	if rec == nil {
		return errors.New("idem: restore: nil record")
	}
	key := rec.Key
	if err := s.check(ctx, key); err != nil {
		return wrap(op, key, err)
	}
	if err := s.validRecord(rec); err != nil {
		return wrap(op, key, err)
	}
	if err := s.enterWrite(); err != nil {
		return wrap(op, key, err)
	}
	defer s.mu.RUnlock()
	data := encodeRecord(rec)
	var cur []byte
	for {
		now := s.now()
		if rec.Expired(now) {
			return wrap(op, key, fmt.Errorf("record expired at %s", rec.ExpiresAt.Format(time.RFC3339)))
		}
		replaced := false
		if cur != nil {
			if bytes.Equal(cur, data) {
				return nil // already restored
			}
			old, err := decodeRecord(key, cur)
			// A corrupt or expired record is replaced: it is not live.
			if err == nil && !old.Expired(now) {
				if !overwrite {
					return wrap(op, key, ErrExists)
				}
				replaced = true
			}
		}
		current, swapped, err := s.b.CompareAndSwap(ctx, key, cur, data, physicalExpiry(rec.ExpiresAt, now, time.Now()), true)
		if err != nil {
			return wrap(op, key, err)
		}
		if swapped {
			if s.cache != nil {
				s.cache.del(key)
			}
			if replaced {
				s.log.Warn("idem: operator repair", "key", key, "op", "restore-overwrite", "state", rec.State.String(), "token", rec.Token)
			}
			return nil
		}
		cur = current
	}
}

// validRecord checks a record given from outside the store (Restore).
func (s *Store) validRecord(r *Record) error {
	switch {
	case r.State < StateInProgress || r.State > StateFailed:
		return fmt.Errorf("unknown state %d", r.State)
	case len(r.Fingerprint) > MaxFingerprintSize:
		return fmt.Errorf("%w: fingerprint is %d bytes, more than %d", ErrTooLarge, len(r.Fingerprint), MaxFingerprintSize)
	case r.Attempts < 0:
		return fmt.Errorf("negative attempts %d", r.Attempts)
	case r.Token == 0:
		return errors.New("token is 0 (tokens start at 1)")
	case r.CreatedAt.IsZero() || r.ExpiresAt.IsZero():
		return errors.New("created and expires times are required")
	case r.State == StateInProgress && r.LeaseUntil.IsZero():
		return errors.New("an in-progress record needs a lease-until time")
	case r.State != StateInProgress && !r.LeaseUntil.IsZero():
		return fmt.Errorf("a %s record has no lease, but lease-until is set", r.State)
	case r.Retryable && r.State != StateFailed:
		return fmt.Errorf("a %s record cannot be retryable", r.State)
	}
	return s.checkResponse(r.Response)
}
