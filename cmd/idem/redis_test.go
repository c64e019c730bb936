//go:build unix

package main

import (
	"encoding/json"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem/idemadmin"
	"github.com/idemdb/idem/internal/redistest"
)

// TestBadgerToRedis moves a Badger store to a real redis-server with
// export and import, then works on it with -redis: every record reads back
// as it was in Badger, under the chosen key prefix, and the repairs, the
// list, the stats and gc work on Redis as they do on a directory.
func TestBadgerToRedis(t *testing.T) {
	redisSrv := redistest.Start(t)
	dir, tokens := prepare(t)
	file := filepath.Join(t.TempDir(), "backup.jsonl")
	r := idemCmd(t, "", "export", "-o", file, "-data", dir)
	require.Equal(t, 1, r.code, "the corrupt record is skipped: %s", r.stderr)
	require.Contains(t, r.stderr, "4 records written")

	on := func(args ...string) []string {
		return append([]string{args[0], "-redis", redisSrv.Addr, "-redis-prefix", "shop:"}, args[1:]...)
	}
	r = idemCmd(t, "", on("import", file)...)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "imported 4 records")
	for key := range tokens {
		n, err := redistest.Command(redisSrv.Addr, "EXISTS", "shop:"+key)
		require.NoError(t, err)
		assert.Equal(t, "1", n, "%s is stored under the prefix", key)
	}

	// The same record, field for field, from either store.
	for key := range tokens {
		fromBadger := idemCmd(t, "", "get", "-json", "-data", dir, key)
		require.Equal(t, 0, fromBadger.code, fromBadger.stderr)
		fromRedis := idemCmd(t, "", on("get", "-json", key)...)
		require.Equal(t, 0, fromRedis.code, fromRedis.stderr)
		assert.JSONEq(t, fromBadger.stdout, fromRedis.stdout, key)
	}
	r = idemCmd(t, "", on("get", "t1/done")...)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, `response:     21 bytes "charge ch_1: 5000 USD"`)
	assert.Regexp(t, `token:\s+`+itoa(tokens["t1/done"]), r.stdout)

	// Another prefix is another store.
	r = idemCmd(t, "", "get", "-redis", redisSrv.Addr, "t1/done")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "not found")

	r = idemCmd(t, "", on("list", "-stale")...)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "t1/stuck")
	assert.NotContains(t, r.stdout, "t2/live")

	r = idemCmd(t, "", on("stats", "-json")...)
	require.Equal(t, 0, r.code, r.stderr)
	var st idemadmin.Stats
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &st))
	assert.Equal(t, idemadmin.RecordCounts{InProgress: 2, Completed: 1, Failed: 1}, st.Records)
	assert.Equal(t, 1, st.StaleLeases)
	r = idemCmd(t, "", on("stats")...)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Regexp(t, `disk:\s+-\s+\(not reported by this backend\)`, r.stdout)

	r = idemCmd(t, "", on("release", "-yes", "t1/stuck")...)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stderr, "operator repair")
	r = idemCmd(t, "", on("get", "t1/stuck")...)
	assert.Equal(t, 1, r.code, "released: %s", r.stdout)

	r = idemCmd(t, "", on("purge", "-yes", "-prefix", "t2/")...)
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, "deleted 2 records")
	n, err := redistest.Command(redisSrv.Addr, "EXISTS", "shop:t2/live", "shop:t2/retry")
	require.NoError(t, err)
	assert.Equal(t, "0", n, "purged from Redis")

	r = idemCmd(t, "", on("gc", "-json")...)
	require.Equal(t, 0, r.code, r.stderr)
	var rep map[string]float64
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &rep))
	assert.Equal(t, 1.0, rep["records"], "t1/done is left")
}

// TestStoreFlags checks how the store is named: one of -data and -redis,
// and a Redis that is not there is an error that says so.
func TestStoreFlags(t *testing.T) {
	dir, _ := prepare(t)
	r := idemCmd(t, "", "get", "-data", dir, "-redis", "127.0.0.1:6379", "t1/done")
	assert.Equal(t, 2, r.code)
	assert.Contains(t, r.stderr, "-data and -redis are mutually exclusive")

	r = idemCmd(t, "", "list", "-data", dir, "-redis-prefix", "x:")
	assert.Equal(t, 2, r.code)
	assert.Contains(t, r.stderr, "-redis-prefix needs -redis")

	r = idemCmd(t, "", "stats")
	assert.Equal(t, 2, r.code)
	assert.Contains(t, r.stderr, "pass -data DIR or -redis ADDR")

	r = idemCmd(t, "", "get", "-redis", "redis://:s3cret@127.0.0.1:1/0", "k")
	assert.Equal(t, 1, r.code)
	assert.Contains(t, r.stderr, "no answer from Redis at redis://:xxxxx@127.0.0.1:1/0")
	assert.NotContains(t, r.stderr, "s3cret", "passwords stay out of messages")

	r = idemCmd(t, "", "get", "-redis", "127.0.0.1:1,127.0.0.1:2", "k")
	assert.Equal(t, 2, r.code)
	assert.Contains(t, r.stderr, "names several servers: pass -redis-cluster for a Redis Cluster, or -redis-sentinel MASTER")
	r = idemCmd(t, "", "get", "-redis", "127.0.0.1:1", "-redis-cluster", "-redis-sentinel", "m", "k")
	assert.Equal(t, 2, r.code)
	assert.Contains(t, r.stderr, "-redis-cluster and -redis-sentinel are mutually exclusive")
	r = idemCmd(t, "", "get", "-data", dir, "-redis-cluster", "k")
	assert.Equal(t, 2, r.code)
	assert.Contains(t, r.stderr, "-redis-cluster and -redis-sentinel need -redis")
}

// TestRedisClusterAndSentinel imports a store into a real three-node Redis
// Cluster and into a master found through a real Sentinel, and reads it
// back with the commands: records spread over the cluster's nodes are all
// listed, and a repair works on each.
func TestRedisClusterAndSentinel(t *testing.T) {
	dir, tokens := prepare(t)
	file := filepath.Join(t.TempDir(), "backup.jsonl")
	r := idemCmd(t, "", "export", "-o", file, "-data", dir)
	require.Equal(t, 1, r.code, "the corrupt record is skipped: %s", r.stderr)

	cluster := redistest.StartCluster(t)
	master := redistest.Start(t)
	sentinel := redistest.StartSentinel(t, master, "payments")
	for _, c := range []struct {
		name  string
		flags []string
	}{
		{"cluster", []string{"-redis-cluster", "-redis", strings.Join(cluster.Addrs[:2], ",")}},
		{"cluster-url", []string{"-redis-cluster", "-redis", "redis://" + cluster.Addrs[0] + "?addr=" + cluster.Addrs[1]}},
		{"sentinel", []string{"-redis-sentinel", "payments", "-redis", sentinel.Addr}},
	} {
		t.Run(c.name, func(t *testing.T) {
			on := func(args ...string) []string {
				return append(append([]string{args[0], "-redis-prefix", c.name + ":"}, c.flags...), args[1:]...)
			}
			r := idemCmd(t, "", on("import", file)...)
			require.Equal(t, 0, r.code, r.stderr)
			assert.Contains(t, r.stdout, "imported 4 records")

			r = idemCmd(t, "", on("list", "-json")...)
			require.Equal(t, 0, r.code, r.stderr)
			assert.Equal(t, 4, strings.Count(r.stdout, "\n"), r.stdout)
			for key := range tokens {
				assert.Contains(t, r.stdout, `"`+key+`"`)
			}
			r = idemCmd(t, "", on("get", "t1/done")...)
			require.Equal(t, 0, r.code, r.stderr)
			assert.Contains(t, r.stdout, `"charge ch_1: 5000 USD"`)

			r = idemCmd(t, "", on("release", "-yes", "t1/stuck")...)
			require.Equal(t, 0, r.code, r.stderr)
			r = idemCmd(t, "", on("get", "t1/stuck")...)
			assert.Equal(t, 1, r.code, "released: %s", r.stdout)
		})
	}
	// The records of the cluster run landed on more than one node.
	nodes := 0
	for _, a := range cluster.Addrs {
		n, err := redistest.Command(a, "DBSIZE")
		require.NoError(t, err)
		if n != "0" {
			nodes++
		}
	}
	assert.Greater(t, nodes, 1, "records spread over the cluster's nodes")
	n, err := redistest.Command(master.Addr, "EXISTS", "sentinel:t1/done")
	require.NoError(t, err)
	assert.Equal(t, "1", n, "the sentinel run wrote to the master")
}

// TestDemoRedis runs idem demo on a real redis-server: one charge per key
// and exit code 0. Without -redis-prefix it works under a fresh prefix and
// leaves nothing behind, so it can run again; with one, its records stay
// for the other commands to see.
func TestDemoRedis(t *testing.T) {
	redisSrv := redistest.Start(t)
	for range 2 {
		r := idemCmd(t, "", "demo", "-redis", redisSrv.Addr)
		require.Equal(t, 0, r.code, "%s\n%s", r.stdout, r.stderr)
		assert.Regexp(t, `\(Redis at `+regexp.QuoteMeta(redisSrv.Addr)+`, prefix "idem:demo-\w+:"\)`, r.stdout)
		assert.Equal(t, 2, strings.Count(r.stdout, "Charges made: 1\n"), r.stdout)
		assert.Contains(t, r.stdout, "Attempt 2: completed (duplicate, returned cached): 201 Created, payment pay_000001")
		assert.Contains(t, r.stdout, `Charges made for "order-9c21-payment": 1`)
		n, err := redistest.Command(redisSrv.Addr, "DBSIZE")
		require.NoError(t, err)
		assert.Equal(t, "0", n, "the demo's records are deleted")
	}

	r := idemCmd(t, "", "demo", "-redis", redisSrv.Addr, "-redis-prefix", "demo:")
	require.Equal(t, 0, r.code, "%s\n%s", r.stdout, r.stderr)
	assert.Equal(t, 2, strings.Count(r.stdout, "Charges made: 1\n"), r.stdout)
	r = idemCmd(t, "", "list", "-redis", redisSrv.Addr, "-redis-prefix", "demo:", "-state", "completed")
	require.Equal(t, 0, r.code, r.stderr)
	assert.Contains(t, r.stdout, ":order-7f3a-payment")
	assert.Contains(t, r.stdout, ":order-9c21-payment")
}

// TestServeRedis runs idem serve on a real redis-server: the payment is
// made once, replayed to the retry, reported by the admin endpoint, and
// its record is in Redis under the prefix for the other commands to read.
func TestServeRedis(t *testing.T) {
	redisSrv := redistest.Start(t)
	addr, admin := freeAddr(t), freeAddr(t)
	logs, _ := startServe(t, serveConfig{store: &storeFlags{redis: redisSrv.Addr, redisPrefix: "pay:", defaultData: "idem-data"}, addr: addr, admin: admin})
	assert.Contains(t, logs.String(), `store="Redis at `+redisSrv.Addr+`, prefix \"pay:\""`)

	resp, first := postPayment(t, addr, "order-1")
	require.Equal(t, http.StatusCreated, resp.StatusCode, string(first))
	resp, again := postPayment(t, addr, "order-1")
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	assert.Equal(t, "true", resp.Header.Get("Idempotent-Replayed"))
	assert.Equal(t, first, again)
	checkAdmin(t, admin)

	r := idemCmd(t, "", "list", "-redis", redisSrv.Addr, "-redis-prefix", "pay:", "-json")
	require.Equal(t, 0, r.code, r.stderr)
	var rec idemadmin.Record
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &rec), r.stdout)
	assert.True(t, strings.HasSuffix(rec.Key, ":order-1"), rec.Key)
	assert.Equal(t, "completed", rec.State)
}

// A -redis URL that does not parse is a usage error that names what is
// wrong without the password: url.Parse's error quotes the whole URL.
func TestRedisBadURLHidesPassword(t *testing.T) {
	for _, args := range [][]string{
		{"get", "-redis", "redis://:s3cret@localhost:abc", "k"},
		{"get", "-redis", "redis://:s3cr%zzet@localhost:6379", "k"},
		{"list", "-redis-cluster", "-redis", "redis://:s3cret@localhost:abc"},
		{"list", "-redis-sentinel", "m", "-redis", "redis://:s3cret@localhost:abc"},
	} {
		r := idemCmd(t, "", args...)
		assert.Equal(t, 2, r.code, args)
		assert.Contains(t, r.stderr, "-redis", args)
		assert.NotContains(t, r.stderr, "s3cr", args)
	}
}
