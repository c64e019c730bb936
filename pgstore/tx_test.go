//go:build unix

package pgstore_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemtest"
	"github.com/idemdb/idem/internal/pgtest"
	"github.com/idemdb/idem/pgstore"
)

// payments returns a pool on a fresh database with a charges table (no
// unique key: a duplicate charge must be seen, not refused) and a store
// on it with opts.
func payments(t *testing.T, opts *idem.Options) (*pgxpool.Pool, *idem.Store) {
	t.Helper()
	pool := newPool(t, pgtest.DB(t))
	_, err := pool.Exec(ctx, "CREATE TABLE charges (id bigserial PRIMARY KEY, key text NOT NULL, amount int NOT NULL)")
	require.NoError(t, err)
	if opts == nil {
		opts = &idem.Options{}
	}
	opts.GCInterval = -1
	return pool, storeOn(t, pool, nil, opts)
}

// charge is the side effect: one row in charges, in tx.
func charge(ctx context.Context, tx pgx.Tx, key string) ([]byte, error) {
	var id int64
	if err := tx.QueryRow(ctx, "INSERT INTO charges (key, amount) VALUES ($1, 5000) RETURNING id", key).Scan(&id); err != nil {
		return nil, err
	}
	return fmt.Appendf(nil, "charge %d", id), nil
}

func charges(t *testing.T, pool *pgxpool.Pool, key string) int {
	t.Helper()
	var n int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM charges WHERE key = $1", key).Scan(&n))
	return n
}

func state(t *testing.T, s *idem.Store, key string) idem.State {
	t.Helper()
	rec, err := s.Get(ctx, key)
	require.NoError(t, err)
	return rec.State
}

// TestCompleteTx: the record completes with the transaction's commit, and
// not before: other sessions see it in progress until then.
func TestCompleteTx(t *testing.T) {
	pool, s := payments(t, nil)
	l, _, err := s.Begin(ctx, "pay-1", fp)
	require.NoError(t, err)
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	resp, err := charge(ctx, tx, "pay-1")
	require.NoError(t, err)
	require.NoError(t, pgstore.CompleteTx(ctx, tx, l, resp))
	assert.Equal(t, idem.StateInProgress, state(t, s, "pay-1"), "not committed yet")
	assert.Zero(t, charges(t, pool, "pay-1"))
	require.NoError(t, tx.Commit(ctx))

	_, rec, err := s.Begin(ctx, "pay-1", fp)
	require.NoError(t, err)
	assert.Equal(t, idem.StateCompleted, rec.State)
	assert.Equal(t, string(resp), string(rec.Response))
	assert.Equal(t, 1, charges(t, pool, "pay-1"))
	assert.ErrorIs(t, l.Complete(ctx, nil), idem.ErrLeaseLost, "the lease has ended")
	assert.Equal(t, uint64(1), s.Stats().Completed)
}

// TestCompleteTxRollback: after a rollback nothing was completed, and the
// lease is still the caller's: to complete in another transaction, to
// extend, release or fail.
func TestCompleteTxRollback(t *testing.T) {
	pool, s := payments(t, nil)
	rolledBack := func(l *idem.Lease) {
		t.Helper()
		tx, err := pool.Begin(ctx)
		require.NoError(t, err)
		resp, err := charge(ctx, tx, l.Key())
		require.NoError(t, err)
		require.NoError(t, pgstore.CompleteTx(ctx, tx, l, resp))
		require.NoError(t, tx.Rollback(ctx))
		assert.Equal(t, idem.StateInProgress, state(t, s, l.Key()))
		assert.Zero(t, charges(t, pool, l.Key()))
	}

	l, _, err := s.Begin(ctx, "again", fp)
	require.NoError(t, err)
	rolledBack(l)
	rolledBack(l)
	require.NoError(t, l.Extend(ctx, time.Minute))
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	resp, err := charge(ctx, tx, "again")
	require.NoError(t, err)
	require.NoError(t, pgstore.CompleteTx(ctx, tx, l, resp))
	require.NoError(t, tx.Commit(ctx))
	assert.Equal(t, idem.StateCompleted, state(t, s, "again"))
	assert.Equal(t, 1, charges(t, pool, "again"))

	l, _, err = s.Begin(ctx, "release", fp)
	require.NoError(t, err)
	rolledBack(l)
	require.NoError(t, l.Release(ctx))
	_, err = s.Get(ctx, "release")
	assert.ErrorIs(t, err, idem.ErrNotFound)

	l, _, err = s.Begin(ctx, "fail", fp)
	require.NoError(t, err)
	rolledBack(l)
	require.NoError(t, l.Fail(ctx, []byte("declined"), false))
	_, rec, err := s.Begin(ctx, "fail", fp)
	require.NoError(t, err)
	assert.Equal(t, idem.StateFailed, rec.State)
	assert.Equal(t, "declined", string(rec.Response))
}

// TestCompleteTxLeaseLost: a holder whose lease was taken over gets
// ErrLeaseLost inside its transaction, which it rolls back; the newer
// holder's outcome stands.
func TestCompleteTxLeaseLost(t *testing.T) {
	clk := idemtest.NewClock()
	pool, s := payments(t, &idem.Options{Now: clk.Now})
	a, _, err := s.Begin(ctx, "k", fp)
	require.NoError(t, err)
	clk.Advance(time.Minute)
	b, _, err := s.Begin(ctx, "k", fp)
	require.NoError(t, err)
	require.NotNil(t, b, "takeover")

	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	_, err = charge(ctx, tx, "k")
	require.NoError(t, err)
	err = pgstore.CompleteTx(ctx, tx, a, []byte("from A"))
	require.ErrorIs(t, err, idem.ErrLeaseLost)
	assert.Contains(t, err.Error(), `idem: complete "k"`)
	require.NoError(t, tx.Rollback(ctx))
	require.NoError(t, b.Complete(ctx, []byte("from B")))
	rec, err := s.Get(ctx, "k")
	require.NoError(t, err)
	assert.Equal(t, "from B", string(rec.Response))
	assert.Zero(t, charges(t, pool, "k"))
}

// TestCompleteTxWrongStore: a lease of another store, or no transaction,
// is refused before anything is written; the lease stays usable.
func TestCompleteTxWrongStore(t *testing.T) {
	pool, _ := payments(t, nil)
	mem, err := idem.Open("", &idem.Options{InMemory: true, GCInterval: -1})
	require.NoError(t, err)
	t.Cleanup(func() { _ = mem.Close() })
	l, _, err := mem.Begin(ctx, "k", fp)
	require.NoError(t, err)
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	err = pgstore.CompleteTx(ctx, tx, l, []byte("x"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "not on Postgres")
	assert.ErrorContains(t, pgstore.CompleteTx(ctx, nil, l, nil), "nil transaction")
	assert.ErrorContains(t, pgstore.CompleteTx(ctx, tx, nil, nil), "nil lease")
	require.NoError(t, l.Complete(ctx, []byte("x")))

	_, _, err = pgstore.DoTx(ctx, mem, pool, "k2", fp, func(context.Context, pgx.Tx) ([]byte, error) {
		t.Fatal("fn ran")
		return nil, nil
	})
	assert.ErrorContains(t, err, "not on Postgres")
}

// TestCompleteTxOpen: while a transaction that completed the record is
// open, its row is locked. A Begin on the key answers at once from the
// committed record (ErrInProgress), a Get reads it, and the writes the
// store runs on its own (the renewal's Extend, a takeover, Delete) give
// up after the lock timeout with ErrLocked. After the commit they see the
// completion.
func TestCompleteTxOpen(t *testing.T) {
	clk := idemtest.NewClock()
	pool, s := payments(t, &idem.Options{Now: clk.Now})
	l, _, err := s.Begin(ctx, "k", fp)
	require.NoError(t, err)
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	resp, err := charge(ctx, tx, "k")
	require.NoError(t, err)
	require.NoError(t, pgstore.CompleteTx(ctx, tx, l, resp))

	start := time.Now()
	_, rec, err := s.Begin(ctx, "k", fp)
	require.ErrorIs(t, err, idem.ErrInProgress)
	assert.Equal(t, l.Token(), rec.Token)
	assert.Less(t, time.Since(start), time.Second, "answered without waiting for the transaction")
	_, _, err = s.Begin(ctx, "k", []byte("other"))
	require.ErrorIs(t, err, idem.ErrFingerprintMismatch)
	assert.Equal(t, idem.StateInProgress, state(t, s, "k"))

	start = time.Now()
	err = l.Extend(ctx, time.Minute)
	require.ErrorIs(t, err, pgstore.ErrLocked)
	assert.Less(t, time.Since(start), 2*time.Second, "bounded by the lock timeout")
	assert.Contains(t, err.Error(), `idem: extend "k"`)
	require.ErrorIs(t, s.Delete(ctx, "k"), pgstore.ErrLocked)

	// The lease lapses while the transaction is open: a takeover is not
	// made, since the holder may be about to commit.
	clk.Advance(time.Minute)
	l2, _, err := s.Begin(ctx, "k", fp)
	require.ErrorIs(t, err, pgstore.ErrLocked)
	require.Nil(t, l2)

	require.NoError(t, tx.Commit(ctx))
	_, rec, err = s.Begin(ctx, "k", fp)
	require.NoError(t, err)
	assert.Equal(t, idem.StateCompleted, rec.State)
	assert.Equal(t, string(resp), string(rec.Response))
	assert.ErrorIs(t, l.Extend(ctx, time.Minute), idem.ErrLeaseLost)
}

// TestCompleteTxRollbackThenTakeover: a transaction that holds a lapsed
// lease's row and rolls back lets the next Begin take the key over, and
// the old holder is fenced out of its next transaction.
func TestCompleteTxRollbackThenTakeover(t *testing.T) {
	clk := idemtest.NewClock()
	pool, s := payments(t, &idem.Options{Now: clk.Now})
	a, _, err := s.Begin(ctx, "k", fp)
	require.NoError(t, err)
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	require.NoError(t, pgstore.CompleteTx(ctx, tx, a, []byte("from A")))
	clk.Advance(time.Minute)
	require.NoError(t, tx.Rollback(ctx))
	b, _, err := s.Begin(ctx, "k", fp)
	require.NoError(t, err)
	require.NotNil(t, b)

	tx, err = pool.Begin(ctx)
	require.NoError(t, err)
	require.ErrorIs(t, pgstore.CompleteTx(ctx, tx, a, []byte("from A")), idem.ErrLeaseLost)
	require.NoError(t, tx.Rollback(ctx))
	require.NoError(t, b.Complete(ctx, []byte("from B")))
}

// TestStopBeforeCommit: a caller that stops its renewal before it commits
// waits for a renewal blocked on the row lock it holds itself; the lock
// timeout bounds that wait (without one it would never end). After the
// commit, stop returns at once.
func TestStopBeforeCommit(t *testing.T) {
	pool, s := payments(t, &idem.Options{LeaseTTL: 90 * time.Millisecond})
	l, _, err := s.Begin(ctx, "k", fp)
	require.NoError(t, err)
	_, stop := l.KeepAlive(ctx)
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	require.NoError(t, pgstore.CompleteTx(ctx, tx, l, []byte("done")))
	time.Sleep(200 * time.Millisecond) // renewals now meet the lock
	start := time.Now()
	stop()
	assert.Less(t, time.Since(start), 2*time.Second)
	require.NoError(t, tx.Commit(ctx))
	assert.Equal(t, idem.StateCompleted, state(t, s, "k"))
}

func TestDoTx(t *testing.T) {
	pool, s := payments(t, &idem.Options{MaxResponseSize: 100})
	runs := 0
	pay := func(ctx context.Context, tx pgx.Tx) ([]byte, error) {
		runs++
		return charge(ctx, tx, "pay")
	}
	resp, replayed, err := pgstore.DoTx(ctx, s, pool, "pay", fp, pay)
	require.NoError(t, err)
	assert.False(t, replayed)
	assert.Regexp(t, `^charge \d+$`, string(resp))
	for range 2 {
		again, replayed, err := pgstore.DoTx(ctx, s, pool, "pay", fp, pay)
		require.NoError(t, err)
		assert.True(t, replayed)
		assert.Equal(t, resp, again)
	}
	assert.Equal(t, 1, runs)
	assert.Equal(t, 1, charges(t, pool, "pay"))
	_, _, err = pgstore.DoTx(ctx, s, pool, "pay", []byte("other"), pay)
	assert.ErrorIs(t, err, idem.ErrFingerprintMismatch)

	// An error rolls fn's writes back and leaves the key retryable.
	boom := errors.New("gateway timeout")
	_, _, err = pgstore.DoTx(ctx, s, pool, "retry", fp, func(ctx context.Context, tx pgx.Tx) ([]byte, error) {
		_, err := charge(ctx, tx, "retry")
		require.NoError(t, err)
		return nil, boom
	})
	assert.ErrorIs(t, err, boom)
	assert.Zero(t, charges(t, pool, "retry"))
	rec, err := s.Get(ctx, "retry")
	require.NoError(t, err)
	assert.Equal(t, idem.StateFailed, rec.State)
	assert.True(t, rec.Retryable)
	_, replayed, err = pgstore.DoTx(ctx, s, pool, "retry", fp, func(ctx context.Context, tx pgx.Tx) ([]byte, error) {
		return charge(ctx, tx, "retry")
	})
	require.NoError(t, err)
	assert.False(t, replayed, "ran again")
	assert.Equal(t, 1, charges(t, pool, "retry"))

	// A permanent failure is stored and replayed; fn's writes are undone.
	declined := errors.New("card declined")
	resp, _, err = pgstore.DoTx(ctx, s, pool, "perm", fp, func(ctx context.Context, tx pgx.Tx) ([]byte, error) {
		_, err := charge(ctx, tx, "perm")
		require.NoError(t, err)
		return nil, idem.Permanent(declined, []byte("402"))
	})
	assert.ErrorIs(t, err, declined)
	assert.Equal(t, "402", string(resp))
	resp, replayed, err = pgstore.DoTx(ctx, s, pool, "perm", fp, pay)
	assert.ErrorIs(t, err, idem.ErrFailed)
	assert.True(t, replayed)
	assert.Equal(t, "402", string(resp))
	assert.Zero(t, charges(t, pool, "perm"))

	// A panic rolls back, releases the key and goes on.
	assert.Panics(t, func() {
		_, _, _ = pgstore.DoTx(ctx, s, pool, "panic", fp, func(ctx context.Context, tx pgx.Tx) ([]byte, error) {
			_, err := charge(ctx, tx, "panic")
			require.NoError(t, err)
			panic("boom")
		})
	})
	_, err = s.Get(ctx, "panic")
	assert.ErrorIs(t, err, idem.ErrNotFound, "released after the panic")
	assert.Zero(t, charges(t, pool, "panic"))

	// A response too large to store: rolled back, so a retry may run.
	_, _, err = pgstore.DoTx(ctx, s, pool, "big", fp, func(ctx context.Context, tx pgx.Tx) ([]byte, error) {
		_, err := charge(ctx, tx, "big")
		require.NoError(t, err)
		return make([]byte, 101), nil
	})
	assert.ErrorIs(t, err, idem.ErrTooLarge)
	assert.Zero(t, charges(t, pool, "big"))
	rec, err = s.Get(ctx, "big")
	require.NoError(t, err)
	assert.True(t, rec.Retryable)

	// Another caller's live lease: ErrInProgress, fn not run.
	l, _, err := s.Begin(ctx, "busy", fp)
	require.NoError(t, err)
	before := runs
	_, _, err = pgstore.DoTx(ctx, s, pool, "busy", fp, pay)
	assert.ErrorIs(t, err, idem.ErrInProgress)
	assert.Equal(t, before, runs)
	require.NoError(t, l.Release(ctx))

	// A caller that goes away after fn ran still gets fn committed.
	cctx, cancel := context.WithCancel(ctx)
	_, _, err = pgstore.DoTx(cctx, s, pool, "gone", fp, func(ctx context.Context, tx pgx.Tx) ([]byte, error) {
		resp, err := charge(ctx, tx, "gone")
		cancel()
		return resp, err
	})
	require.NoError(t, err)
	assert.Equal(t, idem.StateCompleted, state(t, s, "gone"))
	assert.Equal(t, 1, charges(t, pool, "gone"))
}

// TestDoTxLeaseLost: fn outlives its lease and another caller takes the
// key over. fn's transaction is rolled back, and DoTx answers with the
// newer holder's outcome when there is one, ErrLeaseLost when not.
func TestDoTxLeaseLost(t *testing.T) {
	clk := idemtest.NewClock()
	pool, s := payments(t, &idem.Options{Now: clk.Now})
	resp, replayed, err := pgstore.DoTx(ctx, s, pool, "k", fp, func(ctx context.Context, tx pgx.Tx) ([]byte, error) {
		resp, err := charge(ctx, tx, "k")
		require.NoError(t, err)
		clk.Advance(time.Minute)
		other, _, err := s.Begin(ctx, "k", fp)
		require.NoError(t, err)
		require.NoError(t, other.Complete(ctx, []byte("from the other")))
		return resp, nil
	})
	require.NoError(t, err)
	assert.True(t, replayed)
	assert.Equal(t, "from the other", string(resp))
	assert.Zero(t, charges(t, pool, "k"), "fn's charge was rolled back")

	_, _, err = pgstore.DoTx(ctx, s, pool, "k2", fp, func(ctx context.Context, tx pgx.Tx) ([]byte, error) {
		clk.Advance(time.Minute)
		other, _, err := s.Begin(ctx, "k2", fp)
		require.NoError(t, err)
		require.NotNil(t, other)
		return charge(ctx, tx, "k2")
	})
	require.ErrorIs(t, err, idem.ErrLeaseLost)
	assert.Zero(t, charges(t, pool, "k2"))
}

// TestDoTxRenews: while fn runs for many lease lifetimes, the lease is
// renewed and other callers get ErrInProgress; the outcome commits with
// fn's write.
func TestDoTxRenews(t *testing.T) {
	pool, s := payments(t, &idem.Options{LeaseTTL: 150 * time.Millisecond})
	_, _, err := pgstore.DoTx(ctx, s, pool, "slow", fp, func(ctx context.Context, tx pgx.Tx) ([]byte, error) {
		deadline := time.Now().Add(600 * time.Millisecond)
		for time.Now().Before(deadline) {
			l, _, err := s.Begin(ctx, "slow", fp)
			require.Nil(t, l, "lease lapsed while fn ran")
			require.ErrorIs(t, err, idem.ErrInProgress)
			time.Sleep(10 * time.Millisecond)
		}
		return charge(ctx, tx, "slow")
	})
	require.NoError(t, err)
	assert.Equal(t, idem.StateCompleted, state(t, s, "slow"))
	assert.Equal(t, 1, charges(t, pool, "slow"))
}
