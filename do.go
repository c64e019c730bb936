package idem

import (
	"bytes"
	"context"
	"errors"
	"github.com/idemdb/idem/internal/endctx"
)

// PermanentError is a failure that fn passed to Do marks as permanent: Do
// stores Response as a failed record that is not retryable, and replays it
// to every retry with ErrFailed. Make one with Permanent.
type PermanentError struct {
	Err      error
	Response []byte
}

func (e *PermanentError) Error() string { return e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent marks err as a permanent failure of the request whose outcome
// is response (a declined card: retrying will not help). Returned from the
// fn given to Do, it makes Do store the failure and replay it to retries.
func Permanent(err error, response []byte) error {
	if err == nil {
		err = errors.New("permanent failure")
	}
	return &PermanentError{Err: err, Response: response}
}

// Do runs fn at most once per key while the key's record lives, and returns
// the stored response to every retry (replayed == true).
//
// While fn runs, its lease is renewed in the background (Lease.KeepAlive),
// also after ctx ends, until fn returns; if the lease is lost anyway (the
// store was unreachable for longer than the lease), fn's context is
// canceled with ErrLeaseLost as its cause. When fn returns a
// response and a nil error, Do completes the key with it. When fn returns a
// PermanentError, Do stores a failure that is replayed (with ErrFailed) to
// retries. Any other error stores a retryable failure: the next Do with the
// key runs fn again. A response larger than Options.MaxResponseSize cannot
// be stored: Do returns ErrTooLarge and ends the key as a permanent failure,
// since running fn again could repeat its side effect. If fn panics, or
// its goroutine exits (runtime.Goexit), the key is left as a failure that
// may run again (Lease.Run) and the panic or exit goes on.
//
// If the lease is lost before fn's outcome is stored (fn ran past its
// lease while the store was unreachable, and another caller took the key
// over), fn's outcome is not the key's and is not returned: Do returns the
// stored outcome with replayed == true once the newer holder has finished
// it, and otherwise an error wrapping ErrLeaseLost. fn's context carries
// the key: see KeyFrom and SubKey.
//
// Do returns ErrInProgress while another caller runs the key, and
// ErrFingerprintMismatch when the key was used with another fingerprint.
func (s *Store) Do(ctx context.Context, key string, fingerprint []byte,
	fn func(ctx context.Context) ([]byte, error)) (response []byte, replayed bool, err error) {
	lease, rec, err := s.Begin(ctx, key, fingerprint)
	if err != nil {
		return nil, false, err
	}
	if lease == nil {
		if rec.State == StateFailed {
			return rec.Response, true, wrap("do", key, ErrFailed)
		}
		return rec.Response, true, nil
	}

	endCtx, endCancel := endctx.New(ctx)
	defer endCancel()

	var fnErr error
	lease.Run(ctx, func(ctx context.Context) { response, fnErr = fn(ctx) })

	if fnErr == nil {
		err := lease.Complete(endCtx, response)
		if errors.Is(err, ErrTooLarge) {
			// fn ran and its side effect happened, but its outcome cannot be
			// stored. Running it again could repeat the side effect, so the
			// key ends as a permanent failure with no response.
			if ferr := lease.Fail(endCtx, nil, false); ferr != nil {
				return s.refused(endCtx, key, fingerprint, errors.Join(err, ferr))
			}
		}
		if err != nil {
			return s.refused(endCtx, key, fingerprint, err)
		}
		return response, false, nil
	}
	var perm *PermanentError
	if errors.As(fnErr, &perm) {
		if err := lease.Fail(endCtx, perm.Response, false); err != nil {
			return s.refused(endCtx, key, fingerprint, errors.Join(fnErr, err))
		}
		return perm.Response, false, fnErr
	}
	if err := lease.Fail(endCtx, nil, true); err != nil {
		return s.refused(endCtx, key, fingerprint, errors.Join(fnErr, err))
	}
	return nil, false, fnErr
}

// refused answers a Do whose outcome the store refused with err. When the
// lease was lost (it lapsed and another caller took the key over, or an
// operator ended it), fn's outcome must not be handed out, since it is not
// the key's outcome: the stored one is, and it is returned as a replay
// once the newer holder has finished. Otherwise err is returned.
func (s *Store) refused(ctx context.Context, key string, fingerprint []byte, err error) ([]byte, bool, error) {
	if !errors.Is(err, ErrLeaseLost) {
		return nil, false, err
	}
	rec, gerr := s.Get(ctx, key)
	if gerr != nil || !rec.Finished() || !bytes.Equal(rec.Fingerprint, fingerprint) {
		return nil, false, err
	}
	if rec.State == StateFailed {
		return rec.Response, true, wrap("do", key, ErrFailed)
	}
	return rec.Response, true, nil
}
