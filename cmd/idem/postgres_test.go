//go:build unix

package main

import (
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem/idemadmin"
	"github.com/idemdb/idem/internal/pgtest"
)

// TestBadgerToPostgres moves a Badger store to a real Postgres with export
// and import, then works on it with -postgres: every record reads back as
// it was in Badger, and the list, the stats, a repair and gc work on
// Postgres as they do on a directory.
func TestBadgerToPostgres(t *testing.T) {
	srv := pgtest.Start(t)
	dbURL, err := srv.CreateDB(ctx)
	require.NoError(t, err)
	dir, tokens := prepare(t)
	file := filepath.Join(t.TempDir(), "backup.jsonl")
	r := idemCmd(t, "", "export", "-o", file, "-data", dir)
	require.Equal(t, 1, r.code, "the corrupt record is skipped: %s", r.stderr)
	require.Contains(t, r.stderr, "4 records written")

	on := func(args ...string) []string {
		return append([]string{args[0], "-postgres", dbURL}, args[1:]...)
	}
	r = idemCmd(t, "", on("get", "t1/done")...)
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "no store at Postgres at postgres://postgres@", "a read-only command does not create the table")

	r = idemCmd(t, "", on("import", file)...)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "imported 4 records")
	conn, err := pgx.Connect(ctx, dbURL)
	require.NoError(t, err)
	defer conn.Close(ctx)
	var n int
	require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM idem_records").Scan(&n))
	assert.Equal(t, 4, n)

	// The same record, field for field, from either store.
	for key := range tokens {
		fromBadger := idemCmd(t, "", "get", "-json", "-data", dir, key)
		require.Equal(t, 0, fromBadger.code, fromBadger.stderr)
		fromPostgres := idemCmd(t, "", on("get", "-json", key)...)
		require.Equal(t, 0, fromPostgres.code, fromPostgres.stderr)
		assert.JSONEq(t, fromBadger.stdout, fromPostgres.stdout, key)
	}
	r = idemCmd(t, "", on("get", "t1/done")...)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, `response:     21 bytes "charge ch_1: 5000 USD"`)

	r = idemCmd(t, "", on("list", "-stale")...)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "t1/stuck")
	assert.NotContains(t, r.stdout, "t2/live")

	r = idemCmd(t, "", on("stats", "-json")...)
	require.Equal(t, 0, r.code, r.stderr)
	var st idemadmin.Stats
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &st))
	assert.Equal(t, idemadmin.RecordCounts{InProgress: 2, Completed: 1, Failed: 1}, st.Records)

	r = idemCmd(t, "", on("release", "-yes", "t1/stuck")...)
	require.Equal(t, 0, r.code, r.stderr)
	r = idemCmd(t, "", on("get", "t1/stuck")...)
	assert.Equal(t, 1, r.code, "released: %s", r.stdout)

	r = idemCmd(t, "", on("gc", "-json")...)
	require.Equal(t, 0, r.code, r.stderr)
	var rep map[string]float64
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &rep))
	assert.Equal(t, 3.0, rep["records"])
}

// TestPostgresFlags: -postgres excludes the other stores, and its
// password stays out of messages.
func TestPostgresFlags(t *testing.T) {
	r := idemCmd(t, "", "get", "-postgres", "postgres://u@127.0.0.1:1/db", "-data", t.TempDir(), "k")
	assert.Equal(t, 2, r.code)
	assert.Contains(t, r.stderr, "-postgres, -data and -redis are mutually exclusive")
	r = idemCmd(t, "", "get", "-postgres", "postgres://u@127.0.0.1:1/db", "-redis-prefix", "x:", "k")
	assert.Equal(t, 2, r.code)
	assert.Contains(t, r.stderr, "need -redis")

	for _, conn := range []string{
		"postgres://u:s3cret@127.0.0.1:1/db?connect_timeout=1",
		"postgres://u@127.0.0.1:1/db?password=s3cret&connect_timeout=1",
		"host=127.0.0.1 port=1 user=u password=s3cret connect_timeout=1",
		"host=127.0.0.1 port=1 password='s3 cret' connect_timeout=1",
	} {
		r := idemCmd(t, "", "get", "-postgres", conn, "k")
		assert.Equal(t, 1, r.code, conn)
		assert.Contains(t, r.stderr, "no answer from Postgres at ", conn)
		assert.NotContains(t, r.stderr, "s3", conn)
	}
	for _, conn := range []string{"postgres://u:s3cret@localhost:abc/db", "host=h password=s3cret port=x"} {
		r := idemCmd(t, "", "get", "-postgres", conn, "k")
		assert.Equal(t, 2, r.code, conn)
		assert.Contains(t, r.stderr, "-postgres", conn)
		assert.NotContains(t, r.stderr, "s3cr", conn)
	}
}
