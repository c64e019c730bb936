//go:build unix

package pgstore_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemtest"
	"github.com/idemdb/idem/internal/pgtest"
	"github.com/idemdb/idem/internal/storeinternal"
	"github.com/idemdb/idem/pgstore"
)

func TestMain(m *testing.M) {
	if os.Getenv(crashChildEnv) != "" {
		crashChild()
		return
	}
	code := pgtest.Main(m)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

var ctx = context.Background()

var fp = []byte("fingerprint")

// newPool returns a pool on the database at url, closed when t ends.
func newPool(t testing.TB, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(ctx, url)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

// storeOn opens a store on pool with cfg, closed when t ends (before the
// pool, whose cleanup was registered earlier).
func storeOn(t testing.TB, pool *pgxpool.Pool, cfg *pgstore.Config, opts *idem.Options) *idem.Store {
	t.Helper()
	b, err := pgstore.NewBackend(ctx, pool, cfg)
	require.NoError(t, err)
	s, err := idem.New(b, opts)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s
}

// TestConformancePostgres runs the whole suite on one database of the
// test's own, each store of the suite on a table of its own.
func TestConformancePostgres(t *testing.T) {
	pool := newPool(t, pgtest.DB(t))
	var tables atomic.Int64
	idemtest.Run(t, func(t *testing.T, opts *idem.Options) *idem.Store {
		return storeOn(t, pool, &pgstore.Config{Table: fmt.Sprintf("records_%d", tables.Add(1))}, opts)
	})
}

func TestOpenDefaults(t *testing.T) {
	pool := newPool(t, pgtest.DB(t))
	s, err := pgstore.Open(ctx, pool, nil)
	require.NoError(t, err)
	_, _, err = s.Do(ctx, "order-1", fp, func(context.Context) ([]byte, error) { return []byte("ok"), nil })
	require.NoError(t, err)
	var n int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM idem_records WHERE key = 'order-1' AND expires_at > now() + interval '23 hours'").Scan(&n))
	assert.Equal(t, 1, n, "the record is the one row order-1, kept a day")
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM pg_indexes WHERE tablename = 'idem_records' AND indexdef LIKE '%(expires_at)%'").Scan(&n))
	assert.Equal(t, 1, n, "expiry is indexed")
	b, ok := storeinternal.Backend(s).(*pgstore.Backend)
	require.True(t, ok)
	assert.Equal(t, pgstore.DefaultTable, b.Table())
	assert.Same(t, pool, b.Pool())

	require.NoError(t, s.Close())
	require.NoError(t, pool.Ping(ctx), "closing the store leaves the caller's pool open")

	// Opening again finds the table and its records.
	s, err = pgstore.Open(ctx, pool, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	resp, replayed, err := s.Do(ctx, "order-1", fp, func(context.Context) ([]byte, error) { return []byte("again"), nil })
	require.NoError(t, err)
	assert.True(t, replayed)
	assert.Equal(t, "ok", string(resp))

	_, err = pgstore.Open(ctx, nil, nil)
	assert.ErrorContains(t, err, "nil pool")
	_, err = pgstore.Open(ctx, pool, &idem.Options{LeaseTTL: -time.Second})
	assert.ErrorContains(t, err, "LeaseTTL")
	_, err = pgstore.NewBackend(ctx, pool, &pgstore.Config{Table: "a.b.c"})
	assert.ErrorContains(t, err, "schema.name")

	// A table of that name made for something else is refused at once.
	_, err = pool.Exec(ctx, "CREATE TABLE users (id int PRIMARY KEY, name text); CREATE INDEX users_expires_at ON users (name)")
	require.NoError(t, err)
	_, err = pgstore.NewBackend(ctx, pool, &pgstore.Config{Table: "users"})
	assert.ErrorContains(t, err, `column "key" does not exist`)
}

// TestOpenConcurrently starts eight stores at once on a fresh database,
// each on a pool of its own, as instances of a service starting together
// would: creating the table is serialized, so every one opens, and there
// is one table.
func TestOpenConcurrently(t *testing.T) {
	for round := range 3 {
		url := pgtest.DB(t)
		const n = 8
		pools := make([]*pgxpool.Pool, n)
		for i := range pools {
			pools[i] = newPool(t, url)
			require.NoError(t, pools[i].Ping(ctx))
		}
		start := make(chan struct{})
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				s, err := pgstore.Open(ctx, pools[i], &idem.Options{GCInterval: -1})
				if err == nil {
					_, _, err = s.Do(ctx, fmt.Sprintf("k%d", i), fp, func(context.Context) ([]byte, error) { return nil, nil })
					err = errorsJoin(err, s.Close())
				}
				errs[i] = err
			}()
		}
		close(start)
		wg.Wait()
		for i, err := range errs {
			require.NoError(t, err, "round %d, store %d", round, i)
		}
		var rows int
		require.NoError(t, pools[0].QueryRow(ctx, "SELECT count(*) FROM idem_records").Scan(&rows))
		assert.Equal(t, n, rows)
	}
}

func errorsJoin(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// TestTableInSchema keeps the records in a table of another schema, with a
// name that needs quoting; a store on another table of the same database
// does not see them.
func TestTableInSchema(t *testing.T) {
	pool := newPool(t, pgtest.DB(t))
	_, err := pool.Exec(ctx, `CREATE SCHEMA billing`)
	require.NoError(t, err)
	s := storeOn(t, pool, &pgstore.Config{Table: "billing.Idem Records"}, &idem.Options{GCInterval: -1})
	other := storeOn(t, pool, nil, &idem.Options{GCInterval: -1})
	_, _, err = s.Do(ctx, "k", fp, func(context.Context) ([]byte, error) { return []byte("x"), nil })
	require.NoError(t, err)
	var n int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM billing."Idem Records"`).Scan(&n))
	assert.Equal(t, 1, n)
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM pg_indexes WHERE schemaname = 'billing' AND indexname = 'Idem Records_expires_at'`).Scan(&n))
	assert.Equal(t, 1, n)
	_, err = other.Get(ctx, "k")
	assert.ErrorIs(t, err, idem.ErrNotFound)
}

// TestExpiry: a row past its expires_at, by the database's clock, is
// absent for every purpose, a claim replaces it in place, and
// CollectGarbage deletes it.
func TestExpiry(t *testing.T) {
	pool := newPool(t, pgtest.DB(t))
	b, err := pgstore.NewBackend(ctx, pool, nil)
	require.NoError(t, err)
	soon := time.Now().Add(time.Second)
	for _, k := range []string{"a", "b", "c"} {
		_, ok, err := b.CompareAndSwap(ctx, k, nil, []byte("v-"+k), soon, false)
		require.NoError(t, err)
		require.True(t, ok)
	}
	_, ok, err := b.CompareAndSwap(ctx, "keep", nil, []byte("kept"), time.Now().Add(time.Hour), false)
	require.NoError(t, err)
	require.True(t, ok)
	v, err := b.Load(ctx, "a")
	require.NoError(t, err)
	assert.Equal(t, "v-a", string(v))
	cur, ok, err := b.CompareAndSwap(ctx, "a", nil, []byte("other"), soon, false)
	require.NoError(t, err)
	assert.False(t, ok, "a live row is not absent")
	assert.Equal(t, "v-a", string(cur))

	time.Sleep(time.Until(soon) + 50*time.Millisecond)
	v, err = b.Load(ctx, "a")
	require.NoError(t, err)
	assert.Nil(t, v, "expired")
	cur, ok, err = b.CompareAndSwap(ctx, "b", []byte("v-b"), []byte("new"), time.Now().Add(time.Hour), false)
	require.NoError(t, err)
	assert.False(t, ok, "an expired row does not compare equal")
	assert.Nil(t, cur)
	_, ok, err = b.CompareAndSwap(ctx, "b", nil, []byte("new"), time.Now().Add(time.Hour), false)
	require.NoError(t, err)
	assert.True(t, ok, "a claim replaces an expired row")
	var keys []string
	require.NoError(t, b.Scan(ctx, "", func(key string, _ []byte) error { keys = append(keys, key); return nil }))
	assert.Equal(t, []string{"b", "keep"}, keys, "scan skips expired rows")

	before, after, err := b.CollectGarbage(ctx, 0)
	require.NoError(t, err)
	assert.Positive(t, before)
	assert.Positive(t, after)
	var n int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM idem_records").Scan(&n))
	assert.Equal(t, 2, n, "a and c deleted")
}

// TestCollectGarbageBatches deletes more expired rows than one batch.
func TestCollectGarbageBatches(t *testing.T) {
	pool := newPool(t, pgtest.DB(t))
	s := storeOn(t, pool, nil, &idem.Options{GCInterval: -1})
	_, err := pool.Exec(ctx, `INSERT INTO idem_records SELECT 'k' || i, '\x00', now() - interval '1 second' FROM generate_series(1, 2500) i`)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `INSERT INTO idem_records VALUES ('live', '\x00', now() + interval '1 hour')`)
	require.NoError(t, err)
	rep, err := s.CollectGarbage(ctx)
	require.NoError(t, err)
	assert.Equal(t, 1, rep.Corrupt, "the sweep sees only the live row")
	var n int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM idem_records").Scan(&n))
	assert.Equal(t, 1, n)
}

// TestScanPrefixes pages through more keys than one batch, under prefixes
// holding LIKE's and regular expressions' special characters and
// characters of several bytes, up to the last code point.
func TestScanPrefixes(t *testing.T) {
	pool := newPool(t, pgtest.DB(t))
	b, err := pgstore.NewBackend(ctx, pool, nil)
	require.NoError(t, err)
	exp := time.Now().Add(time.Hour)
	put := func(k string) {
		_, ok, err := b.CompareAndSwap(ctx, k, nil, []byte(k), exp, false)
		require.NoError(t, err)
		require.True(t, ok, k)
	}
	want := map[string][]string{}
	prefixes := []string{"a%", "a_", "a", "é", "z\U0010FFFF", "\U0010FFFF", "\uD7FF"}
	for _, p := range prefixes {
		for i := range 300 {
			k := fmt.Sprintf("%s%04d", p, i)
			put(k)
		}
	}
	put("\uE000x") // after \uD7FF's range, which skips the surrogates
	put("b")
	scan := func(prefix string) []string {
		var got []string
		require.NoError(t, b.Scan(ctx, prefix, func(key string, value []byte) error {
			require.Equal(t, key, string(value))
			got = append(got, key)
			return nil
		}))
		return got
	}
	all := scan("")
	assert.Len(t, all, len(prefixes)*300+2)
	for _, p := range prefixes {
		for _, k := range all {
			if strings.HasPrefix(k, p) {
				want[p] = append(want[p], k)
			}
		}
		assert.Equal(t, want[p], scan(p), "prefix %q", p)
	}
	assert.Len(t, want["a"], 900)
	assert.Empty(t, scan("c"))
}

// TestLockTimeoutIsPerStatement: the lock timeout the store sets for its
// own statements is gone afterwards, on a connection the pool hands out
// to the application next.
func TestLockTimeoutIsPerStatement(t *testing.T) {
	pool := newPool(t, pgtest.DB(t))
	s := storeOn(t, pool, nil, &idem.Options{GCInterval: -1})
	for range 20 {
		l, _, err := s.Begin(ctx, "k", fp)
		require.NoError(t, err)
		require.NoError(t, l.Release(ctx))
	}
	conns := pool.AcquireAllIdle(ctx)
	require.NotEmpty(t, conns)
	for _, c := range conns {
		var v string
		require.NoError(t, c.QueryRow(ctx, "SHOW lock_timeout").Scan(&v))
		assert.Equal(t, "0", v)
		c.Release()
	}
}
