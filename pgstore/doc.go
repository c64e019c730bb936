// Package pgstore runs the idem store on Postgres, and completes records in
// the caller's own transactions, so that a side effect written to the same
// database and its stored outcome commit together or not at all.
//
// # Basics
//
// Open takes a pgx pool and returns the same *idem.Store the embedded
// store is: the state machine, the record encoding, fencing and TTLs are
// idem's, and only the storage differs.
//
//	pool, err := pgxpool.New(ctx, "postgres://app@db/payments")
//	s, err := pgstore.Open(ctx, pool, nil) // was: idem.Open(dir, nil)
//
// For another table or lock timeout, build the backend yourself:
//
//	b, err := pgstore.NewBackend(ctx, pool, &pgstore.Config{Table: "billing.idem_records"})
//	s, err := idem.New(b, opts)
//
// Closing the store does not close the pool: the caller owns it, may share
// it with the rest of the service, and closes it after the store.
//
// # Exactly once with the caller's transaction
//
// A crash after a side effect and before Complete makes the retry run the
// effect again. When the effect is a write to the same database, DoTx
// closes that window: it runs fn in a transaction and completes the key in
// that transaction.
//
//	resp, replayed, err := pgstore.DoTx(ctx, s, pool, key, fingerprint,
//		func(ctx context.Context, tx pgx.Tx) ([]byte, error) {
//			var id int64
//			err := tx.QueryRow(ctx, "INSERT INTO charges (account, amount) VALUES ($1, $2) RETURNING id",
//				account, amount).Scan(&id)
//			return fmt.Appendf(nil, "charge %d", id), err
//		})
//
// A crash before the commit loses both the charge and the completion (the
// lease lapses and a retry runs fn again on a database without the
// charge); a crash after it loses neither (a retry gets the replay).
// TestExactlyOnceAcrossCrashes checks this with a server process it kills
// with SIGKILL while clients retry the same keys; the count of kills is an
// environment variable:
//
//	IDEM_CRASH_KILLS=20 go test -run 'TestExactlyOnceAcrossCrashes|TestCrashesOutsideTx' -v ./pgstore/
//
// It logs the duplicated charges for DoTx (it fails unless there are none)
// and, in TestCrashesOutsideTx, for the same service with the charge made
// before Store.Do's Complete: there, a kill between the two makes a retry
// charge again (18 duplicates over 20 kills in one run here, 0 with DoTx).
//
// CompleteTx is the step DoTx is built on, for callers that run the
// transaction themselves: Begin, KeepAlive, begin the transaction, do the
// work, CompleteTx, Commit, and only then stop the renewal. A lost lease
// (ErrLeaseLost from CompleteTx) means another caller took the key over:
// roll back, and answer with the key's stored outcome rather than the one
// just computed.
//
// # Caveats
//
// CompleteTx's UPDATE locks the record's row until the transaction ends.
// That lock is the fence (nobody can take the key over or renew, fail or
// release the lease while the completion may still commit), and it has
// three consequences:
//
//   - Stop the renewal after the commit or rollback, never before. The
//     stop function of KeepAlive waits for a renewal in flight, and a
//     renewal that started after CompleteTx is waiting for the row lock
//     the caller's own transaction holds: stopping first would wait until
//     that renewal gives up (Config.LockTimeout; with no lock timeout it
//     would wait for ever). DoTx stops after the transaction ends. A
//     renewal that was waiting when the transaction committed then finds
//     the key completed and logs a lost lease, which is harmless.
//   - Do and CompleteTx do not combine: Do completes the key itself, after
//     fn returns, outside any transaction of the caller's. Use DoTx.
//   - Keep the transaction short after CompleteTx (call it last, just
//     before Commit). Readers are not blocked, since Postgres reads the
//     committed row without waiting for locks: Get, and a Begin on the key,
//     answer from the record as last committed, in progress with a live
//     lease, so Begin returns idem.ErrInProgress at once. But the renewal
//     cannot reach the row, so the stored lease is not extended while the
//     transaction stays open; once it has lapsed, a Begin that would take
//     the key over waits for the row for Config.LockTimeout and then
//     returns an error wrapping ErrLocked, since the holder may be about to
//     commit (retry it like ErrInProgress). After a commit, Begin replays;
//     after a rollback it takes the key over.
//
// Every other write the store runs on its own (Extend, Complete, Fail,
// Release, Delete, the operator repairs) gives up on a row locked for
// longer than Config.LockTimeout with an error wrapping ErrLocked;
// KeepAlive's renewal logs it and tries again a twelfth of the lease
// later. Under REPEATABLE READ or SERIALIZABLE, CompleteTx fails with a
// serialization error when a renewal rewrote the record after the
// transaction took its snapshot: retry the transaction, as those levels
// require anyway.
//
// After a rollback, the lease is as it was: complete it in another
// transaction, or Fail or Release it.
//
// # How records are kept
//
// Each record is one row of a table (by default idem_records):
//
//	key        text COLLATE "C" PRIMARY KEY
//	value      bytea NOT NULL         -- the versioned bytes every idem store keeps
//	expires_at timestamptz NOT NULL   -- indexed: garbage collection deletes by it
//
// Open creates the table and its index when missing, in a transaction
// serialized by pg_advisory_xact_lock, so several instances may start at
// once on a fresh database (a bare CREATE TABLE IF NOT EXISTS fails in one
// of two sessions racing on it, on pg_type's unique index). A table that
// exists is only checked to have the three columns; the role needs no
// CREATE privilege then.
//
// Every transition (claim, takeover, complete, fail, release, extend) is
// one statement that compares the stored bytes with those the store read
// and writes only if they match, and returns the stored value when they do
// not; it is sent in one round trip together with the statement's
// lock_timeout (set_config(..., true) in the same implicit transaction, so
// the setting ends with it):
//
//   - a claim of a key the store expects absent is an INSERT that writes
//     only if no live row is visible, ON CONFLICT DO NOTHING, beside an
//     UPDATE that replaces an expired row in place;
//   - every other transition is an UPDATE ... WHERE key = $1 AND value =
//     $old AND expires_at is in the future, and a release a DELETE with
//     the same condition.
//
// Postgres locks the row it writes until the statement commits, so of any
// number of instances racing on a key exactly one writes, and the fencing
// check (same token, still in progress) holds across instances. Store.Get
// is one SELECT and never waits for a lock; Store.Delete is one DELETE.
//
// # Time
//
// The store's clock (idem.Options.Now, on each instance) decides whether a
// lease has lapsed and whether a record has expired. The database's clock
// decides only when a row is gone: a row past expires_at is absent to
// every statement and is deleted by garbage collection. expires_at is the
// record's remaining life, as measured on this machine, added to the
// database's statement_timestamp(), so an offset between the two clocks
// cannot drop a record early. What redisstore's documentation says about
// skew between instances holds here too.
//
// # Garbage collection
//
// The store's background expiry (idem.Options.GCInterval, 5 minutes by
// default) calls Backend.CollectGarbage, which deletes expired rows oldest
// first, 1000 per DELETE, through the index on expires_at, skipping rows
// another transaction holds. The space goes back to Postgres's free space
// map when autovacuum has run; the sizes reported are the table's with its
// indexes.
//
// # Durability and failures
//
// Complete returns once Postgres has committed the record; how that
// survives a crash of the server is its synchronous_commit setting, not
// idem.Options.Sync, which concerns Badger only. With replicas, it is
// Postgres's synchronous replication that decides whether a failover
// keeps it.
//
// When Postgres is down or slow, every call returns an error that says
// "postgres" with the operation, and errors.Is and errors.As reach the
// cause (a refused connection, a *pgconn.PgError, context.DeadlineExceeded).
// No lease is ever granted without the database's reply. A claim whose
// reply was lost after it committed leaves an in-progress record nobody
// holds: retries get idem.ErrInProgress until its lease lapses, and then
// take it over.
package pgstore
