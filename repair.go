package idem

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"time"
)

// The operator API: repairs made by a person (through the idem command or
// the idemadmin endpoints) rather than by the lease holder. Each repair is
// fenced on the record the operator was shown: it applies only while the
// stored record is still that one (Record.Same), and otherwise returns a
// *ChangedError and writes nothing. The usual flow is Get, show the
// record, ask for confirmation, then repair with the token (or record)
// that was shown. Every repair is logged at Warn level.

// ErrExists is returned by Restore when a live record is stored under the
// key and overwrite was not asked for. Nothing is written.
var ErrExists = errors.New("a live record is stored under the key")

// ChangedError is returned by ForceRelease, ForceFail and ForceDelete when
// the stored record is not the one the operator was shown: it changed
// since they looked, and nothing is written. errors.Is(err, ErrLeaseLost)
// is true for it, as for a lease holder that was fenced out.
type ChangedError struct {
	Key    string
	Stored *Record // the record stored when the repair was refused; nil: one that cannot be decoded
	Want   string  // what the repair was told is stored: "in-progress with token 7", or "corrupt"
}

func (e *ChangedError) Error() string {
	return "lease lost: the stored record is " + describeShown(e.Stored) + ", not " + e.Want
}

// Is reports whether target is ErrLeaseLost.
func (e *ChangedError) Is(target error) bool { return target == ErrLeaseLost }

// describeShown names a record the way a repair's refusal does: its state
// and token, or "corrupt" for nil (a record that could not be decoded).
func describeShown(r *Record) string {
	if r == nil {
		return "corrupt"
	}
	return fmt.Sprintf("%s with token %d", r.State, r.Token)
}

// Same reports whether r and other are one record at one step of its
// life: the same state, the same fencing token and the same CreatedAt (a
// key deleted and used again holds another record). A zero CreatedAt on
// either side is not compared: such a record is known by its state and
// token alone, as ForceRelease knows it. Keys are not compared. An Extend
// keeps a record Same; Begin, Complete, Fail and Release do not.
func (r *Record) Same(other *Record) bool {
	if r.State != other.State || r.Token != other.Token {
		return false
	}
	return r.CreatedAt.IsZero() || other.CreatedAt.IsZero() || r.CreatedAt.Equal(other.CreatedAt)
}

// ForceRelease ends, as an operator, the lease with token on key's
// in-progress record: the record is removed and the key is free at once,
// as if the holder had called Release. It applies only if the stored
// record is in progress and still carries token; if the holder completed
// or failed meanwhile, or the key was taken over, it returns a
// *ChangedError. The holder, if it is still running, gets ErrLeaseLost
// when it ends its lease.
func (s *Store) ForceRelease(ctx context.Context, key string, token uint64) error {
	err := s.repair(ctx, "force-release", key, &Record{State: StateInProgress, Token: token}, nil)
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
// returns a *ChangedError. The record is kept for Options.FailedTTL, or
// the WithTTL on ctx.
func (s *Store) ForceFail(ctx context.Context, key string, token uint64, response []byte, retryable bool) error {
	if err := s.checkResponse(response); err != nil {
		return wrap("force-fail", key, err)
	}
	pol := s.opts.policyFor(ctx)
	err := s.repair(ctx, "force-fail", key, &Record{State: StateInProgress, Token: token}, func(r *Record, now time.Time) {
		pol.finish(r, StateFailed, response, retryable, now)
	})
	if err == nil {
		s.log.Warn("idem: operator repair", "key", key, "op", "fail", "token", token,
			"retryable", retryable, "response_bytes", len(response))
	}
	return err
}

// ForceDelete removes key's record, as an operator, whatever its state,
// provided it is still the record seen (Record.Same; seen is what Get
// returned). Otherwise it returns a *ChangedError and deletes nothing. A
// record that cannot be decoded is deleted by passing seen == nil, which
// applies only while the stored record is still corrupt. Deleting a
// completed record means the next retry runs the request again.
func (s *Store) ForceDelete(ctx context.Context, key string, seen *Record) error {
	if err := s.repair(ctx, "force-delete", key, seen, nil); err != nil {
		return err
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

// repair makes one operator repair of key's record, fenced on shown, the
// record the operator was shown (nil: one that could not be decoded).
// change alters the record; nil deletes it. The check and the write are
// one compare-and-swap, decided again on the new record if another writer
// wins the race. An absent or expired record is ErrNotFound, and a
// corrupt one ErrCorrupt unless shown is nil.
func (s *Store) repair(ctx context.Context, op, key string, shown *Record, change func(r *Record, now time.Time)) (err error) {
	if s.opts.Observer != nil {
		defer func(start time.Time) { s.observeStep(op, start, err) }(time.Now())
	}
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
	err = s.update(ctx, s.b, op, key, cur, false, true, func(cur []byte, _ bool, now time.Time) ([]byte, time.Time, error) {
		if cur == nil {
			return nil, time.Time{}, wrap(op, key, ErrNotFound)
		}
		rec, derr := decodeRecord(key, cur)
		switch {
		case derr != nil && (shown != nil || change != nil):
			return nil, time.Time{}, wrap(op, key, derr)
		case derr != nil:
			return nil, time.Time{}, nil // the corrupt record shown is deleted
		case rec.Expired(now):
			return nil, time.Time{}, wrap(op, key, ErrNotFound)
		case shown == nil || !rec.Same(shown):
			return nil, time.Time{}, wrap(op, key, &ChangedError{Key: key, Stored: rec, Want: describeShown(shown)})
		case change == nil:
			return nil, time.Time{}, nil
		}
		change(rec, now)
		return encodeRecord(rec), physicalExpiry(rec.ExpiresAt, now, time.Now()), nil
	})
	if err != nil {
		return err
	}
	s.waiters.wake(key)
	if s.cache != nil {
		// After the write, as in Delete: a reader that read the old record
		// before it either put it in the cache already (and del drops it)
		// or finds the deletion count changed and does not.
		s.cache.del(key)
	}
	return nil
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
	replaced := false
	err := s.update(ctx, s.b, op, key, nil, true, true, func(cur []byte, _ bool, now time.Time) ([]byte, time.Time, error) {
		if rec.Expired(now) {
			return nil, time.Time{}, wrap(op, key, fmt.Errorf("record expired at %s", rec.ExpiresAt.Format(time.RFC3339)))
		}
		replaced = false
		if cur != nil {
			if bytes.Equal(cur, data) {
				return nil, time.Time{}, errNoWrite // already restored
			}
			old, err := decodeRecord(key, cur)
			if err == nil && old.holder != rec.holder {
				// The same record but for the epoch of its holder, which
				// stays in the directory it was granted in.
				same := *old
				same.holder = rec.holder
				if bytes.Equal(encodeRecord(&same), data) {
					return nil, time.Time{}, errNoWrite // already restored
				}
			}
			// A corrupt or expired record is replaced: it is not live.
			if err == nil && !old.Expired(now) {
				if !overwrite {
					return nil, time.Time{}, wrap(op, key, ErrExists)
				}
				replaced = true
			}
		}
		return data, physicalExpiry(rec.ExpiresAt, now, time.Now()), nil
	})
	if err != nil {
		return err
	}
	s.waiters.wake(key)
	if s.cache != nil {
		s.cache.del(key)
	}
	if replaced {
		s.log.Warn("idem: operator repair", "key", key, "op", "restore-overwrite", "state", rec.State.String(), "token", rec.Token)
	}
	return nil
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
	case r.Attempts > math.MaxInt32:
		return fmt.Errorf("attempts %d larger than the maximum %d", r.Attempts, math.MaxInt32)
	case r.Token > MaxToken:
		return fmt.Errorf("token %d is larger than the maximum %d", r.Token, MaxToken)
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
