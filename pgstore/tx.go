package pgstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/idemdb/idem/internal/endctx"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/internal/storeinternal"
)

// txSwapper reads and writes records in a caller's transaction, with the
// statements of the pool-side backend and no lock timeout of its own.
type txSwapper struct {
	b  *Backend
	tx pgx.Tx
}

func (s txSwapper) Load(ctx context.Context, key string) ([]byte, error) {
	return s.b.read(ctx, s.tx, key)
}

func (s txSwapper) CompareAndSwap(ctx context.Context, key string, old, new []byte, expireAt time.Time, _ bool) ([]byte, bool, error) {
	return s.b.swap(ctx, s.tx, key, old, new, expireAt)
}

// CompleteTx completes lease inside the caller's transaction tx: the record
// becomes completed when, and only when, tx commits. A lost lease returns
// an error wrapping idem.ErrLeaseLost, and the caller must roll back.
//
// tx must be a transaction on the database of the lease's store (the
// store must be a pgstore one; a lease from another store is an error).
// The conditional UPDATE it runs locks the record's row until tx ends,
// which fences every other writer: a renewal, a takeover or an operator
// repair of the key waits for the end of tx (at most Config.LockTimeout,
// then it gives up with ErrLocked) and then sees the completion, or, after
// a rollback, the record as it was. A rollback leaves the lease in force,
// to be completed again, failed or released.
//
// Call it last before Commit, and stop the lease's KeepAlive after tx has
// ended, not before (see the package documentation, or use DoTx, which
// does all of this).
func CompleteTx(ctx context.Context, tx pgx.Tx, lease *idem.Lease, response []byte) error {
	if lease == nil {
		return errors.New("pgstore: complete: nil lease")
	}
	if tx == nil {
		return fmt.Errorf("pgstore: complete %q: nil transaction", lease.Key())
	}
	return lease.CompleteVia(ctx, response, func(b idem.Backend) (idem.Swapper, error) {
		pb, ok := b.(*Backend)
		if !ok {
			return nil, fmt.Errorf("pgstore: the lease is from a store on %T, not on Postgres", b)
		}
		return txSwapper{b: pb, tx: tx}, nil
	})
}

// DoTx is idem's Store.Do for work that writes to the same Postgres
// database as the store: fn runs in a transaction begun on pool, and the
// record is completed in that transaction (CompleteTx), so fn's writes and
// the stored response commit together or not at all. A crash anywhere
// leaves either both or neither; a retry then gets the replay, or runs fn
// again on a database without its writes.
//
// s must be a store opened by this package on pool's database. While fn
// runs its lease is renewed (idem.Lease.KeepAlive); the renewal is stopped
// after the transaction ends. When fn returns an error, the transaction is
// rolled back and the key is failed as Do fails it: a
// idem.PermanentError stores a failure replayed to retries, any other
// error a retryable one. If fn panics, the transaction is rolled back, the
// key released, and the panic goes on. A response too large to store
// rolls back and leaves the key retryable, with an error wrapping
// idem.ErrTooLarge.
//
// If the lease was lost (another caller took the key over after the lease
// lapsed, or the record was deleted), the transaction is rolled back; when
// the key's record is finished by then with the same fingerprint, its
// outcome is returned as a replay (replayed == true), and otherwise an
// error wrapping idem.ErrLeaseLost.
//
// Like Do, it returns the stored response with replayed == true for a
// finished key (with an error wrapping idem.ErrFailed for a stored
// failure), idem.ErrInProgress while another caller runs the key, and
// idem.ErrFingerprintMismatch when the key was used for another request.
func DoTx(ctx context.Context, s *idem.Store, pool *pgxpool.Pool, key string, fingerprint []byte,
	fn func(ctx context.Context, tx pgx.Tx) ([]byte, error)) (response []byte, replayed bool, err error) {
	if s == nil || pool == nil {
		return nil, false, fmt.Errorf("pgstore: do %q: nil store or pool", key)
	}
	if b := storeinternal.Backend(s); !isPostgres(b) {
		return nil, false, fmt.Errorf("pgstore: do %q: the store is on %T, not on Postgres", key, b)
	}
	lease, rec, err := s.Begin(ctx, key, fingerprint)
	if err != nil {
		return nil, false, err
	}
	if lease == nil {
		return replay(key, rec)
	}

	runCtx, stop := lease.KeepAlive(ctx)
	endCtx, endCancel := endctx.New(ctx) // the completion and the commit, or the rollback and the failure
	defer endCancel()

	tx, err := pool.Begin(runCtx)
	if err != nil {
		stop()
		// Nothing ran: the key is free for a retry.
		return nil, false, errors.Join(fmt.Errorf("pgstore: do %q: begin: %w", key, err), lease.Release(endCtx))
	}
	// rollback ends tx, and then the renewal, in this order: a renewal
	// blocked on the row lock CompleteTx took is freed by the end of tx,
	// and stop waits for it.
	rollback := func() error {
		err := tx.Rollback(endCtx)
		stop()
		if errors.Is(err, pgx.ErrTxClosed) {
			return nil
		}
		return err
	}

	var fnErr error
	func() {
		returned := false
		defer func() {
			if returned {
				return
			}
			// fn panicked, or its goroutine is exiting (runtime.Goexit,
			// for which recover returns nil).
			p := recover()
			_ = rollback()
			_ = lease.Release(endCtx)
			if p != nil {
				panic(p)
			}
		}()
		response, fnErr = fn(runCtx, tx)
		returned = true
	}()

	if fnErr != nil {
		rerr := rollback()
		var perm *idem.PermanentError
		if errors.As(fnErr, &perm) {
			if err := lease.Fail(endCtx, perm.Response, false); err != nil {
				return nil, false, errors.Join(fnErr, rerr, err)
			}
			return perm.Response, false, fnErr
		}
		if err := lease.Fail(endCtx, nil, true); err != nil {
			return nil, false, errors.Join(fnErr, rerr, err)
		}
		return nil, false, fnErr
	}

	if err := CompleteTx(endCtx, tx, lease, response); err != nil {
		rerr := rollback()
		if errors.Is(err, idem.ErrLeaseLost) {
			return lostReplay(endCtx, s, key, fingerprint, err)
		}
		// Rolled back: fn's writes are undone, and a retry may run it again.
		return nil, false, errors.Join(err, rerr, lease.Fail(endCtx, nil, true))
	}
	if err := tx.Commit(endCtx); err != nil {
		stop()
		return committed(endCtx, s, lease, response, fmt.Errorf("pgstore: do %q: commit: %w", key, err))
	}
	stop()
	return response, false, nil
}

// replay answers from a finished record, as Do does.
func replay(key string, rec *idem.Record) ([]byte, bool, error) {
	if rec.State == idem.StateFailed {
		return rec.Response, true, fmt.Errorf("pgstore: do %q: %w", key, idem.ErrFailed)
	}
	return rec.Response, true, nil
}

// lostReplay answers a DoTx whose lease was lost: with the key's stored
// outcome when it is finished and for the same request, or with lost.
func lostReplay(ctx context.Context, s *idem.Store, key string, fingerprint []byte, lost error) ([]byte, bool, error) {
	rec, err := s.Get(ctx, key)
	if err != nil || !rec.Finished() || !bytes.Equal(rec.Fingerprint, fingerprint) {
		return nil, false, lost
	}
	return replay(key, rec)
}

// committed answers a DoTx whose commit returned commitErr: the commit
// may have been made all the same (its reply lost with the connection).
// Failing the lease decides it atomically: the failure is refused when the
// record was completed, and made when it was not (then fn's writes were
// not committed either, and a retry may run it again).
func committed(ctx context.Context, s *idem.Store, lease *idem.Lease, response []byte, commitErr error) ([]byte, bool, error) {
	err := lease.Fail(ctx, nil, true)
	if !errors.Is(err, idem.ErrLeaseLost) {
		return nil, false, errors.Join(commitErr, err)
	}
	rec, gerr := s.Get(ctx, lease.Key())
	if gerr == nil && rec.State == idem.StateCompleted && rec.Token == lease.Token() {
		return response, false, nil
	}
	return nil, false, errors.Join(commitErr, err)
}

// isPostgres reports whether b, a store's backend, is a pgstore Backend.
func isPostgres(b any) bool {
	_, ok := b.(*Backend)
	return ok
}
