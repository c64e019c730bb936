package pgstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemdb/idem"
)

// DefaultTable is the table Open uses and a zero Config.Table means.
const DefaultTable = "idem_records"

// DefaultLockTimeout is the lock_timeout of the statements the store runs
// on its own when Config.LockTimeout is zero.
const DefaultLockTimeout = 100 * time.Millisecond

// gcBatch is the most expired rows one DELETE of CollectGarbage removes.
const gcBatch = 1000

// Scan reads at most scanRows rows, and stops adding rows to a batch past
// scanBytes of values, before it calls fn on them.
const (
	scanRows  = 256
	scanBytes = 8 << 20
)

// ErrLocked is returned, wrapped, by a write the store runs on its own
// (Begin's takeover of a lapsed lease, Extend, Complete, Fail, Release,
// Delete) when the record's row stayed locked for Config.LockTimeout by
// another transaction that has not ended: in practice a caller's
// transaction that completed the record with CompleteTx and has not yet
// committed or rolled back. Nothing was written. The lease renewal of
// KeepAlive tries again; a Begin that gets it may be retried like
// idem.ErrInProgress.
var ErrLocked = errors.New("record locked by a transaction still open")

// Config configures a Backend. A nil *Config, and every zero field, means
// the default named in the field's comment.
type Config struct {
	// Table is the table that holds the records, optionally qualified by
	// its schema ("billing.idem_records"). Zero means DefaultTable
	// ("idem_records", in the first schema of the search_path). It is
	// created, with its index on expires_at, when missing.
	Table string

	// LockTimeout bounds how long a statement the store runs on its own
	// waits for a row lock held by another transaction (Postgres's
	// lock_timeout, set for that statement only). Zero means
	// DefaultLockTimeout (100ms); a negative value means no bound (the
	// statement waits as long as its context allows). CompleteTx, which
	// runs in the caller's transaction, never sets it. See "Caveats" in
	// the package documentation.
	LockTimeout time.Duration
}

// Backend is the idem.Backend on Postgres: one row per record, in a table
// (key text primary key, value bytea, expires_at timestamptz) with an
// index on expires_at. It is safe for simultaneous use by multiple
// goroutines; most callers want Open.
type Backend struct {
	pool        *pgxpool.Pool
	table       string // as configured, for messages
	quoted      string // the table as an SQL identifier
	lockTimeout string // lock_timeout setting for set_config; "" for none
	sql         statements
}

var (
	_ idem.Backend          = (*Backend)(nil)
	_ idem.GarbageCollector = (*Backend)(nil)
)

// statements are the SQL texts of a Backend, with its table name in them.
type statements struct {
	load, claim, update, delete, remove, gc, size string
	scan                                          [2][2]string // [after a key][with an upper bound]
}

// Open returns a Store on the Postgres database behind pool, creating its
// table if missing. Store.Close leaves pool open.
//
// It uses the default Config (table "idem_records", lock timeout 100ms);
// passing nil options uses idem's defaults. For another table, build the
// backend with NewBackend and pass it to idem.New.
func Open(ctx context.Context, pool *pgxpool.Pool, opts *idem.Options) (*idem.Store, error) {
	b, err := NewBackend(ctx, pool, nil)
	if err != nil {
		return nil, err
	}
	return idem.New(b, opts)
}

// NewBackend returns the Postgres backend on pool configured by cfg (nil
// means the defaults), creating its table and index when missing; pass it
// to idem.New. Several processes may call it at once on a fresh database:
// the creation is serialized by an advisory lock. A table that exists is
// left as it is, and only checked to have the three columns.
func NewBackend(ctx context.Context, pool *pgxpool.Pool, cfg *Config) (*Backend, error) {
	if pool == nil {
		return nil, errors.New("pgstore: open: nil pool")
	}
	var c Config
	if cfg != nil {
		c = *cfg
	}
	if c.Table == "" {
		c.Table = DefaultTable
	}
	if c.LockTimeout == 0 {
		c.LockTimeout = DefaultLockTimeout
	}
	parts := strings.Split(c.Table, ".")
	if len(parts) > 2 || slices.Contains(parts, "") {
		return nil, fmt.Errorf("pgstore: open: table %q: want a name or schema.name", c.Table)
	}
	b := &Backend{pool: pool, table: c.Table, quoted: pgx.Identifier(parts).Sanitize()}
	if c.LockTimeout > 0 {
		// lock_timeout counts whole milliseconds; 0 would mean no bound.
		b.lockTimeout = fmt.Sprintf("%dms", max(c.LockTimeout.Milliseconds(), 1))
	}
	b.sql = newStatements(b.quoted)
	// The index lives in the table's schema, named after the table.
	index := slices.Clone(parts)
	index[len(index)-1] += "_expires_at"
	if err := b.create(ctx, pgx.Identifier(index).Sanitize(), pgx.Identifier{index[len(index)-1]}.Sanitize()); err != nil {
		return nil, fmt.Errorf("pgstore: open: table %s: %w", c.Table, err)
	}
	return b, nil
}

// create makes the table and its index when either is missing. A bare
// CREATE TABLE IF NOT EXISTS is not safe against itself: two sessions
// that both find the table missing both insert its row type into pg_type,
// and one fails with a unique violation. So creation runs in a transaction
// that first takes an advisory lock named after the table.
func (b *Backend) create(ctx context.Context, index, indexName string) error {
	table := b.quoted
	var have bool
	err := b.pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL", table, index).Scan(&have)
	if err != nil {
		return err
	}
	if !have {
		tx, err := b.pool.Begin(ctx)
		if err != nil {
			return err
		}
		defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", "github.com/idemdb/idem/pgstore "+table); err != nil {
			return err
		}
		// The key is compared byte by byte ("C"), whatever the database's
		// collation: Scan pages through key ranges of a prefix, which a
		// linguistic collation would not keep together.
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+table+` (
	key        text COLLATE "C" PRIMARY KEY,
	value      bytea NOT NULL,
	expires_at timestamptz NOT NULL
)`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "CREATE INDEX IF NOT EXISTS "+indexName+" ON "+table+" (expires_at)"); err != nil {
			return err
		}
		if err := tx.Commit(ctx); err != nil {
			return err
		}
	}
	// A table of that name made for something else fails here, not on the
	// first request.
	rows, err := b.pool.Query(ctx, "SELECT key, value, expires_at FROM "+table+" LIMIT 0")
	if err != nil {
		return err
	}
	rows.Close()
	return rows.Err()
}

// The statements compare expiry with statement_timestamp(), the database's
// clock at the statement's start, which is also what a new expires_at is
// counted from: so an offset between this machine's clock and the
// database's cannot drop a record early. $ttl is the remaining life in
// microseconds, as float8.
func newStatements(t string) statements {
	const live = `expires_at > statement_timestamp()`
	const expiry = `statement_timestamp() + $3::float8 * interval '1 microsecond'`
	const key, value = `$1::text`, `$2::bytea`
	// current reads the stored value, unless the write was made.
	current := func(ok string) string {
		return `SELECT s.ok, CASE WHEN s.ok THEN NULL ELSE (SELECT value FROM ` + t + ` WHERE key = $1 AND ` + live + `) END
FROM (SELECT ` + ok + ` AS ok) s`
	}
	var s statements
	s.load = `SELECT value FROM ` + t + ` WHERE key = ` + key + ` AND ` + live
	// claim: $1 key, $2 new value, $3 ttl. It writes only where no live
	// row is visible, so that a claim on a key whose row is locked by an
	// open transaction (a CompleteTx not yet committed) reads the
	// committed row instead of waiting on the lock. An expired row is
	// replaced in place; INSERT and UPDATE cannot both write, since the
	// INSERT conflicts with any row the UPDATE could see.
	s.claim = `WITH ins AS (
	INSERT INTO ` + t + ` (key, value, expires_at)
	SELECT ` + key + `, ` + value + `, ` + expiry + `
	WHERE NOT EXISTS (SELECT FROM ` + t + ` WHERE key = $1 AND ` + live + `)
	ON CONFLICT (key) DO NOTHING
	RETURNING 1
), upd AS (
	UPDATE ` + t + ` SET value = ` + value + `, expires_at = ` + expiry + `
	WHERE key = ` + key + ` AND expires_at <= statement_timestamp()
	RETURNING 1
)
` + current(`EXISTS (SELECT FROM ins) OR EXISTS (SELECT FROM upd)`)
	// update: $1 key, $4 old value, $2 new value, $3 ttl.
	s.update = `WITH upd AS (
	UPDATE ` + t + ` SET value = ` + value + `, expires_at = ` + expiry + `
	WHERE key = ` + key + ` AND value = $4::bytea AND ` + live + `
	RETURNING 1
)
` + current(`EXISTS (SELECT FROM upd)`)
	// delete: $1 key, $2 old value.
	s.delete = `WITH del AS (
	DELETE FROM ` + t + ` WHERE key = ` + key + ` AND value = ` + value + ` AND ` + live + `
	RETURNING 1
)
` + current(`EXISTS (SELECT FROM del)`)
	s.remove = `DELETE FROM ` + t + ` WHERE key = $1`
	// Rows locked by a transaction are left for the next round.
	s.gc = `WITH batch AS (
	SELECT key FROM ` + t + ` WHERE expires_at <= statement_timestamp()
	ORDER BY expires_at LIMIT $1
	FOR UPDATE SKIP LOCKED
)
DELETE FROM ` + t + ` r USING batch WHERE r.key = batch.key AND r.expires_at <= statement_timestamp()`
	s.size = `SELECT pg_total_relation_size(to_regclass($1))`
	for after := range 2 {
		for bounded := range 2 {
			q := `SELECT key, value FROM ` + t + ` WHERE ` + [2]string{`key >= $1`, `key > $1`}[after]
			if bounded == 1 {
				q += ` AND key < $3`
			}
			s.scan[after][bounded] = q + ` AND ` + live + ` ORDER BY key LIMIT $2`
		}
	}
	return s
}

// fail wraps an error from Postgres so that it says where it came from;
// the cause stays reachable with errors.Is and errors.As (a
// *pgconn.PgError, a refused connection, context.DeadlineExceeded).
func fail(op string, err error) error {
	return fmt.Errorf("postgres %s: %w", op, err)
}

// querier runs statements: the pool, or a caller's transaction.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Load implements idem.Backend with one SELECT; a row past its
// expires_at is absent. A plain read never waits for row locks.
func (b *Backend) Load(ctx context.Context, key string) ([]byte, error) {
	return b.load(ctx, b.pool, key)
}

func (b *Backend) load(ctx context.Context, q querier, key string) ([]byte, error) {
	var v []byte
	err := q.QueryRow(ctx, b.sql.load, key).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fail("load", err)
	}
	return v, nil
}

// CompareAndSwap implements idem.Backend with one statement, sent with
// its lock_timeout in one round trip: a claim (old == nil) is an INSERT
// that also replaces an expired row, a transition a conditional UPDATE
// (key and value as read), a release a conditional DELETE; each returns
// whether it wrote and, if not, the value stored (read once more when the
// statement lost to a write committed while it ran, which its snapshot
// does not show). Postgres runs the statement in one transaction and
// locks the row it writes, so of any number of instances racing on a key
// exactly one swaps.
//
// The row's expires_at is expireAt carried over to a duration from now by
// this machine's clock and added to the database's clock. durable is not
// looked at: a swap returns once Postgres has committed it, and how that
// survives a crash is the server's synchronous_commit setting.
//
// When the row stays locked by another transaction for Config.LockTimeout,
// the swap has not been made: if the committed value differs from old it
// is returned as current (a failed comparison), and otherwise the error
// wraps ErrLocked.
func (b *Backend) CompareAndSwap(ctx context.Context, key string, old, new []byte, expireAt time.Time, _ bool) ([]byte, bool, error) {
	return b.swap(ctx, nil, key, old, new, expireAt)
}

// swap is CompareAndSwap on the pool (tx == nil) or in tx.
func (b *Backend) swap(ctx context.Context, tx pgx.Tx, key string, old, new []byte, expireAt time.Time) ([]byte, bool, error) {
	var (
		sql  string
		args []any
	)
	switch {
	case new != nil && old == nil:
		sql, args = b.sql.claim, []any{key, new, ttl(expireAt)}
	case new != nil:
		sql, args = b.sql.update, []any{key, new, ttl(expireAt), old}
	case old != nil:
		sql, args = b.sql.delete, []any{key, old}
	default:
		// Delete what is absent: it stays absent.
		cur, err := b.read(ctx, tx, key)
		return cur, err == nil && cur == nil, err
	}
	var (
		ok  bool
		cur []byte
		err error
	)
	if tx != nil {
		err = tx.QueryRow(ctx, sql, args...).Scan(&ok, &cur)
	} else {
		err = b.withLockTimeout(ctx, func(br pgx.BatchResults) error {
			return br.QueryRow().Scan(&ok, &cur)
		}, sql, args...)
	}
	if tx == nil && isLockTimeout(err) {
		// The row is locked by a transaction still open. What it will
		// commit is unknown; what is committed is known.
		cur, err := b.read(ctx, nil, key)
		if err != nil {
			return nil, false, err
		}
		if bytes.Equal(cur, old) && (cur == nil) == (old == nil) {
			if old == nil {
				// A claim of the same new key by another session,
				// not yet committed: decide again on what it commits.
				return nil, false, nil
			}
			return nil, false, fail("compare-and-swap", b.locked())
		}
		return cur, false, nil
	}
	if err != nil {
		return nil, false, fail("compare-and-swap", err)
	}
	if ok {
		return nil, true, nil
	}
	// The statement's snapshot is taken when it starts; a row it had to
	// wait for was written after, by a transaction that committed in
	// between. Then the value read with the snapshot is the one that just
	// lost, or the absence a claim lost to: read the committed one.
	if (old == nil && cur == nil) || (old != nil && bytes.Equal(cur, old)) {
		cur, err := b.read(ctx, tx, key)
		return cur, false, err
	}
	return cur, false, nil
}

// read is Load on the pool (tx == nil) or in tx.
func (b *Backend) read(ctx context.Context, tx pgx.Tx, key string) ([]byte, error) {
	if tx != nil {
		return b.load(ctx, tx, key)
	}
	return b.load(ctx, b.pool, key)
}

// withLockTimeout sends set_config('lock_timeout', ...) and the statement
// sql as one batch: one round trip, one implicit transaction, so the
// setting holds for that statement only and is gone when it commits.
func (b *Backend) withLockTimeout(ctx context.Context, read func(pgx.BatchResults) error, sql string, args ...any) error {
	batch := &pgx.Batch{}
	if b.lockTimeout != "" {
		batch.Queue("SELECT set_config('lock_timeout', $1, true)", b.lockTimeout)
	}
	batch.Queue(sql, args...)
	br := b.pool.SendBatch(ctx, batch)
	var err error
	if b.lockTimeout != "" {
		_, err = br.Exec()
	}
	if err == nil {
		err = read(br)
	}
	return errors.Join(err, br.Close())
}

// locked returns the error for a row that stayed locked past the lock
// timeout.
func (b *Backend) locked() error {
	if b.lockTimeout == "" {
		return fmt.Errorf("%w (the session's lock_timeout)", ErrLocked)
	}
	return fmt.Errorf("%w (lock_timeout %s)", ErrLocked, b.lockTimeout)
}

// isLockTimeout reports whether err is Postgres's lock_not_available
// (55P03): lock_timeout ran out.
func isLockTimeout(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "55P03"
}

// ttl returns the time from now until expireAt in microseconds, rounded
// up, and at least one.
func ttl(expireAt time.Time) float64 {
	d := time.Until(expireAt)
	us := d.Microseconds()
	if d%time.Microsecond > 0 {
		us++
	}
	return float64(max(us, 1))
}

// Delete implements idem.Backend with one DELETE, under the lock timeout.
func (b *Backend) Delete(ctx context.Context, key string) error {
	err := b.withLockTimeout(ctx, func(br pgx.BatchResults) error {
		_, err := br.Exec()
		return err
	}, b.sql.remove, key)
	if isLockTimeout(err) {
		return fail("delete", b.locked())
	}
	if err != nil {
		return fail("delete", err)
	}
	return nil
}

// Scan implements idem.Backend: it reads the live rows whose key begins
// with prefix in key order, a batch at a time (at most 256 rows or about
// 8 MiB of values), and calls fn on each batch with no connection held,
// so fn may use the store. Each batch is one SELECT on the primary key's
// range for prefix, starting after the last key of the previous batch.
func (b *Backend) Scan(ctx context.Context, prefix string, fn func(key string, value []byte) error) error {
	upper, bounded := prefixEnd(prefix)
	type row struct {
		key   string
		value []byte
	}
	var (
		last  = prefix
		after = 0
		batch []row
	)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		args := []any{last, scanRows}
		bi := 0
		if bounded {
			args, bi = append(args, upper), 1
		}
		rows, err := b.pool.Query(ctx, b.sql.scan[after][bi], args...)
		if err != nil {
			return fail("scan", err)
		}
		batch = batch[:0]
		size, n := 0, 0
		for rows.Next() {
			n++
			var r row
			if err := rows.Scan(&r.key, &r.value); err != nil {
				rows.Close()
				return fail("scan", err)
			}
			batch = append(batch, r)
			if size += len(r.value); size >= scanBytes {
				break
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fail("scan", err)
		}
		for _, r := range batch {
			if err := fn(r.key, r.value); err != nil {
				return err
			}
		}
		if n < scanRows && size < scanBytes {
			return nil
		}
		last, after = batch[len(batch)-1].key, 1
	}
}

// prefixEnd returns the least string greater than every string that
// begins with prefix, in byte order (the key column's "C" collation), or
// false when there is none (prefix is empty or all U+10FFFF). It is
// prefix with its last character replaced by the next one; valid UTF-8
// orders by code point, so the bound is valid text.
func prefixEnd(prefix string) (string, bool) {
	for prefix != "" {
		r, size := utf8.DecodeLastRuneInString(prefix)
		prefix = prefix[:len(prefix)-size]
		if r == utf8.RuneError && size <= 1 {
			continue // not UTF-8: no key has it
		}
		next := r + 1
		if next >= 0xD800 && next <= 0xDFFF {
			next = 0xE000
		}
		if next <= utf8.MaxRune {
			return prefix + string(next), true
		}
	}
	return "", false
}

// CollectGarbage implements idem.GarbageCollector: it deletes the rows
// past their expires_at, oldest first, in batches of 1000 (one DELETE
// each, through the index on expires_at; rows locked by a transaction are
// left for the next round), until a batch finds fewer. before and after
// are the table's size with its indexes and TOAST
// (pg_total_relation_size); deleted rows give their space to later
// writes once vacuumed, so after is seldom smaller.
func (b *Backend) CollectGarbage(ctx context.Context, _ int) (before, after int64, err error) {
	size := func() (int64, error) {
		var n int64
		if err := b.pool.QueryRow(ctx, b.sql.size, b.quoted).Scan(&n); err != nil {
			return 0, fail("gc", err)
		}
		return n, nil
	}
	if before, err = size(); err != nil {
		return 0, 0, err
	}
	for {
		if err := ctx.Err(); err != nil {
			return before, before, err
		}
		tag, err := b.pool.Exec(ctx, b.sql.gc, gcBatch)
		if err != nil {
			return before, before, fail("gc", err)
		}
		if tag.RowsAffected() < gcBatch {
			break
		}
	}
	after, err = size()
	return before, after, err
}

// Table returns the name of the table in use, as configured.
func (b *Backend) Table() string { return b.table }

// Pool returns the pool under b.
func (b *Backend) Pool() *pgxpool.Pool { return b.pool }

// Close implements idem.Backend. It does not close the pool, which
// belongs to the caller (it may be shared with the rest of the service);
// close it after the store.
func (b *Backend) Close() error { return nil }
