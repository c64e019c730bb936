//go:build unix

package main

import (
	"regexp"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem/internal/pgtest"
)

// TestDemoPostgres runs idem demo -postgres on a real Postgres, twice:
// the payments flow runs as on the other stores, and the DoTx part shows
// the charge row and its record gone together after a crash before
// COMMIT, then committed together by the retry, once, and replayed to
// the next. Each run works in a fresh schema and drops it.
func TestDemoPostgres(t *testing.T) {
	srv := pgtest.Start(t)
	dbURL, err := srv.CreateDB(ctx)
	require.NoError(t, err)
	for run := range 2 {
		r := idemCmd(t, "", "demo", "-postgres", dbURL)
		require.Equal(t, 0, r.code, "run %d: %s\n%s", run, r.stderr, r.stdout)
		out := r.stdout
		assert.Regexp(t, `\(Postgres at postgres://postgres@127\.0\.0\.1:\d+/\w+\?sslmode=disable, schema idem_demo_[a-z0-9]{10}, dropped afterwards\)`, out)
		assert.Contains(t, out, "Attempt 2: completed (duplicate, returned cached): 201 Created, payment pay_000001")
		assert.Contains(t, out, `Charges made for "order-9c21-payment": 1`)

		crash := section(t, out, "Attempt 1: inserted the charge row", "Attempt 2, once")
		assert.Contains(t, crash, "WHERE idempotency_key = 'order-4e1b-charge': 0 rows")
		assert.Regexp(t, `state:\s+in-progress`, crash, "not completed: the completion rolled back with the row")
		retry := section(t, out, "Attempt 2, once the dead process's lease lapsed (1s here): charged: {\"charge\": 2,", "Attempt 3")
		assert.Contains(t, retry, "WHERE idempotency_key = 'order-4e1b-charge': 1 rows\n  id 2, 5000 USD\n")
		assert.Regexp(t, `state:\s+completed`, retry)
		assert.Regexp(t, `attempts:\s+2\n`, retry)
		assert.Regexp(t, `response:\s+\d+ bytes "\{\\"charge\\": 2, `, retry, "the record holds the answer the row's transaction made")
		assert.Contains(t, out, `Attempt 3: completed (duplicate, returned cached): {"charge": 2, "amount": 5000, "currency": "USD"}`)
		assert.Contains(t, out, `Charge rows for "order-4e1b-charge": 1 (the charge ran 2 times; its first run was rolled back)`)
	}
	conn, err := pgx.Connect(ctx, dbURL)
	require.NoError(t, err)
	defer conn.Close(ctx)
	var left int
	require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'idem_demo_%'").Scan(&left))
	assert.Zero(t, left, "the demo drops its schemas")
}

// section returns the part of s from the line beginning with from to the
// line beginning with to, failing the test when either is missing.
func section(t *testing.T, s, from, to string) string {
	t.Helper()
	m := regexp.MustCompile(`(?s)` + regexp.QuoteMeta(from) + `.*?\n` + regexp.QuoteMeta(to)).FindString(s)
	require.NotEmpty(t, m, "no %q ... %q in:\n%s", from, to, s)
	return m
}
